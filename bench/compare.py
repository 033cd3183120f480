"""Compare the benchmark figures of two revisions of ekv, measured alternately on this machine.

    python3 bench/compare.py cba8dea                    # cba8dea (A) against the work tree (B)
    python3 bench/compare.py main HEAD --rounds 3       # two commits
    python3 bench/compare.py HEAD --benches local --local-args="--ops 5000 --reps 3 --iterate 0 --no-peers"

Each revision's ``src/`` is exported (``git archive``, so the repository and its work tree are left
alone) into a temporary directory; ``worktree`` (the default for B) is the ``src/`` of the work tree
this script lives in, uncommitted changes included. Both sides run the benchmark scripts of *this*
work tree (bench_local.py, bench_cluster.py), with ``PYTHONPATH`` pointing at the revision's
``src``: the measuring code is the same on both sides, so a difference is the library's, and an old
revision whose own scripts lack a flag (``--json``, ``--no-peers``) can still be measured (the
public API they use, put/get/delete/scan/subscribe, is stable).

The machines here are shared and noisy: runs interleave A, B, A, B, ... for ``--rounds`` rounds, so
both sides see the same mix of quiet and busy moments, and each figure is the median over the
rounds. The table gives A's and B's medians, B/A, and a verdict: ``worse`` or ``better`` when B
differs from A by more than ``--threshold`` (default 10%) in the bad or good direction (ops/s:
higher is better; latencies, times and memory: lower is better). With two rounds a verdict is a
hint, not a finding: rerun the figures it flags, with more rounds, on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import direction, flatten  # bench/_report.py: one copy of the figure rules

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORKTREE = "worktree"
"""The revision name that means the work tree's own ``src/``, uncommitted changes included."""

BENCHES = {
    "local": ("bench_local.py", "--quick --no-peers"),
    "cluster": ("bench_cluster.py", "--quick"),
}
"""Benchmark name -> (script, default arguments). ``--json FILE`` is added to every run."""


@dataclass
class Revision:
    label: str  # "A" or "B"
    rev: str  # as given
    commit: str  # resolved (or "worktree")
    src: Path


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def export(label: str, rev: str, into: Path) -> Revision:
    """Materialise ``rev``'s ``src/`` under ``into`` (or point at the work tree's)."""
    if rev == WORKTREE:
        dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--", "src") else ""
        return Revision(label, rev, f"work tree at {git('rev-parse', '--short', 'HEAD')}{dirty}", ROOT / "src")
    try:
        commit = git("rev-parse", "--verify", "--short", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"compare.py: {rev!r} is not a revision of {ROOT}: {exc.stderr.strip()}") from None
    target = into / label
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(target, filter="data")
        else:  # our own repository's archive: trusted
            tar.extractall(target)
    return Revision(label, rev, commit, target / "src")


def run_bench(bench: str, args: str, side: Revision, scratch: Path, timeout: float) -> dict[str, float]:
    """Run one benchmark once against ``side``'s ``src``; return its figures."""
    script, _ = BENCHES[bench]
    out = scratch / f"{bench}-{side.label}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(side.src)}
    cmd = [sys.executable, str(BENCH / script), *shlex.split(args), "--json", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=scratch, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"compare.py: {script} failed against {side.label} ({side.commit}):\n{tail}")
    data = json.loads(out.read_text())
    return {name: v for name, v in flatten(bench, data.get("rows", data)) if direction(name)}


def verdict(figure: str, ratio: float, threshold: float) -> str:
    sign = direction(figure)
    if ratio != ratio:  # NaN: A was 0
        return "?"
    gain = ratio - 1 if sign > 0 else 1 - ratio
    if "floor" in figure:
        # The floors run the same SQL on both sides (unless the schema changed): a floor that
        # moves measures the machine, and says how far to trust the other rows of the run.
        return "noise (floor moved)" if abs(gain) > threshold else ""
    if gain < -threshold:
        return "worse"
    if gain > threshold:
        return "better"
    return ""


def table(a: Revision, b: Revision, runs: dict[str, dict[str, list[float]]], threshold: float) -> str:
    lines = [
        f"A = {a.rev} ({a.commit}), B = {b.rev} ({b.commit}); medians of {max_rounds(runs)} alternated runs; "
        f"verdict when B/A is off by more than {threshold:.0%}",
        "",
        "| figure | A median | B median | B/A | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for figure in sorted(set(runs["A"]) | set(runs["B"])):
        va, vb = runs["A"].get(figure), runs["B"].get(figure)
        if not va or not vb:
            lines.append(f"| {figure} | {fmt(va)} | {fmt(vb)} | - | only one side |")
            continue
        ma, mb = statistics.median(va), statistics.median(vb)
        ratio = mb / ma if ma else float("nan")
        lines.append(f"| {figure} | {ma:,.1f} | {mb:,.1f} | {ratio:.2f} | {verdict(figure, ratio, threshold)} |")
    return "\n".join(lines)


def fmt(values: list[float] | None) -> str:
    return f"{statistics.median(values):,.1f}" if values else "-"


def max_rounds(runs: dict[str, dict[str, list[float]]]) -> int:
    return max((len(v) for side in runs.values() for v in side.values()), default=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", nargs="?", default="HEAD", help="revision A, the baseline (default HEAD)")
    parser.add_argument(
        "head", nargs="?", default=WORKTREE, help=f"revision B (default {WORKTREE!r}: this work tree's src/)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="A, B runs of each benchmark (default 2)")
    parser.add_argument("--threshold", type=float, default=0.10, help="noise threshold as a fraction (default 0.10)")
    parser.add_argument(
        "--benches", default="local,cluster", help="comma-separated, of: " + ", ".join(BENCHES) + " (default: all)"
    )
    for name, (script, default) in BENCHES.items():
        parser.add_argument(f"--{name}-args", default=default, help=f"arguments for {script} (default {default!r})")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one benchmark run may take (default 1800)")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any figure is 'worse'")
    args = parser.parse_args(argv)
    benches = [b.strip() for b in args.benches.split(",") if b.strip()]
    unknown = [b for b in benches if b not in BENCHES]
    if unknown or not benches:
        parser.error(f"--benches: unknown {unknown!r}; choose from {', '.join(BENCHES)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    with tempfile.TemporaryDirectory(prefix="ekv-compare-") as tmp:
        scratch = Path(tmp)
        sides = [export("A", args.base, scratch), export("B", args.head, scratch)]
        runs: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
        for rnd in range(args.rounds):
            for bench in benches:
                for side in sides:
                    t0 = time.monotonic()
                    figures = run_bench(bench, getattr(args, f"{bench}_args"), side, scratch, args.timeout)
                    for name, value in figures.items():
                        runs[side.label].setdefault(name, []).append(value)
                    print(
                        f"round {rnd + 1}/{args.rounds}: {bench} on {side.label} ({side.commit}) "
                        f"{time.monotonic() - t0:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
        print(table(sides[0], sides[1], runs, args.threshold))
    if args.json:
        meta = {s.label: {"rev": s.rev, "commit": s.commit} for s in sides}
        args.json.write_text(json.dumps({"sides": meta, "runs": runs}, indent=2))
    worse = any(
        verdict(f, statistics.median(runs["B"][f]) / statistics.median(runs["A"][f]), args.threshold) == "worse"
        for f in set(runs["A"]) & set(runs["B"])
        if statistics.median(runs["A"][f])
    )
    return 1 if args.strict and worse else 0


if __name__ == "__main__":
    sys.exit(main())
