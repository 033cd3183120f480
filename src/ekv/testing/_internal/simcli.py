"""The command line of the cluster simulator (``python -m ekv.testing.sim``; see
:mod:`ekv.testing.sim`): here so that the simulator's module holds the simulation only."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["main"]


def main(argv: list[str] | None, run_seed: Callable[..., tuple[list[Any], int, Any]]) -> int:
    """Parse ``argv`` and run its seeds with ``run_seed`` (:func:`ekv.testing.sim.run_seed`)."""
    parser = argparse.ArgumentParser(description="Run ekv's deterministic cluster simulator.")
    parser.add_argument("--seeds", type=int, default=20, help="how many seeds (from --first)")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="virtual seconds of faults and writes per seed")
    parser.add_argument(
        "--clones", type=int, default=0, help="at most this many data-directory copies started next to their original"
    )
    parser.add_argument(
        "--consistent",
        action="store_true",
        help="also run clients of linearizable operations on keys c/0..c/2 and check linearizability",
    )
    parser.add_argument("--fault-scale", type=float, default=1.0, help="multiply the rate of faults")
    parser.add_argument(
        "--idle", type=float, default=0.0, help="after the check, idle this many seconds and report anti-entropy's cost"
    )
    parser.add_argument(
        "--seed-nodes", type=int, default=None, help="configure every node with the first K nodes only (default: all)"
    )
    args = parser.parse_args(argv)
    failed = 0
    for seed in range(args.first, args.first + args.seeds):
        extra: dict[str, Any] = {"consistent": True} if args.consistent else {}
        if args.seed_nodes is not None:
            extra["seed_nodes"] = args.seed_nodes
        if args.fault_scale != 1.0:
            extra["fault_scale"] = args.fault_scale
        problems, settle_ms, sim = run_seed(
            seed,
            duration_ms=int(args.seconds * 1000),
            nodes=args.nodes,
            clones=args.clones,
            idle_ms=int(args.idle * 1000),
            **extra,
        )
        status = "ok" if not problems else "FAIL"
        copies = f", {args.clones - sim.clones_left} copied data directories" if args.clones else ""
        linear = ""
        if sim.consistent is not None:
            stats = sim.consistent.stats
            linear = (
                f"; linearizable: {'no' if any(p.kind == 'linearizability' for p in problems) else 'yes'} "
                f"({stats['ok']} ok, {stats['conflict']} conflicts, {stats['no_quorum']} no quorum, "
                f"{stats['info']} unknown, {stats['ok_partitioned']} ok under a partition)"
            )
        idle = f", idle anti-entropy {sim.idle_rate:.2f} messages/node/s" if args.idle else ""
        print(
            f"seed {seed}: {status}, {len(sim.acked)} acknowledged writes, {sim.checked_messages} messages "
            f"({sim.checked_live} carrying live writes), settled in {settle_ms} ms{copies}{linear}{idle}; "
            f"sessions per node max {sim.sessions_max} ({sim.sessions_max_late} from 5 s on), "
            f"mean {sim.session_sum / max(1, sim.session_samples):.1f}"
        )
        for problem in problems:
            print(f"  {problem.kind}: {problem.detail}")
        failed += bool(problems)
    print(f"{args.seeds - failed}/{args.seeds} seeds passed")
    return 1 if failed else 0
