"""The SQLite seam: opening connections with ekv's settings, running transactions, checking the
library version and translating APSW exceptions into ekv errors.

ekv talks to SQLite through APSW, whose wheels bundle a current SQLite, so every machine runs the
same engine whatever its system library.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import NoReturn

import apsw

from ekv._errors import (
    ClosedError,
    CorruptionError,
    DataDirError,
    DiskFullError,
    Error,
    SQLiteVersionError,
    StorageError,
)

__all__ = [
    "BUSY_TIMEOUT_MS",
    "check_sqlite_version",
    "enable_wal",
    "open_connection",
    "begin_snapshot",
    "raise_storage_error",
    "roll_back",
    "sqlite_version",
    "storage_error",
    "transaction",
]

BUSY_TIMEOUT_MS = 5_000
"""How long a statement waits for another connection's lock (another process writing the same
shard, a checkpoint) before it fails with a storage error."""
WRITER_AUTOCHECKPOINT_PAGES = 32_768  # 128 MiB of 4 KiB pages: a safety valve only
WAL_SIZE_LIMIT = 4 << 20  # bytes a shard's WAL file keeps after a checkpoint resets it

# The WAL-reset race (two connections writing and checkpointing at once can lose committed
# transactions) exists from 3.7.0 to 3.51.2; it was fixed in 3.51.3 and backported to 3.50.7
# and 3.44.6.
_FIXED_IN = (3, 51, 3)
_BACKPORTS = ((3, 50, 7), (3, 44, 6))


def sqlite_version() -> str:
    """The version of the SQLite library APSW runs."""
    return str(apsw.sqlite_lib_version())


def _parse(version: str) -> tuple[int, int, int]:
    parts = [int(p) for p in version.split(".")[:3]]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def version_is_safe(version: str) -> bool:
    """False for SQLite versions with the WAL-reset corruption bug."""
    v = _parse(version)
    if v >= _FIXED_IN or v < (3, 7, 0):
        return v >= _FIXED_IN
    return any(v[:2] == fix[:2] and v >= fix for fix in _BACKPORTS)


def check_sqlite_version(version: str | None = None) -> None:
    """Refuse SQLite libraries with the WAL-reset corruption bug."""
    version = sqlite_version() if version is None else version
    if not version_is_safe(version):
        raise SQLiteVersionError(
            f"SQLite {version} has the WAL-reset corruption bug (fixed in 3.51.3, backported to "
            "3.50.7 and 3.44.6); upgrade apsw: pip install -U apsw"
        )


_connections: weakref.WeakSet[apsw.Connection] = weakref.WeakSet()
_inherited: list[apsw.Connection] = []
_inherited_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # SQLite keeps per-file lock state for the whole process (which locks it holds on each shard
    # file and its -shm). A child made by fork() inherits that state but not the locks: a
    # connection the child then opens to the same file would share the state, believe it holds
    # locks it does not, and another process could reset the WAL index under its writes (seen:
    # an acknowledged write of the child lost). So the parent's connections are held here (so that
    # collecting them cannot close them with a checkpoint) and closed, without one, before the
    # child opens its first connection.
    global _connections
    _inherited.extend(_connections)
    _connections = weakref.WeakSet()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_inherited() -> None:
    """Close, in a child made by fork(), the connections its parent had open (see
    ``_after_fork_in_child``): without checkpointing or removing the WAL, which stay the parent's
    and the other processes' business. The kernel has given the child none of the parent's locks,
    so closing releases nothing of theirs; it drops SQLite's copied lock state."""
    with _inherited_lock:
        while _inherited:
            conn = _inherited.pop()
            with contextlib.suppress(apsw.Error):
                conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
                conn.close(True)


def open_connection(path: str, *, create: bool, synchronous: str, reader: bool = False) -> apsw.Connection:
    """Open a connection to one shard file with ekv's pragmas.

    Writers and readers both use WAL; readers are additionally ``query_only`` so a stray write
    cannot slip through a reader connection. ``synchronous`` is ``NORMAL`` (a process crash loses
    nothing, a power cut may lose the last commits) or ``FULL`` (fsync on every commit).
    """
    if _inherited:
        _close_inherited()
    flags = apsw.SQLITE_OPEN_READWRITE
    if create:
        flags |= apsw.SQLITE_OPEN_CREATE
    try:
        conn = apsw.Connection(path, flags=flags)
        conn.set_busy_handler(BusyHandler())
        # Each pragma runs on its own: APSW runs later statements of a script only as the rows
        # of earlier ones are consumed. journal_mode is set by the writer once the file is
        # known to be an ekv shard (see enable_wal), so a foreign file is never modified.
        conn.execute(f"PRAGMA synchronous={synchronous}").fetchall()
        if reader:
            conn.execute("PRAGMA query_only=1").fetchall()
            # A reader may be the last connection to close: it must not checkpoint then, so
            # that reading a data directory (ekv info, check, backup) never writes to it.
            conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    except apsw.Error as exc:
        raise_storage_error(exc, path, action="open")
    _connections.add(conn)
    return conn


class _NoWait(threading.local):
    on = False


nowait = _NoWait()
"""``nowait.on = True``: on this thread, a lock held by another process is not waited for (until
set back to False): the statement fails at once with ``apsw.BusyError`` (see
:class:`BusyHandler`). For a caller that must not block (an event loop,
:meth:`ekv._storage.shard.Shard.write_nowait`) and has a place to retry where waiting is fine.
A flag rather than a context manager: it is set on every such write (a ``with`` costs 1 µs)."""


_BUSY_FIRST_S = 20e-6
_BUSY_MAX_S = 1e-3


class BusyHandler:
    """A busy handler that waits for a lock held by another connection in short, growing sleeps:
    20 µs, 40 µs, ... up to 1 ms, for ``timeout_ms`` in all.

    Several processes write one data directory (SPEC section 12), each shard file through SQLite's
    own write lock. SQLite's built-in busy timeout sleeps 1, 2, 5, 10 ... up to 100 ms between
    tries: a write that meets another process's commit (tens of microseconds) then waits for
    milliseconds, and under contention for hundreds (measured with 4 processes writing: p50 31 µs,
    max 535 ms). Sleeping about as long as a commit takes keeps the wait near the holder's
    commit time. SQLite calls the handler only when the lock is taken, so an uncontended write
    pays nothing for it."""

    __slots__ = ("_deadline_s", "_started")

    def __init__(self, timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self._deadline_s = timeout_ms / 1000
        self._started = 0.0

    def __call__(self, count: int) -> bool:
        if nowait.on:
            return False  # a caller that must not wait (see nowait): SQLITE_BUSY, it retries elsewhere
        if count == 0:
            self._started = time.monotonic()
        elif time.monotonic() - self._started > self._deadline_s:
            return False
        time.sleep(min(_BUSY_MAX_S, _BUSY_FIRST_S * (1 << min(count, 6))))
        return True


def enable_wal(conn: apsw.Connection) -> None:
    """Switch a verified shard to WAL mode (persistent in the file; a no-op when already set)."""
    mode = conn.execute("PRAGMA journal_mode=WAL").get
    if str(mode).lower() != "wal":
        raise StorageError(f"could not switch to WAL mode (journal_mode is {mode!r})")
    # Checkpoints normally run on the node's checkpointer thread (see ShardedStore.checkpoint),
    # off the write path: a checkpoint fsyncs, which stalls a commit for milliseconds. The writer
    # checkpoints by itself only if the WAL grows far beyond that (nobody running the thread).
    conn.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}").fetchall()
    # After a checkpoint SQLite reuses the WAL file from its start but never shrinks it: each
    # shard would keep up to 32 MiB (the checkpoint threshold) on disk for ever, 256 MiB for a
    # node of 8 shards holding a handful of keys. The writer truncates it to this on each reset.
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}").fetchall()


@contextlib.contextmanager
def transaction(cur: apsw.Cursor, *, synchronous: str | None = None) -> Iterator[None]:
    """Run the ``with`` block in one transaction: BEGIN, COMMIT if the block returns, ROLLBACK if
    anything raises (the original exception propagates; an error of the rollback itself is
    dropped, since the one to report is what made it roll back). Every transaction ekv runs goes
    through here, with two deliberate exceptions on the local write path
    (:meth:`ekv._storage.shard.Shard._write_local`):

    * a group of local writes whose rows all win runs as one multi-row upsert *alone*, which
      SQLite commits (or undoes) as a whole: no BEGIN and COMMIT, which would cost two more
      statements on every write (about 4 µs, a tenth of a put);
    * when a row of that statement loses LWW, the group runs again as ``BEGIN; upsert`` in one
      ``execute`` (:func:`ekv._storage.schema.begin_upsert_rows`), for the same reason, and
      ``Shard._commit_group`` commits it (or ``Shard._roll_back`` undoes it).

    ``synchronous`` switches ``PRAGMA synchronous`` for this transaction only (the arming
    transaction is fsynced even with ``durability="normal"``) and restores the connection's
    setting afterwards, also on failure.

    Every transaction takes the write lock at its start (``BEGIN IMMEDIATE``): several processes
    write one shard file (SPEC section 12), and a deferred transaction that reads before it writes
    fails at once (``SQLITE_BUSY_SNAPSHOT``, no busy handler) when another process committed in
    between; one that holds the write lock from the start cannot."""
    previous = None
    if synchronous is not None:
        previous = cur.execute("PRAGMA synchronous").get
        cur.execute(f"PRAGMA synchronous={synchronous}")
    try:
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield
            cur.execute("COMMIT")
        except BaseException:
            roll_back(cur.connection)
            raise
    except BaseException:
        if previous is not None:
            with contextlib.suppress(apsw.Error):
                cur.execute(f"PRAGMA synchronous={previous}")
        raise
    if previous is not None:
        cur.execute(f"PRAGMA synchronous={previous}")


def roll_back(conn: apsw.Connection) -> None:
    """Undo the connection's open transaction, if any, ignoring errors: cleanup after a failure,
    whose own error is the one to report."""
    with contextlib.suppress(apsw.Error):
        if not conn.getautocommit():
            conn.execute("ROLLBACK")


def begin_snapshot(cur: apsw.Cursor) -> None:
    """Open a read transaction that outlives a ``with`` block (a sync's snapshot, read over many
    calls); its first read pins the snapshot, and :func:`roll_back` ends it."""
    cur.execute("BEGIN")


def raise_storage_error(exc: BaseException, path: str | None = None, *, action: str = "write") -> NoReturn:
    """Raise the ekv error matching an APSW or OS exception, chained to it."""
    raise storage_error(exc, path, action=action) from exc


def storage_error(exc: BaseException, path: str | None = None, *, action: str = "write") -> Error:
    """The ekv error matching an APSW or OS exception (a new instance, ``__cause__`` set).

    A new instance per call matters: one failed group commit fails the write of every thread in
    the batch, and each thread must raise its own exception object.
    """
    err = _translate(exc, path, action)
    err.__cause__ = exc
    return err


def _translate(exc: BaseException, path: str | None, action: str) -> Error:
    where = f" ({path})" if path else ""
    if isinstance(exc, Error):
        return type(exc)(*exc.args)
    if isinstance(exc, apsw.ConnectionClosedError | apsw.CursorClosedError):
        return ClosedError("the store is closed")
    if isinstance(exc, apsw.FullError) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        if action == "write":
            return DiskFullError(f"disk full{where}: the write was not applied")
        return DiskFullError(f"disk full{where} while trying to {action}")
    if isinstance(exc, apsw.NotADBError | apsw.CorruptError):
        return CorruptionError(f"{path or 'a shard file'} is corrupt or not an ekv file: {exc}")
    if isinstance(exc, apsw.ReadOnlyError | apsw.PermissionsError | apsw.CantOpenError | PermissionError):
        return DataDirError(f"cannot write{where}: {exc}")
    if not isinstance(exc, Exception):
        return StorageError(f"the operation was interrupted by {type(exc).__name__} and not applied")
    return StorageError(f"storage error{where}: {exc}")
