"""The local bus's frames and connections (:mod:`ekv._node.bus` says who sends what to whom).

Frames are ``<length u32><kind u8><payload>``; values travel as the codec's bytes and are decoded
only by subscribers, exactly like an event of the process's own writes; nothing is unpickled
here. :class:`Conn` is one connection's sending side: frames queued from any thread, written by
the network loop thread ("ekv-net"), so nothing here ever blocks a writer. Past
:data:`SEND_LIMIT` bytes queued to one process, frames to it are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque
from collections.abc import Iterable, Sequence

from ekv._cluster.runtime import runtime
from ekv._core.keys import subscription_candidates
from ekv._log import NodeLog
from ekv._model import Entry, RawEvent, Version

WRITES, EVENTS, PATTERNS, PROPOSE, OUTCOME, LISTEN, RELAY = 1, 2, 3, 4, 5, 6, 7
HEAD = struct.Struct("<IB")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_SHARD = struct.Struct("<HI")
_ENTRY = struct.Struct("<IIqqqq")  # key and origin lengths, ts, oseq, expires_at (-1: none), value size (-1: none)
MAX_FRAME = 1 << 30
SEND_LIMIT = 32 << 20
BATCH_DELAY_S = 0.002
_EVENT_TYPES = ("put", "delete", "expired")

Peer = tuple[int, str, frozenset[str]]
"""Another attached process as the node process announces it: its id on the bus, the socket it
listens on for events sent to it directly, and what it subscribes to."""


# -- encoding ----------------------------------------------------------------------------------


def _str(out: list[bytes], text: str) -> None:
    raw = text.encode()
    out.append(_U32.pack(len(raw)))
    out.append(raw)


def _blob(out: list[bytes], blob: bytes | None) -> None:
    if blob is None:
        out.append(_I64.pack(-1))
    else:
        out.append(_I64.pack(len(blob)))
        out.append(blob)


def frame(kind: int, out: list[bytes]) -> bytes:
    payload = b"".join(out)
    return HEAD.pack(len(payload) + 1, kind) + payload


def encode_writes(shard: int, entries: Sequence[Entry]) -> bytes:
    """One commit's writes: per entry a fixed header (:data:`_ENTRY`) then key, origin, value.
    The node process decodes every write of every attached process, so an entry costs one
    ``unpack_from`` and three slices there, not a call per field."""
    out = [_SHARD.pack(shard, len(entries))]
    pack = _ENTRY.pack
    for key, ts, origin, oseq, expires_at, value in entries:
        raw_key, raw_origin = key.encode(), origin.encode()
        size = -1 if value is None else len(value)
        out.append(pack(len(raw_key), len(raw_origin), ts, oseq, -1 if expires_at is None else expires_at, size))
        out.append(raw_key)
        out.append(raw_origin)
        if value is not None:
            out.append(value)
    return frame(WRITES, out)


def _events(out: list[bytes], events: Sequence[RawEvent]) -> list[bytes]:
    out.append(_U32.pack(len(events)))
    for kind, key, blob, version in events:
        out.append(bytes((_EVENT_TYPES.index(kind),)))
        _str(out, key)
        _blob(out, blob)
        out.append(_I64.pack(version.timestamp_ns))
        _str(out, version.origin)
    return out


def encode_events(events: Sequence[RawEvent]) -> bytes:
    return frame(EVENTS, _events([], events))


def encode_relay(reached: Sequence[int], events: Sequence[RawEvent]) -> bytes:
    """Events for the node process to deliver to the processes that watch them, except to the
    ``reached`` ones (ids of :data:`Peer`), which the writer sent them to directly."""
    out = [_U32.pack(len(reached)), *(_U32.pack(peer) for peer in reached)]
    return frame(RELAY, _events(out, events))


def _patterns(out: list[bytes], patterns: Iterable[str]) -> None:
    listed = sorted(patterns)
    out.append(_U32.pack(len(listed)))
    for pattern in listed:
        _str(out, pattern)


def encode_patterns(patterns: Iterable[str], replicate: bool, peers: Sequence[Peer] = ()) -> bytes:
    """What a process subscribes to (attached -> node: its own; node -> attached: the node
    process's, whether it replicates, and each other attached process as a :data:`Peer`)."""
    out = [bytes((int(replicate),))]
    _patterns(out, patterns)
    out.append(_U32.pack(len(peers)))
    for peer, path, watched in peers:
        out.append(_U32.pack(peer))
        _str(out, path)
        _patterns(out, watched)
    return frame(PATTERNS, out)


def encode_listen(path: str) -> bytes:
    """Where an attached process listens for events sent to it directly (attached -> node)."""
    out: list[bytes] = []
    _str(out, path)
    return frame(LISTEN, out)


class _Reader:
    """Decodes one payload (a malformed one raises ValueError, struct.error or IndexError)."""

    __slots__ = ("_at", "_data")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def u8(self) -> int:
        value = self._data[self._at]
        self._at += 1
        return value

    def u32(self) -> int:
        (value,) = _U32.unpack_from(self._data, self._at)
        self._at += 4
        return int(value)

    def i64(self) -> int:
        (value,) = _I64.unpack_from(self._data, self._at)
        self._at += 8
        return int(value)

    def str(self) -> str:
        size = self.u32()
        end = self._at + size
        if end > len(self._data):
            raise ValueError("truncated frame")
        text = self._data[self._at : end].decode()
        self._at = end
        return text

    def blob(self) -> bytes | None:
        size = self.i64()
        if size < 0:
            return None
        end = self._at + size
        if end > len(self._data):
            raise ValueError("truncated frame")
        blob = self._data[self._at : end]
        self._at = end
        return blob


def decode_writes(payload: bytes) -> tuple[int, list[Entry]]:
    shard, count = _SHARD.unpack_from(payload, 0)
    at = _SHARD.size
    unpack, head, end = _ENTRY.unpack_from, _ENTRY.size, len(payload)
    entries = []
    for _ in range(count):
        key_len, origin_len, ts, oseq, expires_at, size = unpack(payload, at)
        at += head
        key = payload[at : at + key_len].decode()
        at += key_len
        origin = payload[at : at + origin_len].decode()
        at += origin_len
        value = None
        if size >= 0:
            value = payload[at : at + size]
            at += size
        if at > end:
            raise ValueError("truncated frame")
        entries.append(Entry(key, ts, origin, oseq, None if expires_at < 0 else expires_at, value))
    return int(shard), entries


def _decode_events(reader: _Reader) -> list[RawEvent]:
    events: list[RawEvent] = []
    for _ in range(reader.u32()):
        kind = _EVENT_TYPES[reader.u8()]
        key, blob, ts, origin = reader.str(), reader.blob(), reader.i64(), reader.str()
        events.append((kind, key, blob, Version(ts, origin)))
    return events


def decode_events(payload: bytes) -> list[RawEvent]:
    return _decode_events(_Reader(payload))


def decode_relay(payload: bytes) -> tuple[frozenset[int], list[RawEvent]]:
    reader = _Reader(payload)
    reached = frozenset(reader.u32() for _ in range(reader.u32()))
    return reached, _decode_events(reader)


def decode_patterns(payload: bytes) -> tuple[frozenset[str], bool, tuple[Peer, ...]]:
    reader = _Reader(payload)
    replicate = bool(reader.u8())
    patterns = frozenset(reader.str() for _ in range(reader.u32()))
    peers = []
    for _ in range(reader.u32()):
        peer, path = reader.u32(), reader.str()
        peers.append((peer, path, frozenset(reader.str() for _ in range(reader.u32()))))
    return patterns, replicate, tuple(peers)


def decode_listen(payload: bytes) -> str:
    return _Reader(payload).str()


def matches(patterns: frozenset[str], key: str) -> bool:
    """Whether a subscription to one of ``patterns`` sees ``key``."""
    if not patterns:
        return False
    if "" in patterns:
        return True
    return any(candidate in patterns for candidate in subscription_candidates(key))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(HEAD.size)
    length, kind = HEAD.unpack(head)
    if not 1 <= length <= MAX_FRAME:
        raise ValueError(f"bad frame length {length}")
    return kind, await reader.readexactly(length - 1)


CLOSE_WAIT_S = 1.0


async def closed(writer: asyncio.StreamWriter) -> None:
    """Close ``writer`` and wait until its socket is released."""
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_WAIT_S)


class Conn:
    """One connection's sending side: frames queued from any thread, written by the loop.

    Waking the loop costs the sender a system call and two GIL hand-offs (tens of µs on a busy
    machine, as much as SQLite's part of a put), so writes are not sent one wake-up each while
    they pour in: a frame sent with ``soon`` (a commit's ``WRITES``) wakes the loop only if it is
    idle, and after each flush the loop comes back by itself :data:`BATCH_DELAY_S` later for
    whatever was queued meanwhile (the node process's outbox does the same for its members, see
    :mod:`ekv._cluster.outbox`). Other frames (events, proposals) wake it at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter, log: NodeLog) -> None:
        self.loop = loop
        self.writer = writer
        runtime().track(writer)  # (a forked child closes its copy of the socket)
        self.log = log
        self.patterns: frozenset[str] = frozenset()
        self.id = 0  # the node process's name for the attached process at the other end
        self.listen = ""  # where that process listens for events sent to it directly ("": nowhere)
        self.dropped = 0
        self._queue: deque[bytes] = deque()  # (one object for good: see _flush)
        self._scheduled = False  # a wake-up of the loop is on its way
        self._timer = False  # the loop comes back by itself within BATCH_DELAY_S
        self._batching = False  # a ``soon`` frame was queued since the last flush

    def send(self, frame: bytes, soon: bool = False) -> None:
        """Queue ``frame`` (any thread). Appended before the flags are read, and the loop clears
        a flag before it takes the queue: a sender that sees a flag set is always flushed."""
        self._queue.append(frame)
        if soon:
            self._batching = True
            if self._timer:
                return
        if self._scheduled:
            return
        self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is gone: the process is closing
            self.loop.call_soon_threadsafe(self._flush)

    def send_now(self, frame: bytes) -> None:
        """Write ``frame`` after everything queued before it (on the loop: no wake-up)."""
        self._queue.append(frame)
        self._flush()

    def _tick(self) -> None:
        self._timer = False
        if self._queue:
            self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        # Taken frame by frame from the one deque, never by swapping in a new list: a sender
        # thread preempted between reading ``self._queue`` and appending to it would otherwise
        # append to the list already written out, and that frame would be lost.
        pending, queue = self._queue, []
        while pending:
            queue.append(pending.popleft())
        if not queue or self.writer.is_closing():
            return
        if self._batching and not self._timer:
            self._timer = True
            self.loop.call_later(BATCH_DELAY_S, self._tick)
        self._batching = False
        if self.writer.transport.get_write_buffer_size() > SEND_LIMIT:
            self.dropped += len(queue)
            if self.dropped == len(queue):
                self.log.warning("a process of this data directory reads too slowly: dropping its events")
            return
        self.writer.write(b"".join(queue))
