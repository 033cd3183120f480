"""Online backup and offline checking of a data directory.

``backup`` copies every shard with SQLite's online backup API while the node keeps running: each
shard's copy is a consistent snapshot of that shard (shards are independent, so the copies are
taken one after the other, not at one instant). The destination opens as a data directory, under
a *new* node identity: the source node keeps writing after the backup, and its later writes carry
sequence numbers a restored copy would otherwise issue again for different writes, which members
that already hold them would skip. A restored backup therefore joins as a new member and receives
whatever it lacks from the others.

``check`` verifies what can be verified without changing anything: the manifest, every shard's
SQLite integrity, schema version and identity, and every stored row's checksum (bit rot that
SQLite's own integrity check cannot see).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import apsw

from ekv._storage import schema
from ekv._storage.datadir import MANIFEST_NAME, DataDir, fsync_dir, new_node_id
from ekv._storage.integrity import row_ok
from ekv._storage.sqlite import open_connection, storage_error
from ekv._usererror import UserError

__all__ = ["backup", "check"]


def backup(source: Path, dest: Path, *, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Copy the data directory ``source`` to ``dest`` (new or empty) online."""
    datadir = DataDir(source)
    manifest = datadir.read_manifest()
    if manifest is None:
        raise UserError(f"there is no ekv store in {str(source)!r}")
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{str(dest)!r} is not empty; back up into a new directory")
    dest.mkdir(parents=True, exist_ok=True)
    new_id = new_node_id()
    total_pages = 0
    sources = []
    try:
        for index in range(manifest.shards):
            conn = open_connection(str(datadir.shard_path(index)), create=False, synchronous="NORMAL", reader=True)
            sources.append(conn)
            total_pages += int(conn.execute(schema.PAGE_COUNT).get)
        done = 0
        size = 0
        for index, src in enumerate(sources):
            target = dest / datadir.shard_path(index).name
            out = apsw.Connection(str(target))
            try:
                with out.backup("main", src, "main") as job:
                    while not job.done:
                        job.step(256)
                        if progress is not None:
                            progress(done + (job.page_count - job.remaining), total_pages)
                    done += job.page_count
                # the copy is a new member: never reuse the source's identity (see below)
                out.execute(schema.META_SET, ("node_id", new_id))
                out.execute(schema.CHECKPOINT_TRUNCATE).fetchall()
            finally:
                out.close()
            size += target.stat().st_size
        DataDir(dest).write_manifest(replace(manifest, node_id=new_id))
        for path in dest.iterdir():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(dest)
    except apsw.Error as exc:
        raise storage_error(exc, str(dest)) from exc
    finally:
        for conn in sources:
            conn.close()
    return {"shards": manifest.shards, "bytes": size, "pages": total_pages}


def check(path: Path) -> tuple[list[str], list[str]]:
    """Problems found (empty when healthy) and informational notes. Changes nothing."""
    problems: list[str] = []
    notes: list[str] = []
    datadir = DataDir(path)
    if not path.is_dir():
        return [f"{str(path)!r} is not a directory"], notes
    try:
        manifest = datadir.read_manifest()
    except Exception as exc:
        return [str(exc)], notes
    if manifest is None:
        return [f"{str(path)!r} holds no ekv store (no {MANIFEST_NAME})"], notes
    notes.append(f"instance {manifest.name!r}, node {manifest.node_id}, {manifest.shards} shards")
    for index in range(manifest.shards):
        shard = datadir.shard_path(index)
        if not shard.exists():
            problems.append(f"{shard.name}: missing")
            continue
        try:
            conn = open_connection(str(shard), create=False, synchronous="NORMAL", reader=True)
        except Exception as exc:
            problems.append(f"{shard.name}: cannot open: {exc}")
            continue
        try:
            problems += _check_shard(conn, shard.name, index, manifest.shards, manifest.node_id, notes)
        except apsw.Error as exc:
            problems.append(f"{shard.name}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()
    return problems, notes


def _check_shard(
    conn: apsw.Connection, name: str, index: int, shards: int, node_id: str, notes: list[str]
) -> list[str]:
    problems = []
    app_id = conn.execute(schema.APPLICATION_ID_GET).get
    if app_id != schema.APPLICATION_ID:
        return [f"{name}: not an ekv shard (application_id {app_id:#x})"]
    version = conn.execute(schema.USER_VERSION_GET).get
    if version != schema.SCHEMA_VERSION:
        problems.append(f"{name}: schema version {version}, this ekv reads {schema.SCHEMA_VERSION}")
    meta = {k: v for k, v in conn.execute(schema.META_ALL).fetchall()}
    for key, want in (("shard_index", index), ("shard_count", shards), ("node_id", node_id)):
        if meta.get(key) != want:
            problems.append(f"{name}: {key} is {meta.get(key)!r}, expected {want!r}")
    result = [row[0] for row in conn.execute(schema.INTEGRITY_CHECK).fetchall()]
    if result != ["ok"]:
        problems += [f"{name}: integrity: {line}" for line in result[:20]]
    if version < 2:
        return problems  # no checksums to verify; opening the store for writing upgrades it
    damaged = [row[0] for row in conn.execute(schema.ALL_ROWS) if not row_ok(row)]
    if damaged:
        listed = ", ".join(repr(key) for key in damaged[:20]) + (" ..." if len(damaged) > 20 else "")
        problems.append(
            f"{name}: {len(damaged)} stored version(s) failed their checksum (damaged on disk): {listed}; "
            "a cluster node repairs them from its members, or write/delete the keys"
        )
    recorded = conn.execute(schema.DAMAGED_COUNT).get
    if recorded:
        notes.append(f"{name}: {recorded} key(s) recorded as damaged, waiting for repair")
    rows, tombstones = conn.execute(schema.COUNT_ROWS_AND_TOMBSTONES).get
    notes.append(f"{name}: {'ok, ' if not damaged else ''}{rows - tombstones} live rows, {tombstones} tombstones")
    return problems
