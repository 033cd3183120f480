"""Bit rot: verifying stored rows against their checksums, and the bookkeeping of repairs.

Every row of ``kv`` carries :func:`ekv._core.checksum.row_check` of its contents. A row is
verified whenever it is about to leave the store: served to a read, sent to a peer by sync,
rewritten by GC, checked by ``ekv check``. A row that fails is *damaged*: it is never served,
it is recorded in the shard's ``damaged`` table (so the fact survives a restart), and the
replicator asks each member for a full resend of the shard until a copy of the key arrives
(see :mod:`ekv._cluster.replicator`). Writing or deleting the key also replaces it.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING, Any

import apsw

from ekv._core.checksum import legacy_row_checksum, row_check
from ekv._errors import ChecksumError
from ekv._storage import schema
from ekv._storage.sqlite import transaction

if TYPE_CHECKING:
    from ekv._storage.shard import Shard

__all__ = [
    "DamagedVersion",
    "damaged_error",
    "forget_damaged",
    "load_damaged",
    "mark_damaged",
    "row_ok",
    "row_verifies",
    "upgrade_to_2",
    "upgrade_to_4",
    "visible_value",
]

DamagedVersion = tuple[int, str, int]
"""``(ts, origin, oseq)`` of a damaged row as read (any of them may be the damaged part)."""


def row_ok(row: Any) -> bool:
    """Whether a ``(key, ts, origin, oseq, expires_at, value, crc)`` row matches its check record:
    the record rebuilt from the columns must equal the stored one, which covers the columns too
    (reads use the record alone; this is for the paths that use the columns)."""
    key, ts, origin, oseq, expires_at, value, crc = row
    return bool(crc == row_check(key, ts, origin, oseq, expires_at, value))


def visible_value(cur: apsw.Cursor, key: str, damaged: Container[str], now_ns: Callable[[], int]) -> bytes | None:
    """The value a delete event reports as the previous one (None if there is none, or if the
    stored row is damaged: a damaged value is never handed out, not even in an event)."""
    row = cur.execute(schema.ROW, (key,)).get
    if row is None or key in damaged:
        return None
    value, expires_at = row[5], row[4]
    if value is None or (expires_at is not None and expires_at <= now_ns()) or not row_ok(row):
        return None
    return value  # type: ignore[no-any-return]


def damaged_error(key: str, path: str) -> ChecksumError:
    return ChecksumError(
        f"the stored version of key {key!r:.80} in {path} failed its checksum (the disk changed it); "
        "ekv will not serve it. A cluster node repairs it from its members; writing or deleting the key "
        "replaces it. See docs/operators.md ('Damaged values').",
        key,
    )


def load_damaged(cur: apsw.Cursor) -> dict[str, DamagedVersion]:
    rows: list[Any] = cur.execute(schema.DAMAGED_ALL).fetchall()
    return {key: (ts, origin, oseq) for key, ts, origin, oseq in rows}


def upgrade_to_2(conn: apsw.Connection) -> int:
    """Upgrade a schema-1 shard in place (one transaction): add and fill ``kv.crc``, create the
    ``damaged`` table. Returns the number of rows checksummed."""

    def checksum(*row: Any) -> int:
        return legacy_row_checksum(*row)

    conn.create_scalar_function("ekv_row_checksum", checksum, 6, deterministic=True)
    cur = conn.cursor()
    with transaction(cur):
        cur.execute(schema.UPGRADE_TO_2)
        rows = int(cur.execute(schema.COUNT_ROWS).get)
        cur.execute(schema.USER_VERSION_2)
        cur.execute(schema.META_SET, ("schema_version", 2))
    return rows


def upgrade_to_4(conn: apsw.Connection) -> int:
    """Upgrade a schema-3 shard in place (one transaction): replace each row's integer checksum
    with its check record. A row whose old checksum fails gets its record with the CRC's last
    bit flipped, which fails every check: it stays damaged (and is found by the next read or
    ``ekv check``, scans included, as the record still says when it expires) instead of being
    given a valid record. Returns the number of rows rewritten."""

    def check(*row: Any) -> bytes:
        record = row_check(*row[:6])
        if row[6] != legacy_row_checksum(*row[:6]):
            return record[:-1] + bytes([record[-1] ^ 1])
        return record

    conn.create_scalar_function("ekv_row_check", check, 7, deterministic=True)
    cur = conn.cursor()
    with transaction(cur):
        cur.execute(schema.UPGRADE_TO_4)
        rows = int(cur.execute(schema.COUNT_ROWS).get)
        cur.execute(schema.USER_VERSION_SET)
        cur.execute(schema.META_SET, ("schema_version", schema.SCHEMA_VERSION))
    return rows


# -- on a shard's writer ---------------------------------------------------------------------------


def mark_damaged(shard: Shard, key: str, now_ns: int) -> bool:
    """Verify ``key``'s row on ``shard``'s writer and, if it fails its checksum, record it as
    damaged (durably). Returns True if the row is damaged. Called when a reader or a sync found a
    bad row; the writer's own read decides, so a row replaced in the meantime is left alone."""

    def mark(cur: apsw.Cursor) -> bool:
        row = cur.execute(schema.ROW, (key,)).get
        if row is None or row_ok(row):
            return False
        if key not in shard.damaged:
            version: DamagedVersion = (row[1], row[2], row[3])
            cur.execute(schema.DAMAGED_ADD, (key, *version, now_ns))
            shard.note_damaged({key: version})
        return True

    return bool(shard.run_exclusive(mark))


def forget_damaged(shard: Shard, keys: Sequence[str]) -> None:
    """Drop keys from ``shard``'s damaged list (their rows verify again, e.g. repaired with the
    best version the members had)."""

    def forget(cur: apsw.Cursor) -> None:
        for key in keys:
            cur.execute(schema.DAMAGED_CLEAR, (key,))
            shard.damaged.pop(key, None)

    shard.run_exclusive(forget)


def row_verifies(shard: Shard, key: str) -> bool:
    """Whether ``key``'s stored row (if any) on ``shard`` matches its checksum, read on the writer."""
    return bool(shard.run_exclusive(lambda cur: (r := cur.execute(schema.ROW, (key,)).get) is None or row_ok(r)))
