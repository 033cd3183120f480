"""One shard: a SQLite file and its single writer connection.

This module holds the SQL work of a shard: opening and verifying the file, committing a group
of writes (each one LWW-checked on its own), and running exclusive jobs; remote versions are
applied in the same transactions, by :mod:`ekv._storage.apply`.
*When* that work runs, and on which thread, is decided by the shard's group commit in
:mod:`ekv._storage.commit`; reads never come here (see :mod:`ekv._storage.store`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import apsw

from ekv._core.clock import HybridClock
from ekv._errors import ClosedError, Error, InternalError
from ekv._log import NodeLog
from ekv._model import Entry, RawEvent, Version
from ekv._storage import schema, shardfile
from ekv._storage.apply import apply_entries
from ekv._storage.commit import Apply, Committer, Exclusive, LocalWrite, Op, Write
from ekv._storage.integrity import DamagedVersion, damaged_error, load_damaged, row_ok, visible_value
from ekv._storage.schema import kv_row
from ekv._storage.shardfile import own_tail
from ekv._storage.sink import NO_EVENTS, EventSink
from ekv._storage.sqlite import (
    enable_wal,
    nowait,
    open_connection,
    raise_storage_error,
    roll_back,
    storage_error,
    transaction,
)
from ekv._storage.writers import Writers, register, retire_dead, retire_origin

__all__ = ["NO_EVENTS", "EventSink", "LocalWrite", "RawEvent", "Shard", "Writers", "own_tail"]

T = TypeVar("T")

MAX_ROWS = 256
"""Rows per multi-row upsert statement (8 parameters each), as many as a group commit gathers; a
longer run of writes (a :meth:`Shard.write_many` batch) is written in several statements of one
transaction."""


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
        committer: Committer,
        log: NodeLog,
        oseq: int,
        last_active_at_ns: int | None,
        synchronous: str = "NORMAL",
        writers: Writers | None = None,
    ) -> None:
        self.index = index
        self.path = path
        self.origin = origin
        self.clock = clock
        self.sink = sink
        self.log = log
        self.last_active_at_ns = last_active_at_ns
        """``last_active_at`` as found when the file was opened (before it was refreshed)."""
        self._conn = conn
        self._cur = conn.cursor()
        self._oseq = oseq
        self._committer = committer
        self._synchronous = synchronous
        self._closed = False
        self.was_clean = True
        """Whether the file was closed cleanly last time (set by :meth:`open`)."""
        self.damaged: dict[str, DamagedVersion] = {}
        """Keys whose stored row failed its checksum, with the version that was damaged (see
        :mod:`ekv._storage.integrity`). Changed only on the writer, after commits."""
        self._cleared: list[str] = []  # damaged keys replaced by the transaction in progress
        self._armed = False
        self._previous_origin = origin
        self._node_id = ""
        self.writers = writers or Writers("", lambda slot: False)
        self.last_out = True
        """Set by the store before :meth:`close`: no other open of the data directory is alive,
        so this close marks the shard cleanly shut down and truncates its WAL."""
        self.outbox: Callable[[int, list[Entry]], None] | None = None
        """Called with (shard index, entries) after each commit of local writes, in commit
        order; the cluster layer sets it to feed live replication."""

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        index: int,
        path: str,
        *,
        create: bool,
        identity: shardfile.ShardIdentity,
        clock: HybridClock,
        sink: EventSink,
        committer: Committer,
        synchronous: str,
        log: NodeLog,
        writers: Writers | None = None,
    ) -> Shard:
        """Open (or create) a shard file, verify it belongs to this store, load its counters.
        Raises :class:`~ekv.CorruptionError` naming the file if it is not an ekv shard, belongs
        to another data directory or shard, or was written by a newer schema."""
        conn = open_connection(path, create=create, synchronous=synchronous)
        try:
            cur = conn.cursor()
            app_id = cur.execute(schema.APPLICATION_ID_GET).get
            if create and app_id == 0 and shardfile.is_empty(cur):
                shardfile.initialise(cur, index, identity)
            else:
                shardfile.verify(cur, path, index, identity, app_id)
            enable_wal(conn)  # only now: a file that is not ours is never modified
            shardfile.upgrade(conn, path, log)
            damaged = load_damaged(cur)
            previous = shardfile.previous_origin(cur, identity.legacy_origin)
            oseq, own_ts = own_tail(cur, identity.origin)
            clock.observe(max(own_ts, own_tail(cur, previous)[1]))
            last_active = cur.execute(schema.META_GET, ("last_active_at",)).get
            was_clean = cur.execute(schema.META_GET, ("clean_shutdown",)).get == 1
        except Error:
            conn.close()
            raise
        except apsw.Error as exc:
            conn.close()
            raise_storage_error(exc, path, action="open")
        shard = cls(
            index,
            path,
            conn,
            origin=identity.origin,
            clock=clock,
            sink=sink,
            committer=committer,
            log=log,
            oseq=oseq,
            last_active_at_ns=last_active if isinstance(last_active, int) else None,
            synchronous=synchronous,
            writers=writers,
        )
        shard.was_clean = was_clean or create
        shard.damaged = damaged
        shard._previous_origin = previous
        shard._node_id = identity.node_id
        return shard

    # -- public operations -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, key: str, blob: bytes | None, expires_at: int | None) -> Version:
        """Write a local put (``blob`` set) or delete (``blob`` None); return its version once
        it has committed."""
        op = Write(self, key, blob, expires_at)
        self._committer.submit(op)
        if op.error is not None:
            raise op.error
        version = op.version
        assert version is not None
        return version

    def write_nowait(self, key: str, blob: bytes | None, expires_at: int | None) -> Version | None:
        """:meth:`write` if it can commit at once on this thread, else None (nothing written):
        for a caller that must not block (AsyncEKV on its event loop). None when the commit would
        fsync (``durability="full"``, or arming the shard), when another thread of this process
        is writing this shard (a group commit, a ``put_many``, GC: :meth:`Committer.try_submit`)
        or another process holds its write lock (:func:`ekv._storage.sqlite.nowait`)."""
        if not self._armed or self._synchronous == "FULL" or self._closed:
            return None
        op = Write(self, key, blob, expires_at)
        nowait.on = True
        try:
            if not self._committer.try_submit(op):
                return None
        finally:
            nowait.on = False
        if op.error is not None:
            if isinstance(op.error.__cause__, apsw.BusyError):
                return None
            raise op.error
        return op.version

    def write_many(self, items: Sequence[tuple[str, bytes | None, int | None]]) -> list[Version]:
        """Write local puts and deletes ``(key, blob or None, expires_at)`` of this shard as one
        transaction (``put_many``/``delete_many``): all of them commit, or none (the error is
        raised); return their versions, in order.

        The batch runs as an exclusive job, so no queued write interleaves with it, through the
        same code as a group commit (:meth:`commit`): each row is LWW-checked on its own (and
        overtakes a stored version that is ahead of the clock), damaged rows are replaced, and
        after the commit the writes go to replication and the events to subscribers as one
        batch, exactly as for a group of single writes."""
        writes = [Write(self, key, blob, expires_at) for key, blob, expires_at in items]
        if writes:
            self.run_exclusive(lambda cur: self._commit_writes(writes))
        versions = []
        for op in writes:
            if op.error is not None:
                raise op.error
            assert op.version is not None
            versions.append(op.version)
        return versions

    def _commit_writes(self, writes: list[Write]) -> None:
        batch: list[Op] = list(writes)
        if len(batch) <= MAX_ROWS:
            self.commit(batch)  # one statement, as a group commit would run it
        elif self._armed or self._arm_before(batch):
            self._commit_group(batch, False)  # an explicit transaction, MAX_ROWS rows per statement

    def touch(self, key: str, expires_at: int | None, now_ns: int) -> Version | None:
        """Write ``key``'s stored value again with a new expiry, as a new local version; return
        it, or None if the key is not visible (absent, deleted or expired at ``now_ns``).

        Read and rewritten in one :meth:`transact`: a concurrent put is read and kept, or commits
        after and wins. Raises :class:`~ekv.ChecksumError` for a damaged row (nothing written)."""

        def body(cur: apsw.Cursor, write: LocalWrite) -> Version | None:
            row = cur.execute(schema.ROW, (key,)).get
            if row is None or row[5] is None or (row[4] is not None and row[4] <= now_ns):
                return None
            if key in self.damaged or not row_ok(row):
                raise damaged_error(key, self.path)
            return write(key, row[5], expires_at, 0)

        return self.transact(body)

    def transact(self, body: Callable[[apsw.Cursor, LocalWrite], T]) -> T:
        """Run ``body(cursor, write)`` in one ``BEGIN IMMEDIATE`` transaction on the writer, alone
        (an exclusive job): a read-then-write no other write comes between, of this process
        or another (SQLite's write lock): touch, a single voter's and an acceptor's steps.

        ``write(key, blob, expires_at, ts)`` writes a local put (``blob`` None: delete) through
        :meth:`_write_local` and returns its version; ``ts`` 0: the clock's next timestamp, else
        that one (a chosen record: :mod:`ekv._storage.acceptor`). After the commit the writes
        replicate and their events go out; if anything raises, nothing is stored."""

        def job(cur: apsw.Cursor) -> T:
            if not self._armed:
                self._arm(cur, self.clock.wall.now_ns())
            events: list[RawEvent] | None = [] if self.sink.active else None
            saved_oseq = self._oseq
            cleared = self._cleared = []
            writes: list[Write] = []

            def write(key: str, blob: bytes | None, expires_at: int | None, ts: int) -> Version:
                op = Write(self, key, blob, expires_at)
                op.ts = ts
                self._write_local(cur, [op], events, False)
                writes.append(op)
                assert op.version is not None
                return op.version

            try:
                with transaction(cur):
                    result = body(cur, write)
                    for key in cleared:  # damaged rows the writes replaced
                        cur.execute(schema.DAMAGED_CLEAR, (key,))
            except BaseException as exc:
                self._roll_back(writes, exc, saved_oseq)
                raise
            self._committed(writes, cleared, events)
            return result

        return self.run_exclusive(job)

    def apply(self, entries: Sequence[Entry], vv: Mapping[str, int] | None = None) -> list[Entry]:
        """Apply versions made elsewhere through the one LWW path; return those that won, in the
        form they were stored (an already-expired put is stored as a tombstone).

        ``vv`` raises this shard's stored version vector in the same transaction, so the vector
        never claims a write whose row did not commit."""
        op = Apply(self, entries, vv)
        self._committer.submit(op)
        if op.error is not None:
            raise op.error
        return op.applied

    def run_exclusive(self, fn: Callable[[apsw.Cursor], T]) -> T:
        """Run ``fn(cursor)`` on the writer connection with no write in flight.

        ``fn`` manages its own transactions. Used by GC, close and maintenance.
        """
        op = Exclusive(self, lambda: fn(self._cur))
        self._committer.submit(op)
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[no-any-return]

    @property
    def armed(self) -> bool:
        """Whether this shard may issue writes under :attr:`origin` (see :meth:`arm`)."""
        return self._armed

    def arm(self, now_ns: int) -> None:
        """Make this open's origin the shard's writing origin, durably, before its first write.

        One transaction, fsynced even with ``durability="normal"``: the previous origin's
        sequence counter goes into the stored version vector (it is one more origin this node
        has seen, and members are asked for any tail of it that a crash took back), the new
        origin, the node id, the clock floor and ``last_active_at`` are recorded, and the shard
        is marked open (not cleanly shut down). The store arms every shard when it opens; if
        that fails (a full disk) the shard stays readable and arms before its first write, which
        fails with the storage error until it succeeds."""
        self.run_exclusive(lambda cur: self._arm(cur, now_ns))

    def _arm(self, cur: apsw.Cursor, now_ns: int, retire: str | None = None) -> None:
        previous, origin = self._previous_origin, self.origin
        with transaction(cur, synchronous="FULL"):
            retire_dead(cur, origin, self.writers.alive, now_ns, previous=previous, retire=retire)
            register(cur, origin, self.writers.slot)
            cur.execute(schema.META_SET, ("origin", origin))
            cur.execute(schema.META_SET, ("node_id", self._node_id))
            cur.execute(schema.META_SET, ("hlc_floor", self.clock.last_ns))
            cur.execute(schema.META_SET, ("last_active_at", now_ns))
            cur.execute(schema.META_SET, ("clean_shutdown", 0))
        self._previous_origin = origin
        self._armed = True

    def retire_dead_writers(self, cur: apsw.Cursor, now_ns: int) -> None:
        """Retire the origins of opens that died without closing (run by the node process's GC
        pass, inside its transaction)."""
        retire_dead(cur, self.origin, self.writers.alive, now_ns)

    def _arm_before(self, batch: Sequence[Op]) -> bool:
        """Arm the shard before a batch of writes or applies; on failure fail every op of the
        batch. (Called by the group commit, on the writer; never with an Exclusive op.)"""
        try:
            self._arm(self._cur, self.clock.wall.now_ns())
        except BaseException as exc:
            roll_back(self._conn)
            error = exc if isinstance(exc, Error) else storage_error(exc, self.path)
            for op in batch:
                op.error = error
            return False
        self.log.info("%s is writable again", self.path)
        return True

    def reidentify(self, node_id: str, origin: str) -> None:
        """Write from now on under a new node id and origin (the data directory took a new
        identity: see ``ShardedStore.reidentify``). Same transaction as :meth:`arm`."""

        def switch(cur: apsw.Cursor) -> None:
            old = self.origin, self._node_id, self._oseq
            self._previous_origin = self.origin if self._armed else self._previous_origin
            self.origin, self._node_id, self._oseq = origin, node_id, 0
            try:
                self._arm(cur, self.clock.wall.now_ns(), retire=old[0])
            except BaseException:
                self.origin, self._node_id, self._oseq = old
                raise

        self.run_exclusive(switch)

    def abort(self) -> None:
        """Close the writer without touching the file (a failed open of the store)."""
        self._closed = True
        self._conn.close()

    def close(self) -> None:
        """Wait for queued writes, checkpoint, close the writer. Idempotent."""
        if self._closed:
            return
        with contextlib.suppress(ClosedError):
            self.run_exclusive(self._close_now)

    # -- called by the group commit (one thread at a time) ------------------------------------

    def run_exclusive_op(self, op: Exclusive) -> None:
        if self._closed:
            op.error = ClosedError("the store is closed")
            return
        try:
            op.result = op.fn()
        except BaseException as exc:
            roll_back(self._conn)
            op.error = exc if isinstance(exc, Error) else storage_error(exc, self.path)

    def run(self, op: Op) -> None:
        """Run one operation (the uncontended path of the group commit)."""
        kind = type(op)
        if not self._armed and kind is not Exclusive and not self._closed and not self._arm_before([op]):
            return
        if kind is Write:
            if self._closed:
                op.error = ClosedError("the store is closed")
            else:
                damaged = self.damaged
                self._commit_group([op], not damaged or op.key not in damaged)  # type: ignore[attr-defined]
        elif kind is Exclusive:
            self.run_exclusive_op(op)  # type: ignore[arg-type]
        else:
            self.commit([op])

    def commit(self, batch: list[Op]) -> None:
        """Commit a group of queued operations; set each op's outcome."""
        if self._closed:
            for op in batch:
                op.error = ClosedError("the store is closed")
            return
        if not self._armed and not self._arm_before(batch):
            return
        damaged = self.damaged
        fast = all(type(op) is Write for op in batch)
        if fast and damaged:
            fast = not any(op.key in damaged for op in batch)  # type: ignore[attr-defined]
        self._commit_group(batch, fast)

    def _commit_group(self, batch: list[Op], fast: bool) -> None:
        """Commit a group in one transaction: the one place a group's outcome is decided, whatever
        it holds, so the fast path and the general one cannot differ in what they commit.

        ``fast`` (only local writes, none to a damaged key): the group runs as the single-statement
        fast path of :meth:`_write_local`. Otherwise it runs in an explicit transaction
        (:meth:`_run_group`), which also applies remote versions, deletes the damaged rows the
        group replaces and clears their record (damage elsewhere in the shard changes nothing for
        the other keys).

        Either way the group is all-or-nothing: if anything fails (an overtake hitting a full
        disk, the commit itself), nothing of the group is stored, every op reports the error, and
        the sequence counter goes back, so a dot that was never stored is the one issued next and
        a dot that was stored is never issued again (:meth:`_roll_back`). Only after the commit does
        :meth:`_committed` forget the replaced damage, queue the local writes for replication and
        deliver the events.
        """
        cur = self._cur
        events: list[RawEvent] | None = [] if self.sink.active else None
        saved_oseq = self._oseq
        cleared = self._cleared = []
        writes: list[Write]
        try:
            if fast:
                writes = batch  # type: ignore[assignment]
                if self._write_local(cur, writes, events, True):  # the group needed more than one statement
                    cur.execute(schema.COMMIT)
            else:
                writes = []
                with transaction(cur):
                    self._run_group(cur, batch, events, cleared, writes)
        except BaseException as exc:
            self._roll_back(batch, exc, saved_oseq)
            return
        if cleared or events or (writes and self.outbox is not None):
            self._committed(writes, cleared, events)

    def _write_local(self, cur: apsw.Cursor, batch: list[Write], events: list[RawEvent] | None, begin: bool) -> bool:
        """Write a run of local writes: the one path of every local write. Runs inside the
        caller's transaction, or with ``begin`` in one of its own; returns whether the caller
        must commit it (False: it was a single statement, already committed).

        All rows go into one multi-row upsert statement: one call into SQLite (one release of the
        GIL, which costs tens of microseconds when other threads wait for it) for the whole group.
        The row count is rounded up to a power of two by repeating the last row (a repeat is an
        exact duplicate version and changes nothing), so only nine statement shapes are ever
        prepared. Every row is still checked against LWW by the statement's WHERE clause; rows
        that lost are written again above the stored version (:meth:`_overtake_lost`).

        With ``begin``, the group first runs as that one statement alone, which SQLite commits
        (or undoes) as a whole: an explicit BEGIN and COMMIT would cost two more statements on
        every write (about 4 µs here, a tenth of a put). A row that loses LWW makes that
        statement fail and change nothing (:func:`~ekv._storage.schema.alone_upsert_rows`): the group then runs
        again in an explicit transaction, opened by the same call as the upsert, with its
        overtakes. The sequence counter is advanced here; the caller puts it back if the group
        does not commit.
        """
        sink = self.sink
        damaged = self.damaged
        opened = False
        if damaged:
            doomed = [key for key in dict.fromkeys(op.key for op in batch) if key in damaged]
            assert not (doomed and begin), "a write to a damaged key runs in the caller's transaction"
            for key in doomed:
                # The damaged row's version cannot be trusted (its timestamp may be the flipped
                # part): drop it rather than compete with it or let the clock observe it.
                cur.execute(schema.DELETE_ROW, (key,))
                self._cleared.append(key)
        tick = self.clock.tick
        origin = self.origin
        oseq = self._oseq
        params: list[Any] = []
        latest: dict[str, bytes | None] = {}  # for delete events: values written earlier in the group
        wanted: list[tuple[Write, bytes | None]] = []
        for op in batch:
            key = op.key
            blob = op.blob
            if events is not None and sink.matches(key):
                prev = None
                if blob is None:
                    prev = latest[key] if key in latest else visible_value(cur, key, damaged, self.clock.wall.now_ns)
                wanted.append((op, prev))
                latest[key] = blob
            ts = op.ts or tick()
            oseq += 1
            op.oseq = oseq
            op.version = Version(ts, origin)
            params += kv_row(key, ts, origin, oseq, op.expires_at, blob)
        rows = len(batch)
        shape = 1 << (rows - 1).bit_length()
        if shape != rows:
            params += params[-schema.UPSERT_COLUMNS :] * (shape - rows)
        alone = False
        if begin:
            try:
                cur.execute(schema.alone_upsert_rows(shape), params)
                alone = True  # committed: every row won (or was this very write already)
            except apsw.ConstraintError:
                cur.execute(schema.begin_upsert_rows(shape), params)
                opened = True
        else:
            cur.execute(schema.upsert_rows(shape), params)
        if not alone and self._conn.changes() != rows:
            self._overtake_lost(cur, batch)
        self._oseq = oseq
        if wanted:
            assert events is not None
            for op, prev in wanted:
                version = op.version
                assert version is not None
                if op.blob is not None:
                    events.append(("put", op.key, op.blob, version))
                else:
                    events.append(("delete", op.key, prev, version))
        return opened

    def _overtake_lost(self, cur: apsw.Cursor, batch: list[Write]) -> None:
        """Some local writes lost LWW: the stored version was ahead of this node's clock (data
        written by a peer whose clock ran ahead, before a restart). Rewrite each of them, in
        order, above the stored version; ``_overtake`` advances the clock past it."""
        for op in batch:
            stored = cur.execute(schema.VERSION_OF, (op.key,)).get
            assert op.version is not None
            if stored is not None and Version(*stored) > op.version:
                op.version = Version(self._overtake(cur, op, op.oseq), self.origin)

    def _run_group(
        self, cur: apsw.Cursor, batch: list[Op], events: list[RawEvent] | None, cleared: list[str], writes: list[Write]
    ) -> None:
        """The body of :meth:`_commit_group`'s explicit transaction: remote applies, and each run of
        consecutive local writes through :meth:`_write_local` (``writes`` collects them)."""
        remote = False
        run: list[Write] = []
        for op in batch:
            if type(op) is Write:
                run.append(op)
                if len(run) == MAX_ROWS:  # a batch (write_many) may be longer than one statement holds
                    self._write_local(cur, run, events, False)
                    writes += run
                    run = []
                continue
            if run:
                self._write_local(cur, run, events, False)
                writes += run
                run = []
            assert type(op) is Apply
            op.applied = apply_entries(
                cur,
                op.entries,
                clock=self.clock,
                damaged=self.damaged,
                cleared=cleared,
                events=events,
                matches=self.sink.matches,
            )
            if op.vv:
                for origin, oseq in op.vv.items():
                    if origin != self.origin:
                        cur.execute(schema.VV_RAISE, (origin, oseq))
            remote = True
        if run:
            self._write_local(cur, run, events, False)
            writes += run
        if remote:
            # Versions applied from peers may be ahead of this node's own writes; persist
            # the clock so a restart still issues timestamps above them (causality).
            cur.execute(schema.META_SET, ("hlc_floor", self.clock.last_ns))
        for key in cleared:
            cur.execute(schema.DAMAGED_CLEAR, (key,))

    def _roll_back(self, batch: Sequence[Op], exc: BaseException, saved_oseq: int) -> None:
        """A group's transaction failed: undo it, put the sequence counter back (none of the
        group's dots is stored), and fail every operation of the group."""
        self._oseq = saved_oseq
        roll_back(self._conn)
        for op in batch:
            op.error = storage_error(exc, self.path)
            if type(op) is Write:
                op.version = None
            elif type(op) is Apply:
                op.applied = []

    def _committed(self, writes: list[Write], cleared: list[str], events: list[RawEvent] | None) -> None:
        """After a group committed: forget replaced damage, queue the local writes for
        replication, then deliver the events (only committed writes ever get this far)."""
        for key in cleared:
            if self.damaged.pop(key, None) is not None:
                self.log.warning("the damaged version of key %r in %s was replaced", key, self.path)
        outbox = self.outbox
        if outbox is not None and writes:
            self._send_out(outbox, writes)
        if events:
            self._publish(events)

    def _send_out(self, outbox: Callable[[int, list[Entry]], None], batch: list[Write]) -> None:
        out = []
        for op in batch:
            version = op.version
            if version is not None:
                out.append(Entry(op.key, version.timestamp_ns, version.origin, op.oseq, op.expires_at, op.blob))
        try:
            outbox(self.index, out)
        except Exception:  # replication trouble must never fail a committed write
            self.log.error("queueing writes for replication failed", exc_info=True)

    def _publish(self, events: list[RawEvent]) -> None:
        try:
            self.sink.publish(events)
        except Exception:  # a subscriber bug must never fail a committed write
            self.log.error("delivering events failed", exc_info=True)

    def _overtake(self, cur: apsw.Cursor, op: Write, oseq: int) -> int:
        """A local write lost LWW: the stored version is ahead of our clock (data written by a
        peer whose clock ran ahead, before a restart). Observe it and write again above it."""
        stored = cur.execute(schema.VERSION_OF, (op.key,)).get
        if stored is None:
            raise InternalError(f"upsert of {op.key!r} changed nothing but no row exists")
        self.clock.observe(stored[0])
        ts = self.clock.tick()
        blob = op.blob
        key, origin, expires_at = op.key, self.origin, op.expires_at
        cur.execute(schema.UPSERT, kv_row(key, ts, origin, oseq, expires_at, blob))
        if not self._conn.changes():
            raise InternalError(f"a local write of {op.key!r} lost to {stored!r} after the clock passed it")
        return ts

    # -- damage (bit rot) ------------------------------------------------------------------------

    def note_damaged(self, found: Mapping[str, DamagedVersion]) -> None:
        """Record damage already written to the ``damaged`` table (on the writer)."""
        self.damaged.update(found)
        message = "DAMAGED VALUE: the stored version of key %r in %s failed its checksum; it will not be served"
        for key in found:
            self.log.error(message + " and is being fetched again from members", key, self.path)

    def _close_now(self, cur: apsw.Cursor) -> None:
        self._closed = True
        try:
            with transaction(cur):
                if self._armed:
                    cur.execute(schema.META_SET, (f"oseq_floor/{self.origin}", self._oseq))
                    retire_origin(cur, self.origin, self.clock.wall.now_ns())
                cur.execute(schema.META_SET, ("last_active_at", self.clock.wall.now_ns()))
                if self.last_out:
                    cur.execute(schema.META_SET, ("clean_shutdown", 1))
            if self.last_out:
                cur.execute(schema.CHECKPOINT_TRUNCATE).fetchall()
        except apsw.Error as exc:
            self.log.warning("closing %s cleanly failed: %s", self.path, exc)
        finally:
            self._conn.close()
        # Operations queued behind the close fail with ClosedError in run/commit.

    # -- used by GC and info (always through run_exclusive) ------------------------------------

    def persist_floors(self, cur: apsw.Cursor) -> None:
        """Record the local sequence counter and clock so they survive log truncation."""
        cur.execute(schema.META_SET, (f"oseq_floor/{self.origin}", self._oseq))
        cur.execute(schema.META_SET, ("hlc_floor", self.clock.last_ns))

    @property
    def oseq(self) -> int:
        """The sequence number of the last local write in this shard."""
        return self._oseq
