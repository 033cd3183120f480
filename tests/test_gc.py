"""Garbage collection: TTL expiry, tombstone purge, change-log truncation, last_active_at."""

from __future__ import annotations

import time
from collections.abc import Callable

import ekv
from ekv._storage.sync import local_vv
from ekv.testing import FakeClock, entries, node_of, run_gc


def stored(kv: ekv.EKV) -> dict[str, ekv._model.Entry]:
    return {e.key: e for e in entries(kv)}


def test_expiry_turns_the_put_into_a_tombstone_with_the_same_version(fkv: ekv.EKV, clock: FakeClock) -> None:
    version = fkv.put("s", "v", ttl=10)
    clock.advance(11)
    assert run_gc(fkv).expired == 1
    entry = stored(fkv)["s"]
    assert entry.value is None
    assert entry.version == version  # no new version competes with newer writes
    assert entry.deleted_at_ns == entry.expires_at_ns


def test_newer_put_is_not_touched_by_expiry(fkv: ekv.EKV, clock: FakeClock) -> None:
    fkv.put("s", "old", ttl=10)
    clock.advance(11)
    newer = fkv.put("s", "new")  # supersedes the expired value before GC runs
    run_gc(fkv)
    assert fkv.lookup("s") == ("new", newer)


def test_tombstones_are_purged_after_tombstone_ttl(open_kv: Callable[..., ekv.EKV], clock: FakeClock) -> None:
    kv = open_kv(clock=clock, tombstone_ttl=100, gc_interval=10)
    kv.delete("gone")
    kv.put("t", 1, ttl=5)
    kv.put("live", 1)
    clock.advance(50)
    report = run_gc(kv)
    assert report.expired == 1 and report.purged == 0
    assert set(stored(kv)) == {"gone", "t", "live"}
    clock.advance(51)  # the delete is now 101 s old, the expiry 96 s
    assert run_gc(kv).purged == 1
    assert set(stored(kv)) == {"t", "live"}
    clock.advance(5)
    assert run_gc(kv).purged == 1
    assert set(stored(kv)) == {"live"}
    info = kv.info()
    assert info["gc"]["purged"] == 2 and info["gc"]["expired"] == 1 and info["gc"]["runs"] == 3


def test_change_log_is_truncated_on_a_node_without_peers(kv: ekv.EKV) -> None:
    for i in range(300):
        kv.put(f"k{i % 10}", i)
    assert sum(s["log"]["entries"] for s in kv.info()["shards"]) == 300
    assert run_gc(kv).log_truncated == 300
    assert sum(s["log"]["entries"] for s in kv.info()["shards"]) == 0
    # sequence numbers and the clock survive truncation and a restart
    seqs = [s["local_seq"] for s in kv.info()["shards"]]
    assert sum(seqs) == 300


def test_local_sequence_survives_truncation_and_restart(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv()
    for i in range(50):
        kv.put(f"k{i}", i)
    run_gc(kv)
    last = kv.put("z", 1)
    seqs = [s["local_seq"] for s in kv.info()["shards"]]
    kv.close()
    kv = open_kv()
    # the new open writes under a new origin, from 1; the old origin's counter, which the log
    # no longer holds, is kept in each shard's version vector
    assert [s["local_seq"] for s in kv.info()["shards"]] == [0] * len(seqs)
    store = node_of(kv).store
    for shard, seq in zip(store.shards, seqs, strict=True):
        vv = shard.run_exclusive(lambda cur: local_vv(cur, store.origin))
        assert vv.get(last.origin, 0) == seq
    assert kv.put("z", 2) > last


def test_last_active_at_is_refreshed_by_gc(fkv: ekv.EKV, clock: FakeClock) -> None:
    first = fkv.info()["last_active_at_ns"]
    clock.advance(3600)
    run_gc(fkv)
    assert fkv.info()["last_active_at_ns"] == first + 3600 * 10**9


def test_gc_thread_runs_on_its_own(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(gc_interval=0.05, tombstone_ttl=3600)
    sub = kv.subscribe("")
    kv.put("s", 1, ttl=0.01)
    events = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            events.extend(sub.get(timeout=0.5))
        except ekv.Timeout:
            continue
        if any(e.type == "expired" for e in events):
            break
    assert [(e.type, e.key) for e in events] == [("put", "s"), ("expired", "s")]
    while kv.info()["gc"]["runs"] < 1:  # the pass that published the event is still finishing
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_info_counts(fkv: ekv.EKV, clock: FakeClock) -> None:
    fkv.put("a", 1)
    fkv.put("b", 1, ttl=10)
    fkv.put("c", 1, ttl=1000)
    fkv.delete("d")
    clock.advance(20)
    info = fkv.info()
    assert info["keys"] == 2
    assert info["tombstones"] == 1
    assert sum(s["expired_pending_gc"] for s in info["shards"]) == 1
    assert sum(s["with_ttl"] for s in info["shards"]) == 1
    assert info["name"] == "test" and info["node_id"] == fkv.node_id
    assert info["options"]["shards"] == 4
    run_gc(fkv)
    info = fkv.info()
    assert info["keys"] == 2 and info["tombstones"] == 2
