"""Garbage collection of one shard, in batches run on the shard's writer.

* expire: a put whose TTL ran out becomes a tombstone that keeps its version (every node does the
  same deterministic rewrite, so no new version is made) and an ``expired`` event;
* purge: tombstones older than the cutoff (``tombstone_ttl``) are deleted;
* finish: origins retired longer than ``tombstone_ttl`` ago are dropped (:mod:`ekv._core.retire`),
  the change log is truncated as far as every member allows, the local counters that
  truncation would otherwise lose are persisted, ``last_active_at`` is refreshed.

The store (:meth:`ekv._storage.store.ShardedStore.gc_shard`) drives the batches so that writes
interleave with a long GC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import apsw

from ekv._core.checksum import row_check
from ekv._model import Version
from ekv._storage import schema
from ekv._storage.integrity import row_ok
from ekv._storage.sqlite import transaction
from ekv._storage.sync import truncate_log
from ekv._storage.writers import drop_retired

if TYPE_CHECKING:
    from ekv._storage.shard import RawEvent, Shard

__all__ = ["EXPIRE_BATCH", "PURGE_BATCH", "GcReport", "expire_batch", "finish_gc", "purge_batch"]

EXPIRE_BATCH = 500
PURGE_BATCH = 2_000


@dataclass(slots=True)
class GcReport:
    """What one GC pass over one shard did."""

    expired: int = 0
    purged: int = 0
    log_truncated: int = 0
    acceptors: int = 0
    """Acceptor rows of keys deleted long ago, dropped (:func:`ekv._storage.acceptor.collect`)."""


def expire_batch(shard: Shard, cur: apsw.Cursor, now_ns: int) -> tuple[list[RawEvent], int]:
    rows: list[Any] = cur.execute(schema.EXPIRED_BATCH, (now_ns, EXPIRE_BATCH)).fetchall()
    if not rows:
        return [], 0
    sink = shard.sink
    events: list[RawEvent] = []
    wanted = sink.active
    damaged: dict[str, tuple[int, str, int]] = {}
    with transaction(cur):
        for row in rows:
            key, ts, origin, oseq, expires_at, value, _ = row
            if not row_ok(row):
                # Never rewritten: that would give the damage a valid checksum. Recorded instead,
                # which also keeps it out of the next batches.
                damaged[key] = (ts, origin, oseq)
                cur.execute(schema.DAMAGED_ADD, (key, ts, origin, oseq, now_ns))
                continue
            cur.execute(schema.EXPIRE_ROW, (row_check(key, ts, origin, oseq, expires_at, None), key, ts, origin))
            if wanted and sink.matches(key):
                events.append(("expired", key, value, Version(ts, origin)))
    if damaged:
        shard.note_damaged(damaged)
    return events, len(rows)


def purge_batch(cur: apsw.Cursor, cutoff_ns: int) -> int:
    cur.execute(schema.PURGE_BATCH, (cutoff_ns, PURGE_BATCH))
    return int(cur.connection.changes())


def finish_gc(shard: Shard, cur: apsw.Cursor, now_ns: int, targets: Mapping[str, int] | None, cutoff_ns: int) -> int:
    """Persist the counters, retire dead writers, settle and drop the origins retired long enough
    ago (:mod:`ekv._core.retire`; ``cutoff_ns`` is ``now_ns - tombstone_ttl``), truncate the change
    log, refresh ``last_active_at``."""
    with transaction(cur):
        shard.persist_floors(cur)
        shard.retire_dead_writers(cur, now_ns)
        drop_retired(cur, now_ns, now_ns - cutoff_ns)
        truncated = truncate_log(cur, shard.origin, targets)
        cur.execute(schema.META_SET, ("last_active_at", now_ns))
    return truncated
