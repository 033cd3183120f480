"""The schema of one shard file and every SQL statement ekv runs against it.

Tables
------
``kv``
    Current state, one row per key: the winning version of the key, live or tombstone.
    ``value`` is NULL exactly for tombstones; ``deleted_at`` is then when the key died (the
    delete's timestamp, or the expiry time of an expired put) and drives tombstone purging.
    ``crc`` is the row's check record (:func:`ekv._core.checksum.row_check`: its metadata
    packed, then a CRC-32 of key, value and metadata), verified before the row is served; reads
    take the expiry, timestamp and origin from it. (An integer checksum in schemas 2 and 3.)
    A rowid table with a unique key index: with values over a few hundred bytes it is several
    times faster than WITHOUT ROWID (measured while designing, see docs/architecture.md).
``log``
    The change log: one row per applied write, keyed by its dot ``(origin, oseq)``. The value
    is not copied: a change-log row points at the key, whose current row holds the value, so a
    write costs one small append. Triggers on ``kv`` write it, so the state row and its log row
    are one statement (and one transaction) by construction. Delta sync reads it; GC truncates it.
``vv``
    This shard's version vector for other origins: origin -> highest oseq such that every write
    of that origin up to it is covered here (applied, or superseded by a higher version). The
    entry for the local origin is not stored: it is the local sequence counter.
``floors``
    Per origin, the highest oseq removed from the change log by truncation. A delta sync can
    serve a peer only if, for every origin, the peer already covers this floor.
``peers``
    The last version vector each peer reported for this shard (in its sync requests), and when:
    truncation keeps what a recently seen peer still lacks.
``damaged``
    Rows whose checksum failed (bit rot), by key, with the version that was damaged: reads of
    the key fail until a peer sends that version again (sync asks for it) or a newer write
    replaces it.
``paxos``
    The acceptor state of consistent keys (SPEC 13, :mod:`ekv._core.paxos`): per key, the
    highest ballot promised, and the ballot and record last accepted (``has_record`` 0: the
    accepted state is "absent"). Accepted records are never read as values: a chosen record
    reaches ``kv`` as an ordinary version. ``crc`` covers the row. GC drops the rows of keys
    deleted long ago after raising the ``meta`` row ``paxos_floor`` above their ballots.
``meta``
    Identity and bookkeeping: shard index and count, node id, instance name, schema version,
    ``last_active_at``, and the floors of the local sequence counter and clock that survive
    change-log truncation.

The LWW rule is in :data:`UPSERT`'s ``WHERE`` clause and mirrors :func:`ekv._core.lww.wins`.
``PRAGMA application_id`` marks the file as ekv's and ``PRAGMA user_version`` holds the schema
version, so foreign or future files are refused instead of being written to.

Every statement ekv runs on a shard file is here (``tests/test_structure.py`` checks it), so
that the queries and the indexes they need are read together. Two kinds of SQL live elsewhere,
in :mod:`ekv._storage.sqlite`: the connection settings (``PRAGMA synchronous``, ``journal_mode``
and the like, which are not about the schema) and transaction control (``transaction()``).
"""

from __future__ import annotations

from typing import Any

from ekv._core.checksum import row_check

__all__ = [
    "APPLICATION_ID",
    "DDL",
    "GET",
    "SCHEMA_VERSION",
    "UPSERT",
    "range_sql",
]

APPLICATION_ID = 0x454B5631  # "EKV1"
SCHEMA_VERSION = 4
"""1: first release. 2: ``kv.crc`` and the ``damaged`` table. 3: the ``paxos`` table. 4: ``kv.crc``
holds a check record that a read verifies with C calls only. Older shards are upgraded in place
at a writable open."""

PAXOS_DDL = """
CREATE TABLE IF NOT EXISTS paxos (
    key         TEXT    NOT NULL PRIMARY KEY,
    promised    INTEGER NOT NULL,
    promised_by TEXT    NOT NULL,
    accepted    INTEGER NOT NULL,
    accepted_by TEXT    NOT NULL,
    has_record  INTEGER NOT NULL,
    ts          INTEGER,
    origin      TEXT,
    expires_at  INTEGER,
    value       BLOB,
    lineage     BLOB,
    crc         INTEGER NOT NULL
) WITHOUT ROWID;
"""

DDL = (
    """
CREATE TABLE kv (
    key         TEXT    NOT NULL PRIMARY KEY,
    ts          INTEGER NOT NULL,
    origin      TEXT    NOT NULL,
    oseq        INTEGER NOT NULL,
    expires_at  INTEGER,
    deleted_at  INTEGER,
    value       BLOB,
    crc         BLOB
);
CREATE INDEX kv_expiring ON kv(expires_at) WHERE value IS NOT NULL AND expires_at IS NOT NULL;
CREATE INDEX kv_deleted ON kv(deleted_at) WHERE deleted_at IS NOT NULL;
CREATE TABLE log (
    origin  TEXT    NOT NULL,
    oseq    INTEGER NOT NULL,
    key     TEXT    NOT NULL,
    ts      INTEGER NOT NULL,
    PRIMARY KEY (origin, oseq)
) WITHOUT ROWID;
-- Every version that lands in kv (insert or LWW-winning update) is appended to the change log
-- by SQLite itself, inside the same statement: one statement per write, no window between them.
-- (A dot already in the log is the same write applied again, e.g. after its tombstone was
-- purged; an UPSERT is used because an OR REPLACE inside a trigger is overridden by the outer
-- statement's conflict policy.)
CREATE TRIGGER kv_log_insert AFTER INSERT ON kv BEGIN
    INSERT INTO log (origin, oseq, key, ts) VALUES (new.origin, new.oseq, new.key, new.ts)
    ON CONFLICT (origin, oseq) DO UPDATE SET key = excluded.key, ts = excluded.ts;
END;
CREATE TRIGGER kv_log_update AFTER UPDATE OF ts, origin ON kv BEGIN
    INSERT INTO log (origin, oseq, key, ts) VALUES (new.origin, new.oseq, new.key, new.ts)
    ON CONFLICT (origin, oseq) DO UPDATE SET key = excluded.key, ts = excluded.ts;
END;
CREATE TABLE vv (
    origin  TEXT    NOT NULL PRIMARY KEY,
    oseq    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE floors (
    origin  TEXT    NOT NULL PRIMARY KEY,
    oseq    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE peers (
    node_id      TEXT    NOT NULL PRIMARY KEY,
    vv           TEXT    NOT NULL,
    reported_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE damaged (
    key     TEXT    NOT NULL PRIMARY KEY,
    ts      INTEGER NOT NULL,
    origin  TEXT    NOT NULL,
    oseq    INTEGER NOT NULL,
    found_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE meta (
    key     TEXT NOT NULL PRIMARY KEY,
    value
) WITHOUT ROWID;
"""
    + PAXOS_DDL
)

# The one LWW rule, in SQL: replace the stored row only if the incoming version is higher.
UPSERT = """
INSERT INTO kv (key, ts, origin, oseq, expires_at, deleted_at, value, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    ts = excluded.ts, origin = excluded.origin, oseq = excluded.oseq,
    expires_at = excluded.expires_at, deleted_at = excluded.deleted_at, value = excluded.value,
    crc = excluded.crc
WHERE excluded.ts > kv.ts OR (excluded.ts = kv.ts AND excluded.origin > kv.origin)
"""


UPSERT_COLUMNS = 8
"""Parameters per row of :data:`UPSERT`: key, ts, origin, oseq, expires_at, deleted_at, value, crc."""


def kv_row(key: str, ts: int, origin: str, oseq: int, expires_at: int | None, value: bytes | None) -> tuple[Any, ...]:
    """The :data:`UPSERT` parameters of one version, checksum included: the one definition of a
    stored ``kv`` row, used for local writes and remote applies alike. ``value`` None is a
    tombstone; its ``deleted_at`` is when the key died: the expiry of an expired put (stored in
    tombstone form), else the version's timestamp (a delete)."""
    return (
        key,
        ts,
        origin,
        oseq,
        expires_at,
        None if value is not None else (ts if expires_at is None else expires_at),
        value,
        row_check(key, ts, origin, oseq, expires_at, value),
    )


_UPSERT_HEAD, _UPSERT_TAIL = UPSERT.split("VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_UPSERT_ROWS: dict[int, str] = {1: UPSERT}


def upsert_rows(rows: int) -> str:
    """:data:`UPSERT` for ``rows`` rows in one statement (each row LWW-checked on its own)."""
    sql = _UPSERT_ROWS.get(rows)
    if sql is None:
        sql = _UPSERT_HEAD + "VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows) + _UPSERT_TAIL
        _UPSERT_ROWS[rows] = sql
    return sql


_LWW = UPSERT.rsplit("WHERE", 1)[1].strip()  # the statement's LWW rule, "excluded wins"
_ALONE_UPSERT: dict[int, str] = {}
_BEGIN_UPSERT: dict[int, str] = {}


def alone_upsert_rows(rows: int) -> str:
    """:func:`upsert_rows` for local writes run as a transaction of their
    own: the statement fails (``NOT NULL constraint failed: kv.ts``, so SQLite undoes all of it)
    instead of skipping a row that loses LWW, because such a row needs an overtake, which must
    commit together with the rest of the group. A row that is the same write as the stored one
    (same dot and version: the padding rows) still changes nothing."""
    sql = _ALONE_UPSERT.get(rows)
    if sql is None:
        sql = upsert_rows(rows)
        head, tail = sql.split("ts = excluded.ts,", 1)
        tail = tail.rsplit("WHERE", 1)[0]
        sql = (
            f"{head}ts = CASE WHEN {_LWW} THEN excluded.ts END,{tail}"
            "WHERE NOT (excluded.ts = kv.ts AND excluded.origin = kv.origin AND excluded.oseq = kv.oseq)\n"
        )
        _ALONE_UPSERT[rows] = sql
    return sql


COMMIT = "COMMIT"
"""Ends the transaction :func:`begin_upsert_rows` opens: the one transaction of the local write
path not run by :func:`ekv._storage.sqlite.transaction` (see there why)."""


def begin_upsert_rows(rows: int) -> str:
    """``BEGIN IMMEDIATE`` followed by :func:`upsert_rows`, as one SQL text: APSW
    runs both statements in one ``execute`` (the bindings all go to the upsert)."""
    sql = _BEGIN_UPSERT.get(rows)
    if sql is None:
        sql = _BEGIN_UPSERT[rows] = "BEGIN IMMEDIATE; " + upsert_rows(rows)
    return sql


def stored_versions(cur: Any, keys: set[str]) -> dict[str, tuple[int, str]]:
    """The stored ``(ts, origin)`` of each of ``keys`` that has a row (500 keys per query)."""
    found: dict[str, tuple[int, str]] = {}
    ordered = list(keys)
    for start in range(0, len(ordered), 500):
        part = ordered[start : start + 500]
        sql = f"SELECT key, ts, origin FROM kv WHERE key IN ({', '.join('?' * len(part))})"
        for key, ts, origin in cur.execute(sql, part):
            found[key] = (ts, origin)
    return found


# Reads that serve a value fetch the value and its check record, which holds the rest of what
# they need (expiry, timestamp, origin), verified with it.
GET = "SELECT value, crc FROM kv WHERE key = ?"
GET_BOUNDED = "SELECT CASE WHEN length(value) <= ? THEN value END, crc, length(value) FROM kv WHERE key = ?"
""":data:`GET` that returns no value (but its length) when the value is longer than the first
parameter (:meth:`ekv._storage.reads.StoreReads.read_bounded`)."""
GET_MANY = "SELECT key, value, crc FROM kv WHERE key IN (SELECT value FROM json_each(?))"
""":data:`GET` for many keys at once, given as one JSON array: one statement (an index search per
key) whatever their number, with no limit on bound parameters."""
ROW_COLUMNS = "key, ts, origin, oseq, expires_at, value, crc"
ROW = f"SELECT {ROW_COLUMNS} FROM kv WHERE key = ?"
DAMAGED_ADD = (
    "INSERT INTO damaged (key, ts, origin, oseq, found_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET ts = excluded.ts, origin = excluded.origin, oseq = excluded.oseq"
)
DAMAGED_ALL = "SELECT key, ts, origin, oseq FROM damaged"
DAMAGED_CLEAR = "DELETE FROM damaged WHERE key = ?"
# Version 1 -> 2, run in one transaction at a writable open; ``ekv_row_checksum`` is registered
# on the connection for it.
UPGRADE_TO_2 = """
ALTER TABLE kv ADD COLUMN crc INTEGER;
UPDATE kv SET crc = ekv_row_checksum(key, ts, origin, oseq, expires_at, value);
CREATE TABLE damaged (
    key     TEXT    NOT NULL PRIMARY KEY,
    ts      INTEGER NOT NULL,
    origin  TEXT    NOT NULL,
    oseq    INTEGER NOT NULL,
    found_at INTEGER NOT NULL
) WITHOUT ROWID;
"""
USER_VERSION_2 = "PRAGMA user_version = 2"
USER_VERSION_3 = "PRAGMA user_version = 3"
# Version 3 -> 4, in one transaction at a writable open: ``ekv_row_check`` (registered for it)
# rebuilds each row's check record after verifying the schema-3 checksum; a row that fails it
# gets a record that fails every check (damage is never laundered into a valid one).
UPGRADE_TO_4 = "UPDATE kv SET crc = ekv_row_check(key, ts, origin, oseq, expires_at, value, crc)"
VERSION_OF = "SELECT ts, origin FROM kv WHERE key = ?"

# The acceptor (ekv._storage.acceptor).
PAXOS_COLUMNS = "promised, promised_by, accepted, accepted_by, has_record, ts, origin, expires_at, value, lineage, crc"
PAXOS_GET = f"SELECT {PAXOS_COLUMNS} FROM paxos WHERE key = ?"
PAXOS_PUT = f"INSERT OR REPLACE INTO paxos (key, {PAXOS_COLUMNS}) VALUES ({', '.join(['?'] * 12)})"
PAXOS_DELETE = "DELETE FROM paxos WHERE key = ?"
KV_AND_PAXOS_KEYS = "SELECT key FROM kv UNION SELECT key FROM paxos"
PAXOS_COUNT = "SELECT count(*), coalesce(max(promised), 0) FROM paxos"
PAXOS_GC_BATCH = (
    f"SELECT key, {PAXOS_COLUMNS} FROM paxos WHERE has_record = 0 OR value IS NULL "
    "OR (expires_at IS NOT NULL AND expires_at < ?) LIMIT ?"
)
# A damaged row is deleted before its replacement is written (its version cannot be trusted).
DELETE_ROW = "DELETE FROM kv WHERE key = ?"
ALL_ROWS = f"SELECT {ROW_COLUMNS} FROM kv"
ROWS_FIRST = f"SELECT {ROW_COLUMNS} FROM kv ORDER BY key LIMIT ?"
ROWS_AFTER = f"SELECT {ROW_COLUMNS} FROM kv WHERE key > ? ORDER BY key LIMIT ?"
# A full sync's pages: every live row and every tombstone at or after the cutoff, in key order.
# Parameters: [after key,] cutoff_ns, limit.
FULL_SYNC_FIRST = f"SELECT {ROW_COLUMNS} FROM kv WHERE deleted_at IS NULL OR deleted_at >= ? ORDER BY key LIMIT ?"
FULL_SYNC_AFTER = (
    f"SELECT {ROW_COLUMNS} FROM kv WHERE key > ? AND (deleted_at IS NULL OR deleted_at >= ?) ORDER BY key LIMIT ?"
)
COUNT_ROWS = "SELECT count(*) FROM kv"
COUNT_ROWS_AND_TOMBSTONES = "SELECT count(*), coalesce(sum(value IS NULL), 0) FROM kv"
DAMAGED_COUNT = "SELECT count(*) FROM damaged"

# The file's identity and format.
APPLICATION_ID_GET = "PRAGMA application_id"
APPLICATION_ID_SET = f"PRAGMA application_id = {APPLICATION_ID}"
USER_VERSION_GET = "PRAGMA user_version"
USER_VERSION_SET = f"PRAGMA user_version = {SCHEMA_VERSION}"
COUNT_SCHEMA_OBJECTS = "SELECT count(*) FROM sqlite_schema"
PAGE_COUNT = "PRAGMA page_count"
INTEGRITY_CHECK = "PRAGMA integrity_check"
CHECKPOINT_PASSIVE = "PRAGMA wal_checkpoint(PASSIVE)"
CHECKPOINT_TRUNCATE = "PRAGMA wal_checkpoint(TRUNCATE)"

META_GET = "SELECT value FROM meta WHERE key = ?"
META_SET = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
META_ALL = "SELECT key, value FROM meta"
# Node-level markers kept in shard 0's meta (see ekv._storage.sync.load_markers): by key range.
META_RANGE = "SELECT key, value FROM meta WHERE key >= ? AND key < ?"
META_DELETE = "DELETE FROM meta WHERE key = ?"

OWN_LOG_TAIL = "SELECT oseq, ts FROM log WHERE origin = ? ORDER BY oseq DESC LIMIT 1"
LOG_TOPS = "SELECT origin, max(oseq) FROM log GROUP BY origin"
LOG_TRUNCATE = "DELETE FROM log WHERE origin = ? AND oseq <= ?"
LOG_ORIGINS = "SELECT DISTINCT origin FROM log ORDER BY origin"
LOG_PAGE = "SELECT oseq, key FROM log WHERE origin = ? AND oseq > ? ORDER BY oseq LIMIT ?"
VV_ALL = "SELECT origin, oseq FROM vv"
VV_RAISE = (
    "INSERT INTO vv (origin, oseq) VALUES (?, ?) ON CONFLICT (origin) DO UPDATE SET oseq = max(oseq, excluded.oseq)"
)
VV_DELETE = "DELETE FROM vv WHERE origin = ?"
FLOORS_ALL = "SELECT origin, oseq FROM floors"
FLOOR_DELETE = "DELETE FROM floors WHERE origin = ?"
FLOOR_OF = "SELECT oseq FROM floors WHERE origin = ?"
FLOOR_RAISE = (
    "INSERT INTO floors (origin, oseq) VALUES (?, ?) ON CONFLICT (origin) DO UPDATE SET oseq = max(oseq, excluded.oseq)"
)
PEER_REPORT = (
    "INSERT INTO peers (node_id, vv, reported_at) VALUES (?, ?, ?) "
    "ON CONFLICT (node_id) DO UPDATE SET vv = excluded.vv, reported_at = excluded.reported_at"
)
PEERS_ALL = "SELECT node_id, vv, reported_at FROM peers"

EXPIRED_BATCH = (
    "SELECT key, ts, origin, oseq, expires_at, value, crc FROM kv "
    "WHERE value IS NOT NULL AND expires_at IS NOT NULL AND expires_at <= ? "
    "AND key NOT IN (SELECT key FROM damaged) "
    "ORDER BY expires_at LIMIT ?"
)
# Turning an expired put into a tombstone keeps its version: every node does the same
# deterministic rewrite, so no new version competes with a newer put.
EXPIRE_ROW = (
    "UPDATE kv SET value = NULL, deleted_at = expires_at, crc = ? "
    "WHERE key = ? AND ts = ? AND origin = ? AND value IS NOT NULL"
)
PURGE_BATCH = (
    "DELETE FROM kv WHERE rowid IN (SELECT rowid FROM kv WHERE deleted_at IS NOT NULL AND deleted_at < ? LIMIT ?)"
)

# Parameters: now_ns, now_ns. Returns (visible keys, tombstones, expired but not yet collected,
# keys with a TTL still running).
COUNTS = (
    "SELECT coalesce(sum(value IS NOT NULL AND (expires_at IS NULL OR expires_at > ?)), 0), "
    "coalesce(sum(value IS NULL), 0), "
    "coalesce(sum(value IS NOT NULL AND expires_at <= ?), 0), "
    "coalesce(sum(value IS NOT NULL AND expires_at IS NOT NULL), 0) FROM kv"
)
LOG_RANGES = "SELECT origin, min(oseq), max(oseq), count(*) FROM log GROUP BY origin ORDER BY origin"

_RANGE_CACHE: dict[tuple[bool, bool, bool, int | None], str] = {}

_VISIBLE = "value IS NOT NULL AND (expires_at IS NULL OR expires_at > ?)"
COUNT_FROM = f"SELECT count(*) FROM kv WHERE key >= ? AND {_VISIBLE}"
"""Visible keys from a lower bound on (the whole shard for ``""``). Parameters: lower, now_ns.
A scan of the primary key's range: O(keys counted); ``len(kv)`` and ``kv.count()`` use it."""
COUNT_RANGE = f"SELECT count(*) FROM kv WHERE key >= ? AND key < ? AND {_VISIBLE}"
"""Visible keys in ``[lower, upper)`` (a prefix). Parameters: lower, upper, now_ns."""


def range_sql(*, with_values: bool, after: bool, bounded: bool, page: int | None) -> str:
    """The range query used by scan/keys/iter.

    ``after`` continues strictly after the last key of the previous page; otherwise the page
    starts at the prefix itself. ``bounded`` adds the exclusive upper bound of the prefix.
    ``page`` is the most rows returned, written into the SQL as a literal (None: every row).
    Parameters: lower, [upper,] now (``with_values``: ``expiry_floor(now_ns)``, else now_ns).

    Not ``LIMIT ?``: SQLite's planner reads a bound LIMIT's value, so binding it expires the
    prepared statement and every execution prepares it again (measured: a third of a
    1,000-key scan's SQL time, docs/architecture.md "Performance notes").
    """
    cache_key = (with_values, after, bounded, page)
    sql = _RANGE_CACHE.get(cache_key)
    if sql is None:
        lower = "key > ?" if after else "key >= ?"
        upper = " AND key < ?" if bounded else ""
        limit = "" if page is None else f" LIMIT {int(page)}"
        if with_values:
            # The third column is the exact bytes the row's check covers, key, value and check
            # record, concatenated by SQLite (a copy in C): the reader verifies a page of them
            # with one crc32 call. Visibility is the record's expiry (first, big-endian), compared as bytes with
            # ekv._core.checksum.expiry_floor(now): what the check covers, not the column.
            sql = (
                f"SELECT key, value, CAST(key || value || crc AS BLOB) FROM kv WHERE {lower}{upper} "
                f"AND value IS NOT NULL AND crc > ? ORDER BY key{limit}"
            )
        else:
            sql = (
                f"SELECT key FROM kv WHERE {lower}{upper} AND value IS NOT NULL "
                f"AND (expires_at IS NULL OR expires_at > ?) ORDER BY key{limit}"
            )
        _RANGE_CACHE[cache_key] = sql
    return sql
