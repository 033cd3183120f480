"""A virtual-time simulator of the SWIM membership alone (:mod:`ekv._core.swim`): hundreds of
members in one process, no sockets, no stores, deterministic per seed.

Why a separate simulator from :mod:`ekv.testing.sim`: that one runs real stores and ClusterNodes
(tens of nodes); membership at 100-500 members only needs the state machines and a network
model, and is the part whose cost has to be shown independent of N. Every message is encoded
by :mod:`ekv._core.swim_wire` (its size is what the byte counts count) and, with
``check_wire=True``, delivered as ``decode(encode(message))``.

The network: each message is lost with probability ``loss`` and otherwise delivered after a
uniform delay; a crashed member drops everything; a partition drops every message between
groups. :func:`run_scenario` plays the scenario the issue asks for (join through one seed, idle,
crashes, a graceful leave, a partition and its heal) and measures it; ``python -m
ekv.testing._internal.simswim --nodes 500 --seeds 3`` prints the table (docs/scale.md).
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ekv._core.swim import NS_PER_S, Event, Message, Status, Swim, SwimConfig
from ekv._core.swim_wire import decode, encode

__all__ = ["Figures", "SwimSim", "main", "run_scenario"]

MS = NS_PER_S // 1000


class SwimSim:
    """N Swim state machines over a lossy, delaying, partitionable virtual network."""

    def __init__(
        self,
        *,
        seed: int = 0,
        loss: float = 0.0,
        delay_ns: tuple[int, int] = (1 * MS, 10 * MS),
        config: SwimConfig | None = None,
        check_wire: bool = False,
    ) -> None:
        self.seed = seed
        self.loss = loss
        self.delay_ns = delay_ns
        self.config = config or SwimConfig()
        self.check_wire = check_wire
        self.rng = random.Random(f"simswim-{seed}")
        self.now = 0
        self.nodes: dict[str, Swim] = {}
        self.up: set[str] = set()
        self.stopped_at: dict[str, int] = {}  # crashed or left, and when
        self.group: dict[str, int] = {}
        self.partitions: list[tuple[int, int]] = []  # (start, end) of every partition
        self.events: list[tuple[str, Event]] = []  # (observer, event)
        self.sent: Counter[str] = Counter()
        self.sent_bytes: Counter[str] = Counter()
        self._heap: list[tuple[int, int, str, str, str, object]] = []  # a Swim message, or a sibling's
        self._wake: dict[str, int] = {}
        self._order = 0

    # -- the cluster --------------------------------------------------------------------------

    def add(self, name: str, seeds: Sequence[str] = ()) -> Swim:
        """Start a member (a restarted one comes back with incarnation 0) joining through seeds."""
        node = Swim(name, name, config=self.config, seed=self.seed)
        self.nodes[name] = node
        self.up.add(name)
        self.stopped_at.pop(name, None)
        self.group.setdefault(name, 0)
        node.join(seeds, self.now)
        self._flush(name)
        return node

    def crash(self, name: str) -> None:
        self.up.discard(name)
        self.stopped_at[name] = self.now

    def leave(self, name: str) -> None:
        self.nodes[name].leave(self.now)
        self._flush(name)
        self.up.discard(name)
        self.stopped_at[name] = self.now

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        for index, members in enumerate(groups, start=1):
            for name in members:
                self.group[name] = index
        self.partitions.append((self.now, -1))

    def heal(self) -> None:
        for name in self.group:
            self.group[name] = 0
        start, _ = self.partitions[-1]
        self.partitions[-1] = (start, self.now)

    # -- the event loop -----------------------------------------------------------------------

    def _push(self, at: int, kind: str, src: str, dst: str, message: object) -> None:
        self._order += 1
        heapq.heappush(self._heap, (at, self._order, kind, src, dst, message))

    def _flush(self, name: str) -> None:
        """Send what ``name`` has to send, record its events and schedule its next tick."""
        node = self.nodes[name]
        for dst, message in node.take_messages():
            data = encode(message)
            self.sent[name] += 1
            self.sent_bytes[name] += len(data)
            if self.rng.random() < self.loss or self.group.get(dst, 0) != self.group[name]:
                continue
            if self.check_wire:
                message = decode(data)
            self._push(self.now + self.rng.randint(*self.delay_ns), "msg", name, dst, message)
        self.events += [(name, event) for event in node.take_events()]
        if name in self.up:
            at = max(self.now, self._deadline(name))
            if self._wake.get(name) != at:
                self._wake[name] = at
                self._push(at, "tick", name, name, None)

    def run_until(self, until_ns: int) -> None:
        while self._heap and self._heap[0][0] <= until_ns:
            at, _, kind, src, dst, message = heapq.heappop(self._heap)
            self.now = at
            if dst not in self.up:
                continue
            if kind == "tick":
                if self._wake.get(dst) != at:
                    continue
                del self._wake[dst]
                self._tick(dst, at)
            else:
                if self.group.get(src, 0) != self.group[dst]:
                    continue
                self._receive(src, dst, message, at)
            self._flush(dst)
        self.now = until_ns

    # what a simulator of more than membership (simplumtree.py) extends

    def _deadline(self, name: str) -> int:
        return self.nodes[name].next_deadline()

    def _tick(self, name: str, at: int) -> None:
        self.nodes[name].tick(at)

    def _receive(self, src: str, dst: str, message: object, at: int) -> None:
        assert isinstance(message, Message)
        self.nodes[dst].receive(src, message, at)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + int(seconds * NS_PER_S))

    # -- measurements -------------------------------------------------------------------------

    def converged(self, *, strict: bool = True) -> bool:
        """Every running member sees every other running member (ALIVE; or SUSPECT too unless
        ``strict``) and none of the stopped ones as alive."""
        limit = Status.ALIVE if strict else Status.SUSPECT
        for name in self.up:
            view = self.nodes[name].members()
            for other in self.up:
                if view.get(other, Status.FAILED) > limit:
                    return False
            for other, status in view.items():
                if other not in self.up and status <= Status.SUSPECT:
                    return False
        return True

    def run_until_converged(self, timeout_s: float, *, strict: bool = True, poll_s: float = 0.1) -> float | None:
        """Seconds until :meth:`converged`, polled every ``poll_s``; None if not within timeout."""
        start = self.now
        while self.now - start <= timeout_s * NS_PER_S:
            if self.converged(strict=strict):
                return (self.now - start) / NS_PER_S
            self.run_for(poll_s)
        return None

    def run_until_quiet(self, timeout_s: float) -> None:
        """Run until no member has gossip left to send (what "idle" means), at most ``timeout_s``."""
        start = self.now
        while any(self.nodes[name].queued() for name in self.up) and self.now - start < timeout_s * NS_PER_S:
            self.run_for(1)

    def first(self, kinds: set[str], node: str, since: int) -> int | None:
        times = [e.at_ns for _, e in self.events if e.node == node and e.kind in kinds and e.at_ns >= since]
        return min(times) if times else None

    def all_know(self, kinds: set[str], node: str, since: int) -> int | None:
        """When the last running member learnt ``node`` is in one of ``kinds`` (None: not all)."""
        learnt: dict[str, int] = {}
        for observer, e in self.events:
            if e.node == node and e.kind in kinds and e.at_ns >= since:
                learnt.setdefault(observer, e.at_ns)
        if any(name not in learnt for name in self.up if name != node):
            return None
        return max(learnt[name] for name in self.up if name != node)

    def false_positives(self) -> list[tuple[str, Event]]:
        """Every "failed" said of a member that was running, outside partitions and the longest
        suspicion after one (whose timers may have started while it lasted)."""
        grace = int(self.config.alpha * self.config.beta * math.log10(max(10, len(self.nodes))))
        grace *= self.config.probe_interval_ns
        found = []
        for observer, e in self.events:
            if e.kind != "failed" or not self._was_up(e.node, e.at_ns):
                continue
            if any(start <= e.at_ns and (end < 0 or e.at_ns <= end + grace) for start, end in self.partitions):
                continue
            found.append((observer, e))
        return found

    def _was_up(self, node: str, at: int) -> bool:
        return self.stopped_at.get(node, at + 1) > at

    def idle_rate(self, seconds: float) -> tuple[float, float]:
        """(messages, bytes) sent per running member per second over the next ``seconds``."""
        before, before_bytes = sum(self.sent.values()), sum(self.sent_bytes.values())
        self.run_for(seconds)
        n = len(self.up) * seconds
        return (sum(self.sent.values()) - before) / n, (sum(self.sent_bytes.values()) - before_bytes) / n


@dataclass
class Figures:
    """What one scenario run measured (seconds of virtual time unless said otherwise)."""

    nodes: int
    seed: int
    loss: float
    join_s: float | None = None
    idle_msgs: float = 0.0
    idle_bytes: float = 0.0
    first_suspect_s: list[float] = field(default_factory=list)
    first_failed_s: list[float] = field(default_factory=list)
    all_failed_s: list[float | None] = field(default_factory=list)
    leave_s: float | None = None
    heal_s: float | None = None  # until no member believes a running one failed
    heal_all_alive_s: float | None = None  # until none even suspects one (without loss only)
    false_positives: int = 0


def run_scenario(
    nodes: int = 100,
    seed: int = 0,
    *,
    loss: float = 0.0,
    crashes: int = 3,
    partition_s: float = 30.0,
    check_wire: bool = False,
    config: SwimConfig | None = None,
    all_alive: bool = True,
) -> Figures:
    """Join ``nodes`` members through one seed, measure idle traffic, crash ``crashes`` members at
    once (detection and dissemination), let one leave, partition the rest in halves for
    ``partition_s`` and heal (convergence; with ``all_alive`` and no loss, also until no member
    even suspects another)."""
    sim = SwimSim(seed=seed, loss=loss, config=config, check_wire=check_wire)
    figures = Figures(nodes, seed, loss)
    names = [f"ekv-node-{i:04d}" for i in range(nodes)]  # ids and addresses of a realistic length
    sim.add(names[0])
    for name in names[1:]:
        sim.run_for(sim.rng.random() * 2 / nodes)
        sim.add(name, [names[0]])
    figures.join_s = sim.run_until_converged(120, strict=False)
    sim.run_until_quiet(120)
    figures.idle_msgs, figures.idle_bytes = sim.idle_rate(10)
    victims = sim.rng.sample(names[1:], crashes + 1)
    crash_at = sim.now
    for victim in victims[:crashes]:
        sim.crash(victim)
    for _ in range(18):  # at most 90 s: past the longest suspicion (60 s for 100 members)
        sim.run_for(5)
        if all(sim.all_know({"failed"}, victim, crash_at) is not None for victim in victims[:crashes]):
            break
    for victim in victims[:crashes]:
        for kinds, out in (({"suspect"}, figures.first_suspect_s), ({"failed"}, figures.first_failed_s)):
            at = sim.first(kinds, victim, crash_at)
            if at is not None:
                out.append((at - crash_at) / NS_PER_S)
        known = sim.all_know({"failed"}, victim, crash_at)
        figures.all_failed_s.append(None if known is None else (known - crash_at) / NS_PER_S)
    leaver, leave_at = victims[-1], sim.now
    sim.leave(leaver)
    for _ in range(30):
        sim.run_for(1)
        if (known := sim.all_know({"left"}, leaver, leave_at)) is not None:
            break
    figures.leave_s = None if known is None else (known - leave_at) / NS_PER_S
    live = sorted(sim.up)
    sim.partition([live[: len(live) // 2], live[len(live) // 2 :]])
    sim.run_for(partition_s)
    sim.heal()
    heal_at = sim.now
    figures.heal_s = sim.run_until_converged(60, strict=False)
    if all_alive and loss == 0 and figures.heal_s is not None:
        strict = sim.run_until_converged(60)
        figures.heal_all_alive_s = None if strict is None else (sim.now - heal_at) / NS_PER_S
    figures.false_positives = len(sim.false_positives())
    return figures


def _mean(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    if len(present) < len(values) or not present:
        return "n/a"
    return f"{sum(present) / len(present):.1f}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ekv.testing._internal.simswim", description=__doc__)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first", type=int, default=0, help="the first seed")
    parser.add_argument("--loss", type=float, default=0.0, help="message loss probability")
    parser.add_argument("--crashes", type=int, default=3)
    parser.add_argument("--partition", type=float, default=30.0, help="seconds the halves stay apart")
    args = parser.parse_args(argv)
    period = SwimConfig().probe_interval_ns / NS_PER_S
    print(
        f"SWIM+Lifeguard, {args.nodes} members, loss {args.loss:.0%}, period {period:g} s; seconds of virtual time\n"
        f"| seed | join | idle msg/node/s | idle B/node/s | 1st suspect | 1st failed | all know failed (max) |"
        f" all know left | heal | heal, all alive | false pos |\n|" + "---|" * 11
    )
    for seed in range(args.first, args.first + args.seeds):
        f = run_scenario(args.nodes, seed, loss=args.loss, crashes=args.crashes, partition_s=args.partition)
        worst = None if None in f.all_failed_s else max(v for v in f.all_failed_s if v is not None)
        print(
            f"| {seed} | {_fmt(f.join_s)} | {f.idle_msgs:.2f} | {f.idle_bytes:.0f} | {_mean(f.first_suspect_s)} |"
            f" {_mean(f.first_failed_s)} | {_mean(f.all_failed_s)} ({_fmt(worst)}) | {_fmt(f.leave_s)} |"
            f" {_fmt(f.heal_s)} | {_fmt(f.heal_all_alive_s)} | {f.false_positives} |",
            flush=True,
        )
    print(
        f"SWIM's expected first detection: e/(e-1) = {math.e / (math.e - 1):.2f} periods until a member probes"
        f" the crashed one, +1 period until that probe fails; dissemination O(log N) periods"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
