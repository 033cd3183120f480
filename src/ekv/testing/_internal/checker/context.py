"""The parsed history plus the indexes every check shares, and how a check builds a
:class:`Violation` (with its operations and the nemesis events around them)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ekv.testing._internal.checker.history import (
    JSON,
    NS,
    History,
    Operation,
    Row,
    Version,
    pair_operations,
    parse_restart,
    parse_state,
)
from ekv.testing._internal.checker.verdict import Violation

LEAD_NS = 5 * NS
"""How far before the first involved operation a violation's nemesis excerpt starts."""
MAX_NEMESIS = 40
"""At most this many nemesis events are kept per violation (the first and last halves)."""


@dataclass(slots=True)
class Seen:
    """Where a value (or tombstone) was observed: a read, or a row of a dump."""

    key: str
    version: Version | None
    vid: str | None
    value: JSON
    read: Operation | None = None
    where: str | None = None
    row: Row | None = None


class Context:
    """The parsed history plus the indexes the checks share."""

    def __init__(self, history: History, max_convergence_s: float | None) -> None:
        self.history = history
        self.max_convergence_s = max_convergence_s
        self.ops = pair_operations(history.operations)
        self.final = {node: parse_state(state, f"final state of {node}") for node, state in history.final.items()}
        self.restarts = [parse_restart(number, r) for number, r in enumerate(history.restarts)]
        self.nemesis = sorted(history.nemesis, key=lambda e: int(e["time"]))
        self.nemesis_times = [int(e["time"]) for e in self.nemesis]
        self.warnings: list[str] = []
        self._seen: list[Seen] | None = None
        times = [op.invoke_time for op in self.ops] + [int(e["time"]) for e in self.nemesis]
        times += [op.complete_time for op in self.ops if op.complete_time is not None]
        times += [r.kill_time for r in self.restarts]
        self.t0 = min(times, default=0)
        self.t_end = max(times, default=0)
        self.by_key: dict[str, list[Operation]] = defaultdict(list)
        self.puts_by_vid: dict[str, list[Operation]] = defaultdict(list)
        self.ok_writes_by_version: dict[Version, list[Operation]] = defaultdict(list)
        self.max_ok_write: dict[str, Operation] = {}
        self.may_vanish: set[str] = set()
        """Keys with a delete or a put with a TTL attempted: a read of nothing may be legitimate."""
        for op in self.ops:
            self._index(op)
        reused = [vid for vid, puts in self.puts_by_vid.items() if len(puts) > 1]
        if reused:
            self.warnings.append(
                f"{len(reused)} value(s) written by more than one put (values must be unique), e.g. {reused[:3]}"
            )

    def _index(self, op: Operation) -> None:
        self.by_key[op.key].append(op)
        if op.f == "put":
            assert op.vid is not None
            self.puts_by_vid[op.vid].append(op)
        if op.f == "delete" or op.ttl is not None:
            self.may_vanish.add(op.key)
        if op.ok and op.is_write:
            assert op.version is not None
            self.ok_writes_by_version[op.version].append(op)
            best = self.max_ok_write.get(op.key)
            if best is None or (best.version is not None and op.version > best.version):
                self.max_ok_write[op.key] = op

    # -- helpers shared by the checks

    def writers(self, key: str, row: Row) -> list[Operation]:
        """The writes that could have produced a row."""
        if row.vid is not None:
            return [op for op in self.puts_by_vid.get(row.vid, []) if op.key == key]
        return [op for op in self.ok_writes_by_version.get(row.version, []) if op.key == key]

    def read_version(self, op: Operation) -> Version | None:
        """The version an ok get saw: as reported, else its put's (when the put is ok)."""
        if op.version is not None:
            return op.version
        if op.vid is None:
            return None
        found = [w.version for w in self.puts_by_vid.get(op.vid, []) if w.key == op.key and w.ok]
        return found[0] if len(found) == 1 else None

    def observations(self) -> list[Seen]:
        """Every value or tombstone seen: by ok reads, in the final and the restart states
        (collected once, for the checks that need them)."""
        if self._seen is None:
            self._seen = self._collect_observations()
        return self._seen

    def _collect_observations(self) -> list[Seen]:
        seen = []
        for op in self.ops:
            if op.f == "get" and op.ok and (op.vid is not None or op.version is not None):
                seen.append(Seen(op.key, op.version, op.vid, op.value, read=op))
        dumps = [(node, state) for node, state in self.final.items()]
        dumps += [(f"{r.node}@restart{i}", r.state) for i, r in enumerate(self.restarts)]
        for where, state in dumps:
            for key, row in state.items():
                seen.append(Seen(key, row.version, row.vid, row.value, where=where, row=row))
        return seen

    def nemesis_between(self, start: int, end: int) -> list[dict[str, JSON]]:
        first = bisect.bisect_left(self.nemesis_times, start - LEAD_NS)
        last = bisect.bisect_right(self.nemesis_times, end)
        events = self.nemesis[first:last]
        if len(events) > MAX_NEMESIS:
            half = MAX_NEMESIS // 2
            skipped = {"time": events[half]["time"], "action": f"... {len(events) - MAX_NEMESIS} more events ..."}
            events = [*events[:half], skipped, *events[-half:]]
        return events

    def violation(
        self,
        check: str,
        kind: str,
        key: str | None,
        message: str,
        ops: Sequence[tuple[str, Operation]] = (),
        *,
        states: Mapping[str, Row | None] | None = None,
        detail: Mapping[str, JSON] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> Violation:
        """A violation with its operations (role, op) and the nemesis events from a little
        before the first of them until ``end`` (default: the last of them, or the end of the
        history when rows from the final dumps are involved)."""
        unique: dict[int, tuple[str, Operation]] = {}
        for role, op in ops:
            unique.setdefault(op.index, (role, op))
        if start is None:
            start = min((op.invoke_time for _, op in unique.values()), default=self.t0)
        if end is None:
            end = self.t_end if states else max((op.end_time for _, op in unique.values()), default=self.t_end)
        return Violation(
            check=check,
            kind=kind,
            key=key,
            message=message,
            ops=[{"role": role, **op.to_dict()} for role, op in sorted(unique.values(), key=lambda x: x[1].index)],
            states={where: None if row is None else row_json(row) for where, row in (states or {}).items()},
            nemesis=self.nemesis_between(start, end),
            detail=dict(detail or {}),
        )


def row_json(row: Row) -> list[JSON]:
    """A row as dumped (``[timestamp_ns, origin, value]``), for violations and messages."""
    return [row.version.timestamp_ns, row.version.origin, row.value]
