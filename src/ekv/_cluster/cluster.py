"""The cluster side of one ekv instance, wired together on the process's network loop thread.

A :class:`ClusterNode` composes the parts and gives the node (:mod:`ekv._node.node`) thread-safe
methods; the parts are:

* :class:`~ekv._cluster.members.MemberSet`: members, dialing and backoff, discovery, gossip, the
  sessions and duplicate identities;
* :class:`~ekv._cluster.membership.ClusterMembership`: SWIM membership over UDP on the listener's
  port (a listening node only), whose members the :class:`MemberSet` dials;
* :class:`~ekv._cluster.driver.Driver`: the replicator, the outbox of local writes, ticks;
* :class:`~ekv._cluster.consensus.Consensus`: linearizable operations among the voters;
* :mod:`ekv._cluster.clients`: command-line clients served on the cluster port;
* :mod:`ekv._cluster.report`: ``info()`` and the metrics;
* a :class:`~ekv._cluster.network.Network` through which every connection goes (the real one,
  :class:`~ekv._cluster.network.TcpNetwork`, unless the constructor is given another: tests run
  the real cluster code over :mod:`ekv.testing.memnet`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

from ekv._cluster import report, wire
from ekv._cluster.clients import serve_client
from ekv._cluster.consensus import Consensus
from ekv._cluster.driver import Driver
from ekv._cluster.listener import ListenerHold
from ekv._cluster.members import MemberSet
from ekv._cluster.membership import ClusterMembership
from ekv._cluster.messages import Hello, Message
from ekv._cluster.network import Network, TcpNetwork
from ekv._cluster.ondemand import OnDemand, idle_close_s
from ekv._cluster.outbox import Outbox
from ekv._cluster.replicator import ReplicationSettings, Replicator
from ekv._cluster.runtime import runtime
from ekv._cluster.session import Session
from ekv._config import ClusterOptions, Config
from ekv._core.addresses import format_address, parse_address
from ekv._core.durations import NS_PER_S
from ekv._core.paxos import REFRESH, Op, Outcome, Read
from ekv._errors import ConfigError, InvalidArgument, NoQuorumError
from ekv._log import instance_logging
from ekv._storage.acceptor import Acceptor
from ekv._storage.replication import StoreReplicationPort
from ekv._storage.store import ShardedStore

__all__ = ["ClusterNode"]


class ClusterNode:
    """Replication for one instance. Public methods are thread-safe.

    ``network``: how to connect and listen; None for the real network (TCP/TLS, listening on
    ``listener``, which the node bound before opening its data directory). ``rng``: the source of
    the jitter of reconnects and anti-entropy (seeded for reproducible runs; random by default).

    :meth:`start` and :meth:`stop` run the cluster on the process's network thread; a caller that
    runs its own event loop (the virtual-time tests) awaits :meth:`open` and :meth:`aclose` on it."""

    def __init__(
        self,
        config: Config,
        store: ShardedStore,
        log: Any,
        listener: ListenerHold | None = None,
        network: Network | None = None,
        rng: random.Random | None = None,
    ) -> None:
        options = config.cluster
        assert options is not None
        self.config = config
        self.options: ClusterOptions = options
        self.store = store
        self.log = log
        self.name = config.name
        self._wall = config.clock.now_ns
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
        self.network: Network = TcpNetwork(listener) if network is None else network
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listen_address: tuple[str, int] | None = None
        rng = random.Random() if rng is None else rng
        self.driver = Driver(StoreReplicationPort(store), self.settings, options, log, self._wall, {}, rng)
        self.members = MemberSet(config, store, log, self.driver, self.network, self._spawn, self._serve_client, rng)
        self.consensus = Consensus(
            Acceptor(store),
            cluster_size=config.cluster_size,
            role=config.role,
            sessions=self.members.sessions,
            node_id=lambda: self.members.node_id,
            origin=lambda: store.origin,
            tick=store.clock.tick,
            wall=self._wall,
            log=log,
            rng=rng,
        )
        self.members.consensus = self.consensus
        self.membership = ClusterMembership(
            self.members,
            self.network,
            instance=config.name,
            cookie=options.cookie,
            data_dir=store.datadir.path,
            log=log,
            wall=self._wall,
            rng=rng,
        )
        self.members.on_address = self.membership.learn
        self.members.on_new_node_id = self.membership.renamed
        self.ondemand = OnDemand(
            self.members,
            self.membership,
            idle_close_s=idle_close_s(options.anti_entropy_interval_ns),
            wall=self._wall,
            spawn=self._spawn,
        )
        self.members.ondemand = self.driver.ondemand = self.ondemand
        self.membership.on_event = self.ondemand.on_event
        self.clients: set[Session] = set()
        self.node_info: Any = None
        """Set by the node: returns its info() (for client commands)."""
        self._runtime = runtime()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logging_counted = False

    # -- the parts' state, for report.py, the node and ekv.testing -----------------------------

    @property
    def node_id(self) -> str:
        return self.members.node_id

    @property
    def sessions(self) -> dict[str, Session]:
        return self.members.sessions

    @property
    def addresses(self) -> dict[str, dict[str, Any]]:
        return self.members.addresses

    @property
    def advertised(self) -> str | None:
        return self.members.advertised

    @property
    def refused(self) -> dict[str, dict[str, Any]]:
        return self.members.refused

    @property
    def last_disconnect(self) -> dict[str, tuple[int, str]]:
        return self.members.last_disconnect

    @property
    def replicator(self) -> Replicator | None:
        return self.driver.replicator

    @property
    def outbox(self) -> Outbox:
        return self.driver.outbox

    # -- lifecycle (called from the node's thread) ------------------------------------------

    def start(self) -> None:
        self._loop = self._runtime.acquire()
        try:
            self._runtime.run(self.open(), timeout=60)
        except BaseException:
            self._runtime.release()
            raise
        instance_logging(self.log.on, +1)  # the shared network loop may log while we run
        self._logging_counted = True

    def stop(self) -> None:
        self._unhook_writes()
        try:
            if self._runtime.running:
                self._runtime.run(self.aclose(), timeout=30)
            # else the interpreter is finalising and the loop thread is frozen: waiting for it
            # would only run into the timeout; the process exit closes the sockets.
        finally:
            if self._logging_counted:
                self._logging_counted = False
                instance_logging(self.log.on, -1)
            self._runtime.release()

    async def open(self) -> None:
        """Start on the running loop: serve, dial, discover, tick (what :meth:`start` runs).
        From its end, every local write of the store is queued for the members."""
        self.driver.loop = asyncio.get_running_loop()
        self.driver.start()
        options = self.options
        if options.listen is not None:
            host = options.listen[0]
            self._listen_address = await self.network.serve(options.listen, self)
            advertised = options.advertise or (
                format_address(host, self._listen_address[1]) if host not in ("", "0.0.0.0", "::") else None
            )
            self.log.info("listening on %s", format_address(host, self._listen_address[1]))
            if advertised is None:
                advertised = f":{self._listen_address[1]}"  # the host is filled in by each peer
            self.members.advertised = advertised
            await self.membership.start(self._listen_address, advertised)
        else:
            self.membership.reason = "not listening"
        for address in options.peers:
            self.members.add_address(address, "peers")
        for name in options.discovery:
            self._spawn(self.members.discover(name))
        self._spawn(self.driver.tick_loop())
        for shard in self.store.shards:
            shard.outbox = self.driver.on_local_writes  # local writes now go out live

    def _unhook_writes(self) -> None:
        for shard in self.store.shards:
            shard.outbox = None

    async def aclose(self) -> None:
        """Say goodbye and stop every task (what :meth:`stop` runs)."""
        self._unhook_writes()
        self.members.stopping = self.driver.stopping = True
        for client in list(self.clients):
            client.close("shutting down")
        await self.membership.close(leave=True)  # (first: the members see "left", not "failed")
        await self.members.say_goodbye()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listen_address is not None:
            await self.network.unserve(self._listen_address, self)
        self.driver.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def listen_address(self) -> str | None:
        """The address this node listens on (with the real port when 0 was asked for)."""
        if self._listen_address is None:
            return None
        return format_address(*self._listen_address)

    # -- connections (loop thread) --------------------------------------------------------------

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: Any) -> None:
        """A connection for this instance arrived on the listener (called by the network)."""
        await self.members.accept(reader, writer, first)

    def _serve_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        theirs: Hello,
        features: frozenset[str],
        decoder: wire.FrameDecoder,
        pending: list[Message],
    ) -> None:
        serve_client(self, reader, writer, theirs, features, decoder, pending)

    def make_session(self, *args: Any, **kwargs: Any) -> Session:
        """A session on an authenticated connection (see :meth:`MemberSet.make_session`)."""
        return self.members.make_session(*args, **kwargs)

    # -- thread-safe -------------------------------------------------------------------------------

    def connect(self, address: str) -> None:
        """Add ``address`` to the members to dial (thread-safe)."""
        normal = format_address(*parse_address(address, "address"))
        self._runtime.call(self.members.add_address, normal, "connect")

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the loop thread and return its result."""

        async def run() -> Any:
            return fn(*args)

        return self._runtime.run(run(), timeout=30)

    def propose(self, op: Op, timeout_ns: int) -> Outcome:
        """Run a linearizable operation among the voters (:mod:`ekv._cluster.consensus`); blocks
        the calling thread (never the loop thread) until it ends or ``timeout_ns`` is up."""
        return self._runtime.run(self.consensus.run(op, timeout_ns), timeout=timeout_ns / NS_PER_S + 5)

    def replace_voter(self, node_id: str, timeout_ns: int) -> dict[str, Any]:
        """The voter-replacement procedure (docs/operators.md), run on a live voter while the
        voter ``node_id`` is stopped for good: retire it (this node and, through their Hellos,
        every member refuse it from now on), then re-read every consistent key through a quorum of
        the remaining voters, accepting its latest chosen record again under a new ballot, so
        every quorum that includes the new, empty voter still includes a voter that holds it.
        Then the new voter may start. Raises NoQuorumError if some key could not be re-read (run
        it again once a quorum is up)."""
        consensus = self.consensus
        if not consensus.voter or consensus.cluster_size is None:
            raise ConfigError("replace a voter from a voter with cluster_size set")
        if node_id == self.node_id:
            raise InvalidArgument("a voter cannot replace itself: run this on another voter")
        if self.call(lambda: any(s.peer_id == node_id for s in consensus.voter_sessions())):
            raise InvalidArgument(f"voter {node_id} is connected: stop it for good first, then replace it")
        self.call(consensus.retire, node_id)
        failed = []
        keys = Acceptor(self.store).consistent_keys(self.config.consistent_prefixes)
        for key in keys:
            if not isinstance(self.propose(Op(key, REFRESH, None, None), timeout_ns), Read):
                failed.append(key)
        if failed:
            raise NoQuorumError(
                f"{len(failed)} of {len(keys)} consistent keys could not be re-read (no quorum of the remaining "
                f"voters), e.g. {failed[0]!r:.80}: run the replacement again once a quorum is up"
            )
        self.log.warning("voter %s replaced: %d consistent keys re-read; the new voter may start", node_id, len(keys))
        return {"retired": node_id, "keys_reread": len(keys)}

    def info(self) -> dict[str, Any]:
        return dict(self.call(report.cluster_info, self))

    def metrics(self) -> dict[str, float]:
        return dict(self.call(report.cluster_metrics, self))

    # The replicator is looked up on the loop thread, at the call: taking a new node id
    # replaces it there, and the one read here beforehand could be the closed one.

    def clear_quarantine(self, node_id: str) -> bool:
        return bool(self.call(lambda: self.driver.rep.clear_quarantine(node_id)))

    def truncation_targets(self, shard: int, now_ns: int) -> dict[str, int] | None:
        retention_ns = self.options.log_retention_ns
        result: dict[str, int] | None = self.call(
            lambda: self.driver.rep.truncation_targets(shard, now_ns, retention_ns)
        )
        return result

    def skew(self) -> dict[str, int | None]:
        return {node_id: s.skew_ns for node_id, s in self.sessions.items()}
