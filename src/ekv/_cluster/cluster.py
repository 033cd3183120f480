"""The cluster side of one ekv instance: members, connections, and the replicator, wired together
on the process's network loop thread.

* Members are found from ``peers=``, ``kv.connect()``, DNS names (``discovery=``, re-resolved
  every ``discovery_interval``) and gossip: when a session starts each side sends the members it
  knows (``Members``), so joining through one member reaches the whole mesh.
* Every known address has a dialer that connects, runs the handshake, and reconnects with
  exponential backoff and jitter. Both sides of a pair may dial each other; when two sessions to
  the same member exist, both sides keep the one dialed by the smaller node id.
* The :class:`~ekv._cluster.replicator.Replicator` runs on the loop thread. Local writes reach it
  through a queue the writer threads fill (one wake-up per burst, not per write); its messages are
  encoded once and written to each session; sync chunks are produced only while the member's
  send buffer has room, so a large sync interleaves with live traffic and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import socket
import threading
import time
import weakref
from collections import deque
from typing import Any

from ekv._cluster import auth, wire
from ekv._cluster.clients import ClientOwner
from ekv._cluster.messages import PROTOCOL_VERSION, Bye, Hello, Members, Message
from ekv._cluster.replicator import ReplicationSettings, Replicator
from ekv._cluster.runtime import NameTaken, runtime
from ekv._cluster.session import (
    HandshakeParams,
    Refused,
    Session,
    accept_handshake,
    dial_handshake,
)
from ekv._config import ClusterOptions, Config
from ekv._core.addresses import format_address, parse_address
from ekv._core.durations import NS_PER_S
from ekv._errors import ListenError
from ekv._model import Entry
from ekv._storage.store import ShardedStore

__all__ = ["ClusterNode", "ListenerHold"]

_LIVE_BATCH_BYTES = 1 << 20
_CAN_SEND_BYTES = 2 << 20
_BUSY_DRAIN = 8  # commits queued at one drain: writes are pouring in
_BUSY_DRAIN_DELAY_S = 0.002
_SKEW_WARN_NS = NS_PER_S
_REPEAT_WARNING_S = 300.0  # a problem that keeps happening is logged again at most this often
_MAX_REFUSED = 64  # refused peers remembered for info() (the least recent are forgotten)
_COOKIE_HINT = (
    "every member needs the same cookie: cookie= in EKV(...), or EKV_COOKIE / --cookie-file for ekv serve"
)


class _RateLimit:
    """Says when a repeated problem should be logged: the first time, then at most once every
    ``interval_s`` per key, with how many occurrences were not logged in between. A node that
    keeps retrying must not flood the log, nor go quiet after the first line."""

    def __init__(self, interval_s: float = _REPEAT_WARNING_S) -> None:
        self._interval = interval_s
        self._state: dict[object, tuple[float, int]] = {}

    def check(self, key: object) -> int | None:
        """None: stay quiet; else log now, mentioning the returned count of silenced repeats."""
        now = time.monotonic()
        last = self._state.get(key)
        if last is not None and now - last[0] < self._interval:
            self._state[key] = (last[0], last[1] + 1)
            return None
        if len(self._state) >= 1024:
            self._state.clear()
        self._state[key] = (now, 0)
        return 0 if last is None else last[1]


def _repeats(count: int) -> str:
    return f" ({count} more times since the last message)" if count else ""


_LISTEN_HINTS = {
    errno.EADDRINUSE: "another process (or another ekv node) uses it; stop that or choose another port",
    errno.EADDRNOTAVAIL: "the host is not an address of this machine",
    errno.EACCES: "ports below 1024 need privileges",
}


class ListenerHold:
    """The listening socket of a node, bound before its data directory is opened.

    A port in use is the most common reason a node cannot start; binding first means that failure
    creates no data directory and leaves an existing one untouched (not even marked as opened).
    The node's :class:`ClusterNode` serves on the socket; :meth:`release` then drops this hold
    (the listener lives on while the node serves on it, and closes otherwise).
    """

    def __init__(self, config: Config) -> None:
        options = config.cluster
        assert options is not None and options.listen is not None
        host, port = options.listen
        self._runtime = runtime()
        self._runtime.acquire()
        try:
            self.address = self._runtime.run(
                self._runtime.bind(host, port, config.name, ssl=options.ssl_server), timeout=60
            )
        except OSError as exc:
            self._runtime.release()
            if isinstance(exc, NameTaken) or exc.errno is None:
                reason = str(exc.strerror or exc)
            else:
                reason = os.strerror(exc.errno).lower()  # asyncio's own text repeats the address
            where = format_address(host, port)
            hint = _LISTEN_HINTS.get(exc.errno or 0) if not isinstance(exc, NameTaken) else None
            raise ListenError(
                f"cannot listen on {where}: {reason}" + (f" ({hint})" if hint else ""),
                address=where,
                reason=reason,
                errno=exc.errno,
            ) from None
        except BaseException:
            self._runtime.release()
            raise
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            if self._runtime.running:
                self._runtime.run(self._runtime.unbind(self.address), timeout=30)
        finally:
            self._runtime.release()


class ClusterNode:
    """Replication for one instance. Public methods are thread-safe."""

    def __init__(self, config: Config, store: ShardedStore, log: Any, listener: ListenerHold | None = None) -> None:
        options = config.cluster
        assert options is not None
        self.config = config
        self.options: ClusterOptions = options
        self.store = store
        self.log = log
        self.name = config.name
        self.node_id = store.node_id
        self._wall = config.clock.now_ns
        self._rng = random.Random()
        self.settings = ReplicationSettings(
            anti_entropy_interval_ns=options.anti_entropy_interval_ns,
            sync_chunk_entries=options.sync_chunk_entries,
            sync_chunk_bytes=options.sync_chunk_bytes,
            tombstone_ttl_ns=config.tombstone_ttl_ns,
            quarantine=options.quarantine,
            # a sync in flight makes progress continuously; a long stall means its messages were
            # lost with a replaced connection: ask again
            sync_timeout_ns=max(10 * NS_PER_S, 2 * options.heartbeat_timeout_ns),
        )
        self.sessions: dict[str, Session] = {}
        self.addresses: dict[str, dict[str, Any]] = {}
        """address -> {"node_id", "state", "attempts", "last_error", "source"}"""
        self._self_addresses: set[str] = set()
        self._outbox: deque[tuple[int, list[Entry]]] = deque()
        self._outbox_lock = threading.Lock()
        self._outbox_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listen_address: tuple[str, int] | None = None
        self._listener = listener
        self.advertised: str | None = None
        self._stopping = False
        self._encoded: tuple[Message, bool, bytes] | None = None
        self._coalesce: dict[Session, list[bytes]] | None = None
        self.replicator: Replicator | None = None
        self._blocked: frozenset[str] = frozenset()
        self.last_disconnect: dict[str, tuple[int, str]] = {}
        self.clients: set[Session] = set()
        self.refused: dict[str, dict[str, Any]] = {}
        """remote host -> the last handshake this node refused from it (for info())"""
        self._warn_limit = _RateLimit()
        self.node_info: Any = None
        """Set by the node: returns its info() (for client commands)."""
        self._skew_logged: weakref.WeakKeyDictionary[Session, int] = weakref.WeakKeyDictionary()
        self._runtime = runtime()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle (called from the node's thread) ------------------------------------------

    def start(self) -> None:
        self._loop = self._runtime.acquire()
        try:
            self._runtime.run(self._start(), timeout=60)
        except BaseException:
            self._runtime.release()
            raise
        for shard in self.store.shards:
            shard.outbox = self.on_local_writes

    def stop(self) -> None:
        for shard in self.store.shards:
            shard.outbox = None
        try:
            if self._runtime.running:
                self._runtime.run(self._stop(), timeout=30)
            # else the interpreter is finalising and the loop thread is frozen: waiting for it
            # would only run into the timeout; the process exit closes the sockets.
        finally:
            self._runtime.release()

    async def _start(self) -> None:
        self.replicator = Replicator(self.store, self.settings, send=self._send, can_send=self._can_send, log=self.log)
        options = self.options
        if options.listen is not None:
            assert self._listener is not None, "the node binds its listener before opening its data"
            host = options.listen[0]
            await self._runtime.attach(self._listener.address, self)
            self._listen_address = self._listener.address
            self.advertised = options.advertise or (
                format_address(host, self._listen_address[1]) if host not in ("", "0.0.0.0", "::") else None
            )
            self.log.info("listening on %s", format_address(host, self._listen_address[1]))
            if self.advertised is None:
                self.advertised = f":{self._listen_address[1]}"  # the host is filled in by each peer
        for address in options.peers:
            self._add_address(address, "peers")
        for name in options.discovery:
            self._spawn(self._discover(name))
        self._spawn(self._tick_loop())

    async def _stop(self) -> None:
        self._stopping = True
        for client in list(self.clients):
            client.close("shutting down")
        for session in list(self.sessions.values()):
            session.send(Bye("shutting down"))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.writer.drain(), 1.0)
            session.close("shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listen_address is not None:
            await self._runtime.unlisten(self._listen_address, self)
        if self.replicator is not None:
            self.replicator.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def listen_address(self) -> str | None:
        """The address this node listens on (with the real port when 0 was asked for)."""
        if self._listen_address is None:
            return None
        return format_address(*self._listen_address)

    # -- members -----------------------------------------------------------------------------

    def connect(self, address: str) -> None:
        """Add ``address`` to the members to dial (thread-safe)."""
        normal = format_address(*parse_address(address, "address"))
        self._runtime.call(self._add_address, normal, "connect")

    def _add_address(self, address: str, source: str) -> None:
        if self._stopping or address in self.addresses or address in self._self_addresses:
            return
        self.addresses[address] = {
            "node_id": None,
            "state": "connecting",
            "attempts": 0,
            "last_error": None,
            "source": source,
        }
        self._spawn(self._dial_loop(address))

    async def _discover(self, name_port: str) -> None:
        host, port = parse_address(name_port, "discovery")
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                for info in infos:
                    ip = str(info[4][0])
                    self._add_address(format_address(ip, port), f"dns:{host}")
            except OSError as exc:
                self.log.warning("DNS discovery of %s failed: %s", host, exc)
            await asyncio.sleep(self.options.discovery_interval_ns / NS_PER_S)

    async def _dial_loop(self, address: str) -> None:
        backoff = 0.1
        cap = self.options.reconnect_max_ns / NS_PER_S
        entry = self.addresses[address]
        while not self._stopping:
            node_id = entry["node_id"]
            if node_id is not None and node_id in self.sessions:
                entry["state"] = "connected"
                await asyncio.sleep(1.0)  # connected through this or another address
                backoff = 0.1
                continue
            entry["attempts"] += 1
            started = time.monotonic()
            try:
                await self._dial(address, entry)
            except (Refused, OSError, TimeoutError) as exc:
                entry["last_error"] = str(exc)
                entry["state"] = "unreachable"
                if "connected to ourselves" in str(exc):
                    self._self_addresses.add(address)
                    del self.addresses[address]
                    return
                if isinstance(exc, Refused) and exc.cookie_mismatch:
                    # The one misconfiguration that keeps a node alone for ever: say it loudly.
                    entry["state"] = "auth failed"
                    repeats = self._warn_limit.check(("dial", address))
                    if repeats is not None:
                        self.log.warning(
                            "cannot join %s: %s; %s (retrying)%s", address, exc, _COOKIE_HINT, _repeats(repeats)
                        )
                elif entry["attempts"] in (1, 10) or entry["attempts"] % 100 == 0:
                    self.log.info("cannot connect to %s: %s (retrying)", address, exc)
            if time.monotonic() - started > 10:
                backoff = 0.1  # the session lasted: reconnect quickly
            delay = backoff * self._rng.uniform(0.8, 1.2)
            backoff = min(cap, backoff * 2)
            await asyncio.sleep(delay)

    async def _dial(self, address: str, entry: dict[str, Any]) -> None:
        host, port = parse_address(address, "address")
        timeout = self.options.connect_timeout_ns / NS_PER_S
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=self.options.ssl_client, server_hostname=host if self.options.ssl_client else None
            ),
            timeout,
        )
        try:
            theirs, features, decoder, pending = await dial_handshake(reader, writer, self._handshake_params())
        except BaseException:
            writer.close()
            raise
        entry["node_id"] = theirs.node_id
        session = self._make_session(reader, writer, theirs, features, decoder, pending, dialer=True, address=address)
        if self._establish(session):
            entry["state"] = "connected"
            entry["last_error"] = None
            await self._wait_closed(session)

    async def _wait_closed(self, session: Session) -> None:
        while not session.closed:
            await asyncio.sleep(0.2)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: Any) -> None:
        """A connection for this instance arrived on the listener (called by the runtime)."""
        theirs, decoder, pending = first
        try:
            features = await accept_handshake(reader, writer, self._handshake_params(), theirs, decoder, pending)
        except Refused as exc:
            self._note_refused(writer, theirs, exc)
            writer.close()
            return
        if wire.CLIENT_FEATURE in theirs.features:
            self._serve_client(reader, writer, theirs, features, decoder, pending)
            return
        address = None
        if theirs.listen:
            host, port = parse_address(theirs.listen, "listen", default_host=_remote_host(writer))
            address = format_address(host, port)
        session = self._make_session(reader, writer, theirs, features, decoder, pending, dialer=False, address=address)
        if self._establish(session) and address is not None:
            known = self.addresses.get(address)
            if known is None:
                self._add_address(address, "inbound")
                self.addresses[address]["node_id"] = theirs.node_id
            elif known["node_id"] is None:
                known["node_id"] = theirs.node_id

    def _note_refused(self, writer: asyncio.StreamWriter, theirs: Hello, exc: Refused) -> None:
        """Log a refused handshake (rate-limited per remote host and reason: a misconfigured member
        retries every few seconds) and keep it for info(); a cookie mismatch also marks the member
        it claims to be, if this node dials that member too."""
        remote = _remote(writer)
        host = _remote_host(writer)
        client = wire.CLIENT_FEATURE in theirs.features
        reason = str(exc)
        kind = "cookie" if exc.cookie_mismatch else reason
        repeats = self._warn_limit.check(("accept", host, kind))
        if repeats is not None:
            who = f"client {remote}" if client else f"{remote} (node {theirs.node_id})"
            hint = f"; {_COOKIE_HINT}" if exc.cookie_mismatch and not client else ""
            self.log.warning("refused a connection from %s: %s%s%s", who, reason, hint, _repeats(repeats))
        if client:
            return
        seen = self.refused.pop(host, None)
        if seen is None and len(self.refused) >= _MAX_REFUSED:
            del self.refused[next(iter(self.refused))]
        self.refused[host] = {
            "node_id": theirs.node_id,
            "listen": theirs.listen,
            "reason": reason,
            "count": (seen["count"] + 1) if seen else 1,
            "last_at_ns": self._wall(),
        }
        if exc.cookie_mismatch and theirs.listen:
            with contextlib.suppress(Exception):
                address = format_address(*parse_address(theirs.listen, "listen", default_host=host))
                entry = self.addresses.get(address)
                if entry is not None and entry["node_id"] not in self.sessions:
                    entry["state"] = "auth failed"
                    entry["last_error"] = reason

    def _serve_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        theirs: Hello,
        features: frozenset[str],
        decoder: wire.FrameDecoder,
        pending: list[Message],
    ) -> None:
        """A command-line client: Request/Reply only, never replication or gossip."""
        owner = ClientOwner(self)
        options = self.options
        session = Session(
            owner,
            reader,
            writer,
            hello=theirs,
            features=features,
            decoder=decoder,
            pending=pending,
            dialer=False,
            address=None,
            heartbeat_interval_s=options.heartbeat_interval_ns / NS_PER_S,
            heartbeat_timeout_s=max(30.0, options.heartbeat_timeout_ns / NS_PER_S),
            send_buffer=options.send_buffer,
            wall=self._wall,
        )
        self.clients.add(session)
        session.start()

    def _handshake_params(self) -> HandshakeParams:
        options = self.options
        hello = Hello(
            versions=(PROTOCOL_VERSION,),
            features=wire.FEATURES,
            instance=self.name,
            node_id=self.node_id,
            shards=self.config.shards,
            nonce=auth.new_nonce(),
            listen=self.advertised,
            wall_ns=self._wall(),
        )
        return HandshakeParams(hello, options.cookie, options.connect_timeout_ns / NS_PER_S * 2, options.max_frame_size)

    def _make_session(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        theirs: Hello,
        features: frozenset[str],
        decoder: wire.FrameDecoder,
        pending: list[Message],
        *,
        dialer: bool,
        address: str | None,
    ) -> Session:
        options = self.options
        return Session(
            self,
            reader,
            writer,
            hello=theirs,
            features=features,
            decoder=decoder,
            pending=pending,
            dialer=dialer,
            address=address,
            heartbeat_interval_s=options.heartbeat_interval_ns / NS_PER_S,
            heartbeat_timeout_s=options.heartbeat_timeout_ns / NS_PER_S,
            send_buffer=options.send_buffer,
            wall=self._wall,
        )

    def _establish(self, session: Session) -> bool:
        """Register a new session (keeping one per member); False if it was dropped."""
        if self._stopping:
            session.close("shutting down")
            return False
        peer = session.peer_id
        if peer in self._blocked:
            session.close("blocked (test partition)")
            return False
        existing = self.sessions.get(peer)
        if existing is not None and not existing.closed:
            if self._dialer_of(session) >= self._dialer_of(existing):
                session.close("duplicate connection")
                return False
            self.sessions[peer] = session  # registered first, so closing the old one is not a "down"
            existing.close("replaced by a newer connection")
        self.sessions[peer] = session
        rep = self.replicator
        assert rep is not None
        rep.peer_up(peer, self._wall())  # before start(): messages read during the handshake need it
        session.start()
        self.log.info("member %s connected (%s, %s)", peer, session.remote, "dialed" if session.dialer else "accepted")
        session.send(Members(self._member_list()))
        self._kick()
        return True

    def _dialer_of(self, session: Session) -> str:
        return self.node_id if session.dialer else session.peer_id

    def _member_list(self) -> tuple[tuple[str, str], ...]:
        members = []
        if self.advertised is not None and not self.advertised.startswith(":"):
            members.append((self.node_id, self.advertised))
        for node_id, session in self.sessions.items():
            if session.address and not session.address.startswith(":"):
                members.append((node_id, session.address))
        return tuple(members)

    # -- session callbacks (loop thread) ---------------------------------------------------------

    def session_message(self, session: Session, message: Message) -> None:
        if self.sessions.get(session.peer_id) is not session:
            return
        if isinstance(message, Members):
            for node_id, address in message.members:
                if node_id != self.node_id and node_id not in self.sessions:
                    with contextlib.suppress(Exception):
                        self._add_address(
                            format_address(*parse_address(address, "member")), f"gossip:{session.peer_id}"
                        )
            return
        if isinstance(message, Bye):
            self.log.warning("member %s: %s", session.peer_id, message.reason)
            return
        rep = self.replicator
        assert rep is not None
        rep.on_message(session.peer_id, message, self._wall())
        self._kick()

    def session_skew(self, session: Session, skew_ns: int) -> None:
        """Log a member whose wall clock is far from ours (once per session, and again if it
        gets worse). Replication still applies its versions: convergence comes first, and the
        hybrid clock keeps causality; but last-writer-wins between concurrent writes favours
        the node whose clock runs ahead."""
        worst = self._skew_logged.get(session)
        if abs(skew_ns) >= _SKEW_WARN_NS and (worst is None or abs(skew_ns) > 2 * worst):
            self._skew_logged[session] = abs(skew_ns)
            self.log.warning(
                "clock skew: member %s's clock is %+.3f s from ours; run NTP (concurrent writes favour the node "
                "whose clock runs ahead)",
                session.peer_id,
                skew_ns / NS_PER_S,
            )

    def session_closed(self, session: Session, reason: str) -> None:
        peer = session.peer_id
        if self.sessions.get(peer) is not session:
            return
        del self.sessions[peer]
        self.last_disconnect[peer] = (self._wall(), reason)
        rep = self.replicator
        if rep is not None:
            rep.peer_down(peer, self._wall())
        if not self._stopping:
            self.log.info("member %s disconnected: %s", peer, reason)

    # -- replication plumbing (loop thread) ------------------------------------------------------

    def _send(self, peer_id: str, message: Message) -> None:
        session = self.sessions.get(peer_id)
        if session is None or session.closed:
            return
        pending = self._coalesce
        compress = "zlib" in session.features and self.options.compression_threshold is not None
        # The replicator sends the same message object to every member: encode it once. The
        # cache holds the message itself, so its identity cannot be reused by a new object.
        cached = self._encoded
        if cached is not None and cached[0] is message and cached[1] == compress:
            frame = cached[2]
        else:
            frame = wire.encode(message, compress_threshold=self.options.compression_threshold if compress else None)
            self._encoded = (message, compress, frame)
        if pending is not None:
            pending.setdefault(session, []).append(frame)  # written together at the end of the drain
        else:
            session.send_frame(frame)

    def _can_send(self, peer_id: str) -> bool:
        session = self.sessions.get(peer_id)
        return session is not None and not session.closed and session.queued_bytes < _CAN_SEND_BYTES

    def on_local_writes(self, shard: int, entries: list[Entry]) -> None:
        """Called by writer threads after each commit of local writes (any thread).

        Waking the network thread costs a system call and two GIL hand-offs (tens of µs here),
        more than the write itself. So a quiet node wakes it at once (low latency), but while
        writes pour in, the network thread drains the queue every millisecond on its own timer
        and writers do not wake it at all (throughput)."""
        with self._outbox_lock:
            self._outbox.append((shard, entries))
            if self._outbox_scheduled:
                return
            self._outbox_scheduled = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._drain_outbox)

    def _drain_outbox(self) -> None:
        with self._outbox_lock:
            items = list(self._outbox)
            self._outbox.clear()
            busy = len(items) >= _BUSY_DRAIN and not self._stopping
            self._outbox_scheduled = busy  # while busy, our timer drains; writers need not wake us
        if busy and self._loop is not None:
            self._loop.call_later(_BUSY_DRAIN_DELAY_S, self._drain_outbox)
        rep = self.replicator
        if rep is None or not items or not self.sessions:
            return
        by_shard: dict[int, list[Entry]] = {}
        for shard, entries in items:
            by_shard.setdefault(shard, []).extend(entries)
        self._coalesce = {}  # one socket write per member for the whole drain
        try:
            for shard, entries in by_shard.items():
                batch: list[Entry] = []
                size = 0
                for entry in entries:
                    batch.append(entry)
                    size += len(entry.key) + (len(entry.value) if entry.value is not None else 0) + 40
                    if size >= _LIVE_BATCH_BYTES:
                        rep.on_local_writes(shard, batch)
                        batch, size = [], 0
                if batch:
                    rep.on_local_writes(shard, batch)
        finally:
            pending, self._coalesce = self._coalesce, None
            for session, frames in pending.items():
                session.send_frame(frames[0] if len(frames) == 1 else b"".join(frames))

    def _kick(self) -> None:
        rep = self.replicator
        if rep is not None and rep.busy:
            rep.pump()

    async def _tick_loop(self) -> None:
        rep = self.replicator
        assert rep is not None
        while not self._stopping:
            try:
                rep.tick(self._wall())
            except Exception:
                self.log.error("replication tick failed", exc_info=True)
            await asyncio.sleep(0.005 if rep.busy else 0.05)

    # -- thread-safe queries -----------------------------------------------------------------------

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the loop thread and return its result."""

        async def run() -> Any:
            return fn(*args)

        return self._runtime.run(run(), timeout=30)

    def info(self) -> dict[str, Any]:
        return dict(self.call(self._info))

    def _info(self) -> dict[str, Any]:
        rep = self.replicator
        assert rep is not None
        peers = rep.peer_info()
        members = {}
        for address, entry in self.addresses.items():
            node_id = entry["node_id"]
            members[node_id or address] = {
                "node_id": node_id,
                "address": address,
                "source": entry["source"],
                "connected": node_id in self.sessions,
                "state": "connected" if node_id in self.sessions else entry["state"],
                "last_error": entry["last_error"],
                "attempts": entry["attempts"],
            }
        for node_id, session in self.sessions.items():
            item = members.setdefault(node_id, {"node_id": node_id, "address": session.address, "source": "inbound"})
            item.update(
                {
                    "connected": True,
                    "state": "quarantined"
                    if rep.peers.get(node_id) and rep.peers[node_id].quarantined
                    else "connected",
                    "remote": session.remote,
                    "dialed": session.dialer,
                    "last_seen_ns": session.last_seen_wall_ns,
                    "rtt_s": session.rtt_s,
                    "skew_ns": session.skew_ns,
                    "bytes_in": session.bytes_in,
                    "bytes_out": session.bytes_out,
                    "send_queue_bytes": session.queued_bytes,
                    "features": sorted(session.features),
                    "replication": peers.get(node_id),
                }
            )
        for node_id, (when, reason) in self.last_disconnect.items():
            item = members.setdefault(node_id, {"node_id": node_id, "connected": False, "state": "down"})
            item["last_disconnect"] = {"at_ns": when, "reason": reason}
        for node_id, since in rep.down_since().items():
            item = members.setdefault(node_id, {"node_id": node_id, "connected": False, "state": "down"})
            item["down_since_ns"] = since
        return {
            "listen": self.listen_address,
            "advertised": self.advertised,
            "members": members,
            "quarantined": dict(rep.quarantined),
            "refused": {host: dict(item) for host, item in self.refused.items()},
            "vv": [rep.current_vv(i) for i in range(len(self.store.shards))],
            "stats": dict(rep.stats),
        }

    def metrics(self) -> dict[str, float]:
        return dict(self.call(self._metrics))

    def _metrics(self) -> dict[str, float]:
        rep = self.replicator
        assert rep is not None
        m: dict[str, float] = {
            "ekv_members_connected": len(self.sessions),
            "ekv_members_known": len(
                {e["node_id"] for e in self.addresses.values() if e["node_id"]} | set(self.sessions)
            ),
            "ekv_members_quarantined": len(rep.quarantined),
            "ekv_replication_live_sent_total": rep.stats["live_sent"],
            "ekv_replication_live_received_total": rep.stats["live_received"],
            "ekv_replication_live_applied_total": rep.stats["live_applied"],
            "ekv_replication_sync_entries_applied_total": rep.stats["sync_entries_applied"],
            "ekv_replication_repair_pulls_total": rep.stats["repair_pulls"],
            "ekv_replication_outbox": len(self._outbox),
        }
        own = [self.store.shards[i].oseq for i in range(len(self.store.shards))]
        for node_id, state in rep.peers.items():
            label = f'{{peer="{node_id}"}}'
            for kind in ("delta", "full"):
                m[f'ekv_syncs_received_total{{peer="{node_id}",kind="{kind}"}}'] = state.syncs_in[kind]
                m[f'ekv_syncs_sent_total{{peer="{node_id}",kind="{kind}"}}'] = state.syncs_out[kind]
            # how many of this node's writes the member has not yet reported having
            lag = sum(max(0, own[i] - state.reported_vv.get(i, {}).get(self.node_id, 0)) for i in range(len(own)))
            m[f"ekv_replication_lag_writes{label}"] = lag
            session = self.sessions.get(node_id)
            if session is not None:
                m[f"ekv_send_queue_bytes{label}"] = session.queued_bytes
                if session.skew_ns is not None:
                    m[f"ekv_clock_skew_seconds{label}"] = session.skew_ns / NS_PER_S
                if session.rtt_s is not None:
                    m[f"ekv_rtt_seconds{label}"] = session.rtt_s
        return m

    def clear_quarantine(self, node_id: str) -> bool:
        rep = self.replicator
        assert rep is not None
        return bool(self.call(rep.clear_quarantine, node_id))

    def truncation_targets(self, shard: int, now_ns: int) -> dict[str, int] | None:
        rep = self.replicator
        assert rep is not None
        result: dict[str, int] | None = self.call(rep.truncation_targets, shard, now_ns, self.options.log_retention_ns)
        return result

    def set_blocked(self, node_ids: set[str] | frozenset[str]) -> None:
        """Testing hook (``ekv.testing.partition``): drop the sessions with these members and
        refuse new ones until unblocked, in both directions as seen from this node."""

        def apply() -> None:
            self._blocked = frozenset(node_ids)
            for node_id in list(self.sessions):
                if node_id in self._blocked:
                    self.sessions[node_id].close("blocked (test partition)")

        self.call(apply)

    def skew(self) -> dict[str, int | None]:
        return {node_id: s.skew_ns for node_id, s in self.sessions.items()}


def _remote(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


def _remote_host(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else ""
