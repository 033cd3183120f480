"""A deterministic simulator: N nodes running ekv's real storage and replication code over an
in-memory network, in virtual time, on one thread, driven by one seed.

Each node is a real :class:`~ekv._storage.store.ShardedStore` (SQLite files in a temporary
directory) and a real :class:`~ekv._cluster.replicator.Replicator`. What is simulated:

* time: one virtual clock; every node sees it through its own :class:`FakeClock`-like view with a
  per-node skew and drift, so hybrid-clock behaviour under skew is exercised;
* the network: sessions between pairs of nodes come and go with partitions (any shape, also
  non-transitive); a link delivers in order like TCP, except that at random a message is
  dropped, duplicated or overtakes others (faults TCP itself would hide, injected to prove the
  protocol does not depend on them); messages are delayed at random and pass through the real
  wire codec;
* clients: random puts (with and without TTL) and deletes on random nodes, every acknowledged
  write recorded with its version;
* crashes: a node is closed and reopened from its files.

After the final heal and a quiet period, :meth:`Simulation.check` verifies convergence (every node
holds byte-identical entries), that no acknowledged write is lost unless a higher version
superseded it, and that no deleted key came back. A failure message names the seed; running
``Simulation(seed=...)`` again replays it exactly.

    python -m ekv.testing.sim --seeds 100        # run seeds 0..99 and report
"""

from __future__ import annotations

import argparse
import heapq
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ekv._cluster.messages import Live, Message, SyncChunk
from ekv._cluster.replicator import ReplicationSettings, Replicator
from ekv._config import Config
from ekv._core.clock import HybridClock
from ekv._core.durations import NS_PER_S
from ekv._model import Entry, Version
from ekv._storage.replication import StoreReplicationPort
from ekv._storage.store import ShardedStore
from ekv._values import Values

__all__ = ["SimClock", "Simulation", "Violation"]

MS = NS_PER_S // 1000


class SimClock:
    """A node's view of the simulation's virtual time: ``skew_ns + drift * virtual``."""

    def __init__(self, sim: Simulation, skew_ns: int = 0, drift: float = 1.0) -> None:
        self._sim = sim
        self.skew_ns = skew_ns
        self.drift = drift

    def now_ns(self) -> int:
        t = self._sim.now_ns
        return self._sim.epoch_ns + int((t - self._sim.epoch_ns) * self.drift) + self.skew_ns


class _NullSink:
    active = False

    def matches(self, key: str) -> bool:
        return False

    def publish(self, events: list[Any]) -> None:
        pass


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
    outbox: list[tuple[int, list[Entry]]] = field(default_factory=list)
    up: bool = True
    duplicate_until: int | None = None
    """A copy of another node's data directory, still under that node's id: members refuse it
    (one session per node id) until it takes a new one at this virtual time."""


def _wire_codec() -> tuple[Callable[[Message], bytes], Callable[[bytes], list[Message]]] | None:
    try:
        from ekv._cluster import wire
    except ImportError:  # pragma: no cover - the wire module is part of the package
        return None

    def encode(msg: Message) -> bytes:
        return wire.encode(msg, compress_threshold=64)

    def decode(data: bytes) -> list[Message]:
        decoder = wire.FrameDecoder(1 << 26)
        return decoder.feed(data)

    return encode, decode


class Simulation:
    """One seeded run. See the module docstring."""

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
        use_wire: bool = True,
        clones: int = 0,
        directory: Path | None = None,
        mutate: Callable[[Simulation], None] | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.epoch_ns = 1_767_225_600 * NS_PER_S
        self.now_ns = self.epoch_ns
        self.drop = drop
        self.duplicate = duplicate
        self.reorder = reorder
        self._link_last: dict[tuple[str, str], int] = {}
        self.delay_ms = delay_ms
        self.keys = [f"k{i % 4}/{i}" for i in range(keys)]
        self.ttl_fraction = ttl_fraction
        self.delete_fraction = delete_fraction
        self.settings = ReplicationSettings(
            anti_entropy_interval_ns=anti_entropy_ms * MS,
            sync_chunk_entries=chunk_entries,
            sync_chunk_bytes=1 << 20,
            tombstone_ttl_ns=tombstone_ttl_s * NS_PER_S,
            sync_timeout_ns=3 * anti_entropy_ms * MS,
        )
        self._tombstone_ttl_s = tombstone_ttl_s
        self._shards = shards
        self._own_dir = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix=f"ekv-sim-{seed}-")) if directory is None else directory
        self._queue: list[tuple[int, int, str, str, Any]] = []
        self._seq = 0
        self.blocked: set[tuple[str, str]] = set()
        self.sessions: set[frozenset[str]] = set()
        self.acked: list[tuple[str, str, Version, bytes | None, int | None]] = []
        """(node, key, version, value or None for a delete, expires_at)"""
        self.trace: list[str] = []
        self.messages = 0
        self.wire = _wire_codec() if use_wire else None
        self.clones_left = clones
        self._incarnations = 0
        self.gc_every_ms = gc_every_ms
        self.log_retention_ns = log_retention_s * NS_PER_S
        self._next_gc = self.now_ns + gc_every_ms * MS
        self.nodes: dict[str, _Node] = {}
        for i in range(nodes):
            name = f"n{i}"
            skew = self.rng.randint(-skew_ms, skew_ms) * MS
            drift = 1.0 + self.rng.uniform(-0.001, 0.001)
            self.nodes[name] = _Node(name, self.directory / name, SimClock(self, skew, drift))
        for node in self.nodes.values():
            self._start(node)
        if mutate is not None:
            mutate(self)
        self._connect_all()

    # -- nodes -----------------------------------------------------------------------------

    def _start(self, node: _Node) -> None:
        config = Config.create(
            "sim",
            node.path,
            shards=self._shards,
            tombstone_ttl=self._tombstone_ttl_s,
            gc_interval=min(60, self._tombstone_ttl_s / 2),
            log=False,
            clock=node.clock,
        )
        store = ShardedStore.open(
            config,
            HybridClock(node.clock),
            _NullSink(),
            new_node_id=f"{self.seed:08x}{node.name:>08}",
            incarnation=self._next_incarnation(),
        )
        node.store = store
        node.outbox = []
        self._start_replicator(node)
        node.up = True

    def _next_incarnation(self) -> str:
        self._incarnations += 1
        return f"{self._incarnations:08x}"

    def _start_replicator(self, node: _Node) -> None:
        store = node.store
        assert store is not None

        def collect(index: int, entries: list[Entry], node: _Node = node) -> None:
            node.outbox.append((index, entries))

        for shard in store.shards:
            shard.outbox = collect

        def send(peer: str, msg: Message, src: str = node.name) -> None:
            self._send(src, peer, msg)

        node.rep = Replicator(
            StoreReplicationPort(store), self.settings, send=send, rng=random.Random(self.rng.random())
        )

    def node_id(self, name: str) -> str:
        store = self.nodes[name].store
        assert store is not None
        return store.node_id

    def _name_of(self, node_id: str) -> str:
        for name, node in self.nodes.items():
            if node.store is not None and node.store.node_id == node_id and node.duplicate_until is None:
                return name
        raise KeyError(node_id)

    def clone(self, name: str) -> str:
        """Copy a node's data directory while it is closed and run both copies (a VM snapshot,
        a container image with baked data, a restored backup). The copy runs under the same
        node id, and writes, until the membership protocol finds the duplicate: the members
        refuse it meanwhile, then it takes a new node id with the real storage code (what
        ``ekv._cluster.identity`` decides over TCP; the simulator does not run membership)."""
        node = self.nodes[name]
        self._drop_sessions(name)
        assert node.rep is not None and node.store is not None
        node.rep.close()
        node.store.close()
        copy_name = f"{name}c{sum(1 for n in self.nodes if n.startswith(name + 'c'))}"
        shutil.copytree(node.path, self.directory / copy_name)
        skew = self.rng.randint(-200, 200) * MS
        copy = _Node(copy_name, self.directory / copy_name, SimClock(self, skew, node.clock.drift))
        copy.duplicate_until = self.now_ns + self.rng.randint(0, 3_000) * MS
        self.nodes[copy_name] = copy
        self.trace.append(f"{self.now_ns - self.epoch_ns} clone {name} as {copy_name}")
        self._start(node)
        self._start(copy)
        self._connect_all()
        return copy_name

    def _resolve_duplicates(self) -> None:
        for node in self.nodes.values():
            if node.duplicate_until is not None and self.now_ns >= node.duplicate_until:
                assert node.rep is not None and node.store is not None
                node.rep.close()
                node.store.reidentify(node_id=f"{self.seed:08x}{node.name:>08}", incarnation=self._next_incarnation())
                node.duplicate_until = None
                self._start_replicator(node)
                self.trace.append(f"{self.now_ns - self.epoch_ns} {node.name} takes node id {node.store.node_id}")
                self._connect_all()

    def crash(self, name: str) -> None:
        """Close a node (its sessions end) and reopen it from its files."""
        node = self.nodes[name]
        self._drop_sessions(name)
        assert node.rep is not None and node.store is not None
        node.rep.close()
        node.store.close()
        self.trace.append(f"{self.now_ns - self.epoch_ns} crash {name}")
        self._start(node)
        self._connect_all()

    # -- network -----------------------------------------------------------------------------

    def link_up(self, a: str, b: str) -> bool:
        return (a, b) not in self.blocked and (b, a) not in self.blocked

    def partition(self, groups: list[list[str]]) -> None:
        """Cut every link between different groups (nodes not listed stay connected to all)."""
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                for a in group:
                    for b in other:
                        self.blocked.add((a, b))
        self.trace.append(f"{self.now_ns - self.epoch_ns} partition {groups}")
        self._update_sessions()

    def cut(self, a: str, b: str) -> None:
        self.blocked.add((a, b))
        self.trace.append(f"{self.now_ns - self.epoch_ns} cut {a}-{b}")
        self._update_sessions()

    def heal(self) -> None:
        self.blocked.clear()
        self.trace.append(f"{self.now_ns - self.epoch_ns} heal")
        self._update_sessions()

    def _connect_all(self) -> None:
        self._update_sessions()

    def _update_sessions(self) -> None:
        names = sorted(self.nodes)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                pair = frozenset((a, b))
                want = (
                    self.link_up(a, b)
                    and self.nodes[a].up
                    and self.nodes[b].up
                    and self.nodes[a].duplicate_until is None
                    and self.nodes[b].duplicate_until is None
                )
                if want and pair not in self.sessions:
                    self.sessions.add(pair)
                    self._rep(a).peer_up(self.node_id(b), self.nodes[a].clock.now_ns())
                    self._rep(b).peer_up(self.node_id(a), self.nodes[b].clock.now_ns())
                elif not want and pair in self.sessions:
                    self._end_session(a, b)

    def _end_session(self, a: str, b: str) -> None:
        self.sessions.discard(frozenset((a, b)))
        self._rep(a).peer_down(self.node_id(b), self.nodes[a].clock.now_ns())
        self._rep(b).peer_down(self.node_id(a), self.nodes[b].clock.now_ns())
        # messages in flight on that session are lost with it
        self._queue = [item for item in self._queue if {item[2], item[3]} != {a, b}]
        heapq.heapify(self._queue)

    def _drop_sessions(self, name: str) -> None:
        for pair in sorted(self.sessions, key=sorted):
            if name in pair:
                (other,) = pair - {name}
                self._end_session(name, other)

    def _rep(self, name: str) -> Replicator:
        rep = self.nodes[name].rep
        assert rep is not None
        return rep

    def _send(self, src: str, peer_id: str, msg: Message) -> None:
        dst = self._name_of(peer_id)
        if frozenset((src, dst)) not in self.sessions:
            return
        payload: Any = msg
        if self.wire is not None:
            payload = self.wire[0](msg)
        copies = 1
        if self.rng.random() < self.drop:
            copies = 0
        elif self.rng.random() < self.duplicate:
            copies = 2
        for _ in range(copies):
            when = self.now_ns + self.rng.randint(*self.delay_ms) * MS
            if self.rng.random() >= self.reorder:
                # like TCP, a link delivers in order unless a reorder fault picks this message
                when = max(when, self._link_last.get((src, dst), 0))
                self._link_last[(src, dst)] = when
            self._seq += 1
            heapq.heappush(self._queue, (when, self._seq, src, dst, payload))

    def _deliver(self, src: str, dst: str, payload: Any) -> None:
        if frozenset((src, dst)) not in self.sessions:
            return
        messages = self.wire[1](payload) if self.wire is not None else [payload]
        rep = self._rep(dst)
        for msg in messages:
            self.messages += 1
            rep.on_message(self.node_id(src), msg, self.nodes[dst].clock.now_ns())

    # -- clients -----------------------------------------------------------------------------

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

    # -- the event loop ----------------------------------------------------------------------

    def _flush_outboxes(self) -> None:
        for node in self.nodes.values():
            if node.outbox and node.rep is not None:
                pending, node.outbox = node.outbox, []
                for shard, entries in pending:
                    node.rep.on_local_writes(shard, entries)

    def run(self, duration_ms: int, *, writes_per_s: float = 50.0, faults: bool = True) -> None:
        """Advance virtual time by ``duration_ms``, with client writes and (optionally) random
        faults: partitions of random shapes, heals, single links cut, crashes."""
        end = self.now_ns + duration_ms * MS
        tick_every = 50 * MS
        next_tick = self.now_ns
        while self.now_ns < end:
            next_event = min(next_tick, end, self._queue[0][0] if self._queue else end)
            self.now_ns = max(self.now_ns, next_event)
            while self._queue and self._queue[0][0] <= self.now_ns:
                _, _, src, dst, payload = heapq.heappop(self._queue)
                self._deliver(src, dst, payload)
                self._flush_outboxes()
            if self.now_ns >= next_tick:
                next_tick += tick_every
                if writes_per_s and self.rng.random() < writes_per_s * tick_every / NS_PER_S:
                    self.client_write()
                if faults:
                    self._maybe_fault()
                self._resolve_duplicates()
                if self.now_ns >= self._next_gc:
                    self._next_gc = self.now_ns + self.gc_every_ms * MS
                    self.gc_all()
                self._flush_outboxes()
                for node in self.nodes.values():
                    if node.rep is not None:
                        node.rep.tick(node.clock.now_ns())

    def _maybe_fault(self) -> None:
        roll = self.rng.random()
        names = sorted(self.nodes)
        if roll < 0.01:
            shuffled = names[:]
            self.rng.shuffle(shuffled)
            cut = self.rng.randint(1, len(shuffled) - 1)
            self.partition([shuffled[:cut], shuffled[cut:]])
        elif roll < 0.015 and len(names) >= 3:
            a, b = self.rng.sample(names, 2)
            self.cut(a, b)  # non-transitive: a and b still reach the others
        elif roll < 0.03:
            self.heal()
        elif roll < 0.033:
            self.crash(self.rng.choice(names))
        elif roll < 0.036 and self.clones_left > 0:
            self.clones_left -= 1
            self.clone(self.rng.choice([n for n in names if self.nodes[n].duplicate_until is None]))

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

    def settle(self, max_ms: int = 120_000) -> int:
        """Heal everything, stop writes, and run until every node holds the same entries and no
        data is on its way (or ``max_ms`` of virtual time pass). Returns the virtual ms it took.

        Empty anti-entropy traffic (a pull and its empty answer) does not count as data on its
        way: with every member pulling every shard about once a second, a moment with no message
        at all in flight is rare in a 5-node cluster, and waiting for one measured luck, not
        convergence. Once the stores are identical, an entry still in flight was read from a
        store that now holds it or something newer, so it cannot change anything."""
        self.heal()
        start = self.now_ns
        while self.now_ns - start < max_ms * MS:
            self.run(500, writes_per_s=0, faults=False)
            busy = any(n.rep.busy for n in self.nodes.values() if n.rep)
            if not busy and not self._data_in_flight() and self._converged():
                break
        return int((self.now_ns - start) / MS)

    def _data_in_flight(self) -> bool:
        for item in self._queue:
            messages = self.wire[1](item[4]) if self.wire is not None else [item[4]]
            if any(isinstance(m, (Live, SyncChunk)) and m.entries for m in messages):
                return True
        return False

    # -- checking ----------------------------------------------------------------------------

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
        """Convergence, no lost acknowledged write, no resurrection. Call after :meth:`settle`."""
        problems: list[Violation] = []
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

    def close(self) -> None:
        for node in self.nodes.values():
            if node.rep is not None:
                node.rep.close()
            if node.store is not None:
                node.store.close()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_seed(
    seed: int, *, duration_ms: int = 20_000, simulation: type[Simulation] | None = None, **options: Any
) -> tuple[list[Violation], int, Simulation]:
    """Run one seed: ``duration_ms`` of writes and faults, then settle and check. ``simulation``:
    the class that runs it (:class:`Simulation` by default; :class:`ekv.testing.simnet.ClusterSimulation`
    runs real cluster nodes)."""
    sim = (simulation or Simulation)(seed, **options)
    try:
        sim.run(duration_ms)
        settle_ms = sim.settle()
        return sim.check(), settle_ms, sim
    finally:
        sim.close()


def main(argv: list[str] | None = None, *, simulation: type[Simulation] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run ekv's deterministic cluster simulator.")
    parser.add_argument("--seeds", type=int, default=20, help="how many seeds (from --first)")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="virtual seconds of faults and writes per seed")
    parser.add_argument(
        "--clones", type=int, default=0, help="at most this many data-directory copies started next to their original"
    )
    args = parser.parse_args(argv)
    failed = 0
    for seed in range(args.first, args.first + args.seeds):
        problems, settle_ms, sim = run_seed(
            seed, duration_ms=int(args.seconds * 1000), simulation=simulation, nodes=args.nodes, clones=args.clones
        )
        status = "ok" if not problems else "FAIL"
        copies = f", {args.clones - sim.clones_left} copied data directories" if args.clones else ""
        print(
            f"seed {seed}: {status}, {len(sim.acked)} acknowledged writes, {sim.messages} messages, "
            f"settled in {settle_ms} ms{copies}"
        )
        for problem in problems:
            print(f"  {problem.kind}: {problem.detail}")
        failed += bool(problems)
    print(f"{args.seeds - failed}/{args.seeds} seeds passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
