"""Negative controls for the history checker: each check must be able to fail.

For each fault of :mod:`ekv.testing._internal.faults` a short scenario runs on real node processes
(:mod:`ekv.testing.cluster`), records a history in the checker's format (an invoke and a
completion around every put, delete and get, the final state of every node, and for kills the
killed node's state read offline before it restarted) and judges it with
:func:`ekv.testing._internal.checker.check`:

* with the fault, the check that guards against it must report a violation. Those tests are
  expected failures (``xfail(strict=True)``) whose body asserts that the check passes: a checker
  that misses the bug makes the test pass unexpectedly, which strict mode turns into a failure.
  Only an ``AssertionError`` counts as the expected failure, and harness trouble raises
  :class:`ScenarioError`, so a broken scenario is a plain failure, never a silent "xfailed";
* without the fault, the same scenario passes every check, so it is the fault the check catches.

The consensus faults (``paxos_no_quorum``, ``paxos_forget_promise``) run a consistent chaos run
(:mod:`ekv.testing._internal.chaos.consistent`) instead of a scripted scenario and assert the
linearizability checker's report directly; their fault-free counterpart is the consistent run of
tests/test_chaos.py.

Nothing sleeps hoping for timing: every wait polls for its condition with a generous deadline.
The only bounded waits are where a faulty run must show that something does *not* happen
(convergence after a dropped message or a long partition): they last several anti-entropy
intervals and are the same with and without the fault.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ekv._storage.store import ShardedStore
from ekv.testing._internal import faults
from ekv.testing._internal.checker import CHECKS, History, Verdict, check
from ekv.testing.cluster import NodeProcess, ProcCluster

DEADLINE_S = 60.0
"""How long any awaited condition may take before the scenario is declared broken."""
QUIET_S = 3.0
"""How long a scenario waits for a convergence that may never come: six anti-entropy intervals
of the FAST options (0.5 s), so a healthy cluster has converged long before."""
SKEW_NS = 5 * 10**9
"""The wall clock of the skewed node runs this far ahead."""


class ScenarioError(Exception):
    """The scenario itself went wrong (not an AssertionError: an expected failure must come from
    the verdict, never from the harness)."""


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ScenarioError(f"not reached within {timeout} s: {what}")
        time.sleep(0.02)


def row_of(entry: list[Any]) -> list[Any]:
    """A dump entry ``[key, ts, origin, value_json|None, expires]`` as a checker row."""
    _key, ts, origin, value, expires = entry
    return [ts, origin, None if value is None else json.loads(value), expires]


def state_of(node: NodeProcess) -> dict[str, list[Any]]:
    return {entry[0]: row_of(entry) for entry in node.call("dump")["entries"]}


def offline_state(data_dir: Path) -> dict[str, list[Any]]:
    """The state of a stopped node, read from its files without starting it (so without any
    sync): what it will hold when it restarts."""
    store = ShardedStore.open_readonly(data_dir, codec="json")
    try:
        return {
            e.key: [e.timestamp_ns, e.origin, None if e.value is None else json.loads(e.value), e.expires_at_ns]
            for e in store.entries()
        }
    finally:
        store.close()


class Run:
    """One scenario: node processes (with the faults each was given) and the history recorded
    against them. Node ``i`` is called ``n<i>`` in the history."""

    def __init__(self, root: Path, **options: Any) -> None:
        self.root = root
        self.hook = faults.install(root / "hook")
        self.cluster = ProcCluster(root, nodes=0, **options)
        self.records: list[dict[str, Any]] = []

    @property
    def nodes(self) -> list[NodeProcess]:
        return self.cluster.nodes

    def add(self, *, fault: list[str] | None = None, skew_ns: int = 0) -> NodeProcess:
        name = f"n{len(self.nodes)}"
        env = faults.node_env(self.hook, faults=fault or [], skew_ns=skew_ns)
        node = NodeProcess(name, self.root / name, options=dict(self.cluster.options), env=env)
        if self.nodes and self.nodes[0].address:
            node.peers = [self.nodes[0].address]
        self.nodes.append(node)
        node.start()
        return node

    # -- recording -------------------------------------------------------------------------------

    def op(self, process: int, node: NodeProcess, f: str, key: str, value: str | None = None) -> dict[str, Any]:
        """Run one client operation on ``node``, recorded as an invoke and its completion."""
        base = {"process": process, "node": node.name, "f": f, "key": key}
        invoke: dict[str, Any] = {**base, "type": "invoke", "time": time.monotonic_ns()}
        if f == "put":
            invoke["value"] = value
        self.records.append(invoke)
        try:
            if f == "put":
                reply = node.call("put", key=key, value=value)
            elif f == "delete":
                reply = node.call("delete", key=key)
            else:
                reply = node.call("get", key=key)
        except Exception as exc:
            self.records.append({**base, "type": "info", "time": time.monotonic_ns(), "error": str(exc)})
            raise ScenarioError(f"{f} {key!r} on {node.name} failed: {exc}") from exc
        done: dict[str, Any] = {**base, "type": "ok", "time": time.monotonic_ns()}
        if reply.get("version") is not None:
            done["version"] = reply["version"]
        if f == "put":
            done["value"] = value
        elif f == "get":
            done["value"] = reply["value"]
        self.records.append(done)
        return reply

    def nemesis(self, action: str, detail: Any = None) -> int:
        now = time.monotonic_ns()
        self.records.append({"record": "nemesis", "time": now, "action": action, "detail": detail})
        return now

    def restart_state(self, node: NodeProcess, kill_time: int, state: dict[str, list[Any]]) -> None:
        self.records.append({"record": "restart", "node": node.name, "kill_time": kill_time, "state": state})

    def finish(self, *, converge_within: float) -> History:
        """Wait up to ``converge_within`` seconds for every node to hold the same state, then
        record every node's final state."""
        started = time.monotonic()
        deadline = started + converge_within
        converged_after: float | None = None
        while True:
            if self.cluster.converged(self.nodes):
                converged_after = time.monotonic() - started
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        records = [{"record": "meta", "converged_after_s": converged_after}, *self.records]
        records += [{"record": "final", "node": node.name, "state": state_of(node)} for node in self.nodes]
        return History.from_records(records)

    # -- waiting ---------------------------------------------------------------------------------

    def synced(self, node: NodeProcess, other: NodeProcess) -> bool:
        """``node`` is connected to ``other`` and has completed a pull of every shard from it in
        this session."""
        member = node.call("info")["info"]["members"].get(other.node_id or "")
        if not member or not member.get("connected") or not member.get("replication"):
            return False
        shards = member["replication"]["shards"].values()
        return all(s["last_sync"] is not None and s["last_sync"]["complete"] for s in shards)

    def quarantined(self, node: NodeProcess, other: NodeProcess) -> bool:
        return (other.node_id or "") in node.call("info")["info"]["quarantined"]

    def wait_synced(self, nodes: list[NodeProcess] | None = None, *, or_quarantined: bool = False) -> None:
        """Wait until every pair of ``nodes`` has completed its pulls of this session (or, with
        ``or_quarantined``, has quarantined each other)."""
        nodes = nodes or self.nodes

        def ready() -> bool:
            for node in nodes:
                for other in nodes:
                    if other is node:
                        continue
                    if not (self.synced(node, other) or (or_quarantined and self.quarantined(node, other))):
                        return False
            return True

        wait_for(ready, "every pair of nodes connected and synced")


@contextmanager
def run_in(root: Path, **options: Any) -> Iterator[Run]:
    run = Run(root, **options)
    with run.cluster:
        yield run


def holds(node: NodeProcess, key: str, version: list[Any] | None = None) -> bool:
    """``node`` holds ``key`` (with exactly ``version`` if given)."""
    row = node.dump().get(key)
    return row is not None and (version is None or [row[0], row[1]] == version)


def judge(history: History, checks: list[str] | None = None) -> Verdict:
    verdict = check(history, checks=checks)
    print(verdict.summary())
    for violation in verdict.violations:
        print(verdict.timeline(violation))
    return verdict


# -- wallclock: causal --------------------------------------------------------------------------------


def wallclock_history(root: Path, *, fault: bool) -> History:
    """n0's wall clock runs SKEW_NS ahead. A client writes k on n0; once n1 holds it, another
    client reads k on n1 and then writes k on n1. The hybrid clock stamps that write above the
    version just read; a wall clock stamps it about SKEW_NS below (and the write loses)."""
    names = ["wallclock"] if fault else []
    with run_in(root) as run:
        a = run.add(fault=names, skew_ns=SKEW_NS)
        b = run.add(fault=names)
        run.wait_synced()
        run.nemesis("skew", {"node": a.name, "offset_ns": SKEW_NS})
        written = run.op(1, a, "put", "k", "p1-1")["version"]
        wait_for(lambda: holds(b, "k", written), "n1 received n0's write")
        read = run.op(2, b, "get", "k")
        if read["value"] != "p1-1":
            raise ScenarioError(f"n1 read {read} instead of n0's write")
        run.op(2, b, "put", "k", "p2-1")
        return run.finish(converge_within=DEADLINE_S)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="negative control: wall-clock versions under skew")
def test_wallclock_under_skew_is_caught_by_causal(tmp_path: Path) -> None:
    verdict = judge(wallclock_history(tmp_path, fault=True), ["causal"])
    assert verdict.valid, verdict.summary()


def test_hybrid_clock_under_skew_passes(tmp_path: Path) -> None:
    verdict = judge(wallclock_history(tmp_path, fault=False))
    assert verdict.valid, verdict.summary()


# -- ack_before_commit: durability --------------------------------------------------------------------


def ack_history(root: Path, *, fault: bool) -> History:
    """A client writes three keys on n0, which is killed (SIGKILL) as soon as the last write is
    acknowledged. n0's state is read from its files, then it restarts and resyncs with n1."""
    with run_in(root) as run:
        a = run.add(fault=["ack_before_commit"] if fault else [])
        run.add()
        run.wait_synced()
        for i in range(3):
            run.op(1, a, "put", f"k{i}", f"p1-{i}")
        kill_time = run.nemesis("kill", a.name)
        a.kill()
        run.restart_state(a, kill_time, offline_state(a.data_dir))
        a.start()
        run.nemesis("restart", a.name)
        run.wait_synced()
        return run.finish(converge_within=DEADLINE_S)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="negative control: acknowledging before commit")
def test_ack_before_commit_is_caught_by_durability(tmp_path: Path) -> None:
    verdict = judge(ack_history(tmp_path, fault=True), ["durability"])
    assert verdict.valid, verdict.summary()


def test_ack_after_commit_survives_kill(tmp_path: Path) -> None:
    verdict = judge(ack_history(tmp_path, fault=False))
    assert verdict.valid, verdict.summary()


# -- drop_one_live: convergence ----------------------------------------------------------------------

# Heartbeats slower to time out than FAST's: a session that ends and restarts pulls everything
# again, which would repair the dropped message (and hide the fault).
STEADY = {"heartbeat_interval": 0.2, "heartbeat_timeout": 10.0}


def drop_history(root: Path, *, fault: bool) -> History:
    """A client writes d1 then d2 on n0. With the fault, the live message carrying d1 is
    dropped and anti-entropy is off; d2 shows that the session stayed up and live traffic
    flows. Then the nodes get QUIET_S to converge."""
    names = ["drop_one_live"] if fault else []
    with run_in(root, **STEADY) as run:
        a = run.add(fault=names)
        b = run.add(fault=names)
        run.wait_synced()
        run.op(1, a, "put", "d1", "p1-1")

        def dropped_or_delivered() -> bool:
            dropped = a.call("info")["info"]["replication"].get("fault_live_dropped", 0)
            return bool(dropped) or holds(b, "d1")

        wait_for(dropped_or_delivered, "n0 sent (or dropped) the live message of d1")
        second = run.op(1, a, "put", "d2", "p1-2")["version"]
        wait_for(lambda: holds(b, "d2", second), "n1 received d2 live")
        return run.finish(converge_within=QUIET_S)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="negative control: a dropped message, no anti-entropy")
def test_dropped_live_message_without_anti_entropy_is_caught_by_convergence(tmp_path: Path) -> None:
    verdict = judge(drop_history(tmp_path, fault=True), ["convergence"])
    assert verdict.valid, verdict.summary()


def test_live_replication_converges(tmp_path: Path) -> None:
    verdict = judge(drop_history(tmp_path, fault=False))
    assert verdict.valid, verdict.summary()


# -- no_quarantine: resurrection ---------------------------------------------------------------------

# Tombstones purged 2 s after the delete (GC every 0.2 s); the change log is not kept for
# members gone longer than 1 s.
SHORT_TTL = {"tombstone_ttl": 2.0, "gc_interval": 0.2, "log_retention": 1.0}

ALL_BUT_LOST_WRITES = [name for name in CHECKS if name != "lost_writes"]
"""This scenario purges a tombstone on purpose (tombstone_ttl is shorter than the run), which
``lost_writes`` counts as the loss of the delete; every other check runs."""


def quarantine_history(root: Path, *, fault: bool) -> History:
    """n0 and n1 hold k and j; a partition cuts them apart; a client deletes k on n0, whose GC
    purges the tombstone once tombstone_ttl has passed; the partition heals. Then the script an
    operator follows: if ekv quarantined the pair, rebuild n1 (the side that missed the delete)
    from an empty data directory, as docs/operators.md says; otherwise nothing is reported, so
    nothing is done. The nodes then get QUIET_S to converge."""
    names = ["no_quarantine"] if fault else []
    with run_in(root, **SHORT_TTL) as run:
        a = run.add(fault=names)
        b = run.add(fault=names)
        run.wait_synced()
        run.op(1, a, "put", "j", "p1-1")
        put = run.op(1, a, "put", "k", "p1-2")["version"]
        wait_for(lambda: holds(b, "k", put), "n1 received k")
        run.cluster.partition([a], [b])
        run.nemesis("partition", [[a.name], [b.name]])
        run.op(1, a, "delete", "k")
        wait_for(lambda: not holds(a, "k"), "n0 purged the tombstone of k")
        run.cluster.heal()
        run.nemesis("heal")
        run.wait_synced(or_quarantined=True)
        if run.quarantined(a, b) or run.quarantined(b, a):
            run.nemesis("rebuild", b.name)
            b.stop()
            b.data_dir = root / "n1-rebuilt"
            b.start()
            run.wait_synced()
        return run.finish(converge_within=QUIET_S)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="negative control: no quarantine after a long partition")
def test_long_partition_without_quarantine_is_caught_by_resurrection(tmp_path: Path) -> None:
    verdict = judge(quarantine_history(tmp_path, fault=True), ["resurrection"])
    assert verdict.valid, verdict.summary()


def test_long_partition_with_quarantine_and_rebuild_passes(tmp_path: Path) -> None:
    history = quarantine_history(tmp_path, fault=False)
    assert any(event["action"] == "rebuild" for event in history.nemesis), "ekv did not quarantine the pair"
    verdict = judge(history, ALL_BUT_LOST_WRITES)
    assert verdict.valid, verdict.summary()


# -- consensus faults: linearizability (consistent chaos runs) ------------------------------------------


def consistent_run(root: Path, fault: str, seconds: float, kinds: tuple[str, ...]) -> dict[str, Any]:
    """A consistent chaos run (:mod:`ekv.testing._internal.chaos.consistent`) of three voters on
    loopback whose node processes apply ``fault``; returns its consistent figures."""
    from ekv.testing._internal.chaos import RunOptions, run

    opts = RunOptions(nodes=3, duration=seconds, seed=12, net="local", out=root, kinds=kinds, threads=1, rate=5)
    opts.node_env = {faults.FAULTS_ENV: fault}  # applied by the chaos runner's start-up hook (chaos.skew)
    result = run(RunOptions(**{**opts.__dict__, "consistent": True, "consistent_threads": 3}))
    print(result.summary())
    logs = "".join(p.read_text(errors="replace") for p in Path(result.out).glob("n*.log"))
    assert logs.count(f"applied {fault}") >= 3, "the fault was not applied in every node process"
    assert result.consistent is not None
    return result.consistent


@pytest.mark.soak  # in CI the simulator's negative controls catch the same bug (test_sim_consistent.py)
def test_paxos_quorum_of_one_is_caught_by_linearizability(tmp_path: Path) -> None:
    """Rounds that decide on one acceptor's answer (``paxos_no_quorum``), 15 s of partitions:
    the linearizability checker must report it. The same run without the fault is
    tests/test_chaos.py::test_consistent_chaos_run (which also has kills and pauses)."""
    figures = consistent_run(tmp_path, "paxos_no_quorum", 15.0, ("partition",))
    assert not figures["valid"]
    assert {"not_linearizable", "overlap"} & set(figures["violations"]), figures["violations"]
