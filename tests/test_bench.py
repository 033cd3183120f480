"""The benchmarks' own machinery (bench/): a step that cannot finish is an error, not a hang, and
the full-sync measurement cannot miss the events of a sync that began before it subscribed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
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


def run_script(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<script>`` with ``args`` and fail, showing its stderr, unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr
    return proc


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


def test_bench_cluster_runs_end_to_end_and_compares_two_runs(tmp_path: Path) -> None:
    """bench_cluster.py on the smallest settings: the floor row, every target row with a verdict,
    every repetition in the JSON; then ``--compare OLD --results NEW`` prints the change of each
    figure without measuring. The figures themselves are not checked (noise)."""
    out = tmp_path / "run.json"
    env = {k: v for k, v in os.environ.items() if k != "EKV_EBIN"}  # no Elixir run here
    small = ["--reps=2", "--latency=20", "--floor=20", "--writes=200", "--delta=200", "--full", "500"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_cluster.py"), *small, f"--json={out}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "floor: loopback TCP round trip" in proc.stdout, proc.stdout
    for row in ("| 2 nodes p50 / floor p50 |", "| 3 nodes p99 / floor p50 |", "| replicated writes / single-node"):
        assert row in proc.stdout, proc.stdout
    assert "not measured (pass --elixir EBIN)" in proc.stdout, proc.stdout
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert rows["floor_tcp_rtt"]["p50_us"] > 0 and len(rows["floor_tcp_rtt"]["reps"]) == 4  # 2 + 2 (3 nodes)
    assert len(rows["latency_2_nodes"]["reps"]) == 2 and len(rows["throughput_2_nodes"]["reps"]) == 2
    assert {t["name"]: t["met"] for t in data["targets"]}["2 nodes p50 / the original's p50, same window"] is None
    old = tmp_path / "old.json"
    rows["latency_2_nodes"]["p50_us"] *= 2  # the earlier run was twice as slow
    old.write_text(json.dumps(data))
    cmp = run_script("bench_cluster.py", f"--compare={old}", f"--results={out}")
    line = next(x for x in cmp.stdout.splitlines() if x.startswith("| latency_2_nodes.p50_us |"))
    assert line.endswith("| 0.50 | better |"), cmp.stdout
    assert "| floor_tcp_rtt.p50_us |" in cmp.stdout and "reps" not in cmp.stdout


def test_report_targets_say_met_missed_or_not_measured() -> None:
    report = bench_module("_report")
    rows = [
        report.Target("at most, under", 10.0, 15, at_most=True),
        report.Target("at most, over", 16.0, 15, at_most=True),
        report.Target("at least", 0.85, 0.9, at_most=False, unit="%"),
        report.Target("absent", None, 1.0, at_most=True, note="pass --elixir EBIN"),
    ]
    assert [t.verdict for t in rows] == ["met", "MISSED", "MISSED", "not measured"]
    table = report.targets_table(rows)
    assert "| at least | 85% | >= 90% | MISSED |" in table
    assert "| absent | - | <= 1.00x | not measured (pass --elixir EBIN) |" in table
    assert report.Target.from_dict(rows[1].as_dict()) == rows[1]


# -- bench/compare.py -------------------------------------------------------------------------------


def test_bench_apply_thread_runs_with_its_local_writers() -> None:
    """bench_apply_thread.py on the smallest settings: it exits with an error when a local writer
    thread dies (its writers once called a store method that had moved, and it printed figures
    for no load at all)."""
    proc = run_script("bench_apply_thread.py", "--seconds=0.2", "--rounds=1")
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("inline", "offload"))]
    assert len(rows) == 2 and all(int(row[-1]) > 0 for row in rows), proc.stdout


def test_compare_exports_a_revision_that_imports_its_own_ekv(tmp_path: Path) -> None:
    """A revision is exported with git archive (the repository is left alone) and its runs import
    that revision's ekv, not the installed one."""
    compare = bench_module("compare")
    side = compare.export("A", "HEAD", tmp_path)
    assert side.src == tmp_path / "A" / "src" and (side.src / "ekv" / "__init__.py").is_file()
    found = subprocess.run(
        [sys.executable, "-c", "import ekv; print(ekv.__file__)"],
        env={"PYTHONPATH": str(side.src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(found).is_relative_to(side.src)
    assert compare.export("B", compare.WORKTREE, tmp_path).src == ROOT / "src"
    with pytest.raises(SystemExit, match="not a revision"):
        compare.export("C", "no-such-revision-anywhere", tmp_path)


def test_compare_table_flags_only_moves_beyond_the_threshold_in_the_bad_direction() -> None:
    compare = bench_module("compare")
    a = compare.Revision("A", "base", "abc", ROOT / "src")
    b = compare.Revision("B", "worktree", "work tree", ROOT / "src")
    runs = {
        "A": {
            "local.ekv_put_new.ops_s": [100.0, 100.0],
            "local.ekv_get.ops_s": [100.0, 100.0],
            "local.ekv_get.p50_us": [10.0, 10.0],
            "local.ekv_delete.p99_us": [10.0, 10.0],
            "local.floor_apsw_write.ops_s": [100.0, 100.0],
            "cluster.full_sync_5000.seconds": [2.0, 2.0],
        },
        "B": {
            "local.ekv_put_new.ops_s": [80.0, 90.0],  # 15% fewer ops/s: worse
            "local.ekv_get.ops_s": [95.0, 95.0],  # within 10%: no verdict
            "local.ekv_get.p50_us": [8.0, 8.0],  # 20% less time: better
            "local.ekv_delete.p99_us": [12.0, 12.0],  # 20% more time: worse
            "local.floor_apsw_write.ops_s": [50.0, 50.0],  # the same SQL: the machine moved
            "cluster.full_sync_5000.seconds": [2.1, 2.1],
        },
    }
    lines = {line.split(" | ")[0].strip("| "): line for line in compare.table(a, b, runs, 0.10).splitlines()}
    assert lines["local.ekv_put_new.ops_s"].endswith("| 0.85 | worse |")
    assert lines["local.ekv_get.ops_s"].endswith("| 0.95 |  |")
    assert lines["local.ekv_get.p50_us"].endswith("| better |")
    assert lines["local.ekv_delete.p99_us"].endswith("| worse |")
    assert lines["local.floor_apsw_write.ops_s"].endswith("| noise (floor moved) |")
    assert lines["cluster.full_sync_5000.seconds"].endswith("| 1.05 |  |")
    # inputs (key counts) and baselines are not figures
    directions = {f: compare.direction(f) for f in ("x.keys", "x.writes", "x.rss_before_mb", "x.peer_rss_peak_mb")}
    assert directions == {"x.keys": 0, "x.writes": 0, "x.rss_before_mb": 0, "x.peer_rss_peak_mb": -1}


@pytest.mark.long
@pytest.mark.soak  # (about 60 s under load: the CI budget; compare.py's logic is tested above)
def test_compare_runs_head_against_the_work_tree(tmp_path: Path) -> None:
    """compare.py end to end, on the smallest settings: HEAD against the work tree, one round of
    bench_local.py each. About 35 s even so: every bench_local run pays a fixed os.sync() and pause
    before each of its ~15 measured repetitions, and seeds 10,000 keys for the scan rows,
    whatever --ops says; hence the long mark."""
    out = tmp_path / "runs.json"
    proc = run_script(
        "compare.py",
        "HEAD",
        "--rounds=1",
        "--benches=local",
        "--local-args=--ops 20 --reps 1 --iterate 0 --no-peers",
        f"--json={out}",
        timeout=600,
    )
    assert "| figure | A median | B median | B/A | verdict |" in proc.stdout
    assert "| local.ekv_put_new.ops_s |" in proc.stdout and "| local.ekv_get.p50_us |" in proc.stdout
    assert "diskcache" not in proc.stdout  # --no-peers
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"A", "B"} and all(len(v) == 1 for v in runs["A"].values())


@pytest.mark.soak  # (about 40 s under load, with its SIGKILL and takeover: the CI budget)
def test_bench_processes_runs_on_the_smallest_settings(tmp_path: Path) -> None:
    """bench_processes.py end to end with real processes on one data directory (one node process,
    three attached, one SIGKILL and takeover): every row of issue 11's targets is measured and
    printed, so the script cannot rot unnoticed. The figures themselves are not checked (noise)."""
    out = tmp_path / "procs.json"
    proc = run_script("bench_processes.py", "--seconds=0.1", "--rounds=1", "--events=20", "--kills=1", f"--json={out}")
    for row in ("| get p50", "| put ops/s", "4 processes put at once", "event attached -> attached", "takeover"):
        assert row in proc.stdout, proc.stdout
    data = json.loads(out.read_text())
    assert all(data[op][side]["n"] > 0 for op in ("get", "put") for side in ("node", "attached"))
    assert data["concurrent"]["aggregate_ops_s"] > 0 and data["concurrent"]["single_ops_s"] > 0
    assert set(data["events"]) == {
        "floor: a message to another process (Unix socket)",
        "node -> node (same process)",
        "attached -> node",
        "node -> attached",
        "attached -> attached",
    }
    assert all(row["n"] > 0 for row in data["events"].values())
    assert data["takeover"]["kills"] == 1 and 0 < data["takeover"]["to_node_max_ms"] < 60_000


def test_bench_consistent_runs_on_the_smallest_settings(tmp_path: Path) -> None:
    """bench_consistent.py end to end with three voter processes on loopback: the baseline, every
    linearizable row, the many-client throughput and the ratios are measured and printed, so the
    script cannot rot unnoticed. The figures themselves are not checked (noise)."""
    out = tmp_path / "consistent.json"
    proc = run_script("bench_consistent.py", "--seconds=0.1", "--rounds=1", "--clients=3", f"--json={out}")
    for row in ("| baseline: replication", "| consistent put |", "| update, one key", "| consistent get |"):
        assert row in proc.stdout, proc.stdout
    assert "consistent put p50 / replication p50:" in proc.stdout, proc.stdout
    data = json.loads(out.read_text())
    for row in ("replication", "plain_put", "consistent_put", "update_one_key", "consistent_get", "if_absent_put"):
        assert data[row]["n"] > 0 and data[row]["errors"] == 0, (row, data[row])
    assert all(data["throughput_n_clients"][k]["ops_s"] > 0 for k in ("cput", "update", "put"))
    assert data["ratios"]["consistent_put_p50_over_replication_p50"] > 0
    assert "elixir" not in data
