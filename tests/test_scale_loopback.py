"""bench/scale_loopback.py (real node processes on loopback, docs/scale.md) runs end to end, reports
every phase and leaves no process behind. The figures themselves are not asserted here (a loaded
2-core machine), except what does not depend on load: the broadcast mode each cluster size
chooses and the SWIM view that every phase waits for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "scale_loopback.py"

PHASES = {
    "idle": ("seconds", "per_node_per_s"),
    "burst": ("writes", "acked_s", "all_have_all_s", "per_write", "modes", "sessions"),
    "kill": ("first_suspect_s", "first_failed_s", "all_failed_s", "dissemination_s"),
    "restart": ("start_s", "whole_s", "converged_s"),
}
COUNTERS = ("swim_datagrams", "live_sent", "tree_gossip", "tree_ihave", "syncs_served", "tcp_bytes", "replication")


def run(tmp_path: Path, *args: str, timeout: float) -> dict[str, object]:
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json", str(out)], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "burst.all_have_all_s" in proc.stdout  # the table
    result: dict[str, object] = json.loads(out.read_text())
    return result


def check_complete(result: dict[str, object], nodes: int) -> None:
    assert result["nodes"] == nodes
    assert isinstance(result["join_s"], float) and len(result["load_before"]) == len(result["load_after"]) == 3  # type: ignore[arg-type]
    for phase, keys in PHASES.items():
        figures = result[phase]
        assert isinstance(figures, dict), phase
        for key in keys:
            assert figures.get(key) is not None, f"{phase}.{key} missing"
    for window in (result["idle"]["per_node_per_s"], result["burst"]["per_write"]):  # type: ignore[index]
        assert set(COUNTERS) <= set(window)
    assert result["burst"]["sessions"]["max"] >= 1  # type: ignore[index]
    assert result["partition"]


def test_scale_loopback_smoke_with_4_nodes(tmp_path: Path) -> None:
    """4 nodes, tiny windows: below the tree threshold every node sends directly; every write
    reaches every node; the killed node is declared failed and rejoins."""
    small = ["--nodes", "4", "--idle", "1", "--writes", "12", "--writers", "2", "--kill", "1", "--timeout", "60"]
    result = run(tmp_path, *small, timeout=120)
    check_complete(result, 4)
    assert result["burst"]["modes"] == {"direct": 4}  # type: ignore[index]
    assert result["burst"]["per_write"]["live_sent"] >= 3  # type: ignore[index]


@pytest.mark.soak
def test_scale_loopback_with_24_nodes(tmp_path: Path) -> None:
    """The documented run (docs/scale.md), with the partition behind the fault proxy: 24 nodes
    broadcast through the tree, SWIM's idle cost stays about 2 datagrams per node per second,
    and after the heal every view is whole and every node holds every write."""
    result = run(tmp_path, "--partition", "40", timeout=1200)
    check_complete(result, 24)
    assert result["burst"]["modes"] == {"tree": 24}  # type: ignore[index]
    assert result["idle"]["per_node_per_s"]["swim_datagrams"] < 3  # type: ignore[index]
    assert result["partition"]["heal_converged_s"] is not None  # type: ignore[index]
