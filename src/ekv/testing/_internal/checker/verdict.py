"""What the checker reports: each :class:`Violation` with what a timeline needs, the
:class:`Verdict` over a whole history, its JSON form, its summary and the timelines."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from ekv.testing._internal.checker.history import FUNCTIONS, JSON, NS, Operation

CHECKS = (
    "convergence",
    "lost_writes",
    "phantoms",
    "duplicate_versions",
    "resurrection",
    "session",
    "causal",
    "durability",
    "node_clock",
)
"""Every check, in the order they run and are reported."""


@dataclass
class Violation:
    """One witness of a broken property, with what a timeline needs."""

    check: str
    kind: str
    key: str | None
    message: str
    ops: list[dict[str, JSON]] = field(default_factory=list)
    """The operations involved, as :meth:`Operation.to_dict` plus a ``role``."""
    states: dict[str, JSON] = field(default_factory=dict)
    """Where a row was seen (a node, or ``node@restart``) -> the row, or ``None`` if missing."""
    nemesis: list[dict[str, JSON]] = field(default_factory=list)
    """The nemesis events around the involved operations."""
    detail: dict[str, JSON] = field(default_factory=dict)

    def to_dict(self) -> dict[str, JSON]:
        return {
            "check": self.check,
            "kind": self.kind,
            "key": self.key,
            "message": self.message,
            "ops": self.ops,
            "states": self.states,
            "nemesis": self.nemesis,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, JSON]) -> Violation:
        return cls(
            check=data["check"],
            kind=data["kind"],
            key=data["key"],
            message=data["message"],
            ops=list(data.get("ops", [])),
            states=dict(data.get("states", {})),
            nemesis=list(data.get("nemesis", [])),
            detail=dict(data.get("detail", {})),
        )


@dataclass
class Verdict:
    """The result of :func:`check`. ``valid`` is true when no check found a violation."""

    counts: dict[str, dict[str, int]]
    """Per ``f`` (and ``all``): attempted, ok, fail, info."""
    violations_per_check: dict[str, int]
    checks: dict[str, str]
    """check -> ``"ran"`` or ``"skipped: <why>"``."""
    stats: dict[str, JSON]
    violations: list[Violation]
    warnings: list[str] = field(default_factory=list)
    t0: int = 0
    """Harness time of the first event; timelines show times relative to it."""
    _ops_by_key: dict[str, list[Operation]] | None = field(default=None, repr=False, compare=False)

    @property
    def valid(self) -> bool:
        return not self.violations

    def to_dict(self, max_per_check: int | None = None) -> dict[str, JSON]:
        """A JSON-safe dict; ``max_per_check`` keeps only the first witnesses of each check
        (the counts stay exact)."""
        kept: list[Violation] = self.violations
        if max_per_check is not None:
            seen: dict[str, int] = defaultdict(int)
            kept = []
            for violation in self.violations:
                seen[violation.check] += 1
                if seen[violation.check] <= max_per_check:
                    kept.append(violation)
        return {
            "valid": self.valid,
            "counts": self.counts,
            "violations_per_check": self.violations_per_check,
            "checks": self.checks,
            "stats": self.stats,
            "warnings": self.warnings,
            "t0": self.t0,
            "violations": [v.to_dict() for v in kept],
        }

    def to_json(self, indent: int | None = 2, max_per_check: int | None = None) -> str:
        return json.dumps(self.to_dict(max_per_check), indent=indent, sort_keys=False)

    @classmethod
    def from_json(cls, text: str | Mapping[str, JSON]) -> Verdict:
        """Rebuild a verdict from :meth:`to_json` (timelines then show only the involved
        operations and the stored nemesis excerpts)."""
        data = json.loads(text) if isinstance(text, str) else text
        return cls(
            counts=data["counts"],
            violations_per_check=data["violations_per_check"],
            checks=data["checks"],
            stats=data["stats"],
            violations=[Violation.from_dict(v) for v in data["violations"]],
            warnings=list(data.get("warnings", [])),
            t0=int(data.get("t0", 0)),
        )

    def summary(self) -> str:
        """A few lines: operations, checks and violation counts."""
        lines = ["VALID" if self.valid else f"INVALID: {len(self.violations)} violation(s)"]
        for f in (*FUNCTIONS, "all"):
            c = self.counts.get(f, {})
            lines.append(
                f"  {f:<7} attempted {c.get('attempted', 0):>7}  ok {c.get('ok', 0):>7}  "
                f"fail {c.get('fail', 0):>6}  unknown {c.get('info', 0):>6}"
            )
        for name in CHECKS:
            status = self.checks.get(name, "skipped")
            count = self.violations_per_check.get(name, 0)
            lines.append(f"  {name:<19} {status if status != 'ran' else f'{count} violation(s)'}")
        if self.stats.get("converged_after_s") is not None:
            lines.append(f"  converged {self.stats['converged_after_s']} s after the final heal")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def timeline(self, violation: Violation, context: int = 10) -> str:
        """A readable timeline of a violation: the involved operations (marked ``>>``), up to
        ``context`` other operations on the same key around them (when the verdict still has
        its history), the nemesis events in between, then the rows seen in dumps."""
        t0 = self.t0
        header = f"{violation.check}/{violation.kind}"
        if violation.key is not None:
            header += f" key {violation.key!r}"
        lines = [f"{header}: {violation.message}"]
        entries: list[tuple[int, int, str]] = []
        involved = {op["index"] for op in violation.ops}
        for record in violation.ops:
            text = ">> " + _format_op(record, t0) + f"   <- {record.get('role', '')}"
            entries.append((record["invoke_time"], 0, text))
        for op in self._context_ops(violation, involved, context):
            entries.append((op.invoke_time, 0, "   " + _format_op(op.to_dict(), t0)))
        for event in violation.nemesis:
            detail = "" if event.get("detail") is None else " " + _short(event["detail"], 100)
            entries.append(
                (int(event["time"]), 1, f"   {rel_time(int(event['time']), t0)}  nemesis {event['action']}{detail}")
            )
        entries.sort(key=lambda e: (e[0], e[1]))
        lines += [text for _, _, text in entries]
        if violation.states:
            lines.append("   rows seen in dumps:")
            for where, row in violation.states.items():
                lines.append(f"     {where:<14} {format_row(row)}")
        return "\n".join(lines)

    def _context_ops(self, violation: Violation, involved: set[int], limit: int) -> list[Operation]:
        if self._ops_by_key is None or violation.key is None or not violation.ops or limit <= 0:
            return []
        times = [op["invoke_time"] for op in violation.ops]
        ends = [op["invoke_time"] if op["complete_time"] is None else op["complete_time"] for op in violation.ops]
        start, end = min(times) - NS, max(ends) + NS
        nearby = [
            op
            for op in self._ops_by_key.get(violation.key, [])
            if op.index not in involved and op.invoke_time <= end and op.end_time >= start
        ]
        nearby.sort(key=lambda op: min(abs(op.invoke_time - t) for t in times))
        return nearby[:limit]


# -- formatting, shared with the checks' messages ---------------------------------------------------


def rel_time(t: int, t0: int) -> str:
    """A harness time as seconds since ``t0``, right-aligned."""
    return f"{(t - t0) / NS:>11.6f}s"


def _short(value: JSON, limit: int = 40) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_version(version: JSON) -> str:
    return "-" if version is None else f"({version[0]}, {version[1]})"


def _format_op(op: Mapping[str, JSON], t0: int) -> str:
    done = "         ...  " if op["complete_time"] is None else rel_time(op["complete_time"], t0)
    what = f"{op['f']:<6} {op['key']!r}"
    if op["f"] == "put" or (op["f"] == "get" and op["type"] == "ok"):
        what += f" {_short(op['value'])}"
    outcome = str(op["type"])
    if op["version"] is not None:
        outcome += f" {format_version(op['version'])}"
    if op.get("error") is not None:
        outcome += f" ({_short(op['error'], 60)})"
    return f"{rel_time(op['invoke_time'], t0)} .. {done}  {op['node']:<6} p{op['process']!s:<5} {what} -> {outcome}"


def format_row(row: JSON) -> str:
    """A dumped row (``[timestamp_ns, origin, value, ...]``, or ``None``) in one short phrase."""
    if row is None:
        return "missing"
    value = "tombstone" if row[2] is None else _short(row[2])
    return f"{format_version(row[:2])} {value}"
