"""The group commit: batching, per-write LWW inside a batch, handoff, failures of a batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import apsw
import pytest

import ekv
from ekv._model import Entry
from ekv._storage import commit as commit_module
from ekv.testing import entries, node_of, wait_until


def hold_shard(kv: ekv.EKV, index: int) -> tuple[threading.Event, threading.Thread]:
    """Occupy shard ``index`` with an exclusive job until the returned event is set, so that
    writes queue up behind it and are committed as one batch."""
    release = threading.Event()
    started = threading.Event()
    shard = node_of(kv).store.shards[index]

    def job(_cur: Any) -> None:
        started.set()
        assert release.wait(30)

    thread = threading.Thread(target=shard.run_exclusive, args=(job,))
    thread.start()
    assert started.wait(30)
    return release, thread


def keys_in_shard(kv: ekv.EKV, index: int, count: int, prefix: str = "k") -> list[str]:
    from ekv._core.keys import shard_of

    shards = node_of(kv).config.shards
    found = []
    i = 0
    while len(found) < count:
        key = f"{prefix}{i}"
        if shard_of(key.encode(), shards) == index:
            found.append(key)
        i += 1
    return found


def queued(kv: ekv.EKV) -> int:
    return len(node_of(kv).store.shards[0]._committer._queue)


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def run_queued(kv: ekv.EKV, calls: list[Callable[[], Any]]) -> list[Any]:
    """Queue ``calls`` (each in its own thread) behind a held shard 0, then let them run as one
    batch; return their results in order (exceptions included)."""
    release, holder = hold_shard(kv, 0)
    results: list[Any] = [None] * len(calls)

    def call(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = []
    for i in range(len(calls)):
        thread = threading.Thread(target=call, args=(i,))
        thread.start()
        threads.append(thread)
        wait_for(lambda n=i + 1: queued(kv) >= n)  # keep the queue in call order
    release.set()
    holder.join(30)
    for thread in threads:
        thread.join(30)
    return results


def test_queued_writes_commit_as_one_batch_with_distinct_versions(kv: ekv.EKV) -> None:
    batches: list[int] = []
    shard = node_of(kv).store.shards[0]
    original = shard._commit_group

    def spy(batch: list[Any], fast: bool) -> None:
        batches.append(len(batch))
        original(batch, fast)

    shard._commit_group = spy  # type: ignore[method-assign]
    keys = keys_in_shard(kv, 0, 5)
    versions = run_queued(kv, [lambda k=k: kv.put(k, k.upper()) for k in keys])
    assert batches == [5]  # padded to 8 rows in SQL, but 5 writes
    assert len(set(versions)) == 5 and versions == sorted(versions)
    assert {k: kv.get(k) for k in keys} == {k: k.upper() for k in keys}
    stored = {e.key: e for e in entries(kv)}
    assert [stored[k].oseq for k in keys] == sorted(stored[k].oseq for k in keys)
    info = kv.info()["shards"][0]
    assert info["log"]["entries"] == 5  # padding rows added no log entries
    assert info["local_seq"] == 5


def test_same_key_several_times_in_one_batch(kv: ekv.EKV) -> None:
    sub = kv.subscribe("")
    key = keys_in_shard(kv, 0, 1)[0]
    kv.put(key, "before")
    assert [e.type for e in sub.get(timeout=5)] == ["put"]
    results = run_queued(
        kv,
        [lambda: kv.put(key, "a"), lambda: kv.delete(key), lambda: kv.put(key, "b"), lambda: kv.delete(key)],
    )
    assert results == sorted(results)
    events: list[ekv.Event] = []
    while len(events) < 4:
        events.extend(sub.get(timeout=5))
    assert [(e.type, e.value) for e in events] == [("put", "a"), ("delete", "a"), ("put", "b"), ("delete", "b")]
    assert kv.get(key) is None
    assert kv.info()["shards"][0]["log"]["entries"] == 5


def test_batched_writes_overtake_a_stored_future_version(kv: ekv.EKV) -> None:
    store = node_of(kv).store
    key, other = keys_in_shard(kv, 0, 2)
    future = time.time_ns() + 3600 * 10**9
    store.apply([Entry(key, future, "peer", 1, None, b"\x80\x05K\x01.")])
    # Pretend this node restarted: its clock has not seen the future version.
    node_of(kv).clock.last_ns = 0
    results = run_queued(kv, [lambda: kv.put(other, 1), lambda: kv.put(key, "mine"), lambda: kv.put(key, "last")])
    assert results[1].timestamp_ns > future and results[2] > results[1]
    assert kv.get(key) == "last"
    assert kv.get(other) == 1


def test_a_failed_batch_fails_every_write_in_it(kv: ekv.EKV, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = keys_in_shard(kv, 0, 3)
    shard = node_of(kv).store.shards[0]
    real_cursor = shard._cur

    class FullCursor:
        def execute(self, sql: str, params: Any = None) -> Any:
            if "INSERT INTO kv" in sql:
                raise apsw.FullError("database or disk is full")
            return real_cursor.execute(sql, params)

    shard._cur = FullCursor()  # type: ignore[assignment]
    results = run_queued(kv, [lambda k=k: kv.put(k, 1) for k in keys])
    shard._cur = real_cursor
    assert all(isinstance(r, ekv.DiskFullError) for r in results)
    assert len({id(r) for r in results}) == 3  # one exception object per thread
    assert all(kv.get(k) is None for k in keys)
    assert kv.info()["shards"][0]["local_seq"] == 0  # no sequence number was consumed
    assert kv.put(keys[0], 2).node_id == kv.node_id
    assert kv.get(keys[0]) == 2


def test_handoff_between_combiners_loses_nothing(kv: ekv.EKV, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commit_module, "_MAX_BATCH", 1)
    monkeypatch.setattr(commit_module, "_MAX_ROUNDS", 1)
    per_thread = 150
    versions: dict[int, list[ekv.Version]] = {}

    def writer(t: int) -> None:
        versions[t] = [kv.put(f"t{t}/{i}", i) for i in range(per_thread)]

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    everything = [v for vs in versions.values() for v in vs]
    assert len(set(everything)) == 8 * per_thread
    for vs in versions.values():
        assert vs == sorted(vs)
    assert len(kv.keys("t")) == 8 * per_thread


def test_writes_from_many_threads_all_land(kv: ekv.EKV) -> None:
    def writer(t: int) -> None:
        for i in range(300):
            kv.put(f"w{t}/{i}", (t, i))
            if i % 7 == 0:
                kv.delete(f"w{t}/{i}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    expected = {f"w{t}/{i}": (t, i) for t in range(8) for i in range(300) if i % 7}
    assert kv.scan("w") == dict(sorted(expected.items()))


def test_the_wal_file_shrinks_back_after_a_checkpoint(tmp_path: Any) -> None:
    """SQLite reuses a checkpointed WAL from its start but never shrinks it: without a size limit
    every shard would keep its largest WAL (32 MiB at the checkpoint threshold) on disk for ever."""
    import os

    from ekv._storage.sqlite import WAL_SIZE_LIMIT

    with ekv.EKV("t", tmp_path, shards=1, log=False) as kv:
        value = "x" * 4000
        for i in range(3000):  # about 12 MiB of WAL
            kv.put(f"k{i % 50}", value)
        wal = tmp_path / "shard_000.db-wal"
        assert os.path.getsize(wal) > 2 * WAL_SIZE_LIMIT
        # The node's checkpointer thread checkpoints this WAL too once it passes 32 MiB (3000
        # commits write more than that), through the same connection: a call made while that one
        # runs fails (and returns 0); the next succeeds.
        wait_until(lambda: node_of(kv).store.checkpoint(min_wal_bytes=1) == 1, timeout=60)
        kv.put("after", 1)  # the writer resets the WAL, and truncates it
        assert os.path.getsize(wal) <= WAL_SIZE_LIMIT
        assert kv.get("after") == 1 and kv.get("k1") == value
