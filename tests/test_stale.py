"""Stale data protection and long-partition quarantine (SPEC section 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import ekv
from ekv.testing import FakeClock, node_of, partition, run_gc, wait_until

FAST: dict[str, Any] = {
    "heartbeat_interval": 0.1,
    "heartbeat_timeout": 1.0,
    "anti_entropy_interval": 0.3,
    "reconnect_max": 0.3,
    "log": False,
    "shards": 2,
    "tombstone_ttl": 100,
    "gc_interval": 10,
    "log_retention": 50,
}


def clustered(path: Path, clock: FakeClock, **options: Any) -> ekv.EKV:
    return ekv.EKV("c", path, clock=clock, **{**FAST, "listen": "127.0.0.1:0", **options})


def test_stale_data_dir_is_moved_aside_and_rebuilt_under_a_new_identity(tmp_path: Path) -> None:
    clock = FakeClock()
    kv = clustered(tmp_path / "a", clock)
    kv.put("old", "value")
    old_id = kv.node_id
    kv.close()
    clock.advance(200)  # longer than tombstone_ttl
    kv = clustered(tmp_path / "a", clock)
    try:
        assert kv.get("old") is None
        assert kv.node_id != old_id
        moved = kv.info()["stale_data_moved_to"]
        assert moved and Path(moved).is_dir()
        assert sorted(p.name for p in Path(moved).iterdir() if p.suffix in (".db", ".json")) == [
            "ekv.json",
            "shard_000.db",
            "shard_001.db",
        ]
    finally:
        kv.close()
    # the moved files are a complete store: opening them shows the old data
    with ekv.EKV("c", Path(moved), shards=2, log=False) as old:
        assert old.get("old") == "value"


def test_allow_stale_startup_keeps_the_data(tmp_path: Path) -> None:
    clock = FakeClock()
    kv = clustered(tmp_path / "a", clock)
    kv.put("old", "value")
    node = kv.node_id
    kv.close()
    clock.advance(200)
    with clustered(tmp_path / "a", clock, allow_stale_startup=True) as kv:
        assert kv.get("old") == "value" and kv.node_id == node


def test_a_single_node_store_is_never_treated_as_stale(tmp_path: Path) -> None:
    clock = FakeClock()
    with ekv.EKV("c", tmp_path, clock=clock, log=False, tombstone_ttl=100, gc_interval=10) as kv:
        kv.put("k", 1)
    clock.advance(10_000)
    with ekv.EKV("c", tmp_path, clock=clock, log=False, tombstone_ttl=100, gc_interval=10) as kv:
        assert kv.get("k") == 1


def test_recently_active_data_dir_rejoins_with_its_data(tmp_path: Path) -> None:
    clock = FakeClock()
    kv = clustered(tmp_path / "a", clock)
    kv.put("k", 1)
    kv.close()
    clock.advance(50)  # less than tombstone_ttl - gc_interval
    with clustered(tmp_path / "a", clock) as kv:
        assert kv.get("k") == 1


def test_long_partition_quarantines_both_sides_persistently(tmp_path: Path) -> None:
    clock = FakeClock()
    a = clustered(tmp_path / "a", clock)
    b = clustered(tmp_path / "b", clock, peers=[a.listen_address])
    try:
        wait_until(lambda: any(m.get("connected") for m in a.info()["members"].values()))
        a.put("k", "before")
        wait_until(lambda: b.get("k") == "before")
        partition([a], [b])
        wait_until(lambda: not any(m.get("connected") for m in a.info()["members"].values()))
        clock.advance(150)  # the partition lasted longer than tombstone_ttl
        a.delete("k")
        b.put("other", 1)
        partition([a, b])
        b_id, a_id = b.node_id, a.node_id
        wait_until(lambda: b_id in a.info()["quarantined"] and a_id in b.info()["quarantined"])
        member = a.info()["members"][b_id]
        assert member["state"] == "quarantined"
        assert b.get("k") == "before" and a.get("other") is None  # nothing crossed
        # the quarantine survives a restart of a
        port = a.listen_address
        a.close()
        a = clustered(tmp_path / "a", clock, listen=port)
        wait_until(lambda: b_id in a.info()["quarantined"])
        # the way out: the operator clears the quarantine on both sides (accepting resurrections)
        assert a.clear_quarantine(b_id) and b.clear_quarantine(a_id)
        partition([a], [b])
        partition([a, b])
        wait_until(lambda: a.get("other") == 1 and b.get("k") is None, timeout=30)
    finally:
        a.close()
        b.close()


def test_clearing_a_quarantine_converges_although_a_tombstone_was_purged(tmp_path: Path) -> None:
    """a's vector covers the put it deleted, whose tombstone it purged during the partition: a
    delta from b would never send that put again and the pair would differ forever. Clearing the
    quarantine makes the next syncs full resends, so both converge (on the value that came back:
    the risk the operator accepted)."""
    clock = FakeClock()
    a = clustered(tmp_path / "a", clock)
    b = clustered(tmp_path / "b", clock, peers=[a.listen_address])
    try:
        wait_until(lambda: any(m.get("connected") for m in a.info()["members"].values()))
        a.put("k", "v")
        wait_until(lambda: b.get("k") == "v")
        partition([a], [b])
        wait_until(lambda: not any(m.get("connected") for m in a.info()["members"].values()))
        a.delete("k")
        clock.advance(150)
        run_gc(a)
        assert a.info()["tombstones"] == 0  # purged
        partition([a, b])
        b_id, a_id = b.node_id, a.node_id
        wait_until(lambda: b_id in a.info()["quarantined"] and a_id in b.info()["quarantined"])
        wait_until(lambda: a.info()["members"][b_id].get("connected") and b.info()["members"][a_id].get("connected"))
        assert a.clear_quarantine(b_id) and b.clear_quarantine(a_id)  # while connected: at once
        wait_until(lambda: a.get("k") == "v" and b.get("k") == "v", timeout=30)
        assert a.lookup("k") == b.lookup("k")
        assert not a.info()["quarantined"] and not b.info()["quarantined"]
    finally:
        a.close()
        b.close()


def test_quarantine_can_be_disabled(tmp_path: Path) -> None:
    clock = FakeClock()
    a = clustered(tmp_path / "a", clock, quarantine=False)
    b = clustered(tmp_path / "b", clock, quarantine=False, peers=[a.listen_address])
    try:
        wait_until(lambda: any(m.get("connected") for m in a.info()["members"].values()))
        partition([a], [b])
        wait_until(lambda: not any(m.get("connected") for m in a.info()["members"].values()))
        clock.advance(150)
        b.put("after", 1)
        partition([a, b])
        wait_until(lambda: a.get("after") == 1, timeout=30)
        assert not a.info()["quarantined"]
    finally:
        a.close()
        b.close()


def test_node_of_exposes_the_cluster(tmp_path: Path) -> None:
    clock = FakeClock()
    with clustered(tmp_path / "a", clock) as kv:
        assert node_of(kv).cluster is not None


@pytest.mark.parametrize("option", [{"quarantine": "yes"}, {"heartbeat_timeout": 0.1, "heartbeat_interval": 1}])
def test_bad_cluster_options(tmp_path: Path, option: dict[str, Any]) -> None:
    with pytest.raises(ekv.ConfigError):
        ekv.EKV("c", tmp_path, listen="127.0.0.1:0", **option)
