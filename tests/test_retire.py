"""Version-vector compaction (:mod:`ekv._core.retire`): origins of closed opens are dropped from
every vector once ``tombstone_ttl`` (plus its margin) has passed since they retired, by agreement,
so vectors stay O(live origins) however often nodes restart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import ekv
from ekv._cluster import departed, wire
from ekv._core.retire import (
    BASE,
    PREFIX,
    Compactor,
    compact,
    cover,
    effective,
    expired,
    margin_ns,
    marker,
    mergeable,
    needs_full,
    retirable,
    settle,
)
from ekv._storage import schema
from ekv._storage.sync import local_vv
from ekv.testing import FakeClock, entries, node_of, run_gc, sim

S = 1_000_000_000


def _quiet(seed: int, **options: Any) -> sim.Simulation:
    """A simulation for compaction: tombstone_ttl 20 s (retirements come due within a test), a
    short change log, no loss or duplicates, no TTL puts."""
    quiet: dict[str, Any] = {"tombstone_ttl_s": 20, "log_retention_s": 5, "drop": 0, "duplicate": 0, "ttl_fraction": 0}
    return sim.Simulation(seed, **{**quiet, **options})


OLD, NEW, LIVE = "a~1", "a~2", "b~1"


# -- the pure parts ----------------------------------------------------------------------------


def test_a_marker_names_no_origin_and_fits_the_wire() -> None:
    assert marker(OLD).startswith("~") and retirable(OLD)
    assert not retirable("") and not retirable(marker(OLD))
    assert not retirable("x" * 250)  # its marker would be longer than the wire's 255 bytes: kept


def test_expired_drops_the_marker_and_its_origin_only_once_due() -> None:
    vv = {OLD: 7, marker(OLD): 100, NEW: 3, LIVE: 9}
    assert expired(vv, 99) == set()
    assert expired(vv, 100) == {OLD, marker(OLD)}
    assert effective(vv, 100) == {NEW: 3, LIVE: 9}
    copy = dict(vv)
    assert compact(copy, 100) == {OLD, marker(OLD)} and copy == {NEW: 3, LIVE: 9}


def test_a_member_behind_does_not_bring_back_a_dropped_origin() -> None:
    own = {LIVE: 9}  # OLD was dropped here
    theirs = {OLD: 7, marker(OLD): 100, LIVE: 9}  # not yet there (its clock is behind)
    assert mergeable(theirs, own, 100) == {LIVE: 9}
    assert mergeable(theirs, own, 99) == theirs  # before the drop: merged as any entry
    # our own marker is enough too (an entry of the origin alone, from a member behind)
    assert mergeable({OLD: 8}, {OLD: 7, marker(OLD): 100}, 100) == {}


def test_the_server_counts_a_retired_origin_as_covered_by_a_requester_settled_past_it() -> None:
    own = {OLD: 7, marker(OLD): 100, LIVE: 9}
    assert cover({LIVE: 4}, own) == {LIVE: 4}  # no base: a new member, or one that never settled
    assert cover({LIVE: 4, BASE: 99}, own) == {LIVE: 4, BASE: 99}
    assert cover({LIVE: 4, BASE: 100}, own) == {LIVE: 4, BASE: 100, OLD: 7}
    assert cover({OLD: 9, BASE: 100}, own)[OLD] == 9  # never lowers


def test_settle_raises_the_base_to_the_retirements_due_and_never_lowers_it() -> None:
    vv = {OLD: 7, marker(OLD): 100, NEW: 3, marker(NEW): 200}
    assert not settle(vv, 99) and BASE not in vv
    assert settle(vv, 150) and vv[BASE] == 100
    assert settle(vv, 250) and vv[BASE] == 200
    compact(vv, 250)
    assert vv == {BASE: 200} and not settle(vv, 300)


def test_a_requester_below_the_latest_dropped_retirement_gets_a_full_sync() -> None:
    assert not needs_full({}, 0)  # nothing dropped here: as before
    assert needs_full({LIVE: 4}, 100)  # a new member: rows of dropped origins are in no delta
    assert needs_full({BASE: 99}, 100) and not needs_full({BASE: 100}, 100)


def test_the_margin_is_a_tenth_of_tombstone_ttl_at_most_ten_minutes() -> None:
    assert margin_ns(100 * S) == 10 * S
    assert margin_ns(7 * 86_400 * S) == 600 * S


def test_the_compactor_settles_then_drops_when_due_and_not_before() -> None:
    compactor = Compactor(100 * S)  # settles 100 s after the retirement, drops at 110 s
    vvs = [{OLD: 7, marker(OLD): 50 * S, LIVE: 3}, {LIVE: 1}]
    assert compactor.compact(vvs, 149 * S) == 0 and BASE not in vvs[0]
    assert compactor.compact(vvs, 150 * S) == 0 and vvs[0][BASE] == 50 * S and OLD in vvs[0]
    assert compactor.compact(vvs, 159 * S) == 0 and OLD in vvs[0]
    assert compactor.compact(vvs, 160 * S) == 2 and vvs[0] == {LIVE: 3, BASE: 50 * S}
    # a marker merged later is noted: settled and dropped when due, not a full delay after a scan
    vvs[1].update(compactor.mergeable({NEW: 2, marker(NEW): 100 * S}, vvs[1], 170 * S))
    assert compactor.compact(vvs, 200 * S) == 0 and vvs[1][BASE] == 100 * S
    assert compactor.compact(vvs, 209 * S) == 0
    assert compactor.compact(vvs, 210 * S) == 2 and vvs[1] == {LIVE: 1, BASE: 100 * S}


# -- one store: the record is written at close, the origin dropped by GC ---------------------------


def _vectors(kv: ekv.EKV) -> list[dict[str, int]]:
    node = node_of(kv)
    return [shard.run_exclusive(lambda cur, s=shard: local_vv(cur, s.origin)) for shard in node.store.shards]


def _log_origins(kv: ekv.EKV) -> set[str]:
    def read(cur: Any) -> set[str]:
        return {row[0] for row in cur.execute(schema.LOG_ORIGINS).fetchall()}

    return set().union(*(shard.run_exclusive(read) for shard in node_of(kv).store.shards))


def test_a_closed_origin_is_recorded_and_dropped_after_tombstone_ttl(
    open_kv: Callable[..., ekv.EKV], clock: FakeClock
) -> None:
    kv = open_kv(clock=clock, tombstone_ttl=100, gc_interval=10, shards=1)
    kv.put("k", 1)
    first = node_of(kv).store.origin
    kv.close()
    kv = open_kv(clock=clock, tombstone_ttl=100, gc_interval=10, shards=1)
    (vv,) = _vectors(kv)
    retired_at = clock.now_ns()
    assert vv[first] == 1 and vv[marker(first)] == retired_at
    clock.advance(100 + 10 - 1)
    run_gc(kv)
    assert first in _vectors(kv)[0]
    clock.advance(2)
    run_gc(kv)
    (vv,) = _vectors(kv)
    assert first not in vv and marker(first) not in vv and vv[BASE] == retired_at
    assert first not in _log_origins(kv)
    assert [e.origin for e in entries(kv)] == [first]  # the row keeps its version
    assert kv.get("k") == 1


# -- the cluster simulator -----------------------------------------------------------------------


def _sizes(s: sim.Simulation) -> list[int]:
    """The largest shard vector of each node, in memory (the replicator's) and stored."""
    out = []
    for node in s.nodes.values():
        assert node.rep is not None and node.store is not None
        out.append(max(len(vv) for vv in node.rep.vv))
        out.extend(
            len(vv) for vv in (shard.run_exclusive(lambda cur: local_vv(cur, "")) for shard in node.store.shards)
        )
    return out


def test_vectors_shrink_to_the_live_origins_after_many_restarts() -> None:
    """Three nodes restarted eight times each (each restart a new origin in every shard it wrote):
    once tombstone_ttl and its margin have passed, every vector holds the live origins only, in
    memory and on disk; a member away for less than tombstone_ttl while others restarted catches
    up; nothing is lost or resurrected."""
    with _quiet(7, nodes=3) as s:
        s.run(1_000, faults=False)
        for _ in range(4):
            for name in sorted(s.nodes):
                s.crash(name)
                s.run(500, faults=False)
        s.partition([["n0", "n1"], ["n2"]])  # n2 away for 12 s (< tombstone_ttl) while the others restart
        for _ in range(4):
            for name in ("n0", "n1"):
                s.crash(name)
                s.run(1_500, faults=False)
        s.heal()
        s.settle()
        assert not s.check()
        before = _sizes(s)
        assert min(before) >= 20, before  # 24 retired origins and their markers (a vector per shard)
        s.run(25_000, writes_per_s=5, faults=False)  # tombstone_ttl (20 s) + margin (2 s) + GC
        s.settle()
        assert not s.check()
        after = _sizes(s)
        # the live origins (2 in memory, its own is the counter; 3 read from disk) and the base
        assert max(after) <= 4, f"vectors before {before}, after {after}"
        assert not any(n.rep.quarantined for n in s.nodes.values() if n.rep is not None)


def _frames(s: sim.Simulation, code: int) -> int:
    return sum(count for (_, _, kind, _), count in s.frames.items() if kind == code)


def test_the_drop_moves_no_rows_and_digests_agree_after_it() -> None:
    """The trap the agreed drop avoids (docs/scale.md, step 4), in summary mode (9 nodes: one
    digest probe per round, pulls only of shards whose digests differ): while the members drop
    the retired origins no row is sent again (a member serving a pull counts them as covered by
    one that dropped them), and afterwards the digests agree (no pull at all while idle)."""
    with _quiet(21, nodes=9) as s:
        s.run(2_000, faults=False)
        for name in ("n0", "n3", "n5", "n7"):
            s.crash(name)
            s.run(300, faults=False)
        s.run(2_000, faults=False)
        s.settle()
        assert not s.check()
        assert min(_sizes(s)) >= 14  # 8 live origins, 4 retired ones and their markers (per shard)
        chunks = _frames(s, wire._SYNC_CHUNK)
        s.run(30_000, writes_per_s=0, faults=False)  # the drop
        assert _frames(s, wire._SYNC_CHUNK) == chunks, "rows of dropped origins were sent again"
        requests = _frames(s, wire._SYNC_REQUEST)
        s.run(10_000, writes_per_s=0, faults=False)
        assert _frames(s, wire._SYNC_REQUEST) == requests, "digests still differ after the drop"
        assert max(_sizes(s)) <= 10 and not s.check()


@pytest.mark.soak  # (27 s at load 8; the other compaction tests stay in CI)
def test_random_faults_with_compaction_converge() -> None:
    """Random partitions, crashes (new origins), loss and skew with a tombstone_ttl short enough
    that origins retire and are dropped during the run, then idle past the drop of the rest: no
    violation, and the vectors end with the live origins only. (Puts without TTL: the checker
    cannot tell a value that expired and was purged from a lost one.)"""
    for seed in (5000, 5002):  # 4 and 5 crashes
        with sim.Simulation(seed, tombstone_ttl_s=30, log_retention_s=3, ttl_fraction=0) as s:
            s.run(60_000)
            s.settle()
            assert not s.check(), f"seed {seed}"
            assert sum(" crash " in line for line in s.trace) >= 2, f"seed {seed}: too few restarts to test"
            s.run(35_000, writes_per_s=0, faults=False)  # tombstone_ttl (30 s) + margin (3 s) + GC
            s.settle()
            assert not s.check(), f"seed {seed}"
            assert max(_sizes(s)) <= 4, f"seed {seed}: {_sizes(s)}"


def test_a_new_member_after_the_drop_gets_every_row_of_the_dropped_origins() -> None:
    """Regression (found while building this): the drop removes an origin's change-log entries,
    so a new member (empty vector) whose first pull was a delta (no other origin's log truncated:
    the live origins wrote nothing in the shard) got none of the rows the dropped origins wrote.
    Its base is below the latest retirement the server dropped: it gets a full sync."""
    with _quiet(31, nodes=3, delete_fraction=0) as s:
        s.run(3_000, faults=False)
        for name in sorted(s.nodes):
            s.crash(name)
            s.run(300, writes_per_s=0, faults=False)  # (the live origins write nothing)
        s.run(30_000, writes_per_s=0, faults=False)  # the drop
        s.settle()
        assert not s.check() and max(_sizes(s)) <= 4
        node = sim._Node("n3", s.directory / "n3", sim.SimClock(s, 0, 1.0))
        s.nodes["n3"] = node
        s._await(s._open(node, new_node_id="0000001f000000n3"))
        s.settle(max_ms=20_000)
        assert len(s.dump("n3")) == len(s.dump("n0")) > 0
        assert not s.check()


# -- members that leave for good (ekv._cluster.departed) ------------------------------------------


def _origins_of(s: sim.Simulation, node_id: str) -> list[tuple[str, str]]:
    """(node, entry) of every vector entry, in memory or stored, naming an origin of ``node_id``
    (or its marker)."""
    found = []
    for name, node in s.nodes.items():
        assert node.rep is not None and node.store is not None
        stored = [shard.run_exclusive(lambda cur: local_vv(cur, "")) for shard in node.store.shards]
        for vv in [*node.rep.vv, *stored]:
            found.extend((name, key) for key in vv if key.removeprefix(PREFIX).partition("~")[0] == node_id)
    return found


def _leave(s: sim.Simulation, name: str, *, crash: bool = False) -> None:
    """Close ``name`` as an operator decommissioning it does (a clean close: SWIM "left", goodbyes),
    or as a crash does (``crash``: nothing said, as Simulation.crash), and never open its data
    directory again."""

    async def close() -> None:
        cluster = s.clusters.pop(name)
        if crash:
            s.net.reset_host(name)
            await cluster.membership.close(leave=False)
        await cluster.aclose()
        store = s.nodes[name].store
        assert store is not None
        store.close()

    s._await(close())
    del s.nodes[name]
    s._refresh()


def test_the_origins_of_a_member_failed_for_longer_than_tombstone_ttl_leave_every_vector() -> None:
    """A node crashes and never comes back (SWIM "failed", no leave): once it has been failed for
    tombstone_ttl (it would be quarantined if it came back, SPEC 7) the members write the markers
    of its origins, and tombstone_ttl and its margin later no vector names it; nothing is lost."""
    with _quiet(47, nodes=4, delete_fraction=0) as s:
        s.run(3_000, faults=False)
        s.settle()
        gone = s.node_id("n3")
        _leave(s, "n3", crash=True)
        s.run(15_000, faults=False)
        assert not [key for _, key in _origins_of(s, gone) if key.startswith(PREFIX)], "marked before tombstone_ttl"
        s.run(15_000, faults=False)  # (SWIM takes a few seconds to say "failed", then tombstone_ttl)
        assert {name for name, key in _origins_of(s, gone) if key.startswith(PREFIX)} == set(s.nodes)
        s.run(25_000, writes_per_s=5, faults=False)  # tombstone_ttl (20 s) + margin (2 s) + GC
        s.settle()
        assert not s.check()
        assert _origins_of(s, gone) == []


def test_the_origins_of_a_member_that_left_for_good_leave_every_vector() -> None:
    """A node leaves (clean close, SWIM "left") and never comes back: the members write the
    markers of its origins (its own, written at its close, is in its files only), and once
    tombstone_ttl and its margin have passed no vector, in memory or stored, names it; nothing is
    lost, and a member that joins afterwards still gets every row it wrote."""
    with _quiet(43, nodes=4, delete_fraction=0) as s:
        s.run(3_000, faults=False)
        s.crash("n3")  # (two origins of it: the retired one and the live one)
        s.run(1_000, faults=False)
        s.settle()
        gone = s.node_id("n3")
        assert {key for _, key in _origins_of(s, gone)}, "n3 wrote nothing"
        _leave(s, "n3")
        s.run(3_000, faults=False)
        marked = {(name, key) for name, key in _origins_of(s, gone) if key.startswith(PREFIX)}
        assert len({key for _, key in marked}) == 2, marked  # both origins (the retired one had its own)
        assert {name for name, _ in marked} == set(s.nodes)  # at every member (SWIM told it, or a sync)
        s.run(25_000, writes_per_s=5, faults=False)  # tombstone_ttl (20 s) + margin (2 s) + GC
        s.settle()
        assert not s.check()
        assert _origins_of(s, gone) == []
        assert not any(n.rep.quarantined for n in s.nodes.values() if n.rep is not None)
        node = sim._Node("n4", s.directory / "n4", sim.SimClock(s, 0, 1.0))
        s.nodes["n4"] = node
        s._await(s._open(node, new_node_id="0000002b000000n4"))
        s.settle(max_ms=20_000)
        assert len(s.dump("n4")) == len(s.dump("n0")) > 0
        assert not s.check()


def test_a_late_left_that_marks_a_live_origin_loses_nothing() -> None:
    """Should a "left" be processed after its node came back under the same node id (a new
    origin, which a member already holds), that live origin gets a marker. Its node never merges
    a marker of its own live origin, so it keeps serving its writes: nothing is lost, and the
    members converge once the marker is dropped."""
    with _quiet(53, nodes=3, delete_fraction=0) as s:
        s.run(3_000, faults=False)
        s.settle()
        live = s.node_id("n0")
        rep = s.nodes["n1"].rep
        assert rep is not None
        assert departed.retire_member(rep, live, s.now_ns) > 0
        s.run(5_000, faults=False)
        marked = {name for name, key in _origins_of(s, live) if key.startswith(PREFIX)}
        assert marked == {"n1", "n2"}, marked  # spread by sync, but not taken by n0
        s.run(25_000, faults=False)  # n0 writes on, past the drop
        s.settle()
        assert not s.check()
        assert not [key for _, key in _origins_of(s, live) if key.startswith(PREFIX)]


def test_members_that_mark_a_departed_origin_below_another_members_counter_lose_nothing() -> None:
    """The choice of T (ekv._cluster.departed): n3's last writes reached n0 only (a partition),
    then n3 went for good and n1, n2 marked its origin holding a lower counter than n0's (n0 only
    gets their marker). The partition heals within tombstone_ttl of T: they pull the rest from n0
    before anyone settles past T, so no write is lost, and the origin is still dropped everywhere."""
    with _quiet(59, nodes=4, delete_fraction=0) as s:
        s.run(2_000, faults=False)
        s.settle()
        gone = s.node_id("n3")
        store = s.nodes["n3"].store
        assert store is not None
        origin = store.origin
        s.partition([["n0", "n3"], ["n1", "n2"]])
        for i in range(20):
            s.client_write("n3", f"late/{i}")
        s.run(500, writes_per_s=0, faults=False)  # (they reach n0 only)
        _leave(s, "n3", crash=True)  # (n0 hears no "left": it marks nothing before tombstone_ttl)
        for name in ("n1", "n2"):  # as if SWIM told them "left" now
            rep = s.nodes[name].rep
            assert rep is not None and departed.retire_member(rep, gone, s.now_ns) > 0
        n0, n1 = s.nodes["n0"].rep, s.nodes["n1"].rep
        assert n0 is not None and n1 is not None
        assert all(n1.vv[i].get(origin, 0) < n0.vv[i].get(origin, 0) for i in range(2))
        s.run(10_000, writes_per_s=5, faults=False)  # (the partition lasts half tombstone_ttl)
        s.heal()
        s.run(20_000, writes_per_s=5, faults=False)  # tombstone_ttl (20 s) + margin (2 s) + GC
        s.settle()
        assert not s.check()
        assert _origins_of(s, gone) == []
        assert all(f"late/{i}" in s.dump("n1") for i in range(20))
