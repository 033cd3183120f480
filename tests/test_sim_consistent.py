"""Linearizable operations in the deterministic simulator (issue 12, "Proof"): real voters over the
lossy in-memory network, in virtual time, under partitions, crashes, drops and delays; many
concurrent clients on a few keys; every seed's history must be linearizable
(:mod:`ekv.testing._internal.checker.linear`). And negative controls: four ways to break the
protocol (accept without a quorum, skip the prepare phase, forget promises, serve accepted but
unchosen records to reads), each of which the same seeds must catch, while they pass unbroken.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from ekv._cluster import consensus as consensus_module
from ekv._core import paxos
from ekv._storage import acceptor as acceptor_module
from ekv.testing import sim

SEEDS = int(os.environ.get("EKV_SIM_CONSISTENT_SEEDS", "1000"))
DEFAULT_SEEDS = 200
"""Seeds in the default run (blocks of 50, about 0.2 s of CPU a seed); the rest of ``SEEDS`` in
the soak tier (``--soak``)."""
BLOCK = 50
DURATION_MS = 1_000
"""Virtual time of operations and faults per seed."""
FAULTS = 5.0
"""Faults five times as often as the plain simulator's: a seed is short."""


def run(seed: int, **options: Any) -> tuple[list[sim.Violation], sim.Simulation]:
    options.setdefault("fault_scale", FAULTS)
    problems, _, simulation = sim.run_seed(
        seed, duration_ms=int(options.pop("duration_ms", DURATION_MS)), consistent=True, **options
    )
    return problems, simulation


def blocks() -> list[object]:
    return [
        pytest.param(block, marks=pytest.mark.soak) if block >= DEFAULT_SEEDS else block
        for block in range(0, SEEDS, BLOCK)
    ]


@pytest.mark.parametrize("block", blocks())
def test_consistent_operations_under_faults_are_linearizable(block: int) -> None:
    """Each seed: 3 voters, 2 clients per node on keys c/0..c/2, 1 virtual second of random
    partitions, crashes, dropped, duplicated and delayed frames (consensus frames included), then
    settle. No violation; seeds complete ok operations (a few seeds spend their second in a
    partition or a crash: at most a fifth of them may do fewer than five), and the block saw
    conflicts, unknown outcomes, no-quorum refusals and ok operations while a partition was on."""
    failures = []
    idle = []
    totals: Counter[str] = Counter()
    for seed in range(block, min(block + BLOCK, SEEDS)):
        problems, simulation = run(seed)
        assert simulation.consistent is not None
        stats = simulation.consistent.stats
        totals.update(stats)
        if problems:
            failures.append(f"seed {seed}: {problems[:3]} (replay: ekv.testing.sim.run_seed({seed}, consistent=True))")
        assert len(simulation.consistent.history) >= 10, f"seed {seed} issued too little: {dict(stats)}"
        if stats["ok"] < 5:
            idle.append(seed)
    assert not failures, "\n".join(failures)
    assert len(idle) <= BLOCK // 5, f"seeds with fewer than 5 ok operations: {idle}"
    assert totals["ok"] >= 10 * BLOCK, totals
    assert totals["conflict"] >= BLOCK // 2, totals
    assert totals["ok_partitioned"] >= BLOCK // 2, totals
    assert totals["no_quorum"] > 0 and totals["info"] > 0, totals


def test_the_history_is_the_checkers_format_and_replays_exactly() -> None:
    first = run(7)[1].consistent
    again = run(7)[1].consistent
    assert first is not None and again is not None
    assert first.history == again.history
    kinds = Counter((r["f"], r["type"]) for r in first.history)
    assert kinds[("cread", "ok")] and kinds[("cwrite", "ok")], kinds
    conds = {str(r.get("cond")) for r in first.history if r["type"] == "invoke" and r["f"] == "cwrite"}
    assert {"any", "absent"} <= conds and any(c.isdigit() for c in conds), conds


def test_without_consistent_the_simulator_is_unchanged() -> None:
    """No consistent clients, no consensus options: existing seeds replay as before."""
    _, _, plain = sim.run_seed(3, duration_ms=2_000)
    assert plain.consistent is None
    assert plain.faulty == sim._DATA


# -- negative controls --------------------------------------------------------------------------

CONTROL_SEEDS = range(8)
"""(8 seeds since 2026-12-08: the in-memory network then began delivering a close after the frames
sent before it, which moved every seed's timing, and forgotten promises were first caught at seed 6.)"""
CONTROL = {
    "duration_ms": 4_000,
    "fault_scale": 10.0,
    "drop": 0.15,
    "delay_ms": (0, 60),
    "consistent_options": {"timeout_ms": 200, "keys": 4},
}
"""A harsher workload for the controls: faults ten times as often, 15% of frames dropped, up to
60 ms delays and operations that give up after 200 ms, so that proposers often abandon an accept
that reached only their own acceptor (what a read that skips the agreement check can then serve)."""


def caught(seeds: Iterable[int], **options: Any) -> int | None:
    """The first seed whose run reports a linearizability violation."""
    for seed in seeds:
        problems, _ = run(seed, **{**options, "consistent_options": dict(options.get("consistent_options", {}))})
        if any(p.kind == "linearizability" for p in problems):
            return seed
    return None


def test_control_seeds_pass_unbroken() -> None:
    assert caught(CONTROL_SEEDS, **CONTROL) is None


def test_control_accept_without_quorum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consensus_module, "quorum_of", lambda size: 1)
    assert caught(CONTROL_SEEDS, **CONTROL) is not None


def test_control_skip_the_prepare_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proposer decides on its own acceptor's promise (the first), asking nobody else."""
    original = paxos.Round.on_promise

    def first_promise(self: paxos.Round, voter: str, promise: paxos.Promise) -> Any:
        quorum, self.quorum = self.quorum, 1
        try:
            return original(self, voter, promise)
        finally:
            self.quorum = quorum

    monkeypatch.setattr(paxos.Round, "on_promise", first_promise)
    assert caught(CONTROL_SEEDS, **CONTROL) is not None


def test_control_forget_promises(monkeypatch: pytest.MonkeyPatch) -> None:
    """The acceptor answers a prepare without storing its promise (as if it forgot it across a
    restart): an older proposer's accept then gets through after a newer one read the state."""
    store, prepare = acceptor_module._store, acceptor_module.prepare
    preparing = [False]

    def forgetful_store(*args: Any) -> None:
        if not preparing[0]:
            store(*args)

    def forgetful_prepare(*args: Any) -> Any:
        preparing[0] = True
        try:
            return prepare(*args)
        finally:
            preparing[0] = False

    monkeypatch.setattr(acceptor_module, "_store", forgetful_store)
    monkeypatch.setattr(acceptor_module, "prepare", forgetful_prepare)
    assert caught(CONTROL_SEEDS, **CONTROL) is not None


def test_control_reads_serve_accepted_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """A consistent read returns the highest accepted record of the first quorum's promises,
    without checking that it was chosen (nor making it chosen)."""
    original = paxos.Round._decide

    def hasty(self: paxos.Round) -> Any:
        if self.op.cond == paxos.READ and not self.attempts:
            best = max(self.promises.values(), key=lambda p: (p.accepted, paxos._record_order(p.record)))
            self.phase = "done"
            return paxos.Read(best.record, False)
        return original(self)

    monkeypatch.setattr(paxos.Round, "_decide", hasty)
    assert caught(CONTROL_SEEDS, **CONTROL) is not None
