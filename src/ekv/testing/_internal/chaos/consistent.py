"""Consistent runs (``RunOptions.consistent``, ``--consistent``): linearizable operations under the nemesis.

The nodes start as voters of one cluster (``cluster_size`` = the number of nodes) with
``consistent_prefixes=["c/", "lock/"]``. Besides the plain workload, client threads inside every
node process (:mod:`.member`: they call the public API, ``kv.put(key, value, if_absent=True)``
and so on) run linearizable operations on a few keys (``c/0`` .. ``c/3``: contention) and take
and release the lock ``lock/0``, recording the history format of
:mod:`ekv.testing._internal.checker.linear`:

* ``cread``: ``kv.lookup(key, consistent=True)``;
* ``cwrite``: ``put(..., if_absent=True)`` (cond ``"absent"``), ``put(..., if_version=V)`` with a
  version this client observed (cond ``V``), ``put(..., consistent=True)`` and
  ``delete(..., consistent=True)`` (cond ``"any"``; a delete writes null). Values are unique
  strings, as in the plain workload;
* ``acquire`` (``kv.lock("lock/0", ttl=..., timeout=...)``, ttl longer than the run, ok with its
  fencing ``token``) and ``release`` (``Lock.release()``, with that token).

Outcomes: ``ok``; ``fail`` with error ``"conflict"`` and ``current`` for a ConflictError (a lock's
release that finds the lock lost: ``"lost"``), ``"no_quorum"`` for a NoQuorumError (definitely
not applied); ``info`` for an UnconfirmedError and anything else (it may have been applied), and
for every acquire that did not succeed (``lock()`` retries internally: one of its attempts may
have taken the lock unconfirmed). A client continues as a new process after an ``info``. A
node that is SIGKILLed never completes its clients' operations in flight: ``info`` too.

The verdict adds :func:`~ekv.testing._internal.checker.linear.check_linearizable` on these
operations (the plain checks see only the plain operations and keys, and convergence is
measured on the plain keys: a voter left out of a key's accepts catches up at the key's next
round, not by replication). And a run only counts when consensus was exercised under the
faults: :func:`windows` cuts the run into fault windows (a partition until the next heal, a
kill until its restart, a pause until its resume) and counts the consistent operations that
completed ok inside each. A window of at least ``MIN_WINDOW_S`` in which some side of the
partition held a majority of live voters throughout, yet saw no ok operation, makes the run
*unusable*: reported as such, not as a violation (``RunResult.consistent["usable"]``).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ekv
from ekv.testing._internal.checker.linear import FUNCTIONS, Violation, check_linearizable

__all__ = ["KEYS", "LOCK_KEY", "MIN_WINDOW_S", "PREFIXES", "client", "judge", "plain", "strip", "windows"]

PREFIXES = ("c/", "lock/")
KEYS = [f"c/{i}" for i in range(4)]
LOCK_KEY = "lock/0"
MIN_WINDOW_S = 3.0
"""Shorter fault windows (flapping partitions, brief pauses) are reported but not required to
complete an operation: a round may legitimately wait out its ``consistent_timeout`` in one."""
NS = 1_000_000_000
LOCK_WAIT_S = 0.5


def _version(found: tuple[Any, Any] | None) -> list[Any] | None:
    return None if found is None else [found[0], found[1].timestamp_ns]


def _failure(exc: ekv.Error) -> dict[str, Any]:
    """The completion record of an operation that raised."""
    if isinstance(exc, ekv.ConflictError):
        return {"type": "fail", "error": "conflict", "current": _version(exc.current)}
    if isinstance(exc, ekv.NoQuorumError):
        return {"type": "fail", "error": "no_quorum"}
    return {"type": "info", "error": f"{type(exc).__name__}: {exc}"[:200]}


def _apply(kv: ekv.EKV, record: Mapping[str, Any]) -> dict[str, Any]:
    """Run one cread/cwrite and return its completion."""
    key = record["key"]
    if record["f"] == "cread":
        found = kv.lookup(key, consistent=True)
        if found is None:
            return {"type": "ok", "value": None, "version": None}
        return {"type": "ok", "value": found[0], "version": found[1].timestamp_ns}
    cond, value = record["cond"], record["value"]
    if cond == "absent":
        version = kv.put(key, value, if_absent=True)
    elif isinstance(cond, int):
        version = kv.put(key, value, if_version=ekv.Version(cond, ""))  # only its timestamp is compared
    elif value is None:
        version = kv.delete(key, consistent=True)
    else:
        version = kv.put(key, value, consistent=True)
    return {"type": "ok", "version": version.timestamp_ns}


class _Client:
    """One client thread's state: its process id, its writes, the versions it has observed."""

    def __init__(self, kv: ekv.EKV, spec: Mapping[str, Any], index: int, recorder: Any) -> None:
        self.kv = kv
        self.spec = spec
        self.recorder = recorder
        self.rng = random.Random(f"{spec['seed']}/{spec['proc']}/{spec['life']}/c{index}")
        self.ident = f"{spec['proc']}.{spec['life']}.c{index}"
        self.generation = 0
        self.written = 0
        self.seen: dict[str, int] = {}

    @property
    def process(self) -> str:
        return f"{self.ident}.{self.generation}"

    def record(self, base: dict[str, Any], outcome: dict[str, Any]) -> None:
        self.recorder.write({**base, **outcome, "time": time.monotonic_ns()})
        if outcome["type"] == "info":
            self.generation += 1

    def invoke(self, f: str, key: str, **fields: Any) -> dict[str, Any]:
        base = {"process": self.process, "node": self.spec["node"], "proc": self.spec["proc"], "f": f, "key": key}
        base.update(fields)
        self.recorder.write({**base, "type": "invoke", "time": time.monotonic_ns()})
        return base

    def register_op(self) -> None:
        rng = self.rng
        key = rng.choice(KEYS)
        roll = rng.random()
        fields: dict[str, Any] = {}
        if roll < 0.3 or (roll < 0.55 and key not in self.seen):
            f = "cread"
        else:
            f = "cwrite"
            self.written += 1
            value: str | None = f"{self.process}-{self.written}"
            cond: Any = "any"
            if roll < 0.55:
                cond = self.seen[key]
            elif roll < 0.75:
                cond = "absent"
            elif roll < 0.9:
                value = None
            fields = {"value": value, "cond": cond}
        base = self.invoke(f, key, **fields)
        try:
            outcome = _apply(self.kv, base)
        except ekv.Error as exc:
            outcome = _failure(exc)
        if outcome.get("version") is not None:
            self.seen[key] = outcome["version"]
        elif outcome.get("error") == "conflict" and outcome["current"] is not None:
            self.seen[key] = outcome["current"][1]
        self.record(base, outcome)

    def lock_cycle(self) -> None:
        ttl = float(self.spec["consistent"]["lock_ttl"])
        base = self.invoke("acquire", LOCK_KEY, ttl_s=ttl)
        try:
            lock = self.kv.lock(LOCK_KEY, ttl=ttl, timeout=LOCK_WAIT_S)
        except ekv.Error as exc:
            self.record(base, {"type": "info", "error": f"{type(exc).__name__}: {exc}"[:200]})
            return
        self.record(base, {"type": "ok", "token": lock.token})
        time.sleep(self.rng.uniform(0.01, 0.2))  # the hold, not a wait for a condition
        while time.monotonic_ns() < self.spec["until_ns"] + 10 * NS:
            base = self.invoke("release", LOCK_KEY, token=lock.token)
            try:
                outcome = {"type": "ok"} if lock.release() else {"type": "fail", "error": "lost"}
            except ekv.Error as exc:
                outcome = _failure(exc)
            self.record(base, outcome)
            if outcome.get("error") != "no_quorum":
                return
            lock.released = False  # definitely not released: try again
            time.sleep(0.2)  # back-off while there is no quorum, not a wait for a condition


def client(kv: ekv.EKV, spec: Mapping[str, Any], index: int, recorder: Any) -> None:
    """One consistent client thread (``spec``: the ``workload`` command's fields, ``consistent``
    among them): runs until ``until_ns``."""
    state = _Client(kv, spec, index, recorder)
    rate = float(spec["consistent"].get("rate", spec["rate"]))
    pause = 1.0 / rate if rate > 0 else 0.0
    while time.monotonic_ns() < spec["until_ns"]:
        if state.rng.random() < 0.08:
            state.lock_cycle()
        else:
            state.register_op()
        if pause:
            time.sleep(state.rng.uniform(0, 2 * pause))  # pacing of the workload, not a wait for a condition


# -- the verdict ---------------------------------------------------------------------------------------


def is_consistent(key: str) -> bool:
    return key.startswith(PREFIXES)


def strip(state: Mapping[str, Any]) -> dict[str, Any]:
    """A node state without the consistent keys."""
    return {key: row for key, row in state.items() if not is_consistent(key)}


def plain(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The records the plain checker judges: no consistent operation, no consistent key in a state."""
    out: list[dict[str, Any]] = []
    for record in records:
        kind = record.get("record", "op")
        if kind == "op" and record.get("f") in FUNCTIONS:
            continue
        if kind in ("final", "restart"):
            record = {**record, "state": strip(record["state"])}
        out.append(dict(record))
    return out


def _fault_windows(nemesis: list[Mapping[str, Any]], end: int) -> list[dict[str, Any]]:
    """(kind, start, stop, detail) of every partition, kill and pause."""
    out: list[dict[str, Any]] = []
    open_: dict[tuple[str, str], dict[str, Any]] = {}
    closers = {"heal": "partition", "restart": "kill", "resume": "pause"}
    for event in nemesis:
        action, detail, t = event["action"], event["detail"], event["time"]
        if action in ("partition", "heal", "final-heal"):
            current = open_.pop(("partition", ""), None)
            if current is not None:
                current["stop"] = t
        if action in ("kill", "pause"):
            window = {"kind": action, "start": t, "stop": end, "node": detail["node"]}
            open_[(action, detail["node"])] = window
            out.append(window)
        elif action == "partition":
            window = {"kind": "partition", "start": t, "stop": end, "groups": detail["groups"]}
            window["bridge"] = detail.get("bridge", [])
            open_[("partition", "")] = window
            out.append(window)
        elif action in closers and action != "heal":
            current = open_.pop((closers[action], detail["node"]), None)
            if current is not None:
                current["stop"] = t
        elif action == "final-heal":
            for current in open_.values():
                current["stop"] = min(current["stop"], t)
            open_.clear()
    return out


def _majority_throughout(window: Mapping[str, Any], faults: list[dict[str, Any]], names: list[str]) -> bool:
    """Some side of every partition in force during the window holds a majority of the voters
    that are up (not killed or paused) at any time during the window."""
    a, b = window["start"], window["stop"]
    during = [w for w in faults if w["start"] < b and w["stop"] > a]
    down = {names.index(w["node"]) for w in during if w["kind"] != "partition" and w["node"] in names}
    quorum = len(names) // 2 + 1
    partitions = [w for w in during if w["kind"] == "partition"] or [{"groups": [list(range(len(names)))]}]
    for partition in partitions:
        bridge = set(partition.get("bridge", []))
        if not any(len((set(g) | bridge) - down) >= quorum for g in partition["groups"]):
            return False
    return True


def windows(records: Sequence[Mapping[str, Any]], names: list[str], end: int) -> list[dict[str, Any]]:
    """Every fault window with the consistent operations that completed ok inside it, and
    whether it had to have some (see the module docstring). Times in seconds from ``t0`` are
    added for reading (``from_s``, ``to_s``) by :func:`judge`."""
    nemesis = [r for r in records if r.get("record") == "nemesis"]
    faults = _fault_windows(nemesis, end)
    done = sorted(
        r["time"] for r in records if r.get("record", "op") == "op" and r.get("f") in FUNCTIONS and r["type"] == "ok"
    )
    out = []
    for window in faults:
        a, b = window["start"], window["stop"]
        ok = sum(1 for t in done if a <= t <= b)
        required = (b - a) >= MIN_WINDOW_S * NS and _majority_throughout(window, faults, names)
        out.append({**window, "ok": ok, "required": required})
    return out


def judge(records: Sequence[Mapping[str, Any]], names: list[str], t0: int, end: int) -> dict[str, Any]:
    """The consistent part of a run's verdict: operation counts, linearizability violations,
    the fault windows, and whether the run is usable."""
    ops = [r for r in records if r.get("record", "op") == "op" and r.get("f") in FUNCTIONS]
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for record in ops:
        kind = "attempted" if record["type"] == "invoke" else record["type"]
        counts[record["f"]][kind] += 1
        counts["all"][kind] += 1
    violations: list[Violation] = check_linearizable(ops)
    per_kind: dict[str, int] = defaultdict(int)
    for violation in violations:
        per_kind[violation.kind] += 1
    found = windows(records, names, end)
    for window in found:
        window["from_s"] = round((window.pop("start") - t0) / NS, 2)
        window["to_s"] = round((window.pop("stop") - t0) / NS, 2)
    empty = [w for w in found if w["required"] and w["ok"] == 0]
    return {
        "ops": {f: dict(c) for f, c in counts.items()},
        "violations": dict(per_kind),
        "valid": not violations,
        "windows": found,
        "required_windows": sum(1 for w in found if w["required"]),
        "empty_windows": empty,
        "usable": not empty,
        "details": [v.to_dict() for v in violations[:50]],
    }
