"""Which origins write into a shard: the opens of its data directory (SPEC section 12).

Every open writes under its own origin. A shard records each origin that may still write into it
(``meta`` rows ``writer/<origin>`` -> the open's slot, :mod:`ekv._storage.procs`). The counter of
a live writer is its tail in the change log (:func:`ekv._storage.shardfile.own_tail`); when an
origin stops writing (its open closed, or its process died) it is *retired*: its counter moves
into the stored version vector, where every other origin's lives, and its row goes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import apsw

from ekv._core.retire import BASE, expired, margin_ns, marker, retirable, settle
from ekv._core.retire import PREFIX as RETIRED
from ekv._storage import schema
from ekv._storage.shardfile import own_tail

__all__ = [
    "WRITER",
    "Writers",
    "drop_retired",
    "dropped_retirements",
    "register",
    "retire_dead",
    "retire_origin",
    "writer_rows",
]

WRITER = "writer/"
_WRITER_END = "writer0"  # the first key after every "writer/..." key
_DROPPED = "retired_dropped"  # meta: the latest retirement time whose origin was dropped


class Writers(NamedTuple):
    """How a shard tells live writers from dead ones: this open's slot, and a liveness check of
    another open's slot (:func:`ekv._storage.procs.slot_alive`)."""

    slot: str
    alive: Callable[[str], bool]


def writer_rows(cur: apsw.Cursor) -> dict[str, str]:
    """origin -> slot of every origin recorded as writing into the shard."""
    rows: list[Any] = cur.execute(schema.META_RANGE, (WRITER, _WRITER_END)).fetchall()
    return {key[len(WRITER) :]: str(slot or "") for key, slot in rows}


def register(cur: apsw.Cursor, origin: str, slot: str) -> None:
    """Record ``origin`` (of the open holding ``slot``) as writing into the shard."""
    cur.execute(schema.META_SET, (f"{WRITER}{origin}", slot))


def retire_origin(cur: apsw.Cursor, origin: str, now_ns: int) -> None:
    """``origin`` writes here no more: its sequence counter goes into the stored version vector
    (it is one more origin this node holds writes of, and members are asked for any tail of it
    that a crash took back), with the record that it retired at ``now_ns`` (the marker that lets
    every member drop it later, :mod:`ekv._core.retire`), and its writer row goes."""
    old_oseq = own_tail(cur, origin)[0]
    if old_oseq:
        cur.execute(schema.VV_RAISE, (origin, old_oseq))
        if retirable(origin):
            cur.execute(schema.VV_RAISE, (marker(origin), now_ns))
    cur.execute(schema.META_DELETE, (f"{WRITER}{origin}",))


def drop_retired(cur: apsw.Cursor, now_ns: int, tombstone_ttl_ns: int) -> list[str]:
    """Settle and drop the retired origins of the shard that are due (:mod:`ekv._core.retire`):
    raise the stored vector's base to the retirements ``tombstone_ttl`` old, and drop the origins
    retired ``tombstone_ttl`` plus its margin ago: their vector entries and markers, their
    change-log entries and truncation floors (a delta would otherwise send their rows again to
    members that dropped them, or fall back to a full sync), their persisted counters; the latest
    retirement dropped is remembered (a requester whose base is below it gets a full sync). The
    rows they wrote stay. Returns the origins dropped."""
    rows: list[Any] = cur.execute(schema.VV_ALL).fetchall()
    vv = dict(rows)
    if settle(vv, now_ns - tombstone_ttl_ns):
        cur.execute(schema.VV_RAISE, (BASE, vv[BASE]))
    live = set(writer_rows(cur))
    gone = [key for key in expired(vv, now_ns - tombstone_ttl_ns - margin_ns(tombstone_ttl_ns)) if key not in live]
    origins = []
    for key in sorted(gone):
        cur.execute(schema.VV_DELETE, (key,))
        if key.startswith(RETIRED):
            cur.execute(schema.META_SET, (_DROPPED, max(vv[key], dropped_retirements(cur))))
        else:
            origins.append(key)
            cur.execute(schema.LOG_TRUNCATE, (key, 2**63 - 1))
            cur.execute(schema.FLOOR_DELETE, (key,))
            cur.execute(schema.META_DELETE, (f"oseq_floor/{key}",))
    return origins


def dropped_retirements(cur: apsw.Cursor) -> int:
    """The latest retirement time whose origin this shard dropped (0: none)."""
    value = cur.execute(schema.META_GET, (_DROPPED,)).get
    return value if isinstance(value, int) else 0


def retire_dead(
    cur: apsw.Cursor,
    own: str,
    alive: Callable[[str], bool],
    now_ns: int,
    *,
    previous: str = "",
    retire: str | None = None,
) -> None:
    """Retire every writer but ``own`` whose open is dead, and ``retire`` (an origin this open
    wrote under before it re-identified). ``previous``, the origin the shard records as its last
    writing one, counts as a writer even without a row (shards written before writers were
    recorded)."""
    rows = writer_rows(cur)
    if previous and previous != own and previous not in rows:
        rows[previous] = ""
    for origin, slot in rows.items():
        if origin != own and (origin == retire or not alive(slot)):
            retire_origin(cur, origin, now_ns)
