"""The sharded store: every shard of a data directory behind one key-value interface.

Writes are routed to the shard that owns the key (:func:`ekv._core.keys.shard_of`) and go
through that shard's group commit. This module opens and closes the store (identity, locking,
arming the shards), routes writes and remote applies, runs GC passes and checkpoints; the
reading side (per-thread readers, point and prefix reads) is :mod:`ekv._storage.reads`, the base
class of :class:`ShardedStore`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from zlib import crc32

import apsw

from ekv._codec import BUILTIN_CODECS, Undecodable, codec_name
from ekv._config import Config
from ekv._core.clock import HybridClock
from ekv._core.keys import check_key, shard_of
from ekv._errors import ConfigError, CorruptionError, DataDirError, DiskFullError
from ekv._log import NodeLog
from ekv._model import Entry, Version
from ekv._storage import schema, shardfile
from ekv._storage.acceptor import collect
from ekv._storage.commit import Committer
from ekv._storage.datadir import MANIFEST_NAME, DataDir, Manifest, check_codec, new_incarnation, new_node_id
from ekv._storage.gc import EXPIRE_BATCH, PURGE_BATCH, GcReport, expire_batch, finish_gc, purge_batch
from ekv._storage.procs import Slot, live_slots, opening, slot_alive
from ekv._storage.reads import StoreReads
from ekv._storage.shard import NO_EVENTS, EventSink, Shard
from ekv._storage.sqlite import check_sqlite_version, open_connection, raise_storage_error
from ekv._storage.writers import Writers

__all__ = ["GcReport", "ShardedStore"]

_open_stores: weakref.WeakSet[ShardedStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Connections, locks and threads do not survive fork(): a store inherited by a child process
    # is closed there, and reopened in place on its first use (ShardedStore.reopen_in_child).
    for store in list(_open_stores):
        store._forked = True
        store._closed = True


os.register_at_fork(after_in_child=_after_fork_in_child)


_MAX_FORMER_IDS = 16  # node ids a re-identified directory remembers


def consensus_token(config: Config) -> str:
    """The settings of linearizable operations (SPEC 13) as one word for this open's slot record:
    ``cluster_size`` as given, ``role`` and a hash of ``consistent_prefixes``."""
    prefixes = hashlib.sha256(json.dumps(sorted(config.consistent_prefixes)).encode()).hexdigest()[:16]
    return f"{config.cluster_size or '-'}/{config.role}/{prefixes}"


def _check_consensus(config: Config, token: str) -> None:
    """Refuse to open with other linearizable-operation settings than the live opens' (a
    ConfigError naming the option). The processes of a data directory are one voter: they must
    declare the same ``consistent_prefixes`` (else one would write plainly what another writes
    linearizably) and, when they declare any, the same ``cluster_size`` and ``role`` (else one
    could run single-voter transactions on keys its node process agrees among several voters)."""
    mine = token.split("/")
    for info in live_slots(config.data_dir):
        theirs = info.consensus.split("/")
        if not info.consensus or len(theirs) != 3 or theirs == mine:
            continue
        if theirs[2] != mine[2]:
            option = "consistent_prefixes"
        elif not config.consistent_prefixes:
            continue
        else:
            option = "cluster_size" if theirs[0] != mine[0] else "role"
        raise ConfigError(
            f"{option} differs from that of the process {info.pid} that has {str(config.data_dir)!r} open; "
            "every process of a data directory must give the same consistent_prefixes and, with some, the same "
            "cluster_size and role (the command line writes to such a directory through --node HOST:PORT)"
        )


class _Identity:
    __slots__ = ("former_ids", "legacy_origin", "name", "node_id", "origin", "shards")

    def __init__(self, name: str, manifest: Manifest, shards: int, origin: str) -> None:
        self.name = name
        self.node_id = manifest.node_id
        self.shards = shards
        self.origin = origin
        self.legacy_origin = manifest.legacy_origin
        self.former_ids = manifest.former_ids


class ShardedStore(StoreReads):
    """All shards of one data directory. Create with :meth:`open`; thread-safe."""

    def __init__(self, config: Config, datadir: DataDir, manifest: Manifest, clock: HybridClock) -> None:
        self.config = config
        self.log = NodeLog(config.name, config.log, "ekv.storage")
        self.datadir = datadir
        self.manifest = manifest
        self.node_id = manifest.node_id
        self.origin = manifest.legacy_origin
        """The origin of this open's writes, ``node_id~incarnation`` (set by :meth:`open`)."""
        self.clock = clock
        self.shards: list[Shard] = []
        self._count = config.shards
        self._now = config.clock.now_ns
        self._synchronous = "FULL" if config.durability == "full" else "NORMAL"
        self._tls = threading.local()
        self._readers: weakref.WeakSet[apsw.Connection] = weakref.WeakSet()
        self._checkpointers: dict[int, apsw.Connection] = {}
        self._readers_lock = threading.Lock()
        self._closed = False
        self.reads = 0
        self._readonly = False
        self.created = False
        """True if this open created the data directory's store."""
        self._released = False
        self._forked = False
        self.slot: Slot | None = None
        """This open's registration in the data directory (:mod:`ekv._storage.procs`)."""

    # -- opening and closing -----------------------------------------------------------------

    @classmethod
    def open(
        cls,
        config: Config,
        clock: HybridClock,
        sink: EventSink = NO_EVENTS,
        *,
        new_node_id: str | None = None,
        incarnation: str | None = None,
    ) -> ShardedStore:
        """Open or create the data directory of ``config`` and every shard in it.

        Every open writes under a fresh origin, ``node_id~incarnation`` (``incarnation`` fixes
        it, and ``new_node_id`` the identity of a store being created, for the simulator's
        reproducible runs; otherwise both are random). A crash can take the last local sequence
        numbers back with the WAL while members hold those writes, and two copies of one data
        directory can run at once: with a fresh origin per open, no (origin, oseq) dot and no
        version is ever issued twice, whatever happened to the files before.

        A full disk does not prevent opening: reads work, and writes fail with
        :class:`~ekv.DiskFullError` until there is space again."""
        check_sqlite_version()
        datadir = DataDir(config.data_dir)
        datadir.ensure_exists()
        datadir.attach()
        slot: Slot | None = None
        try:
            with opening(config.data_dir):
                manifest, create = shardfile.load_or_plan(datadir, config, new_node_id)
                store = cls(config, datadir, manifest, clock)
                store.created = create
                store.origin = f"{manifest.node_id}~{incarnation or new_incarnation()}"
                token = consensus_token(config)
                _check_consensus(config, token)
                slot = store.slot = Slot.register(config.data_dir, store.origin, "attached", token)
                identity = _Identity(config.name, manifest, config.shards, store.origin)
                writers = Writers(slot.id, lambda other: slot_alive(config.data_dir, other))
                store._open_shards(identity, sink, create, writers)
        except BaseException:
            if slot is not None:
                slot.close()
            datadir.unlock()
            raise
        _open_stores.add(store)
        return store

    def reopen_in_child(self, clock: HybridClock, sink: EventSink) -> None:
        """Open the data directory again, in place, in a child made by ``fork()`` from a process
        that had it open: a new open (new origin, slot, connections, group commits), the same
        object, so that every reference to it stays valid. The parent's connections are closed
        first, without a checkpoint (``ekv._storage.sqlite._close_inherited``)."""
        if not self._forked:
            return
        fresh = ShardedStore.open(self.config, clock, sink)
        revive = self.revive
        self.__dict__.update(fresh.__dict__)
        self.revive = revive
        _open_stores.discard(fresh)
        _open_stores.add(self)

    def _open_shards(self, identity: _Identity, sink: EventSink, create: bool, writers: Writers) -> None:
        config, datadir = self.config, self.datadir
        try:
            for index in range(config.shards):
                self.shards.append(
                    Shard.open(
                        index,
                        str(datadir.shard_path(index)),
                        create=create,
                        identity=identity,
                        clock=self.clock,
                        sink=sink,
                        committer=Committer(),
                        synchronous=self._synchronous,
                        log=self.log,
                        writers=writers,
                    )
                )
            if create:
                datadir.write_manifest(self.manifest)
            elif not all(shard.was_clean for shard in self.shards) and self.alone():
                self.log.info("%s was not shut down cleanly", config.data_dir)
            self._arm_shards()
        except BaseException:
            for shard in self.shards:
                shard.abort()
            raise

    def alone(self) -> bool:
        """Whether this is the only live open of the data directory (in any process)."""
        own = self.slot.id if self.slot is not None else ""
        return all(info.slot == own for info in live_slots(self.config.data_dir))

    def _arm_shards(self) -> None:
        now = self.config.clock.now_ns()
        full: list[str] = []
        for shard in self.shards:
            try:
                shard.arm(now)
            except DiskFullError:
                full.append(shard.path)
        if full:
            self.log.warning(
                "the disk holding %s is full: the store is open for reads; writes fail with DiskFullError "
                "until space is freed",
                self.config.data_dir,
            )

    def reidentify(self, *, node_id: str | None = None, incarnation: str | None = None) -> str:
        """Take a new node id (and origin), keeping the data: the cluster found another live
        process using this directory's node id (a copy of this data directory). The manifest is
        written first and remembers the old id, then each shard switches in one transaction
        (:meth:`Shard.reidentify`); a shard that cannot (a full disk) goes on writing under
        this open's origin, which is still unique, and switches at its next open. Returns the
        new node id. (``node_id`` and ``incarnation`` fix the new identity: the simulator's
        reproducible runs.)"""
        node_id = node_id or new_node_id()
        origin = f"{node_id}~{incarnation or new_incarnation()}"
        former = (self.node_id, *(i for i in self.manifest.former_ids if i != self.node_id))[:_MAX_FORMER_IDS]
        manifest = replace(self.manifest, node_id=node_id, former_ids=former)
        self.datadir.write_manifest(manifest)
        self.manifest, self.node_id, self.origin = manifest, node_id, origin
        for shard in self.shards:
            try:
                shard.reidentify(node_id, origin)
            except DiskFullError:
                self.log.warning("%s keeps its old identity until it is reopened (disk full)", shard.path)
        return node_id

    @classmethod
    def open_readonly(cls, path: Path, *, lock: bool = True, codec: object = None) -> ShardedStore:
        """Open an existing data directory for reading only: no writer connections, no GC, no
        ``last_active_at`` refresh, nothing written. ``lock`` takes the directory's lock (so a
        running node is reported as :class:`~ekv.LockedError`); ``backup`` reads without it.

        ``codec`` None uses the codec recorded in the directory; one that ekv cannot build (a
        custom codec's name) opens the store, but decoding a value raises
        :class:`~ekv.DecodeError` saying so. A codec given must match the recorded one
        (:class:`~ekv.ConfigError`).

        Raises :class:`~ekv.DataDirError` if the directory holds no store."""
        check_sqlite_version()
        datadir = DataDir(path)
        if not path.is_dir():
            raise DataDirError(f"{str(path)!r} is not a directory")
        if lock:
            datadir.attach()
        try:
            manifest = datadir.read_manifest()
            if manifest is None:
                raise DataDirError(f"{str(path)!r} holds no ekv store (no {MANIFEST_NAME})")
            if codec is None:
                codec = manifest.codec if manifest.codec in BUILTIN_CODECS else Undecodable(manifest.codec)
            config = Config.create(manifest.name, path, shards=manifest.shards, log=False, codec=codec)
            check_codec(path, manifest.codec, codec_name(config.codec))
            store = cls(config, datadir, manifest, HybridClock(config.clock))
            store._readonly = True
            for index in range(manifest.shards):
                shard_path = datadir.shard_path(index)
                if not shard_path.exists():
                    raise CorruptionError(f"shard file {str(shard_path)!r} is missing")
            store._cursors()  # opens and so checks every shard file
            for index, cur in enumerate(store._cursors()):
                app_id = cur.execute(schema.APPLICATION_ID_GET).get
                if app_id != schema.APPLICATION_ID:
                    raise CorruptionError(f"{datadir.shard_path(index)} is not an ekv shard file")
                version = cur.execute(schema.USER_VERSION_GET).get
                if version != schema.SCHEMA_VERSION:
                    raise DataDirError(
                        f"{datadir.shard_path(index)} has schema version {version}; this ekv reads "
                        f"{schema.SCHEMA_VERSION}. Open the store once for writing (EKV(...) or `ekv serve`) "
                        "to upgrade it, or use the ekv that wrote it."
                    )
        except BaseException:
            if lock:
                datadir.unlock()
            raise
        return store

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def readonly(self) -> bool:
        return self._readonly

    def last_active_at_ns(self) -> int | None:
        """The oldest ``last_active_at`` of the shards as found when they were opened (None if a
        shard never recorded one)."""
        values = [shard.last_active_at_ns for shard in self.shards]
        if not values or any(v is None for v in values):
            return None
        return min(v for v in values if v is not None)

    def close(self) -> None:
        """Close every shard and reader connection and release the directory. Idempotent."""
        with self._readers_lock:
            if self._closed and (self._forked or self._released):
                return  # already closed, or the parent process owns the files: touch nothing
            self._closed = True
            if self._forked:
                return
            self._released = True
            if not self.shards and not self._readonly:
                return
        with self._readers_lock:
            readers = list(self._readers) + list(self._checkpointers.values())
            self._readers = weakref.WeakSet()
            self._checkpointers = {}
        for conn in readers:
            try:
                conn.close()
            except apsw.Error as exc:  # pragma: no cover - close of a reader
                self.log.verbose("closing a reader failed: %s", exc)
        # self.shards stays populated: a write racing with close finds a closed shard and raises
        # ClosedError from there.
        last_out = self.alone() if self.shards else True
        for shard in self.shards:
            shard.last_out = last_out
            shard.close()
        if self.slot is not None:
            self.slot.close()
        self.datadir.unlock()
        _open_stores.discard(self)

    def write(self, key: str, encoded: bytes, blob: bytes | None, expires_at: int | None) -> Version:
        """Write ``blob`` under ``key`` (None: a tombstone), expiring at ``expires_at`` (ns, or
        None), in the shard that owns the key; return the write's version once it is durable.
        ``encoded`` is the key's UTF-8 form, already validated (:func:`ekv._core.keys.check_key`,
        by the value layer :mod:`ekv._values`, which also encodes the value)."""
        if self._closed or self._readonly:
            self._unusable()
        return self.shards[crc32(encoded) % self._count].write(key, blob, expires_at)

    def write_nowait(self, key: str, encoded: bytes, blob: bytes | None, expires_at: int | None) -> Version | None:
        """:meth:`write` if it commits without waiting (:meth:`Shard.write_nowait`), else None."""
        if self._closed or self._readonly:
            return None
        return self.shards[crc32(encoded) % self._count].write_nowait(key, blob, expires_at)

    def write_many(self, items: Sequence[tuple[str, bytes, bytes | None, int | None]]) -> dict[str, Version]:
        """Write ``(key, encoded, blob or None, expires_at)`` items (validated, distinct keys),
        each shard's part as one transaction (:meth:`Shard.write_many`); return each key's
        version, in the order of ``items``. Shards are written one after the other: if one fails,
        its part is not written, the parts already committed stay, and the error is raised."""
        if self._closed or self._readonly:
            self._unusable()
        parts: dict[int, list[tuple[str, bytes | None, int | None]]] = {}
        for key, encoded, blob, expires_at in items:
            parts.setdefault(crc32(encoded) % self._count, []).append((key, blob, expires_at))
        versions: dict[str, Version] = {}
        for index in sorted(parts):
            part = parts[index]
            for (key, _, _), version in zip(part, self.shards[index].write_many(part), strict=True):
                versions[key] = version
        return {item[0]: versions[item[0]] for item in items}  # in the order given

    def touch(self, key: str, encoded: bytes, expires_at: int | None) -> Version | None:
        """Give a visible ``key`` a new expiry (see :meth:`Shard.touch`); None if it is not visible."""
        if self._closed or self._readonly:
            self._unusable()
        return self.shards[crc32(encoded) % self._count].touch(key, expires_at, self._now())

    def apply(self, entries: Sequence[Entry]) -> list[Entry]:
        """Apply versions made elsewhere; return those that won (see :meth:`Shard.apply`)."""
        if self._closed:
            raise self._closed_error()
        by_shard: dict[int, list[Entry]] = {}
        for entry in entries:
            by_shard.setdefault(shard_of(check_key(entry.key), self._count), []).append(entry)
        applied: list[Entry] = []
        for index in sorted(by_shard):
            applied.extend(self.shards[index].apply(by_shard[index]))
        return applied

    def apply_shard(self, index: int, entries: Sequence[Entry], vv: Mapping[str, int] | None = None) -> list[Entry]:
        """Apply entries that all belong to shard ``index`` (checked: an entry of another shard
        raises ValueError) and raise the shard's version vector by ``vv`` in the same
        transaction; return the entries that won."""
        if self._closed:
            raise self._closed_error()
        count = self._count
        for entry in entries:
            if shard_of(check_key(entry.key), count) != index:
                raise ValueError(f"key {entry.key!r:.80} does not belong to shard {index}")
        return self.shards[index].apply(entries, vv)

    # -- garbage collection ------------------------------------------------------------------

    def gc_shard(
        self, index: int, *, now_ns: int, cutoff_ns: int, log_targets: Mapping[str, int] | None = None
    ) -> GcReport:
        """One GC pass over one shard: expire TTL entries (events), purge tombstones that died
        before ``cutoff_ns``, drop the acceptor rows of keys gone since, truncate the change log
        up to ``log_targets`` (per origin; None truncates everything), refresh ``last_active_at``."""
        shard = self.shards[index]
        report = GcReport()
        while True:
            events, count = shard.run_exclusive(lambda cur: expire_batch(shard, cur, now_ns))
            report.expired += count
            if events:
                shard.sink.publish(events)
            if count < EXPIRE_BATCH:
                break
        while True:
            purged = shard.run_exclusive(lambda cur: purge_batch(cur, cutoff_ns))
            report.purged += purged
            if purged < PURGE_BATCH:
                break
        while True:
            dropped = shard.transact(lambda cur, _: collect(cur, cutoff_ns, now_ns, PURGE_BATCH, shard.path))
            report.acceptors += dropped
            if dropped < PURGE_BATCH:
                break
        report.log_truncated = shard.run_exclusive(lambda cur: finish_gc(shard, cur, now_ns, log_targets, cutoff_ns))
        return report

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint(self, min_wal_bytes: int = 32 << 20) -> int:
        """Checkpoint every shard whose WAL is larger than ``min_wal_bytes`` (PASSIVE: never
        blocks readers or the writer). Runs on the node's checkpointer thread, with its own
        connections. Returns how many shards were checkpointed."""
        done = 0
        for index in range(self._count):
            path = str(self.datadir.shard_path(index))
            try:
                size = os.stat(path + "-wal").st_size
            except OSError:
                continue
            if size >= min_wal_bytes and self._checkpoint_shard(index, path):
                done += 1
        return done

    def _checkpoint_shard(self, index: int, path: str) -> bool:
        with self._readers_lock:
            if self._closed:
                return False
            conn = self._checkpointers.get(index)
            if conn is None:
                conn = open_connection(path, create=False, synchronous=self._synchronous)
                self._checkpointers[index] = conn
        try:
            conn.execute(schema.CHECKPOINT_PASSIVE).fetchall()
        except apsw.Error as exc:
            if not self._closed:
                self.log.warning("checkpoint of %s failed: %s", path, exc)
            return False
        return True

    # -- info --------------------------------------------------------------------------------

    def shard_info(self, index: int) -> dict[str, Any]:
        """Counts and change-log state of one shard, read through this thread's reader."""
        if self._closed:
            self._unusable()
        cur = self._cursors()[index]
        try:
            now = self._now()
            live, tombstones, expired, expiring = cur.execute(schema.COUNTS, (now, now)).get
            ranges = cur.execute(schema.LOG_RANGES).fetchall()
            last_active = cur.execute(schema.META_GET, ("last_active_at",)).get
        except apsw.Error as exc:
            raise_storage_error(exc, str(self.datadir.shard_path(index)))
        path = self.datadir.shard_path(index)
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.stat(f"{path}{suffix}").st_size
        return {
            "index": index,
            "path": str(path),
            "keys": live,
            "tombstones": tombstones,
            "expired_pending_gc": expired,
            "with_ttl": expiring - expired,
            "log": {
                "entries": sum(r[3] for r in ranges),
                "origins": {r[0]: {"first": r[1], "last": r[2], "entries": r[3]} for r in ranges},
            },
            "local_seq": self.shards[index].oseq if self.shards else None,
            "damaged_keys": sorted(self.shards[index].damaged) if self.shards else [],
            "last_active_at_ns": last_active,
            "size_bytes": size,
        }
