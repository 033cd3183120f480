"""A group of local writes commits as one transaction: when a statement after the group's upsert
fails, no write of the group is stored, and no dot (origin, oseq) is issued twice.

The failure is a real SQLite one: a trigger planted in the shard file makes exactly the overtake
(the rewrite of a local write that lost LWW to a stored future version) abort, after the group's
upsert has stored the other writes. Before the fix the upsert ran outside a transaction, so its
winners stayed stored while every write reported failure and the sequence counter stayed behind:
the next write reused a stored dot, and a delta sync never sent the first key.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import ekv
from ekv._core.checksum import row_check
from ekv._model import Entry
from ekv._storage import schema
from ekv._storage.sync import SyncSnapshot
from ekv.testing import node_of, wait_until

FUTURE = time.time_ns() + 3600 * 10**9  # a peer whose clock ran an hour ahead
FAULT = (
    "CREATE TRIGGER test_fault BEFORE UPDATE ON kv WHEN old.origin = 'peer' AND new.ts > old.ts "
    "BEGIN SELECT RAISE(ABORT, 'injected fault: the overtake cannot be written'); END"
)


def query(path: str, sql: str) -> list[Any]:
    """Read the shard file through a connection of its own (what is committed, nothing else)."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ekv.EKV]:
    """A one-shard store holding key "future" at a version from a peer whose clock ran an hour
    ahead, stored before a restart that lost the clock floor (so this node's local writes to
    "future" lose LWW and are overtaken), with the fault trigger planted in its file."""
    path = tmp_path / "data"
    ekv.EKV("atomic", path, shards=1, log=False).close()
    conn = apsw.Connection(str(path / "shard_000.db"))
    try:
        blob = pickle.dumps("theirs")
        conn.execute(
            schema.UPSERT,
            ("future", FUTURE, "peer", 1, None, None, blob, row_check("future", FUTURE, "peer", 1, None, blob)),
        )
        conn.execute(FAULT)
    finally:
        conn.close()
    kv = ekv.EKV("atomic", path, shards=1, log=False)
    try:
        yield kv
    finally:
        kv.close()


def run_as_one_group(kv: ekv.EKV, calls: list[Callable[[], Any]]) -> list[Any]:
    """Queue ``calls`` (one thread each, in order) behind an exclusive job on the shard, then let
    them commit as one group; return their results (exceptions included)."""
    shard = node_of(kv).store.shards[0]
    release, started = threading.Event(), threading.Event()

    def hold(_cur: Any) -> None:
        started.set()
        assert release.wait(30)

    holder = threading.Thread(target=shard.run_exclusive, args=(hold,))
    holder.start()
    assert started.wait(30)
    results: list[Any] = [None] * len(calls)

    def call(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = []
    for i in range(len(calls)):
        threads.append(threading.Thread(target=call, args=(i,)))
        threads[-1].start()
        wait_until(lambda n=i + 1: len(shard._committer._queue) >= n, timeout=30)
    release.set()
    for thread in [holder, *threads]:
        thread.join(30)
        assert not thread.is_alive()
    return results


@pytest.mark.parametrize("mixed", [False, True], ids=["local-writes", "with-remote-apply"])
def test_a_group_that_fails_after_its_upsert_stores_nothing_and_reissues_no_dot(store: ekv.EKV, mixed: bool) -> None:
    kv = store
    shard = node_of(kv).store.shards[0]
    path, origin = shard.path, shard.origin
    calls: list[Callable[[], Any]] = [lambda: kv.put("a", "mine"), lambda: kv.put("future", "mine")]
    if mixed:  # a remote version in the same group: the explicit-transaction path
        remote = Entry("remote", time.time_ns(), "peer2", 1, None, pickle.dumps("r"))
        calls.insert(1, lambda: node_of(kv).store.apply([remote]))

    results = run_as_one_group(kv, calls)

    assert all(isinstance(r, ekv.StorageError) and "injected fault" in str(r) for r in results), results
    # Nothing of the group is stored: no kv row, no change-log row, no sequence number used.
    assert query(path, "SELECT key, origin, oseq FROM kv") == [("future", "peer", 1)]
    assert query(path, "SELECT origin, oseq, key FROM log") == [("peer", 1, "future")]
    assert kv.get("a") is None and kv.get("future") == "theirs"
    assert shard.oseq == 0
    used = set(query(path, "SELECT origin, oseq FROM log UNION SELECT origin, oseq FROM kv"))

    shard.run_exclusive(lambda cur: cur.execute("DROP TRIGGER test_fault"))
    acked = {"b": kv.put("b", 1)}
    (dot,) = query(path, "SELECT origin, oseq FROM kv WHERE key = 'b'")
    assert dot == (origin, 1) and dot not in used  # the next write's dot was never used before

    # The same group again, now without the fault: every write commits, "future" overtaken.
    results = run_as_one_group(kv, calls)
    assert not any(isinstance(r, Exception) for r in results), results
    acked["a"], acked["future"] = results[0], results[-1]
    assert acked["future"].timestamp_ns > FUTURE and acked["future"].origin == origin

    # Every stored row's dot is in the change log under its own key; local dots are dense.
    assert (
        query(
            path,
            "SELECT kv.key FROM kv LEFT JOIN log ON log.origin = kv.origin AND log.oseq = kv.oseq "
            "AND log.key = kv.key WHERE log.key IS NULL",
        )
        == []
    )
    local = [oseq for (oseq,) in query(path, f"SELECT oseq FROM log WHERE origin = '{origin}' ORDER BY oseq")]
    assert local == [1, 2, 3] and shard.oseq == 3

    # A peer that has nothing gets every acknowledged write from a delta sync.
    snap = SyncSnapshot(path, origin, {}, now_ns=time.time_ns(), cutoff_ns=0)
    try:
        assert snap.kind == "delta"
        sent: list[Entry] = []
        while chunk := snap.next_chunk(100, 1 << 20):
            sent += chunk
    finally:
        snap.close()
    got = {e.key: e.version for e in sent}
    assert {key: got.get(key) for key in acked} == acked
    assert snap.vv[origin] == 3


@pytest.mark.parametrize(
    ("stored", "incoming"),
    [
        ((10, "b", 1), (11, "a", 2)),  # higher timestamp wins
        ((10, "a", 1), (10, "b", 2)),  # equal timestamps: the higher origin wins
        ((10, "b", 1), (10, "a", 2)),  # ... and the lower one loses
        ((11, "a", 1), (10, "b", 2)),  # lower timestamp loses
        ((10, "a", 1), (10, "a", 1)),  # the same write again
    ],
)
def test_the_single_statement_upsert_follows_the_lww_rule_or_fails_whole(
    stored: tuple[int, str, int], incoming: tuple[int, str, int]
) -> None:
    """The statement a group of local writes runs on its own (outside a transaction) writes a
    winning row, changes nothing for the same write again, and fails as a whole, writing nothing,
    for a row that loses LWW (so the group can run again with its overtakes, in one transaction)."""
    from ekv._core import lww
    from ekv._storage.schema import alone_upsert_rows as _alone_upsert_rows

    conn = apsw.Connection(":memory:")
    conn.execute(schema.DDL)

    def row(key: str, ts: int, origin: str, oseq: int) -> tuple[Any, ...]:
        return (key, ts, origin, oseq, None, None, b"v", row_check(key, ts, origin, oseq, None, b"v"))

    conn.execute(schema.UPSERT, row("k", *stored))
    before = conn.execute("SELECT * FROM kv").fetchall(), conn.execute("SELECT * FROM log").fetchall()
    wins = lww.wins(ekv.Version(*incoming[:2]), ekv.Version(*stored[:2]))
    try:
        conn.execute(_alone_upsert_rows(2), (*row("other", 5, "a", 9), *row("k", *incoming)))
    except apsw.ConstraintError:
        assert not wins and incoming != stored
        assert (conn.execute("SELECT * FROM kv").fetchall(), conn.execute("SELECT * FROM log").fetchall()) == before
    else:
        assert wins or incoming == stored
        assert conn.execute("SELECT ts, origin, oseq FROM kv WHERE key = 'k'").get == (incoming if wins else stored)
        assert conn.execute("SELECT count(*) FROM kv WHERE key = 'other'").get == 1
    conn.close()
