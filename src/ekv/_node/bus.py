"""The local bus: how the processes sharing one data directory tell each other about writes.

Every process writes the shard files itself (SPEC section 12, see docs/architecture.md "Many
processes, one data directory"); what the files cannot carry is news. The node process serves a
Unix socket and every attached process keeps one connection to it:

* attached -> node: ``WRITES``, the local writes of each commit (the node process replicates them
  exactly as its own: into its outbox, out as live messages); ``EVENTS``, the events of each commit
  that another process subscribed to (a delete's event carries the deleted value, which only the
  writer read); ``PATTERNS``, what this process subscribes to, after each change.
* attached -> node -> attached: ``PROPOSE`` / ``OUTCOME``, a linearizable operation the node
  process runs among the voters for an attached process (SPEC 13; the payloads are the cluster's
  ``Propose`` and ``Outcome`` bodies, :mod:`ekv._cluster.wire_paxos`).
* node -> attached: ``EVENTS`` matching what it subscribed to, from every source (the node
  process's own writes, other attached processes, replication, expiry); ``PATTERNS``, what every
  other process subscribes to (so a writer only makes events someone watches) and whether the
  node process replicates (whether to send ``WRITES`` at all).

Frames are ``<length u32><kind u8><payload>``, values travel as the codec's bytes and are decoded
only by subscribers, exactly like an event of the process's own writes; nothing is unpickled
here. The socket is named by the data directory's hash, in a private per-user runtime directory
(mode 0700: only that user reaches it; see :func:`bus_path`).

Nothing here ever blocks a writer: a writer thread encodes its frame and queues it; the network
loop thread ("ekv-net") writes it. Past :data:`SEND_LIMIT` bytes queued to one process, frames
to it are dropped and counted: replication then catches up by anti-entropy (the writes are in
the files), and the subscribers of that process miss those events (``info()`` counts them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import itertools
import os
import struct
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ekv._cluster import wire_paxos
from ekv._cluster.messages import Outcome, Propose
from ekv._core.keys import subscription_candidates
from ekv._core.paxos import NoQuorum, Op, Unconfirmed
from ekv._core.paxos import Outcome as Result
from ekv._log import NodeLog
from ekv._model import Entry, RawEvent, Version

__all__ = ["BusClient", "BusServer", "LocalSink", "bus_path", "runtime_path"]

WRITES, EVENTS, PATTERNS, PROPOSE, OUTCOME = 1, 2, 3, 4, 5
_HEAD = struct.Struct("<IB")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_SHARD = struct.Struct("<HI")
_ENTRY = struct.Struct("<IIqqqq")  # key and origin lengths, ts, oseq, expires_at (-1: none), value size (-1: none)
MAX_FRAME = 1 << 30
SEND_LIMIT = 32 << 20
BATCH_DELAY_S = 0.002
_EVENT_TYPES = ("put", "delete", "expired")


def bus_path(data_dir: Path) -> str:
    """Where the node process of ``data_dir`` listens (see :func:`runtime_path`)."""
    return str(runtime_path(data_dir, ".sock"))


def runtime_path(data_dir: Path, suffix: str) -> Path:
    """A file of ``data_dir``'s in a private per-user runtime directory (``$XDG_RUNTIME_DIR``,
    else ``<tmp>/ekv-<uid>``, mode 0700), named by the directory's hash: the bus's socket and the
    lock that serialises becoming a node process. Not in the data directory itself: a copy of a
    live data directory (``cp -r``, a backup tool) must not trip over a socket, a Unix socket path
    is limited to about 100 bytes, and the lock must exist before the data directory does."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    private = Path(base) / f"ekv-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    info = private.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{private} must be a directory of this user with mode 0700")
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:32]
    return private / f"{digest}{suffix}"


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


def _frame(kind: int, out: list[bytes]) -> bytes:
    payload = b"".join(out)
    return _HEAD.pack(len(payload) + 1, kind) + payload


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
    return _frame(WRITES, out)


def encode_events(events: Sequence[RawEvent]) -> bytes:
    out = [_U32.pack(len(events))]
    for kind, key, blob, version in events:
        out.append(bytes((_EVENT_TYPES.index(kind),)))
        _str(out, key)
        _blob(out, blob)
        out.append(_I64.pack(version.timestamp_ns))
        _str(out, version.origin)
    return _frame(EVENTS, out)


def encode_patterns(patterns: Iterable[str], replicate: bool) -> bytes:
    listed = sorted(patterns)
    out = [bytes((int(replicate),)), _U32.pack(len(listed))]
    for pattern in listed:
        _str(out, pattern)
    return _frame(PATTERNS, out)


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


def decode_events(payload: bytes) -> list[RawEvent]:
    reader = _Reader(payload)
    events: list[RawEvent] = []
    for _ in range(reader.u32()):
        kind = _EVENT_TYPES[reader.u8()]
        key, blob, ts, origin = reader.str(), reader.blob(), reader.i64(), reader.str()
        events.append((kind, key, blob, Version(ts, origin)))
    return events


def decode_patterns(payload: bytes) -> tuple[frozenset[str], bool]:
    reader = _Reader(payload)
    replicate = bool(reader.u8())
    return frozenset(reader.str() for _ in range(reader.u32())), replicate


def matches(patterns: frozenset[str], key: str) -> bool:
    """Whether a subscription to one of ``patterns`` sees ``key``."""
    if not patterns:
        return False
    if "" in patterns:
        return True
    return any(candidate in patterns for candidate in subscription_candidates(key))


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(_HEAD.size)
    length, kind = _HEAD.unpack(head)
    if not 1 <= length <= MAX_FRAME:
        raise ValueError(f"bad frame length {length}")
    return kind, await reader.readexactly(length - 1)


_CLOSE_WAIT_S = 1.0


async def _closed(writer: asyncio.StreamWriter) -> None:
    """Close ``writer`` and wait until its socket is released."""
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_WAIT_S)


class _Conn:
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
        self.log = log
        self.patterns: frozenset[str] = frozenset()
        self.dropped = 0
        self._queue: list[bytes] = []
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
        queue, self._queue = self._queue, []
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


class _End:
    """What both ends of the bus share: where the socket is, this process's subscriptions, and
    what the other processes watch (``_remote``)."""

    def __init__(
        self,
        path: str,
        loop: asyncio.AbstractEventLoop,
        *,
        local_patterns: Callable[[], frozenset[str]],
        publish: Callable[[list[RawEvent]], None],
        log: NodeLog,
    ) -> None:
        self.path = path
        self.loop = loop
        self.log = log
        self._local_patterns = local_patterns
        self._publish = publish
        self._remote: frozenset[str] = frozenset()
        self.on_remote_change: Callable[[], None] | None = None
        """Called after what the other processes watch changed (the sink recomputes ``active``)."""

    def _set_remote(self, patterns: frozenset[str]) -> None:
        self._remote = patterns
        hook = self.on_remote_change
        if hook is not None:
            hook()

    @property
    def remote_active(self) -> bool:
        """Whether another process subscribes to anything (any thread)."""
        return bool(self._remote)

    def remote_matches(self, key: str) -> bool:
        """Whether another process subscribes to ``key`` (any thread)."""
        return matches(self._remote, key)


class BusServer(_End):
    """The node process's end: accepts the attached processes of its data directory."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop, **ends: Any) -> None:
        super().__init__(path, loop, **ends)
        self.on_writes: Callable[[int, list[Entry]], None] | None = None
        """Where the attached processes' writes go (the cluster's outbox); None: not replicating."""
        self.on_propose: Callable[[Op, int], Awaitable[Result]] | None = None
        """Runs an attached process's linearizable operation (the cluster's consensus)."""
        self._peers: list[_Conn] = []
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a dead node process's: this process holds the election
        old = os.umask(0o077)
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path)
        finally:
            os.umask(old)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        for peer in list(self._peers):
            await _closed(peer.writer)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), _CLOSE_WAIT_S)

    @property
    def processes(self) -> int:
        return len(self._peers)

    # -- the node process's own events (any thread) ---------------------------------------------

    def publish(self, events: list[RawEvent]) -> None:
        """Send the node process's events to the processes that watch their keys."""
        if self._remote:
            self.loop.call_soon_threadsafe(self._relay, events, None)

    def writes(self, shard: int, entries: list[Entry]) -> None:
        """The node process's own writes need no bus (its shards feed the outbox directly)."""

    def patterns_changed(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._announce)

    # -- on the loop ---------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _Conn(self.loop, writer, self.log)
        self._peers.append(peer)
        self._announce()
        try:
            while True:
                kind, payload = await _read_frame(reader)
                if kind == WRITES:
                    on_writes = self.on_writes
                    if on_writes is not None:
                        on_writes(*decode_writes(payload))
                elif kind == EVENTS:
                    events = decode_events(payload)
                    self._relay(events, peer)  # first: another process's wake-up is the longer way
                    self._publish(events)
                elif kind == PATTERNS:
                    peer.patterns = decode_patterns(payload)[0]
                    self._announce()
                elif kind == PROPOSE:
                    message = wire_paxos.decode(wire_paxos.PROPOSE, payload, 0)
                    assert isinstance(message, Propose)
                    self.loop.create_task(self._propose(peer, message))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the process closed or died
        except Exception:
            self.log.error("a process of this data directory sent a bad frame; disconnected", exc_info=True)
        finally:
            self._peers.remove(peer)
            writer.close()
            self._announce()

    async def _propose(self, peer: _Conn, message: Propose) -> None:
        on_propose = self.on_propose
        result: Result = NoQuorum() if on_propose is None else await on_propose(message.op, message.timeout_ms * 10**6)
        peer.send(_frame(OUTCOME, [wire_paxos.encode(wire_paxos.outcome_message(message.request, result))[1]]))

    def _relay(self, events: list[RawEvent], source: _Conn | None) -> None:
        for peer in self._peers:
            if peer is source or not peer.patterns:
                continue
            wanted = [event for event in events if matches(peer.patterns, event[1])]
            if wanted:
                peer.send_now(encode_events(wanted))

    def _announce(self) -> None:
        """Tell each process what the others watch; recompute what the node process relays."""
        local = self._local_patterns()
        replicate = self.on_writes is not None
        remote: set[str] = set()
        for peer in self._peers:
            remote |= peer.patterns
        self._set_remote(frozenset(remote))
        for peer in self._peers:
            others = set(local)
            for other in self._peers:
                if other is not peer:
                    others |= other.patterns
            peer.send(encode_patterns(others, replicate))


class BusClient(_End):
    """An attached process's end: one connection to the node process, reopened after a takeover."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop, **ends: Any) -> None:
        super().__init__(path, loop, **ends)
        self._conn: _Conn | None = None
        self._replicate = False
        self._connecting = False
        self._task: asyncio.Task[None] | None = None
        self._proposals: dict[int, concurrent.futures.Future[Result]] = {}
        self._requests = itertools.count(1)
        self._ready = threading.Event()
        """Set once connected and told what the others watch and whether to send writes."""

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def wait_ready(self, timeout_s: float) -> bool:
        """Connect and wait until the node process has answered (or ``timeout_s`` passed): an
        open that attaches waits for this, so its first writes already reach the node process
        (writes made while no node process listens reach the members by anti-entropy only)."""
        deadline = time.monotonic() + timeout_s
        while not self._ready.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.connect()
            self._ready.wait(min(remaining, 0.02))
        return True

    def connect(self) -> None:
        """Connect if not connected (any thread; returns at once)."""
        if self._conn is None and not self._connecting:
            self._connecting = True
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self._task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(self.path)
        except OSError:
            self._connecting = False
            return  # no node process yet (a takeover in progress): the takeover tick retries
        conn = _Conn(self.loop, writer, self.log)
        self._conn, self._connecting = conn, False
        conn.send(encode_patterns(self._local_patterns(), False))
        try:
            while True:
                kind, payload = await _read_frame(reader)
                if kind == EVENTS:
                    self._publish(decode_events(payload))
                elif kind == PATTERNS:
                    remote, self._replicate = decode_patterns(payload)
                    self._set_remote(remote)
                    self._ready.set()
                elif kind == OUTCOME:
                    answer = wire_paxos.decode(wire_paxos.OUTCOME, payload, 0)
                    assert isinstance(answer, Outcome)
                    future = self._proposals.pop(answer.request, None)
                    if future is not None and not future.done():
                        future.set_result(wire_paxos.result_of(answer))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            self.log.error("the node process sent a bad frame; reconnecting", exc_info=True)
        finally:
            for future in self._proposals.values():  # the node process is gone: outcome unknown
                if not future.done():
                    future.set_result(Unconfirmed())
            self._proposals.clear()
            self._ready.clear()
            self._conn = None
            self._replicate = False
            self._set_remote(frozenset())
            writer.close()

    def close(self) -> None:
        """Close the connection and wait until it is closed (from any thread but the loop's:
        a transport closed on a loop that then stops would never release its socket)."""
        try:
            future = asyncio.run_coroutine_threadsafe(self._aclose(), self.loop)
        except RuntimeError:
            return  # the loop is gone (the interpreter is exiting)
        with contextlib.suppress(Exception):
            future.result(_CLOSE_WAIT_S * 2)

    async def _aclose(self) -> None:
        conn, self._conn = self._conn, None
        task, self._task = self._task, None
        if conn is not None:
            await _closed(conn.writer)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def propose(self, op: Op, timeout_ns: int) -> Result:
        """Have the node process run ``op`` among the voters (a user thread; blocks). Waits for
        the bus (a takeover) within the timeout: NoQuorum if it never answers, Unconfirmed if
        the connection is lost with the operation sent."""
        deadline = time.monotonic() + timeout_ns / 1e9
        if not self.wait_ready(max(deadline - time.monotonic(), 0)):
            return NoQuorum()
        conn = self._conn
        if conn is None:
            return NoQuorum()
        request = next(self._requests)
        future: concurrent.futures.Future[Result] = concurrent.futures.Future()
        self._proposals[request] = future
        timeout_ms = max(int((deadline - time.monotonic()) * 1000), 1)
        conn.send(_frame(PROPOSE, [wire_paxos.encode(Propose(request, op, timeout_ms))[1]]))
        try:
            return future.result(timeout_ms / 1000 + 5)
        except concurrent.futures.TimeoutError:
            return Unconfirmed()
        finally:
            self._proposals.pop(request, None)

    # -- from writer threads ---------------------------------------------------------------------

    def publish(self, events: list[RawEvent]) -> None:
        conn = self._conn
        if conn is None or not self._remote:
            return
        wanted = [event for event in events if matches(self._remote, event[1])]
        if wanted:
            conn.send(encode_events(wanted))

    def writes(self, shard: int, entries: list[Entry]) -> None:
        conn = self._conn
        if conn is not None and self._replicate:
            conn.send(encode_writes(shard, entries), soon=True)

    def patterns_changed(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.send(encode_patterns(self._local_patterns(), False))


Bus = BusServer | BusClient


class LocalSink:
    """The shards' event sink in a process that shares its data directory: this process's
    subscriptions, and the other processes' through the bus.

    ``active`` is read on every commit, so it is a plain attribute, recomputed when this
    process's patterns or the other processes' change (not a property: two calls per write)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self._bus: Bus | None = None
        self.active = False
        registry.on_change = self._registry_changed

    @property
    def bus(self) -> Bus | None:
        return self._bus

    @bus.setter
    def bus(self, bus: Bus | None) -> None:
        old, self._bus = self._bus, bus
        if old is not None:
            old.on_remote_change = None
        if bus is not None:
            bus.on_remote_change = self.refresh
        self.refresh()

    def refresh(self) -> None:
        bus = self._bus
        self.active = bool(self.registry.active) or (bus is not None and bus.remote_active)

    def _registry_changed(self) -> None:
        self.refresh()
        bus = self._bus
        if bus is not None:
            bus.patterns_changed()

    def matches(self, key: str) -> bool:
        if self.registry.matches(key):
            return True
        bus = self._bus
        return bus is not None and bus.remote_matches(key)

    def publish(self, events: list[RawEvent]) -> None:
        self.registry.publish(events)
        bus = self._bus
        if bus is not None:
            bus.publish(events)
