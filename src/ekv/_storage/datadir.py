"""The data directory: its manifest, its lock and the names of its shard files.

Layout::

    data_dir/
      ekv.json          manifest: format, instance name, shard count, node id, creation time, codec
      LOCK              every open of the directory holds a shared flock() on it; an exclusive
                        one (moving stale files aside; an older ekv, one open per
                        directory) keeps the others out
      NODE, procs/      which open is the node process, and which are attached (see procs.py)
      membership.incarnation   the node process's last SWIM incarnation (a decimal number; see
                        load_membership_incarnation)
      shard_000.db      one SQLite database per shard (+ -wal and -shm while open)
      ...

The manifest is written last when a directory is created (write to a temporary file, fsync,
rename, fsync the directory), so a directory with shard files but no manifest can only come from
an interrupted creation or from someone else's files; ekv tells the two apart and never
overwrites a file it did not create.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ekv._errors import (
    ConfigError,
    CorruptionError,
    DataDirError,
    DiskFullError,
    InstanceNameError,
    LockedError,
    ShardCountError,
)

__all__ = [
    "DataDir",
    "Manifest",
    "held",
    "load_membership_incarnation",
    "new_incarnation",
    "new_node_id",
    "released",
    "save_membership_incarnation",
]

MANIFEST_NAME = "ekv.json"
LOCK_NAME = "LOCK"
MEMBERSHIP_INCARNATION_NAME = "membership.incarnation"
FORMAT = 1
LEGACY_CODEC = "pickle"
"""The codec of a manifest that records none: written before ekv recorded it, when pickle was the
default (and still is)."""


# The data directory locks this process holds. flock() locks belong to the open file description,
# which fork() shares with the child: a child that outlived its parent would keep the lock, and the
# restarted service would be refused with LockedError naming a dead process. So the child closes
# its copies at once. It must not LOCK_UN them, which would drop the parent's lock as well; close()
# only drops the child's reference. _FORK_GUARD keeps a fork from landing between opening a lock
# file and registering it here.
_held_fds: set[int] = set()
_holders: weakref.WeakSet[DataDir] = weakref.WeakSet()
_FORK_GUARD = threading.Lock()


def _after_fork_in_child() -> None:
    global _FORK_GUARD
    for holder in list(_holders):
        holder._lock_fd = None
    for fd in _held_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_fds.clear()
    _holders.clear()
    _FORK_GUARD = threading.Lock()  # taken by the forking thread in the parent


def held(fd: int) -> None:
    """Record a locked descriptor that a child made by ``fork()`` must close (never unlock).
    Call with :func:`fork_guard` held, between opening the file and returning it."""
    _held_fds.add(fd)


def released(fd: int) -> None:
    """Forget a descriptor recorded by :func:`held` (before closing it)."""
    _held_fds.discard(fd)


def fork_guard() -> threading.Lock:
    """The lock that keeps ``fork()`` from landing between opening a lock file and :func:`held`."""
    return _FORK_GUARD


os.register_at_fork(
    before=lambda: _FORK_GUARD.acquire(),
    after_in_parent=lambda: _FORK_GUARD.release(),
    after_in_child=_after_fork_in_child,
)


def new_node_id() -> str:
    """A fresh random node identity: 16 lowercase hex digits (64 bits)."""
    return secrets.token_hex(8)


def new_incarnation() -> str:
    """A fresh random incarnation token (8 lowercase hex digits) for one open of a store.

    Each open writes under its own origin ``node_id~incarnation``: two processes that run from
    byte copies of one data directory (a VM snapshot, a container image with baked data, a backup
    restored on a second machine) share a node id, but never an origin, so they never issue the
    same (origin, oseq) dot for two different writes, nor the same version."""
    return secrets.token_hex(4)


def load_membership_incarnation(path: Path) -> int:
    """The SWIM incarnation saved in data directory ``path`` by :func:`save_membership_incarnation`,
    or -1 if none is (a new directory, or a file that is unreadable or not a number).

    Only the node process runs the cluster (SPEC 12), so one process writes it; attached processes
    never read it. A lost or damaged file is not an error: the restarted member then announces a
    lower incarnation than its last life's, which the others answer with what they believe of it
    and it refutes one period later (the saved value only saves that round trip)."""
    try:
        text = (path / MEMBERSHIP_INCARNATION_NAME).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return -1
    return int(text) if text.isdigit() and len(text) < 20 else -1


def save_membership_incarnation(path: Path, incarnation: int) -> None:
    """Save the SWIM incarnation in data directory ``path``: a temporary file renamed over the old
    one (``os.replace``), so a reader sees the old number or the new one, never a torn write.

    Not fsynced, on purpose: it runs on the network loop (every process's cluster shares it) each
    time the incarnation rises, and an fsync would stall every session for milliseconds; what a
    power cut can cost is the last rise, which only makes the restarted member refute its old
    state one period later (see :func:`load_membership_incarnation`). Raises OSError."""
    target = path / MEMBERSHIP_INCARNATION_NAME
    temporary = path / f".{MEMBERSHIP_INCARNATION_NAME}.tmp"
    temporary.write_text(f"{int(incarnation)}\n", encoding="ascii")
    os.replace(temporary, target)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a data directory records about itself."""

    name: str
    shards: int
    node_id: str
    created_at_ns: int
    codec: str = LEGACY_CODEC
    """The name of the codec the values are encoded with (see :func:`ekv._codec.codec_name`)."""
    format: int = FORMAT
    epoch: int = 0
    """Written by ekv 0.1 stores, which raised it after each unclean shutdown; only read now (see
    :attr:`legacy_origin`)."""
    former_ids: tuple[str, ...] = ()
    """Node ids this directory had before it re-identified (newest first): its shard files may
    still name one of them until they are next opened for writing."""

    @property
    def legacy_origin(self) -> str:
        """The origin an ekv 0.1 store wrote under (its node id, plus ``~epoch`` after an unclean
        shutdown): the previous origin of a shard that records none itself."""
        return self.node_id if self.epoch == 0 else f"{self.node_id}~{self.epoch}"

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": self.format,
                "name": self.name,
                "shards": self.shards,
                "node_id": self.node_id,
                "created_at_ns": self.created_at_ns,
                "codec": self.codec,
                "epoch": self.epoch,
                "former_ids": list(self.former_ids),
            },
            indent=2,
        )


def fsync_dir(path: Path) -> None:
    """Make a rename or file creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DataDir:
    """Access to one data directory. Holds the lock from :meth:`lock` until :meth:`unlock`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    # -- paths -------------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    def shard_path(self, index: int) -> Path:
        return self.path / f"shard_{index:03d}.db"

    def existing_shard_files(self) -> list[Path]:
        return sorted(self.path.glob("shard_*.db"))

    # -- preparing and locking ---------------------------------------------------------------

    def ensure_exists(self) -> None:
        """Create the directory if needed and check it is a writable directory."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise DataDirError(f"data_dir {str(path)!r} exists and is not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirError(f"cannot create data_dir {str(path)!r}: {exc.strerror or exc}") from exc
        if not os.access(path, os.W_OK | os.X_OK):
            raise DataDirError(f"data_dir {str(path)!r} is not writable by this process")

    def attach(self) -> None:
        """Take a shared lock on the directory, as every open does, or raise :class:`LockedError`.

        Any number of processes (and EKV objects in one process) may hold it at once (SPEC
        section 12): which of them is the node process is decided by :mod:`ekv._storage.procs`.
        The lock keeps out what needs the directory alone: moving stale files aside
        (:meth:`exclusive`) and an older ekv (one open per directory), which locks it exclusively. The kernel
        drops it if the process dies; a child made by ``fork()`` does not keep it (see
        ``_after_fork_in_child``).
        """
        with _FORK_GUARD:
            self._lock_fd = self._flock(fcntl.LOCK_SH)
            _held_fds.add(self._lock_fd)
            _holders.add(self)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the directory alone for the ``with`` block, or raise :class:`LockedError` if any
        other open has it (the caller holds no lock on it itself)."""
        with _FORK_GUARD:
            fd = self._flock(fcntl.LOCK_EX)
            _held_fds.add(fd)
        try:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            except OSError:
                pass  # the pid is informational; holding the lock is what matters
            yield
        finally:
            with _FORK_GUARD:
                _held_fds.discard(fd)
                os.close(fd)

    def _flock(self, mode: int) -> int:
        lock_path = self.path / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DataDirError(f"cannot open lock file {str(lock_path)!r}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            owner = _read_owner(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataDirError(f"cannot lock {str(lock_path)!r}: {exc.strerror or exc}") from exc
            if mode == fcntl.LOCK_EX:
                raise LockedError(f"data_dir {str(self.path)!r} is open in another process", owner_pid=None) from None
            pid, host = owner
            who = f"process {pid}" if pid is not None else "another process"
            if host:
                who += f" on {host}"
            raise LockedError(
                f"data_dir {str(self.path)!r} is held exclusively by {who} (an older ekv that allows one open per "
                "directory, or one moving stale files aside); close it first or use a different data_dir",
                owner_pid=pid,
            ) from None
        return fd

    def unlock(self) -> None:
        with _FORK_GUARD:
            fd, self._lock_fd = self._lock_fd, None
            _holders.discard(self)
            if fd is not None:
                _held_fds.discard(fd)
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    # -- manifest ----------------------------------------------------------------------------

    def read_manifest(self) -> Manifest | None:
        """The manifest, or ``None`` if the directory holds no store yet."""
        path = self.manifest_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DataDirError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(raw)
            manifest = Manifest(
                name=data["name"],
                shards=data["shards"],
                node_id=data["node_id"],
                created_at_ns=data["created_at_ns"],
                codec=data.get("codec", LEGACY_CODEC),
                format=data["format"],
                epoch=data.get("epoch", 0),
                former_ids=tuple(data.get("former_ids", ())),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptionError(f"{str(path)!r} is corrupt or not an ekv manifest ({exc})") from None
        if manifest.format != FORMAT:
            raise CorruptionError(
                f"{str(path)!r} has format {manifest.format!r}; this ekv reads format {FORMAT} "
                "(was it written by a newer ekv?)"
            )
        if not (
            isinstance(manifest.name, str)
            and isinstance(manifest.shards, int)
            and manifest.shards > 0
            and isinstance(manifest.node_id, str)
            and manifest.node_id
            and isinstance(manifest.codec, str)
            and manifest.codec
            and isinstance(manifest.epoch, int)
            and manifest.epoch >= 0
            and all(isinstance(former, str) and former for former in manifest.former_ids)
        ):
            raise CorruptionError(f"{str(path)!r} has invalid fields")
        return manifest

    def write_manifest(self, manifest: Manifest) -> None:
        """Write the manifest atomically and durably."""
        tmp = self.path / (MANIFEST_NAME + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(manifest.to_json() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.manifest_path)
            fsync_dir(self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"disk full while creating {str(self.path)!r}") from exc
            raise DataDirError(f"cannot write {str(self.manifest_path)!r}: {exc.strerror or exc}") from exc

    def check_manifest(self, manifest: Manifest, *, name: str, shards: int, codec: str | None = None) -> None:
        """Refuse to open a directory created with another shard count, instance name or codec
        (``None``: do not check the codec)."""
        if manifest.shards != shards:
            raise ShardCountError(
                f"data_dir {str(self.path)!r} was created with shards={manifest.shards}, "
                f"but shards={shards} was given; the shard count of a data directory cannot change"
            )
        if manifest.name != name:
            raise InstanceNameError(
                f"data_dir {str(self.path)!r} belongs to instance {manifest.name!r}, but name={name!r} was given"
            )
        if codec is not None:
            check_codec(self.path, manifest.codec, codec)

    def move_aside(self, shards: int, now_ns: int) -> Path:
        """Move the manifest and every shard file (with its WAL companions) into a new
        ``stale-<UTC time>`` directory inside the data directory; nothing is deleted. Returns
        the new directory. The caller must have closed the store."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_ns / 1e9))
        target = self.path / f"stale-{stamp}"
        suffix = 1
        while target.exists():
            suffix += 1
            target = self.path / f"stale-{stamp}-{suffix}"
        target.mkdir()
        moved = [self.manifest_path]
        for index in range(shards):
            base = self.shard_path(index)
            moved += [Path(f"{base}{extra}") for extra in ("", "-wal", "-shm")]
        for path in moved:
            if path.exists():
                os.replace(path, target / path.name)
        fsync_dir(target)
        fsync_dir(self.path)
        return target

    def remove_db_files(self, base: Path) -> None:
        """Delete a database file and its WAL companions (only used for interrupted creations)."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{base}{suffix}")


def check_codec(path: Path, recorded: str, given: str) -> None:
    """Refuse the codec ``given`` for a directory whose values were written with ``recorded``:
    every value would fail to decode (or, worse, decode into something else) on first read."""
    if recorded == given:
        return
    legacy = ""
    if recorded == LEGACY_CODEC:
        legacy = (
            f"; an {MANIFEST_NAME} that records no codec was written by an older ekv and counts as 'pickle': "
            f'if its values are {given!r}, add "codec": "{given}" to it once'
        )
    raise ConfigError(
        f"data_dir {str(path)!r} holds values encoded with codec {recorded!r}, but codec={given!r} was given; "
        f"pass codec={recorded!r} (a store's codec cannot change; a custom codec is matched by its name){legacy}"
    )


def _read_owner(fd: int) -> tuple[int | None, str | None]:
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
    except OSError:
        return None, None
    pid = int(text[0]) if text and text[0].isdigit() else None
    host = text[1] if len(text) > 1 else None
    return pid, host
