"""The local bus: how the processes sharing one data directory tell each other about writes.

Every process writes the shard files itself (SPEC section 12, see docs/architecture.md "Many
processes, one data directory"); what the files cannot carry is news. The node process serves a
Unix socket and every attached process keeps one connection to it:

* attached -> node: ``WRITES``, the local writes of each commit (the node process replicates them
  exactly as its own: into its outbox, out as live messages); ``RELAY``, the events of each commit
  that the node process or another process not reached directly subscribed to (a delete's event
  carries the deleted value, which only the writer read), with the ids of the processes the writer
  sent them to itself; ``PATTERNS``, what this process subscribes to, after each change;
  ``LISTEN``, the socket it listens on for events sent to it directly.
* attached -> node -> attached: ``PROPOSE`` / ``OUTCOME``, a linearizable operation the node
  process runs among the voters for an attached process (SPEC 13; the payloads are the cluster's
  ``Propose`` and ``Outcome`` bodies, :mod:`ekv._cluster.wire_paxos`).
* node -> attached: ``EVENTS`` matching what it subscribed to, from every source (the node
  process's own writes, other attached processes' not sent directly, replication, expiry);
  ``PATTERNS``, what the node process and each other attached process subscribe to, and where
  those listen (so a writer only makes events someone watches, and sends them itself), and
  whether the node process replicates (whether to send ``WRITES`` at all).
* attached -> attached, direct: ``EVENTS``. An attached writer connects (lazily, on its first
  event for it) to each attached process that watches its keys and sends their events there: one
  hop, not two through the node process. Until the link is up, or after it broke, the node
  process relays them as before, so no event is lost to a link.

The frames and the sending side of a connection are :mod:`ekv._node.busframes`. The sockets are
named by the data directory's hash (an attached process's also by its slot), in a private
per-user runtime directory (mode 0700: only that user reaches it; see :func:`bus_path`).

Nothing here ever blocks a writer: a writer thread encodes its frame and queues it; the network
loop thread ("ekv-net") writes it. Past ``SEND_LIMIT`` bytes queued to one process, frames
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
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ekv._cluster import wire_paxos
from ekv._cluster.messages import Outcome, Propose
from ekv._cluster.runtime import runtime
from ekv._core.paxos import NoQuorum, Op, Unconfirmed
from ekv._core.paxos import Outcome as Result
from ekv._log import NodeLog
from ekv._model import Entry, RawEvent
from ekv._node.busframes import (
    CLOSE_WAIT_S,
    EVENTS,
    LISTEN,
    OUTCOME,
    PATTERNS,
    PROPOSE,
    RELAY,
    WRITES,
    Conn,
    Peer,
    closed,
    decode_events,
    decode_listen,
    decode_patterns,
    decode_relay,
    decode_writes,
    encode_events,
    encode_listen,
    encode_patterns,
    encode_relay,
    encode_writes,
    frame,
    matches,
    read_frame,
)
from ekv._storage.procs import slot_alive

__all__ = ["BusClient", "BusServer", "LocalSink", "bus_path", "link_path", "runtime_path", "sweep_links"]


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


def link_path(data_dir: Path, slot: str) -> str:
    """Where the attached open registered as ``slot`` listens for events sent to it directly: in
    a directory of ``data_dir``'s own next to the bus's socket (so sweeping reads only that, not
    the whole runtime directory, which other data directories share)."""
    links = runtime_path(data_dir, ".links")
    links.mkdir(mode=0o700, exist_ok=True)
    return str(links / f"{slot}.sock")


def sweep_links(data_dir: Path) -> None:
    """Remove the direct-event sockets of ``data_dir``'s opens that died without closing
    (SIGKILL, a crash): the node process sweeps when it starts serving and when a process leaves.
    A live open's socket stays (its slot is alive, :func:`ekv._storage.procs.slot_alive`)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in runtime_path(data_dir, ".links").iterdir():
            if entry.name.endswith(".sock") and not slot_alive(data_dir, entry.name.removesuffix(".sock")):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()


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

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop, data_dir: Path, **ends: Any) -> None:
        super().__init__(path, loop, **ends)
        self.data_dir = data_dir
        self.on_writes: Callable[[int, list[Entry]], None] | None = None
        """Where the attached processes' writes go (the cluster's outbox); None: not replicating."""
        self.on_propose: Callable[[Op, int], Awaitable[Result]] | None = None
        """Runs an attached process's linearizable operation (the cluster's consensus)."""
        self.relayed = 0
        """Events of one attached process this process relayed to another (not sent directly)."""
        self._peers: list[Conn] = []
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a dead node process's: this process holds the election
        sweep_links(self.data_dir)
        old = os.umask(0o077)
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path)
            runtime().track_server(self._server)
        finally:
            os.umask(old)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        for peer in list(self._peers):
            await closed(peer.writer)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), CLOSE_WAIT_S)

    @property
    def processes(self) -> int:
        return len(self._peers)

    # -- the node process's own events (any thread) ---------------------------------------------

    def publish(self, events: list[RawEvent]) -> None:
        """Send the node process's events to the processes that watch their keys."""
        if self._remote:
            self.loop.call_soon_threadsafe(self._relay, events, None, frozenset())

    def writes(self, shard: int, entries: list[Entry]) -> None:
        """The node process's own writes need no bus (its shards feed the outbox directly)."""

    def patterns_changed(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._announce)

    # -- on the loop ---------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Conn(self.loop, writer, self.log)
        peer.id = next(self._ids)
        self._peers.append(peer)
        self._announce()
        try:
            while True:
                kind, payload = await read_frame(reader)
                if kind == WRITES:
                    on_writes = self.on_writes
                    if on_writes is not None:
                        on_writes(*decode_writes(payload))
                elif kind == RELAY:
                    reached, events = decode_relay(payload)
                    self._relay(events, peer, reached)  # first: another process's wake-up is the longer way
                    self._publish(events)
                elif kind == PATTERNS:
                    peer.patterns = decode_patterns(payload)[0]
                    self._announce()
                elif kind == LISTEN:
                    peer.listen = decode_listen(payload)
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
            if peer.listen:  # a killed process leaves its socket behind
                self.loop.create_task(self._sweep_after(peer.listen))

    async def _sweep_after(self, socket_path: str) -> None:
        """Sweep the direct-event sockets after a process left the bus, again until its socket is
        gone (about 5 s at most): a process killed by a signal has its connection closed and the
        lock of its slot released as it exits, in no set order, so a first sweep can still find
        the slot alive (CI saw that socket stay for good)."""
        for delay in (0.0, 0.05, 0.2, 1.0, 4.0):
            await asyncio.sleep(delay)
            with contextlib.suppress(OSError):
                sweep_links(self.data_dir)
            if not os.path.exists(socket_path):
                return

    async def _propose(self, peer: Conn, message: Propose) -> None:
        on_propose = self.on_propose
        result: Result = NoQuorum() if on_propose is None else await on_propose(message.op, message.timeout_ms * 10**6)
        peer.send(frame(OUTCOME, [wire_paxos.encode(wire_paxos.outcome_message(message.request, result))[1]]))

    def _relay(self, events: list[RawEvent], source: Conn | None, reached: frozenset[int]) -> None:
        for peer in self._peers:
            if peer is source or not peer.patterns or peer.id in reached:
                continue
            wanted = [event for event in events if matches(peer.patterns, event[1])]
            if wanted:
                if source is not None:
                    self.relayed += len(wanted)
                peer.send_now(encode_events(wanted))

    def _announce(self) -> None:
        """Tell each process what the others watch and where they listen; recompute what the
        node process relays."""
        local = self._local_patterns()
        replicate = self.on_writes is not None
        remote: set[str] = set()
        for peer in self._peers:
            remote |= peer.patterns
        self._set_remote(frozenset(remote))
        for peer in self._peers:
            others = [(other.id, other.listen, other.patterns) for other in self._peers if other is not peer]
            peer.send(encode_patterns(local, replicate, others))


class BusClient(_End):
    """An attached process's end: one connection to the node process, reopened after a takeover;
    a socket of its own where writers in other attached processes send it their events directly,
    and links to theirs (:class:`_Links`)."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop, listen: str, **ends: Any) -> None:
        super().__init__(path, loop, **ends)
        self.links = _Links(loop, listen, self._publish, self.log)
        self._conn: Conn | None = None
        self._replicate = False
        self._node_patterns: frozenset[str] = frozenset()
        self._others: tuple[Peer, ...] = ()
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
        conn = Conn(self.loop, writer, self.log)
        self._conn, self._connecting = conn, False
        if await self.links.listen():
            conn.send(encode_listen(self.links.path))
        conn.send(encode_patterns(self._local_patterns(), False))
        try:
            while True:
                kind, payload = await read_frame(reader)
                if kind == EVENTS:
                    self._publish(decode_events(payload))
                elif kind == PATTERNS:
                    self._patterns(*decode_patterns(payload))
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
            self._others, self._node_patterns = (), frozenset()
            self._set_remote(frozenset())
            writer.close()

    def _patterns(self, node: frozenset[str], replicate: bool, others: tuple[Peer, ...]) -> None:
        self._replicate, self._node_patterns, self._others = replicate, node, others
        remote = set(node)
        for _, _, watched in others:
            remote |= watched
        self._set_remote(frozenset(remote))
        self.links.keep({path for _, path, _ in others})
        self._ready.set()

    def close(self) -> None:
        """Close the connection and wait until it is closed (from any thread but the loop's:
        a transport closed on a loop that then stops would never release its socket)."""
        try:
            future = asyncio.run_coroutine_threadsafe(self._aclose(), self.loop)
        except RuntimeError:
            return  # the loop is gone (the interpreter is exiting)
        with contextlib.suppress(Exception):
            future.result(CLOSE_WAIT_S * 2)

    async def _aclose(self) -> None:
        conn, self._conn = self._conn, None
        task, self._task = self._task, None
        if conn is not None:
            await closed(conn.writer)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.links.close()

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
        conn.send(frame(PROPOSE, [wire_paxos.encode(Propose(request, op, timeout_ms))[1]]))
        try:
            return future.result(timeout_ms / 1000 + 5)
        except concurrent.futures.TimeoutError:
            return Unconfirmed()
        finally:
            self._proposals.pop(request, None)

    # -- from writer threads ---------------------------------------------------------------------

    def publish(self, events: list[RawEvent]) -> None:
        """Send each attached process that watches these keys its events over this process's link
        to it, and the rest (the node process's, and those of processes with no link yet) to the
        node process, naming the processes reached: it relays to the others only."""
        conn = self._conn
        if conn is None or not self._remote:
            return
        reached: list[int] = []
        relay_for = [self._node_patterns]
        for peer, path, watched in self._others:
            if not watched:
                continue
            wanted = [event for event in events if matches(watched, event[1])]
            if not wanted:
                continue
            if self.links.send(path, wanted):
                reached.append(peer)
            else:
                relay_for.append(watched)
        relay = [event for event in events if any(matches(watched, event[1]) for watched in relay_for)]
        if relay:
            conn.send(encode_relay(reached, relay))

    def writes(self, shard: int, entries: list[Entry]) -> None:
        conn = self._conn
        if conn is not None and self._replicate:
            conn.send(encode_writes(shard, entries), soon=True)

    def patterns_changed(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.send(encode_patterns(self._local_patterns(), False))


class _Links:
    """An attached process's direct event links: its own listening socket, where writers in the
    other attached processes send it their events, and its connections to theirs, opened on the
    first event for one (on the loop; until then, and for :data:`_RETRY_S` after a failed
    attempt, the caller relays through the node process instead)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, path: str, publish: Callable[[list[RawEvent]], None], log: NodeLog
    ) -> None:
        self.loop = loop
        self.path = path
        self.log = log
        self.sent = 0
        """Events this process sent to others directly."""
        self._publish = publish
        self._server: asyncio.AbstractServer | None = None
        self._out: dict[str, Conn] = {}  # path -> an open link (read from writer threads)
        self._opening: set[str] = set()
        self._in: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def listen(self) -> bool:
        """Listen on :attr:`path` (once; on the loop). False if that failed: this process then
        gets every event through the node process."""
        if self._server is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            old = os.umask(0o077)
            try:
                self._server = await asyncio.start_unix_server(self._serve, self.path)
                runtime().track_server(self._server)
            except OSError as exc:
                self.log.warning("cannot listen on %s (%s): events reach this process relayed", self.path, exc)
                return False
            finally:
                os.umask(old)
        return True

    def send(self, path: str, events: list[RawEvent]) -> bool:
        """Send ``events`` over the link to ``path`` if it is open (any thread); else start
        opening it and return False (the caller relays them)."""
        link = self._out.get(path)
        if link is not None and not link.writer.is_closing():
            link.send(encode_events(events))
            self.sent += len(events)
            return True
        if path and path not in self._opening:
            self._opening.add(path)
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._open, path)
        return False

    def keep(self, paths: set[str]) -> None:
        """Close the links to processes no longer announced (on the loop)."""
        for path, link in list(self._out.items()):
            if path not in paths:
                del self._out[path]
                link.writer.close()

    def _open(self, path: str) -> None:
        task = self.loop.create_task(self._link(path))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _link(self, path: str) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError:
            self.loop.call_later(_RETRY_S, self._opening.discard, path)
            return
        link = Conn(self.loop, writer, self.log)
        self._out[path] = link
        self._opening.discard(path)
        try:
            while await reader.read(4096):
                pass  # nothing comes back: this only notices the other end closing
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if self._out.get(path) is link:
                del self._out[path]
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._in.add(writer)
        try:
            while True:
                kind, payload = await read_frame(reader)
                if kind == EVENTS:
                    self._publish(decode_events(payload))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the writer closed or died
        except Exception:
            self.log.error("a process of this data directory sent a bad frame; disconnected", exc_info=True)
        finally:
            self._in.discard(writer)
            writer.close()

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        for task in list(self._tasks):
            task.cancel()
        for writer in [*self._in, *(link.writer for link in self._out.values())]:
            await closed(writer)
        self._out.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), CLOSE_WAIT_S)


_RETRY_S = 1.0


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
