"""Bit rot: a value changed on disk behind SQLite's back is detected by its row checksum, never
served, and repaired from a member (or replaced by writing the key).

The damage is real: a byte of the shard file is flipped while the store is closed, which SQLite's
own ``PRAGMA integrity_check`` does not notice (asserted below, as the reason this exists)."""

from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import ekv
from ekv._backup import check
from ekv._core.checksum import RESIDUE, legacy_row_checksum, row_check
from ekv._model import Entry
from ekv._storage import schema
from ekv.testing import node_of, run_gc, wait_until

FAST = {
    "heartbeat_interval": 0.1,
    "heartbeat_timeout": 1.0,
    "anti_entropy_interval": 0.3,
    "reconnect_max": 0.3,
    "log": False,
}
MARKER = b"precious-value-0123456789"


def flip_byte(data_dir: Path, marker: bytes = MARKER, offset: int = 10) -> Path:
    """Flip one bit inside the stored copy of ``marker`` (the store must be closed, so that the
    value lives in the main file, not the WAL). Returns the damaged shard file."""
    hits = []
    for path in sorted(data_dir.glob("*.db")):
        data = path.read_bytes()
        where = data.find(marker)
        if where >= 0:
            hits.append((path, where))
    assert len(hits) == 1, hits
    path, where = hits[0]
    with open(path, "r+b") as f:
        f.seek(where + offset)
        byte = f.read(1)[0]
        f.seek(where + offset)
        f.write(bytes([byte ^ 0x04]))
    return path


def sqlite_says_ok(path: Path) -> bool:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")] == ["ok"]
    finally:
        conn.close()


# -- the checksum itself ----------------------------------------------------------------------------


def test_checksum_covers_every_field_and_tells_tombstones_from_empty_values() -> None:
    base = ("key", 1_700_000_000_000_000_000, "node~1", 42, None, b"value")
    reference = row_check(*base)
    variants = [
        ("kez", *base[1:]),
        (base[0], base[1] + 1, *base[2:]),
        (*base[:2], "node~2", *base[3:]),
        (*base[:3], 43, *base[4:]),
        (*base[:4], 5, base[5]),
        (*base[:5], b"valuf"),
        (*base[:5], None),
    ]
    assert all(row_check(*v) != reference for v in variants)
    assert row_check("k", 1, "o", 1, None, None) != row_check("k", 1, "o", 1, None, b"")


def test_every_single_bit_flip_of_a_value_is_detected() -> None:
    value = bytes(range(64))
    reference = row_check("k", 5, "o", 1, None, value)
    for i, bit in itertools.product(range(len(value)), range(8)):
        damaged = bytearray(value)
        damaged[i] ^= 1 << bit
        assert row_check("k", 5, "o", 1, None, bytes(damaged)) != reference


def test_the_read_check_refuses_every_single_bit_flip_of_key_value_or_record() -> None:
    """What reads run: one chain of crc32 calls over the requested key, the stored value and the
    stored check record, compared with the CRC-32 residue. Every bit of each, flipped alone, fails
    it; the intact row passes."""
    key, value = b"doc/k", bytes(range(40))
    record = row_check(key.decode(), 1_700_000_000_000_000_000, "node~1", 42, 1_800_000_000_000_000_000, value)

    def passes(k: bytes, v: bytes, r: bytes) -> bool:
        return zlib.crc32(r, zlib.crc32(v, zlib.crc32(k, RESIDUE))) == RESIDUE

    assert passes(key, value, record)
    for which in range(3):
        parts = [key, value, record]
        for i, bit in itertools.product(range(len(parts[which])), range(8)):
            damaged = bytearray(parts[which])
            damaged[i] ^= 1 << bit
            flipped = list(parts)
            flipped[which] = bytes(damaged)
            assert not passes(*flipped), (which, i, bit)


def test_a_page_of_rows_checks_as_one_message_and_any_flipped_bit_fails_it() -> None:
    """Scans verify a page with one crc32 over the rows' key || value || record, joined: intact
    rows chain from residue to residue in any order; a flipped bit in any row, first or last,
    breaks the whole page (later rows do not bring the chain back)."""
    rows = [
        f"k{i}".encode() + bytes([i]) * i + row_check(f"k{i}", 10 + i, "o~1", i, None, bytes([i]) * i)
        for i in range(12)
    ]
    assert zlib.crc32(b"".join(rows), RESIDUE) == RESIDUE
    assert zlib.crc32(b"".join(reversed(rows)), RESIDUE) == RESIDUE
    for row_index in (0, 5, 11):
        for i, bit in itertools.product(range(len(rows[row_index])), range(8)):
            damaged = bytearray(rows[row_index])
            damaged[i] ^= 1 << bit
            page = [*rows[:row_index], bytes(damaged), *rows[row_index + 1 :]]
            assert zlib.crc32(b"".join(page), RESIDUE) != RESIDUE, (row_index, i, bit)


# -- one node ----------------------------------------------------------------------------------------


@pytest.fixture
def damaged_store(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    data_dir = tmp_path / "data"
    with ekv.EKV("bits", data_dir, shards=4, log=False) as kv:
        kv.put("doc/precious", MARKER)
        for i in range(20):
            kv.put(f"doc/other{i:02}", i)
    path = flip_byte(data_dir)
    assert sqlite_says_ok(path), "SQLite's own check should not see a flipped bit in a value"
    yield data_dir, path


def test_a_flipped_bit_is_refused_on_every_read_path(damaged_store: tuple[Path, Path]) -> None:
    data_dir, _ = damaged_store
    with ekv.EKV("bits", data_dir, shards=4, log=False) as kv:
        with pytest.raises(ekv.ChecksumError) as caught:
            kv.get("doc/precious")
        assert caught.value.key == "doc/precious"
        assert isinstance(caught.value, ekv.CorruptionError)
        assert "checksum" in str(caught.value)
        with pytest.raises(ekv.ChecksumError):
            kv.lookup("doc/precious")
        with pytest.raises(ekv.ChecksumError):
            kv.scan("doc/")
        with pytest.raises(ekv.ChecksumError):
            list(kv.iter("doc/"))
        # Keys are listed without reading values; everything else still reads.
        assert "doc/precious" in kv.keys("doc/")
        assert kv.get("doc/other03") == 3
        assert kv.scan("doc/other") == {f"doc/other{i:02}": i for i in range(20)}
        damaged = [key for shard in kv.info()["shards"] for key in shard["damaged_keys"]]
        assert damaged == ["doc/precious"]
        assert kv.metrics()["ekv_damaged_keys"] == 1


def test_damage_is_remembered_and_cleared_by_writing_the_key(damaged_store: tuple[Path, Path]) -> None:
    data_dir, _ = damaged_store
    with ekv.EKV("bits", data_dir, shards=4, log=False) as kv, pytest.raises(ekv.ChecksumError):
        kv.get("doc/precious")
    with ekv.EKV("bits", data_dir, shards=4, log=False) as kv:
        assert [k for s in kv.info()["shards"] for k in s["damaged_keys"]] == ["doc/precious"]
        kv.put("doc/precious", "rewritten")
        assert kv.get("doc/precious") == "rewritten"
        assert all(not s["damaged_keys"] for s in kv.info()["shards"])
    with ekv.EKV("bits", data_dir, shards=4, log=False) as kv:
        assert kv.get("doc/precious") == "rewritten"
        kv.delete("doc/other01")


def test_deleting_a_damaged_key_replaces_it(damaged_store: tuple[Path, Path]) -> None:
    data_dir, _ = damaged_store
    with ekv.EKV("bits", data_dir, shards=4, log=False) as kv:
        with pytest.raises(ekv.ChecksumError):
            kv.get("doc/precious")
        sub = kv.subscribe("doc/precious")
        kv.delete("doc/precious")
        (event,) = sub.get(timeout=10)
        assert event.type == "delete" and event.value is None  # the damaged value is never handed out
        assert kv.get("doc/precious") is None
        assert "doc/precious" not in kv.keys("doc/")


def test_damage_keeps_only_the_damaged_key_off_the_fast_path(damaged_store: tuple[Path, Path]) -> None:
    """One damaged row must not slow a whole shard down: writes to its other keys still commit as
    the single upsert statement (no BEGIN/COMMIT), alone or as a group; only a write to the
    damaged key runs in a transaction, which deletes the damaged row first and clears its record.
    Observed by tracing the statements the shard's writer runs."""
    import threading

    from ekv._core.keys import shard_of

    data_dir, _ = damaged_store
    with ekv.EKV("bits", data_dir, shards=4, log=False) as kv:
        with pytest.raises(ekv.ChecksumError):
            kv.get("doc/precious")  # the read finds the damage and records it
        store = node_of(kv).store
        (shard,) = [s for s in store.shards if s.damaged]
        others = [k for k in (f"doc/new{i}" for i in range(200)) if shard_of(k.encode(), 4) == shard.index][:4]
        statements: list[str] = []

        def trace(_cur: Any, sql: str, _bindings: Any) -> bool:
            statements.append(sql.strip().split()[0].upper())
            return True

        shard._conn.exec_trace = trace
        kv.put(others[0], "alone")  # the uncontended path (Shard.run)
        assert statements == ["INSERT"]
        statements.clear()

        # a group (Shard.commit): hold the writer until three writes are queued behind it
        release, started = threading.Event(), threading.Event()
        holder = threading.Thread(target=shard.run_exclusive, args=(lambda _cur: (started.set(), release.wait(30)),))
        holder.start()
        assert started.wait(30)
        writers = [threading.Thread(target=kv.put, args=(k, "grouped")) for k in others[1:]]
        for writer in writers:
            writer.start()
        wait_until(lambda: len(shard._committer._queue) == 3)
        release.set()
        for thread in [holder, *writers]:
            thread.join(30)
        assert statements == ["INSERT"]  # one multi-row upsert for the group, nothing else
        statements.clear()

        kv.put("doc/precious", "replaced")
        assert statements[0] == "BEGIN" and statements[-1] == "COMMIT"
        assert "DELETE" in statements
        assert kv.get("doc/precious") == "replaced"
        assert not shard.damaged
        assert {k: kv.get(k) for k in others} == {others[0]: "alone", **{k: "grouped" for k in others[1:]}}
    with ekv.EKV("bits", data_dir, shards=4, log=False) as kv:
        assert kv.get("doc/precious") == "replaced"
        assert all(not s["damaged_keys"] for s in kv.info()["shards"])


def test_a_group_replacing_a_damaged_key_commits_like_any_other(damaged_store: tuple[Path, Path]) -> None:
    """Every group goes through one commit (Shard._commit_group), fast path or not: a group that
    replaces a damaged key alongside a remote apply and another local write still queues its
    local writes for replication in order, delivers every event, clears the damage and keeps the
    sequence counter gapless, exactly as a fast-path write does."""
    import pickle
    import threading

    from ekv._core.keys import shard_of

    data_dir, _ = damaged_store
    with ekv.EKV("bits", data_dir, shards=4, log=False) as kv:
        with pytest.raises(ekv.ChecksumError):
            kv.get("doc/precious")
        store = node_of(kv).store
        (shard,) = [s for s in store.shards if s.damaged]
        mine, remote = [k for k in (f"doc/g{i}" for i in range(400)) if shard_of(k.encode(), 4) == shard.index][:2]
        sent: list[tuple[int, list[Entry]]] = []
        shard.outbox = lambda index, entries: sent.append((index, entries))
        sub = kv.subscribe("doc/")
        oseq = shard.oseq
        kv.put(mine, "fast")  # the fast path, for reference
        assert [(i, [e.key for e in es]) for i, es in sent] == [(shard.index, [mine])]
        sent.clear()

        release, started = threading.Event(), threading.Event()
        holder = threading.Thread(target=shard.run_exclusive, args=(lambda _cur: (started.set(), release.wait(30)),))
        holder.start()
        assert started.wait(30)
        peer = Entry(remote, 1, "peer", 1, None, pickle.dumps("from-a-peer"))
        steps = [
            lambda: kv.put("doc/precious", "replaced"),
            lambda: store.apply_shard(shard.index, [peer]),
            lambda: kv.put(mine, "grouped"),
        ]
        threads = []
        for n, step in enumerate(steps, 1):
            thread = threading.Thread(target=step)
            thread.start()
            threads.append(thread)
            wait_until(lambda n=n: len(shard._committer._queue) == n)  # keep the queue in this order
        release.set()
        for thread in [holder, *threads]:
            thread.join(30)

        assert [(i, [(e.key, e.oseq) for e in es]) for i, es in sent] == [
            (shard.index, [("doc/precious", oseq + 2), (mine, oseq + 3)])
        ]
        assert shard.oseq == oseq + 3 and not shard.damaged
        events: list[ekv.Event] = []
        wait_until(lambda: bool(events.extend(sub.get(timeout=0.1))) or len(events) >= 4)
        assert [(e.type, e.key, e.value) for e in events] == [
            ("put", mine, "fast"),
            ("put", "doc/precious", "replaced"),
            ("put", remote, "from-a-peer"),
            ("put", mine, "grouped"),
        ]
        assert kv.get("doc/precious") == "replaced" and kv.get(remote) == "from-a-peer"
    with ekv.EKV("bits", data_dir, shards=4, log=False) as kv:
        assert all(not s["damaged_keys"] for s in kv.info()["shards"])


def test_local_and_remote_rows_are_built_by_one_builder(tmp_path: Path) -> None:
    """Local writes and remote applies store rows built by schema.kv_row, the one definition of a
    stored row (column order, deleted_at, checksum): read back raw, every row is exactly it."""
    import pickle

    with ekv.EKV("rows", tmp_path / "d", shards=1, log=False) as kv:
        kv.put("local/put", "v", ttl=3600)
        kv.put("local/deleted", "v")
        kv.delete("local/deleted")
        now = time.time_ns()
        node_of(kv).store.apply(
            [
                Entry("remote/put", now, "peer", 1, None, pickle.dumps("x")),
                Entry("remote/expired", now, "peer", 2, now - 1, pickle.dumps("y")),
                Entry("remote/deleted", now, "peer", 3, None, None),
            ]
        )
        (path,) = tmp_path.glob("d/*.db")
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            rows = {
                r[0]: r
                for r in conn.execute("SELECT key, ts, origin, oseq, expires_at, deleted_at, value, crc FROM kv")
            }
        finally:
            conn.close()
    assert sorted(rows) == sorted(["local/put", "local/deleted", "remote/put", "remote/expired", "remote/deleted"]), (
        rows
    )
    for key, row in rows.items():
        assert row == schema.kv_row(*row[:5], row[6]), key
    assert rows["local/deleted"][5] == rows["local/deleted"][1]  # a delete dies at its timestamp
    assert rows["remote/deleted"][5] == rows["remote/deleted"][1]
    assert rows["remote/expired"][5] == now - 1 and rows["remote/expired"][6] is None  # at its expiry
    assert rows["local/put"][5] is None and rows["remote/put"][5] is None


def test_offline_check_reports_the_damaged_key(damaged_store: tuple[Path, Path]) -> None:
    data_dir, path = damaged_store
    problems, _ = check(data_dir)
    assert len(problems) == 1 and "doc/precious" in problems[0] and path.name in problems[0]


def test_gc_does_not_launder_a_damaged_expiring_value(tmp_path: Path) -> None:
    clock = ekv.testing.FakeClock()
    data_dir = tmp_path / "data"
    with ekv.EKV("bits", data_dir, shards=2, log=False, clock=clock) as kv:
        kv.put("s/precious", MARKER, ttl=60)
        kv.put("s/fine", "x", ttl=60)
    flip_byte(data_dir)
    with ekv.EKV("bits", data_dir, shards=2, log=False, clock=clock) as kv:
        clock.advance(120)
        run_gc(kv)
        assert kv.get("s/fine") is None
        with pytest.raises(ekv.ChecksumError):
            node_of(kv).store.entry("s/precious")
        assert [k for s in kv.info()["shards"] for k in s["damaged_keys"]] == ["s/precious"]
        run_gc(kv)  # the damaged row is left alone, and does not stall later passes


# -- upgrade from schema 1 ---------------------------------------------------------------------------


def _downgrade_to_schema_1(data_dir: Path) -> None:
    for path in data_dir.glob("*.db"):
        conn = apsw.Connection(str(path))
        conn.execute("ALTER TABLE kv DROP COLUMN crc; DROP TABLE damaged; PRAGMA user_version = 1;")
        conn.execute("UPDATE meta SET value = 1 WHERE key = 'schema_version'")
        conn.close()


def test_a_schema_1_store_is_upgraded_in_place_with_checksums(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with ekv.EKV("old", data_dir, shards=2, log=False) as kv:
        for i in range(50):
            kv.put(f"k{i}", i, ttl=3600 if i % 2 else None)
        kv.delete("k0")
    _downgrade_to_schema_1(data_dir)
    with pytest.raises(ekv.DataDirError, match="schema version 1"):
        _open_readonly(data_dir)
    with ekv.EKV("old", data_dir, shards=2, log=False) as kv:
        assert kv.scan("k") == {f"k{i}": i for i in range(1, 50)}
    for path in data_dir.glob("*.db"):
        conn = apsw.Connection(str(path))
        assert conn.execute("PRAGMA user_version").get == schema.SCHEMA_VERSION
        rows: list[Any] = conn.execute(f"SELECT {schema.ROW_COLUMNS} FROM kv").fetchall()
        assert rows and all(row[6] == row_check(*row[:6]) for row in rows)
        conn.close()
    assert check(data_dir)[0] == []


def _downgrade_to_schema_3(data_dir: Path, damage: str) -> None:
    """Rewrite a store as schema 3 wrote it: integer checksums in ``kv.crc``. The row of key
    ``damage`` gets its value changed afterwards (bit rot under the old layout)."""
    for path in data_dir.glob("*.db"):
        conn = apsw.Connection(str(path))
        rows: list[Any] = conn.execute(f"SELECT {schema.ROW_COLUMNS} FROM kv").fetchall()
        with conn:
            for row in rows:
                conn.execute("UPDATE kv SET crc = ? WHERE key = ?", (legacy_row_checksum(*row[:6]), row[0]))
            conn.execute("UPDATE kv SET value = x'00' WHERE key = ?", (damage,))
            conn.execute("PRAGMA user_version = 3")
            conn.execute("UPDATE meta SET value = 3 WHERE key = 'schema_version'")
        conn.close()


def test_a_schema_3_store_is_upgraded_in_place_without_laundering_damage(tmp_path: Path) -> None:
    """Schema 3 kept an integer checksum; schema 4 a check record. The upgrade verifies every row
    against the old checksum first: good rows get a record that verifies, a row damaged before the
    upgrade gets one that never does (it is still refused, then found by ``ekv check``)."""
    data_dir = tmp_path / "data"
    with ekv.EKV("old", data_dir, shards=2, log=False) as kv:
        for i in range(50):
            kv.put(f"k{i}", i, ttl=3600 if i % 2 else None)
        kv.delete("k0")
    _downgrade_to_schema_3(data_dir, damage="k7")
    with pytest.raises(ekv.DataDirError, match="schema version 3"):
        _open_readonly(data_dir)
    with ekv.EKV("old", data_dir, shards=2, log=False) as kv:
        assert kv.get("k8") == 8 and kv.get("k9") == 9 and kv.get("k0") is None
        with pytest.raises(ekv.ChecksumError):
            kv.get("k7")
        with pytest.raises(ekv.ChecksumError):
            kv.scan("k")
        assert kv.get_many([f"k{i}" for i in range(8, 50)]) == {f"k{i}": i for i in range(8, 50)}
    for path in data_dir.glob("*.db"):
        conn = apsw.Connection(str(path))
        assert conn.execute("PRAGMA user_version").get == schema.SCHEMA_VERSION == 4
        rows = conn.execute(f"SELECT {schema.ROW_COLUMNS} FROM kv").fetchall()
        assert all((row[6] == row_check(*row[:6])) == (row[0] != "k7") for row in rows)
        conn.close()
    problems, _ = check(data_dir)
    assert len(problems) == 1 and "k7" in problems[0]


def test_reads_take_visibility_from_the_verified_record_not_the_expiry_column(tmp_path: Path) -> None:
    """The ``expires_at`` column is for SQL (GC's index); what a read serves is decided by the
    expiry in the verified check record. A changed column can neither bring an expired value back
    nor hide a live one from get, get_many, scan or iter."""
    clock = ekv.testing.FakeClock()
    data_dir = tmp_path / "data"
    with ekv.EKV("bits", data_dir, shards=1, log=False, clock=clock) as kv:
        kv.put("s/short", "x", ttl=10)
        kv.put("s/long", "y", ttl=3600)
    (path,) = data_dir.glob("*.db")
    conn = apsw.Connection(str(path))
    conn.execute("UPDATE kv SET expires_at = expires_at + 3600000000000 WHERE key = 's/short'")
    conn.execute("UPDATE kv SET expires_at = 1 WHERE key = 's/long'")
    conn.close()
    with ekv.EKV("bits", data_dir, shards=1, log=False, clock=clock, gc_interval=3600) as kv:
        clock.advance(60)
        assert kv.scan("s/") == {"s/long": "y"}
        assert list(kv.iter("s/")) == [("s/long", "y")]
        assert kv.get_many(["s/short", "s/long"]) == {"s/long": "y"}
        assert kv.get("s/short") is None and kv.get("s/long") == "y"


def _open_readonly(data_dir: Path) -> None:
    from ekv._storage.store import ShardedStore

    ShardedStore.open_readonly(data_dir).close()


# -- a cluster repairs ------------------------------------------------------------------------------


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., ekv.EKV]]:
    opened: list[ekv.EKV] = []

    def _make(directory: str, **options: Any) -> ekv.EKV:
        options = {**FAST, "listen": "127.0.0.1:0", "shards": 2, **options}
        kv = ekv.EKV("c", tmp_path / directory, **options)
        opened.append(kv)
        return kv

    yield _make
    for kv in opened:
        kv.close()


def _damaged(kv: ekv.EKV) -> list[str]:
    return [key for shard in kv.info()["shards"] for key in shard["damaged_keys"]]


def _reads(kv: ekv.EKV, key: str, want: object) -> bool:
    try:
        return bool(kv.get(key) == want)
    except ekv.ChecksumError:
        return False


def test_a_damaged_value_is_repaired_from_a_member_after_a_read_finds_it(
    make: Callable[..., ekv.EKV], tmp_path: Path
) -> None:
    a = make("a")
    b = make("b", peers=[a.listen_address])
    b.put("doc/precious", MARKER)
    wait_until(lambda: a.get("doc/precious") == MARKER)
    b.close()
    flip_byte(tmp_path / "b")
    b = make("b", peers=[a.listen_address])
    with pytest.raises(ekv.ChecksumError):  # nothing else reads the row: this read finds the damage
        b.get("doc/precious")
    wait_until(lambda: _reads(b, "doc/precious", MARKER) and not _damaged(b), timeout=30)
    assert b.metrics()["ekv_replication_repair_pulls_total"] >= 1
    assert b.metrics()["ekv_damaged_keys"] == 0


def test_sync_never_sends_a_damaged_row_and_the_cluster_heals_it(make: Callable[..., ekv.EKV], tmp_path: Path) -> None:
    """A holds a damaged row; C joins with A alone, so its first sync is read from A: the row is
    withheld (and so is A's vector: C must not believe it has that write). When B, holding a good
    copy of the same version, joins, A repairs itself and C gets the key."""
    a = make("a")
    a.put("doc/precious", MARKER)
    for i in range(10):
        a.put(f"doc/{i}", i)
    a.close()
    flip_byte(tmp_path / "a")
    a = make("a")
    c = make("c", peers=[a.listen_address])
    wait_until(lambda: all(c.get(f"doc/{i}") == i for i in range(10)))
    wait_until(lambda: _damaged(a) == ["doc/precious"])
    assert c.get("doc/precious") is None
    b = make("b")
    node_of(b).store.apply([_good_entry(a)])  # the good copy a member would hold
    b.connect(a.listen_address)
    wait_until(lambda: _reads(a, "doc/precious", MARKER) and not _damaged(a), timeout=30)
    wait_until(lambda: c.get("doc/precious") == MARKER, timeout=30)
    assert c.lookup("doc/precious") == a.lookup("doc/precious") == b.lookup("doc/precious")


def _good_entry(a: ekv.EKV) -> Entry:
    """The entry A stored before the damage: the damaged row's version (intact: the flipped
    bit is in the value) with the original value."""
    store = node_of(a).store
    (shard,) = [s for s in store.shards if s.damaged]
    ts, origin, oseq = shard.damaged["doc/precious"]
    return Entry("doc/precious", ts, origin, oseq, None, store.config.codec.dumps(MARKER))
