"""Markdown tables from chaos runs: ``python -m ekv.testing._internal.chaos.report OUT [OUT ...]``.

Reads each ``OUT/summary.json`` written by ``python -m ekv.testing._internal.chaos`` and prints one row per
run plus a total row: operations, acknowledged writes, every checker violation count,
convergence time after the final heal, availability of live nodes, the faults injected, and the
largest tombstone count and change-log size any node reported during the run. The published
figures in docs/reliability.md are this command's output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "table"]

_VIOLATIONS = [
    ("lost_writes", "lost acked writes"),
    ("durability", "lost at a kill"),
    ("resurrection", "resurrections"),
    ("phantoms", "phantoms"),
    ("duplicate_versions", "duplicate versions"),
    ("session", "session"),
    ("causal", "causal"),
    ("node_clock", "node clock"),
    ("convergence", "diverged"),
]


def _peak(run: dict[str, Any], field: str) -> int:
    return max((node[field] for sample in run["samples"] for node in sample["nodes"].values()), default=0)


def _last(run: dict[str, Any], field: str) -> int:
    for sample in reversed(run["samples"]):
        if sample["nodes"]:
            return int(max(node[field] for node in sample["nodes"].values()))
    return 0


def _render(rows: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def table(runs: list[dict[str, Any]]) -> str:
    """Two Markdown tables of ``runs`` (dicts as in ``summary.json``): what the checker found,
    then the faults injected and the resources used."""
    head = ["seed", "ops", "ok", "acked writes", "unknown", *[label for _, label in _VIOLATIONS]]
    head += ["converged after", "availability"]
    head2 = ["seed", "partitions", "kills", "pauses", "skew steps", "loss windows"]
    head2 += ["peak tombstones", "peak log entries", "log entries at end"]
    rows = [head, ["---:"] * len(head)]
    rows2 = [head2, ["---:"] * len(head2)]
    total: dict[str, float] = {}

    def add(name: str, value: float) -> str:
        total[name] = total.get(name, 0) + value
        return f"{value:,.0f}"

    worst_convergence = 0.0
    available_ok = available_all = 0.0
    for run in runs:
        ops = run["ops"]
        row = [str(run["seed"]), add("ops", ops["all"]["attempted"]), add("ok", ops["all"]["ok"])]
        row += [add("acked", ops["put"]["ok"] + ops["delete"]["ok"]), add("info", ops["all"]["info"])]
        row += [add(check, run["violations"].get(check, 0)) for check, _ in _VIOLATIONS]
        convergence = run["convergence_s"]
        worst_convergence = max(worst_convergence, convergence if convergence is not None else float("inf"))
        row.append("NOT REACHED" if convergence is None else f"{convergence:.2f} s")
        availability = run["availability"]
        row.append("n/a" if availability is None else f"{100 * availability:.2f}%")
        if availability is not None:
            available_ok += availability * run["available_ops"]
            available_all += run["available_ops"]
        rows.append(row)
        nemesis = run["nemesis"]
        row2 = [str(run["seed"]), *[add(kind, nemesis.get(kind, 0)) for kind in ("partition", "kill", "pause")]]
        row2.append(add("skew", max(nemesis.get("skew", 0) - run["nodes"], 0)))  # minus the initial offsets
        row2.append(add("loss", nemesis.get("loss", 0) // 2))  # a window is "loss N%" then "loss 0"
        row2 += [f"{_peak(run, 'tombstones'):,}", f"{_peak(run, 'log_entries'):,}", f"{_last(run, 'log_entries'):,}"]
        rows2.append(row2)
    if len(runs) > 1:
        row = [f"**{len(runs)} runs**", *[f"{total[k]:,.0f}" for k in ("ops", "ok", "acked", "info")]]
        row += [f"{total[check]:,.0f}" for check, _ in _VIOLATIONS]
        row.append(f"max {worst_convergence:.2f} s")
        row.append(f"{100 * available_ok / available_all:.2f}%" if available_all else "n/a")
        rows.append(row)
        row2 = [f"**{len(runs)} runs**", *[f"{total[k]:,.0f}" for k in ("partition", "kill", "pause", "skew", "loss")]]
        row2 += [f"max {max(_peak(r, 'tombstones') for r in runs):,}"]
        row2 += [f"max {max(_peak(r, 'log_entries') for r in runs):,}", ""]
        rows2.append(row2)
    return _render(rows) + "\n\n" + _render(rows2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ekv.testing._internal.chaos.report", description=__doc__)
    parser.add_argument("out", nargs="+", type=Path, help="output directories of chaos runs")
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    for out in args.out:
        try:
            runs += json.loads((out / "summary.json").read_text())
        except (OSError, ValueError) as exc:
            print(f"error: {out}: {exc}", file=sys.stderr)
            return 2
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
