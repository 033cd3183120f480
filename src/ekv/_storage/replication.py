"""The storage side of replication: :class:`StoreReplicationPort` implements the port the
replicator defines (:class:`ekv._cluster.port.ReplicationStore`) over a :class:`ShardedStore`.

Every call reaches the shards through their writer (``run_exclusive``, ``apply``) or a
dedicated snapshot connection (:class:`~ekv._storage.sync.SyncSnapshot`); the SQL is in
``schema.py``, reached through :mod:`ekv._storage.sync`. Node-level markers live in shard 0's
meta table. The adapter holds no state of its own: the store's identity is read at each call, so
a :meth:`ShardedStore.reidentify` shows through at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ekv._model import Entry
from ekv._storage import integrity
from ekv._storage.integrity import DamagedVersion
from ekv._storage.store import ShardedStore
from ekv._storage.sync import (
    SyncSnapshot,
    load_markers,
    load_peer_reports,
    local_vv,
    record_peer_report,
    set_marker,
)

__all__ = ["StoreReplicationPort"]


class StoreReplicationPort:
    """:class:`ekv._cluster.port.ReplicationStore` over a real store (see that class for the
    meaning of each method)."""

    def __init__(self, store: ShardedStore) -> None:
        self._store = store

    @property
    def node_id(self) -> str:
        return self._store.node_id

    @property
    def origin(self) -> str:
        return self._store.origin

    @property
    def shard_count(self) -> int:
        return len(self._store.shards)

    def version_vector(self, shard: int) -> dict[str, int]:
        origin = self._store.origin
        result: dict[str, int] = self._store.shards[shard].run_exclusive(lambda cur: local_vv(cur, origin))
        return result

    def own_seq(self, shard: int) -> int:
        return self._store.shards[shard].oseq

    def apply(self, shard: int, entries: Sequence[Entry], vv: Mapping[str, int] | None = None) -> list[Entry]:
        return self._store.apply_shard(shard, entries, vv)

    def sync_source(self, shard: int, peer_vv: Mapping[str, int], *, now_ns: int, cutoff_ns: int) -> SyncSnapshot:
        return SyncSnapshot(
            str(self._store.datadir.shard_path(shard)), self._store.origin, peer_vv, now_ns=now_ns, cutoff_ns=cutoff_ns
        )

    def record_member_report(self, shard: int, node_id: str, vv: Mapping[str, int], now_ns: int) -> None:
        self._store.shards[shard].run_exclusive(lambda cur: record_peer_report(cur, node_id, vv, now_ns))

    def member_reports(self, shard: int) -> dict[str, tuple[dict[str, int], int]]:
        result: dict[str, tuple[dict[str, int], int]] = self._store.shards[shard].run_exclusive(load_peer_reports)
        return result

    def load_markers(self, prefix: str) -> dict[str, int]:
        result: dict[str, int] = self._store.shards[0].run_exclusive(lambda cur: load_markers(cur, prefix))
        return result

    def set_marker(self, name: str, value: int | None) -> None:
        self._store.shards[0].run_exclusive(lambda cur: set_marker(cur, name, value))

    def damaged(self, shard: int) -> Mapping[str, DamagedVersion]:
        # A copy (one C-level call, atomic under the GIL): the shard's writer changes the dict
        # after commits, on its own thread, while the replicator iterates over what it got.
        return dict(self._store.shards[shard].damaged)

    def mark_damaged(self, shard: int, key: str, now_ns: int) -> bool:
        return integrity.mark_damaged(self._store.shards[shard], key, now_ns)

    def row_verifies(self, shard: int, key: str) -> bool:
        return integrity.row_verifies(self._store.shards[shard], key)

    def forget_damaged(self, shard: int, keys: Sequence[str]) -> None:
        integrity.forget_damaged(self._store.shards[shard], keys)

    def describe(self, shard: int) -> str:
        return str(self._store.datadir.shard_path(shard))
