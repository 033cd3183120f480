"""Reading and maintaining a shard for replication.

* :func:`local_vv`: the shard's version vector (stored vector plus the local sequence counter).
* :class:`SyncSnapshot`: what one peer lacks, read from a single snapshot in bounded chunks, as a
  delta (from the change log) or a full sync (every live row and every tombstone younger than
  ``tombstone_ttl``). A dedicated read connection holds the snapshot for the sync's lifetime, so
  the vector sent at the end describes exactly the rows that were read.
* :func:`truncate_log`: remove change-log entries every peer already covers, raising the
  per-origin floors that decide between delta and full sync.

An entry whose TTL has run out is sent as a tombstone (value ``None``, its version and expiry
kept), so a peer holding an older live version drops it, and no expired value travels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import apsw

from ekv._core import retire
from ekv._core import vv as vvmod
from ekv._model import Entry
from ekv._storage import schema
from ekv._storage.integrity import row_ok
from ekv._storage.shardfile import own_tail, previous_origin
from ekv._storage.sqlite import begin_snapshot, open_connection, roll_back
from ekv._storage.writers import dropped_retirements, writer_rows

__all__ = ["SyncSnapshot", "load_markers", "load_peer_reports", "local_vv", "set_marker", "truncate_log"]

_PAGE = 256
# What a delta sync remembers of the keys it has dealt with (see SyncSnapshot._next_delta): at
# most this many bytes of keys, so a delta of millions of keys holds no set of them all.
SENT_KEYS_MAX_BYTES = 4 << 20
_KEY_OVERHEAD = 64  # a set entry and the str object around the key's characters


def local_vv(cur: apsw.Cursor, origin: str) -> dict[str, int]:
    """The shard's version vector as seen by ``cur`` (inside a transaction for a snapshot): the
    stored vector plus the sequence counters of the origins still writing into the shard, which
    are not in the stored vector: ``origin`` (this open's), the other opens of the data directory
    (other processes: the shard's ``writer/`` rows) and the origin the shard records as its
    writing one (the previous one while a full disk keeps it from arming)."""
    rows: list[Any] = cur.execute(schema.VV_ALL).fetchall()
    vv = {o: oseq for o, oseq in rows}
    for own_origin in {origin, previous_origin(cur, origin), *writer_rows(cur)}:
        own = own_tail(cur, own_origin)[0]
        if own:
            vv[own_origin] = max(own, vv.get(own_origin, 0))
    vv.pop("", None)
    return vv


def floors(cur: apsw.Cursor) -> dict[str, int]:
    rows: list[Any] = cur.execute(schema.FLOORS_ALL).fetchall()
    return {origin: oseq for origin, oseq in rows}


def load_peer_reports(cur: apsw.Cursor) -> dict[str, tuple[dict[str, int], int]]:
    """node_id -> (the vector it last reported for this shard, when)."""
    rows: list[Any] = cur.execute(schema.PEERS_ALL).fetchall()
    out: dict[str, tuple[dict[str, int], int]] = {}
    for node_id, raw, reported_at in rows:
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        if isinstance(data, dict):
            out[node_id] = ({str(k): int(v) for k, v in data.items() if isinstance(v, int)}, int(reported_at))
    return out


def record_peer_report(cur: apsw.Cursor, node_id: str, vv: Mapping[str, int], now_ns: int) -> None:
    cur.execute(schema.PEER_REPORT, (node_id, json.dumps(dict(vv), sort_keys=True), now_ns))


def load_markers(cur: apsw.Cursor, prefix: str) -> dict[str, int]:
    """The replicator's node-level markers under ``prefix`` (``member_down/`` and the like, kept
    in shard 0's meta table): the rest of each key -> its value."""
    rows: list[Any] = cur.execute(schema.META_RANGE, (prefix, prefix + "\uffff")).fetchall()
    return {key[len(prefix) :]: int(value) for key, value in rows if isinstance(value, int)}


def set_marker(cur: apsw.Cursor, key: str, value: int | None) -> None:
    """Set a marker :func:`load_markers` reads (remove it when ``value`` is None)."""
    if value is None:
        cur.execute(schema.META_DELETE, (key,))
    else:
        cur.execute(schema.META_SET, (key, value))


def truncate_log(cur: apsw.Cursor, node_id: str, targets: Mapping[str, int] | None) -> int:
    """Delete change-log entries at or below ``targets[origin]`` (everything when ``targets`` is
    None) and raise the floors to match; returns the number of entries removed. Runs in the
    caller's transaction. The local sequence counter survives through ``floors``."""
    tops: list[Any] = cur.execute(schema.LOG_TOPS).fetchall()
    removed = 0
    for origin, top in tops:
        limit = top if targets is None else min(top, targets.get(origin, 0))
        if limit <= 0:
            continue
        cur.execute(schema.LOG_TRUNCATE, (origin, limit))
        removed += int(cur.connection.changes())
        cur.execute(schema.FLOOR_RAISE, (origin, limit))
    return removed


def _entry(row: Any, now_ns: int) -> Entry:
    key, ts, origin, oseq, expires_at, value, _ = row
    if value is not None and expires_at is not None and expires_at <= now_ns:
        value = None  # expired: travels as a tombstone that keeps its version and expiry
    return Entry(key, ts, origin, oseq, expires_at, value)


class SyncSnapshot:
    """One outgoing sync of one shard to one peer, read from a single snapshot.

    Call :meth:`next_chunk` until it returns an empty list, then :meth:`close` (also on abort).
    """

    def __init__(
        self,
        path: str,
        origin: str,
        peer_vv: Mapping[str, int],
        *,
        now_ns: int,
        cutoff_ns: int,
        synchronous: str = "NORMAL",
        force_full: bool = False,
    ) -> None:
        self._conn = open_connection(path, create=False, synchronous=synchronous, reader=True)
        self._cur = self._conn.cursor()
        begin_snapshot(self._cur)
        try:
            own = local_vv(self._cur, origin)  # the first read pins the snapshot
            self.floors = floors(self._cur)
            dropped = dropped_retirements(self._cur)
        except BaseException:
            self.close()
            raise
        # Retired origins (ekv._core.retire): covered by a requester that settled past them, a full
        # sync for one that has not settled past every origin dropped here, and left out of the
        # vector this sync sends once dropped.
        self.vv = retire.effective(own, cutoff_ns - retire.margin_ns(now_ns - cutoff_ns))
        self.peer_vv = retire.cover(peer_vv, own)
        force_full = force_full or retire.needs_full(peer_vv, dropped)
        self.kind = "delta" if not force_full and vvmod.log_covers(self.floors, self.peer_vv) else "full"
        self._now = now_ns
        self._cutoff = cutoff_ns
        self.sent = 0
        self.done = False
        self.damaged: list[str] = []
        """Keys whose rows failed their checksum while being read (the caller records them)."""
        # full sync: paging by key
        self._last_key: str | None = None
        # delta sync: paging by origin, then oseq; keys already dealt with (a bounded cache)
        self._origins: list[str] = []
        self._origin_index = 0
        self._last_oseq = 0
        self._sent_keys: set[str] = set()
        self._sent_keys_bytes = 0
        if self.kind == "delta":
            origins: list[Any] = self._cur.execute(schema.LOG_ORIGINS).fetchall()
            self._origins = [row[0] for row in origins]
            if self._origins:
                self._last_oseq = self.peer_vv.get(self._origins[0], 0)

    def next_chunk(self, max_entries: int, max_bytes: int) -> list[Entry]:
        """The next entries to send (at most ``max_entries``, about ``max_bytes``); ``[]`` once
        the sync is complete."""
        if self.done:
            return []
        chunk = (
            self._next_full(max_entries, max_bytes) if self.kind == "full" else self._next_delta(max_entries, max_bytes)
        )
        self.sent += len(chunk)
        if not chunk:
            self.done = True
        return chunk

    def _next_full(self, max_entries: int, max_bytes: int) -> list[Entry]:
        out: list[Entry] = []
        size = 0
        while len(out) < max_entries and size < max_bytes:
            if self._last_key is None:
                rows: list[Any] = self._cur.execute(
                    schema.FULL_SYNC_FIRST, (self._cutoff, min(_PAGE, max_entries - len(out)))
                ).fetchall()
            else:
                rows = self._cur.execute(
                    schema.FULL_SYNC_AFTER, (self._last_key, self._cutoff, min(_PAGE, max_entries - len(out)))
                ).fetchall()
            if not rows:
                break
            for row in rows:
                self._last_key = row[0]
                if not self._verified(row):
                    continue
                entry = _entry(row, self._now)
                out.append(entry)
                size += len(entry.key) + (len(entry.value) if entry.value is not None else 0) + 40
                if size >= max_bytes:
                    break
        return out

    def _next_delta(self, max_entries: int, max_bytes: int) -> list[Entry]:
        out: list[Entry] = []
        size = 0
        peer = self.peer_vv
        while len(out) < max_entries and size < max_bytes and self._origin_index < len(self._origins):
            origin = self._origins[self._origin_index]
            rows: list[Any] = self._cur.execute(schema.LOG_PAGE, (origin, self._last_oseq, _PAGE)).fetchall()
            if not rows:
                self._origin_index += 1
                if self._origin_index < len(self._origins):
                    self._last_oseq = peer.get(self._origins[self._origin_index], 0)
                continue
            for oseq, key in rows:
                self._last_oseq = oseq
                if key in self._sent_keys:
                    continue
                row = self._cur.execute(schema.ROW, (key,)).get
                if row is None or vvmod.covered(peer, row[2], row[3]):
                    self._dealt_with(key)
                    continue  # purged, or the peer already has this version or a later one
                if not self._verified(row):
                    self._dealt_with(key)
                    continue
                if (row[2], row[3]) != (origin, oseq):
                    continue  # an older write of the key: its current row goes at its own entry
                self._dealt_with(key)
                entry = _entry(row, self._now)
                out.append(entry)
                size += len(key) + (len(entry.value) if entry.value is not None else 0) + 40
                if len(out) >= max_entries or size >= max_bytes:
                    break
        return out

    def _dealt_with(self, key: str) -> None:
        """Remember that ``key`` needs nothing more in this delta, while the memory bound
        (``SENT_KEYS_MAX_BYTES``) allows; past it, keys are not remembered.

        Why forgetting is safe, and why each key still goes at most once: a key's current row is
        sent only at the log entry of its own dot ``(origin, oseq)``, which the scan reaches once
        (the snapshot does not change). The set only spares re-reading the row of a key met
        again (a key written many times has many log entries). The convergence argument of
        docs/architecture.md ("The sync rule, and why it converges") needs exactly that entry:
        a row whose dot (w, j) the requester does not cover has j above its vector, hence above
        the floor, so (w, j) is in the log range this delta scans and the row is sent there."""
        size = len(key) + _KEY_OVERHEAD
        if self._sent_keys_bytes + size <= SENT_KEYS_MAX_BYTES:
            self._sent_keys.add(key)
            self._sent_keys_bytes += size

    def _verified(self, row: Any) -> bool:
        """Whether a row may be sent. A damaged row is withheld, and so is the final vector:
        the receiver must not record as covered a write it never received."""
        if row_ok(row):
            return True
        if row[0] not in self.damaged:  # met again once the key cache is full
            self.damaged.append(row[0])
        self.vv = {}
        return False

    def close(self) -> None:
        """End the snapshot and close its connection. Idempotent."""
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            roll_back(conn)
            conn.close()
