"""Property tests (SPEC section 11): last-writer-wins merge is commutative, associative and
idempotent, and any delivery order of the same changes, with duplicates and in any batching,
gives the same stored state, equal to the fold of :func:`ekv._core.lww.merge`."""

from __future__ import annotations

import contextlib
import functools
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ekv
from ekv._core.lww import merge
from ekv._model import Entry, Event, Version
from ekv.testing import FakeClock, entries, node_of

NOW = 1_000_000_000  # the fake wall clock of every store here (1 s after the epoch)
ORIGINS = ["n1", "n2", "n10", "\u00e9"]  # "n10" < "n2": byte order, not numeric
KEYS = ["a", "b/1", "b/2", "c\uffff"]
EXPIRIES = [None, None, None, NOW - 10, NOW, NOW + 1, NOW + 10**9]  # NOW itself is already expired
TIMESTAMPS = st.integers(NOW - 4, NOW + 2)  # small range: equal timestamps (ties) are common

values = st.one_of(st.none(), st.binary(max_size=3))


def _with_dots(raw: list[tuple[str, int, str, int | None, bytes | None]]) -> list[Entry]:
    """Give every write a unique dot ``(origin, oseq)``, numbered per origin."""
    seq: dict[str, int] = {}
    out = []
    for key, ts, origin, expires, value in raw:
        seq[origin] = seq.get(origin, 0) + 1
        out.append(Entry(key, ts, origin, seq[origin], expires, value))
    return out


def entry_lists(keys: list[str], min_size: int = 0, max_size: int = 24) -> st.SearchStrategy[list[Entry]]:
    """Writes over ``keys``; a version names one write, so versions are unique per key."""
    raw = st.lists(
        st.tuples(st.sampled_from(keys), TIMESTAMPS, st.sampled_from(ORIGINS), st.sampled_from(EXPIRIES), values),
        min_size=min_size,
        max_size=max_size,
        unique_by=lambda t: (t[0], t[1], t[2]),
    )
    return raw.map(_with_dots)


# -- merge is a semilattice join ---------------------------------------------------------------


@given(entry_lists(["k"], min_size=3, max_size=3))
def test_merge_is_commutative_associative_idempotent(three: list[Entry]) -> None:
    a, b, c = three
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a
    assert merge(merge(a, b), b) == merge(a, b)
    assert merge(a, None) == a == merge(None, a)
    assert merge(a, b) in (a, b)
    assert merge(a, b) == max(a, b, key=lambda e: e.version)


@given(st.data())
def test_fold_of_merge_ignores_order_and_duplicates(data: st.DataObject) -> None:
    writes = data.draw(entry_lists(["k"], max_size=12))
    extra = data.draw(st.lists(st.sampled_from(writes), max_size=6)) if writes else []
    order = data.draw(st.permutations(writes + extra))
    expected = max(writes, key=lambda e: e.version) if writes else None
    assert functools.reduce(merge, writes, None) == expected
    assert functools.reduce(merge, order, None) == expected


# -- delivery order does not matter to the store ----------------------------------------------


class RawCodec:
    """Values are the stored bytes themselves, so dumps can be compared with the inputs."""

    def dumps(self, value: bytes) -> bytes:
        return value

    def loads(self, data: bytes) -> bytes:
        return data


@contextlib.contextmanager
def fresh_store(name: str) -> Iterator[ekv.EKV]:
    with tempfile.TemporaryDirectory(prefix="ekv-prop-") as tmp:
        kv = ekv.EKV(name, tmp, shards=2, log=False, clock=FakeClock(NOW), codec=RawCodec())
        try:
            yield kv
        finally:
            kv.close()


def stored_form(entry: Entry) -> Entry:
    """What a store keeps for a write that arrives at NOW: an already-expired put is kept as the
    tombstone of the same version (its expiry time kept)."""
    if entry.value is not None and entry.expires_at_ns is not None and entry.expires_at_ns <= NOW:
        return Entry(entry.key, entry.timestamp_ns, entry.origin, entry.oseq, entry.expires_at_ns, None)
    return entry


def as_rows(items: Any) -> set[tuple[Any, ...]]:
    return {(e.key, e.timestamp_ns, e.origin, e.oseq, e.expires_at_ns, e.value) for e in items}


def expected_state(writes: list[Entry]) -> set[tuple[Any, ...]]:
    winners: dict[str, Entry | None] = {}
    for entry in writes:
        winners[entry.key] = merge(winners.get(entry.key), entry)
    return as_rows(stored_form(e) for e in winners.values() if e is not None)


def deliveries(writes: list[Entry]) -> st.SearchStrategy[list[list[Entry]]]:
    """The writes, some of them duplicated, in some order, cut into batches."""

    @st.composite
    def build(draw: st.DrawFn) -> list[list[Entry]]:
        extra = draw(st.lists(st.sampled_from(writes), max_size=8)) if writes else []
        order = draw(st.permutations(writes + extra))
        cuts = sorted(set(draw(st.lists(st.integers(0, len(order)), max_size=5))))
        bounds = [0, *cuts, len(order)]
        return [order[i:j] for i, j in itertools.pairwise(bounds) if j > i]

    return build()


def drain(sub: ekv.Subscription) -> list[Event]:
    events: list[Event] = []
    while True:
        try:
            events.extend(sub.get(timeout=0))
        except ekv.Timeout:
            return events


def check_applied_and_events(
    writes: list[Entry], writes_applied: list[Entry], events: list[Event], final: set[tuple[Any, ...]]
) -> None:
    """The entries a store reported as applied, in order, are the winners at the moment they
    arrived; each produced exactly one event; the last one per key is the final state."""
    originals = {(w.key, w.version): w for w in writes}
    current: dict[str, Entry] = {}
    assert len(events) == len(writes_applied)
    for entry, event in zip(writes_applied, events, strict=True):
        before = current.get(entry.key)
        assert before is None or entry.version > before.version  # a real LWW win, applied once
        assert entry == stored_form(entry)  # reported in stored form
        assert (event.key, event.version) == (entry.key, entry.version)
        previous = None if before is None or not before.is_visible(NOW) else before.value
        if entry.value is not None:
            assert (event.type, event.value) == ("put", entry.value)
        elif entry.expires_at_ns is not None:
            # An already-expired put reports its own value; a replicated expiry tombstone reports
            # the value it hid.
            original = originals[(entry.key, entry.version)]
            expired_value = original.value if original.value is not None else previous
            assert (event.type, event.value) == ("expired", expired_value)
        else:
            assert (event.type, event.value) == ("delete", previous)
        current[entry.key] = entry
    assert as_rows(current.values()) == final


@pytest.mark.long
@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_delivery_order_gives_the_same_state(data: st.DataObject) -> None:
    check_any_delivery_order(data)


@pytest.mark.soak
@settings(max_examples=1000, deadline=None)
@given(st.data())
def test_any_delivery_order_gives_the_same_state_soak(data: st.DataObject) -> None:
    """The soak tier: four times the default run's examples."""
    check_any_delivery_order(data)


def check_any_delivery_order(data: st.DataObject) -> None:
    writes = data.draw(entry_lists(KEYS), label="writes")
    first = data.draw(deliveries(writes), label="first delivery")
    second = data.draw(deliveries(writes), label="second delivery")
    expected = expected_state(writes)
    dumps = []
    with fresh_store("left") as left, fresh_store("right") as right:
        for kv, batches in ((left, first), (right, second)):
            sub = kv.subscribe("")
            store = node_of(kv).store
            applied: list[Entry] = []
            for batch in batches:
                applied.extend(store.apply(batch))
            dump = as_rows(entries(kv))
            check_applied_and_events(writes, applied, drain(sub), dump)
            dumps.append(dump)
            # Replaying everything again is a no-op: nothing wins, no event fires.
            assert store.apply(writes) == []
            assert drain(sub) == []
            assert as_rows(entries(kv)) == dump
            # Reads see exactly the live, unexpired winners.
            visible = {row[0]: row[5] for row in dump if row[5] is not None and (row[4] is None or row[4] > NOW)}
            assert kv.scan("") == dict(sorted(visible.items()))
            for key in KEYS:
                assert kv.get(key, "absent") == visible.get(key, "absent")
                found = kv.lookup(key)
                if key in visible:
                    row = next(r for r in dump if r[0] == key)
                    assert found == (visible[key], Version(row[1], row[2]))
                else:
                    assert found is None
            sub.close()
    assert dumps[0] == dumps[1] == expected
    # Expired puts are stored as tombstones on both sides.
    for row in expected:
        if row[4] is not None and row[4] <= NOW:
            assert row[5] is None


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_state_is_the_same_whatever_each_store_saw_first(data: st.DataObject) -> None:
    """A store that received everything agrees with one fed through another store's dump (the
    shape of a full sync): merging states is the same as merging the writes."""
    writes = data.draw(entry_lists(KEYS), label="writes")
    split = data.draw(st.integers(0, len(writes)))
    with fresh_store("a") as a, fresh_store("b") as b, fresh_store("c") as c:
        node_of(a).store.apply(writes[:split])
        node_of(b).store.apply(writes[split:])
        # c merges the two states, in both orders and twice
        node_of(c).store.apply(list(entries(b)))
        node_of(c).store.apply(list(entries(a)))
        node_of(c).store.apply(list(entries(b)))
        assert as_rows(entries(c)) == expected_state(writes)


# -- the clock respects what was applied ---------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(entry_lists(KEYS, min_size=1, max_size=8), st.sampled_from([*KEYS, "fresh"]))
def test_local_write_after_apply_exceeds_every_applied_version(writes: list[Entry], key: str) -> None:
    """SPEC 3: a write issued after the node applied version V gets a version greater than V,
    even when V's timestamp is ahead of the local wall clock (here up to 2 ns ahead, with
    origins that win timestamp ties against the local node id)."""
    with fresh_store("clock") as kv:
        node_of(kv).store.apply(writes)
        version = kv.put(key, b"local")
        assert all(version > w.version for w in writes)
        assert kv.get(key) == b"local"


FUTURE = NOW + 3600 * 10**9  # a peer whose clock runs an hour ahead


def _open_raw(path: Path, clock: FakeClock) -> ekv.EKV:
    return ekv.EKV("restart", path, shards=2, log=False, clock=clock, codec=RawCodec())


def test_local_write_to_the_same_key_after_restart_overtakes_an_applied_future_version(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    kv = _open_raw(tmp_path, clock)
    try:
        node_of(kv).store.apply([Entry("remote", FUTURE, "peer", 1, None, b"theirs")])
    finally:
        kv.close()
    kv = _open_raw(tmp_path, clock)
    try:
        version = kv.put("remote", b"mine")
        assert version > Version(FUTURE, "peer")
        assert kv.get("remote") == b"mine"
    finally:
        kv.close()


def test_local_write_after_restart_exceeds_versions_applied_before(tmp_path: Path) -> None:
    """SPEC 3 across a restart: the clock must come back above versions applied from peers, also
    when no local write (and no GC pass) happened after they were applied."""
    clock = FakeClock(NOW)
    kv = _open_raw(tmp_path, clock)
    try:
        node_of(kv).store.apply([Entry("remote", FUTURE, "peer", 1, None, b"theirs")])
        assert kv.put("other", b"x") > Version(FUTURE, "peer")  # holds before the restart
    finally:
        kv.close()
    kv = _open_raw(tmp_path, clock)
    try:
        assert kv.put("another", b"y") > Version(FUTURE, "peer")  # holds: the log tail has "other"
    finally:
        kv.close()
    # The same, without a local write between the apply and the restart:
    fresh = tmp_path / "fresh"
    kv = _open_raw(fresh, clock)
    try:
        node_of(kv).store.apply([Entry("remote", FUTURE, "peer", 1, None, b"theirs")])
    finally:
        kv.close()
    kv = _open_raw(fresh, clock)
    try:
        version = kv.put("other", b"x")
        assert version > Version(FUTURE, "peer"), (version, FUTURE)
    finally:
        kv.close()
