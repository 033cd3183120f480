"""Running the checks over a history: :func:`check` and the verdict's counts and stats."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from ekv.testing._internal.checker.checks_order import check_causal, check_node_clock, check_session
from ekv.testing._internal.checker.checks_state import (
    check_convergence,
    check_duplicate_versions,
    check_durability,
    check_lost_writes,
    check_phantoms,
    check_resurrection,
    write_once_stats,
)
from ekv.testing._internal.checker.context import Context
from ekv.testing._internal.checker.history import FUNCTIONS, JSON, NS, History, Operation
from ekv.testing._internal.checker.verdict import CHECKS, Verdict, Violation

_CHECK_FUNCTIONS = {
    "convergence": check_convergence,
    "lost_writes": check_lost_writes,
    "phantoms": check_phantoms,
    "duplicate_versions": check_duplicate_versions,
    "resurrection": check_resurrection,
    "session": check_session,
    "causal": check_causal,
    "durability": check_durability,
    "node_clock": check_node_clock,
}


def _skip_reason(ctx: Context, name: str) -> str | None:
    if name in ("convergence", "lost_writes", "resurrection") and not ctx.final:
        return "no final states"
    if name == "durability" and not ctx.restarts:
        return "no restart states"
    return None


def _counts(ops: Sequence[Operation]) -> dict[str, dict[str, int]]:
    counts = {f: {"attempted": 0, "ok": 0, "fail": 0, "info": 0} for f in (*FUNCTIONS, "all")}
    for op in ops:
        for f in (op.f, "all"):
            counts[f]["attempted"] += 1
            counts[f][op.type] += 1
    return counts


def _stats(ctx: Context) -> dict[str, JSON]:
    processes: dict[int | str, set[str]] = defaultdict(set)
    for op in ctx.ops:
        processes[op.process].add(op.node)
    return {
        "keys": len(ctx.by_key),
        "nodes": sorted(ctx.final),
        "processes": len(processes),
        "pinned_processes": sum(1 for nodes in processes.values() if len(nodes) == 1),
        "duration_s": round((ctx.t_end - ctx.t0) / NS, 6),
        "converged_after_s": ctx.history.converged_after_s,
        "restarts": len(ctx.restarts),
        "nemesis_events": len(ctx.nemesis),
        "write_once": write_once_stats(ctx),
    }


def check(
    history: History | Mapping[str, JSON],
    *,
    checks: Iterable[str] | None = None,
    max_convergence_s: float | None = None,
) -> Verdict:
    """Run every applicable check (or only ``checks``) on a history and return the verdict.

    Raises :class:`HistoryError` if the history is malformed."""
    if not isinstance(history, History):
        history = History.from_dict(history)
    wanted = list(CHECKS if checks is None else checks)
    unknown = sorted(set(wanted) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
    ctx = Context(history, max_convergence_s)
    statuses: dict[str, str] = {}
    violations: list[Violation] = []
    per_check: dict[str, int] = {}
    for name in CHECKS:
        if name not in wanted:
            statuses[name] = "skipped: not requested"
            continue
        reason = _skip_reason(ctx, name)
        if reason is not None:
            statuses[name] = f"skipped: {reason}"
            continue
        found = _CHECK_FUNCTIONS[name](ctx)
        statuses[name] = "ran"
        per_check[name] = len(found)
        violations += found
    return Verdict(
        counts=_counts(ctx.ops),
        violations_per_check=per_check,
        checks=statuses,
        stats=_stats(ctx),
        violations=violations,
        warnings=ctx.warnings,
        t0=ctx.t0,
        _ops_by_key=dict(ctx.by_key),
    )
