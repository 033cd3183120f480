"""One shard: a SQLite file, its single writer connection and the group commit in front of it.

Writes never wait on another thread when nobody else is writing: the calling thread appends its
operation to the shard's queue, takes the shard mutex and commits the operation itself. When
several threads write at once, whoever holds the mutex (the *combiner*) commits every queued
operation in one transaction, still checking each write against last-writer-wins on its own,
then wakes the other threads, whose writes are now durable. One transaction for many writes is
what keeps aggregate throughput up when 8 threads share 2 cores. A combiner that has served
``_MAX_ROUNDS`` batches hands the mutex to the owner of the next queued operation, so no thread
is kept busy serving others forever.

Everything that changes the file goes through this queue: local writes, remote applies (the
same LWW path replication will use) and exclusive jobs such as GC and close, so the writer
connection is only ever used by one thread at a time and no write can race a GC pass.

Reads do not come here at all; see :mod:`ekv._storage.readers`.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import apsw

from ekv._core.clock import HybridClock
from ekv._errors import ClosedError, CorruptionError, Error, InternalError
from ekv._model import Entry, Version
from ekv._storage import schema
from ekv._storage.sqlite import open_connection, raise_storage_error, storage_error

__all__ = ["EventSink", "RawEvent", "Shard", "ShardIdentity"]

_log = logging.getLogger("ekv.storage")

_MAX_BATCH = 128
_MAX_ROUNDS = 8

T = TypeVar("T")

RawEvent = tuple[str, str, "bytes | None", Version]
"""``(type, key, encoded value or None, version)``: an event before its value is decoded."""


class EventSink(Protocol):
    """Where a shard sends the events of committed writes (the subscription registry)."""

    active: bool
    """False when nobody subscribes: the write path then skips all event work."""

    def matches(self, key: str) -> bool: ...

    def publish(self, events: list[RawEvent]) -> None: ...


class ShardIdentity(Protocol):
    name: str
    node_id: str
    shards: int


class _Op:
    """A queued unit of work. ``waiter`` is a lock the submitting thread blocks on."""

    __slots__ = ("done", "error", "handoff", "waiter")

    def __init__(self) -> None:
        self.done = False
        self.handoff = False
        self.error: BaseException | None = None
        self.waiter: Any = None


class _Write(_Op):
    __slots__ = ("blob", "expires_at", "key", "version")

    def __init__(self, key: str, blob: bytes | None, expires_at: int | None) -> None:
        super().__init__()
        self.key = key
        self.blob = blob
        self.expires_at = expires_at
        self.version: Version | None = None


class _Apply(_Op):
    __slots__ = ("applied", "entries")

    def __init__(self, entries: Sequence[Entry]) -> None:
        super().__init__()
        self.entries = entries
        self.applied: list[Entry] = []


class _Exclusive(_Op):
    __slots__ = ("fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__()
        self.fn = fn
        self.result: Any = None


_allocate_lock: Callable[[], Any]
from _thread import allocate_lock as _allocate_lock  # noqa: E402


class Shard:
    """The writer side of one shard file. Create with :meth:`open`."""

    def __init__(
        self,
        index: int,
        path: str,
        conn: apsw.Connection,
        *,
        origin: str,
        clock: HybridClock,
        sink: EventSink,
        oseq: int,
        last_active_at_ns: int | None,
    ) -> None:
        self.index = index
        self.path = path
        self.origin = origin
        self.clock = clock
        self.sink = sink
        self.last_active_at_ns = last_active_at_ns
        """``last_active_at`` as found when the file was opened (before it was refreshed)."""
        self._conn = conn
        self._cur = conn.cursor()
        self._oseq = oseq
        self._queue: deque[_Op] = deque()
        self._mutex = _allocate_lock()
        self._closed = False

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        index: int,
        path: str,
        *,
        create: bool,
        identity: ShardIdentity,
        clock: HybridClock,
        sink: EventSink,
        synchronous: str,
    ) -> Shard:
        """Open (or create) a shard file, verify it belongs to this store, load its counters.

        Raises :class:`~ekv.CorruptionError` naming the file if it is not an ekv shard, belongs
        to another data directory or shard, or was written by a newer schema.
        """
        conn = open_connection(path, create=create, synchronous=synchronous)
        try:
            cur = conn.cursor()
            app_id = cur.execute("PRAGMA application_id").get
            if create and app_id == 0 and _is_empty(cur):
                _initialise(cur, index, identity)
            else:
                _verify(cur, path, index, identity, app_id)
            oseq, own_ts = _own_tail(cur, identity.node_id)
            clock.observe(own_ts)
            last_active = cur.execute(schema.META_GET, ("last_active_at",)).get
            cur.execute(schema.META_SET, ("last_active_at", clock.wall.now_ns()))
        except Error:
            conn.close()
            raise
        except apsw.Error as exc:
            conn.close()
            raise_storage_error(exc, path)
        return cls(
            index,
            path,
            conn,
            origin=identity.node_id,
            clock=clock,
            sink=sink,
            oseq=oseq,
            last_active_at_ns=last_active if isinstance(last_active, int) else None,
        )

    # -- public operations -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, key: str, blob: bytes | None, expires_at: int | None) -> Version:
        """Write a local put (``blob`` set) or delete (``blob`` None); return its version once
        it has committed."""
        op = _Write(key, blob, expires_at)
        self._submit(op)
        if op.error is not None:
            raise op.error
        version = op.version
        assert version is not None
        return version

    def apply(self, entries: Sequence[Entry]) -> list[Entry]:
        """Apply versions made elsewhere through the one LWW path; return those that won, in the
        form they were stored (an already-expired put is stored as a tombstone)."""
        op = _Apply(entries)
        self._submit(op)
        if op.error is not None:
            raise op.error
        return op.applied

    def run_exclusive(self, fn: Callable[[apsw.Cursor], T]) -> T:
        """Run ``fn(cursor)`` on the writer connection with no write in flight.

        ``fn`` manages its own transactions. Used by GC, close and maintenance.
        """
        op = _Exclusive(lambda: fn(self._cur))
        self._submit(op)
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    def close(self) -> None:
        """Wait for queued writes, checkpoint, close the writer. Idempotent."""
        if self._closed:
            return
        with contextlib.suppress(ClosedError):
            self.run_exclusive(self._close_now)

    # -- the group commit --------------------------------------------------------------------

    def _submit(self, op: _Op) -> None:
        if self._closed:
            raise ClosedError("the store is closed")
        self._queue.append(op)
        if self._mutex.acquire(False):
            self._combine()
        else:
            waiter = _allocate_lock()
            waiter.acquire()
            op.waiter = waiter
            # The combiner sets done/handoff and then reads op.waiter; we set op.waiter and
            # then read done/handoff: one of the two always sees the other.
            if not op.done and not op.handoff:
                waiter.acquire()
            if op.handoff:
                self._combine()
        assert op.done, "a submitted operation returned before it ran"

    def _combine(self) -> None:
        """Serve queued operations while holding the mutex; release it (or hand it on)."""
        queue = self._queue
        rounds = 0
        while True:
            while queue:
                if rounds >= _MAX_ROUNDS:
                    head = queue[0]
                    head.handoff = True
                    waiter = head.waiter
                    if waiter is not None:
                        waiter.release()
                    return  # the mutex now belongs to head's thread
                self._run_round()
                rounds += 1
            self._mutex.release()
            # An operation queued after our last look must not be stranded: take the mutex
            # back if nobody else did.
            if not queue or not self._mutex.acquire(False):
                return

    def _run_round(self) -> None:
        queue = self._queue
        first = queue.popleft()
        batch: list[_Op] = [first]
        try:
            if type(first) is _Exclusive:
                self._run_exclusive(first)
            else:
                while queue and len(batch) < _MAX_BATCH and type(queue[0]) is not _Exclusive:
                    batch.append(queue.popleft())
                self._commit(batch)
        finally:
            for op in batch:
                op.done = True
                waiter = op.waiter
                if waiter is not None and not op.handoff:
                    waiter.release()

    def _run_exclusive(self, op: _Exclusive) -> None:
        if self._closed:
            op.error = ClosedError("the store is closed")
            return
        try:
            op.result = op.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the submitting thread
            with contextlib.suppress(apsw.Error):
                if not self._conn.getautocommit():
                    self._cur.execute("ROLLBACK")
            op.error = exc if isinstance(exc, Error) else storage_error(exc, self.path)

    def _commit(self, batch: list[_Op]) -> None:
        if self._closed:
            for op in batch:
                op.error = ClosedError("the store is closed")
            return
        cur = self._cur
        sink = self.sink
        events: list[RawEvent] | None = [] if sink.active else None
        saved_oseq = self._oseq
        try:
            cur.execute("BEGIN")
            for op in batch:
                if type(op) is _Write:
                    self._write_one(cur, op, events)
                else:
                    assert type(op) is _Apply
                    self._apply_one(cur, op, events)
            cur.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - every writer in the batch gets an error
            self._oseq = saved_oseq
            with contextlib.suppress(apsw.Error):
                if not self._conn.getautocommit():
                    cur.execute("ROLLBACK")
            for op in batch:
                op.error = storage_error(exc, self.path)
                if type(op) is _Write:
                    op.version = None
                elif type(op) is _Apply:
                    op.applied = []
            return
        if events:
            try:
                sink.publish(events)
            except Exception:  # a subscriber bug must never fail a committed write
                _log.exception("ekv: delivering events failed")

    def _write_one(self, cur: apsw.Cursor, op: _Write, events: list[RawEvent] | None) -> None:
        key = op.key
        blob = op.blob
        prev: bytes | None = None
        wanted = events is not None and self.sink.matches(key)
        if wanted and blob is None:
            prev = self._visible_value(cur, key)
        ts = self.clock.tick()
        oseq = self._oseq + 1
        origin = self.origin
        cur.execute(schema.UPSERT, (key, ts, origin, oseq, op.expires_at, None if blob is not None else ts, blob))
        if not self._conn.changes():
            ts = self._overtake(cur, op, oseq)
        cur.execute(schema.LOG_INSERT, (origin, oseq, key, ts))
        self._oseq = oseq
        version = op.version = Version(ts, origin)
        if wanted:
            assert events is not None
            if blob is not None:
                events.append(("put", key, blob, version))
            else:
                events.append(("delete", key, prev, version))

    def _overtake(self, cur: apsw.Cursor, op: _Write, oseq: int) -> int:
        """A local write lost LWW: the stored version is ahead of our clock (data written by a
        peer whose clock ran ahead, before a restart). Observe it and write again above it."""
        stored = cur.execute(schema.VERSION_OF, (op.key,)).get
        if stored is None:
            raise InternalError(f"upsert of {op.key!r} changed nothing but no row exists")
        self.clock.observe(stored[0])
        ts = self.clock.tick()
        blob = op.blob
        cur.execute(
            schema.UPSERT,
            (op.key, ts, self.origin, oseq, op.expires_at, None if blob is not None else ts, blob),
        )
        if not self._conn.changes():
            raise InternalError(f"a local write of {op.key!r} lost to {stored!r} after the clock passed it")
        return ts

    def _apply_one(self, cur: apsw.Cursor, op: _Apply, events: list[RawEvent] | None) -> None:
        clock = self.clock
        now = clock.wall.now_ns()
        sink = self.sink
        changes = self._conn.changes
        applied = op.applied
        for entry in op.entries:
            key = entry.key
            ts = entry.timestamp_ns
            clock.observe(ts)
            value = entry.value
            expires_at = entry.expires_at_ns
            expired_value: bytes | None = None
            if value is not None and expires_at is not None and expires_at <= now:
                expired_value, value = value, None  # already expired: store the tombstone form
            wanted = events is not None and sink.matches(key)
            prev = self._visible_value(cur, key) if wanted and value is None else None
            deleted_at = None if value is not None else (expires_at if expires_at is not None else ts)
            cur.execute(schema.UPSERT, (key, ts, entry.origin, entry.oseq, expires_at, deleted_at, value))
            if not changes():
                continue
            cur.execute(schema.LOG_UPSERT, (entry.origin, entry.oseq, key, ts))
            stored = entry if value is entry.value else Entry(key, ts, entry.origin, entry.oseq, expires_at, None)
            applied.append(stored)
            if wanted:
                assert events is not None
                version = Version(ts, entry.origin)
                if value is not None:
                    events.append(("put", key, value, version))
                elif expires_at is not None:
                    events.append(("expired", key, expired_value if expired_value is not None else prev, version))
                else:
                    events.append(("delete", key, prev, version))

    def _visible_value(self, cur: apsw.Cursor, key: str) -> bytes | None:
        row = cur.execute(schema.GET, (key,)).get
        if row is None:
            return None
        value, expires_at = row
        if value is None or (expires_at is not None and expires_at <= self.clock.wall.now_ns()):
            return None
        return value  # type: ignore[no-any-return]

    def _close_now(self, cur: apsw.Cursor) -> None:
        self._closed = True
        try:
            cur.execute(schema.META_SET, ("last_active_at", self.clock.wall.now_ns()))
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except apsw.Error as exc:
            _log.warning("ekv: final checkpoint of %s failed: %s", self.path, exc)
        finally:
            self._conn.close()
        # Operations queued behind the close fail with ClosedError in _commit.

    # -- used by GC and info (always through run_exclusive) ------------------------------------

    def persist_floors(self, cur: apsw.Cursor) -> None:
        """Record the local sequence counter and clock so they survive log truncation."""
        cur.execute(schema.META_SET, ("oseq_floor", self._oseq))
        cur.execute(schema.META_SET, ("hlc_floor", self.clock.last_ns))

    @property
    def oseq(self) -> int:
        """The sequence number of the last local write in this shard."""
        return self._oseq


def _is_empty(cur: apsw.Cursor) -> bool:
    return cur.execute("SELECT count(*) FROM sqlite_schema").get == 0


def _initialise(cur: apsw.Cursor, index: int, identity: ShardIdentity) -> None:
    cur.execute("BEGIN")
    cur.execute(schema.DDL)
    cur.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
    cur.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION}")
    for key, value in (
        ("shard_index", index),
        ("shard_count", identity.shards),
        ("node_id", identity.node_id),
        ("name", identity.name),
        ("schema_version", schema.SCHEMA_VERSION),
    ):
        cur.execute(schema.META_SET, (key, value))
    cur.execute("COMMIT")


def _verify(cur: apsw.Cursor, path: str, index: int, identity: ShardIdentity, app_id: int) -> None:
    if app_id != schema.APPLICATION_ID:
        raise CorruptionError(f"{path} is not an ekv shard file (application_id {app_id:#x}); refusing to touch it")
    version = cur.execute("PRAGMA user_version").get
    if version > schema.SCHEMA_VERSION:
        raise CorruptionError(f"{path} has schema version {version}, newer than this ekv supports ({schema.SCHEMA_VERSION})")
    if version < 1:
        raise CorruptionError(f"{path} has no ekv schema version; it is damaged")
    meta = dict(cur.execute("SELECT key, value FROM meta").fetchall())
    expected = {"shard_index": index, "shard_count": identity.shards, "node_id": identity.node_id}
    for key, want in expected.items():
        if meta.get(key) != want:
            raise CorruptionError(
                f"{path} belongs to another store or shard ({key} is {meta.get(key)!r}, expected {want!r}); "
                "shard files must not be moved between data directories"
            )


def _own_tail(cur: apsw.Cursor, node_id: str) -> tuple[int, int]:
    """The last local sequence number and clock value, from the change log and the floors
    persisted when the log was truncated."""
    oseq_floor = cur.execute(schema.META_GET, ("oseq_floor",)).get or 0
    hlc_floor = cur.execute(schema.META_GET, ("hlc_floor",)).get or 0
    tail = cur.execute(schema.OWN_LOG_TAIL, (node_id,)).get
    if tail is not None:
        oseq_floor = max(oseq_floor, tail[0])
        hlc_floor = max(hlc_floor, tail[1])
    return int(oseq_floor), int(hlc_floor)
