"""The reading side of the sharded store: per-thread reader connections, point reads, prefix
reads merged across shards, and the checksum check on everything read.

Reads never touch a writer: each thread reads through its own connection to each shard (WAL
lets readers and the writer proceed at once, ``PRAGMA query_only``), created on first use and
closed with the store. Prefix reads fan out to every shard and merge the per-shard results, which
are each in key order, into one ascending stream. A row is verified against its checksum before
its value leaves: a damaged one raises :class:`~ekv.ChecksumError` and is recorded through the
shard's writer, so that repair starts.

Keys come in validated and values leave as bytes: key checks and the codec are the value layer's
(:mod:`ekv._values`), above storage.

:class:`StoreReads` is the base of :class:`ekv._storage.store.ShardedStore`, which owns the
state declared here (opening, closing, writes and GC live there); a base class rather than a
separate object, so a ``get`` costs no extra call.
"""

from __future__ import annotations

import heapq
import json
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from zlib import crc32

import apsw

from ekv._config import Config
from ekv._core.checksum import BIAS, EXPIRY_AND_TS, NO_EXPIRY, RESIDUE, check_fields, expiry_floor
from ekv._core.clock import HybridClock
from ekv._core.keys import check_key, prefix_upper_bound, shard_of
from ekv._errors import ClosedError
from ekv._log import NodeLog
from ekv._model import Entry, Version
from ekv._storage import schema
from ekv._storage.datadir import DataDir
from ekv._storage.integrity import damaged_error, mark_damaged, row_ok
from ekv._storage.shard import Shard
from ekv._storage.sqlite import open_connection, raise_storage_error

__all__ = ["StoreReads"]

_PAGE = 512


class StoreReads:
    """Reads of every shard of one data directory (the base of ``ShardedStore``)."""

    config: Config
    log: NodeLog
    datadir: DataDir
    shards: list[Shard]
    clock: HybridClock
    """Observes the version of each row read: a write made after reading version V gets a version
    above V even when V was written by another process whose clock is ahead (SPEC 12)."""
    reads: int
    """Reads served (approximate under threads: a metric, not an invariant)."""
    _count: int
    _now: Callable[[], int]
    _synchronous: str
    _tls: threading.local
    _readers: weakref.WeakSet[apsw.Connection]
    _readers_lock: threading.Lock
    _closed: bool
    _readonly: bool
    _forked: bool

    revive: Callable[[], None] | None = None
    """Set by the node: reopens a store inherited through ``fork()`` in place (see
    :meth:`_unusable`)."""

    def _unusable(self) -> None:
        """Called when the store is closed (or read-only, for a write): a store inherited through
        ``fork()`` (gunicorn ``--preload``) is reopened in place, in the child, on its first use
        there, and the call goes on; otherwise raise :class:`~ekv.ClosedError`."""
        revive = self.revive
        if self._forked and revive is not None:
            revive()
            if not self._closed:
                return
        raise self._closed_error()

    def _closed_error(self) -> ClosedError:
        if self._readonly and not self._closed:
            return ClosedError("this store was opened read-only")
        if self._forked:
            return ClosedError("this store was opened by the parent process; open it again after fork()")
        return ClosedError("the store is closed")

    # -- readers -----------------------------------------------------------------------------

    def _cursors(self) -> list[apsw.Cursor]:
        try:
            return self._tls.cursors  # type: ignore[no-any-return]
        except AttributeError:
            return self._open_readers()

    def _open_readers(self) -> list[apsw.Cursor]:
        self._tls.cursors = cursors = self.new_readers()
        return cursors

    def new_readers(self) -> list[apsw.Cursor]:
        """Open a reader connection to each shard (about 1-3 ms each on a busy machine) for
        :meth:`adopt_readers` on another thread: a thread that must not block has them opened
        elsewhere. APSW connections may be used from any thread, one at a time."""
        if self._closed:
            self._unusable()
        cursors = []
        with self._readers_lock:
            for index in range(self._count):
                conn = open_connection(
                    str(self.datadir.shard_path(index)), create=False, synchronous=self._synchronous, reader=True
                )
                self._readers.add(conn)
                cursors.append(conn.cursor())
        return cursors

    def adopt_readers(self, cursors: list[apsw.Cursor]) -> None:
        """Make ``cursors`` (from :meth:`new_readers`) this thread's readers; they are closed
        with the store, as every reader is."""
        if not hasattr(self._tls, "cursors"):
            self._tls.cursors = cursors

    def read_bounded(self, key: str, encoded: bytes, limit: int) -> tuple[bytes, Version] | bool | None:
        """:meth:`read_version` for a caller that must not block: True (nothing read) if this
        thread has no readers yet (opening them takes milliseconds: see :meth:`new_readers`),
        False (nothing read) if the stored value is longer than ``limit`` bytes, whose reading
        takes milliseconds (about 5 ms a MiB here; SQLite gives a blob's length without reading
        it). Otherwise as :meth:`read_version`."""
        if self._closed:
            self._unusable()
        cursors = getattr(self._tls, "cursors", None)
        if cursors is None:
            return True
        self.reads += 1
        index = crc32(encoded) % self._count
        try:
            row = cursors[index].execute(schema.GET_BOUNDED, (limit, key)).get
        except apsw.Error as exc:
            if self._closed:
                raise self._closed_error() from exc
            raise_storage_error(exc)
        if row is None:
            return None
        value, check, size = row
        if size is None:
            return None  # a tombstone
        if value is None:
            return False
        try:
            intact = crc32(check, crc32(value, crc32(encoded, RESIDUE))) == RESIDUE
        except TypeError:
            intact = False
        if not intact:
            raise self._damaged(index, key)
        expires_at, ts, _, _, origin = check_fields(check)
        if expires_at is not None and expires_at <= self._now():
            return None
        if ts > self.clock.last_ns:
            self.clock.observe(ts)
        return value, Version(ts, origin)

    # -- point operations --------------------------------------------------------------------

    def read(self, key: str, encoded: bytes) -> bytes | None:
        """The stored value (bytes) of a visible ``key``, else None. ``encoded`` is the key's
        UTF-8 form, already validated (:func:`ekv._core.keys.check_key`, by the value layer)."""
        if self._closed:
            self._unusable()
        self.reads += 1  # approximate under threads (not locked): a metric, not an invariant
        index = crc32(encoded) % self._count
        try:
            try:
                cursors = self._tls.cursors  # _cursors() inlined: a call less per get
            except AttributeError:
                cursors = self._open_readers()
            row = cursors[index].execute(schema.GET, (key,)).get
        except apsw.Error as exc:
            if self._closed:
                raise self._closed_error() from exc
            raise_storage_error(exc)
        if row is None:
            return None
        value, check = row
        if value is None:
            return None
        # The check record covers the requested key, the value and the metadata used below.
        try:
            intact = crc32(check, crc32(value, crc32(encoded, RESIDUE))) == RESIDUE
        except TypeError:  # not a blob: damaged
            intact = False
        if not intact:
            raise self._damaged(index, key)
        expiry, ts = EXPIRY_AND_TS(check)
        if expiry != NO_EXPIRY and expiry - BIAS <= self._now():
            return None
        if ts > self.clock.last_ns:  # another process wrote it: order later writes after it
            self.clock.observe(ts)
        return value  # type: ignore[no-any-return]

    def read_version(self, key: str, encoded: bytes) -> tuple[bytes, Version] | None:
        """``(value bytes, version)`` of a visible ``key``, else None (``encoded`` as in
        :meth:`read`). :meth:`read`'s body repeated rather than shared: a helper call would cost
        every get about 0.1 us (a point read is 4-10 us)."""
        if self._closed:
            self._unusable()
        self.reads += 1
        index = crc32(encoded) % self._count
        try:
            row = self._cursors()[index].execute(schema.GET, (key,)).get
        except apsw.Error as exc:
            if self._closed:
                raise self._closed_error() from exc
            raise_storage_error(exc)
        if row is None:
            return None
        value, check = row
        if value is None:
            return None
        try:
            intact = crc32(check, crc32(value, crc32(encoded, RESIDUE))) == RESIDUE
        except TypeError:
            intact = False
        if not intact:
            raise self._damaged(index, key)
        expires_at, ts, _, _, origin = check_fields(check)
        if expires_at is not None and expires_at <= self._now():
            return None
        if ts > self.clock.last_ns:
            self.clock.observe(ts)
        return value, Version(ts, origin)

    def read_many(self, keys: Sequence[tuple[str, bytes]]) -> dict[str, bytes]:
        """The stored values of the visible ones of ``keys`` (``(key, encoded)`` pairs, validated
        as for :meth:`read`), as ``key -> bytes``: one query per shard (the shard's keys passed as
        one JSON array), each row's checksum verified as in :meth:`read`."""
        if self._closed:
            self._unusable()
        parts: dict[int, list[str]] = {}
        for key, encoded in keys:
            parts.setdefault(crc32(encoded) % self._count, []).append(key)
        found: dict[str, bytes] = {}
        floor = expiry_floor(self._now())
        try:
            cursors = self._cursors()
            for index, part in parts.items():
                self.reads += len(part)
                for key, value, check in cursors[index].execute(
                    schema.GET_MANY, (json.dumps(part, ensure_ascii=False),)
                ):
                    if value is None:
                        continue
                    if not _intact(key.encode(), value, check):
                        raise self._damaged(index, key)
                    if check > floor:
                        found[key] = value
        except apsw.Error as exc:
            if self._closed:
                raise self._closed_error() from exc
            raise_storage_error(exc)
        return found

    def _damaged(self, index: int, key: str) -> Exception:
        """The error for a read that found ``key``'s row damaged; records the damage (through
        the shard's writer, which checks again) so that repair starts."""
        if self.shards and not self._readonly and key not in self.shards[index].damaged:
            try:
                mark_damaged(self.shards[index], key, self._now())
            except Exception as exc:  # the read fails with the checksum error either way
                self.log.warning("recording damage of key %r failed: %s", key, exc)
        return damaged_error(key, str(self.datadir.shard_path(index)))

    def _checked(self, index: int, row: Any) -> Any:
        """``row`` (``(key, ts, origin, oseq, expires_at, value, crc)``) if it verifies."""
        if not row_ok(row):
            raise self._damaged(index, row[0])
        return row

    def entry(self, key: str) -> Entry | None:
        """The stored entry of ``key`` including tombstones and expired puts (for tests,
        tools and replication)."""
        if self._closed:
            self._unusable()
        index = shard_of(check_key(key), self._count)
        row = self._cursors()[index].execute(schema.ROW, (key,)).get
        return None if row is None else Entry(*self._checked(index, row)[:6])

    def entries(self, shard: int | None = None) -> Iterator[Entry]:
        """Every stored entry (tombstones too), shard by shard, each shard in key order."""
        indexes = range(self._count) if shard is None else [shard]
        for index in indexes:
            last: str | None = None
            while True:
                if self._closed:
                    raise self._closed_error()
                cur = self._cursors()[index]
                if last is None:
                    rows = _fetch(cur, schema.ROWS_FIRST, (_PAGE,))
                else:
                    rows = _fetch(cur, schema.ROWS_AFTER, (last, _PAGE))
                for row in rows:
                    yield Entry(*self._checked(index, row)[:6])
                if len(rows) < _PAGE:
                    break
                last = rows[-1][0]

    # -- prefix reads ------------------------------------------------------------------------

    def _shard_rows(self, index: int, prefix: str, upper: str | None, now: int, with_values: bool) -> Iterator[Any]:
        lower = prefix
        after = False
        bounded = upper is not None
        while True:
            if self._closed:
                raise self._closed_error()
            sql = schema.range_sql(with_values=with_values, after=after, bounded=bounded, page=_PAGE)
            visible = expiry_floor(now) if with_values else now
            params: tuple[Any, ...] = (lower, upper, visible) if bounded else (lower, visible)
            try:
                rows: list[Any] = self._cursors()[index].execute(sql, params).fetchall()
            except apsw.Error as exc:
                if self._closed:
                    raise self._closed_error() from exc
                raise_storage_error(exc)
            if with_values:
                if rows:
                    keys, values = self._verified(rows)
                    yield from zip(keys, values, strict=True)
            else:
                for row in rows:
                    yield row[0]
            if len(rows) < _PAGE:
                return
            lower = rows[-1][0]
            after = True

    def iter_rows(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        """Lazily yield ``(key, value bytes)`` for visible keys under ``prefix`` (validated by
        the value layer), ascending; memory stays bounded by one page per shard."""
        if self._closed:
            self._unusable()
        upper = prefix_upper_bound(prefix)
        now = self._now()
        streams = [self._shard_rows(i, prefix, upper, now, True) for i in range(self._count)]
        yield from heapq.merge(*streams)

    def iter_keys(self, prefix: str) -> Iterator[str]:
        """Lazily yield visible keys under ``prefix`` (validated) in ascending order."""
        if self._closed:
            self._unusable()
        upper = prefix_upper_bound(prefix)
        now = self._now()
        streams = [self._shard_rows(i, prefix, upper, now, False) for i in range(self._count)]
        yield from heapq.merge(*streams)

    def _range_all(self, prefix: str, with_values: bool) -> list[Any]:
        """Every visible row under ``prefix`` from every shard, sorted (the rows of different shards
        never share a key, so tuples compare by key alone)."""
        if self._closed:
            self._unusable()
        upper = prefix_upper_bound(prefix)
        visible = expiry_floor(self._now()) if with_values else self._now()
        sql = schema.range_sql(with_values=with_values, after=False, bounded=upper is not None, page=None)
        params: tuple[Any, ...] = (prefix, upper, visible) if upper is not None else (prefix, visible)
        rows: list[Any] = []
        try:
            for cur in self._cursors():
                rows += cur.execute(sql, params).fetchall()
        except apsw.Error as exc:
            if self._closed:
                raise self._closed_error() from exc
            raise_storage_error(exc)
        rows.sort()
        return rows

    def _verified(self, rows: list[Any]) -> tuple[tuple[str, ...], tuple[bytes, ...]]:
        """The keys and values of range-query ``rows`` (``(key, value, key || value || check
        record)``), once every row verifies: the third columns joined and checked with one crc32
        call (intact rows chain from residue to residue, see :mod:`ekv._core.checksum`), no Python
        code per row (docs/architecture.md, "Performance notes"); row by row only to name a
        damaged one."""
        keys, values, covered = zip(*rows, strict=True)
        try:
            intact = crc32(b"".join(covered), RESIDUE) == RESIDUE
        except TypeError:  # a NULL check record (damaged): found below
            intact = False
        if not intact:
            for key, _, checked in rows:
                if type(checked) is not bytes or crc32(checked, RESIDUE) != RESIDUE:
                    raise self._damaged(crc32(key.encode()) % self._count, key)
        return keys, values

    def items(self, prefix: str) -> tuple[tuple[str, ...], tuple[bytes, ...]]:
        """The keys and values (bytes) of every visible key under ``prefix`` (validated),
        ascending, each row verified."""
        rows = self._range_all(prefix, True)
        return self._verified(rows) if rows else ((), ())

    def keys(self, prefix: str) -> list[str]:
        """Every visible key under ``prefix`` (validated), ascending."""
        return [row[0] for row in self._range_all(prefix, False)]

    def count(self, prefix: str) -> int:
        """How many visible keys (not deleted, not expired) are under ``prefix`` (validated):
        one COUNT query per shard, each O(keys under the prefix) in that shard."""
        if self._closed:
            self._unusable()
        upper = prefix_upper_bound(prefix)
        now = self._now()
        params: tuple[Any, ...] = (prefix, now) if upper is None else (prefix, upper, now)
        sql = schema.COUNT_FROM if upper is None else schema.COUNT_RANGE
        try:
            return sum(cur.execute(sql, params).get for cur in self._cursors())
        except apsw.Error as exc:
            if self._closed:
                raise self._closed_error() from exc
            raise_storage_error(exc)


def _intact(encoded: bytes, value: Any, check: Any) -> bool:
    """Whether a row's value and check record verify for the key ``encoded`` (the inline form of
    this in :meth:`StoreReads.read` is the hot path)."""
    try:
        return bool(crc32(check, crc32(value, crc32(encoded, RESIDUE))) == RESIDUE)
    except TypeError:  # a value or record that is not a blob: damaged
        return False


def _fetch(cur: apsw.Cursor, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return cur.execute(sql, params).fetchall()
