"""Unit tests for the pure core (SPEC sections 1, 3, 4 and 11): key validation, the stable shard
hash, prefix ranges, subscription matching, durations, last-writer-wins and the hybrid clock,
plus the agreement between :func:`ekv._core.lww.wins` and the SQL upsert that stores it."""

from __future__ import annotations

import itertools
import math
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from zlib import crc32

import apsw
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import ekv
from ekv._core.clock import HybridClock, SystemClock, WallClock
from ekv._core.durations import NS_PER_S, duration_ns, expires_at_ns, is_stale, tombstone_cutoff_ns
from ekv._core.keys import (
    MAX_KEY_BYTES,
    check_key,
    check_prefix,
    prefix_upper_bound,
    shard_of,
    subscription_candidates,
)
from ekv._core.lww import merge, wins
from ekv._errors import ConfigError
from ekv._model import Entry, Version
from ekv._storage import schema
from ekv.testing import FakeClock, node_of

# Text that can be stored: any code point except the surrogates (which UTF-8 cannot encode).
valid_chars = st.characters(codec="utf-8")
valid_text = st.text(valid_chars, max_size=8)
# A small alphabet that makes shared prefixes, slashes and extreme code points likely.
edge_chars = st.sampled_from(
    ["a", "b", "/", "0", "\x7f", "\xff", "\ud7ff", "\ue000", "\uffff", "\U00010000", "\U0010ffff"]
)
edge_text = st.text(edge_chars, max_size=6)


# -- check_key ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        ("a", b"a"),
        ("user/1", b"user/1"),
        ("caf\u00e9", b"caf\xc3\xa9"),
        ("\U0001f600", b"\xf0\x9f\x98\x80"),
        ("\uffff", b"\xef\xbf\xbf"),
        ("\U0010ffff", b"\xf4\x8f\xbf\xbf"),
        (" ", b" "),
        ("/", b"/"),
    ],
)
def test_check_key_returns_utf8(key: str, encoded: bytes) -> None:
    assert check_key(key) == encoded


@pytest.mark.parametrize("key", [1, 1.5, b"a", bytearray(b"a"), None, ["a"], ("a",), object()])
def test_check_key_rejects_non_str(key: object) -> None:
    with pytest.raises(ekv.InvalidArgumentType) as info:
        check_key(key)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, ekv.Error)
    assert type(key).__name__ in str(info.value)
    assert "key" in str(info.value)


def test_check_key_accepts_str_subclass() -> None:
    class Key(str):
        pass

    assert check_key(Key("user/1")) == b"user/1"


def test_check_key_rejects_empty() -> None:
    with pytest.raises(ekv.InvalidArgument, match="empty") as info:
        check_key("")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("key", ["\x00", "a\x00", "\x00a", "user/\x00/1"])
def test_check_key_rejects_nul_and_names_the_key(key: str) -> None:
    with pytest.raises(ekv.InvalidArgument, match="NUL") as info:
        check_key(key)
    assert isinstance(info.value, ValueError)
    assert repr(key) in str(info.value)


@pytest.mark.parametrize("key", ["\ud800", "a\udfff", "\udc00b", "x\ud83d"])
def test_check_key_rejects_lone_surrogates_and_names_the_key(key: str) -> None:
    with pytest.raises(ekv.InvalidArgument, match="UTF-8") as info:
        check_key(key)
    assert isinstance(info.value, ValueError)
    assert repr(key) in str(info.value)


def test_check_key_length_limit_is_in_utf8_bytes() -> None:
    assert MAX_KEY_BYTES == 65_536
    assert len(check_key("k" * MAX_KEY_BYTES)) == MAX_KEY_BYTES
    assert len(check_key("\u00e9" * (MAX_KEY_BYTES // 2))) == MAX_KEY_BYTES  # 2 bytes each
    assert len(check_key("\U0001f600" * (MAX_KEY_BYTES // 4))) == MAX_KEY_BYTES  # 4 bytes each
    too_long = [
        "k" * (MAX_KEY_BYTES + 1),
        "\u00e9" * (MAX_KEY_BYTES // 2) + "k",
        "\U0001f600" * (MAX_KEY_BYTES // 4 + 1),
    ]
    for key in too_long:
        with pytest.raises(ekv.InvalidArgument) as info:
            check_key(key)
        message = str(info.value)
        assert str(len(key.encode())) in message
        assert str(MAX_KEY_BYTES) in message
        assert repr(key[:57] + "...") in message  # named, but shortened
        assert len(message) < 300


def test_check_key_short_key_is_named_in_full() -> None:
    key = "x" * 60 + "\x00"
    with pytest.raises(ekv.InvalidArgument) as info:
        check_key(key)
    assert repr(key[:57] + "...") in str(info.value)
    key = "y" * 59 + "\x00"  # 60 characters: shown in full
    with pytest.raises(ekv.InvalidArgument) as info:
        check_key(key)
    assert repr(key) in str(info.value)


@given(st.text(max_size=20))
def test_check_key_agrees_with_the_documented_rule(key: str) -> None:
    try:
        encoded = key.encode()
    except UnicodeEncodeError:
        encoded = None
    valid = encoded is not None and 0 < len(encoded) <= MAX_KEY_BYTES and b"\x00" not in encoded
    if valid:
        assert check_key(key) == encoded
    else:
        with pytest.raises(ekv.InvalidArgument):
            check_key(key)


# -- check_prefix ------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "a", "user/", "\uffff", "\U0010ffff", "x" * (MAX_KEY_BYTES + 10)])
def test_check_prefix_accepts(prefix: str) -> None:
    result = check_prefix(prefix)
    assert result == prefix
    assert type(result) is str


def test_check_prefix_returns_plain_str_for_subclass() -> None:
    class P(str):
        pass

    result = check_prefix(P("room/"))
    assert result == "room/"
    assert type(result) is str


@pytest.mark.parametrize("prefix", [None, 1, b"room/", ["room/"]])
def test_check_prefix_rejects_non_str(prefix: object) -> None:
    with pytest.raises(ekv.InvalidArgumentType, match="prefix") as info:
        check_prefix(prefix)
    assert isinstance(info.value, TypeError)
    assert type(prefix).__name__ in str(info.value)


@pytest.mark.parametrize(
    ("prefix", "reason"), [("a\x00", "NUL"), ("\x00", "NUL"), ("a\ud800", "UTF-8"), ("\udfff/", "UTF-8")]
)
def test_check_prefix_rejects_bad_values(prefix: str, reason: str) -> None:
    with pytest.raises(ekv.InvalidArgument, match=reason) as info:
        check_prefix(prefix)
    assert isinstance(info.value, ValueError)
    assert repr(prefix) in str(info.value)


# -- shard_of ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "shards", "expected"),
    [
        # crc32(b"123456789") is the CRC-32 check value 0xCBF43926.
        (b"123456789", 1, 0),
        (b"123456789", 3, 2),
        (b"123456789", 8, 6),
        (b"123456789", 1024, 294),
        (b"a", 2, 1),
        (b"a", 4, 3),
        (b"a", 1024, 579),
        (b"user/1", 3, 2),
        (b"user/1", 8, 6),
        (b"user/1", 1024, 150),
        ("caf\u00e9".encode(), 8, 5),
        ("caf\u00e9".encode(), 1024, 693),
        ("\U0001f600".encode(), 3, 1),
        ("\U0001f600".encode(), 8, 4),
    ],
)
def test_shard_of_is_pinned(encoded: bytes, shards: int, expected: int) -> None:
    # Hard-coded: changing the hash would strand every existing data directory.
    assert shard_of(encoded, shards) == expected


def test_shard_of_crc32_check_value() -> None:
    assert crc32(b"123456789") == 0xCBF43926
    assert shard_of(b"123456789", 2**32) == 0xCBF43926


@given(st.binary(min_size=1, max_size=40), st.integers(1, 1024))
def test_shard_of_is_in_range_and_deterministic(encoded: bytes, shards: int) -> None:
    first = shard_of(encoded, shards)
    assert 0 <= first < shards
    assert shard_of(bytes(encoded), shards) == first
    assert shard_of(encoded, 1) == 0


@pytest.mark.parametrize("shards", [2, 3, 8, 16])
def test_shard_of_distributes_evenly(shards: int) -> None:
    n = 16_000
    counts = Counter(shard_of(f"user/{i}".encode(), shards) for i in range(n))
    assert set(counts) == set(range(shards))
    expected = n / shards
    for count in counts.values():
        assert abs(count - expected) < 0.1 * expected, counts


def test_store_routes_keys_by_shard_of(open_kv) -> None:  # type: ignore[no-untyped-def]
    kv = open_kv(shards=4)
    keys = [f"k/{i}" for i in range(60)] + ["\uffff", "\U0010ffff", "caf\u00e9"]
    for key in keys:
        kv.put(key, key)
    store = node_of(kv).store
    seen = []
    for index in range(4):
        for entry in store.entries(shard=index):
            assert shard_of(entry.key.encode(), 4) == index
            seen.append(entry.key)
    assert sorted(seen) == sorted(keys)


# -- prefix_upper_bound ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "upper"),
    [
        ("", None),
        ("a", "b"),
        ("user/", "user0"),
        ("ab", "ac"),
        ("\x7f", "\x80"),
        ("\xff", "\u0100"),
        ("\ud7fe", "\ud7ff"),
        ("\ud7ff", "\ue000"),  # the surrogate block is skipped
        ("x\ud7ff", "x\ue000"),
        ("\ue000", "\ue001"),
        ("\uffff", "\U00010000"),
        ("p\uffff", "p\U00010000"),
        ("\U0001f600", "\U0001f601"),
        ("\U0010fffe", "\U0010ffff"),
        ("\U0010ffff", None),
        ("\U0010ffff\U0010ffff", None),
        ("a\U0010ffff", "b"),
        ("a\U0010ffff\U0010ffff", "b"),
        ("ab\U0010ffff", "ac"),
        ("\ud7ff\U0010ffff", "\ue000"),
    ],
)
def test_prefix_upper_bound(prefix: str, upper: str | None) -> None:
    assert prefix_upper_bound(prefix) == upper


@given(st.one_of(edge_text, valid_text), st.one_of(edge_text, valid_text), st.booleans())
@example("\ud7ff", "\ue000", False)
@example("\uffff", "\U00010000", False)
@example("a\U0010ffff", "b", False)
def test_prefix_upper_bound_bounds_exactly_the_prefix_range(prefix: str, other: str, extend: bool) -> None:
    candidate = prefix + other if extend else other
    upper = prefix_upper_bound(prefix)
    in_range = prefix <= candidate and (upper is None or candidate < upper)
    assert in_range == candidate.startswith(prefix)
    if upper is not None:
        upper.encode()  # storable: never a surrogate
        assert upper > prefix
        assert not upper.startswith(prefix)
        # SQLite compares UTF-8 bytes; the bound must mean the same there.
        assert (candidate.encode() < upper.encode()) == (candidate < upper)
    else:
        assert set(prefix) <= {"\U0010ffff"}


# -- subscription_candidates -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a", ["", "a"]),
        ("room/1", ["", "room/", "room/1"]),
        ("room/", ["", "room/"]),
        ("/", ["", "/"]),
        ("a/b/c", ["", "a/", "a/b/", "a/b/c"]),
        ("a//b", ["", "a/", "a//", "a//b"]),
        ("/a", ["", "/", "/a"]),
        ("a/b/", ["", "a/", "a/b/"]),
    ],
)
def test_subscription_candidates(key: str, expected: list[str]) -> None:
    assert subscription_candidates(key) == expected


def _pattern_matches(pattern: str, key: str) -> bool:
    """The documented rule: "" matches everything, "x/" every key under it, else exact."""
    return pattern == "" or pattern == key or (pattern.endswith("/") and key.startswith(pattern))


@given(st.text(st.sampled_from("ab/"), min_size=1, max_size=8), st.text(st.sampled_from("ab/"), max_size=8))
def test_subscription_candidates_are_exactly_the_matching_patterns(key: str, pattern: str) -> None:
    candidates = subscription_candidates(key)
    assert len(candidates) == len(set(candidates))
    assert (pattern in candidates) == _pattern_matches(pattern, key)


# -- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ns"),
    [
        (1, NS_PER_S),
        (1800, 1800 * NS_PER_S),
        (0.5, 500_000_000),
        (1.5, 1_500_000_000),
        (0.001, 1_000_000),
        (1e-9, 1),
        (timedelta(minutes=30), 1800 * NS_PER_S),
        (timedelta(microseconds=1), 1_000),
        (timedelta(days=7), 7 * 86_400 * NS_PER_S),
        # exact, no float rounding: 10,000 days and one microsecond
        (timedelta(days=10_000, microseconds=1), 10_000 * 86_400 * NS_PER_S + 1_000),
        (2**62 // NS_PER_S, (2**62 // NS_PER_S) * NS_PER_S),
    ],
)
def test_duration_ns_accepts(value: object, ns: int) -> None:
    result = duration_ns(value, "ttl")
    assert result == ns
    assert type(result) is int


@pytest.mark.parametrize("value", [True, False, "10", None, b"1", Decimal("1"), 1j, [1]])
def test_duration_ns_rejects_wrong_types(value: object) -> None:
    with pytest.raises(ekv.InvalidArgumentType, match="ttl") as info:
        duration_ns(value, "ttl")
    assert isinstance(info.value, TypeError)
    assert type(value).__name__ in str(info.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, float("nan")])
def test_duration_ns_rejects_non_finite(value: float) -> None:
    with pytest.raises(ekv.InvalidArgument, match="finite") as info:
        duration_ns(value, "ttl")
    assert isinstance(info.value, ValueError)
    assert "ttl" in str(info.value)


@pytest.mark.parametrize(
    "value", [0, -1, 0.0, -0.0, -0.5, 1e-10, timedelta(0), timedelta(seconds=-1), timedelta(microseconds=-1)]
)
def test_duration_ns_rejects_zero_and_negative(value: object) -> None:
    with pytest.raises(ekv.InvalidArgument, match="greater than zero") as info:
        duration_ns(value, "gc_interval")
    assert isinstance(info.value, ValueError)
    assert "gc_interval" in str(info.value)


@pytest.mark.parametrize("value", [10**30, 2**62 // NS_PER_S + 1, 1e299, 1e12, timedelta.max])
def test_duration_ns_rejects_too_large(value: object) -> None:
    with pytest.raises(ekv.InvalidArgument, match="too large"):
        duration_ns(value, "ttl")


@pytest.mark.parametrize("value", [1e300, sys.float_info.max, 4.7e9])
def test_duration_ns_rejects_huge_float_with_invalid_argument(value: float) -> None:
    # 1e300 s is 1e309 ns, which overflows a float: this must still be "too large", not an
    # OverflowError from round(inf).
    with pytest.raises(ekv.InvalidArgument, match="too large"):
        duration_ns(value, "ttl")


def test_duration_ns_uses_the_given_error_class() -> None:
    with pytest.raises(ConfigError, match="tombstone_ttl"):
        duration_ns(0, "tombstone_ttl", error=ConfigError)
    with pytest.raises(ConfigError, match="finite"):
        duration_ns(math.nan, "tombstone_ttl", error=ConfigError)
    # a wrong type is always InvalidArgumentType
    with pytest.raises(ekv.InvalidArgumentType):
        duration_ns("1", "tombstone_ttl", error=ConfigError)


@given(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False))
def test_duration_ns_float_is_rounded_to_the_nearest_ns(seconds: float) -> None:
    assert duration_ns(seconds, "ttl") == round(seconds * NS_PER_S)


def test_expiry_and_cutoff_arithmetic() -> None:
    assert expires_at_ns(1_000, 500) == 1_500
    assert tombstone_cutoff_ns(10_000, 3_000) == 7_000


def test_is_stale() -> None:
    ttl, gc = 1_000, 100
    assert is_stale(5_000, None, ttl, gc)  # never recorded activity
    assert not is_stale(5_000, 5_000, ttl, gc)
    assert not is_stale(5_000, 5_000 - (ttl - gc), ttl, gc)  # exactly at the threshold
    assert is_stale(5_000, 5_000 - (ttl - gc) - 1, ttl, gc)
    assert not is_stale(5_000, 6_000, ttl, gc)  # activity "in the future" (clock stepped back)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(2, 10**5), st.integers(1, 10**5))
def test_is_stale_threshold(now: int, last: int, ttl: int, gc: int) -> None:
    assume(gc < ttl)
    assert is_stale(now, last, ttl, gc) == (now - last > ttl - gc)


# -- versions and last-writer-wins -------------------------------------------------------------


def test_version_ordering() -> None:
    assert Version(2, "a") > Version(1, "z")
    assert Version(1, "b") > Version(1, "a")
    assert Version(1, "ab") > Version(1, "a")
    assert Version(1, "a") == Version(1, "a")
    assert Version(1, "\U00010000") > Version(1, "\uffff")  # code point order = UTF-8 byte order
    assert Version(1, "\ue000") > Version(1, "\ud7ff")


@given(valid_text, valid_text)
def test_origin_order_is_utf8_byte_order(a: str, b: str) -> None:
    assert (a < b) == (a.encode() < b.encode())


def test_wins() -> None:
    v = Version(10, "n1")
    assert wins(v, None)
    assert not wins(v, v)  # re-applying the same write is a no-op
    assert wins(Version(11, "n0"), v)
    assert not wins(Version(9, "n9"), v)
    assert wins(Version(10, "n2"), v)  # tie broken by origin
    assert not wins(Version(10, "n0"), v)


def _entry(ts: int, origin: str, value: bytes | None = b"v", key: str = "k", expires: int | None = None) -> Entry:
    return Entry(key, ts, origin, 1, expires, value)


def test_merge() -> None:
    put = _entry(5, "a", b"x")
    tomb = _entry(6, "a", None)
    newer_put = _entry(6, "b", b"y")
    assert merge(None, None) is None
    assert merge(put, None) is put
    assert merge(None, put) is put
    assert merge(put, tomb) is tomb  # a delete with a higher version beats a put
    assert merge(tomb, put) is tomb
    assert merge(tomb, newer_put) is newer_put  # and a put with a higher version beats a delete
    assert merge(newer_put, tomb) is newer_put
    assert merge(put, put) is put


versions = st.builds(
    Version,
    st.one_of(st.integers(0, 4), st.integers(-(2**63), 2**63 - 1)),
    st.one_of(st.sampled_from(["", "a", "b", "ab", "B", "\u00e9", "\uffff", "\U00010000", "\U0010ffff"]), valid_text),
)


@given(versions, versions)
def test_wins_is_a_strict_total_order(a: Version, b: Version) -> None:
    if a == b:
        assert not wins(a, b) and not wins(b, a)
    else:
        assert wins(a, b) != wins(b, a)
    assert wins(a, b) == ((a.timestamp_ns, a.origin.encode()) > (b.timestamp_ns, b.origin.encode()))


def test_entry_model() -> None:
    live = Entry("k", 10, "a", 1, None, b"v")
    assert live.version == Version(10, "a")
    assert not live.is_tombstone
    assert live.deleted_at_ns is None
    assert live.is_visible(10**20)
    tomb = Entry("k", 10, "a", 1, None, None)
    assert tomb.is_tombstone and tomb.deleted_at_ns == 10
    assert not tomb.is_visible(0)
    expiring = Entry("k", 10, "a", 1, 100, b"v")
    assert expiring.is_visible(99)
    assert not expiring.is_visible(100)  # expiry is exact: invisible at expires_at
    expired = Entry("k", 10, "a", 1, 100, None)
    assert expired.deleted_at_ns == 100  # an expired put died at its expiry time


# -- the SQL upsert mirrors wins() -------------------------------------------------------------


@pytest.fixture(scope="module")
def memdb():  # type: ignore[no-untyped-def]
    conn = apsw.Connection(":memory:")
    conn.cursor().execute(schema.DDL)
    yield conn
    conn.close()


sql_versions = st.builds(
    Version,
    st.one_of(st.integers(0, 3), st.integers(-(2**63), 2**63 - 1)),
    st.one_of(
        st.sampled_from(["", "a", "b", "ab", "a\x00", "A", "\u00e9", "\ud7ff", "\ue000", "\uffff", "\U00010000"]),
        valid_text,
    ),
)


@settings(max_examples=500)
@given(sql_versions, sql_versions, st.booleans())
@example(Version(1, "a"), Version(1, "a"), False)
@example(Version(1, "b"), Version(1, "a"), True)
@example(Version(1, "\U00010000"), Version(1, "\uffff"), False)
@example(Version(1, "a\x00"), Version(1, "a"), False)
@example(Version(-1, "z"), Version(0, ""), False)
def test_sql_upsert_agrees_with_wins(memdb, current: Version, incoming: Version, tombstone: bool) -> None:  # type: ignore[no-untyped-def]
    cur = memdb.cursor()
    cur.execute("DELETE FROM kv")
    cur.execute("DELETE FROM log")  # every example starts from an empty shard
    cur.execute(schema.UPSERT, ("k", current.timestamp_ns, current.origin, 1, None, None, b"old", 0))
    assert memdb.changes() == 1
    value = None if tombstone else b"new"
    deleted_at = incoming.timestamp_ns if tombstone else None
    cur.execute(schema.UPSERT, ("k", incoming.timestamp_ns, incoming.origin, 2, None, deleted_at, value, 0))
    changed = memdb.changes() == 1
    assert changed == wins(incoming, current)
    row = cur.execute("SELECT ts, origin, oseq, value FROM kv WHERE key = 'k'").fetchall()
    assert len(row) == 1
    ts, origin, oseq, stored = row[0]
    if changed:
        assert (Version(ts, origin), oseq, stored) == (incoming, 2, value)
    else:
        assert (Version(ts, origin), oseq, stored) == (current, 1, b"old")
    # and an insert into an empty slot always wins, like wins(v, None)
    cur.execute(schema.UPSERT, ("other", incoming.timestamp_ns, incoming.origin, 3, None, None, b"x", 0))
    assert memdb.changes() == 1 and wins(incoming, None)
    cur.execute("DELETE FROM kv")
    cur.execute("DELETE FROM log")


def test_upsert_that_wins_by_update_keeps_its_dot_in_the_log(memdb) -> None:  # type: ignore[no-untyped-def]
    """A write applied again (a replay after its row was purged and an older version took the
    key) wins through the DO UPDATE path while its dot is still in the change log; the log row
    must be replaced, as on the INSERT path."""
    cur = memdb.cursor()
    cur.execute("DELETE FROM kv")
    cur.execute("DELETE FROM log")
    try:
        cur.execute(schema.UPSERT, ("k", 10, "peer", 7, None, 10, None, 0))  # a delete, dot (peer, 7)
        cur.execute("DELETE FROM kv")  # its tombstone is purged; the log still holds the dot
        cur.execute(schema.UPSERT, ("k", 5, "other", 1, None, None, b"old", 0))  # an older put arrives
        cur.execute(schema.UPSERT, ("k", 10, "peer", 7, None, 10, None, 0))  # the delete is replayed
        assert cur.execute("SELECT ts, origin, value FROM kv WHERE key = 'k'").fetchall() == [(10, "peer", None)]
        assert cur.execute("SELECT key, ts FROM log WHERE origin = 'peer' AND oseq = 7").fetchall() == [("k", 10)]
    finally:
        cur.execute("DELETE FROM kv")
        cur.execute("DELETE FROM log")


def test_upsert_that_wins_by_insert_keeps_its_dot_in_the_log(memdb) -> None:  # type: ignore[no-untyped-def]
    cur = memdb.cursor()
    cur.execute("DELETE FROM kv")
    cur.execute("DELETE FROM log")
    try:
        cur.execute(schema.UPSERT, ("k", 10, "peer", 7, None, 10, None, 0))
        cur.execute("DELETE FROM kv")
        cur.execute(schema.UPSERT, ("k", 10, "peer", 7, None, 10, None, 0))  # replayed into an empty slot
        assert cur.execute("SELECT key, ts FROM log WHERE origin = 'peer' AND oseq = 7").fetchall() == [("k", 10)]
    finally:
        cur.execute("DELETE FROM kv")
        cur.execute("DELETE FROM log")


# -- the hybrid logical clock ------------------------------------------------------------------


def test_wall_clocks() -> None:
    assert isinstance(SystemClock(), WallClock)
    assert isinstance(FakeClock(), WallClock)
    before = time.time_ns()
    now = SystemClock().now_ns()
    after = time.time_ns()
    assert before <= now <= after


def test_clock_follows_the_wall_clock() -> None:
    wall = FakeClock(1_000)
    clock = HybridClock(wall)
    assert clock.tick() == 1_000
    assert clock.tick() == 1_001  # same wall time: +1
    wall.set_ns(5_000)
    assert clock.tick() == 5_000
    assert clock.last_ns == 5_000


def test_clock_never_repeats_or_goes_back_when_wall_steps_back() -> None:
    wall = FakeClock(10_000_000)
    clock = HybridClock(wall)
    first = [clock.tick() for _ in range(5)]
    wall.set_ns(1_000)  # a big step back
    later = [clock.tick() for _ in range(5)]
    ticks = first + later
    assert ticks == sorted(ticks)
    assert len(set(ticks)) == len(ticks)
    assert later[0] == first[-1] + 1
    wall.set_ns(20_000_000)  # the wall clock catches up: back to wall time
    assert clock.tick() == 20_000_000


def test_clock_observe() -> None:
    wall = FakeClock(1_000)
    clock = HybridClock(wall)
    clock.observe(10**15)  # a timestamp from a peer far ahead
    assert clock.last_ns == 10**15
    assert clock.tick() == 10**15 + 1
    clock.observe(5)  # older timestamps change nothing
    assert clock.tick() == 10**15 + 2
    clock.observe(10**15 + 2)  # equal to the last: the next tick still exceeds it
    assert clock.tick() == 10**15 + 3


def test_clock_floor() -> None:
    clock = HybridClock(FakeClock(100), floor_ns=500)
    assert clock.last_ns == 500
    assert clock.tick() == 501


clock_ops = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.just(0)),
        st.tuples(st.just("wall"), st.integers(0, 10**6)),
        st.tuples(st.just("observe"), st.integers(0, 10**6)),
    ),
    max_size=60,
)


@given(clock_ops)
def test_clock_properties(ops: list[tuple[str, int]]) -> None:
    wall = FakeClock(500_000)
    clock = HybridClock(wall)
    high = 0  # the highest timestamp issued or observed
    issued: list[int] = []
    for op, arg in ops:
        if op == "tick":
            ts = clock.tick()
            assert ts > high  # never repeats, never goes back, exceeds everything observed
            assert ts >= wall.now_ns()  # never behind the wall clock
            assert ts == max(wall.now_ns(), high + 1)  # and no further ahead than needed
            issued.append(ts)
            high = ts
        elif op == "wall":
            wall.set_ns(arg)
        else:
            clock.observe(arg)
            high = max(high, arg)
        assert clock.last_ns == high
    assert issued == sorted(set(issued))


@pytest.mark.parametrize("wall", [FakeClock(1_000), SystemClock()], ids=["frozen-wall", "system-wall"])
def test_clock_is_thread_safe(wall: WallClock) -> None:
    clock = HybridClock(wall)
    threads_n, per_thread = 8, 5_000
    results: list[list[int]] = [[] for _ in range(threads_n)]
    barrier = threading.Barrier(threads_n)

    def work(out: list[int]) -> None:
        barrier.wait()
        tick = clock.tick
        for _ in range(per_thread):
            out.append(tick())

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # force many thread switches inside tick()
    try:
        threads = [threading.Thread(target=work, args=(out,)) for out in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    every = [ts for out in results for ts in out]
    assert len(every) == threads_n * per_thread
    assert len(set(every)) == len(every)
    for out in results:  # each thread sees its own ticks strictly increase
        assert all(a < b for a, b in itertools.pairwise(out))
    if isinstance(wall, FakeClock):
        # a frozen wall clock: the ticks are exactly the consecutive integers from wall time
        assert sorted(every) == list(range(1_000, 1_000 + threads_n * per_thread))
    assert clock.last_ns == max(every)
