"""The nemesis schedule: which fault happens when, decided in advance from a seed.

The schedule is a pure function of ``(seed, nodes, duration, kinds)``: the same seed gives the same
faults at the same offsets, so a failing run can be replayed (the outcome still depends on real
timing, which is the point of running real processes). Faults come from independent streams that
overlap freely:

* network: healthy for a while, then one partition shape for a while, then healed. Shapes: two
  random halves, one node isolated, a *bridge* (two halves that cannot talk, one node that talks
  to both), three components, and *flapping* (a random cut switched on and off every second);
* processes: one node at a time is killed (SIGKILL, restarted later) or paused (SIGSTOP, then
  SIGCONT);
* clocks: every node starts with a fixed wall-clock offset, and from time to time one node's
  clock jumps by ``bump_ms`` for a few seconds, then back;
* loss (only where the network can do it): one node's outgoing packets are dropped with some
  probability for a few seconds;
* process kills (group mode, ``processes`` > 1: each node is a group of processes on one data
  directory): one process of one group is SIGKILLed, half of the time the group's current node
  process (``"process": "node"``, resolved when it happens), else a process chosen by index, and
  restarted after a while. This stream has a random generator of its own, so a seed's other
  faults are the same with or without it.

Faults may still be in force at ``duration``: the runner's *final heal* then undoes them all at
once (network healed, nodes restarted or resumed, clocks back at their base offsets), and the
time from there until every node holds the same data is the convergence time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "Event", "schedule"]

KINDS = ("partition", "kill", "pause", "skew", "loss")


@dataclass(frozen=True, slots=True, order=True)
class Event:
    """One nemesis action at ``at`` seconds after the start of the run."""

    at: float
    action: str
    """``partition`` (``groups``: the components), ``heal``, ``kill``/``restart``,
    ``pause``/``resume`` (``node``), ``skew`` (``node``, ``offset_ms``: the new offset),
    ``loss`` (``node``, ``percent``; 0 ends it), ``proc-kill`` (``node``, ``process``: an index
    or ``"node"``) / ``proc-restart`` (``node``: start its processes that are down)."""
    args: dict[str, Any] = field(default_factory=dict, compare=False)


def _components(rng: random.Random, nodes: list[int], shape: str) -> tuple[list[list[int]], list[int]]:
    """The groups of a shape, and for a bridge the node that talks to both sides."""
    order = nodes[:]
    rng.shuffle(order)
    if shape == "isolate" or len(order) < 3:
        return [[order[0]], order[1:]], []
    if shape == "bridge":
        rest = order[1:]
        half = len(rest) // 2
        return [rest[:half], rest[half:]], [order[0]]
    if shape == "three-way" and len(order) >= 3:
        a, b = sorted(rng.sample(range(1, len(order)), 2))
        return [order[:a], order[a:b], order[b:]], []
    half = rng.randint(1, len(order) - 1)
    return [order[:half], order[half:]], []


def _partition(at: float, groups: list[list[int]], bridge: list[int], shape: str) -> Event:
    return Event(at, "partition", {"groups": groups, "bridge": bridge, "shape": shape})


def schedule(
    seed: int,
    nodes: int,
    duration: float,
    *,
    kinds: tuple[str, ...] = KINDS,
    skew_ms: float = 200.0,
    bump_ms: float = 500.0,
    quiet: float = 3.0,
    processes: int = 1,
) -> list[Event]:
    """The faults of one run, sorted by time. The first ``quiet`` seconds are fault-free (the
    cluster forms); a fault still in force at ``duration`` has no undo event (the final heal)."""
    rng = random.Random(seed)
    ids = list(range(nodes))
    end = duration
    events: list[Event] = []

    if "partition" in kinds and nodes >= 2:
        t = quiet + rng.uniform(0, 3)
        while t < end:
            shape = rng.choice(["halves", "isolate", "bridge", "three-way", "flapping"])
            length = rng.uniform(3, 10)
            stop = min(t + length, end)
            if shape == "flapping":
                groups, bridge = _components(rng, ids, "halves")
                on = True
                step = t
                while step < stop:
                    events.append(_partition(step, groups, bridge, shape) if on else Event(step, "heal"))
                    on = not on
                    step += rng.uniform(0.5, 1.5)
            else:
                groups, bridge = _components(rng, ids, shape)
                events.append(_partition(t, groups, bridge, shape))
            if stop < end:
                events.append(Event(stop, "heal"))
            t = stop + rng.uniform(2, 8)

    process_kinds = [k for k in ("kill", "pause") if k in kinds]
    if process_kinds:
        t = quiet + rng.uniform(0, 5)
        while t < end:
            kind = rng.choice(process_kinds)
            node = rng.choice(ids)
            stop = min(t + rng.uniform(1, 6), end)
            events.append(Event(t, kind, {"node": node}))
            if stop < end:
                events.append(Event(stop, "restart" if kind == "kill" else "resume", {"node": node}))
            t = stop + rng.uniform(2, 8)

    base = {node: 0.0 for node in ids}
    if "skew" in kinds:
        for node in ids:
            base[node] = round(rng.uniform(-skew_ms, skew_ms), 1)
            events.append(Event(0.0, "skew", {"node": node, "offset_ms": base[node]}))
        t = quiet + rng.uniform(0, 5)
        while t < end:
            node = rng.choice(ids)
            bump = bump_ms if rng.random() < 0.5 else -bump_ms
            stop = min(t + rng.uniform(2, 6), end)
            events.append(Event(t, "skew", {"node": node, "offset_ms": round(base[node] + bump, 1)}))
            if stop < end:
                events.append(Event(stop, "skew", {"node": node, "offset_ms": base[node]}))
            t = stop + rng.uniform(3, 10)

    if "loss" in kinds:
        t = quiet + rng.uniform(0, 5)
        while t < end:
            node = rng.choice(ids)
            stop = min(t + rng.uniform(2, 6), end)
            events.append(Event(t, "loss", {"node": node, "percent": rng.choice([10, 20, 30, 50])}))
            if stop < end:
                events.append(Event(stop, "loss", {"node": node, "percent": 0}))
            t = stop + rng.uniform(3, 10)

    if processes > 1 and "kill" in kinds:
        events += _process_kills(random.Random(f"{seed}/processes"), ids, processes, quiet, end)
    events.sort()
    return events


def _process_kills(rng: random.Random, ids: list[int], processes: int, quiet: float, end: float) -> list[Event]:
    """``proc-kill`` / ``proc-restart`` of one process of one group at a time (group mode)."""
    events = []
    t = quiet + rng.uniform(0, 2)
    while t < end:
        node = rng.choice(ids)
        which: int | str = "node" if rng.random() < 0.5 else rng.randrange(processes)
        stop = min(t + rng.uniform(0.5, 4), end)
        events.append(Event(t, "proc-kill", {"node": node, "process": which}))
        if stop < end:
            events.append(Event(stop, "proc-restart", {"node": node}))
        t = stop + rng.uniform(1, 4)
    return events
