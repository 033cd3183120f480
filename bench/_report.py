"""Shared reporting for the benchmark scripts: targets with a met/missed verdict per row, and the
comparison of a run against an earlier run's JSON (``--compare OLD.json``).

A benchmark's figures only mean something beside a floor measured in the same run on the same
(shared, noisy) machine, so a target is usually a ratio to that floor; the report prints, for each
row, the figure, the target and whether it holds, so a reader sees the gap without arithmetic.

The JSON convention the helpers read: ``{"rows": {name: {figure: number, ..., "reps": [...]}},
...}``; every number under ``rows`` is a figure (``flatten`` names it ``row.figure``), lists (the
repetitions) are kept for the record but not compared.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Target", "compare_table", "direction", "flatten", "load_rows", "median_of", "targets_table"]

HIGHER_IS_BETTER = ("ops_s", "per_s", "_share")
LOWER_IS_BETTER = ("_us", "_ms", "seconds", "growth_mb", "peak_mb", "_x")


@dataclass(frozen=True)
class Target:
    """One row of a target table: ``value`` must be at most (``at_most=True``) or at least
    ``limit``. ``value`` None means the row could not be measured in this run (it says why in
    ``note``)."""

    name: str
    value: float | None
    limit: float
    at_most: bool
    unit: str = "x"
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "not measured"}[self.met]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        """The inverse of :meth:`as_dict` (``met`` is derived, not stored)."""
        return cls(**{k: v for k, v in data.items() if k != "met"})

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "at_most": self.at_most,
            "unit": self.unit,
            "met": self.met,
            "note": self.note,
        }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.0%}"
    return f"{value:,.0f} {unit}"


def targets_table(targets: list[Target]) -> str:
    """A markdown table: row | measured | target | verdict."""
    lines = ["| target | measured | limit | verdict |", "|---|---:|---:|---|"]
    for t in targets:
        limit = ("<= " if t.at_most else ">= ") + _fmt(t.limit, t.unit)
        verdict = t.verdict + (f" ({t.note})" if t.note else "")
        lines.append(f"| {t.name} | {_fmt(t.value, t.unit)} | {limit} | {verdict} |")
    return "\n".join(lines)


def median_of(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-figure median of a row's repetitions, with the repetitions kept under ``reps``."""
    keys = [k for k, v in reps[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    row: dict[str, Any] = {k: statistics.median(float(r[k]) for r in reps) for k in keys}
    row["reps"] = reps
    return row


def flatten(prefix: str, value: Any) -> Iterator[tuple[str, float]]:
    """Every number of a results tree, named by its path (``latency_2_nodes.p50_us``); lists (the
    repetitions) are left out."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from flatten(f"{prefix}.{key}" if prefix else str(key), inner)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield prefix, float(value)


def direction(figure: str) -> int:
    """+1 if a higher value is better, -1 if lower is, 0 for inputs (counts) and the rest."""
    if figure.endswith(HIGHER_IS_BETTER):
        return 1
    if figure.endswith(LOWER_IS_BETTER):
        return -1
    return 0


def load_rows(path: Path) -> dict[str, Any]:
    """The ``rows`` of a results file (a file from before ``rows`` existed is all rows)."""
    data = json.loads(Path(path).read_text())
    rows: dict[str, Any] = data.get("rows", data)
    return rows


def compare_table(old: dict[str, Any], new: dict[str, Any], *, threshold: float = 0.10) -> str:
    """A markdown table of every figure both runs have: old, new, new/old and ``better``/``worse``
    when it moved by more than ``threshold`` in that direction. Two runs on a shared machine are
    noisy: a verdict is a hint; the ratios to the floor measured in each run are the steadier
    figures."""
    a, b = dict(flatten("", old)), dict(flatten("", new))
    lines = ["| figure | old | new | new/old | change |", "|---|---:|---:|---:|---|"]
    for figure in sorted(set(a) | set(b)):
        sign = direction(figure)
        if not sign:
            continue
        va, vb = a.get(figure), b.get(figure)
        if va is None or vb is None:
            lines.append(f"| {figure} | {_num(va)} | {_num(vb)} | - | only in one run |")
            continue
        ratio = vb / va if va else float("nan")
        gain = (ratio - 1) if sign > 0 else (1 - ratio)
        change = "better" if gain > threshold else "worse" if gain < -threshold else ""
        lines.append(f"| {figure} | {_num(va)} | {_num(vb)} | {ratio:.2f} | {change} |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
