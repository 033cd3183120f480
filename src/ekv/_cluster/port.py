"""The storage port of replication: everything the :class:`~ekv._cluster.replicator.Replicator`
needs from a node's storage, and nothing more; and, beside it, :class:`Tree`, its hook into the
broadcast tree (:mod:`ekv._cluster.broadcast`), the other part it talks to without importing.

The replicator owns this interface (it is defined here, next to its only consumer) and the
storage layer implements it (:class:`ekv._storage.replication.StoreReplicationPort`, over a
:class:`~ekv._storage.store.ShardedStore`; every SQL statement behind it is in
``_storage/schema.py``). Keeping it narrow is what lets the replicator be tested against an
in-memory fake (``tests/memport.py``, driven by Hypothesis) with no SQLite at all, and lets the
storage change without the replicator noticing. Replication bookkeeping (which members resent a
damaged shard, who is syncing what) stays in the replicator; the port holds only what must be
durable or is storage's own state (rows, version vectors, member reports, markers, damage).

Which thread runs storage calls for remote applies
--------------------------------------------------
Every call on the port is made by the replicator's driver thread: in a running node, the one
asyncio loop thread that a process shares between all its clustered instances
(:mod:`ekv._cluster.runtime`). :meth:`ReplicationStore.apply` therefore runs a remote apply on
the loop thread: it submits an ``Apply`` op to the shard's group-commit writer and waits for it,
which, while a local writer holds the shard's mutex (an fsync with ``durability="full"``), stalls
the loop for the length of that commit. This is kept by measurement
(``PYTHONPATH=src python3 bench/bench_apply_thread.py``; figures in docs/architecture.md, "Which
thread runs remote applies"): offloading each apply to a per-shard thread
(``loop.run_in_executor``) doubled the typical apply latency with the default
``durability="normal"`` (0.56 ms to 1.23 ms at p50, the thread hop) without lowering the loop's
p99 stall (14.7 ms vs 13.4 ms); with ``durability="full"`` it did lower the p99 stall (24 ms to
9.5 ms) with no consistent gain in latency. On the loop, applies stay in receive order per shard
for free, and the replicator raises its vector right after the apply returns, with no lock; an
asynchronous apply would have to raise it on completion instead.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from ekv._cluster.messages import Live, TreeMessage
from ekv._model import Entry

__all__ = ["DamagedVersion", "Demand", "ReplicationStore", "SyncSource", "Tree"]

DamagedVersion = tuple[int, str, int]
"""The version (timestamp, origin, oseq) of a row that failed its checksum."""


class SyncSource(Protocol):
    """One outgoing sync of one shard to one member, read from a single consistent snapshot.

    Call :meth:`next_chunk` until it returns ``[]``, then :meth:`close` (also on abort)."""

    @property
    def kind(self) -> str:
        """``"delta"`` (from the change log) or ``"full"`` (every live row and recent tombstone)."""
        ...

    @property
    def vv(self) -> Mapping[str, int]:
        """The snapshot's version vector, sent at the end; empty once a damaged row was withheld
        (the requester must not record as covered a write it never received)."""
        ...

    @property
    def sent(self) -> int:
        """How many entries :meth:`next_chunk` has returned so far."""
        ...

    @property
    def damaged(self) -> list[str]:
        """Keys whose rows failed their checksum while being read; the replicator records them
        (:meth:`ReplicationStore.mark_damaged`) and clears this list."""
        ...

    def next_chunk(self, max_entries: int, max_bytes: int) -> list[Entry]: ...

    def close(self) -> None:
        """Release the snapshot. Idempotent."""
        ...


class ReplicationStore(Protocol):
    """What replication reads and writes in a node's storage (see the module docstring).

    Shards are numbered ``0 .. shard_count - 1``. Calls are made on one thread at a time."""

    @property
    def node_id(self) -> str:
        """This node's id (the name members know it by)."""
        ...

    @property
    def origin(self) -> str:
        """This open's origin: the origin of its own writes (excluded from merges: it knows
        them best)."""
        ...

    @property
    def shard_count(self) -> int: ...

    # -- versions --------------------------------------------------------------------------------

    def version_vector(self, shard: int) -> dict[str, int]:
        """The shard's durable version vector: per origin, the highest oseq such that every
        write of that origin up to it is covered by the stored rows (own writes included)."""
        ...

    def own_seq(self, shard: int) -> int:
        """The oseq of the last local write committed in ``shard`` (0 if none)."""
        ...

    def apply(self, shard: int, entries: Sequence[Entry], vv: Mapping[str, int] | None = None) -> list[Entry]:
        """Apply versions made elsewhere (all of ``shard``) through last-writer-wins, and raise
        the stored version vector by ``vv`` in the same transaction (so it never claims a write
        whose row did not commit). Returns the entries that won. Blocks until durable."""
        ...

    def sync_source(self, shard: int, peer_vv: Mapping[str, int], *, now_ns: int, cutoff_ns: int) -> SyncSource:
        """Open a snapshot of ``shard`` that serves what a member covering ``peer_vv`` lacks
        (tombstones older than ``cutoff_ns`` are not sent by a full sync)."""
        ...

    # -- member reports and node-level markers (durable) -----------------------------------------

    def record_member_report(self, shard: int, node_id: str, vv: Mapping[str, int], now_ns: int) -> None:
        """Remember that member ``node_id`` reported covering ``vv`` of ``shard`` at ``now_ns``
        (it bounds change-log truncation across restarts)."""
        ...

    def member_reports(self, shard: int) -> dict[str, tuple[dict[str, int], int]]:
        """node_id -> (the vector it last reported for ``shard``, when)."""
        ...

    def load_markers(self, prefix: str) -> dict[str, int]:
        """Node-level markers whose name starts with ``prefix`` (``member_down/`` and the like):
        the rest of each name -> its value."""
        ...

    def set_marker(self, name: str, value: int | None) -> None:
        """Set a marker (remove it when ``value`` is None)."""
        ...

    # -- damage (rows that failed their checksum) ------------------------------------------------

    def damaged(self, shard: int) -> Mapping[str, DamagedVersion]:
        """The keys of ``shard`` recorded as damaged, with the damaged version: a snapshot the
        caller may iterate (it changes between calls: readers and GC find damage too)."""
        ...

    def mark_damaged(self, shard: int, key: str, now_ns: int) -> bool:
        """Verify ``key``'s row and, if it fails its checksum, record it as damaged (durably).
        Returns whether it is damaged."""
        ...

    def row_verifies(self, shard: int, key: str) -> bool:
        """Whether ``key``'s stored row (if any) matches its checksum."""
        ...

    def forget_damaged(self, shard: int, keys: Sequence[str]) -> None:
        """Drop ``keys`` from the damaged list (their rows verify again)."""
        ...

    def describe(self, shard: int) -> str:
        """Names ``shard`` for log messages (its file, for a store on disk)."""
        ...


class Tree(Protocol):
    """The broadcast tree (:class:`ekv._cluster.broadcast.Broadcast`): ``fanout`` sends a local
    write through it and returns the members it reaches that way (they get no direct Live);
    ``receive`` takes its messages from members not quarantined; ``peers_changed`` is told when a
    session starts or ends, or a quarantine is cleared."""

    def fanout(self, message: Live) -> Collection[str]: ...
    def receive(self, peer_id: str, message: TreeMessage) -> None: ...
    def peers_changed(self) -> None: ...


class Demand(Protocol):
    """Sessions on demand in a large cluster (:class:`ekv._cluster.ondemand.OnDemand`):
    ``live_members`` is SWIM's live members while the node is in large mode (None below it: the
    sessions are the members); ``want`` dials a member for an anti-entropy round (its session
    starts with a digest probe each way, which is the round's exchange)."""

    def live_members(self) -> Collection[str] | None: ...
    def want(self, node_id: str) -> None: ...
