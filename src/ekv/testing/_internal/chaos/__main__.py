"""``python -m ekv.testing._internal.chaos``: run one or more seeded chaos runs and print their verdicts.

    python -m ekv.testing._internal.chaos --nodes 5 --minutes 10 --seed 1 --seeds 10 --out chaos-out
    python -m ekv.testing._internal.chaos --nodes 3 --processes 3 --seconds 45 --net local   # group mode

    python -m ekv.testing._internal.chaos --nodes 3 --seconds 60 --consistent --net local   # + linearizable ops
    python -m ekv.testing._internal.chaos --nodes 3 --seconds 60 --consistent --powercut --faults partition,kill

Exit status: 0 if every run was valid (no violation, converged), 1 otherwise, 2 on bad usage,
3 if every run was valid but a consistent run was unusable (a fault window with a reachable
majority and no consistent operation completed in it: nothing was proven).
A run's files are in ``OUT/seed-N/`` (history.jsonl, verdict.json, timelines.txt, result.json,
node and client logs); ``OUT/summary.json`` lists every run's figures.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from ekv.testing._internal.chaos.nemesis import KINDS
from ekv.testing._internal.chaos.runner import RunOptions, run


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ekv.testing._internal.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=5)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="length of each run (default 1)")
    length.add_argument("--seconds", type=float, help="length of each run")
    parser.add_argument("--seed", type=int, default=1, help="the first seed (default 1)")
    parser.add_argument("--seeds", type=int, default=1, help="how many consecutive seeds to run (default 1)")
    parser.add_argument("--net", choices=["auto", "netns", "local"], default="auto")
    parser.add_argument("--out", type=Path, default=Path("chaos-out"))
    parser.add_argument("--faults", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="processes per node, sharing its data directory (group mode above 1; default 1)",
    )
    parser.add_argument(
        "--threads", type=int, default=3, help="client threads per node (per process in group mode; default 3)"
    )
    parser.add_argument("--rate", type=float, default=20.0, help="operations/s per client thread (default 20)")
    parser.add_argument("--keys", type=int, default=30, help="size of the shared key space (default 30)")
    parser.add_argument("--quiet", action="store_true", help="do not print nemesis actions as they happen")
    parser.add_argument(
        "--clone",
        action="store_true",
        help="start the last node from a byte copy of the first node's data directory (a duplicate node id)",
    )
    parser.add_argument(
        "--consistent",
        action="store_true",
        help="voters of one cluster with consistent keys; clients add linearizable operations, checked too",
    )
    parser.add_argument(
        "--consistent-threads", type=int, default=2, help="consistent client threads per node (default 2)"
    )
    parser.add_argument(
        "--powercut",
        action="store_true",
        help='nodes under the power-cut VFS with durability="full": a kill is a power cut',
    )
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or args.nodes < 1 or args.seeds < 1 or args.processes < 1:
        parser.error(f"unknown faults {unknown}" if unknown else "--nodes, --seeds and --processes must be at least 1")
    # SIGTERM ends a run like Ctrl-C: through the runner's clean-up (processes, namespaces)
    signal.signal(signal.SIGTERM, _interrupt)
    duration = args.seconds if args.seconds is not None else 60.0 * (args.minutes if args.minutes is not None else 1)
    results = []
    for seed in range(args.seed, args.seed + args.seeds):
        opts = RunOptions(
            nodes=args.nodes,
            duration=duration,
            seed=seed,
            net=args.net,
            clone=args.clone,
            consistent=args.consistent,
            consistent_threads=args.consistent_threads,
            powercut=args.powercut,
            processes=args.processes,
            out=args.out,
            kinds=kinds,
            threads=args.threads,
            rate=args.rate,
            keys=args.keys,
            progress=not args.quiet,
        )
        result = run(opts)
        print(result.summary(), flush=True)
        results.append(result.to_dict())
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(results, indent=1))
    if not all(r["valid"] for r in results):
        return 1
    return 3 if any(r["consistent"] is not None and not r["consistent"]["usable"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
