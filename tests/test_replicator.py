"""The replication state machine driven by hand: sync boundaries, vector merging, truncation."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest

from ekv._cluster.messages import Message, SyncChunk, SyncDone
from ekv._cluster.replicator import ReplicationSettings, Replicator
from ekv._config import Config
from ekv._core.clock import HybridClock
from ekv._storage.replication import StoreReplicationPort
from ekv._storage.store import ShardedStore
from ekv._values import Values
from ekv.testing import FakeClock


class Pair:
    """Two replicators whose messages travel through in-memory queues."""

    def __init__(self, root: Path, chunk_entries: int) -> None:
        self.clock = FakeClock()
        # run() never calls tick(): no periodic anti-entropy pull ever fires, the tests pull by hand
        self.settings = ReplicationSettings(sync_chunk_entries=chunk_entries)
        self.queues: dict[str, deque[tuple[str, Message]]] = {}
        self.sent: list[Message] = []
        self.stores = [self._store(root / "a", "a" * 16), self._store(root / "b", "b" * 16)]
        self.reps = [self._rep(store) for store in self.stores]

    def _store(self, path: Path, node_id: str) -> ShardedStore:
        config = Config.create("t", path, shards=1, log=False, clock=self.clock)
        return ShardedStore.open(config, HybridClock(self.clock), new_node_id=node_id)

    def _rep(self, store: ShardedStore) -> Replicator:
        me = store.node_id
        self.queues[me] = deque()

        def send(peer: str, message: Message) -> None:
            self.sent.append(message)
            self.queues[peer].append((me, message))

        return Replicator(StoreReplicationPort(store), self.settings, send=send)

    def connect(self) -> None:
        a, b = self.reps
        now = self.clock.now_ns()
        a.peer_up(b.node_id, now)
        b.peer_up(a.node_id, now)

    def run(self) -> None:
        for _ in range(10_000):
            moved = False
            for rep in self.reps:
                queue = self.queues[rep.node_id]
                while queue:
                    moved = True
                    src, message = queue.popleft()
                    rep.on_message(src, message, self.clock.now_ns())
                if rep.pump():
                    moved = True
            if not moved:
                return
        raise AssertionError("the exchange did not settle")

    def close(self) -> None:
        for rep, store in zip(self.reps, self.stores, strict=True):
            rep.close()
            store.close()


@pytest.mark.parametrize("count", [0, 1, 8, 16, 17])
def test_sync_always_ends_with_a_terminal_message(tmp_path: Path, count: int) -> None:
    """Exact multiples of the chunk size (8, 16) and empty syncs still end with SyncDone, and
    the receiver merges the sender's vector."""
    pair = Pair(tmp_path, chunk_entries=8)
    try:
        a_store, b_store = pair.stores
        for i in range(count):
            Values(a_store).put(f"k{i:03d}", i)
        pair.connect()
        pair.run()
        chunks = [m for m in pair.sent if isinstance(m, SyncChunk) and m.entries]
        dones = [m for m in pair.sent if isinstance(m, SyncDone)]
        assert len(dones) == 2  # one per direction
        assert sum(len(c.entries) for c in chunks) == count
        assert all(len(c.entries) <= 8 for c in chunks)
        assert {e.key for e in b_store.entries()} == {f"k{i:03d}" for i in range(count)}
        b_vv = pair.reps[1].current_vv(0)
        assert b_vv.get(a_store.origin, 0) == count
        done_from_a = next(d for d in dones if d.vv.get(a_store.origin, 0) == count or count == 0)
        assert done_from_a.chunks == len([c for c in chunks if c.sync_id == done_from_a.sync_id])
    finally:
        pair.close()


def test_full_sync_after_truncation_and_delta_before(tmp_path: Path) -> None:
    pair = Pair(tmp_path, chunk_entries=100)
    try:
        a_store, _ = pair.stores
        for i in range(50):
            Values(a_store).put(f"k{i}", i)
        pair.connect()
        pair.run()
        kinds = {m.kind for m in pair.sent if isinstance(m, SyncDone) and m.entries}
        assert kinds == {"delta"}  # nothing truncated yet: the log serves a new member
        # b goes away; a truncates everything (nobody reports), b comes back: full sync
        pair.reps[0].peer_down(pair.stores[1].node_id, pair.clock.now_ns())
        pair.reps[1].peer_down(pair.stores[0].node_id, pair.clock.now_ns())
        for i in range(50, 60):
            Values(a_store).put(f"k{i}", i)
        now = pair.clock.now_ns()
        a_store.gc_shard(0, now_ns=now, cutoff_ns=0, log_targets=None)
        pair.sent.clear()
        pair.connect()
        pair.run()
        from_a = [m for m in pair.sent if isinstance(m, SyncDone) and m.entries]
        assert [m.kind for m in from_a] == ["full"]
        assert len(list(pair.stores[1].entries())) == 60
    finally:
        pair.close()


def test_truncation_keeps_what_a_member_reported_lacking(tmp_path: Path) -> None:
    pair = Pair(tmp_path, chunk_entries=100)
    try:
        a_store, _ = pair.stores
        a_rep = pair.reps[0]
        pair.connect()
        pair.run()
        for i in range(10):
            Values(a_store).put(f"k{i}", i)
        # b has reported its (empty) vector: nothing of a's writes may be truncated
        targets = a_rep.truncation_targets(0, pair.clock.now_ns(), retention_ns=10**18)
        assert targets is not None and targets.get(a_store.origin, 0) == 0
        # after b pulls again and reports having everything, all of it may go
        a_rep.peer_down(pair.stores[1].node_id, pair.clock.now_ns())
        pair.reps[1].peer_down(a_store.node_id, pair.clock.now_ns())
        pair.connect()
        pair.run()
        pair.reps[1]._pull(pair.reps[1].peers[a_store.node_id], 0, pair.clock.now_ns())
        pair.run()
        targets = a_rep.truncation_targets(0, pair.clock.now_ns(), retention_ns=10**18)
        assert targets is not None and targets.get(a_store.origin) == 10
        # a member silent for longer than the retention no longer pins the log
        pair.clock.advance(100)
        a_rep.peer_down(pair.stores[1].node_id, pair.clock.now_ns())
        Values(a_store).put("late", 1)
        targets = a_rep.truncation_targets(0, pair.clock.now_ns(), retention_ns=10**9)
        assert targets is None or targets.get(a_store.origin) == 11
    finally:
        pair.close()
