"""The processes that share one data directory: which are attached, which is the node process.

Python services run several processes per machine (gunicorn and uvicorn workers, Celery, the
``ekv`` command line next to a service), and each may open the same data directory any number of
times (SPEC section 12). Every open registers a *slot*; one of them at a time is elected the
*node process*, which runs what must run once per directory (the cluster, GC, checkpoints).

Layout, next to the shard files::

    data_dir/
      NODE                flock()ed exclusively by the node process; "pid slot origin host"
      procs/<slot>        one file per open store, flock()ed exclusively while the open lives;
                          "pid origin host role started_ns"

Everything is a ``flock`` lock, which belongs to the open file and which the kernel drops when
the process dies (SIGKILL included), so a dead process never holds a slot or the election: a
slot file that can be locked belongs to a dead open (and is removed by whoever finds it), and a
live process polling ``NODE`` takes over as soon as the node process is gone. A child made by
``fork()`` closes its copies of the descriptors without unlocking them
(:func:`ekv._storage.datadir.held`), so it never keeps a dead parent's locks alive.

Shard files record which origins write into them (``meta`` rows ``writer/<origin>`` -> slot):
an origin whose slot is dead has stopped writing, and its sequence counter is folded into the
shard's stored version vector (``Shard.arm`` and the node process's GC pass do it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import socket
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ekv._errors import DataDirError, LockedError
from ekv._storage.datadir import fork_guard, held, released

__all__ = ["Election", "Slot", "SlotInfo", "exclusive", "live_slots", "opening", "slot_alive"]

NODE_NAME = "NODE"
PROCS_DIR = "procs"
OPENING_NAME = ".opening"
OPENING_TIMEOUT_S = 60.0
_SLOT_BYTES = 6

_own_slots: dict[str, Slot] = {}
"""The live slots of this process, by id (a slot of this process is alive by definition; a
second descriptor of ours could not lock it either, flock being per open file)."""


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """What a slot file says about the open that holds it."""

    slot: str
    pid: int
    origin: str
    host: str
    role: str
    started_ns: int
    consensus: str = ""
    """The open's linearizable-operations settings (:func:`ekv._storage.store.consensus_token`);
    empty in records written by an older ekv."""


_holders: weakref.WeakSet[Slot | Election] = weakref.WeakSet()


def _forget_own_slots_in_child() -> None:
    # A child made by fork() holds none of its parent's slots or elections (their descriptors are
    # closed by datadir's fork hook): they are alive only as long as the parent is.
    _own_slots.clear()
    for holder in list(_holders):
        holder._fd = None
    _holders.clear()


os.register_at_fork(after_in_child=_forget_own_slots_in_child)


def _procs_dir(data_dir: Path) -> Path:
    directory = data_dir / PROCS_DIR
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"cannot create {str(directory)!r}: {exc.strerror or exc}") from exc
    return directory


@contextlib.contextmanager
def opening(data_dir: Path) -> Iterator[None]:
    """Serialise opens of one data directory among processes: creating a store, arming its
    shards and retiring dead writers happen one open at a time (two processes starting at once
    on a new directory must not both create it). Held for milliseconds; waits up to a minute."""
    with exclusive(_procs_dir(data_dir) / OPENING_NAME, f"opening data_dir {str(data_dir)!r}"):
        yield


@contextlib.contextmanager
def exclusive(path: Path, what: str, *, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block,
    waiting up to :data:`OPENING_TIMEOUT_S` for another process that holds it (``what`` it is
    for, in the error).

    ``remove``: unlink the file as the block ends, before the lock is released, so that locks
    named after things that come and go (the runtime directory's per-data-directory lock) do not
    pile up, one file per data directory ever opened. Safe because a holder checks, once it has
    the lock, that ``path`` still names the file it locked: a waiter that locked a file removed
    meanwhile lets it go and starts over on the new one, so two processes never hold the lock at
    once through two files of one name. (An ekv older than this check, on the same machine during
    an upgrade, could; which is why the data directory's own ``.opening`` is kept.)"""
    deadline = time.monotonic() + OPENING_TIMEOUT_S
    fd = _lock_current(path, what, deadline)
    try:
        yield
    finally:
        with fork_guard():
            if remove:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            released(fd)
            os.close(fd)


def _lock_current(path: Path, what: str, deadline: float) -> int:
    """A descriptor of ``path``, locked exclusively, that is still the file ``path`` names."""
    delay = 0.001
    while True:
        with fork_guard():
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise DataDirError(f"cannot open {str(path)!r}: {exc.strerror or exc}") from exc
            held(fd)
        try:
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise LockedError(
                        f"another process has been {what} for {OPENING_TIMEOUT_S:.0f} s; is it stuck?", owner_pid=None
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            if _same_file(fd, path):
                return fd
        except BaseException:
            _close(fd)
            raise
        _close(fd)  # removed by its last holder while we waited: lock the new one


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


def _close(fd: int) -> None:
    with fork_guard():
        released(fd)
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


_RECORD = 256


def _write(fd: int, text: str) -> None:
    """Replace a slot's record in one write of a fixed size, never truncating first: a reader
    must never find it empty (it would take a live open for a broken one)."""
    with contextlib.suppress(OSError):
        os.pwrite(fd, text.encode()[: _RECORD - 1].ljust(_RECORD - 1) + b"\n", 0)


class Slot:
    """One open's registration in its data directory, held until :meth:`close`."""

    def __init__(self, path: Path, slot: str, fd: int, consensus: str = "") -> None:
        self.path = path
        self.id = slot
        self._fd: int | None = fd
        self.consensus = consensus

    @classmethod
    def register(cls, data_dir: Path, origin: str, role: str, consensus: str = "") -> Slot:
        """Create and lock a new slot file for an open writing under ``origin``."""
        directory = _procs_dir(data_dir)
        slot = secrets.token_hex(_SLOT_BYTES)
        path = directory / slot
        with fork_guard():
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise DataDirError(f"cannot create {str(path)!r}: {exc.strerror or exc}") from exc
            fcntl.flock(fd, fcntl.LOCK_EX)  # new and unique: nobody else can hold it
            held(fd)
            registered = cls(path, slot, fd, consensus)
            _own_slots[slot] = registered
            _holders.add(registered)
        registered.set_origin(origin, role)
        return registered

    def set_origin(self, origin: str, role: str) -> None:
        """Record a new origin (the directory re-identified) or role (this open was elected)."""
        if self._fd is not None:
            record = f"{os.getpid()} {origin} {socket.gethostname()} {role} {time.time_ns()} {self.consensus}"
            _write(self._fd, record.rstrip() + "\n")

    def close(self) -> None:
        """Remove the slot. Idempotent."""
        with fork_guard():
            fd, self._fd = self._fd, None
            if fd is None:
                return
            _own_slots.pop(self.id, None)
            with contextlib.suppress(OSError):
                self.path.unlink()
            released(fd)
            os.close(fd)


def _is_slot_name(name: str) -> bool:
    return len(name) == 2 * _SLOT_BYTES and all(c in "0123456789abcdef" for c in name)


def slot_alive(data_dir: Path, slot: str) -> bool:
    """Whether the open that registered ``slot`` is still running. A dead slot's file is removed."""
    if slot in _own_slots:
        return True
    if not _is_slot_name(slot):
        return False
    path = data_dir / PROCS_DIR / slot
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume alive (never fold a counter that may still grow)
    try:
        if not _try_lock(fd):
            return True
        with contextlib.suppress(OSError):
            path.unlink()
        return False
    finally:
        os.close(fd)


def live_slots(data_dir: Path) -> list[SlotInfo]:
    """Every live open of the directory (this process's included), oldest first."""
    found: list[SlotInfo] = []
    try:
        names = sorted(os.listdir(data_dir / PROCS_DIR))
    except OSError:
        return found
    for name in names:
        if not _is_slot_name(name) or not slot_alive(data_dir, name):
            continue
        info = _read_slot(data_dir, name)
        if info is not None:
            found.append(info)
    found.sort(key=lambda info: info.started_ns)
    return found


def _read_slot(data_dir: Path, name: str) -> SlotInfo | None:
    for _ in range(3):  # a record being replaced: read it again
        try:
            fields = (data_dir / PROCS_DIR / name).read_text().split()
            consensus = fields[5] if len(fields) > 5 else ""
            return SlotInfo(name, int(fields[0]), fields[1], fields[2], fields[3], int(fields[4]), consensus)
        except FileNotFoundError:
            return None  # closed meanwhile
        except (OSError, ValueError, IndexError, UnicodeDecodeError):
            time.sleep(0.001)
    return None


class Election:
    """The node-process lock of a data directory: :meth:`try_win` takes it if it is free."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / NODE_NAME
        self._fd: int | None = None

    @property
    def won(self) -> bool:
        return self._fd is not None

    def try_win(self, slot: str, origin: str) -> bool:
        """Become the node process if no live open is; never blocks."""
        if self._fd is not None:
            return True
        with fork_guard():
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise DataDirError(f"cannot open {str(self.path)!r}: {exc.strerror or exc}") from exc
            if not _try_lock(fd):
                os.close(fd)
                return False
            held(fd)
            self._fd = fd
            _holders.add(self)
        _write(fd, f"{os.getpid()} {slot} {origin} {socket.gethostname()}\n")
        return True

    def wait_for_it(self) -> int:
        """Block until the lock is free and take it, on a new descriptor that is not yet this
        election's (:meth:`adopt` or :meth:`drop` it). Run on a thread of its own: an attached
        open takes over the moment the kernel frees the lock of a dead node process, without
        waiting for its next ``takeover_interval`` check."""
        with fork_guard():
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise DataDirError(f"cannot open {str(self.path)!r}: {exc.strerror or exc}") from exc
            held(fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def adopt(self, fd: int, slot: str, origin: str) -> None:
        """Make a descriptor locked by :meth:`wait_for_it` this election's: this open won."""
        with fork_guard():
            if self._fd is not None:  # won meanwhile through try_win (impossible, but harmless)
                released(fd)
                os.close(fd)
                return
            self._fd = fd
            _holders.add(self)
        _write(fd, f"{os.getpid()} {slot} {origin} {socket.gethostname()}\n")

    @staticmethod
    def drop(fd: int) -> None:
        """Let go of a descriptor locked by :meth:`wait_for_it` (its open is gone)."""
        with fork_guard():
            released(fd)
            os.close(fd)

    def holder(self) -> tuple[int, str] | None:
        """(pid, slot) of the node process as it recorded itself, if it is alive."""
        try:
            fields = self.path.read_text().split()
            pid, slot = int(fields[0]), fields[1]
        except (OSError, ValueError, IndexError):
            return None
        if not slot_alive(self.path.parent, slot):
            return None
        return pid, slot

    def resign(self) -> None:
        """Let another process take over (this open is closing). Idempotent."""
        with fork_guard():
            fd, self._fd = self._fd, None
            if fd is None:
                return
            released(fd)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
