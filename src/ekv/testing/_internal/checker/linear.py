"""A linearizability checker for ekv's consistent operations (SPEC section 13, per-key CASPaxos).

The rest of this package judges last-writer-wins histories, where real-time order means nothing.
Keys declared in ``consistent_prefixes`` promise more: every operation on one of them takes
effect atomically at one instant between its invoke and its completion. This module checks that
promise offline. It is pure and stdlib-only, like the rest of the checker.

    violations = check_linearizable(load_jsonl("history.jsonl"))
    print(summary(violations))

    python -m ekv.testing._internal.checker.linear history.jsonl    # exits 1 on a violation

History format
==============

Operation records as in :mod:`ekv.testing._internal.checker` (``process``, ``node``, ``type`` in
invoke/ok/fail/info, ``time`` in ns, ``key``), with ``f`` one of (records with any other ``f``
are ignored, so one history can mix plain and consistent operations):

* ``cread``: ok carries ``value`` (null when absent) and ``version`` (int ``timestamp_ns``, or
  null when absent).
* ``cwrite``: invoke carries ``value`` (unique per write; null deletes) and ``cond``: ``"any"``,
  ``"absent"`` (no live value) or an int (the current version must be that, and the value live:
  a condition on a delete's version conflicts, as in ekv). ok carries the new
  ``version``. fail carries ``error``: ``"conflict"`` with ``current`` (``[value, version]`` or
  null when absent: the state that made the condition false), or anything else (not applied).
* ``acquire`` (invoke: ``ttl_s``; ok: ``token``) and ``release`` (invoke: ``token``).

Checks
======

Registers, per key (linearizability is compositional, so keys are checked independently):
Wing & Gong's search with Lowe's improvements: configurations (linearized set, state) already
explored are memoised, and operations of unknown outcome are placed just in time. An ``info``
write whose value somebody observed (a read, a conflict's ``current``) took effect before its
first observer completed, so it is checked like a completed operation with that deadline and
the version it was observed with; one never observed is left out (it can only have made later
reads impossible), except a delete of unknown outcome, which may take effect at any point, or
never, with a version known only to be above the one before. A ``conflict`` is placed where
its condition is false and the state is its ``current``. The state is absent or
``(value, version)``; a write must get a version above the one it replaces. Cheap checks run
first so the common faults get a precise message: a value read that no write wrote
(``phantom``), one value seen under two versions (``value_versions``), and ok writes in
real-time order whose versions do not increase (``version_order``). A key whose search finds no
order is ``not_linearizable``; the message names the operation it got stuck on.

Locks, per key: tokens of ok acquires are distinct and grow in real time (``token_order``), and
holds never overlap (``overlap``): for ok acquires A and B with A.token < B.token, B completes
after A's release was invoked (a release that was ok or of unknown outcome), unless A's release
was not ok and A's hold (A's ok time + ``ttl_s``) had expired when B completed.

Every key starts absent: record a key's history from its creation.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ekv.testing._internal.checker.history import NS, History, HistoryError, load_jsonl

FUNCTIONS = ("cread", "cwrite", "acquire", "release")
DEFAULT_MAX_STEPS = 5_000_000
"""Search steps allowed per key before giving up with a ``search_budget`` violation."""

JSON = Any


@dataclass(slots=True)
class Op:
    """One operation: its invoke and its completion merged. ``type`` is the completion's
    (``info`` when there was none); ``complete`` is None then."""

    process: JSON
    node: JSON
    f: str
    key: str
    type: str
    invoke: int
    complete: int | None
    value: JSON = None
    cond: JSON = "any"
    version: int | None = None
    error: str | None = None
    current: JSON = None
    ttl_s: float | None = None
    token: int | None = None

    def to_dict(self) -> dict[str, JSON]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass
class Violation:
    """One witness that a key's operations are not linearizable (or its lock not exclusive)."""

    key: str
    kind: str
    message: str
    ops: list[Op] = field(default_factory=list)

    def to_dict(self) -> dict[str, JSON]:
        return {"key": self.key, "kind": self.kind, "message": self.message, "ops": [op.to_dict() for op in self.ops]}


def describe(op: Op) -> str:
    """A one-line description of an operation, for messages."""
    end = "..." if op.complete is None else str(op.complete)
    parts = [f"{op.f} p={op.process}", f"[{op.invoke}, {end}]", op.type]
    if op.f == "cwrite":
        parts.append(f"value={op.value!r} cond={op.cond!r}")
    if op.f == "cread" and op.type == "ok":
        parts.append(f"value={op.value!r}")
    if op.version is not None:
        parts.append(f"version={op.version}")
    if op.error is not None:
        parts.append(f"error={op.error} current={op.current!r}")
    if op.token is not None:
        parts.append(f"token={op.token}")
    return " ".join(parts)


# -- parsing ---------------------------------------------------------------------------------------


def _op_records(source: History | Iterable[Mapping[str, JSON]]) -> Iterable[Mapping[str, JSON]]:
    if isinstance(source, History):
        return source.operations
    return (r for r in source if r.get("record", "op") == "op")


def parse_ops(source: History | Iterable[Mapping[str, JSON]]) -> list[Op]:
    """Pair each process's invokes with their completions (consistent operations only)."""
    open_ops: dict[JSON, Op] = {}
    done: list[Op] = []
    for number, record in enumerate(_op_records(source), 1):
        if record.get("f") not in FUNCTIONS:
            continue
        process, kind = record.get("process"), record.get("type")
        if kind == "invoke":
            if process in open_ops:
                raise HistoryError(f"op record {number}: process {process!r} invoked twice without a completion")
            open_ops[process] = Op(
                process=process,
                node=record.get("node"),
                f=str(record["f"]),
                key=str(record["key"]),
                type="info",
                invoke=int(record["time"]),
                complete=None,
                value=record.get("value"),
                cond=record.get("cond", "any"),
                ttl_s=record.get("ttl_s"),
                token=record.get("token"),
            )
            continue
        op = open_ops.pop(process, None)
        if op is None or op.f != record.get("f"):
            raise HistoryError(f"op record {number}: a {kind} of {record.get('f')!r} without its invoke")
        if kind not in ("ok", "fail", "info"):
            raise HistoryError(f"op record {number}: unknown type {kind!r}")
        _complete(op, kind, record)
        done.append(op)
    done.extend(open_ops.values())
    return done


def _complete(op: Op, kind: str, record: Mapping[str, JSON]) -> None:
    op.type = kind
    op.complete = int(record["time"]) if kind != "info" else None
    if kind == "ok":
        if op.f == "cread":
            op.value = record.get("value")
        if op.f in ("cread", "cwrite") and record.get("version") is not None:
            op.version = int(record["version"])
        if op.f == "acquire" and record.get("token") is not None:
            op.token = int(record["token"])
    elif kind == "fail":
        op.error = str(record.get("error", "unknown"))
        op.current = record.get("current")
    else:
        op.error = record.get("error")


# -- registers -------------------------------------------------------------------------------------

READ, WRITE, CONFLICT = 0, 1, 2

State = tuple[str | None, int, bool]
"""(canonical JSON of the live value or None, version, exact). Not exact: the version is
unknown but above the given one (after a delete of unknown outcome)."""

INITIAL: State = (None, 0, True)


def _vkey(value: JSON) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(slots=True)
class _SOp:
    """An operation as the search sees it."""

    kind: int
    cond: JSON
    vkey: str | None
    version: int | None
    call: int
    ret: int | None
    """None: may take effect at any point after ``call``, or never."""
    op: Op


def _matches(state: State, vkey: str | None, version: int | None) -> bool:
    """Is ``state`` the observed ``(value, version)``? A null version on an absent value says
    nothing about the version (a deleted key may not report its tombstone's)."""
    value, ver, exact = state
    if value != vkey:
        return False
    if version is None:
        return vkey is None
    return ver == version if exact else version > ver


def _cond_may_hold(state: State, cond: JSON) -> bool:
    value, ver, exact = state
    if cond == "any":
        return True
    if cond == "absent":
        return value is None
    if value is None:  # if_version needs a live value at that version: a delete's version never holds
        return False
    return ver == cond if exact else isinstance(cond, int) and cond > ver


def _cond_may_fail(state: State, cond: JSON) -> bool:
    value, ver, exact = state
    if cond == "any":
        return False
    if cond == "absent":
        return value is not None
    return value is None or ver != cond or not exact


def _step(state: State, sop: _SOp) -> State | None:
    """The state after ``sop`` takes effect in ``state``, or None if it cannot take effect there."""
    if sop.kind == READ:
        return state if _matches(state, sop.vkey, sop.version) else None
    if sop.kind == CONFLICT:
        if not _cond_may_fail(state, sop.cond):
            return None
        return state if _matches(state, sop.vkey, sop.version) else None
    if not _cond_may_hold(state, sop.cond):
        return None
    if sop.version is None:
        return (sop.vkey, state[1], False)
    if sop.version <= state[1]:
        return None
    return (sop.vkey, sop.version, True)


def _observations(ops: Sequence[Op]) -> dict[str, list[tuple[int, Op]]]:
    """Value -> every (version, op) it was seen with: ok reads, conflicts' currents, ok writes."""
    seen: dict[str, list[tuple[int, Op]]] = defaultdict(list)
    for op in ops:
        if op.type == "ok" and op.f in ("cread", "cwrite") and op.value is not None and op.version is not None:
            seen[_vkey(op.value) or ""].append((op.version, op))
        elif _is_conflict(op) and isinstance(op.current, list) and op.current[0] is not None:
            seen[_vkey(op.current[0]) or ""].append((int(op.current[1]), op))
    return seen


def _is_conflict(op: Op) -> bool:
    return op.f == "cwrite" and op.type == "fail" and op.error == "conflict"


def _register_prechecks(key: str, ops: Sequence[Op], seen: Mapping[str, list[tuple[int, Op]]]) -> list[Violation]:
    """Phantoms and one value under two versions: after these the search has nothing to add."""
    writers = {
        _vkey(op.value): op for op in ops if op.f == "cwrite" and op.type in ("ok", "info") and op.value is not None
    }
    violations = []
    for vkey, sightings in seen.items():
        writer = writers.get(vkey)
        if writer is None:
            op = sightings[0][1]
            violations.append(
                Violation(
                    key,
                    "phantom",
                    f"value {vkey} was seen but no write of it can have taken effect: {describe(op)}",
                    [op],
                )
            )
            continue
        versions = {version for version, _ in sightings}
        if len(versions) > 1:
            involved = [writer] + [op for _, op in sightings if op is not writer]
            message = f"value {vkey} seen under versions {sorted(versions)}"
            violations.append(Violation(key, "value_versions", message, involved))
    return violations


def _version_order(key: str, ops: Sequence[Op]) -> list[Violation]:
    """ok writes ordered in real time must get increasing versions (the first one found per write)."""
    writes = sorted(
        (op for op in ops if op.f == "cwrite" and op.type == "ok" and op.version is not None), key=lambda o: o.invoke
    )
    by_completion = sorted(writes, key=lambda o: o.complete or 0)
    violations: list[Violation] = []
    best: Op | None = None
    i = 0
    for op in writes:
        while i < len(by_completion) and (by_completion[i].complete or 0) < op.invoke:
            if best is None or (by_completion[i].version or 0) > (best.version or 0):
                best = by_completion[i]
            i += 1
        if best is not None and op.version is not None and best.version is not None and op.version <= best.version:
            message = f"write {op.version} follows write {best.version} in real time but its version is not higher"
            violations.append(Violation(key, "version_order", message, [best, op]))
    return violations


def _search_ops(ops: Sequence[Op], seen: Mapping[str, list[tuple[int, Op]]]) -> list[_SOp]:
    result = []
    for op in ops:
        if op.f == "cread" and op.type == "ok":
            result.append(_SOp(READ, None, _vkey(op.value), op.version, op.invoke, op.complete, op))
        elif _is_conflict(op):
            current = op.current
            vkey, version = (None, None) if current is None else (_vkey(current[0]), int(current[1]))
            result.append(_SOp(CONFLICT, op.cond, vkey, version, op.invoke, op.complete, op))
        elif op.f == "cwrite" and op.type == "ok":
            result.append(_SOp(WRITE, op.cond, _vkey(op.value), op.version, op.invoke, op.complete, op))
        elif op.f == "cwrite" and op.type == "info":
            vkey = _vkey(op.value)
            if vkey is None:
                result.append(_SOp(WRITE, op.cond, None, None, op.invoke, None, op))
                continue
            sightings = [(version, other) for version, other in seen.get(vkey, []) if other is not op]
            if sightings:  # it took effect before its first observer completed
                deadline = min(other.complete or 0 for _, other in sightings)
                result.append(_SOp(WRITE, op.cond, vkey, sightings[0][0], op.invoke, deadline, op))
    return result


class _Search:
    """Wing & Gong over a doubly linked list of call and return entries (as in Lowe's paper and
    porcupine): take the first call that can take effect in the current state and whose new
    configuration is unexplored, lift it, and start over; at a return whose call is still in the
    list, undo the last choice. Calls without a return are optional (unknown outcome).

    A read (or conflict) leaves the state as it is, and every operation that must precede it
    already has (the scan stops at the first pending return), so placing it the moment it fits
    is never what makes the search fail: undoing skips over it to the last write."""

    def __init__(self, sops: list[_SOp]) -> None:
        entries = []
        for i, sop in enumerate(sops):
            entries.append((sop.call, 0, i))
            if sop.ret is not None:
                entries.append((sop.ret, 1, i))
        entries.sort()
        n = len(entries)
        self.sops = sops
        self.is_call = [kind == 0 for _, kind, _ in entries]
        self.op_of = [i for _, _, i in entries]
        self.ret_node = [-1] * len(sops)
        for node, (_, kind, i) in enumerate(entries):
            if kind == 1:
                self.ret_node[i] = node
        # node n is the head sentinel; -1 ends the list
        self.next = [*range(1, n), -1, 0 if n else -1]
        self.prev = [n, *range(n - 1), -1]
        self.head = n
        self.deepest: list[int] = []
        self.stuck: int | None = None

    def _lift(self, node: int) -> None:
        for x in (node, self.ret_node[self.op_of[node]]):
            if x >= 0:
                self.next[self.prev[x]] = self.next[x]
                if self.next[x] >= 0:
                    self.prev[self.next[x]] = self.prev[x]

    def _unlift(self, node: int) -> None:
        for x in (self.ret_node[self.op_of[node]], node):
            if x >= 0:
                self.next[self.prev[x]] = x
                if self.next[x] >= 0:
                    self.prev[self.next[x]] = x

    def run(self, max_steps: int) -> bool | None:
        """True: linearizable; False: not; None: gave up after ``max_steps``."""
        sops, is_call, op_of, nxt = self.sops, self.is_call, self.op_of, self.next
        bits = [1 << i for i in range(len(sops))]
        remaining = sum(1 for sop in sops if sop.ret is not None)
        state, mask = INITIAL, 0
        stack: list[tuple[int, State]] = []
        cache: set[tuple[int, State]] = set()
        node = nxt[self.head]
        for _ in range(max_steps):
            if remaining == 0:
                return True
            if node >= 0 and is_call[node]:
                i = op_of[node]
                new = _step(state, sops[i])
                if new is not None and (mask | bits[i], new) not in cache:
                    mask |= bits[i]
                    cache.add((mask, new))
                    stack.append((node, state))
                    state = new
                    self._lift(node)
                    remaining -= sops[i].ret is not None
                    node = nxt[self.head]
                    continue
                node = nxt[node]
                continue
            if len(stack) >= len(self.deepest):
                self.deepest, self.stuck = [n for n, _ in stack], (op_of[node] if node >= 0 else None)
            while True:  # undo back to the last write: a read placed as soon as it fits is never the mistake
                if not stack:
                    return False
                node, state = stack.pop()
                i = op_of[node]
                mask ^= bits[i]
                self._unlift(node)
                remaining += sops[i].ret is not None
                if sops[i].kind == WRITE:
                    break
            node = nxt[node]
        return None

    def failure(self, key: str) -> Violation:
        """The deepest partial linearization found, and the operation it could not place."""
        done = [self.sops[self.op_of[n]].op for n in self.deepest]
        if self.stuck is None:
            return Violation(key, "not_linearizable", "no order of the operations is linearizable", done[-3:])
        stuck = self.sops[self.stuck].op
        message = (
            f"no linearization: after {len(done)} operations in order "
            f"(last: {describe(done[-1]) if done else 'none'}), {describe(stuck)} cannot take effect "
            "before it completes"
        )
        return Violation(key, "not_linearizable", message, [*done[-3:], stuck])


def check_register_key(key: str, ops: Sequence[Op], max_steps: int = DEFAULT_MAX_STEPS) -> list[Violation]:
    """The register checks for one key's ``cread`` / ``cwrite`` operations."""
    seen = _observations(ops)
    violations = _register_prechecks(key, ops, seen)
    violations += _version_order(key, ops)
    if any(v.kind in ("phantom", "value_versions") for v in violations):
        return violations
    search = _Search(_search_ops(ops, seen))
    outcome = search.run(max_steps)
    if outcome is None:
        message = f"gave up after {max_steps} search steps ({len(ops)} operations): undecided"
        violations.append(Violation(key, "search_budget", message, []))
    elif not outcome:
        violations.append(search.failure(key))
    return violations


# -- locks -----------------------------------------------------------------------------------------


def _token_order(key: str, acquires: Sequence[Op]) -> list[Violation]:
    """Tokens are distinct, and an acquire gets a higher token than every acquire that completed
    before it was invoked."""
    violations = []
    by_token: dict[int, Op] = {}
    for op in acquires:
        if op.token in by_token:
            violations.append(
                Violation(key, "token_order", f"token {op.token} granted twice", [by_token[op.token], op])
            )
        by_token[op.token or 0] = op
    by_completion = sorted(acquires, key=lambda o: o.complete or 0)
    best: Op | None = None
    i = 0
    for op in sorted(acquires, key=lambda o: o.invoke):
        while i < len(by_completion) and (by_completion[i].complete or 0) < op.invoke:
            if best is None or (by_completion[i].token or 0) > (best.token or 0):
                best = by_completion[i]
            i += 1
        if best is not None and (op.token or 0) <= (best.token or 0) and op.token != best.token:
            message = f"token {op.token} granted after token {best.token} had been granted"
            violations.append(Violation(key, "token_order", message, [best, op]))
    return violations


def _release_of(releases: Sequence[Op]) -> tuple[float, bool, Op | None]:
    """(earliest invoke of a release that may have taken effect, whether one was ok, that release)."""
    candidates = [op for op in releases if op.type in ("ok", "info")]
    first = min(candidates, key=lambda o: o.invoke, default=None)
    return (float("inf") if first is None else first.invoke), any(op.type == "ok" for op in releases), first


def _overlaps(key: str, acquires: Sequence[Op], releases: Sequence[Op]) -> list[Violation]:
    """Holds never overlap: the next holder completes after the previous one let go or expired."""
    by_token: dict[int | None, list[Op]] = defaultdict(list)
    for op in releases:
        by_token[op.token].append(op)
    ordered = sorted(acquires, key=lambda o: o.token or 0)
    holds = []
    for a in ordered:
        end, released_ok, release = _release_of(by_token.get(a.token, []))
        expiry = (a.complete or 0) + (a.ttl_s or 0) * NS if a.ttl_s is not None else float("inf")
        holds.append((a, end, released_ok, expiry, release))
    violations = []
    for j, b in enumerate(ordered):
        for a, end, released_ok, expiry, release in holds[:j]:
            if a.token == b.token or (b.complete or 0) >= end or (not released_ok and expiry <= (b.complete or 0)):
                continue
            message = (
                f"token {b.token} acquired at {b.complete} while token {a.token} was held "
                f"(released at {end if release else 'never'}, expires at {expiry})"
            )
            violations.append(Violation(key, "overlap", message, [a, *([release] if release else []), b]))
            break
    return violations


def check_lock_key(key: str, ops: Sequence[Op]) -> list[Violation]:
    """The lock checks for one key's ``acquire`` / ``release`` operations."""
    acquires = [op for op in ops if op.f == "acquire" and op.type == "ok" and op.token is not None]
    releases = [op for op in ops if op.f == "release"]
    return _token_order(key, acquires) + _overlaps(key, acquires, releases)


# -- entry points ----------------------------------------------------------------------------------


def check_linearizable(
    source: History | Iterable[Mapping[str, JSON]], max_steps: int = DEFAULT_MAX_STEPS
) -> list[Violation]:
    """Every violation in a history's consistent operations, key by key (empty: linearizable)."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in parse_ops(source):
        by_key[op.key].append(op)
    violations: list[Violation] = []
    for key in sorted(by_key):
        ops = by_key[key]
        registers = [op for op in ops if op.f in ("cread", "cwrite")]
        locks = [op for op in ops if op.f in ("acquire", "release")]
        if registers:
            violations += check_register_key(key, registers, max_steps)
        if locks:
            violations += check_lock_key(key, locks)
    return violations


def summary(violations: Sequence[Violation]) -> str:
    """A readable report: a count per kind, then each violation with its operations."""
    if not violations:
        return "linearizable: no violations"
    counts: dict[str, int] = defaultdict(int)
    for violation in violations:
        counts[violation.kind] += 1
    lines = [
        f"NOT linearizable: {len(violations)} violations ("
        + ", ".join(f"{k}: {n}" for k, n in sorted(counts.items()))
        + ")"
    ]
    for violation in violations:
        lines.append(f"- key {violation.key!r} {violation.kind}: {violation.message}")
        lines += [f"    {describe(op)}" for op in violation.ops]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the violations; exit 0 if linearizable, 1 if not, 2 on a malformed history."""
    parser = argparse.ArgumentParser(
        prog="python -m ekv.testing._internal.checker.linear",
        description="Check the consistent operations (cread, cwrite, acquire, release) of an ekv history.",
    )
    parser.add_argument("history")
    parser.add_argument("--json", action="store_true", help="print the violations as JSON")
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS, help="search steps per key")
    args = parser.parse_args(argv)
    try:
        violations = check_linearizable(load_jsonl(args.history), max_steps=args.max_steps)
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps([v.to_dict() for v in violations], indent=1) if args.json else summary(violations))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
