"""Simulated power cuts: an APSW VFS under which SIGKILL loses exactly what was not fsynced.

A power cut (or a kernel crash) loses whatever the operating system had not yet written to the
disk: writes that reached the page cache but were never flushed by ``fsync``. Killing a process
with SIGKILL loses nothing of the kind (the kernel still holds the page cache and writes it out),
so plain ``kill -9`` tests cannot tell ``durability="normal"`` from ``"full"``. This module makes
them able to.

:func:`install` registers a VFS (inheriting from SQLite's default ``unix`` VFS) as the process's
default, so every ``apsw.Connection`` ekv opens uses it. For the main database file, its rollback
journal and its WAL, every ``xWrite`` and ``xTruncate`` is kept in an in-process *image* of the
file (one per path, shared by every connection of the process, as the page cache is); reads and
``xFileSize`` see the image. Only ``xSync`` of a file moves its pending writes and truncations to
the real file. So when the process is killed with SIGKILL, the real files hold exactly what had
been fsynced: the same as after a power cut at that instant, in the worst case where the kernel
had written back nothing on its own. After the cut, :func:`after_cut` deletes the ``*-shm`` files
(the WAL index is shared memory, which does not survive a power loss; SQLite rebuilds it from the
WAL).

``os.stat`` is wrapped too, so that the process sees the sizes it wrote (ekv's checkpointer
decides from the WAL's ``st_size`` when to checkpoint, at 32 MiB), as it would through the page
cache.

Run a program under the simulator with::

    python -m ekv.testing._internal.powercut -- python -m ekv.testing.node --name c --data-dir DIR ...
    python -m ekv.testing._internal.powercut writer --data-dir DIR --durability full --threads 4

The first form installs the VFS and runs the rest of the command line in the same process, so
``NodeProcess(..., prefix=node_prefix())`` runs a cluster node under it. The second is a small
writer for power-cut tests: it prints ``ack <key> <n> <timestamp_ns> <origin>`` only after
``put`` returned (see :func:`writer_main`). Both honour ``EKV_POWERCUT_CUT_AT_SYNC=n`` (the power
fails *during* the n-th fsync that has something to write: the first half of its pending blocks,
in file order, reach the disk, then the process SIGKILLs itself; this makes a cut inside an fsync
deterministic) and ``EKV_POWERCUT_FSYNC=1`` (also fsync the real files). A program of your own
can call :func:`install_from_env` first thing (e.g. from a ``sitecustomize``) and be started with
``EKV_POWERCUT=1``.

What is simulated: un-fsynced SQLite writes and truncations are lost, fsynced ones are kept, a cut
may fall inside an fsync, and SQLite decides when to fsync (``synchronous=NORMAL``: the WAL before
each checkpoint and when its header is rewritten, the database after a checkpoint; ``FULL``: also
at every commit), so the two durability settings behave as on a real disk.

What is not simulated (say so wherever the figures are quoted):

* the kernel writing back *some* un-fsynced pages on its own before the cut, in any order (the
  simulator always loses all of them: the worst case for the amount lost; a cut inside an fsync
  persists a prefix of that fsync's blocks in file order, not an arbitrary subset);
* torn sectors, disks that ignore or reorder flushes, bit rot (see ``tests/test_integrity.py``);
* directory operations: creating, renaming and deleting files take effect at once, as if the
  directory were always synced;
* files written with plain Python I/O (``ekv.json``, ``LOCK``, backups) go straight to the real
  files, so count as durable as soon as written. ``ekv.json`` is written with fsync, an atomic
  rename and an fsync of the directory, so this matches a real disk; ``LOCK`` holds only the
  owner's pid (the lock itself is an ``flock``, which a reboot drops like a process death);
* other processes: they read the real files, so they do not see a running node's un-synced
  writes, as they would through a real page cache (nothing in the tests reads a node's directory
  while it runs under the simulator);
* the shared-memory WAL index (``*-shm``) is left to the inherited VFS (APSW passes the
  ``xShm*`` methods of an inheriting file straight to the base file), so it is real shared memory
  while the process runs; :func:`after_cut` removes it afterwards;
* memory-mapped I/O (``PRAGMA mmap_size``): ekv does not enable it, and a Python VFS file offers
  no ``xFetch``, so SQLite never maps the files under this VFS;
* performance: every read and write of a database file goes through Python.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import runpy
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw

__all__ = [
    "ENV",
    "VFS_NAME",
    "PowerCutVFS",
    "after_cut",
    "install",
    "install_from_env",
    "installed",
    "main",
    "node_prefix",
    "stats",
    "writer_main",
]

ENV = "EKV_POWERCUT"
"""Set to ``1`` in a child's environment to make :func:`install_from_env` install the VFS."""

VFS_NAME = "ekv-powercut"

_BLOCK = 4096
_OVERLAID = apsw.SQLITE_OPEN_MAIN_DB | apsw.SQLITE_OPEN_MAIN_JOURNAL | apsw.SQLITE_OPEN_WAL


class _Image:
    """What this process sees of one file: the real file plus the writes not yet fsynced.

    ``blocks`` holds every block (``_BLOCK`` bytes) written since the last sync, whole: a partly
    written block is first filled from the real file. ``floor`` is how much of the real file is
    still valid (the smallest size the file was truncated to since the last sync); ``size`` is
    the size the process sees."""

    def __init__(self, real_size: int, identity: tuple[int, int]) -> None:
        self.lock = threading.Lock()
        self.identity = identity
        """``(st_dev, st_ino)`` of the real file: a file deleted or replaced behind SQLite's back
        (ekv removes abandoned shard files with ``os.unlink``) gets a new image."""
        self.handles = 0
        self.real_size = real_size
        self.floor = real_size
        self.size = real_size
        self.blocks: dict[int, bytearray] = {}

    @property
    def pending(self) -> bool:
        return bool(self.blocks) or not (self.floor == self.real_size == self.size)

    def _real(self, base: apsw.VFSFile, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of the real file as the process sees it (zeros past ``floor``)."""
        valid = min(stop, self.floor)
        data = apsw.VFSFile.xRead(base, valid - start, start) if valid > start else b""
        if len(data) < stop - start:
            data += bytes(stop - start - len(data))
        return data

    def _block(self, base: apsw.VFSFile, index: int) -> bytearray:
        block = self.blocks.get(index)
        if block is None:
            block = self.blocks[index] = bytearray(self._real(base, index * _BLOCK, (index + 1) * _BLOCK))
        return block

    def read(self, base: apsw.VFSFile, amount: int, offset: int) -> bytes:
        end = min(offset + amount, self.size)
        if end <= offset:
            return b""
        parts: list[bytes] = []
        pos = offset
        while pos < end:
            index, skip = divmod(pos, _BLOCK)
            stop = min(end, (index + 1) * _BLOCK)
            block = self.blocks.get(index)
            if block is not None:
                parts.append(bytes(block[skip : skip + stop - pos]))
            else:
                # run on through every following block that is not in the image: one real read
                while stop < end and (stop // _BLOCK) not in self.blocks:
                    stop = min(end, stop + _BLOCK)
                parts.append(self._real(base, pos, stop))
            pos = stop
        return b"".join(parts)

    def write(self, base: apsw.VFSFile, data: bytes, offset: int) -> None:
        end = offset + len(data)
        pos = offset
        while pos < end:
            index, skip = divmod(pos, _BLOCK)
            stop = min(end, (index + 1) * _BLOCK)
            self._block(base, index)[skip : skip + stop - pos] = data[pos - offset : stop - offset]
            pos = stop
        self.size = max(self.size, end)

    def truncate(self, size: int) -> None:
        self.size = size
        self.floor = min(self.floor, size)
        cut, keep = divmod(size, _BLOCK)
        for index in [i for i in self.blocks if i > cut or (i == cut and keep == 0)]:
            del self.blocks[index]
        block = self.blocks.get(cut)
        if block is not None:
            block[keep:] = bytes(_BLOCK - keep)

    def sync(self, base: apsw.VFSFile, torn: bool = False) -> int:
        """Move the pending writes and truncations to the real file; return the bytes written.

        ``torn``: the power fails during this sync; only the first half of the pending blocks
        reach the disk (the caller then kills the process)."""
        if not self.pending:
            return 0
        written = 0
        if self.floor < self.real_size:
            apsw.VFSFile.xTruncate(base, self.floor)
        real_end = self.floor
        if torn:
            for index in sorted(self.blocks)[: len(self.blocks) // 2]:
                start = index * _BLOCK
                apsw.VFSFile.xWrite(base, bytes(self.blocks[index][: min(_BLOCK, self.size - start)]), start)
            return 0
        for index in sorted(self.blocks):
            start = index * _BLOCK
            stop = min(start + _BLOCK, self.size)
            if stop > start:
                apsw.VFSFile.xWrite(base, bytes(self.blocks[index][: stop - start]), start)
                written += stop - start
                real_end = max(real_end, stop)
        if real_end != self.size:
            apsw.VFSFile.xTruncate(base, self.size)
        self.blocks.clear()
        self.real_size = self.floor = self.size
        return written


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.syncs: dict[str, int] = {}
        self.real_syncs = 0
        """Syncs that had something to write (what ``cut_at_sync`` counts)."""
        self.synced_bytes = 0
        self.writes = 0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "syncs": dict(self.syncs),
                "real_syncs": self.real_syncs,
                "synced_bytes": self.synced_bytes,
                "writes": self.writes,
            }


_images: dict[str, _Image] = {}
_images_lock = threading.Lock()
_stats = _Stats()
_vfs: PowerCutVFS | None = None


def _kind(flags: int) -> str:
    if flags & apsw.SQLITE_OPEN_WAL:
        return "wal"
    if flags & apsw.SQLITE_OPEN_MAIN_JOURNAL:
        return "journal"
    return "db"


class _File(apsw.VFSFile):
    """A database, journal or WAL file whose un-synced writes live in an :class:`_Image`."""

    def __init__(self, base_vfs: str, name: str | apsw.URIFilename, flags: list[int], path: str) -> None:
        super().__init__(base_vfs, name, flags)
        self._path = path
        self._kind = _kind(flags[0])
        self._fsync = _vfs is not None and _vfs.fsync
        self._cut_at_sync = 0 if _vfs is None else _vfs.cut_at_sync
        st = _real_stat(path)
        identity = (st.st_dev, st.st_ino)
        with _images_lock:
            image = _images.get(path)
            if image is None or image.identity != identity:
                image = _images[path] = _Image(apsw.VFSFile.xFileSize(self), identity)
            image.handles += 1
        self._image = image

    def xClose(self) -> None:
        image = self._image
        with _images_lock:
            image.handles -= 1
            with image.lock:
                idle = image.handles == 0 and not image.pending
            if idle and _images.get(self._path) is image:
                del _images[self._path]  # the next open starts from the real file again
        super().xClose()

    def xRead(self, amount: int, offset: int) -> bytes:
        with self._image.lock:
            return self._image.read(self, amount, offset)

    def xWrite(self, data: Any, offset: int) -> None:
        with self._image.lock:
            self._image.write(self, bytes(data), offset)
        with _stats.lock:
            _stats.writes += 1

    def xTruncate(self, newsize: int) -> None:
        with self._image.lock:
            self._image.truncate(newsize)

    def xFileSize(self) -> int:
        with self._image.lock:
            return self._image.size

    def xSync(self, flags: int) -> None:
        with self._image.lock:
            if self._image.pending:
                with _stats.lock:
                    _stats.real_syncs += 1
                    cut = _stats.real_syncs == self._cut_at_sync
                if cut:
                    self._image.sync(self, torn=True)
                    os.kill(os.getpid(), signal.SIGKILL)
            written = self._image.sync(self)
            if self._fsync:
                super().xSync(flags)
        with _stats.lock:
            _stats.syncs[self._kind] = _stats.syncs.get(self._kind, 0) + 1
            _stats.synced_bytes += written


class PowerCutVFS(apsw.VFS):
    """The VFS :func:`install` registers; inherits everything but file I/O from ``base``."""

    def __init__(self, base: str, *, fsync: bool = False, cut_at_sync: int = 0) -> None:
        self.base = base
        self.fsync = fsync
        """Also fsync the real file when SQLite syncs (off by default: the simulated cut does not
        need it, and it would only slow the tests down)."""
        self.cut_at_sync = cut_at_sync
        """If set, the power fails *during* the n-th sync that has something to write (counted
        over every file of the process): half of its blocks reach the disk, then the process
        SIGKILLs itself. Makes a cut inside an fsync deterministic."""
        super().__init__(VFS_NAME, base, makedefault=True)

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> apsw.VFSFile:
        if name is None or not flags[0] & _OVERLAID:
            return apsw.VFSFile(self.base, name, flags)
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        return _File(self.base, name, flags, os.path.realpath(path))

    def xDelete(self, filename: str, syncdir: bool) -> None:
        with _images_lock:
            _images.pop(os.path.realpath(filename), None)
        super().xDelete(filename, syncdir)


_real_stat = os.stat
_EXTRA_STAT_FIELDS = (
    "st_atime",
    "st_mtime",
    "st_ctime",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
    "st_blksize",
    "st_blocks",
    "st_rdev",
)


def _stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
    """``os.stat`` that reports the size the process sees (the page cache's, not the disk's) for
    files with an image: ekv decides when to checkpoint from the WAL's ``st_size``."""
    result = _real_stat(path, *args, **kwargs)
    if _images and isinstance(path, str | os.PathLike) and kwargs.get("dir_fd") is None:
        image = _images.get(os.path.realpath(path))
        if image is not None and image.size != result.st_size and image.identity == (result.st_dev, result.st_ino):
            fields = list(result[:10])
            fields[6] = image.size
            extra = {name: getattr(result, name) for name in _EXTRA_STAT_FIELDS if hasattr(result, name)}
            return os.stat_result(fields, extra)
    return result


def install(*, fsync: bool = False, cut_at_sync: int = 0) -> PowerCutVFS:
    """Make the power-cut VFS this process's default SQLite VFS (idempotent). Call it before the
    first connection is opened: connections opened earlier keep their VFS.

    Also makes ``os.stat`` (and so ``os.path.getsize``, ``Path.stat``) report the sizes the
    process sees for the files the VFS holds images of, as the page cache would."""
    global _vfs
    if _vfs is None:
        base = apsw.vfs_names()[0]  # the current default ("unix" on Linux)
        _vfs = PowerCutVFS(base, fsync=fsync, cut_at_sync=cut_at_sync)
        os.stat = _stat
    return _vfs


def _env_options() -> dict[str, Any]:
    return {
        "fsync": os.environ.get(ENV + "_FSYNC") == "1",
        "cut_at_sync": int(os.environ.get(ENV + "_CUT_AT_SYNC") or 0),
    }


def install_from_env() -> bool:
    """:func:`install` (with the options of ``EKV_POWERCUT_FSYNC`` and
    ``EKV_POWERCUT_CUT_AT_SYNC``) if ``EKV_POWERCUT=1`` is set; whether the VFS is installed."""
    if os.environ.get(ENV) == "1":
        install(**_env_options())
    return installed()


def installed() -> bool:
    return _vfs is not None


def stats() -> dict[str, Any]:
    """Counters of this process: syncs per file kind, bytes moved to real files, writes seen, and
    the bytes currently pending (what a cut now would lose)."""
    result = _stats.snapshot()
    with _images_lock:
        images = list(_images.values())
    pending = 0
    for image in images:
        with image.lock:
            pending += len(image.blocks) * _BLOCK
    result["pending_bytes"] = pending
    return result


def after_cut(data_dir: Path) -> list[Path]:
    """What a reboot does to a data directory after a power cut: the WAL index (``*-shm``) is
    shared memory and does not survive. Returns the files removed."""
    removed = []
    for path in sorted(Path(data_dir).glob("*-shm")):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def node_prefix() -> list[str]:
    """The ``prefix`` that makes :class:`ekv.testing.cluster.NodeProcess` run under the VFS."""
    return [sys.executable, "-m", "ekv.testing._internal.powercut", "--"]


# -- the command line ------------------------------------------------------------------------------


def _run(argv: Sequence[str]) -> int:
    """Run ``[python] -m MODULE ARGS...`` or ``[python] SCRIPT ARGS...`` in this process."""
    args = list(argv)
    if args and args[0] == "--":
        args = args[1:]
    if args and Path(args[0]).name.startswith("python"):
        args = args[1:]
    if not args:
        raise SystemExit("usage: python -m ekv.testing._internal.powercut -- [python] (-m MODULE | SCRIPT) [ARGS...]")
    install(**_env_options())
    if args[0] == "-m":
        if len(args) < 2:
            raise SystemExit("-m needs a module name")
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(args)
        runpy.run_path(args[0], run_name="__main__")
    return 0


def _writer_args(argv: Sequence[str]) -> argparse.Namespace:
    """The writer's command line (see :func:`writer_main`)."""
    parser = argparse.ArgumentParser(prog="python -m ekv.testing._internal.powercut writer")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--name", default="powercut")
    parser.add_argument("--durability", default="normal")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--pad", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=float, default=0.0)
    parser.add_argument("--cut-at-sync", type=int, default=0, help="cut the power during the n-th sync")
    parser.add_argument(
        "--close-after", type=int, default=0, help="close the store cleanly after this many acknowledgements"
    )
    return parser.parse_args(argv)


def writer_main(argv: Sequence[str]) -> int:
    """A writer for power-cut tests, under the VFS.

    Prints ``opening``, opens the store, prints ``ready <pid> <origin>``, then runs ``--threads``
    threads, each writing its own keys ``t<thread>/<i>`` (``i`` cycling through ``--keys``) with
    the value ``{"n": n, "pad": ...}``, ``n`` counting up from ``--start``; after each ``put``
    returned it prints ``ack <key> <n> <timestamp_ns> <origin>``. A key is written by one thread
    only, so its versions and its ``n`` grow together. ``--checkpoint-every S`` runs ekv's WAL
    checkpoint (the one its checkpointer runs at 32 MiB of WAL) every S seconds regardless of size,
    to put WAL syncs in the middle of a run. ``--close-after N`` closes the store cleanly after N
    acknowledgements (printing ``closing``, then ``closed``). Runs until killed."""
    import ekv
    from ekv.testing import node_of

    args = _writer_args(argv)
    options = _env_options()
    if args.cut_at_sync:
        options["cut_at_sync"] = args.cut_at_sync
    install(**options)
    out = threading.Lock()
    acked = 0
    close_now = threading.Event()

    def emit(line: str) -> None:
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def ack(line: str) -> None:
        nonlocal acked
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            acked += 1
            if args.close_after and acked >= args.close_after:
                close_now.set()

    emit("opening")
    kv = ekv.EKV(args.name, args.data_dir, shards=args.shards, durability=args.durability, codec="json", log=False)
    origin = node_of(kv).store.origin
    emit(f"ready {os.getpid()} {origin}")

    def worker(tid: int) -> None:
        try:
            rng = random.Random(args.seed * 1000 + tid)
            n = args.start
            while True:
                n += 1
                key = f"t{tid}/{rng.randrange(args.keys)}"
                try:
                    version = kv.put(key, {"n": n, "pad": "x" * rng.randrange(args.pad + 1)})
                except ekv.ClosedError:
                    return  # --close-after: the store was closed under this write; not acknowledged
                ack(f"ack {key} {n} {version.timestamp_ns} {version.origin}")
        except BaseException:
            emit("error " + traceback.format_exc().replace("\n", " | "))
            os._exit(3)

    def checkpointer() -> None:
        store = node_of(kv).store
        while not kv.closed:
            time.sleep(args.checkpoint_every)
            with contextlib.suppress(ekv.ClosedError):
                store.checkpoint(min_wal_bytes=0)

    if args.checkpoint_every > 0:
        threading.Thread(target=checkpointer, daemon=True).start()
    for tid in range(args.threads):
        threading.Thread(target=worker, args=(tid,), daemon=True).start()
    if args.close_after:
        close_now.wait()
        emit("closing")
        kv.close()
        emit("closed")
    threading.Event().wait()
    return 0  # pragma: no cover - runs until killed


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "writer":
        return writer_main(args[1:])
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
