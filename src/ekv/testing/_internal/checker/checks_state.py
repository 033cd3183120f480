"""The checks on what the store holds: convergence (P1), lost writes (P2), phantoms (P10),
duplicate versions (P3), resurrection (P4) and durability (P6), plus the write-once figures.
See the package docstring for what each check states."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from ekv.testing._internal.checker.context import Context, Seen, row_json
from ekv.testing._internal.checker.history import NS, Operation, Restart, Row, Version
from ekv.testing._internal.checker.verdict import Violation, format_row, format_version, rel_time


def _higher(a: Operation, b: Operation) -> bool:
    """True if ok write ``a`` has a higher version than ok write ``b``."""
    assert a.version is not None and b.version is not None
    return a.version > b.version


def _same_write(row: Row, op: Operation) -> bool:
    """True if the row is what the write stored (a put with a TTL may have expired into a
    tombstone with its own version)."""
    if row.version != op.version:
        return False
    if op.f == "delete":
        return row.vid is None
    return row.vid == op.vid or (row.vid is None and op.ttl is not None)


def _loss(row: Row | None, op: Operation) -> str | None:
    """How a row fails to preserve an ok write, or ``None`` if it preserves it (it is that
    write, or a higher version superseded it)."""
    assert op.version is not None
    if row is None:
        return "missing"
    if row.version > op.version or _same_write(row, op):
        return None
    return "older" if row.version < op.version else "same_version_other_write"


def _describe_row(row: Row | None) -> str:
    return "nothing" if row is None else format_row(row_json(row))


# (a) ------------------------------------------------------------------------------------------


def check_convergence(ctx: Context) -> list[Violation]:
    """P1: identical final states; and the measured convergence time within the bound."""
    out = []
    nodes = sorted(ctx.final)
    keys: set[str] = set()
    for state in ctx.final.values():
        keys.update(state)
    for key in sorted(keys):
        rows = {node: ctx.final[node].get(key) for node in nodes}
        groups: dict[str | None, list[str]] = defaultdict(list)
        for node, row in rows.items():
            groups[None if row is None else row.ident].append(node)
        if len(groups) < 2:
            continue
        ops = [
            ("wrote a row seen in a dump", w) for row in rows.values() if row is not None for w in ctx.writers(key, row)
        ]
        parts = [
            f"{', '.join(group)} {'holds' if len(group) == 1 else 'hold'} {_describe_row(rows[group[0]])}"
            for group in groups.values()
        ]
        out.append(ctx.violation("convergence", "divergent", key, "; ".join(parts), ops, states=rows))
    limit, took = ctx.max_convergence_s, ctx.history.converged_after_s
    if limit is not None and took is not None and took > limit:
        message = f"the nodes converged {took} s after the final heal, over the {limit} s bound"
        start = ctx.t_end - int(took * NS)
        detail = {"converged_after_s": took}
        out.append(ctx.violation("convergence", "slow", None, message, detail=detail, start=start, end=ctx.t_end))
    return out


# (b) ------------------------------------------------------------------------------------------


def check_lost_writes(ctx: Context) -> list[Violation]:
    """P2: the highest ok write of every key survives on every node (or is superseded)."""
    out = []
    nodes = sorted(ctx.final)
    for key, write in sorted(ctx.max_ok_write.items()):
        losses: dict[str, list[str]] = defaultdict(list)
        for node in nodes:
            kind = _loss(ctx.final[node].get(key), write)
            if kind is not None:
                losses[kind].append(node)
        for kind, where in losses.items():
            rows = {node: ctx.final[node].get(key) for node in nodes}
            ops = [("acknowledged write", write)]
            for node in where:
                row = rows[node]
                if row is not None:
                    ops += [("wrote a row seen in a dump", w) for w in ctx.writers(key, row)]
            message = (
                f"{write.f} acknowledged by {write.node} with version {format_version(write.version)} "
                f"is {kind.replace('_', ' ')} on {', '.join(where)}"
            )
            once = _write_once(ctx.by_key[key])
            out.append(ctx.violation("lost_writes", kind, key, message, ops, states=rows, detail={"write_once": once}))
    return out


def _write_once(ops: Sequence[Operation]) -> bool:
    writes = [op for op in ops if op.is_write]
    return len(writes) == 1 and writes[0].f == "put" and writes[0].ttl is None


def write_once_stats(ctx: Context) -> dict[str, int]:
    """Jepsen's set-workload figures over the write-once keys (one put attempted, no delete)."""
    stats = {"keys": 0, "acknowledged": 0, "present_everywhere": 0, "lost": 0, "recovered": 0, "failed": 0}
    if not ctx.final:
        return stats
    for ops in ctx.by_key.values():
        if not _write_once(ops):
            continue
        (put,) = [op for op in ops if op.is_write]
        stats["keys"] += 1
        present = all((row := state.get(put.key)) is not None and row.vid == put.vid for state in ctx.final.values())
        stats["present_everywhere"] += present
        if put.ok:
            stats["acknowledged"] += 1
            stats["lost"] += not present
        elif put.type == "info":
            stats["recovered"] += present
        else:
            stats["failed"] += 1
    return stats


# (c) ------------------------------------------------------------------------------------------


def _classify(ctx: Context, seen: Seen) -> tuple[str, list[Operation]] | None:
    """The phantom kind of an observation and the writes it relates to, or None if legitimate."""
    if seen.vid is None:
        return _classify_tombstone(ctx, seen)
    puts = ctx.puts_by_vid.get(seen.vid, [])
    same_key = [op for op in puts if op.key == seen.key]
    if not puts:
        return "unknown_value", []
    if not same_key:
        return "wrong_key", puts
    live = [op for op in same_key if op.type != "fail"]
    if not live:
        return "failed_write_visible", same_key
    read = seen.read
    if read is not None and read.complete_time is not None and min(op.invoke_time for op in live) > read.complete_time:
        return "read_before_write", live
    if seen.version is None or any(op.type == "info" for op in live):
        return None
    if any(op.version == seen.version for op in live):
        return None
    return "version_mismatch", live


def _classify_tombstone(ctx: Context, seen: Seen) -> tuple[str, list[Operation]] | None:
    assert seen.version is not None
    writes = [op for op in ctx.by_key.get(seen.key, []) if op.is_write and op.type != "fail"]
    if any(op.ok and op.version == seen.version and (op.f == "delete" or op.ttl is not None) for op in writes):
        return None  # a delete, or an expired put (expiry keeps the put's version)
    if any(op.type == "info" and (op.f == "delete" or op.ttl is not None) for op in writes):
        return None  # a delete (or an expiring put) of unknown outcome could have this version
    return "unknown_tombstone", [op for op in writes if op.f == "delete"]


def check_phantoms(ctx: Context) -> list[Violation]:
    """P10: every value seen was written to that key, by a put that did not fail, with the
    version it is seen with."""
    groups: dict[tuple[str, str, str | None, Version | None], list[tuple[Seen, list[Operation]]]] = defaultdict(list)
    versions_of_unknown: dict[tuple[str, str], dict[Version, list[Seen]]] = defaultdict(lambda: defaultdict(list))
    for seen in ctx.observations():
        found = _classify(ctx, seen)
        if found is not None:
            groups[(found[0], seen.key, seen.vid, seen.version)].append((seen, found[1]))
        elif seen.vid is not None and seen.version is not None:
            versions_of_unknown[(seen.key, seen.vid)][seen.version].append(seen)
    out = [
        _phantom_violation(ctx, kind, key, vid, version, items) for (kind, key, vid, version), items in groups.items()
    ]
    for (key, vid), versions in versions_of_unknown.items():
        if len(versions) > 1 and not any(op.ok for op in ctx.puts_by_vid[vid]):
            items = [(seen, ctx.puts_by_vid[vid]) for group in versions.values() for seen in group]
            out.append(_phantom_violation(ctx, "version_mismatch", key, vid, None, items))
    return out


def _phantom_violation(
    ctx: Context,
    kind: str,
    key: str,
    vid: str | None,
    version: Version | None,
    items: Sequence[tuple[Seen, list[Operation]]],
) -> Violation:
    ops: list[tuple[str, Operation]] = []
    states: dict[str, Row | None] = {}
    for seen, writes in items:
        if seen.read is not None:
            ops.append(("read it", seen.read))
        if seen.where is not None:
            states[seen.where] = seen.row
        ops += [(f"{w.type} {w.f} of this key", w) for w in writes]
    what = "a tombstone" if vid is None else f"value {vid}"
    places = len(items)
    versions = sorted({str(format_version(s.version)) for s, _ in items})
    explain = {
        "unknown_value": "that no put ever wrote",
        "wrong_key": "written to another key",
        "failed_write_visible": "written only by puts that failed",
        "read_before_write": "read before its put was invoked",
        "version_mismatch": "under a version its put was not given",
        "unknown_tombstone": "whose version no delete was given",
    }[kind]
    message = f"{what} {explain}, seen {places} time(s) with version {', '.join(versions)}"
    end = ctx.t_end if states else None
    return ctx.violation("phantoms", kind, key, message, ops, states=states, end=end)


# (d) ------------------------------------------------------------------------------------------


def _observed_versions(ctx: Context) -> dict[tuple[str, str], set[Version]]:
    """(key, value) -> the versions it was seen with (a value seen under another key is a
    phantom, reported by that check, and must not drag a put of this key into this one)."""
    found: dict[tuple[str, str], set[Version]] = defaultdict(set)
    for seen in ctx.observations():
        if seen.vid is not None and seen.version is not None:
            found[(seen.key, seen.vid)].add(seen.version)
    return found


def check_duplicate_versions(ctx: Context) -> list[Violation]:
    """P3: no two operations got the same version (info puts take part with the single
    version their value was seen with)."""
    by_version: dict[Version, list[tuple[str, Operation]]] = defaultdict(list)
    for version, ops in ctx.ok_writes_by_version.items():
        by_version[version] += [("acknowledged with this version", op) for op in ops]
    for (key, vid), versions in _observed_versions(ctx).items():
        for op in ctx.puts_by_vid.get(vid, []):
            if op.type == "info" and op.key == key and len(versions) == 1:
                by_version[next(iter(versions))].append(("unknown outcome, its value seen with this version", op))
    out = []
    for version, items in sorted(by_version.items()):
        if len(items) < 2:
            continue
        fs = sorted({op.f for _, op in items})
        kind = "put_and_delete" if len(fs) == 2 else f"two_{fs[0]}s"
        keys = sorted({op.key for _, op in items})
        message = f"{len(items)} writes share version {format_version(version)} (keys {', '.join(map(repr, keys))})"
        out.append(ctx.violation("duplicate_versions", kind, keys[0], message, items))
    return out


# (e) ------------------------------------------------------------------------------------------


def check_resurrection(ctx: Context) -> list[Violation]:
    """P4: a key whose highest ok write is a delete holds no value anywhere, unless a put of
    unknown outcome was seen with a higher version (it may have taken effect)."""
    out = []
    nodes = sorted(ctx.final)
    for key, delete in sorted(ctx.max_ok_write.items()):
        if delete.f != "delete":
            continue
        assert delete.version is not None
        where = []
        writers: list[Operation] = []
        for node in nodes:
            row = ctx.final[node].get(key)
            if row is None or row.vid is None:
                continue
            puts = [op for op in ctx.puts_by_vid.get(row.vid, []) if op.key == key and op.type != "fail"]
            if row.version > delete.version and (not puts or any(op.type == "info" for op in puts)):
                continue  # a put of unknown outcome won, or a phantom (reported by its own check)
            where.append(node)
            writers += puts
        if where:
            rows = {node: ctx.final[node].get(key) for node in nodes}
            ops = [("acknowledged delete, highest ok write", delete)] + [
                ("wrote the value that came back", w) for w in writers
            ]
            message = (
                f"deleted with version {format_version(delete.version)} by {delete.node}, "
                f"but {', '.join(where)} still {'holds' if len(where) == 1 else 'hold'} a value"
            )
            out.append(ctx.violation("resurrection", "resurrected", key, message, ops, states=rows))
    return out


# (h) ------------------------------------------------------------------------------------------


def check_durability(ctx: Context) -> list[Violation]:
    """P6: each write a node acknowledged before it was killed is in its restart state."""
    writes_by_node: dict[str, list[Operation]] = defaultdict(list)
    for op in ctx.ops:
        if op.ok and op.is_write and op.complete_time is not None:
            writes_by_node[op.node].append(op)
    for ops in writes_by_node.values():
        ops.sort(key=lambda op: op.end_time)
    out = []
    restarts = sorted(enumerate(ctx.restarts), key=lambda item: (item[1].node, item[1].kill_time))
    progress: dict[str, tuple[int, dict[str, Operation]]] = {}
    for number, restart in restarts:
        i, best = progress.get(restart.node, (0, {}))
        ops = writes_by_node.get(restart.node, [])
        while i < len(ops) and ops[i].end_time < restart.kill_time:
            op = ops[i]
            if op.key not in best or _higher(op, best[op.key]):
                best[op.key] = op
            i += 1
        progress[restart.node] = (i, best)
        out += _durability_violations(ctx, number, restart, best)
    return out


def _durability_violations(
    ctx: Context, number: int, restart: Restart, best: Mapping[str, Operation]
) -> list[Violation]:
    out = []
    where = f"{restart.node}@restart{number}"
    for key in sorted(best):
        write = best[key]
        row = restart.state.get(key)
        kind = _loss(row, write)
        if kind is None:
            continue
        message = (
            f"{write.f} acknowledged by {restart.node} with version {format_version(write.version)} before "
            f"the kill at {rel_time(restart.kill_time, ctx.t0).strip()} is {kind.replace('_', ' ')} after the restart"
        )
        ops = [("acknowledged before the kill", write)]
        detail = {"kill_time": restart.kill_time, "restart": number}
        out.append(
            ctx.violation(
                "durability", kind, key, message, ops, states={where: row}, detail=detail, end=restart.kill_time + NS
            )
        )
    return out
