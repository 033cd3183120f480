"""The synchronous facade: the operations of SPEC section 1."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

import ekv
from ekv.testing import FakeClock


def test_put_get_delete(kv: ekv.EKV) -> None:
    version = kv.put("user/1", {"name": "Alice", "role": "admin"})
    assert isinstance(version, ekv.Version)
    assert version.node_id == kv.node_id
    assert kv.get("user/1") == {"name": "Alice", "role": "admin"}
    tomb = kv.delete("user/1")
    assert tomb > version
    assert kv.get("user/1") is None


def test_get_default_and_missing(kv: ekv.EKV) -> None:
    assert kv.get("missing") is None
    assert kv.get("missing", 42) == 42
    kv.put("k", None)
    assert kv.get("k", 42) is None  # a stored None is a value, not absence
    assert kv.lookup("k") is not None


def test_lookup_returns_value_and_version(kv: ekv.EKV) -> None:
    assert kv.lookup("nope") is None
    version = kv.put("a", [1, 2])
    assert kv.lookup("a") == ([1, 2], version)
    kv.delete("a")
    assert kv.lookup("a") is None


def test_versions_strictly_increase(kv: ekv.EKV) -> None:
    versions = [kv.put(f"k{i % 3}", i) for i in range(200)]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)


def test_scan_keys_iter_are_sorted_and_prefix_bounded(kv: ekv.EKV) -> None:
    for key in ["user/2", "user/10", "user/1", "users", "user0", "user/", "zzz", "a"]:
        kv.put(key, key.upper())
    assert kv.keys("user/") == ["user/", "user/1", "user/10", "user/2"]
    assert kv.scan("user/") == {k: k.upper() for k in ["user/", "user/1", "user/10", "user/2"]}
    assert list(kv.scan("user/")) == ["user/", "user/1", "user/10", "user/2"]
    assert list(kv.iter("user/")) == [(k, k.upper()) for k in ["user/", "user/1", "user/10", "user/2"]]
    everything = sorted(["user/2", "user/10", "user/1", "users", "user0", "user/", "zzz", "a"])
    assert kv.keys("") == everything == kv.keys()
    assert [k for k, _ in kv.iter()] == everything
    assert list(kv.iter_keys("user")) == ["user/", "user/1", "user/10", "user/2", "user0", "users"]
    assert kv.scan("nothing/") == {}


def test_prefix_reads_run_prepared_statements_without_preparing_them_again(kv: ekv.EKV) -> None:
    """A prefix read's range query is prepared once per reader connection and then reused: a bound
    ``LIMIT ?`` made SQLite expire and prepare the statement again at every execution (its planner
    reads the limit's value), a third of a 1,000-key scan's SQL time. Observed through SQLite's
    authorizer, which is consulted whenever a statement is prepared, on this thread's readers."""
    from typing import Any

    import apsw

    from ekv.testing import node_of

    for i in range(50):
        kv.put(f"p/{i:03d}", i)
    expected = {f"p/{i:03d}": i for i in range(50)}
    prepared: list[Any] = []

    def authorizer(*action: Any) -> int:
        prepared.append(action)
        return apsw.SQLITE_OK

    conns = [cur.connection for cur in node_of(kv).store._cursors()]
    for conn in conns:
        conn.authorizer = authorizer
    try:
        for rounds in (1, 3):  # the first round prepares each statement once
            prepared.clear()
            for _ in range(rounds):
                assert kv.scan("p/") == expected
                assert kv.keys("p/") == list(expected)
                assert list(kv.iter("p/")) == list(expected.items())
                assert list(kv.iter_keys("p/")) == list(expected)
                assert kv.scan("") == expected
        assert prepared == []
    finally:
        for conn in conns:
            conn.authorizer = None


@pytest.mark.parametrize("last", ["\uffff", "\U0010ffff", "\ud7ff", "\x7f", "\xff", "\U0001f600"])
def test_prefixes_ending_in_any_character(kv: ekv.EKV, last: str) -> None:
    prefix = "p" + last
    inside = sorted({prefix, prefix + "a", prefix + "\U0010ffff", prefix + last})
    outside = ["p", "q", "p" + chr(ord(last) - 1), "pa"]
    if ord(last) < 0x10FFFF:
        nxt = ord(last) + 1
        outside.append("p" + chr(0xE000 if 0xD800 <= nxt <= 0xDFFF else nxt))
    for key in inside + outside:
        kv.put(key, 1)
    assert kv.keys(prefix) == sorted(inside)
    assert [k for k, _ in kv.iter(prefix)] == sorted(inside)


def test_deleted_and_expired_keys_are_invisible(fkv: ekv.EKV, clock: FakeClock) -> None:
    fkv.put("a/1", 1)
    fkv.put("a/2", 2, ttl=10)
    fkv.put("a/3", 3)
    fkv.delete("a/3")
    assert fkv.keys("a/") == ["a/1", "a/2"]
    clock.advance(10)  # expiry is exact: at expires_at the key is gone
    assert fkv.get("a/2") is None
    assert fkv.lookup("a/2") is None
    assert fkv.keys("a/") == ["a/1"]
    assert fkv.scan("a/") == {"a/1": 1}
    assert list(fkv.iter("a/")) == [("a/1", 1)]


def test_ttl_accepts_timedelta_and_float(fkv: ekv.EKV, clock: FakeClock) -> None:
    fkv.put("a", 1, ttl=timedelta(minutes=30))
    fkv.put("b", 2, ttl=0.5)
    clock.advance(0.49)
    assert fkv.get("b") == 2
    clock.advance(0.02)
    assert fkv.get("b") is None
    clock.advance(30 * 60)
    assert fkv.get("a") is None


def test_put_without_ttl_clears_previous_ttl(fkv: ekv.EKV, clock: FakeClock) -> None:
    fkv.put("a", 1, ttl=5)
    fkv.put("a", 2)
    clock.advance(10)
    assert fkv.get("a") == 2


def test_context_manager_and_idempotent_close(data_dir: Path) -> None:
    with ekv.EKV("ctx", data_dir, log=False) as kv:
        kv.put("a", 1)
    assert kv.closed
    kv.close()
    kv.close()
    with pytest.raises(ekv.ClosedError):
        kv.get("a")


@pytest.mark.parametrize(
    "call",
    [
        lambda kv: kv.put("a", 1),
        lambda kv: kv.get("a"),
        lambda kv: kv.delete("a"),
        lambda kv: kv.lookup("a"),
        lambda kv: kv.scan(""),
        lambda kv: kv.keys(""),
        lambda kv: list(kv.iter("")),
        lambda kv: kv.subscribe(""),
        lambda kv: kv.unsubscribe(""),
        lambda kv: kv.info(),
    ],
)
def test_every_call_on_a_closed_store_raises_closed_error(data_dir: Path, call) -> None:  # type: ignore[no-untyped-def]
    kv = ekv.EKV("closed", data_dir, log=False)
    kv.close()
    with pytest.raises(ekv.ClosedError):
        call(kv)


def test_data_survives_reopen(open_kv, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    kv = open_kv()
    v1 = kv.put("a", {"x": 1})
    kv.delete("b")
    node = kv.node_id
    kv.close()
    kv2 = open_kv()
    assert kv2.node_id == node
    assert kv2.lookup("a") == ({"x": 1}, v1)
    v2 = kv2.put("a", 2)
    assert v2 > v1  # the clock never goes back across restarts


def test_clock_never_goes_back_when_wall_clock_steps_back(open_kv, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    kv = open_kv(clock=clock)
    before = kv.put("a", 1)
    clock.set_ns(clock.now_ns() - 3600 * 10**9)  # the wall clock jumps an hour back
    after = kv.put("a", 2)
    assert after > before
    assert kv.get("a") == 2
    kv.close()
    kv = open_kv(clock=clock)  # and across a restart
    assert kv.put("a", 3) > after
    assert kv.get("a") == 3


def test_json_codec(open_kv) -> None:  # type: ignore[no-untyped-def]
    kv = open_kv(codec="json")
    kv.put("a", {"list": [1, 2, "x"], "n": None})
    assert kv.get("a") == {"list": [1, 2, "x"], "n": None}
    with pytest.raises(ekv.EncodeError):
        kv.put("b", {1, 2})
    assert kv.get("b") is None


def test_custom_codec(open_kv) -> None:  # type: ignore[no-untyped-def]
    class Upper:
        def dumps(self, value: str) -> bytes:
            return value.upper().encode()

        def loads(self, data: bytes) -> str:
            return data.decode()

    kv = open_kv(codec=Upper())
    kv.put("a", "hello")
    assert kv.get("a") == "HELLO"


def test_large_value_round_trip(open_kv) -> None:  # type: ignore[no-untyped-def]
    kv = open_kv(codec="pickle")
    big = b"x" * (64 * 1024 * 1024)
    kv.put("big", big)
    assert kv.get("big") == big


def test_value_too_large_is_refused(open_kv) -> None:  # type: ignore[no-untyped-def]
    kv = open_kv(max_value_size=1000)
    with pytest.raises(ekv.ValueTooLargeError, match="max_value_size"):
        kv.put("a", b"x" * 2000)
    assert kv.get("a") is None


def test_repr_and_properties(kv: ekv.EKV, data_dir: Path) -> None:
    assert "test" in repr(kv) and "open" in repr(kv)
    assert kv.name == "test"
    assert kv.data_dir == data_dir
    assert len(kv.node_id) == 16


def test_unclosed_store_warns(data_dir: Path) -> None:
    import gc

    kv = ekv.EKV("leak", data_dir, log=False)
    with pytest.warns(ResourceWarning):
        del kv
        gc.collect()
    # the directory was released: it can be opened again
    ekv.EKV("leak", data_dir, log=False).close()


def test_metrics_single_node(kv: ekv.EKV) -> None:
    kv.put("a", 1)
    kv.put("b", 2)
    kv.get("a")
    kv.lookup("b")
    sub = kv.subscribe("", max_queue=1)
    kv.put("c", 3)
    kv.put("d", 4)  # overflows the subscription
    m = kv.metrics()
    assert m["ekv_local_writes_total"] == 4
    assert m["ekv_reads_total"] == 2
    assert m["ekv_subscription_overflows_total"] == 1
    text = ekv.format_metrics(m)
    assert "# TYPE ekv_local_writes_total counter" in text and "ekv_local_writes_total 4" in text
    assert "# TYPE ekv_subscriptions gauge" in text
    sub.close()
