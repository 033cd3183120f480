"""A virtual-time simulator of Plumtree broadcast (:mod:`ekv._core.plumtree`) driven by SWIM
membership (:mod:`ekv._core.swim`): hundreds of members in one process, deterministic per seed.

Why on top of :mod:`ekv.testing._internal.simswim`: the broadcast's peer views come from the
membership's events (joined, failed, left), so the two run together over the same lossy,
delaying, partitionable network, and a crash is seen by the broadcast only when SWIM declares it.
Every broadcast message is encoded by :mod:`ekv._core.plumtree_wire` (the byte counts) and, with
``check_wire=True``, delivered as ``decode(encode(message))``.

:func:`run_scenario` joins N members through one seed, measures the idle cost, then broadcasts
writes from random live members through four phases: isolated writes (one a second: no two
share an announcement batch), a burst (20 a second), 3 crashes at once (the tree repairs itself
before SWIM declares them failed) and a partition of two halves and its heal. It reports
messages per broadcast (eager + lazy + graft + prune), the delivery ratio, hops and latency.
``python -m ekv.testing._internal.simplumtree --nodes 100 --seeds 3`` prints the table
(docs/scale.md).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ekv._core import plumtree as pt
from ekv._core.plumtree_wire import decode, encode
from ekv._core.swim import NS_PER_S, Swim, SwimConfig
from ekv.testing._internal.simswim import SwimSim

__all__ = ["BroadcastSim", "Figures", "Phase", "main", "run_scenario"]

MS = NS_PER_S // 1000
KINDS = ("eager", "lazy", "graft", "prune", "view")
_KIND = {pt.Gossip: "eager", pt.IHave: "lazy", pt.Graft: "graft", pt.Prune: "prune"}


class BroadcastSim(SwimSim):
    """SwimSim whose members also run a Plumtree, fed by their own SWIM events."""

    def __init__(self, *, pt_config: pt.PlumtreeConfig | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.pt_config = pt_config or pt.PlumtreeConfig()
        self.trees: dict[str, pt.Plumtree] = {}
        self.bsent: Counter[str] = Counter()  # broadcast messages sent, by kind
        self.bsent_bytes = 0
        self.started: dict[pt.Dot, int] = {}  # broadcast -> when
        self.delivered: dict[pt.Dot, dict[str, tuple[int, int]]] = {}  # -> member -> (when, hops)
        self._seq: Counter[str] = Counter()

    def add(self, name: str, seeds: Sequence[str] = ()) -> Swim:
        self.trees[name] = pt.Plumtree(name, config=self.pt_config, seed=self.seed)
        return super().add(name, seeds)

    def broadcast(self, origin: str, payload: bytes = b"w" * 100) -> pt.Dot:
        self._seq[origin] += 1
        dot = (origin, self._seq[origin])
        self.started[dot] = self.now
        self.delivered[dot] = {origin: (self.now, 0)}
        self.trees[origin].broadcast(dot, payload, self.now)
        self._flush(origin)
        return dot

    def _deadline(self, name: str) -> int:
        at = self.trees[name].next_deadline()
        return super()._deadline(name) if at is None else min(at, super()._deadline(name))

    def _tick(self, name: str, at: int) -> None:
        super()._tick(name, at)
        self.trees[name].tick(at)

    def _receive(self, src: str, dst: str, message: object, at: int) -> None:
        if isinstance(message, pt.Message):
            self.trees[dst].receive(src, message, at)
        else:
            super()._receive(src, dst, message, at)

    def _flush(self, name: str) -> None:
        """Feed the member's SWIM events to its Plumtree, send the Plumtree's messages, record
        its deliveries; then SwimSim's own flush (SWIM's messages, the next wake-up)."""
        tree = self.trees[name]
        for event in self.nodes[name].take_events():
            self.events.append((name, event))
            tree.on_member(event.kind, event.node, self.now)
        for dst, message in tree.take_messages():
            data = encode(message)
            self.bsent[_KIND.get(type(message), "view")] += 1
            self.bsent_bytes += len(data)
            if self.rng.random() < self.loss or self.group.get(dst, 0) != self.group[name]:
                continue
            if self.check_wire:
                message = decode(data)
            self._push(self.now + self.rng.randint(*self.delay_ns), "msg", name, dst, message)
        for d in tree.take_deliveries():
            self.delivered[(d.origin, d.seq)].setdefault(name, (self.now, d.hops))
        super()._flush(name)

    def write_for(self, seconds: float, per_s: float, origins: Sequence[str] = ()) -> list[pt.Dot]:
        """Broadcast ``per_s`` writes a second for ``seconds``, each from a random running member
        (or a random one of ``origins``: steady concurrent writers)."""
        dots: list[pt.Dot] = []
        end = self.now + int(seconds * NS_PER_S)
        while True:
            self.run_for(self.rng.expovariate(per_s))
            if self.now >= end:
                return dots
            dots.append(self.broadcast(self.rng.choice(sorted(origins or self.up))))


@dataclass
class Phase:
    """What one phase of writes measured."""

    name: str
    writes: int = 0
    sent: dict[str, float] = field(default_factory=dict)  # per broadcast, by kind
    delivery: float = 0.0  # delivered / (writes x members that should have had them)
    hops: tuple[int, int, int] = (0, 0, 0)  # p50, p99, max
    latency_ms: tuple[float, float] = (0.0, 0.0)  # p50, p99

    @property
    def per_write(self) -> float:
        return sum(v for k, v in self.sent.items() if k != "view")


@dataclass
class Figures:
    nodes: int
    seed: int
    loss: float
    join_s: float | None = None
    active: tuple[int, int] = (0, 0)  # min and max peers over the members, after the join
    idle_msgs: float = 0.0  # broadcast-layer messages per member per second, idle
    idle_swim: float = 0.0  # SWIM's, for comparison
    phases: list[Phase] = field(default_factory=list)
    stored: int = 0  # the most ids any member remembers at the end


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _measure(
    sim: BroadcastSim, name: str, dots: list[pt.Dot], before: Counter[str], audience: dict[pt.Dot, set[str]]
) -> Phase:
    """A phase's figures: messages per write since ``before``; deliveries to each write's
    ``audience`` (the members that must have it)."""
    phase = Phase(name, len(dots))
    writes = max(1, len(dots))
    phase.sent = {kind: (sim.bsent[kind] - before[kind]) / writes for kind in KINDS}
    hops: list[float] = []
    latency: list[float] = []
    got = want = 0
    for dot in dots:
        for member in audience[dot]:
            want += 1
            if member in sim.delivered[dot]:
                got += 1
                at, hop = sim.delivered[dot][member]
                if hop:
                    hops.append(hop)
                    latency.append((at - sim.started[dot]) / MS)
    phase.delivery = got / want if want else 1.0
    phase.hops = (int(_pct(hops, 0.5)), int(_pct(hops, 0.99)), int(max(hops, default=0)))
    phase.latency_ms = (_pct(latency, 0.5), _pct(latency, 0.99))
    return phase


def _phase(
    sim: BroadcastSim, name: str, seconds: float, per_s: float, drain_s: float = 5.0, origins: Sequence[str] = ()
) -> Phase:
    """Writes for ``seconds``, then ``drain_s`` for repairs; every running member must have each."""
    before = Counter(sim.bsent)
    dots = sim.write_for(seconds, per_s, origins)
    sim.run_for(drain_s)
    audience = {dot: set(sim.up) for dot in dots}
    return _measure(sim, name, dots, before, audience)


def run_scenario(
    nodes: int = 100,
    seed: int = 0,
    *,
    loss: float = 0.0,
    crashes: int = 3,
    scale: float = 1.0,
    check_wire: bool = False,
    writers: int = 0,
    swim_config: SwimConfig | None = None,
    pt_config: pt.PlumtreeConfig | None = None,
) -> Figures:
    """The scenario of the module docstring; ``scale`` shortens or lengthens the phases of
    writes (the tests run 0.5); ``writers`` > 0 adds a phase after the burst, "writers": that many
    fixed members writing at once, 50 writes a second each (the loopback bench's concurrent
    writers). See docs/scale.md for the figures."""
    sim = BroadcastSim(seed=seed, loss=loss, config=swim_config, check_wire=check_wire, pt_config=pt_config)
    figures = Figures(nodes, seed, loss)
    names = [f"ekv-node-{i:04d}" for i in range(nodes)]
    sim.add(names[0])
    for name in names[1:]:
        sim.run_for(sim.rng.random() * 2 / nodes)
        sim.add(name, [names[0]])
    figures.join_s = sim.run_until_converged(120, strict=False)
    sim.run_until_quiet(120)
    sim.run_for(5)
    sizes = [len(sim.trees[name].peers()) for name in sim.up]
    figures.active = (min(sizes), max(sizes))
    before, swim_before = sum(sim.bsent.values()), sum(sim.sent.values())
    idle_s = 30 * scale
    sim.run_for(idle_s)
    figures.idle_msgs = (sum(sim.bsent.values()) - before) / len(sim.up) / idle_s
    figures.idle_swim = (sum(sim.sent.values()) - swim_before) / len(sim.up) / idle_s
    sim.write_for(5, 5)  # the tree forms on the first writes (new links start eager)
    sim.run_for(2)
    figures.phases.append(_phase(sim, "isolated", 20 * scale, 1))
    figures.phases.append(_phase(sim, "burst", 10 * scale, 20))
    if writers:
        origins = sim.rng.sample(sorted(sim.up), writers)
        figures.phases.append(_phase(sim, "writers", 10 * scale, 50 * writers, origins=origins))
    for victim in sim.rng.sample(sorted(sim.up), crashes):
        sim.crash(victim)
    figures.phases.append(_phase(sim, "crashes", 20 * scale, 5))  # SWIM declares them after 10-15 s
    figures.phases += _partition(sim, 10 * scale)
    figures.phases.append(_phase(sim, "healed", 10 * scale, 5))
    figures.stored = max(sim.trees[name].stored()[0] for name in sim.up)
    return figures


def _partition(sim: BroadcastSim, seconds: float) -> list[Phase]:
    """Two halves with writes on both sides, each write measured against its own side (the other
    side is anti-entropy's): "split", the first 20 s, while each member's view still holds
    peers across the cut (SWIM has not declared them failed yet), and "partition", ``seconds``
    after that, once the views have refilled within each side; then the heal."""
    live = sorted(sim.up)
    halves = [set(live[: len(live) // 2]), set(live[len(live) // 2 :])]
    sim.partition(halves)
    phases = []
    for name, span in (("split", 20.0), ("partition", seconds)):
        before = Counter(sim.bsent)
        dots = sim.write_for(span, 5)
        sim.run_for(3)
        audience = {dot: next(h for h in halves if dot[0] in h) & sim.up for dot in dots}
        phases.append(_measure(sim, name, dots, before, audience))
    sim.heal()
    sim.run_for(10)  # SWIM merges the sides; views rotate across
    return phases


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ekv.testing._internal.simplumtree", description=__doc__)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first", type=int, default=0, help="the first seed")
    parser.add_argument("--loss", type=float, default=0.0, help="message loss probability")
    parser.add_argument("--writers", type=int, default=0, help="add a phase of this many concurrent writers")
    args = parser.parse_args(argv)
    print(
        f"Plumtree over SWIM, {args.nodes} members, loss {args.loss:.0%}; messages per write by kind"
        f" (the bound: 2(N-1) = {2 * (args.nodes - 1)}), delivery to the members that must have each write\n"
        "| seed | phase | writes | msgs/write | eager | lazy | graft | prune | view | delivery |"
        " hops p50/p99/max | latency ms p50/p99 |\n|" + "---|" * 12
    )
    for seed in range(args.first, args.first + args.seeds):
        f = run_scenario(args.nodes, seed, loss=args.loss, writers=args.writers)
        for p in f.phases:
            s = p.sent
            print(
                f"| {seed} | {p.name} | {p.writes} | {p.per_write:.0f} | {s['eager']:.0f} | {s['lazy']:.0f} |"
                f" {s['graft']:.1f} | {s['prune']:.1f} | {s['view']:.1f} | {p.delivery:.2%} |"
                f" {p.hops[0]}/{p.hops[1]}/{p.hops[2]} | {p.latency_ms[0]:.0f}/{p.latency_ms[1]:.0f} |",
                flush=True,
            )
        print(
            f"| {seed} | idle | join {f.join_s} s, peers {f.active[0]}-{f.active[1]}: broadcast"
            f" {f.idle_msgs:.2f} msg/member/s (SWIM {f.idle_swim:.2f}); ids kept {f.stored} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
