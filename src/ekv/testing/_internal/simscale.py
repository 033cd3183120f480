"""Issue 15's scale scenario on the cluster simulator (:mod:`ekv.testing.sim`): the real node,
cluster, SWIM, Plumtree and replication code of N nodes in virtual time, through phases whose
costs are measured apart, so that a figure answers one question:

1. *join*: N nodes start, each given every other's address (as an operator's seed list would),
   while clients write at ``writes_per_s``; not measured, it only lets the mesh or the tree form;
2. *steady*: writes with no fault and no loss: replication frames per acknowledged write, the
   broadcast's cost (the bound of issue 15 is 2 (N-1) at 100 nodes), by frame kind;
3. *partition*: two random halves cut apart for ``partition_s``, clients writing on both sides;
4. *heal*: the cut heals and writes stop; the virtual time until every node holds identical
   data and nothing is on its way (measured in steps of 500 ms) is the convergence time (issue
   15: within 10 s at 100 nodes); then the simulator's checker (lost writes, resurrections,
   divergence) must find nothing;
5. *idle*: replication frames per node per second while nothing is written (anti-entropy's
   steady cost; SWIM's datagrams are counted apart by :mod:`ekv.testing._internal.simswim`).

Sessions per node (sampled every 50 ms) are reported for the run after the join.

    python -m ekv.testing._internal.simscale --nodes 100 --seeds 1
    python -m ekv.testing._internal.simscale --nodes 500 --seeds 1    # the 500-node script (long)
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ekv.testing._internal.simcount import by_kind
from ekv.testing.sim import Simulation, Violation

__all__ = ["ScaleFigures", "main", "run_scale"]


@dataclass
class ScaleFigures:
    """What one seed of the scenario measured (virtual time unless said otherwise)."""

    nodes: int
    seed: int
    steady_writes: int = 0
    steady_messages: int = 0
    steady_kinds: Counter[str] = field(default_factory=Counter)
    partition_writes: int = 0
    converged_ms: int = 0
    idle_per_node_s: float = 0.0
    sessions_mean: float = 0.0
    sessions_max: int = 0
    problems: list[Violation] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def per_write(self) -> float:
        """Replication frames per acknowledged write in the steady phase."""
        return self.steady_messages / max(1, self.steady_writes)

    @property
    def per_write_over_bound(self) -> float:
        """:attr:`per_write` in units of N-1 (issue 15's bound is 2)."""
        return self.per_write / max(1, self.nodes - 1)


def run_scale(
    nodes: int,
    seed: int,
    *,
    join_s: float = 5.0,
    steady_s: float = 5.0,
    partition_s: float = 10.0,
    idle_s: float = 5.0,
    writes_per_s: float = 20.0,
    anti_entropy_s: float = 30.0,
) -> ScaleFigures:
    """Run the scenario of the module docstring for one seed and return its figures."""
    started = time.monotonic()
    figures = ScaleFigures(nodes, seed)
    sim = Simulation(
        seed, nodes=nodes, drop=0.0, duplicate=0.0, reorder=0.0, anti_entropy_ms=int(anti_entropy_s * 1000)
    )
    try:
        sim.run(int(join_s * 1000), writes_per_s=writes_per_s, faults=False)
        sessions0 = (sim.session_sum, sim.session_samples)
        messages0, writes0, kinds0 = sim.messages, len(sim.acked), by_kind(sim)
        sim.run(int(steady_s * 1000), writes_per_s=writes_per_s, faults=False)
        figures.steady_messages = sim.messages - messages0
        figures.steady_writes = len(sim.acked) - writes0
        figures.steady_kinds = by_kind(sim) - kinds0
        names = sorted(sim.nodes)
        random.Random(seed).shuffle(names)
        half = len(names) // 2
        sim.partition([names[:half], names[half:]])
        writes0 = len(sim.acked)
        sim.run(int(partition_s * 1000), writes_per_s=writes_per_s, faults=False)
        figures.partition_writes = len(sim.acked) - writes0
        figures.converged_ms = sim.settle()
        figures.problems = sim.check()
        if idle_s:
            figures.idle_per_node_s = sim.idle_messages(int(idle_s * 1000)) / nodes / idle_s
        samples = sim.session_samples - sessions0[1]
        figures.sessions_mean = (sim.session_sum - sessions0[0]) / max(1, samples)
        figures.sessions_max = sim.sessions_max_late
    finally:
        sim.close()
    figures.wall_s = time.monotonic() - started
    return figures


def _row(f: ScaleFigures) -> str:
    kinds = ", ".join(f"{kind} {n / max(1, f.steady_writes):.1f}" for kind, n in f.steady_kinds.most_common())
    return (
        f"| {f.nodes} | {f.seed} | {f.per_write:.0f} ({f.per_write_over_bound:.2f} (N-1)) | {kinds} |"
        f" {f.partition_writes} | {f.converged_ms / 1000:.1f} | {f.idle_per_node_s:.2f} |"
        f" {f.sessions_mean:.1f} / {f.sessions_max} | {len(f.problems)} | {f.wall_s:.0f} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ekv.testing._internal.simscale", description=__doc__)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first", type=int, default=0, help="the first seed")
    parser.add_argument("--partition", type=float, default=10.0, help="seconds the halves stay apart")
    parser.add_argument("--steady", type=float, default=5.0, help="seconds of fault-free writes measured")
    args = parser.parse_args(argv)
    print(
        "| N | seed | steady: frames per write | by kind, per write | writes under the partition |"
        " converged after the heal (s) | idle frames/node/s | sessions per node mean / max | violations |"
        " wall s |\n|" + "---|" * 10,
        flush=True,
    )
    failed = 0
    for seed in range(args.first, args.first + args.seeds):
        figures = run_scale(args.nodes, seed, partition_s=args.partition, steady_s=args.steady)
        print(_row(figures), flush=True)
        for problem in figures.problems:
            print(f"  {problem.kind}: {problem.detail}")
        failed += bool(figures.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
