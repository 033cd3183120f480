"""Batches, expiry and memoize (SPEC 14): ``put_many``/``get_many``/``delete_many`` (one
transaction and one event batch per shard, bad input writes nothing, replicated like single
puts), ``ttl``/``touch`` (a touch never loses a concurrent put) and the ``memoize`` decorator
on both facades."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ekv
from ekv._core.keys import shard_of
from ekv._model import Entry
from ekv.testing import FakeClock, node_of, wait_until


def shards_of(keys: list[str], shards: int) -> set[int]:
    return {shard_of(key.encode(), shards) for key in keys}


# -- put_many / get_many / delete_many --------------------------------------------------------


def test_put_many_writes_every_item_across_shards(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(shards=4)
    items = {f"user/{i}": {"n": i} for i in range(1000)}  # several statements per shard (256 rows each)
    assert len(shards_of(list(items), 4)) == 4
    versions = kv.put_many(items)
    assert set(versions) == set(items)
    assert all(isinstance(v, ekv.Version) for v in versions.values())
    assert kv.scan("user/") == items
    for key, version in versions.items():
        found = kv.lookup(key)
        assert found is not None and found[1] == version


def test_put_many_of_many_keys_in_one_shard(open_kv: Callable[..., ekv.EKV]) -> None:
    """One shard's part of 5,000 keys: one transaction of several statements (a single statement
    would need more bound parameters than SQLite allows)."""
    kv = open_kv(shards=1)
    items = {f"k/{i:05d}": i for i in range(5000)}
    versions = kv.put_many(items)
    assert list(versions) == list(items)
    oseqs = [entry.oseq for entry in node_of(kv).store.entries()]
    assert sorted(oseqs) == list(range(1, 5001))
    assert kv.count() == 5000 and kv.get("k/04999") == 4999


def test_put_many_takes_pairs_and_the_last_value_of_a_repeated_key(kv: ekv.EKV) -> None:
    versions = kv.put_many([("a", 1), ("b", 2), ("a", 3)])
    assert set(versions) == {"a", "b"}
    assert kv.get_many(["a", "b"]) == {"a": 3, "b": 2}
    assert kv.put_many({}) == {}


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"ok/9": b"x" * 2000}, ekv.ValueTooLargeError),
        ({"ok/9": lambda: None}, ekv.EncodeError),
        ({"": 1}, ValueError),
        ({"a\x00b": 1}, ValueError),
        ({5: 1}, TypeError),
    ],
)
def test_put_many_with_one_bad_item_writes_nothing(
    open_kv: Callable[..., ekv.EKV], bad: dict[Any, Any], error: type[Exception]
) -> None:
    kv = open_kv(shards=4, max_value_size=1000)
    items: dict[Any, Any] = {f"ok/{i}": i for i in range(8)}
    items.update(bad)
    with pytest.raises(error):
        kv.put_many(items)
    assert len(kv) == 0
    assert list(node_of(kv).store.entries()) == []  # not even a tombstone


def test_put_many_commits_each_shard_as_one_event_batch(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(shards=4)
    sub = kv.subscribe("k/")
    keys = [f"k/{i}" for i in range(40)]
    touched = shards_of(keys, 4)
    kv.put_many({key: 1 for key in keys})
    batches = [sub.get(timeout=10) for _ in touched]
    per_shard = [sum(1 for k in keys if shard_of(k.encode(), 4) == s) for s in touched]
    assert sorted(len(b) for b in batches) == sorted(per_shard)
    assert {e.key for b in batches for e in b} == set(keys)
    for batch in batches:
        assert len(shards_of([e.key for e in batch], 4)) == 1
    sub.close()


def test_put_many_overtakes_a_version_from_the_future_like_put(
    open_kv: Callable[..., ekv.EKV], clock: FakeClock
) -> None:
    """A stored version ahead of this node's clock (a peer's clock ran ahead) does not make a
    batch's write of that key lose: it is LWW-checked per key and written above it, as put is."""
    kv = open_kv(clock=clock, shards=1)
    future = clock.now_ns() + 3600 * 10**9
    node_of(kv).store.apply([Entry("a", future, "peer", 1, None, b"\x80\x04K\x07.")])
    assert kv.get("a") == 7
    versions = kv.put_many({"a": 1, "b": 2})
    assert versions["a"].timestamp_ns > future
    assert kv.get_many(["a", "b"]) == {"a": 1, "b": 2}


def test_get_many_returns_the_visible_keys_in_order(fkv: ekv.EKV, clock: FakeClock) -> None:
    fkv.put_many({f"k{i}": i for i in range(20)})
    fkv.put("short", "lived", ttl=5)
    fkv.delete("k3")
    clock.advance(10)
    wanted = ["k9", "missing", "k3", "short", "k1", "k9", "é😀\x01"]
    assert list(fkv.get_many(wanted).items()) == [("k9", 9), ("k1", 1)]
    fkv.put("é😀\x01", None)
    assert fkv.get_many(["é😀\x01"]) == {"é😀\x01": None}
    assert fkv.get_many([]) == {}
    with pytest.raises(ValueError):
        fkv.get_many(["k1", ""])
    with pytest.raises(TypeError):
        fkv.get_many("k1")


def test_get_many_reads_each_shard_with_one_query(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(shards=4)
    keys = [f"k/{i}" for i in range(200)]
    kv.put_many({key: i for i, key in enumerate(keys)})
    kv.get("k/0")  # this thread's reader connections exist
    statements: list[str] = []
    store = node_of(kv).store
    cursors = store._tls.cursors
    for cur in cursors:
        cur.connection.exec_trace = lambda _cur, sql, _bindings: statements.append(sql) or True
    try:
        assert kv.get_many(keys) == {key: i for i, key in enumerate(keys)}
    finally:
        for cur in cursors:
            cur.connection.exec_trace = None
    assert len(statements) == 4, statements


def test_get_many_verifies_checksums(kv: ekv.EKV) -> None:
    kv.put_many({"a": 1, "b": 2})
    store = node_of(kv).store
    shard = store.shards[shard_of(b"a", len(store.shards))]
    shard.run_exclusive(lambda cur: cur.execute("UPDATE kv SET value = x'00' WHERE key = 'a'"))
    with pytest.raises(ekv.ChecksumError):
        kv.get_many(["b", "a"])


def test_delete_many_writes_tombstones(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(shards=4)
    kv.put_many({f"k{i}": i for i in range(10)})
    versions = kv.delete_many(["k1", "k2", "k2", "never"])
    assert set(versions) == {"k1", "k2", "never"}
    assert kv.get_many(["k1", "k2", "k3"]) == {"k3": 3}
    entry = node_of(kv).store.entry("never")
    assert entry is not None and entry.value is None and entry.version == versions["never"]
    with pytest.raises(ValueError):
        kv.delete_many(["k3", ""])
    assert kv.get("k3") == 3


def test_batches_replicate_like_single_writes(open_kv: Callable[..., ekv.EKV], tmp_path: Path) -> None:
    fast = {"listen": "127.0.0.1:0", "shards": 4, "heartbeat_interval": 0.1, "reconnect_max": 0.3}
    a = open_kv("c", tmp_path / "a", **fast)
    b = open_kv("c", tmp_path / "b", **fast)
    b.connect(a.listen_address)  # type: ignore[arg-type]
    items = {f"r/{i}": i for i in range(600)}
    a.put_many(items, ttl=3600)
    wait_until(lambda: b.scan("r/") == items, timeout=60, message="put_many did not replicate")
    a.delete_many([f"r/{i}" for i in range(300)])
    wait_until(lambda: b.count("r/") == 300, timeout=60, message="delete_many did not replicate")
    assert a.touch("r/500", None)
    wait_until(lambda: b.ttl("r/500") is None, timeout=60, message="touch did not replicate")


# -- ttl / touch ---------------------------------------------------------------------------------


def test_ttl_reports_the_remaining_seconds(fkv: ekv.EKV, clock: FakeClock) -> None:
    fkv.put("forever", 1)
    fkv.put("session", 2, ttl=60)
    assert fkv.ttl("forever") is None
    assert fkv.ttl("session") == pytest.approx(60)
    clock.advance(15)
    assert fkv.ttl("session") == pytest.approx(45)
    clock.advance(45)
    for key in ("session", "absent"):
        with pytest.raises(KeyError):
            fkv.ttl(key)
    fkv.delete("forever")
    with pytest.raises(KeyError):
        fkv.ttl("forever")
    with pytest.raises(ValueError):
        fkv.ttl("")


def test_touch_sets_a_new_expiry_and_keeps_the_value(fkv: ekv.EKV, clock: FakeClock) -> None:
    fkv.put("s", {"user": 1}, ttl=10)
    before = fkv.lookup("s")
    assert before is not None
    clock.advance(8)
    assert fkv.touch("s", 30) is True
    after = fkv.lookup("s")
    assert after is not None and after[0] == {"user": 1} and after[1] > before[1]
    assert fkv.ttl("s") == pytest.approx(30)
    clock.advance(20)
    assert fkv.get("s") == {"user": 1}
    assert fkv.touch("s", None) is True
    assert fkv.ttl("s") is None
    clock.advance(10**6)
    assert fkv.get("s") == {"user": 1}


def test_touch_of_an_absent_deleted_or_expired_key_writes_nothing(fkv: ekv.EKV, clock: FakeClock) -> None:
    fkv.put("gone", 1)
    fkv.delete("gone")
    fkv.put("old", 1, ttl=1)
    clock.advance(2)
    before = list(node_of(fkv).store.entries())
    for key in ("absent", "gone", "old"):
        assert fkv.touch(key, 60) is False
    assert list(node_of(fkv).store.entries()) == before
    with pytest.raises(ValueError):
        fkv.touch("gone", 0)


def test_touch_never_loses_a_concurrent_put(open_kv: Callable[..., ekv.EKV]) -> None:
    """A thread puts 0, 1, 2, ... and reads back each value right after its put returned, while
    another thread touches the key in a loop. A touch that read the value outside its write
    transaction would write an older value back over a newer put."""
    kv = open_kv(shards=1)
    kv.put("k", -1)
    stop = threading.Event()
    touches = [0]
    errors: list[BaseException] = []

    def toucher() -> None:
        try:
            while not stop.is_set():
                kv.touch("k", 3600)
                touches[0] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=toucher)
    thread.start()
    lost = []
    try:
        wait_until(lambda: touches[0] > 0)
        for i in range(2000):
            kv.put("k", i)
            seen = kv.get("k")
            if seen != i:
                lost.append((i, seen))
    finally:
        stop.set()
        thread.join(60)
    assert not errors
    assert touches[0] > 10
    assert lost == []


# -- memoize ------------------------------------------------------------------------------------


def test_memoize_caches_results_including_none(fkv: ekv.EKV, clock: FakeClock) -> None:
    calls: list[tuple[Any, ...]] = []

    @fkv.memoize(ttl=60)
    def lookup_user(uid: int, *, full: bool = False) -> dict[str, Any] | None:
        calls.append((uid, full))
        return None if uid < 0 else {"uid": uid, "full": full}

    assert lookup_user(1) == {"uid": 1, "full": False}
    assert lookup_user(1) == {"uid": 1, "full": False}
    assert lookup_user(1, full=True) == {"uid": 1, "full": True}
    assert lookup_user(-1) is None
    assert lookup_user(-1) is None
    assert calls == [(1, False), (1, True), (-1, False)]
    assert lookup_user.__name__ == "lookup_user"
    key = lookup_user.key(1)  # type: ignore[attr-defined]
    assert key == f"memo/{__name__}.test_memoize_caches_results_including_none.<locals>.lookup_user/(1,)"
    assert fkv.ttl(key) == pytest.approx(60)
    clock.advance(61)
    lookup_user(1)
    assert calls[-1] == (1, False) and len(calls) == 4


def test_memoize_invalidate_and_invalidate_all(kv: ekv.EKV) -> None:
    calls: list[int] = []

    @kv.memoize(prefix="cache/")
    def square(n: int) -> int:
        calls.append(n)
        return n * n

    @kv.memoize(prefix="cache/")
    def cube(n: int) -> int:
        return n**3

    for n in (1, 2, 3):
        square(n)
    cube(2)
    square.invalidate(2)  # type: ignore[attr-defined]
    square(1), square(2)
    assert calls == [1, 2, 3, 2]
    assert square.invalidate_all() == 3  # type: ignore[attr-defined]
    square(1)
    assert calls == [1, 2, 3, 2, 1]
    assert kv.count("cache/") == 2  # square(1) and cube(2)


def test_memoize_keys_other_arguments_by_their_pickle(kv: ekv.EKV) -> None:
    calls: list[Any] = []

    @kv.memoize()
    def size(value: Any) -> int:
        calls.append(value)
        return len(value)

    assert size({"a": 1, "b": 2}) == 2
    assert size({"a": 1, "b": 2}) == 2
    assert size(frozenset({1})) == 1
    assert size("x" * 500) == 500  # a long readable form is hashed too
    assert len(calls) == 3
    assert size.key({"a": 1}).rsplit("/", 1)[1].startswith("sha256:")  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        size([threading.Lock()])
    with pytest.raises(ValueError):
        kv.memoize(ttl=0)


def test_memoize_async_functions_on_both_facades(kv: ekv.EKV, tmp_path: Path) -> None:
    calls: list[int] = []

    @kv.memoize()
    async def double(n: int) -> int:
        calls.append(n)
        return 2 * n

    async def main() -> None:
        assert await double(4) == 8
        assert await double(4) == 8
        async with ekv.AsyncEKV("a", tmp_path / "async", log=False) as akv:

            @akv.memoize(ttl=60)
            async def triple(n: int) -> int | None:
                calls.append(-n)
                return None if n == 0 else 3 * n

            assert await triple(2) == 6
            assert await triple(2) == 6
            assert await triple(0) is None
            assert await triple(0) is None
            assert await akv.ttl(triple.key(2)) == pytest.approx(60, abs=5)  # type: ignore[attr-defined]
            await triple.invalidate(2)  # type: ignore[attr-defined]
            assert await triple(2) == 6
            assert await triple.invalidate_all() == 2  # type: ignore[attr-defined]
            with pytest.raises(TypeError):
                akv.memoize()(lambda: 1)

    asyncio.run(main())
    assert calls == [4, -2, 0, -2]


def test_async_batches_and_expiry(tmp_path: Path) -> None:
    async def main() -> None:
        async with ekv.AsyncEKV("a", tmp_path / "a", log=False, shards=2) as akv:
            versions = await akv.put_many({"a": 1, "b": 2}, ttl=60)
            assert set(versions) == {"a", "b"}
            assert await akv.get_many(["b", "a", "c"]) == {"b": 2, "a": 1}
            assert await akv.ttl("a") == pytest.approx(60, abs=5)
            assert await akv.touch("a", None) is True
            assert await akv.ttl("a") is None
            assert set(await akv.delete_many(["a", "b"])) == {"a", "b"}
            assert await akv.count() == 0

    asyncio.run(main())
