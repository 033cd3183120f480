"""The local bus's frames and its sending side (ekv._node.bus), on a real event loop and a real
Unix socket pair; the processes around it are tested in test_processes.py."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from ekv._log import NodeLog
from ekv._model import Entry
from ekv._node import busframes as bus


def test_writes_round_trip() -> None:
    entries = [
        Entry("room/é", 1_700_000_000_000_000_000, "origin-a", 7, None, b"\x00value"),
        Entry("k", 1, "o", 8, 1_800_000_000_000_000_000, None),  # a delete with an expiry
        Entry("", 2, "o", 9, None, b""),  # an empty value is not a delete
    ]
    frame = bus.encode_writes(3, entries)
    assert bus.decode_writes(frame[bus.HEAD.size :]) == (3, entries)


def test_truncated_writes_frame_is_refused() -> None:
    frame = bus.encode_writes(0, [Entry("key", 1, "origin", 1, None, b"value")])
    with pytest.raises(ValueError, match="truncated"):
        bus.decode_writes(frame[bus.HEAD.size : -2])


class _Pair:
    """A loop on a thread, a _Conn writing one end of a socket pair, the other end read here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ours, theirs = socket.socketpair()
        self.ours.settimeout(10)

        async def make() -> bus.Conn:
            _, writer = await asyncio.open_unix_connection(sock=theirs)
            return bus.Conn(self.loop, writer, NodeLog("test", False))

        self.conn = asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)
        self.wakeups = 0
        original = self.loop.call_soon_threadsafe

        def counted(*args: object) -> object:
            self.wakeups += 1
            return original(*args)  # type: ignore[arg-type]

        self.loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        self._buffer = b""

    def frames(self, count: int) -> list[tuple[int, bytes]]:
        out = []
        while len(out) < count:
            while (
                len(self._buffer) < bus.HEAD.size
                or len(self._buffer) < bus.HEAD.size + bus.HEAD.unpack_from(self._buffer)[0] - 1
            ):
                self._buffer += self.ours.recv(65536)
            length, kind = bus.HEAD.unpack_from(self._buffer)
            end = bus.HEAD.size + length - 1
            out.append((kind, self._buffer[bus.HEAD.size : end]))
            self._buffer = self._buffer[end:]
        return out

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(bus.closed(self.conn.writer), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.ours.close()


@pytest.fixture
def pair() -> Iterator[_Pair]:
    p = _Pair()
    try:
        yield p
    finally:
        p.close()


def _writes(i: int) -> bytes:
    return bus.encode_writes(0, [Entry(f"k{i}", i + 1, "o", i + 1, None, b"v")])


def _on_loop(pair: _Pair, fn: object) -> None:
    """Run ``fn`` on the loop's thread, so the batch timer cannot fire in the middle of it."""

    async def run() -> None:
        fn()  # type: ignore[operator]

    asyncio.run_coroutine_threadsafe(run(), pair.loop).result(10)


def test_writes_pouring_in_do_not_wake_the_loop_each(pair: _Pair) -> None:
    """A commit's WRITES frame wakes an idle loop; while the loop comes back on its own timer,
    further ones just queue (a wake-up costs the writer a system call and GIL hand-offs), and all
    arrive, in order."""

    def burst() -> None:
        pair.wakeups = 0
        pair.conn.send(_writes(0), soon=True)
        pair.conn._flush()  # the wake-up's flush, which arms the timer
        for i in range(1, 50):
            pair.conn.send(_writes(i), soon=True)

    _on_loop(pair, burst)
    got = pair.frames(50)
    assert [bus.decode_writes(payload)[1][0].key for _, payload in got] == [f"k{i}" for i in range(50)]
    assert pair.wakeups == 1  # the idle loop's; the timer flushed the other 49


def test_events_wake_the_loop_at_once(pair: _Pair) -> None:
    """An events frame is not held back by a pending batch timer: it is sent on a wake-up, after
    the writes queued before it."""

    def burst() -> None:
        pair.wakeups = 0
        pair.conn.send(_writes(0), soon=True)
        pair.conn._flush()
        pair.conn.send(_writes(1), soon=True)
        pair.conn.send(bus.encode_events([]))

    _on_loop(pair, burst)
    kinds = [kind for kind, _ in pair.frames(3)]
    assert kinds == [bus.WRITES, bus.WRITES, bus.EVENTS]
    assert pair.wakeups == 2


def test_a_frame_appended_by_a_sender_preempted_across_a_flush_is_not_lost(pair: _Pair) -> None:
    """A sender thread reads the connection's queue, is preempted, the loop flushes, and only
    then does the append run: the frame must still go out with the next flush. (The queue used
    to be swapped for a new list at each flush, so that append went to the list already written
    and the frame was lost; this replays that interleaving step by step.)"""

    def interleaving() -> None:
        pair.conn.send(_writes(0))
        queue_seen_by_sender = pair.conn._queue  # the sender's attribute read ...
        pair.conn._flush()  # ... the loop flushes meanwhile ...
        queue_seen_by_sender.append(_writes(1))  # ... then the sender's append runs
        pair.conn._flush()  # the flush its wake-up asks for

    _on_loop(pair, interleaving)
    got = pair.frames(2)
    assert [bus.decode_writes(payload)[1][0].key for _, payload in got] == ["k0", "k1"]
