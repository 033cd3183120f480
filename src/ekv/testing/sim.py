"""A deterministic simulator: N real ekv cluster nodes over an in-memory network, in virtual
time, on one thread, driven by one seed.

Each node is a real :class:`~ekv._storage.store.ShardedStore` (SQLite files in a temporary
directory, in ``/dev/shm`` when it has room) and a real
:class:`~ekv._cluster.cluster.ClusterNode`: membership, dialing and backoff, gossip, the
handshake, sessions and heartbeats, duplicate identities, the outbox and the replicator all run
as in production, over :mod:`ekv.testing.memnet` on a :class:`~ekv.testing.vtime.VirtualTimeLoop`.
What is simulated:

* time: the loop's virtual clock; every node sees it through its own :class:`SimClock` with a
  per-node skew and drift, so hybrid-clock behaviour under skew is exercised;
* the network: partitions of any shape (also non-transitive) reset the memnet links between the
  groups and refuse new connections until the heal; the nodes' own dialers reconnect. Every
  connection passes through a lossy proxy (a :class:`~ekv.testing.memnet.LinkShaper`) that cuts
  the byte stream into wire frames and delays each one at random; a replication frame is at random
  dropped, duplicated or lets others overtake it (faults TCP itself would hide, injected to prove
  the protocol does not depend on them; a dropped frame is lost and the session goes on), control
  frames (handshake, heartbeats, membership) are only delayed;
* configuration: every node lists every other as its peers, or (``seed_nodes=k``) only the
  first ``k`` nodes, as an operator lists a few seeds; the rest are learned through the membership;
* clients: random puts (with and without TTL) and deletes on random nodes, every acknowledged
  write recorded with its version;
* crashes: the node's connections are reset (no Bye reaches anyone), its cluster stops, its store
  closes and reopens from its files under a new incarnation;
* copied data directories (``clones=``): both copies run under one node id until the real
  membership finds the duplicate and one of them takes a new node id (named by the simulation).
* linearizable operations (``consistent=True``, ``--consistent``): every node a voter, concurrent
  clients of consistent reads, conditional and unconditional writes and deletes on a few keys
  under ``c/`` (:mod:`ekv.testing._internal.simconsistent`); their frames are faults too, and
  ``fault_scale`` multiplies the rate of partitions, cuts, heals and crashes.

After the final heal and a quiet period, :meth:`Simulation.check` verifies convergence (every node
holds byte-identical entries), that no acknowledged write is lost unless a higher version
superseded it, that no deleted key came back, and (``consistent=True``) that the history of
the consistent operations is linearizable (:mod:`ekv.testing._internal.checker.linear`). A
failure message names the seed; running ``Simulation(seed=...)`` again replays it exactly (the
only inputs outside the seed, handshake nonces from ``os.urandom`` and the monotonic clock of log
rate limits, change no decision).

    python -m ekv.testing.sim --seeds 100        # run seeds 0..99 and report
    python -m ekv.testing.sim --consistent --seeds 200 --seconds 2 --fault-scale 5
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ekv._cluster import wire
from ekv._cluster.cluster import ClusterNode
from ekv._cluster.messages import Live, SyncChunk, TreeMessage
from ekv._cluster.replicator import ReplicationSettings, Replicator
from ekv._config import Config
from ekv._core.clock import HybridClock
from ekv._core.durations import NS_PER_S
from ekv._core.plumtree import Gossip
from ekv._log import NodeLog
from ekv._model import Version
from ekv._storage.store import ShardedStore
from ekv._values import Values
from ekv.testing._internal.simconsistent import PREFIX, ConsistentClients
from ekv.testing.memnet import MemoryNetwork
from ekv.testing.vtime import VirtualTimeLoop

__all__ = ["SimClock", "Simulation", "Violation"]

MS = NS_PER_S // 1000
PORT = 7000
_T = TypeVar("_T")
_DATA = frozenset({8, 9, 16, 17, 24, 25, 26})
"""The frame codes of replication messages (SyncRequest, SyncDone, Live, SyncChunk, Summary,
SummaryDiff, TreeMessage): the faults."""
_ENTRIES = frozenset({16, 17, 26})
_LIVE, _TREE, _GOSSIP = 16, 26, 1
"""Live's frame code, TreeMessage's, and the first body byte of a TreeMessage carrying a Gossip."""
_PAXOS = frozenset(range(18, 24))
"""The frame codes of the linearizable-operation messages (faults too, with ``consistent=True``)."""


def _scratch(seed: int) -> Path:
    """A new directory for a simulation's files: in memory (``/dev/shm``) when it has room, since
    the files die with the run and a disk's fsyncs (each store's opening and closing, checkpoints)
    would be most of a large simulation's waiting; else in the default temporary directory."""
    shm: str | None = "/dev/shm"
    try:
        shm = shm if os.access("/dev/shm", os.W_OK) and shutil.disk_usage("/dev/shm").free >= 1 << 30 else None
    except OSError:
        shm = None
    return Path(tempfile.mkdtemp(prefix=f"ekv-sim-{seed}-", dir=shm))


class SimClock:
    """A node's view of the simulation's virtual time: ``skew_ns + drift * virtual``."""

    def __init__(self, sim: Simulation, skew_ns: int = 0, drift: float = 1.0) -> None:
        self._sim = sim
        self.skew_ns = skew_ns
        self.drift = drift

    def now_ns(self) -> int:
        return self._sim.epoch_ns + int(self._sim.elapsed_ns() * self.drift) + self.skew_ns


@dataclass
class Violation:
    kind: str
    detail: str


@dataclass
class _Node:
    name: str
    path: Path
    clock: SimClock
    store: ShardedStore | None = None
    rep: Replicator | None = None
    """The replicator of the node's cluster (a new one after the node took a new node id)."""
    up: bool = True


class _SimStore(ShardedStore):
    """A store whose new node ids (taken when the membership finds a copy of its data directory)
    come from the simulation, so that a seed replays exactly."""

    new_identity: Callable[[], tuple[str, str]] | None = None

    def reidentify(self, *, node_id: str | None = None, incarnation: str | None = None) -> str:
        if node_id is None and self.new_identity is not None:
            node_id, incarnation = self.new_identity()
        return super().reidentify(node_id=node_id, incarnation=incarnation)


class _Link:
    """One direction of one connection through the lossy proxy: whole frames, each delayed; the
    replication ones also dropped, duplicated or reordered at random."""

    def __init__(self, owner: Simulation, source: str = "", destination: str = "") -> None:
        self._sim = owner
        self._route = (source, destination)
        self._buf = b""
        self._last = 0.0

    def __call__(self, data: bytes) -> Iterable[tuple[float, bytes]]:
        s = self._sim
        buf = self._buf + data
        pos = 0
        out: list[tuple[float, bytes]] = []
        now = s.loop.time()
        while len(buf) - pos >= wire.HEADER_SIZE:
            size = int.from_bytes(buf[pos : pos + 4], "big")
            if len(buf) - pos - 4 < size:
                break
            frame = buf[pos : pos + 4 + size]
            pos += 4 + size
            code = frame[4]
            copies = 1
            if code in s.faulty:
                if s.rng.random() < s.drop:
                    copies = 0
                elif s.rng.random() < s.duplicate:
                    copies = 2
            for _ in range(copies):
                when = now + s.rng.randint(*s.delay_ms) / 1000
                if code not in s.faulty or s.rng.random() >= s.reorder:
                    when = max(when, self._last + 1e-6)  # in order, like TCP
                    self._last = when
                out.append((when, frame))
                if code in _DATA:
                    s.messages += 1
                    s.frames[(*self._route, code, frame[5] if code == _TREE and size > 1 else 0)] += 1
                    if code in _ENTRIES:
                        s.in_flight.append((when, frame))
        self._buf = buf[pos:]
        return out


class Simulation:
    """One seeded run. See the module docstring."""

    checked_live = 0
    """``live_frames()`` when :func:`run_seed` checked the run."""
    checked_messages = 0
    """``messages`` when :func:`run_seed` checked the run (before any idle measurement)."""
    idle_rate = 0.0
    """Idle anti-entropy messages per node per second (:func:`run_seed` with ``idle_ms``)."""
    sessions_max = sessions_max_late = session_sum = session_samples = 0
    """Sessions per node sampled every 50 ms: the most (``_late``: from 5 s on, after the start's
    dials of every peer given), their sum and count (the mean is ``session_sum / session_samples``)."""

    def __init__(
        self,
        seed: int,
        *,
        nodes: int = 3,
        shards: int = 2,
        keys: int = 12,
        drop: float = 0.02,
        duplicate: float = 0.02,
        reorder: float = 0.02,
        delay_ms: tuple[int, int] = (0, 30),
        skew_ms: int = 200,
        ttl_fraction: float = 0.15,
        delete_fraction: float = 0.25,
        anti_entropy_ms: int = 1_000,
        tombstone_ttl_s: int = 3600,
        chunk_entries: int = 4,
        gc_every_ms: int = 2_000,
        log_retention_s: int = 3600,
        use_wire: bool = True,  # (kept for compatibility: real nodes always speak the wire protocol)
        clones: int = 0,
        directory: Path | None = None,
        mutate: Callable[[Simulation], None] | None = None,
        consistent: bool = False,
        fault_scale: float = 1.0,
        consistent_options: dict[str, Any] | None = None,
        seed_nodes: int | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.loop = VirtualTimeLoop()
        self.epoch_ns = 1_767_225_600 * NS_PER_S
        self.now_ns = self.epoch_ns
        self.drop, self.duplicate, self.reorder, self.delay_ms = drop, duplicate, reorder, delay_ms
        self.keys = [f"k{i % 4}/{i}" for i in range(keys)]
        self.ttl_fraction = ttl_fraction
        self.delete_fraction = delete_fraction
        self._anti_entropy_ms = anti_entropy_ms
        self._chunk_entries = chunk_entries
        self.settings = ReplicationSettings(
            anti_entropy_interval_ns=anti_entropy_ms * MS,
            sync_chunk_entries=chunk_entries,
            sync_chunk_bytes=1 << 20,
            tombstone_ttl_ns=tombstone_ttl_s * NS_PER_S,
        )
        self._tombstone_ttl_s, self._log_retention_s = tombstone_ttl_s, log_retention_s
        self._shards, self._seed_nodes = shards, seed_nodes
        self._own_dir = directory is None
        self.directory = _scratch(seed) if directory is None else directory
        self.blocked: set[tuple[str, str]] = set()
        self.sessions: set[frozenset[str]] = set()
        self.acked: list[tuple[str, str, Version, bytes | None, int | None]] = []
        self.trace: list[str] = []
        self.messages = 0
        self.frames: Counter[tuple[str, str, int, int]] = Counter()  # (from, to, frame code, tree kind or 0)
        self.in_flight: list[tuple[float, bytes]] = []
        """Frames carrying entries, with the time they arrive (for :meth:`settle`)."""
        self.clones_left = clones
        self._incarnations = self._identities = 0
        self.gc_every_ms = gc_every_ms
        self.log_retention_ns = log_retention_s * NS_PER_S
        self.faulty, self.fault_scale = (_DATA | _PAXOS if consistent else _DATA), fault_scale
        self.net = MemoryNetwork(shaper=lambda source, destination: _Link(self, source, destination))
        self.clusters: dict[str, ClusterNode] = {}
        self.nodes: dict[str, _Node] = {}
        for i in range(nodes):
            name = f"n{i}"
            skew = self.rng.randint(-skew_ms, skew_ms) * MS
            drift = 1.0 + self.rng.uniform(-0.001, 0.001)
            self.nodes[name] = _Node(name, self.directory / name, SimClock(self, skew, drift))
        self.consistent = ConsistentClients(self, **(consistent_options or {})) if consistent else None
        for node in self.nodes.values():
            self._await(self._open(node, new_node_id=f"{seed:08x}{node.name:>08}"))
        if mutate is not None:
            mutate(self)
        self._tick_task = self.loop.create_task(self._ticks())
        self._ticking = False
        self._writes_per_s = 0.0
        self._faults = False
        self._next_gc = self.now_ns + gc_every_ms * MS

    # -- the loop ------------------------------------------------------------------------------

    def elapsed_ns(self) -> int:
        """Virtual time since the start."""
        return round(self.loop.time() * NS_PER_S)

    def _await(self, coro: Coroutine[Any, Any, _T]) -> _T:
        result = self.loop.run_until_complete(coro)
        self._refresh()
        return result

    def _refresh(self) -> None:
        self.now_ns = self.epoch_ns + self.elapsed_ns()
        for name, node in self.nodes.items():
            cluster = self.clusters.get(name)
            node.rep = None if cluster is None else cluster.replicator
            node.up = cluster is not None
        # (from each node's sessions, not every pair of nodes: this runs every tick, and N² pairs
        # cost 50 ms a tick at 100 nodes; two copies of a data directory share a node id)
        names_of: dict[str, list[str]] = {}
        for name, cluster in self.clusters.items():
            names_of.setdefault(cluster.node_id, []).append(name)
        self.sessions = {
            frozenset((a, b))
            for a, cluster in self.clusters.items()
            for peer in cluster.sessions
            for b in names_of.get(peer, ())
            if a < b
        }

    # -- nodes -----------------------------------------------------------------------------------

    async def _open(self, node: _Node, *, new_node_id: str | None = None) -> None:
        names = [n for n in self.nodes if n != node.name]
        if self._seed_nodes is not None:  # (as an operator lists a few seeds; the rest come through SWIM)
            names = [n for n in list(self.nodes)[: self._seed_nodes] if n != node.name]
        config = Config.create(
            "sim",
            node.path,
            shards=self._shards,
            tombstone_ttl=self._tombstone_ttl_s,
            gc_interval=min(60, self._tombstone_ttl_s / 2),
            log=False,
            clock=node.clock,
            listen=f"{node.name}:{PORT}",
            peers=[f"{n}:{PORT}" for n in names],
            cookie="ekv-sim",
            anti_entropy_interval=self._anti_entropy_ms / 1000,
            sync_chunk_entries=self._chunk_entries,
            log_retention=self._log_retention_s,
            reconnect_max=1.0,
            compression_threshold=64,
            **self._consistency(),
        )
        store = _SimStore.open(
            config, HybridClock(node.clock), new_node_id=new_node_id, incarnation=self._next_incarnation()
        )
        assert isinstance(store, _SimStore)
        store.new_identity = lambda name=node.name: self._new_identity(name)
        cluster = ClusterNode(
            config, store, NodeLog("sim", False), network=self.net.host(node.name), rng=random.Random(self.rng.random())
        )
        node.store = store
        await cluster.open()
        self.clusters[node.name] = cluster
        self._refresh()

    def _consistency(self) -> dict[str, Any]:
        """The options of linearizable operations: every node a voter (only with ``consistent=True``,
        so that other seeds replay as before)."""
        if self.consistent is None:
            return {}
        return {"cluster_size": len(self.consistent.voters), "consistent_prefixes": [PREFIX]}

    def _next_incarnation(self) -> str:
        self._incarnations += 1
        return f"{self._incarnations:08x}"

    def _new_identity(self, name: str) -> tuple[str, str]:
        self._identities += 1
        node_id = f"{self.seed:08x}{name:>08}r{self._identities}"
        self.trace.append(f"{self.elapsed_ns()} {name} takes node id {node_id}")
        return node_id, self._next_incarnation()

    async def _close(self, name: str) -> None:
        """Stop a node as a crash does: its connections reset first, so no Bye reaches anyone."""
        self.net.reset_host(name)
        cluster = self.clusters.pop(name)
        await cluster.membership.close(leave=False)  # (nor a SWIM "left")
        await cluster.aclose()
        store = self.nodes[name].store
        assert store is not None
        store.close()
        self._refresh()

    async def _crash(self, name: str) -> None:
        self.trace.append(f"{self.elapsed_ns()} crash {name}")
        await self._close(name)
        await self._open(self.nodes[name])

    async def _clone(self, name: str) -> str:
        node = self.nodes[name]
        await self._close(name)
        copy_name = f"{name}c{sum(1 for n in self.nodes if n.startswith(name + 'c'))}"
        shutil.copytree(node.path, self.directory / copy_name)
        skew = self.rng.randint(-200, 200) * MS
        copy = _Node(copy_name, self.directory / copy_name, SimClock(self, skew, node.clock.drift))
        self.nodes[copy_name] = copy
        self.trace.append(f"{self.elapsed_ns()} clone {name} as {copy_name}")
        await self._open(node)
        await self._open(copy)
        for other, cluster in self.clusters.items():
            if other != copy_name:  # the others learn of it as an operator's kv.connect() would
                cluster.members.add_address(f"{copy_name}:{PORT}", "connect")
        return copy_name

    def crash(self, name: str) -> None:
        """Crash a node (its connections reset, nothing said) and reopen it from its files."""
        self._await(self._crash(name))

    def clone(self, name: str) -> str:
        """Copy a node's data directory while it is closed and run both copies (a VM snapshot,
        a container image with baked data, a restored backup). The copy runs under the same node
        id, and writes, until the real membership finds the duplicate (``ekv._cluster.identity``)
        and one of the two takes a new node id. Returns the copy's name."""
        return self._await(self._clone(name))

    # -- network ---------------------------------------------------------------------------------

    def _update_sessions(self) -> None:
        names = sorted(self.nodes)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if self.link_up(a, b):
                    self.net.heal(a, b)
                elif not self.net.is_cut(a, b):
                    self.net.cut(a, b)

    def _trace_now(self) -> None:
        self.now_ns = self.epoch_ns + self.elapsed_ns()

    # -- the event loop ----------------------------------------------------------------------------

    async def _ticks(self) -> None:
        """The simulation's own timer: client writes, faults and GC every 50 virtual ms."""
        tick_s = 0.05
        while True:
            await asyncio.sleep(tick_s)
            if not self._ticking:
                continue
            self._trace_now()
            if self._writes_per_s and self.rng.random() < self._writes_per_s * tick_s:
                self.client_write()
            if self._writes_per_s and self.consistent is not None:
                self.consistent.tick(tick_s)
            if self._faults:
                await self._fault()
            self._refresh()
            counts = [len(c.sessions) for c in self.clusters.values()]  # (N-1 in a full mesh)
            self.sessions_max = max(self.sessions_max, *counts, 0)
            if self.elapsed_ns() >= 5 * NS_PER_S:
                self.sessions_max_late = max(self.sessions_max_late, *counts, 0)
            self.session_sum, self.session_samples = self.session_sum + sum(counts), self.session_samples + len(counts)
            if self.now_ns >= self._next_gc:
                self._next_gc = self.now_ns + self.gc_every_ms * MS
                self.gc_all()
                now = self.loop.time()
                self.in_flight = [item for item in self.in_flight if item[0] > now]  # (arrived)

    async def _fault(self) -> None:
        roll = self.rng.random() / self.fault_scale
        names = sorted(self.nodes)
        if roll < 0.01:
            shuffled = names[:]
            self.rng.shuffle(shuffled)
            cut = self.rng.randint(1, len(shuffled) - 1)
            self.partition([shuffled[:cut], shuffled[cut:]])
        elif roll < 0.015 and len(names) >= 3:
            a, b = self.rng.sample(names, 2)
            self.cut(a, b)
        elif roll < 0.03:
            self.heal()
        elif roll < 0.033:
            await self._crash(self.rng.choice(names))
        elif roll < 0.036 and self.clones_left > 0:
            self.clones_left -= 1
            await self._clone(self.rng.choice(names))

    def run(self, duration_ms: int, *, writes_per_s: float = 50.0, faults: bool = True) -> None:
        """Advance virtual time by ``duration_ms``, with client writes and (optionally) random faults."""
        self._ticking, self._writes_per_s, self._faults = True, writes_per_s, faults
        try:
            self._await(asyncio.sleep(duration_ms / 1000))
        finally:
            self._ticking = False

    def settle(self, max_ms: int = 120_000) -> int:
        """Heal, stop writes, and run until the stores are identical and no data is on its way
        (see :meth:`Simulation.settle`)."""
        self.heal()
        start = self.elapsed_ns()
        while self.elapsed_ns() - start < max_ms * MS:
            self.run(500, writes_per_s=0, faults=False)
            busy = any(c.replicator is not None and c.replicator.busy for c in self.clusters.values())
            busy = busy or any(len(c.outbox) for c in self.clusters.values())
            if not busy and not self._data_in_flight() and self._converged():
                break
        return int((self.elapsed_ns() - start) / MS)

    def live_frames(self, source: str | None = None, *, tree: bool = True) -> int:
        """Frames that carried live writes (direct ``Live``, and with ``tree`` the tree's Gossip),
        sent by ``source`` (a host name) or by all."""
        return sum(
            count
            for (host, _, code, kind), count in self.frames.items()
            if (source is None or host == source) and (code == _LIVE or (tree and code == _TREE and kind == _GOSSIP))
        )

    def idle_messages(self, duration_ms: int) -> int:
        """Replication messages sent while the cluster idles for ``duration_ms`` (no writes, no
        faults): the steady-state cost of anti-entropy."""
        before = self.messages
        self.run(duration_ms, writes_per_s=0, faults=False)
        return self.messages - before

    def _data_in_flight(self) -> bool:
        now = self.loop.time()
        self.in_flight = [(when, frame) for when, frame in self.in_flight if when > now]
        for _, frame in self.in_flight:
            for message in wire.FrameDecoder(1 << 26).feed(frame):
                if isinstance(message, Live | SyncChunk) and message.entries:
                    return True
                if isinstance(message, TreeMessage) and isinstance(message.message, Gossip):
                    return True
        return False

    def close(self) -> None:
        try:
            if self.consistent is not None:
                self.loop.run_until_complete(self.consistent.stop())
            for name in list(self.clusters):
                self._await(self._close(name))
            self._tick_task.cancel()
            self.loop.run_until_complete(asyncio.gather(self._tick_task, return_exceptions=True))
        finally:
            self.loop.close()
            if self._own_dir:
                shutil.rmtree(self.directory, ignore_errors=True)

    def node_id(self, name: str) -> str:
        store = self.nodes[name].store
        assert store is not None
        return store.node_id

    def link_up(self, a: str, b: str) -> bool:
        return (a, b) not in self.blocked and (b, a) not in self.blocked

    def partition(self, groups: list[list[str]]) -> None:
        """Cut every link between different groups (nodes not listed stay connected to all)."""
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                for a in group:
                    for b in other:
                        self.blocked.add((a, b))
        self.trace.append(f"{self.elapsed_ns()} partition {groups}")
        self._update_sessions()

    def cut(self, a: str, b: str) -> None:
        self.blocked.add((a, b))
        self.trace.append(f"{self.elapsed_ns()} cut {a}-{b}")
        self._update_sessions()

    def heal(self) -> None:
        self.blocked.clear()
        self.trace.append(f"{self.elapsed_ns()} heal")
        self._update_sessions()

    def client_write(self, name: str | None = None, key: str | None = None) -> None:
        """One acknowledged client write: on ``name`` (a random live node by default), to
        ``key`` (a random one of the simulation's keys by default)."""
        name = name or self.rng.choice([n for n, node in self.nodes.items() if node.up])
        store = self.nodes[name].store
        assert store is not None
        key = key or self.rng.choice(self.keys)
        roll = self.rng.random()
        if roll < self.delete_fraction:
            version = Values(store).delete(key)
            self.acked.append((name, key, version, None, None))
        else:
            value = f"{name}:{self.rng.random():.12f}".encode()
            ttl = self.rng.choice([0.2, 1, 5, 60]) if self.rng.random() < self.ttl_fraction else None
            version = Values(store).put(key, value, ttl=ttl)
            entry = store.entry(key)
            assert entry is not None and entry.version == version
            self.acked.append((name, key, version, entry.value, entry.expires_at_ns))

    def gc_all(self) -> None:
        """A GC pass on every node: expiry, purge, and change-log truncation up to what every
        member has reported (the node's real rule)."""
        for node in self.nodes.values():
            if node.store is None or node.rep is None:
                continue
            now = node.clock.now_ns()
            cutoff = now - self.settings.tombstone_ttl_ns
            for index in range(self._shards):
                targets = node.rep.truncation_targets(index, now, self.log_retention_ns)
                node.store.gc_shard(index, now_ns=now, cutoff_ns=cutoff, log_targets=targets)

    def dump(self, name: str) -> dict[str, tuple[int, str, int | None, bytes | None]]:
        """key -> (timestamp, origin, expires_at, value) of every stored entry; expired puts
        count as tombstones (a node that has not run GC yet may still hold their value)."""
        store = self.nodes[name].store
        assert store is not None
        now = self.nodes[name].clock.now_ns()
        out = {}
        for e in store.entries():
            value = e.value if e.is_visible(now) else None
            out[e.key] = (e.timestamp_ns, e.origin, e.expires_at_ns, value)
        return out

    def _converged(self) -> bool:
        dumps = [self.dump(name) for name in sorted(self.nodes)]
        return all(d == dumps[0] for d in dumps[1:])

    def check(self) -> list[Violation]:
        """Convergence, no lost acknowledged write, no resurrection, and with ``consistent=True``
        the linearizability of the consistent operations. Call after :meth:`settle`."""
        problems: list[Violation] = []
        if self.consistent is not None:
            for found in self.consistent.check():
                problems.append(Violation("linearizability", f"{found.key}: {found.kind}: {found.message}"))
        names = sorted(self.nodes)
        dumps = {name: self.dump(name) for name in names}
        reference = dumps[names[0]]
        for name in names[1:]:
            if dumps[name] != reference:
                diff = sorted(k for k in set(reference) | set(dumps[name]) if reference.get(k) != dumps[name].get(k))
                problems.append(Violation("divergence", f"{names[0]} and {name} differ on {diff[:5]}"))
        final = reference
        best: dict[str, tuple[Version, bytes | None]] = {}
        for _node, key, version, value, _expires in self.acked:
            if key not in best or version > best[key][0]:
                best[key] = (version, value)
        for key, (version, value) in best.items():
            stored = final.get(key)
            if stored is None:
                if value is not None:
                    problems.append(Violation("lost", f"acknowledged {key!r}@{version} is missing everywhere"))
                continue
            stored_version = Version(stored[0], stored[1])
            if stored_version < version:
                problems.append(
                    Violation("lost", f"{key!r}: acknowledged {version} but the cluster holds older {stored_version}")
                )
            elif stored_version == version and value is None and stored[3] is not None:
                problems.append(Violation("resurrection", f"{key!r} was deleted at {version} but has a value"))
        return problems

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_seed(
    seed: int, *, duration_ms: int = 20_000, idle_ms: int = 0, **options: Any
) -> tuple[list[Violation], int, Simulation]:
    """Run one seed: ``duration_ms`` of writes and faults, then settle and check (then, with
    ``idle_ms``, idle and record anti-entropy's messages per node per second in ``idle_rate``)."""
    sim = Simulation(seed, **options)
    try:
        sim.run(duration_ms)
        settle_ms = sim.settle()
        problems = sim.check()
        sim.checked_messages = sim.messages
        sim.checked_live = sim.live_frames()
        if idle_ms:
            sim.idle_rate = sim.idle_messages(idle_ms) / len(sim.nodes) / (idle_ms / 1000)
        return problems, settle_ms, sim
    finally:
        sim.close()


def main(argv: list[str] | None = None) -> int:
    """Run seeds from the command line (:mod:`ekv.testing._internal.simcli`)."""
    from ekv.testing._internal.simcli import main as cli

    return cli(argv, run_seed)


if __name__ == "__main__":
    sys.exit(main())
