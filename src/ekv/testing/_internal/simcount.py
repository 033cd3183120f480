"""What the cluster simulator's "messages per write" is made of (issue 15's bound, 2 (N-1) at 100
nodes): the replication frames of one seeded run of :mod:`ekv.testing.sim`, by kind and by second.

Why apart from the simulator: its summary line gives one total (every replication frame: live
writes, the broadcast tree's frames, anti-entropy's probes and pulls, session starts), divided by
the writes. Only part of that is a cost *per write*: anti-entropy's probes are a cost per node and
second (about one round a second each), and the first second of a run, when every node dials
every other before SWIM has counted the members (a transient full mesh), costs a probe per
session. This prints the split, so that a change is judged on the part it changes
(docs/scale.md has the figures):

``python -m ekv.testing._internal.simcount --nodes 100 --first 900 [--timeline]``

Each frame is counted once per copy the simulated network carries (a duplicated frame twice; a
lost one too, as it was sent), like the simulator's total; the tree's frames are counted by their
Plumtree kind (one ``IHave`` frame carries every announcement batched for its peer).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence

from ekv.testing.sim import Simulation

__all__ = ["GROUPS", "by_kind", "count", "main"]

_KINDS = {
    (8, 0): "SyncRequest",
    (9, 0): "SyncDone",
    (16, 0): "Live",
    (17, 0): "SyncChunk",
    (24, 0): "Summary",
    (25, 0): "SummaryDiff",
    (26, 1): "Gossip",
    (26, 2): "IHave",
    (26, 3): "Graft",
    (26, 4): "Prune",
    (26, 5): "Neighbor",
    (26, 6): "Accept",
    (26, 7): "Disconnect",
}
GROUPS = {
    "writes": ("Live", "Gossip"),
    "tree control": ("IHave", "Graft", "Prune", "Neighbor", "Accept", "Disconnect"),
    "anti-entropy probes": ("Summary", "SummaryDiff"),
    "pulls": ("SyncRequest", "SyncDone", "SyncChunk"),
}
"""The kinds, grouped: frames carrying writes, the tree's other frames, anti-entropy's probes, and
the pulls (session starts, differing digests)."""


def by_kind(sim: Simulation) -> Counter[str]:
    """Every replication frame the simulator counted so far, by kind (a TreeMessage by its
    Plumtree kind)."""
    kinds: Counter[str] = Counter()
    for (_, _, code, kind), n in sim.frames.items():
        kinds[_KINDS.get((code, kind), f"frame {code}/{kind}")] += n
    return kinds


def count(
    seed: int, nodes: int, seconds: int = 10, *, timeline: bool = False
) -> tuple[int, int, list[tuple[str, int, Counter[str]]]]:
    """Run one seed as ``python -m ekv.testing.sim`` does (random faults, 2% loss), then settle:
    the acknowledged writes, the simulator's own total of messages, and the writes and frames by
    kind, as one row ("run", then "settle"), or with ``timeline`` one row per second. A timeline
    is *another run* of the seed: the callback reading each second shifts the order of events
    that fall at the same virtual instant, and the run (faults, delays) diverges from there."""
    sim = Simulation(seed, nodes=nodes)
    rows: list[tuple[str, int, Counter[str]]] = []
    before: Counter[str] = Counter()
    acked = 0

    def snapshot(second: str) -> None:
        nonlocal before, acked
        now = by_kind(sim)
        rows.append((second, len(sim.acked) - acked, now - before))
        before, acked = now, len(sim.acked)

    try:
        # One run, as run_seed does: runs cut in pieces draw other faults.
        for second in range(1, seconds if timeline else 0):
            sim.loop.call_later(second, snapshot, str(second - 1))
        sim.run(seconds * 1000)
        snapshot(str(seconds - 1) if timeline else "run")
        sim.settle()
        snapshot("settle")
        return len(sim.acked), sim.messages, rows
    finally:
        sim.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ekv.testing._internal.simcount", description=__doc__)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--first", type=int, default=900, help="the seed")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--timeline", action="store_true", help="a row per second (another run of the seed: see count)")
    args = parser.parse_args(argv)
    writes, _, rows = count(args.first, args.nodes, args.seconds, timeline=args.timeline)
    total: Counter[str] = Counter()
    for _, _, kinds in rows:
        total.update(kinds)
    n1 = args.nodes - 1
    print(f"{args.nodes} nodes, seed {args.first}: {writes} acknowledged writes, {total.total()} frames")
    print("| span | writes | " + " | ".join(GROUPS) + " |\n|" + "---|" * (2 + len(GROUPS)))
    for second, w, kinds in rows:
        print(f"| {second} | {w} | " + " | ".join(str(sum(kinds[k] for k in ks)) for ks in GROUPS.values()) + " |")
    print("\n| kind | frames | per write | x (N-1) |\n|---|---|---|---|")
    for kind, n in sorted(total.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {n} | {n / max(1, writes):.1f} | {n / max(1, writes) / n1:.2f} |")
    every = total.total()
    print(f"| all | {every} | {every / max(1, writes):.1f} | {every / max(1, writes) / n1:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
