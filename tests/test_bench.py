"""The benchmarks' own machinery (bench/): a step that cannot finish is an error, not a hang, and
the full-sync measurement cannot miss the events of a sync that began before it subscribed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

import ekv

ROOT = Path(__file__).resolve().parent.parent


def bench_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def test_full_sync_subscribes_before_the_new_node_connects(tmp_path: Path) -> None:
    """The new node dials the source only when told to, after it has subscribed: a full sync can
    no longer begin, and partly end, before the subscription that counts its keys exists."""
    bench = bench_module("bench_cluster")
    with ekv.EKV("bench", tmp_path / "src", listen="127.0.0.1:0", log=False, **bench.FAST) as source:
        source.put("full/early", 1)
        peer = bench.Peer(tmp_path / "b", source.listen_address, connect=False)
        try:
            peer.call("expect", count=1, prefix="full/", track=False)
            assert not source.info()["members"], "the new node connected before it was told to"
            peer.connect()
            assert peer.wait("full sync", timeout=120)["count"] == 1
        finally:
            peer.close()
    result = bench.measure_full_sync(tmp_path / "measured", 2000)
    assert result["keys"] == 2000 and result["seconds"] > 0


def test_a_wait_that_cannot_finish_is_an_error_not_a_hang(tmp_path: Path) -> None:
    bench = bench_module("bench_cluster")
    with ekv.EKV("bench", tmp_path / "src", listen="127.0.0.1:0", log=False, **bench.FAST) as source:
        peer = bench.Peer(tmp_path / "b", source.listen_address)
        try:
            peer.call("expect", count=10, prefix="never/")
            with pytest.raises(RuntimeError, match=r"nothing: node B saw 0 of the 10 expected events within 1 s"):
                peer.wait("nothing", timeout=1)
        finally:
            peer.close()
