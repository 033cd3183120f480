"""Memory that grows with traffic is bounded (issue 10): the cluster's outbox of live writes and a
delta sync's memory of the keys it has dealt with. Past each bound the data still converges."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ekv
from ekv._cluster import outbox as outbox_mod
from ekv._model import Entry
from ekv._storage import sync as sync_mod
from ekv._storage.sync import SyncSnapshot
from ekv.testing import entries, node_of, wait_until

FAST = {
    "heartbeat_interval": 0.1,
    "heartbeat_timeout": 1.0,
    "anti_entropy_interval": 0.3,
    "reconnect_max": 0.3,
    "log": False,
}


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., ekv.EKV]]:
    opened: list[ekv.EKV] = []

    def _make(**options: Any) -> ekv.EKV:
        options = {**FAST, "listen": "127.0.0.1:0", "shards": 2, **options}
        kv = ekv.EKV("b", tmp_path / f"n{len(opened)}", **options)
        opened.append(kv)
        return kv

    yield _make
    for kv in opened:
        kv.close()


def _state(kv: ekv.EKV) -> dict[str, tuple[int, str, bytes | None]]:
    return {e.key: (e.timestamp_ns, e.origin, e.value) for e in entries(kv)}


def test_a_full_outbox_drops_live_writes_and_anti_entropy_delivers_them(
    make: Callable[..., ekv.EKV], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network thread is held up (blocked here on purpose) while a writer goes on: the
    outbox stays within its bound, the writer never waits, the dropped writes are counted, and
    the member still gets every write (anti-entropy)."""
    monkeypatch.setattr(outbox_mod, "MAX_ENTRIES", 5)
    a = make()
    b = make(peers=[a.listen_address])
    wait_until(lambda: b.info()["members"] and all(m.get("connected") for m in b.info()["members"].values()))
    wait_until(lambda: a.info()["members"] and all(m.get("connected") for m in a.info()["members"].values()))
    node = node_of(a).cluster
    assert node is not None and node._loop is not None
    release = threading.Event()
    blocked = threading.Event()

    def hold_the_loop() -> None:
        blocked.set()
        release.wait(60)

    node._loop.call_soon_threadsafe(hold_the_loop)
    try:
        assert blocked.wait(30)
        for i in range(23):
            a.put(f"k{i}", i)  # returns although the network thread is stuck
            assert node.outbox.entries <= 5
        dropped = node.outbox.dropped
        assert dropped >= 18
    finally:
        release.set()
    wait_until(lambda: b.get("k22") == 22 and _state(a) == _state(b), timeout=30)
    assert a.metrics()["ekv_replication_outbox_dropped_total"] == dropped
    assert a.info()["replication"]["outbox_dropped"] == dropped


def test_the_outbox_bound_in_bytes(make: Callable[..., ekv.EKV], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_mod, "MAX_BYTES", 3000)
    a = make()
    node = node_of(a).cluster
    assert node is not None
    # No member: nothing drains the outbox faster than the writes below fill it with 1 KB values
    # while the loop is held.
    assert node._loop is not None
    release = threading.Event()
    node._loop.call_soon_threadsafe(release.wait, 60)
    try:
        for i in range(10):
            a.put(f"big{i}", b"x" * 1000)
            assert node.outbox.bytes <= 3000
        assert node.outbox.dropped >= 6
    finally:
        release.set()


def _delta(path: str, origin: str, peer_vv: dict[str, int]) -> tuple[list[Entry], SyncSnapshot]:
    snap = SyncSnapshot(path, origin, peer_vv, now_ns=time.time_ns(), cutoff_ns=0)
    try:
        assert snap.kind == "delta"
        sent: list[Entry] = []
        while chunk := snap.next_chunk(7, 1 << 20):
            sent += chunk
    finally:
        snap.close()
    return sent, snap


@pytest.mark.parametrize("bound", [0, 2000, sync_mod.SENT_KEYS_MAX_BYTES])
def test_a_delta_sync_remembers_a_bounded_set_of_keys_and_sends_each_current_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: int
) -> None:
    """Keys written many times (many log entries each), deletes and a partial peer vector: with
    no memory of keys at all, a little, or the default, a delta sends exactly the rows the peer
    lacks, each once, and the peer that applies them ends with the sender's state."""
    monkeypatch.setattr(sync_mod, "SENT_KEYS_MAX_BYTES", bound)
    src = ekv.EKV("s", tmp_path / "src", shards=1, log=False)
    dst = ekv.EKV("s", tmp_path / "dst", shards=1, log=False)
    try:
        for round_ in range(5):
            for i in range(60):
                src.put(f"key{i:03d}", {"round": round_, "pad": "p" * i})
        store = node_of(src).store
        origin = store.origin
        half = store.shards[0].oseq // 2
        # the peer already has the first half of the writes (the older rounds)
        early = [e for e in store.entries() if e.origin == origin and e.oseq <= half]
        for i in range(0, 60, 3):
            src.delete(f"key{i:03d}")
        path = str(store.datadir.shard_path(0))
        sent, snap = _delta(path, origin, {origin: half})
        keys = [e.key for e in sent]
        assert len(keys) == len(set(keys)) == 60  # every key changed after `half`, each once
        assert snap._sent_keys_bytes <= bound
        assert not snap.damaged
        dst_store = node_of(dst).store
        dst_store.apply(early)
        dst_store.apply(sent)
        assert {e.key: (e.timestamp_ns, e.origin, e.value) for e in dst_store.entries()} == _state(src)
    finally:
        src.close()
        dst.close()
