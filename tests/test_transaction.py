"""``transaction()`` (src/ekv/_storage/sqlite.py), the one way ekv runs a transaction: commits a
block that returns, rolls back one that raises (re-raising its error, not the rollback's), and
switches ``PRAGMA synchronous`` for its duration only. On a real APSW connection to a file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from ekv._storage.sqlite import open_connection, transaction


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[apsw.Connection]:
    conn = open_connection(str(tmp_path / "t.db"), create=True, synchronous="NORMAL")
    conn.execute("CREATE TABLE t (x INTEGER)")
    yield conn
    conn.close()


def rows(conn: apsw.Connection) -> list[int]:
    return [row[0] for row in conn.execute("SELECT x FROM t ORDER BY x")]


def test_a_block_that_returns_commits(conn: apsw.Connection) -> None:
    cur = conn.cursor()
    with transaction(cur):
        cur.execute("INSERT INTO t VALUES (1)")
        cur.execute("INSERT INTO t VALUES (2)")
        assert not conn.getautocommit()  # inside one transaction
    assert conn.getautocommit()
    assert rows(conn) == [1, 2]


def test_a_block_that_raises_rolls_back_and_the_error_propagates(conn: apsw.Connection) -> None:
    cur = conn.cursor()
    with pytest.raises(KeyError, match="boom"), transaction(cur):
        cur.execute("INSERT INTO t VALUES (1)")
        raise KeyError("boom")
    assert conn.getautocommit()
    assert rows(conn) == []


def test_the_original_error_wins_over_a_failing_rollback(conn: apsw.Connection) -> None:
    """SQLite itself may have ended the transaction (then ROLLBACK is an error): the block's own
    error is the one raised."""
    cur = conn.cursor()
    with pytest.raises(ValueError, match="first"), transaction(cur):
        cur.execute("INSERT INTO t VALUES (1)")
        cur.execute("ROLLBACK")  # the transaction ends under the helper's feet
        raise ValueError("first")
    assert rows(conn) == []


def test_a_failing_commit_rolls_back(conn: apsw.Connection) -> None:
    conn.execute("CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (p INTEGER REFERENCES p(id))")
    conn.execute("PRAGMA foreign_keys=ON")
    cur = conn.cursor()
    with pytest.raises(apsw.ConstraintError), transaction(cur):
        cur.execute("PRAGMA defer_foreign_keys=ON")  # checked at COMMIT
        cur.execute("INSERT INTO t VALUES (1)")
        cur.execute("INSERT INTO c VALUES (42)")
    assert conn.getautocommit()
    assert rows(conn) == []


def synchronous(conn: apsw.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").get)


@pytest.mark.parametrize("fail", [False, True])
def test_synchronous_is_switched_for_the_transaction_and_restored(conn: apsw.Connection, fail: bool) -> None:
    normal, full = 1, 2
    assert synchronous(conn) == normal
    cur = conn.cursor()
    seen = []
    with pytest.raises(RuntimeError) if fail else contextlib.nullcontext(), transaction(cur, synchronous="FULL"):
        seen.append(synchronous(conn))
        cur.execute("INSERT INTO t VALUES (1)")
        if fail:
            raise RuntimeError("disk full, say")
    assert seen == [full]
    assert synchronous(conn) == normal
    assert rows(conn) == ([] if fail else [1])
