"""Membership of one cluster node: who the members are, the connections to them, and who is who.

* Members are found from ``peers=``, ``kv.connect()``, DNS names (``discovery=``, re-resolved
  every ``discovery_interval``) and gossip: when a session starts each side sends the members it
  knows (``Members``), so joining through one member reaches the whole mesh.
* Every known address has a dialer that connects, runs the handshake, and reconnects with
  exponential backoff and jitter (in large mode, 16+ SWIM members, it waits parked until the
  member is needed: :mod:`ekv._cluster.ondemand`). Both sides of a pair may dial each other; when two sessions to
  the same member exist, both sides keep the one dialed by the smaller node id.
* Two processes under one node id (a copied data directory) are told apart by their origins;
  :mod:`ekv._cluster.identity` decides (pure) and :class:`Members` acts.

:class:`Members` owns the sessions (it is their :class:`~ekv._cluster.session.SessionOwner`) and
hands every replication message to the :class:`~ekv._cluster.driver.Driver`. Every connection goes
through the node's :class:`~ekv._cluster.network.Network`. Runs on the network loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from ekv._cluster import auth, identity, report, wire
from ekv._cluster.driver import Driver
from ekv._cluster.messages import PAXOS, PROTOCOL_VERSION, Bye, Duplicate, Hello, Members, Message
from ekv._cluster.network import Network
from ekv._cluster.session import (
    HandshakeParams,
    Refused,
    Session,
    accept_handshake,
    dial_handshake,
)
from ekv._codec import codec_name
from ekv._config import ClusterOptions, Config
from ekv._core.addresses import format_address, parse_address
from ekv._core.durations import NS_PER_S
from ekv._storage.store import ShardedStore

__all__ = ["MemberSet"]

_SKEW_WARN_NS = NS_PER_S

ServeClient = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, Hello, frozenset[str], wire.FrameDecoder, list[Message]], None
]
"""Serves an accepted connection that authenticated as a command-line client (see clients.py)."""


class MemberSet:
    """The members of one cluster node and its sessions with them (loop thread)."""

    def __init__(
        self,
        config: Config,
        store: ShardedStore,
        log: Any,
        driver: Driver,
        network: Network,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        serve_client: ServeClient,
        rng: random.Random,
    ) -> None:
        options = config.cluster
        assert options is not None
        self.config = config
        self.options: ClusterOptions = options
        self.store = store
        self.log = log
        self.name = config.name
        self.node_id = store.node_id
        self.driver = driver
        self.network = network
        self._spawn = spawn
        self._serve_client = serve_client
        self._wall = config.clock.now_ns
        self._rng = rng
        self.sessions: dict[str, Session] = driver.sessions
        self.addresses: dict[str, dict[str, Any]] = {}
        """address -> {"node_id", "state", "attempts", "last_error", "source"}"""
        self._self_addresses: set[str] = set()
        self.advertised: str | None = None
        self.stopping = False
        self.last_disconnect: dict[str, tuple[int, str]] = {}
        self._duplicates_logged: set[tuple[str, str]] = set()
        self.refused: dict[str, dict[str, Any]] = {}
        """remote host -> the last handshake this node refused from it (for info())"""
        self._warn_limit = report.RateLimit()
        self._skew_logged: weakref.WeakKeyDictionary[Session, int] = weakref.WeakKeyDictionary()
        self.consensus: Any = None
        """The cluster's :class:`~ekv._cluster.consensus.Consensus` (set by ClusterNode): it gets the
        linearizable-operation messages and may refuse a voter too many."""
        self.on_address: Callable[[str, str], None] | None = None
        """Told every address added (and its source): the SWIM membership joins through it (set by
        ClusterNode, :mod:`ekv._cluster.membership`)."""
        self.on_new_node_id: Callable[[], None] | None = None
        """Called after this node took a new node id (the membership runs under the new one)."""
        self.ondemand: Any = None
        """The node's :class:`~ekv._cluster.ondemand.OnDemand` (set by ClusterNode): in large mode
        it decides which addresses are dialed and which session ends record a member as down."""

    def add_address(self, address: str, source: str) -> None:
        """Dial ``address`` from now on (unless it is known already, or is this node)."""
        if self.stopping or address in self.addresses or address in self._self_addresses:
            return
        self.addresses[address] = {
            "node_id": None,
            "state": "connecting",
            "attempts": 0,
            "last_error": None,
            "source": source,
        }
        self._spawn(self._dial_loop(address))
        if self.on_address is not None:
            self.on_address(address, source)

    async def discover(self, name_port: str) -> None:
        """Dial every address the DNS name stands for, now and every ``discovery_interval``."""
        host, port = parse_address(name_port, "discovery")
        while not self.stopping:
            try:
                for ip in await self.network.resolve(host, port):
                    self.add_address(format_address(ip, port), f"dns:{host}")
            except OSError as exc:
                self.log.warning("DNS discovery of %s failed: %s", host, exc)
            await asyncio.sleep(self.options.discovery_interval_ns / NS_PER_S)

    async def _dial_loop(self, address: str) -> None:
        backoff = 0.1
        cap = self.options.reconnect_max_ns / NS_PER_S
        entry = self.addresses[address]
        while not self.stopping:
            node_id = entry["node_id"]
            if node_id is not None and node_id in self.sessions:
                entry["state"] = "connected"
                await asyncio.sleep(1.0)  # connected through this or another address
                backoff = 0.1
                continue
            ondemand = self.ondemand
            if ondemand is not None and not ondemand.may_dial(address, entry):
                entry["state"] = "idle"  # large mode: dialed when needed (ekv._cluster.ondemand)
                await ondemand.park(address)
                backoff = 0.1
                continue
            entry["attempts"] += 1
            started = asyncio.get_running_loop().time()  # (time.monotonic, but virtual in a virtual loop)
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
                            "cannot join %s: %s; %s (retrying)%s",
                            address,
                            exc,
                            report.COOKIE_HINT,
                            report.repeats_note(repeats),
                        )
                elif entry["attempts"] in (1, 10) or entry["attempts"] % 100 == 0:
                    self.log.info("cannot connect to %s: %s (retrying)", address, exc)
            if asyncio.get_running_loop().time() - started > 10:
                backoff = 0.1  # the session lasted: reconnect quickly
            delay = backoff * self._rng.uniform(0.8, 1.2)
            backoff = min(cap, backoff * 2)
            await asyncio.sleep(delay)

    async def _dial(self, address: str, entry: dict[str, Any]) -> None:
        host, port = parse_address(address, "address")
        timeout = self.options.connect_timeout_ns / NS_PER_S
        reader, writer = await self.network.open_connection(host, port, ssl=self.options.ssl_client, timeout=timeout)
        params = self._handshake_params()
        try:
            theirs, features, decoder, pending = await dial_handshake(reader, writer, params)
        except BaseException:
            writer.close()
            raise
        entry["node_id"] = theirs.node_id
        session = self.make_session(reader, writer, theirs, features, decoder, pending, dialer=True, address=address)
        session.local_origin = params.hello.origin
        if self.establish(session):
            entry["state"] = "connected"
            entry["last_error"] = None
            await self._wait_closed(session)

    async def _wait_closed(self, session: Session) -> None:
        while not session.closed:
            await asyncio.sleep(0.2)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: Any) -> None:
        """A connection for this instance arrived on the listener (called by the runtime)."""
        theirs, decoder, pending = first
        params = self._handshake_params()
        try:
            features = await accept_handshake(reader, writer, params, theirs, decoder, pending)
        except Refused as exc:
            report.note_refused(self, writer, theirs, exc)
            writer.close()
            return
        if wire.CLIENT_FEATURE in theirs.features:
            self._serve_client(reader, writer, theirs, features, decoder, pending)
            return
        address = None
        if theirs.listen:
            host, port = parse_address(theirs.listen, "listen", default_host=report.remote_host_of(writer))
            address = format_address(host, port)
        session = self.make_session(reader, writer, theirs, features, decoder, pending, dialer=False, address=address)
        session.local_origin = params.hello.origin
        if self.establish(session) and address is not None:
            known = self.addresses.get(address)
            if known is None:
                self.add_address(address, "inbound")
                self.addresses[address]["node_id"] = theirs.node_id
            elif known["node_id"] is None:
                known["node_id"] = theirs.node_id

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
            origin=self.store.origin,
            codec=codec_name(self.config.codec),
            consistent_prefixes=self.config.consistent_prefixes,
            cluster_size=self.config.cluster_size,
            role=self.config.role,
            retired=() if self.consensus is None else tuple(sorted(self.consensus.retired)),
        )
        return HandshakeParams(hello, options.cookie, options.connect_timeout_ns / NS_PER_S * 2, options.max_frame_size)

    def make_session(
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
        owner: Any = None,
        min_heartbeat_timeout_s: float = 0.0,
    ) -> Session:
        """A session on an authenticated connection (``owner``: who gets its messages, this
        node unless a client is served)."""
        options = self.options
        return Session(
            self if owner is None else owner,
            reader,
            writer,
            hello=theirs,
            features=features,
            decoder=decoder,
            pending=pending,
            dialer=dialer,
            address=address,
            heartbeat_interval_s=options.heartbeat_interval_ns / NS_PER_S,
            heartbeat_timeout_s=max(min_heartbeat_timeout_s, options.heartbeat_timeout_ns / NS_PER_S),
            send_buffer=options.send_buffer,
            wall=self._wall,
        )

    def establish(self, session: Session) -> bool:
        """Register a new session (keeping one per member); False if it was dropped."""
        if self.stopping:
            session.close("shutting down")
            return False
        peer = session.peer_id
        if session.local_origin != self.store.origin:
            session.close("this node took a new node id during the handshake")
            return False
        if peer == self.node_id:  # another origin under our node id: a copy of our data directory
            self._copy_of_us(session)
            return False
        if self.consensus is not None:
            self.consensus.learn_retired(session.hello.retired)
        refusal = None if self.consensus is None else self.consensus.refuses(session)
        if refusal is not None:
            self.log.error("refused member %s: %s", peer, refusal)
            session.close(refusal)
            return False
        existing = self.sessions.get(peer)
        if existing is not None and not existing.closed:
            replaces = self._second_session(session, existing)
            if replaces is False:
                return False
            if replaces:
                existing = None
        if existing is not None and not existing.closed:
            if self._dialer_of(session) >= self._dialer_of(existing):
                session.close("duplicate connection")
                return False
            self.sessions[peer] = session  # registered first, so closing the old one is not a "down"
            existing.close("replaced by a newer connection")
        self.sessions[peer] = session
        # (before start(): messages read during the handshake need it)
        if self.ondemand is not None:
            self.ondemand.session_up(session)
        self.driver.rep.peer_up(
            peer,
            self._wall(),
            summaries=wire.SUMMARY_FEATURE in session.features,
            probe=self.ondemand is None or not self.ondemand.large or session.dialer,
        )
        session.start()
        self.log.info("member %s connected (%s, %s)", peer, session.remote, "dialed" if session.dialer else "accepted")
        session.send(Members(self._member_list()))
        self.driver.kick()
        return True

    # -- duplicate identities (see identity.py) ---------------------------------------------------

    def _copy_of_us(self, session: Session) -> None:
        verdict = identity.on_copy_of_us(self.store.origin, session.hello.origin)
        self._warn_duplicate(
            (self.store.origin, session.hello.origin),
            f"a process at {session.remote} (origin {session.hello.origin}) runs under this node's id "
            f"{self.node_id} (this process: origin {self.store.origin}, listening on {self.advertised or '-'})",
            "this process takes a new node id" if verdict is identity.Verdict.REIDENTIFY_SELF else "it takes a new one",
        )
        session.close("duplicate node id")
        if verdict is identity.Verdict.REIDENTIFY_SELF:
            self._reidentify(f"a copy of this data directory runs at {session.remote}")

    def _second_session(self, session: Session, existing: Session) -> bool | None:
        """A second session for one node id: True if it replaces the existing one (whose process
        is gone), False if it was refused as a duplicate identity, None if the usual
        one-session-per-pair rule applies (the same process connected twice)."""
        verdict = identity.on_second_session(
            existing.hello.origin,
            session.hello.origin,
            silent_for_s=asyncio.get_running_loop().time() - existing.last_received,
            heartbeat_interval_s=self.options.heartbeat_interval_ns / NS_PER_S,
        )
        if verdict is identity.Verdict.REPLACE:
            self.sessions[session.peer_id] = session  # so closing the old one is not a "down"
            existing.close("replaced: its process restarted")
            return True
        if verdict is identity.Verdict.TELL_NEWCOMER:
            self._warn_duplicate(
                (existing.hello.origin, session.hello.origin),
                f"two live processes use node id {session.peer_id}: at {existing.address or existing.remote} (origin "
                f"{existing.hello.origin}) and at {session.address or session.remote} (origin {session.hello.origin})",
                f"the one at {session.remote} is told to take a new node id",
            )
            if wire.IDENTITY_FEATURE in session.features:
                session.send(Duplicate(existing.hello.origin, existing.address or existing.remote))
                # Closing at once would make the kernel reset the connection when the newcomer's
                # first frames arrive, and a reset discards the Duplicate it has not read yet:
                # let the newcomer close first (it does when it takes its new node id).
                self._spawn(self._close_when_read(session, "duplicate node id"))
            else:
                session.close("duplicate node id")
            return False
        return None

    async def _close_when_read(self, session: Session, reason: str) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                while await session.reader.read(65536):
                    pass
        session.close(reason)

    def _warn_duplicate(self, origins: tuple[str, str], what: str, action: str) -> None:
        if origins not in self._duplicates_logged:  # once per pair of processes, not per retry
            self._duplicates_logged.add(origins)
            self.log.warning(
                "DUPLICATE NODE ID: %s. Was a data directory copied (a VM snapshot, a container image, a restored "
                "backup)? No write is lost (every process writes under its own origin); %s.",
                what,
                action,
            )

    def _reidentify(self, why: str) -> None:
        """Take a new node id (keeping the data) and rejoin under it: every session is closed,
        the replicator restarts with the new identity, and the dialers reconnect. Runs on the
        loop thread; the storage work is a manifest write and one transaction per shard."""
        if self.stopping:
            return
        old = self.node_id
        sessions = list(self.sessions.values())
        self.sessions.clear()  # their close is not a "down" of the member
        for other in sessions:
            other.send(Bye("this node takes a new node id"))
            other.close("taking a new node id")
        self.driver.close()
        try:
            self.node_id = self.store.reidentify()
        except Exception as exc:
            self.log.error("could not take a new node id (%s): %s; will try again when told", why, exc)
        self.driver.start()
        if self.node_id != old:
            self.log.warning("node %s is now node %s (%s); its data is kept", old, self.node_id, why)
            if self.on_new_node_id is not None:
                self.on_new_node_id()
        self.driver.kick()

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
                        self.add_address(format_address(*parse_address(address, "member")), f"gossip:{session.peer_id}")
            return
        if isinstance(message, Bye):
            self.log.warning("member %s: %s", session.peer_id, message.reason)
            return
        if isinstance(message, PAXOS):
            if self.consensus is not None:
                self.consensus.on_message(session, message)
            return
        if isinstance(message, Duplicate):
            self._warn_duplicate(
                (self.store.origin, message.origin),
                f"member {session.peer_id} ({session.remote}) reports that node id {self.node_id} is also used by "
                f"a live process connected from {message.address} (origin {message.origin}); this process is "
                f"origin {self.store.origin}",
                "this process takes a new node id",
            )
            self._reidentify(f"its node id is used by a live process connected to {session.peer_id}")
            return
        self.driver.rep.on_message(session.peer_id, message, self._wall())
        self.driver.kick()

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
        rep = self.driver.replicator
        ondemand = self.ondemand
        if rep is not None:
            rep.peer_down(peer, self._wall(), record=ondemand is None or ondemand.records_down(reason))
        if ondemand is not None:
            ondemand.session_down(peer, reason)
        if not self.stopping:
            self.log.info("member %s disconnected: %s", peer, reason)

    async def say_goodbye(self) -> None:
        """Tell every member this node is shutting down, and close the sessions (on stop)."""
        for session in list(self.sessions.values()):
            session.send(Bye("shutting down"))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.writer.drain(), 1.0)
            session.close("shutting down")
