"""Subscriptions: matching, batching, previous values on delete, overflow policies, closing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

import ekv
from ekv.testing import FakeClock, run_gc


def drain(sub: ekv.Subscription, timeout: float = 5.0) -> list[ekv.Event]:
    """Every event currently queued (waits up to ``timeout`` for the first batch)."""
    events = list(sub.get(timeout=timeout))
    while sub.pending:
        events.extend(sub.get(timeout=timeout))
    return events


def summary(events: list[ekv.Event]) -> list[tuple[str, str, object]]:
    return [(e.type, e.key, e.value) for e in events]


def test_exact_key_prefix_and_everything(kv: ekv.EKV) -> None:
    exact = kv.subscribe("room/1")
    prefix = kv.subscribe("room/")
    everything = kv.subscribe("")
    for key in ["room/1", "room/10", "room/2/x", "roomy", "other"]:
        kv.put(key, key)
    assert [e.key for e in drain(exact)] == ["room/1"]
    assert [e.key for e in drain(prefix)] == ["room/1", "room/10", "room/2/x"]
    assert [e.key for e in drain(everything)] == ["room/1", "room/10", "room/2/x", "roomy", "other"]


def test_put_and_delete_events_carry_values(kv: ekv.EKV) -> None:
    sub = kv.subscribe("u/")
    v1 = kv.put("u/1", {"n": 1})
    v2 = kv.delete("u/1")
    v3 = kv.delete("u/missing")
    events = drain(sub)
    assert summary(events) == [("put", "u/1", {"n": 1}), ("delete", "u/1", {"n": 1}), ("delete", "u/missing", None)]
    assert [e.version for e in events] == [v1, v2, v3]


def test_delete_of_expired_key_carries_none(fkv: ekv.EKV, clock: FakeClock) -> None:
    sub = fkv.subscribe("")
    fkv.put("a", 1, ttl=1)
    clock.advance(2)
    fkv.delete("a")
    assert summary(drain(sub)) == [("put", "a", 1), ("delete", "a", None)]


def test_one_event_per_subscription_across_overlapping_patterns(kv: ekv.EKV) -> None:
    sub = kv.subscribe("room/", "room/1", "", "room/1")
    kv.put("room/1", 1)
    kv.put("x", 2)
    assert summary(drain(sub)) == [("put", "room/1", 1), ("put", "x", 2)]


def test_no_event_for_a_write_that_loses(kv: ekv.EKV) -> None:
    store = ekv.testing.node_of(kv).store
    kv.put("k", "newer")
    current = store.entry("k")
    assert current is not None
    sub = kv.subscribe("")
    older = ekv._model.Entry("k", current.timestamp_ns - 1, "zzzz", 1, None, b"x")
    assert store.apply([older]) == []
    kv.put("marker", 1)
    assert summary(drain(sub)) == [("put", "marker", 1)]


def test_remote_apply_fires_events(kv: ekv.EKV) -> None:
    store = ekv.testing.node_of(kv).store
    sub = kv.subscribe("")
    kv.put("k", "local")
    entry = store.entry("k")
    assert entry is not None
    import pickle

    remote = ekv._model.Entry("k", entry.timestamp_ns + 10, "peer", 7, None, pickle.dumps("remote"))
    tomb = ekv._model.Entry("k", entry.timestamp_ns + 20, "peer", 8, None, None)
    assert len(store.apply([remote, tomb])) == 2
    assert summary(drain(sub)) == [("put", "k", "local"), ("put", "k", "remote"), ("delete", "k", "remote")]
    assert kv.get("k") is None
    # the clock observed the remote version: the next local write wins over it
    assert kv.put("k", "again") > tomb.version
    assert kv.get("k") == "again"


def test_gc_expiry_emits_expired_events(fkv: ekv.EKV, clock: FakeClock) -> None:
    sub = fkv.subscribe("s/")
    version = fkv.put("s/1", "token", ttl=5)
    fkv.put("s/2", "keep")
    drain(sub)
    clock.advance(6)
    report = run_gc(fkv)
    assert report.expired == 1
    events = drain(sub)
    assert summary(events) == [("expired", "s/1", "token")]
    assert events[0].version == version
    run_gc(fkv)  # expiry is reported once
    fkv.put("s/3", 1)
    assert summary(drain(sub)) == [("put", "s/3", 1)]


def test_batches_from_group_commit_are_lists(kv: ekv.EKV) -> None:
    sub = kv.subscribe("")
    threads = [threading.Thread(target=lambda i=i: [kv.put(f"t{i}/{j}", j) for j in range(200)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = drain(sub)
    assert len(events) == 800
    assert len({e.key for e in events}) == 800
    # per key, order is commit order
    for i in range(4):
        assert [e.value for e in events if e.key.startswith(f"t{i}/")] == list(range(200))


def test_get_timeout_raises_timeout_error(kv: ekv.EKV) -> None:
    sub = kv.subscribe("")
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.01)
    with pytest.raises(ekv.Timeout):
        sub.get(timeout=0)


def test_iteration_ends_when_closed(kv: ekv.EKV) -> None:
    sub = kv.subscribe("")
    kv.put("a", 1)
    seen: list[list[ekv.Event]] = []

    def consume() -> None:
        for batch in sub:
            seen.append(batch)

    thread = threading.Thread(target=consume)
    thread.start()
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.001)
    sub.close()
    thread.join(10)
    assert not thread.is_alive()
    assert summary(seen[0]) == [("put", "a", 1)]
    with pytest.raises(ekv.SubscriptionClosed):
        sub.get(timeout=1)


def test_unsubscribe_removes_pattern_and_closes_empty_subscriptions(kv: ekv.EKV) -> None:
    both = kv.subscribe("a/", "b/")
    only_a = kv.subscribe("a/")
    kv.unsubscribe("a/")
    assert only_a.closed
    assert not both.closed
    kv.put("a/1", 1)
    kv.put("b/1", 1)
    assert summary(drain(both)) == [("put", "b/1", 1)]
    with pytest.raises(ekv.SubscriptionClosed):
        only_a.get(timeout=1)


def test_unsubscribe_only_affects_its_own_store_object(open_kv: Callable[..., ekv.EKV], tmp_path) -> None:  # type: ignore[no-untyped-def]
    one = open_kv()
    other = open_kv(path=tmp_path / "other")
    sub_one = one.subscribe("")
    sub_other = other.subscribe("")
    other.unsubscribe("")
    assert not sub_one.closed and sub_other.closed


def test_store_close_closes_subscriptions(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv()
    sub = kv.subscribe("")
    kv.close()
    assert sub.closed
    with pytest.raises(ekv.SubscriptionClosed):
        sub.get(timeout=1)
    assert list(sub) == []


def test_overflow_error_delivers_queued_then_raises(kv: ekv.EKV) -> None:
    sub = kv.subscribe("", max_queue=5)
    for i in range(8):
        kv.put(f"k{i}", i)  # writers never block
    received: list[ekv.Event] = []
    with pytest.raises(ekv.SubscriptionOverflow):
        for batch in sub:
            received.extend(batch)
    assert [e.value for e in received] == [0, 1, 2, 3, 4]
    info = kv.info()["subscriptions"]
    assert info["overflows"] == 1
    assert info["count"] == 0  # the overflowed subscription left the registry


def test_overflow_drop_oldest_keeps_newest(kv: ekv.EKV) -> None:
    sub = kv.subscribe("", max_queue=3, overflow="drop_oldest")
    for i in range(10):
        kv.put(f"k{i}", i)
    assert [e.value for e in drain(sub)] == [7, 8, 9]
    assert sub.dropped == 7
    assert kv.info()["subscriptions"]["dropped_events"] == 7


def test_overflow_drop_newest_keeps_oldest(kv: ekv.EKV) -> None:
    sub = kv.subscribe("", max_queue=3, overflow="drop_newest")
    for i in range(10):
        kv.put(f"k{i}", i)
    assert [e.value for e in drain(sub)] == [0, 1, 2]
    assert sub.dropped == 7


def test_slow_subscriber_never_blocks_writers(kv: ekv.EKV) -> None:
    sub = kv.subscribe("", max_queue=100_000)
    for i in range(2_000):
        kv.put(f"k{i}", i)
    assert sub.pending == 2_000


def test_invalid_subscribe_arguments(kv: ekv.EKV) -> None:
    with pytest.raises(TypeError):
        kv.subscribe(1)  # type: ignore[call-overload]
    with pytest.raises(ValueError):
        kv.subscribe("", overflow="block")  # type: ignore[call-overload]
    with pytest.raises(ValueError):
        kv.subscribe("", max_queue=0)
    with pytest.raises(TypeError):
        kv.subscribe("", callback=42)  # type: ignore[call-overload]


def test_callback_subscription(kv: ekv.EKV) -> None:
    got: list[ekv.Event] = []
    done = threading.Event()

    def on_events(batch: list[ekv.Event]) -> None:
        got.extend(batch)
        if len(got) >= 3:
            done.set()

    sub = kv.subscribe("c/", callback=on_events)
    kv.put("c/1", 1)
    kv.put("c/2", 2)
    kv.delete("c/1")
    assert done.wait(10)
    assert summary(got) == [("put", "c/1", 1), ("put", "c/2", 2), ("delete", "c/1", 1)]
    sub.close()


def test_callback_that_raises_does_not_break_writes(kv: ekv.EKV, caplog: pytest.LogCaptureFixture) -> None:
    calls = threading.Event()

    def bad(batch: list[ekv.Event]) -> None:
        calls.set()
        raise RuntimeError("boom")

    kv.subscribe("", callback=bad)
    kv.put("a", 1)
    assert calls.wait(10)
    kv.put("b", 2)
    assert kv.get("b") == 2


def test_subscription_is_a_context_manager(kv: ekv.EKV) -> None:
    with kv.subscribe("") as sub:
        kv.put("a", 1)
        assert summary(sub.get(timeout=5)) == [("put", "a", 1)]
    assert sub.closed
