"""The shard file format: creating a shard's schema, verifying that a file is the shard it
should be, upgrading older schemas in place, and reading the local counters back.

Kept apart from :mod:`ekv._storage.shard` (which writes to an open shard) because none of it
runs after a shard is open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import apsw

from ekv._codec import codec_name
from ekv._config import Config
from ekv._errors import CorruptionError
from ekv._log import NodeLog
from ekv._storage import schema
from ekv._storage.datadir import DataDir, Manifest, new_node_id
from ekv._storage.integrity import upgrade_to_2, upgrade_to_4
from ekv._storage.sqlite import transaction

__all__ = [
    "ShardIdentity",
    "initialise",
    "is_abandoned",
    "is_empty",
    "load_or_plan",
    "own_tail",
    "previous_origin",
    "upgrade",
    "verify",
]


class ShardIdentity(Protocol):
    name: str
    node_id: str
    shards: int
    origin: str
    """The origin of this open's writes (``node_id~incarnation``)."""
    legacy_origin: str
    """The origin of a shard that records none (written by ekv 0.1)."""
    former_ids: tuple[str, ...]
    """Node ids the directory had before it re-identified: a shard may still name one."""


def upgrade(conn: apsw.Connection, path: str, log: NodeLog) -> None:
    """Bring a verified shard of an older schema up to :data:`schema.SCHEMA_VERSION`."""
    version = conn.execute(schema.USER_VERSION_GET).get
    if version == 1:
        rows = upgrade_to_2(conn)
        log.info("upgraded %s to schema 2 (%d rows checksummed)", path, rows)
    if version < 3:
        cur = conn.cursor()
        with transaction(cur):
            cur.execute(schema.PAXOS_DDL)
            cur.execute(schema.USER_VERSION_3)
            cur.execute(schema.META_SET, ("schema_version", 3))
        log.info("upgraded %s to schema 3 (the acceptor table)", path)
    if version < 4:
        rows = upgrade_to_4(conn)
        log.info("upgraded %s to schema 4 (%d rows given check records)", path, rows)


def is_empty(cur: apsw.Cursor) -> bool:
    return bool(cur.execute(schema.COUNT_SCHEMA_OBJECTS).get == 0)


def initialise(cur: apsw.Cursor, index: int, identity: ShardIdentity) -> None:
    with transaction(cur):
        cur.execute(schema.DDL)
        cur.execute(schema.APPLICATION_ID_SET)
        cur.execute(schema.USER_VERSION_SET)
        for key, value in (
            ("shard_index", index),
            ("shard_count", identity.shards),
            ("node_id", identity.node_id),
            ("name", identity.name),
            ("schema_version", schema.SCHEMA_VERSION),
        ):
            cur.execute(schema.META_SET, (key, value))


def verify(cur: apsw.Cursor, path: str, index: int, identity: ShardIdentity, app_id: int) -> None:
    if app_id != schema.APPLICATION_ID:
        raise CorruptionError(f"{path} is not an ekv shard file (application_id {app_id:#x}); refusing to touch it")
    version = cur.execute(schema.USER_VERSION_GET).get
    if version > schema.SCHEMA_VERSION:
        raise CorruptionError(
            f"{path} has schema version {version}, newer than this ekv supports ({schema.SCHEMA_VERSION})"
        )
    if version < 1:
        raise CorruptionError(f"{path} has no ekv schema version; it is damaged")
    rows: list[Any] = cur.execute(schema.META_ALL).fetchall()
    meta = {row[0]: row[1] for row in rows}
    expected = {"shard_index": index, "shard_count": identity.shards, "node_id": identity.node_id}
    if meta.get("node_id") in identity.former_ids:
        del expected["node_id"]  # re-identified; the shard takes the new id when it is armed
    for key, want in expected.items():
        if meta.get(key) != want:
            raise CorruptionError(
                f"{path} belongs to another store or shard ({key} is {meta.get(key)!r}, expected {want!r}); "
                "shard files must not be moved between data directories"
            )


def previous_origin(cur: apsw.Cursor, legacy_origin: str) -> str:
    """The origin this shard last wrote under: the one whose sequence counter lives in the log
    and floors rather than in the stored version vector (see ``Shard.arm``)."""
    recorded = cur.execute(schema.META_GET, ("origin",)).get
    return recorded if isinstance(recorded, str) and recorded else legacy_origin


def own_tail(cur: apsw.Cursor, origin: str) -> tuple[int, int]:
    """The last sequence number issued under ``origin`` and the clock floor, from the change
    log, the truncation floors and the values persisted when the log was truncated. (Stores
    written before per-origin floors kept one ``oseq_floor``: the first origin's, the bare node
    id, which has no ``~epoch``.)"""
    oseq_floor = cur.execute(schema.META_GET, (f"oseq_floor/{origin}",)).get or 0
    if "~" not in origin:
        oseq_floor = max(oseq_floor, cur.execute(schema.META_GET, ("oseq_floor",)).get or 0)
    truncated = cur.execute(schema.FLOOR_OF, (origin,)).get or 0
    oseq_floor = max(oseq_floor, truncated)
    hlc_floor = cur.execute(schema.META_GET, ("hlc_floor",)).get or 0
    tail = cur.execute(schema.OWN_LOG_TAIL, (origin,)).get
    if tail is not None:
        oseq_floor = max(oseq_floor, tail[0])
        hlc_floor = max(hlc_floor, tail[1])
    return int(oseq_floor), int(hlc_floor)


def load_or_plan(datadir: DataDir, config: Config, node_id: str | None) -> tuple[Manifest, bool]:
    """The manifest of an existing store, or a new one to create (``create`` True)."""
    manifest = datadir.read_manifest()
    if manifest is not None:
        datadir.check_manifest(manifest, name=config.name, shards=config.shards, codec=codec_name(config.codec))
        for index in range(config.shards):
            path = datadir.shard_path(index)
            if not path.exists():
                raise CorruptionError(
                    f"shard file {str(path)!r} is missing from data_dir; refusing to recreate it empty "
                    "(restore it from a backup, or move the whole data_dir aside to start afresh)"
                )
        return manifest, False
    # No manifest: a new store, unless shard files exist. Files from an interrupted creation
    # (ekv shards holding no rows) are removed; anything else is refused untouched.
    for path in datadir.existing_shard_files():
        if not is_abandoned(path):
            raise CorruptionError(
                f"{str(path)!r} exists but {str(datadir.manifest_path)!r} does not; "
                "this is not an ekv data directory (or its manifest was lost); refusing to overwrite it"
            )
    for path in datadir.existing_shard_files():
        datadir.remove_db_files(path)
    manifest = Manifest(
        name=config.name,
        shards=config.shards,
        node_id=node_id or new_node_id(),
        created_at_ns=config.clock.now_ns(),
        codec=codec_name(config.codec),
    )
    return manifest, True


_JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")


def _rolls_back_to_empty(path: Path) -> bool:
    """True if ``path`` has a hot rollback journal that says the database was empty before the
    interrupted transaction: SQLite would roll it back to an empty file. That is the state a
    power cut inside the very first commit of a new shard leaves (a torn file that ``immutable=1``
    reads as malformed, because it skips the rollback). Header: magic (8 bytes), page count,
    nonce, then the database size in pages before the transaction (big-endian u32 at 16)."""
    try:
        with open(str(path) + "-journal", "rb") as journal:
            header = journal.read(20)
    except FileNotFoundError:
        return False
    return len(header) == 20 and header[:8] == _JOURNAL_MAGIC and int.from_bytes(header[16:20], "big") == 0


def is_abandoned(path: Path) -> bool:
    """True for a shard file left by an interrupted creation: empty, an SQLite file with no
    schema yet, an ekv shard holding no rows, or a torn first commit whose journal rolls it back
    to nothing. Read with ``immutable=1`` so checking a file creates no ``-wal``/``-shm``
    companions."""
    try:
        if path.stat().st_size == 0 or _rolls_back_to_empty(path):
            return True
        uri = "file:" + str(path.resolve()) + "?immutable=1"
        conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            cur = conn.cursor()
            app_id = cur.execute(schema.APPLICATION_ID_GET).get
            if app_id == 0:
                return bool(cur.execute(schema.COUNT_SCHEMA_OBJECTS).get == 0)
            if app_id != schema.APPLICATION_ID:
                return False
            return bool(cur.execute(schema.COUNT_ROWS).get == 0)
        finally:
            conn.close()
    except (apsw.Error, OSError):
        return False
