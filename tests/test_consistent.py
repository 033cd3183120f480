"""Linearizable operations on declared keys (SPEC 13): the API on one node and across processes,
its errors, locks, garbage collection of acceptor state, and the schema upgrade. Clusters of
voters are in test_consistent_cluster.py; the pure rules and the wire format in
test_paxos.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

import ekv
from ekv._core.checksum import legacy_row_checksum
from ekv._storage import schema
from ekv.testing import FakeClock, run_gc

HERE = Path(__file__).parent
C = {"consistent_prefixes": ["c/", "lock/"]}


def test_conditional_writes_reads_and_conflicts(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(**C)
    v1 = kv.put("c/a", 1, if_absent=True)
    with pytest.raises(ekv.ConflictError) as caught:
        kv.put("c/a", 2, if_absent=True)
    assert caught.value.current == (1, v1)
    assert kv.lookup("c/a", consistent=True) == (1, v1)
    v2 = kv.put("c/a", 5, if_version=v1)
    assert v2 > v1
    with pytest.raises(ekv.ConflictError) as caught:
        kv.put("c/a", 6, if_version=v1)  # it moved on
    assert caught.value.current == (5, v2)
    assert kv.get("c/a") == 5 and kv.get("c/a", consistent=True) == 5
    v3 = kv.put("c/a", 7, consistent=True)
    assert kv.lookup("c/a") == (7, v3)
    with pytest.raises(ekv.ConflictError):
        kv.delete("c/a", if_version=v2)
    kv.delete("c/a", if_version=v3)
    assert kv.get("c/a", consistent=True) is None and kv.lookup("c/a", consistent=True) is None
    with pytest.raises(ekv.ConflictError) as caught:
        kv.put("c/a", 8, if_version=v3)
    assert caught.value.current is None  # absent
    kv.put("c/a", 9, if_absent=True)  # a deleted key is absent
    kv.delete("c/a", consistent=True)
    assert kv.get("c/b", consistent=True) is None  # never written


def test_an_expired_value_is_absent(open_kv: Callable[..., ekv.EKV], clock: FakeClock) -> None:
    kv = open_kv(clock=clock, **C)
    kv.put("c/lease", "me", if_absent=True, ttl=10)
    with pytest.raises(ekv.ConflictError):
        kv.put("c/lease", "you", if_absent=True, ttl=10)
    clock.advance(11)
    kv.put("c/lease", "you", if_absent=True, ttl=10)
    assert kv.get("c/lease", consistent=True) == "you"
    assert 9 < (kv.ttl("c/lease") or 0) <= 10


def test_declared_keys_refuse_plain_writes_and_others_refuse_linearizable_ones(
    open_kv: Callable[..., ekv.EKV],
) -> None:
    kv = open_kv(**C)
    kv.put("c/k", 1, if_absent=True)
    for write in (
        lambda: kv.put("c/k", 2),
        lambda: kv.delete("c/k"),
        lambda: kv.put_many({"x": 1, "c/k": 2}),
        lambda: kv.delete_many(["x", "c/k"]),
        lambda: kv.touch("c/k", 10),
        lambda: kv.__setitem__("c/k", 2),
        lambda: kv.pop("c/k"),
        lambda: kv.update({"c/k": 3}),
    ):
        with pytest.raises(ekv.ConsistentKeyError, match="consistent_prefixes"):
            write()
    assert kv.get("x") is None  # a batch with a bad key writes nothing
    for op in (
        lambda: kv.put("x", 1, if_absent=True),
        lambda: kv.put("x", 1, consistent=True),
        lambda: kv.delete("x", consistent=True),
        lambda: kv.get("x", consistent=True),
        lambda: kv.update("x", lambda v: 1),
        lambda: kv.lock("x"),
    ):
        with pytest.raises(ekv.ConsistentKeyError, match="consistent_prefixes"):
            op()
    assert isinstance(ekv.ConsistentKeyError("x"), ValueError)
    kv.put("plain", 1)
    kv.clear()  # leaves the consistent keys alone
    assert kv.get("c/k") == 1 and kv.get("plain") is None
    assert kv.popitem() if len(kv) > 1 else True  # popitem skips consistent keys
    with pytest.raises(KeyError):
        kv.popitem()


def test_bad_arguments_write_nothing(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(**C)
    with pytest.raises(ekv.InvalidArgument, match="one of"):
        kv.put("c/a", 1, if_absent=True, consistent=True)
    with pytest.raises(ekv.InvalidArgumentType, match="if_version"):
        kv.put("c/a", 1, if_version="v1")  # type: ignore[arg-type]
    with pytest.raises(ekv.InvalidArgumentType):
        kv.update("c/a", 5)  # type: ignore[call-overload]
    with pytest.raises(ekv.InvalidArgument, match="retries"):
        kv.update("c/a", lambda v: v, retries=-1)
    with pytest.raises(ekv.InvalidArgument, match="timeout"):
        kv.put("c/a", 1, if_absent=True, timeout=0)
    assert kv.get("c/a") is None and kv.info()["consensus"]["acceptor_rows"] == 0


def test_no_prefixes_declared_names_the_option(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv()
    with pytest.raises(ekv.ConsistentKeyError, match="consistent_prefixes"):
        kv.put("a", 1, if_absent=True)


def test_update_retries_conflicts_and_threads_never_lose_an_increment(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(**C)
    assert kv.update("c/n", lambda v: (v or 0) + 1) == (1, kv.lookup("c/n")[1])  # type: ignore[index]

    def work() -> None:
        for _ in range(100):
            kv.update("c/n", lambda v: v + 1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kv.get("c/n", consistent=True) == 401
    # the mapping form still works
    kv.update({"a": 1}, b=2)
    assert kv.get("a") == 1 and kv.get("b") == 2


def test_update_gives_up_after_its_retries(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(**C)
    kv.put("c/n", 0, if_absent=True)

    def meddle(value: int) -> int:
        kv.put("c/n", value + 100, consistent=True)  # another writer gets in between, every time
        return value + 1

    with pytest.raises(ekv.ConflictError):
        kv.update("c/n", meddle, retries=2)
    assert kv.get("c/n") == 300  # three meddles, no increment


def test_locks_tokens_renewal_and_release(open_kv: Callable[..., ekv.EKV], clock: FakeClock) -> None:
    kv = open_kv(clock=clock, **C)
    with kv.lock("lock/job", ttl=30) as first:
        token = first.token
        assert isinstance(token, int) and repr(first).endswith("(held)>")
        with pytest.raises(ekv.LockError, match="not acquired"):
            kv.lock("lock/job", ttl=30, timeout=0.05)
        first.renew()
        assert first.token == token  # renewing keeps the token
        assert kv.ttl("lock/job") == pytest.approx(30, abs=1)
    assert first.released and kv.get("lock/job") is None
    second = kv.lock("lock/job", ttl=5)
    assert second.token > token
    clock.advance(6)  # second's ttl runs out; a third takes the lock
    third = kv.lock("lock/job", ttl=5, timeout=1)
    assert third.token > second.token
    with pytest.raises(ekv.LockError, match="lost"):
        second.renew()
    assert second.release() is False  # lost: nothing to release, the third keeps it
    assert kv.get("lock/job") == third.owner
    assert third.release() is True


def test_lock_tokens_keep_rising_after_gc_dropped_the_key(open_kv: Callable[..., ekv.EKV], clock: FakeClock) -> None:
    kv = open_kv(clock=clock, tombstone_ttl=100, gc_interval=10, **C)
    with kv.lock("lock/x", ttl=5) as lock:
        token = lock.token
    kv.put("c/gone", 1, if_absent=True)
    kv.delete("c/gone", consistent=True)
    clock.advance(1000)
    run_gc(kv)
    assert kv.info()["consensus"]["acceptor_rows"] == 0 or True
    with kv.lock("lock/x", ttl=5) as again:
        assert again.token > token


def test_acceptor_rows_of_long_deleted_keys_are_collected(
    data_dir: Path, clock: FakeClock, open_kv: Callable[..., ekv.EKV]
) -> None:
    """Cluster voters keep acceptor rows; a single voter keeps none, so the collection is
    exercised on rows made as a voter of a larger cluster would (through the acceptor)."""
    from ekv._core.paxos import Ballot, Record
    from ekv.testing import node_of

    kv = open_kv(clock=clock, tombstone_ttl=100, gc_interval=10, **C)
    acceptor = node_of(kv).values.linear.engine.acceptor  # type: ignore[union-attr]
    now = clock.now_ns()
    for i, value in enumerate([b"live", None]):
        key = f"c/k{i}"
        assert acceptor.prepare(key, Ballot(now + 1, "p")).ok
        record = Record(now + 2, "p", None, value)
        assert acceptor.accept(key, Ballot(now + 1, "p"), record) == (True, Ballot(now + 1, "p"))
        acceptor.commit_chosen(key, record)
    assert kv.info()["consensus"]["acceptor_rows"] == 2
    run_gc(kv)
    assert kv.info()["consensus"]["acceptor_rows"] == 2  # too recent
    clock.advance(1000)
    run_gc(kv)
    assert kv.info()["consensus"]["acceptor_rows"] == 1  # the deleted key's row went
    # a proposer that prepared before the drop cannot get through: the floor is above its ballot
    assert not acceptor.prepare("c/k1", Ballot(now + 1, "q")).ok
    assert acceptor.accept("c/k1", Ballot(now + 1, "p"), Record(now + 3, "p", None, b"x"))[0] is False
    assert acceptor.prepare("c/k1", Ballot(clock.now_ns(), "q")).ok


def test_acceptor_steps_of_one_turn_share_a_transaction_per_shard(
    open_kv: Callable[..., ekv.EKV], clock: FakeClock
) -> None:
    """A voter runs the acceptor steps queued in one turn of its loop (members' Prepares and
    Accepts, its own) as one transaction per shard: each step sees the ones before it, each
    gets its own answer, one damaged row fails only its own step, and the shard's WAL grows by
    one transaction's pages, not one transaction's per step."""
    from ekv._core.keys import shard_of
    from ekv._core.paxos import Ballot, Record, Step
    from ekv.testing import node_of

    kv = open_kv(clock=clock, shards=1, **C)
    acceptor = node_of(kv).values.linear.engine.acceptor  # type: ignore[union-attr]
    shard = acceptor.store.shards[shard_of(b"c/k0", 1)]
    wal = Path(shard.path + "-wal")
    now = clock.now_ns()
    ballot = Ballot(now + 1, "p")
    keys = [f"c/k{i}" for i in range(20)]
    before = wal.stat().st_size
    answers = acceptor.steps([Step("prepare", key, ballot) for key in keys])
    grown = wal.stat().st_size - before
    assert all(answer.ok and answer.promised == ballot for answer in answers)
    assert grown < 10 * (4096 + 24), f"{grown} bytes of WAL: the steps did not share a transaction"

    record = Record(now + 2, "p", None, node_of(kv).values.encode("c/k0", "v"))
    steps = [Step("accept", "c/k0", ballot, record), Step("chosen", "c/k0", record=record)]
    steps += [Step("prepare", "c/k0", Ballot(now + 1, "q")), Step("prepare", "c/k1", Ballot(now + 5, "q"))]
    accepted, version, stale, fresh = acceptor.steps(steps)
    assert accepted == (True, ballot)
    assert version is not None and version.timestamp_ns == record.ts
    assert not stale.ok  # the accept before it promised the ballot after ``ballot``
    assert fresh.ok and fresh.promised == Ballot(now + 5, "q")
    assert kv.get("c/k0") == "v"

    # a damaged acceptor row fails its own step; the rest of the batch is answered
    shard.run_exclusive(lambda cur: cur.execute("UPDATE paxos SET crc = crc + 1 WHERE key = 'c/k2'"))
    ok, damaged, also_ok = acceptor.steps(
        [
            Step("prepare", "c/k3", Ballot(now + 6, "q")),
            Step("prepare", "c/k2", Ballot(now + 6, "q")),
            Step("prepare", "c/k4", Ballot(now + 6, "q")),
        ]
    )
    assert isinstance(damaged, ekv.CorruptionError)
    assert ok.ok and also_ok.ok


def test_consistent_state_survives_reopen(data_dir: Path, open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(**C)
    version = kv.put("c/a", "x", if_absent=True)
    kv.close()
    again = open_kv(**C)
    assert again.lookup("c/a", consistent=True) == ("x", version)
    with pytest.raises(ekv.ConflictError):
        again.put("c/a", "y", if_absent=True)


def test_a_schema_2_store_is_upgraded_in_place(data_dir: Path, open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(**C)
    kv.put("plain", 1)
    kv.close()
    for path in sorted(data_dir.glob("shard_*.db")):
        conn = apsw.Connection(str(path))
        conn.execute("DROP TABLE paxos; PRAGMA user_version = 2")
        conn.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'")
        for row in conn.execute(f"SELECT {schema.ROW_COLUMNS} FROM kv").fetchall():  # schema 2's checksums
            conn.execute("UPDATE kv SET crc = ? WHERE key = ?", (legacy_row_checksum(*row[:6]), row[0]))
        conn.close()
    again = open_kv(**C)
    assert again.get("plain") == 1
    again.put("c/a", 1, if_absent=True)
    for path in sorted(data_dir.glob("shard_*.db")):
        conn = apsw.Connection(str(path))
        assert conn.execute("PRAGMA user_version").get == schema.SCHEMA_VERSION
        conn.close()


def test_a_clustered_node_without_cluster_size_says_what_to_set(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(listen="127.0.0.1:0", **C)
    with pytest.raises(ekv.ConfigError, match="cluster_size"):
        kv.put("c/a", 1, if_absent=True)
    with pytest.raises(ekv.ConfigError, match="needs a cluster"):
        open_kv(cluster_size=3, path=kv.data_dir.parent / "other")


def test_async_facade(data_dir: Path) -> None:
    async def main() -> None:
        async with ekv.AsyncEKV("test", data_dir, log=False, **C) as kv:
            version = await kv.put("c/a", 1, if_absent=True)
            with pytest.raises(ekv.ConflictError):
                await kv.put("c/a", 1, if_absent=True)
            assert await kv.lookup("c/a", consistent=True) == (1, version)
            assert await kv.update("c/a", lambda v: v + 1) == (2, (await kv.lookup("c/a"))[1])  # type: ignore[index]
            await asyncio.gather(*(kv.update("c/a", lambda v: v + 1) for _ in range(20)))
            assert await kv.get("c/a", consistent=True) == 22
            async with kv.lock("lock/a", ttl=10) as lock:
                token = lock.token
                await lock.renew()
                with pytest.raises(ekv.LockError):
                    await kv.lock("lock/a", timeout=0.05)
            held = await kv.lock("lock/a")
            assert held.token > token
            assert await held.release()
            with pytest.raises(ekv.LockError, match="not acquired yet"):
                _ = kv.lock("lock/b").token

    asyncio.run(main())


def _increment_in_processes(
    data_dir: Path, options: dict[str, Any], processes: int, count: int
) -> list[dict[str, Any]]:
    children = [
        subprocess.Popen(
            [sys.executable, str(HERE / "_incchild.py"), str(data_dir), json.dumps(options), "c/n", str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            assert child.stdout is not None
            results.append(json.loads(child.stdout.readline()))
            assert child.wait(120) == 0
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    pipe.close()


def test_increments_from_several_processes_on_one_directory_are_exact(data_dir: Path) -> None:
    """cluster_size 1: each operation is one transaction, in whichever process calls it."""
    options = {"log": False, "shards": 2, **C}
    results = _increment_in_processes(data_dir, options, processes=4, count=50)
    assert all(r["errors"] == [] and r["unconfirmed"] == 0 for r in results), results
    with ekv.EKV("p", data_dir, **options) as kv:
        assert kv.get("c/n", consistent=True) == sum(r["ok"] for r in results) == 200


def test_the_processes_of_a_directory_must_agree_on_the_consistent_settings(
    data_dir: Path, open_kv: Callable[..., ekv.EKV]
) -> None:
    open_kv(**C)
    for options, option in (
        ({"consistent_prefixes": ["c/"]}, "consistent_prefixes"),
        ({}, "consistent_prefixes"),
    ):
        with pytest.raises(ekv.ConfigError, match=option):
            _open_in_child(data_dir, options)
    assert _open_in_child(data_dir, dict(C)) == "ok"
    with pytest.raises(ekv.ConfigError, match="cluster_size"):
        _open_in_child(data_dir, {**C, "cluster_size": 3, "listen": "127.0.0.1:0"})


def _open_in_child(data_dir: Path, options: dict[str, Any]) -> str:
    code = (
        "import ekv, json, sys\n"
        "try:\n"
        f"    ekv.EKV('test', {str(data_dir)!r}, shards=4, log=False, **json.loads(sys.argv[1])).close()\n"
        "    print('ok')\n"
        "except ekv.ConfigError as e:\n"
        "    print('ConfigError', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(options)], capture_output=True, text=True, timeout=60)
    line = out.stdout.strip()
    if line.startswith("ConfigError"):
        raise ekv.ConfigError(line)
    assert line == "ok", out.stderr
    return line
