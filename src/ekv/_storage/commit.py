"""Group commit: how writes from many threads reach the shards' single writer connections.

A commit costs far more than the statement it commits (measured here: an upsert alone is about
3.5 µs, committing it about 17 µs more), and on CPython every call into SQLite hands the GIL to
another thread, which costs tens of microseconds on a busy 2-core machine. So:

* A thread that writes while nobody else does never waits on another thread: it appends its
  operation to the queue, takes the mutex and commits the operation itself (one autocommit
  statement for a lone write).
* When several threads write at once, whoever holds the mutex (the *combiner*) takes every
  queued operation of its shard and commits them in one transaction, checking
  every write against last-writer-wins on its own, then wakes the other threads, whose writes
  are now durable. Waiting threads sleep on their own lock, so they do not fight the combiner for
  the GIL. Each shard has its own :class:`Committer` (queue and mutex), so writes to different
  shards commit in parallel (SQLite releases the GIL while it works) and a batch only ever holds
  one shard's writes, committed as one transaction.
* A combiner that has served ``_MAX_ROUNDS`` batches hands the mutex to the owner of the next
  queued operation, so no thread is kept busy serving others forever.

Everything that changes a shard file goes through here: local writes, remote applies and
exclusive jobs (GC, close), so each writer connection is only ever used by one thread at a time
and no write can race a GC pass. Per shard, operations run in the order they were queued.
"""

from __future__ import annotations

from _thread import allocate_lock
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ekv._errors import ClosedError
from ekv._model import Entry, Version

__all__ = ["Apply", "CommitTarget", "Committer", "Exclusive", "LocalWrite", "Op", "Write"]

_MAX_BATCH = 256
_MAX_ROUNDS = 8


class CommitTarget(Protocol):
    """What the group commit needs of a shard (:class:`ekv._storage.shard.Shard`): running one
    operation, a group, or an exclusive job on its writer connection. A protocol rather than an
    import, so that this module, which the shard uses, does not depend on the shard back."""

    def run(self, op: Op) -> None:
        """Run one operation (the uncontended path)."""

    def commit(self, batch: list[Op]) -> None:
        """Commit a group of queued operations of this shard; set each op's outcome."""

    def run_exclusive_op(self, op: Exclusive) -> None:
        """Run an exclusive job alone on the writer connection."""


class Op:
    """A queued unit of work for one shard. ``waiter`` is a lock its thread sleeps on."""

    __slots__ = ("done", "error", "handoff", "shard", "waiter")

    def __init__(self, shard: CommitTarget) -> None:
        self.shard = shard
        self.done = self.handoff = False
        self.error: BaseException | None = None
        self.waiter: Any = None


class Write(Op):
    """A local put (``blob`` set) or delete (``blob`` None). ``ts`` 0: the clock gives the
    version's timestamp; else this one (a chosen record of a consistent key, see
    :mod:`ekv._storage.acceptor`)."""

    __slots__ = ("blob", "expires_at", "key", "oseq", "ts", "version")

    def __init__(self, shard: CommitTarget, key: str, blob: bytes | None, expires_at: int | None) -> None:
        # Fields set inline rather than through super().__init__: this runs on every write.
        self.shard = shard
        self.done = self.handoff = False
        self.error = None
        self.waiter = None
        self.key = key
        self.blob = blob
        self.expires_at = expires_at
        self.oseq = self.ts = 0
        self.version: Version | None = None


LocalWrite = Callable[[str, "bytes | None", "int | None", int], Version]
"""``write(key, blob, expires_at, ts) -> Version``: a local write inside ``Shard.transact``."""


class Apply(Op):
    """Versions made elsewhere, applied through the LWW path."""

    __slots__ = ("applied", "entries", "vv")

    def __init__(self, shard: CommitTarget, entries: Sequence[Entry], vv: Mapping[str, int] | None = None) -> None:
        super().__init__(shard)
        self.entries = entries
        self.vv = vv
        """Version-vector raises to persist in the same transaction as the entries."""
        self.applied: list[Entry] = []


class Exclusive(Op):
    """A job that runs alone on a shard's writer connection (GC, close, maintenance)."""

    __slots__ = ("fn", "result")

    def __init__(self, shard: CommitTarget, fn: Callable[[], Any]) -> None:
        super().__init__(shard)
        self.fn = fn
        self.result: Any = None


class Committer:
    """The node-wide write queue and its combining mutex."""

    def __init__(self) -> None:
        self._queue: deque[Op] = deque()
        self._mutex = allocate_lock()
        self.closed = False

    def submit(self, op: Op) -> None:
        """Run ``op`` (possibly batched with others) and return once it has run; the outcome
        is in ``op.error`` and the op's result fields."""
        if self.closed:
            raise ClosedError("the store is closed")
        if not self._queue and self._mutex.acquire(False):
            # Uncontended: run our own operation directly, then serve whatever was queued
            # meanwhile before letting go of the mutex.
            try:
                op.shard.run(op)
            finally:
                op.done = True
                self._combine()
            return
        self._queue.append(op)
        if self._mutex.acquire(False):
            self._combine()
        else:
            waiter = allocate_lock()
            waiter.acquire()
            op.waiter = waiter
            # The combiner sets done/handoff and then reads op.waiter; we set op.waiter and
            # then read done/handoff: one of the two always sees the other.
            if not op.done and not op.handoff:
                waiter.acquire()
            if op.handoff:
                self._combine()
        assert op.done, "a submitted operation returned before it ran"

    def try_submit(self, op: Op) -> bool:
        """Run ``op`` now on this thread if that needs no waiting on another thread of this
        process: nothing queued and the mutex free (the uncontended path of :meth:`submit`).
        Else return False, with ``op`` not queued: the caller submits it where it may wait. An
        operation queued by another thread meanwhile is handed to its own thread rather than
        served here, so this call only ever runs ``op``."""
        if self.closed or self._queue or not self._mutex.acquire(False):
            return False
        try:
            op.shard.run(op)
        finally:
            op.done = True
            self._combine(_MAX_ROUNDS)
        return True

    def _combine(self, rounds: int = 0) -> None:
        """Serve queued operations while holding the mutex; release it (or hand it on at once
        with ``rounds`` at ``_MAX_ROUNDS``)."""
        queue = self._queue
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
        batch = [queue.popleft()]
        while queue and len(batch) < _MAX_BATCH:
            batch.append(queue.popleft())
        try:
            if len(batch) == 1:
                batch[0].shard.run(batch[0])
                _wake(batch)
                return
            groups: dict[CommitTarget, list[Op]] = {}
            for op in batch:
                if type(op) is Exclusive:
                    self._flush(groups)
                    groups = {}
                    op.shard.run_exclusive_op(op)
                    _wake((op,))
                else:
                    group = groups.get(op.shard)
                    if group is None:
                        groups[op.shard] = [op]
                    else:
                        group.append(op)
            self._flush(groups)
        finally:
            _wake(batch)  # whatever an exception skipped; waking twice is prevented by `done`

    @staticmethod
    def _flush(groups: dict[CommitTarget, list[Op]]) -> None:
        for shard, group in groups.items():
            shard.commit(group)
            _wake(group)


def _wake(ops: Sequence[Op] | tuple[Op, ...]) -> None:
    for op in ops:
        if op.done:
            continue
        op.done = True
        waiter = op.waiter
        if waiter is not None and not op.handoff:
            waiter.release()
