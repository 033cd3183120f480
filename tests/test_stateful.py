"""A stateful model test: random sequences of puts (with and without TTL), deletes, clock moves,
GC passes and restarts against an :class:`ekv.EKV` on a fake clock, checked after every step
against a plain-dict model (SPEC sections 1, 3, 4 and 7).

The model keeps, per key, the row ekv must hold (live value or tombstone, version, per-shard
sequence number, expiry), so it can predict every read, the raw dump including tombstones, the
events of one catch-all subscription, GC counts and the version numbers across restarts.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ekv
from ekv._core.durations import NS_PER_S, duration_ns
from ekv._core.keys import shard_of
from ekv.testing import FakeClock, entries, run_gc

SHARDS = 3
TOMBSTONE_TTL_S = 3600
# Far longer than any test run: the background GC thread never fires, GC runs only when a rule
# asks for it, so every event is predictable.
GC_INTERVAL_S = 3599

KEYS = ["a", "a/", "a/1", "a/2", "a/b/1", "a/b/2", "ab", "b", "b/x", "\u00e9/1", "\uffff/z", "z\U0010ffff"]
PREFIXES = ["", "a", "a/", "a/b/", "a/b/1", "b", "b/", "\u00e9/", "\uffff", "z", "z\U0010ffff", "nothing/"]
TTLS = [None, None, 1, 5, 10, 30, 2.5]

values = st.one_of(st.none(), st.integers(-3, 3), st.text("xy", max_size=2), st.binary(max_size=2))

MISSING = object()


@dataclass
class Row:
    """What the store must hold for one key."""

    version: ekv.Version
    oseq: int
    value: Any  # the decoded value; meaningless when ``live`` is False
    live: bool  # False: a tombstone (a delete, or a put that GC expired)
    expires_at: int | None
    deleted_at: int | None  # for tombstones: when the key died

    def visible(self, now: int) -> bool:
        return self.live and (self.expires_at is None or now < self.expires_at)


def drain(sub: ekv.Subscription) -> list[ekv.Event]:
    events: list[ekv.Event] = []
    while True:
        try:
            events.extend(sub.get(timeout=0))
        except ekv.Timeout:
            return events


class EKVModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ekv-stateful-"))
        self.clock = FakeClock()
        self.rows: dict[str, Row] = {}
        self.oseq = [0] * SHARDS  # the last local sequence number of each shard
        self.last_version: ekv.Version | None = None
        self.kv: ekv.EKV | None = None
        self.sub: ekv.Subscription | None = None
        self._open()
        assert self.kv is not None
        self.node_id = self.kv.node_id

    # -- helpers -----------------------------------------------------------------------------

    def _open(self) -> None:
        self.kv = ekv.EKV(
            "model",
            self.dir,
            shards=SHARDS,
            log=False,
            clock=self.clock,
            tombstone_ttl=TOMBSTONE_TTL_S,
            gc_interval=GC_INTERVAL_S,
        )
        self.sub = self.kv.subscribe("")

    @property
    def now(self) -> int:
        return self.clock.now_ns()

    def visible(self, key: str) -> Any:
        row = self.rows.get(key)
        if row is None or not row.visible(self.now):
            return MISSING
        return row.value

    def _check_version(self, version: ekv.Version) -> None:
        assert isinstance(version, ekv.Version)
        assert version.node_id == self.node_id
        assert version.timestamp_ns >= self.now  # the hybrid clock never runs behind the wall
        if self.last_version is not None:
            assert version > self.last_version, (version, self.last_version)
        self.last_version = version

    def _next_oseq(self, key: str) -> int:
        shard = shard_of(key.encode(), SHARDS)
        self.oseq[shard] += 1
        return self.oseq[shard]

    def _events(self) -> list[ekv.Event]:
        assert self.sub is not None
        return drain(self.sub)

    # -- rules -------------------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), value=values, ttl=st.sampled_from(TTLS))
    def put(self, key: str, value: Any, ttl: float | None) -> None:
        assert self.kv is not None
        version = self.kv.put(key, value, ttl=ttl)
        self._check_version(version)
        expires_at = None if ttl is None else self.now + duration_ns(ttl, "ttl")
        self.rows[key] = Row(version, self._next_oseq(key), value, True, expires_at, None)
        assert self._events() == [ekv.Event("put", key, value, version)]

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        assert self.kv is not None
        previous = self.visible(key)
        version = self.kv.delete(key)
        self._check_version(version)
        self.rows[key] = Row(version, self._next_oseq(key), None, False, None, version.timestamp_ns)
        expected_value = None if previous is MISSING else previous
        assert self._events() == [ekv.Event("delete", key, expected_value, version)]

    @rule(seconds=st.integers(0, 20))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(seconds=st.sampled_from([0.001, 0.5, 1.5]))
    def advance_fraction(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def _expiring(self) -> list[str]:
        now = self.now
        return sorted(k for k, r in self.rows.items() if r.live and r.expires_at is not None and r.expires_at > now)

    @precondition(lambda self: bool(self._expiring()))
    @rule(data=st.data(), offset=st.sampled_from([-1, 0, 1]))
    def advance_to_expiry(self, data: st.DataObject, offset: int) -> None:
        """Move the clock to one nanosecond before, exactly to, or just after an expiry."""
        key = data.draw(st.sampled_from(self._expiring()), label="key")
        expires_at = self.rows[key].expires_at
        assert expires_at is not None
        target = expires_at + offset
        if target > self.now:  # the fake wall clock only moves forward here
            self.clock.set_ns(target)

    @rule()
    def advance_past_tombstone_ttl(self) -> None:
        self.clock.advance(TOMBSTONE_TTL_S + 1)

    @rule()
    def gc(self) -> None:
        assert self.kv is not None
        now = self.now
        expected: list[ekv.Event] = []
        for key, row in self.rows.items():
            if row.live and row.expires_at is not None and row.expires_at <= now:
                expected.append(ekv.Event("expired", key, row.value, row.version))
                row.live = False
                row.deleted_at = row.expires_at
        cutoff = now - TOMBSTONE_TTL_S * NS_PER_S
        purged = [k for k, r in self.rows.items() if not r.live and r.deleted_at is not None and r.deleted_at < cutoff]
        for key in purged:
            del self.rows[key]
        report = run_gc(self.kv)
        events = self._events()
        # Each expired key produces exactly one "expired" event (GC goes shard by shard).
        assert sorted(events, key=lambda e: e.key) == sorted(expected, key=lambda e: e.key)
        assert report.expired == len(expected)
        assert report.purged == len(purged)

    @rule()
    def reopen(self) -> None:
        assert self.kv is not None and self.sub is not None
        assert self._events() == []
        self.kv.close()
        assert self.kv.closed
        try:
            self.sub.get(timeout=0)
        except ekv.SubscriptionClosed:
            pass
        else:
            raise AssertionError("the subscription outlived its store")
        self._open()
        assert self.kv.node_id == self.node_id  # identity is stable for the data directory
        # ... but every open writes under a fresh origin, whose sequence numbers start again
        self.oseq = [0] * SHARDS

    # -- checks ------------------------------------------------------------------------------

    @invariant()
    def no_unexpected_events(self) -> None:
        assert self.sub is not None
        assert self._events() == []

    @invariant()
    def point_reads(self) -> None:
        assert self.kv is not None
        for key in KEYS:
            expected = self.visible(key)
            got = self.kv.get(key, MISSING)
            assert got == expected, (key, got, expected)  # MISSING compares by identity
            found = self.kv.lookup(key)
            if expected is MISSING:
                assert found is None, (key, found)
            else:
                assert found == (expected, self.rows[key].version), (key, found)

    @invariant()
    def prefix_reads(self) -> None:
        assert self.kv is not None
        live = {key: self.visible(key) for key in sorted(self.rows)}
        live = {key: value for key, value in live.items() if value is not MISSING}
        for prefix in PREFIXES:
            expected = {k: v for k, v in live.items() if k.startswith(prefix)}
            assert self.kv.keys(prefix) == list(expected), prefix
            scanned = self.kv.scan(prefix)
            assert scanned == expected, prefix
            assert list(scanned) == list(expected), prefix  # ascending key order
            assert list(self.kv.iter(prefix)) == list(expected.items()), prefix
            assert list(self.kv.iter_keys(prefix)) == list(expected), prefix

    @invariant()
    def stored_rows(self) -> None:
        """The raw dump, tombstones and expired-but-not-collected puts included."""
        assert self.kv is not None
        dump = {}
        for entry in entries(self.kv):
            assert entry.key not in dump
            value = None if entry.value is None else pickle.loads(entry.value)
            dump[entry.key] = (entry.version, entry.oseq, entry.expires_at_ns, entry.value is not None, value)
        expected = {
            key: (row.version, row.oseq, row.expires_at, row.live, row.value if row.live else None)
            for key, row in self.rows.items()
        }
        assert dump == expected

    @invariant()
    def info_counts(self) -> None:
        assert self.kv is not None
        info = self.kv.info()
        now = self.now
        rows = self.rows.values()
        assert info["keys"] == sum(r.visible(now) for r in rows)
        assert info["tombstones"] == sum(not r.live for r in rows)
        shards = info["shards"]
        assert [s["local_seq"] for s in shards] == self.oseq
        expired_pending = sum(r.live and r.expires_at is not None and r.expires_at <= now for r in rows)
        assert sum(s["expired_pending_gc"] for s in shards) == expired_pending
        assert sum(s["with_ttl"] for s in shards) == sum(r.live and r.expires_at is not None for r in rows) - (
            expired_pending
        )

    def teardown(self) -> None:
        try:
            if self.sub is not None:
                self.sub.close()
            if self.kv is not None:
                self.kv.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


MODEL_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
EKVModel.TestCase.settings = MODEL_SETTINGS
TestEKVModel = EKVModel.TestCase
# 40 sequences of 50 steps in the default run (150 took 75 s of CI's budget, 60 up to 120 s on a
# loaded machine): every sequence checks the same rules and invariants, more sequences are more
# random combinations of them, the soak tier's (below). Far slower on a machine loaded by other
# work: the timeout is there to catch a hang, not to time it.
TestEKVModel.pytestmark = [pytest.mark.long, pytest.mark.timeout(900)]


class TestEKVModelSoak(EKVModel.TestCase):  # type: ignore[misc,valid-type]
    """The soak tier (``--soak``): 500 sequences of the same model."""

    settings = settings(MODEL_SETTINGS, max_examples=500)
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.soak, pytest.mark.timeout(3600)]
