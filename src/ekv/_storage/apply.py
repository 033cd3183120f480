"""Applying versions made elsewhere (replication) to one shard, inside the group's transaction.

Every entry is checked against last-writer-wins on its own. The winners are decided in Python
against the stored versions (read with one query per 500 keys) and the versions applied earlier
in the same batch, then written with multi-row upserts: a few calls into SQLite per batch instead
of one per entry. The upsert's WHERE clause still guards every row; if SQLite disagrees with the
decision (it cannot while the group commit holds the shard), the batch fails rather than report a
wrong result. The caller (:meth:`ekv._storage.shard.Shard.commit`) owns the transaction, the
version-vector raises and the events' delivery; this module only decides and writes rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import apsw

from ekv._core import lww
from ekv._core.clock import HybridClock
from ekv._errors import InternalError
from ekv._model import Entry, RawEvent, Version
from ekv._storage import schema
from ekv._storage.integrity import DamagedVersion, visible_value
from ekv._storage.schema import kv_row

__all__ = ["apply_entries"]

_ROWS_PER_STATEMENT = 256


def apply_entries(
    cur: apsw.Cursor,
    entries: Sequence[Entry],
    *,
    clock: HybridClock,
    damaged: dict[str, DamagedVersion],
    cleared: list[str],
    events: list[RawEvent] | None,
    matches: Callable[[str], bool],
) -> list[Entry]:
    """Apply remote ``entries`` in order; return those that won, in the form they were stored
    (an already-expired put becomes a tombstone).

    ``damaged`` is the shard's record of damaged rows; a key whose damaged row is replaced by a
    version at least as new is appended to ``cleared`` (the caller clears it after the commit).
    Events of the winners go to ``events`` (None: nobody subscribes) for keys ``matches`` wants.
    """
    if not entries:
        return []
    now = clock.wall.now_ns()
    current = {k: Version(*v) for k, v in schema.stored_versions(cur, {e.key for e in entries}).items()}
    # Rows still holding their damaged version (a row since replaced by a peer's copy, even an
    # older one, verifies again and follows LWW as usual).
    untrusted = (
        {key for key, version in current.items() if key in damaged and version == Version(*damaged[key][:2])}
        if damaged
        else set()
    )
    batch_value: dict[str, bytes | None] = {}  # values written earlier in this batch
    rows: list[Any] = []
    applied: list[Entry] = []
    top = 0
    for entry in entries:
        key = entry.key
        ts = entry.timestamp_ns
        if ts > top:
            top = ts
        version = Version(ts, entry.origin)
        if key in untrusted:
            # A damaged row competes with nothing: the first copy from a peer replaces it
            # (deleted first, so the upsert below inserts), later ones follow LWW as usual.
            untrusted.discard(key)
            cur.execute(schema.DELETE_ROW, (key,))
            current.pop(key, None)
            bad_ts, bad_origin, _ = damaged[key]
            if version >= Version(bad_ts, bad_origin):
                cleared.append(key)
        if not lww.wins(version, current.get(key)):
            continue  # loses (or is a duplicate): changes nothing
        current[key] = version
        value = entry.value
        expires_at = entry.expires_at_ns
        expired_value: bytes | None = None
        if value is not None and expires_at is not None and expires_at <= now:
            expired_value, value = value, None  # already expired: store the tombstone form
        if events is not None and matches(key):
            if value is not None:
                events.append(("put", key, value, version))
            else:
                prev = batch_value[key] if key in batch_value else visible_value(cur, key, damaged, clock.wall.now_ns)
                kind = "expired" if expires_at is not None else "delete"
                events.append((kind, key, expired_value if expired_value is not None else prev, version))
        batch_value[key] = value if value is None or expires_at is None or expires_at > now else None
        rows += kv_row(key, ts, entry.origin, entry.oseq, expires_at, value)
        applied.append(entry if value is entry.value else Entry(key, ts, entry.origin, entry.oseq, expires_at, None))
    clock.observe(top)
    _upsert(cur, rows, len(applied))
    return applied


def _upsert(cur: apsw.Cursor, rows: list[Any], expected: int) -> None:
    """Write the winners' flattened upsert parameters ``rows``, up to ``_ROWS_PER_STATEMENT`` rows
    per statement, each statement padded to a power of two rows by repeating its last row (an
    exact duplicate changes nothing), so only a few statement shapes are ever prepared. Raises if
    fewer than ``expected`` rows changed: the WHERE clause refused a row Python decided won."""
    written = 0
    width = schema.UPSERT_COLUMNS
    step = width * _ROWS_PER_STATEMENT
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        count = len(chunk) // width
        shape = 1 << (count - 1).bit_length()
        if shape != count:
            chunk += chunk[-width:] * (shape - count)
        cur.execute(schema.upsert_rows(shape), chunk)
        written += cur.connection.changes()
    if written != expected:
        raise InternalError(f"applied {written} remote rows where {expected} were expected to win")
