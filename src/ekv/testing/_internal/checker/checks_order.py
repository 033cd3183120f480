"""The checks on the order of operations: session guarantees (P8), writes-follow-reads (P9)
and a node's clock (P3). See the package docstring for what each check states."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from ekv.testing._internal.checker.context import Context
from ekv.testing._internal.checker.history import Operation, Version
from ekv.testing._internal.checker.verdict import Violation, format_version

BOTTOM = Version(-1, "")
"""Below every real version: what a read of "nothing" on a never-deleted key saw."""


# (f) ------------------------------------------------------------------------------------------


def _session_read_version(ctx: Context, op: Operation) -> Version | None:
    version = ctx.read_version(op)
    if version is None and op.vid is None and op.key not in ctx.may_vanish:
        return BOTTOM  # nothing there, and nothing was ever deleted or expired: below every version
    return version


def check_session(ctx: Context) -> list[Violation]:
    """P8: monotonic reads, read-your-writes, monotonic writes per (process, node, key)."""
    sessions: dict[tuple[int | str, str, str], list[Operation]] = defaultdict(list)
    for op in ctx.ops:  # ordered by invoke time, which is the process's own order
        if op.ok:
            sessions[(op.process, op.node, op.key)].append(op)
    out = []
    for (_process, _node, key), ops in sessions.items():
        out += _check_one_session(ctx, key, ops)
    return out


def _check_one_session(ctx: Context, key: str, ops: Sequence[Operation]) -> list[Violation]:
    out = []
    last_read: tuple[Version, Operation] | None = None
    last_write: tuple[Version, Operation] | None = None
    for op in ops:
        if op.is_write:
            assert op.version is not None
            if last_write is not None and op.version <= last_write[0]:
                out.append(_session_violation(ctx, "monotonic_writes", key, last_write, op, op.version))
            last_write = (op.version, op)
            continue
        seen = _session_read_version(ctx, op)
        if seen is None:
            continue
        if last_read is not None and seen < last_read[0]:
            out.append(_session_violation(ctx, "monotonic_reads", key, last_read, op, seen))
        if last_write is not None and seen < last_write[0]:
            out.append(_session_violation(ctx, "read_your_writes", key, last_write, op, seen))
        if last_read is None or seen > last_read[0]:
            last_read = (seen, op)
    return out


def _session_violation(
    ctx: Context, kind: str, key: str, earlier: tuple[Version, Operation], later: Operation, version: Version
) -> Violation:
    shown = "nothing" if version == BOTTOM else format_version(version)
    message = (
        f"process {later.process} at {later.node}: {later.f} got {shown} after its earlier "
        f"{earlier[1].f} of {format_version(earlier[0])}"
    )
    ops = [(f"earlier {earlier[1].f}", earlier[1]), (f"later {later.f}", later)]
    return ctx.violation("session", kind, key, message, ops)


# (g) ------------------------------------------------------------------------------------------


def check_causal(ctx: Context) -> list[Violation]:
    """P9: a write acknowledged by a node beats every version that node had returned for the
    key to a read completed before the write was invoked."""
    reads: dict[tuple[str, str], list[tuple[int, Version, Operation]]] = defaultdict(list)
    writes: dict[tuple[str, str], list[Operation]] = defaultdict(list)
    for op in ctx.ops:
        if not op.ok:
            continue
        if op.is_write:
            writes[(op.node, op.key)].append(op)
        elif (version := ctx.read_version(op)) is not None and op.complete_time is not None:
            reads[(op.node, op.key)].append((op.complete_time, version, op))
    out = []
    for group, group_writes in writes.items():
        group_reads = sorted(reads.get(group, []), key=lambda r: r[0])
        best: tuple[Version, Operation] | None = None
        i = 0
        for write in group_writes:  # by invoke time
            while i < len(group_reads) and group_reads[i][0] < write.invoke_time:
                _, version, read = group_reads[i]
                if best is None or version > best[0]:
                    best = (version, read)
                i += 1
            assert write.version is not None
            if best is not None and write.version <= best[0]:
                out.append(_causal_violation(ctx, group[1], best, write))
    return out


def _causal_violation(ctx: Context, key: str, read: tuple[Version, Operation], write: Operation) -> Violation:
    same = read[1].process == write.process
    who = "the same process" if same else f"process {read[1].process}"
    message = (
        f"{write.f} by process {write.process} at {write.node} got {format_version(write.version)}, not above "
        f"{format_version(read[0])} that {who} had read there before"
    )
    ops = [("read the higher version first", read[1]), ("then wrote with a lower version", write)]
    return ctx.violation("causal", "write_below_read", key, message, ops, detail={"same_process": same})


# node clock --------------------------------------------------------------------------------------


def check_node_clock(ctx: Context) -> list[Violation]:
    """P3: a node's write timestamps strictly increase in real time, across keys and restarts (per
    process of the node when operations name one: each process has its own hybrid clock)."""
    by_node: dict[str, list[tuple[int, Operation]]] = defaultdict(list)
    for op in ctx.ops:
        if op.ok and op.is_write:
            assert op.version is not None
            by_node[op.node if op.proc is None else op.proc].append((op.version.timestamp_ns, op))
    out = []
    for node, writes in sorted(by_node.items()):
        done = sorted(writes, key=lambda item: item[1].end_time)
        best: tuple[int, Operation] | None = None
        i = 0
        for ts, op in writes:  # by invoke time
            while i < len(done) and done[i][1].end_time < op.invoke_time:
                if best is None or done[i][0] > best[0]:
                    best = done[i]
                i += 1
            if best is not None and ts <= best[0]:
                message = (
                    f"{node} gave timestamp {ts} to a write invoked after it had acknowledged one with "
                    f"timestamp {best[0]}"
                )
                pair = [("acknowledged first", best[1]), ("invoked later, lower or equal timestamp", op)]
                out.append(ctx.violation("node_clock", "timestamp_not_increasing", op.key, message, pair))
    return out
