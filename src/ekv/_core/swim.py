"""Cluster membership by SWIM (Das, Gupta, Motivala 2002) with Lifeguard's refinements (Dadgar,
Phillips, Currey 2018): a pure, deterministic, sans-I/O state machine.

Why SWIM: the full mesh (every node holds a session with every other and heartbeats it) costs
each node O(N) connections and O(N) messages per second. SWIM separates the two jobs of a
membership protocol and makes each cost O(1) per node, independent of N:

* *failure detection*: once per protocol period a member pings one other member (a randomized
  round-robin order, so every member is probed within N-1 periods and, across the cluster, a
  crashed member is first probed after e/(e-1) periods on average). Without an ack within the
  probe timeout it asks ``indirect_k`` other members to ping the target for it (``PingReq``),
  so one lossy link does not condemn a member;
* *dissemination*: what changed (joined, suspect, alive, failed, left) is piggybacked on those
  pings and acks, each update at most ``lambda * ceil(log10(N+1))`` times, which reaches every
  member in O(log N) periods with high probability, at no extra message.

A member whose probe failed is not declared failed but *suspect*: the suspect itself, hearing the
rumour, refutes it by raising its *incarnation* number (alive at a higher incarnation beats
suspect/failed at a lower one), so a slow member is not removed. Lifeguard adds three things that
cut false positives where the member that probes is the slow one:

* *dynamic suspicion timeout*: from ``beta * min`` down to ``min = alpha * log10(N) * period``
  as independent members confirm the suspicion (``K`` confirmations expected);
* *local health (LHM)*: a score that rises when this member misses acks it expected (fewer nacks
  than the indirect helpers owe it: the problem is likely here) or has to refute a suspicion of
  itself, and falls with each successful probe; probe interval and timeout scale with it, so an
  overloaded member slows down instead of accusing healthy ones;
* *nacks*: an indirect helper that gets no ack says so, proving the path to the helper works.

Joining goes through one seed: a push-pull state exchange (``Sync``) gives the joiner every
member and the seed the joiner, which the seed then gossips. The same exchange, with one random
member believed failed every ``reconnect_interval``, merges the sides of a healed partition (a
remote "failed" is merged as "suspect", which its subject refutes). A graceful leave is "left",
never confused with "failed".

Nothing here reads a clock, opens a socket or starts a thread: time comes in with each call,
randomness from a seeded ``random.Random``, and what to send goes out through
:meth:`Swim.take_messages`, so the same code runs in the membership simulator (see
docs/scale.md) and, later, behind the cluster's transport. The wire
encoding of the messages is in :mod:`ekv._core.swim_wire`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "Ack",
    "Event",
    "Gossip",
    "Message",
    "Nack",
    "Ping",
    "PingReq",
    "Status",
    "Swim",
    "SwimConfig",
    "Sync",
    "Update",
]

NS_PER_S = 1_000_000_000


class Status(IntEnum):
    """A member's state as some member believes it. The order matters for nothing but the wire."""

    ALIVE = 0
    SUSPECT = 1
    FAILED = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Update:
    """One gossiped fact: ``node`` (at ``addr``) is ``status`` at ``incarnation``. ``by`` names the
    accuser of a suspicion, so that independent confirmations can be counted (Lifeguard)."""

    node: str
    addr: str
    incarnation: int
    status: Status
    by: str = ""


@dataclass(frozen=True, slots=True)
class Ping:
    """A probe; ``target`` is the member meant, so a ping reaching someone else is ignored."""

    seq: int
    target: str
    gossip: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    gossip: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask the receiver to ping ``target`` at ``addr`` and forward its ack (or a nack)."""

    seq: int
    target: str
    addr: str
    gossip: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """An indirect helper got no ack in time: the path to the helper works (Lifeguard)."""

    seq: int
    gossip: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Sync:
    """Push-pull: the sender's whole view; ``reply`` asks for the receiver's in return."""

    sender: str
    reply: bool
    members: tuple[Update, ...]


@dataclass(frozen=True, slots=True)
class Gossip:
    """Updates with no probe attached (a leaving member's last words)."""

    gossip: tuple[Update, ...]


Message = Ping | Ack | PingReq | Nack | Sync | Gossip


@dataclass(frozen=True, slots=True)
class Event:
    """A change of this member's view: ``kind`` is joined, suspect, alive, failed or left."""

    kind: str
    node: str
    incarnation: int
    at_ns: int


@dataclass(frozen=True, slots=True)
class SwimConfig:
    """The protocol's parameters; the defaults are memberlist's LAN profile and Lifeguard's
    alpha=5, beta=6, K=3. ``piggyback_bytes`` bounds the gossip on one message (a UDP datagram's
    worth); a member believed failed is pinged every ``reconnect_interval`` (a tiny message) and
    synced with only if it answers. A member with more than ``sync_backlog`` updates queued
    also pushes-pulls with one random live member every ``reconnect_interval``. A join pushes-pulls
    with ``join_fanout`` of its seeds at a time, drawn anew on each retry: one answer suffices, and
    each answer is the seed's whole view (a node given its 99 peers as seeds made 100 nodes swap
    about a million member entries at start)."""

    probe_interval_ns: int = NS_PER_S
    probe_timeout_ns: int = NS_PER_S // 2
    indirect_k: int = 3
    alpha: float = 5.0
    beta: float = 6.0
    confirmations_k: int = 3
    retransmit_mult: int = 4
    max_awareness: int = 8
    piggyback_bytes: int = 1_200
    reconnect_interval_ns: int = 2 * NS_PER_S
    failed_retention_ns: int = 300 * NS_PER_S
    leave_fanout: int = 4
    join_fanout: int = 3
    sync_backlog: int = 32


@dataclass(slots=True)
class _Member:
    addr: str
    incarnation: int
    status: Status
    since_ns: int
    answered_ns: int = -1  # when this member's last direct probe of it was acked (-1: never, or failed since)


@dataclass(slots=True)
class _Suspicion:
    """Lifeguard's dynamic timeout: ``deadline`` moves from ``start+max`` towards ``start+min``
    with each independent confirmation."""

    incarnation: int
    start_ns: int
    min_ns: int
    max_ns: int
    expected: int
    accusers: set[str] = field(default_factory=set)
    due_ns: int = 0

    def confirm(self, accuser: str) -> bool:
        """Count an accuser (False if it had already accused) and move the deadline."""
        if accuser in self.accusers:
            return False
        self.accusers.add(accuser)
        confirmations = len(self.accusers) - 1
        if self.expected <= 0 or confirmations >= self.expected:
            self.due_ns = self.start_ns + self.min_ns
        else:
            frac = math.log(confirmations + 1) / math.log(self.expected + 1)
            self.due_ns = self.start_ns + max(self.min_ns, int(self.max_ns - frac * (self.max_ns - self.min_ns)))
        return True


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    indirect_at_ns: int
    acked: bool = False
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    """A ping this member sends on behalf of another (``PingReq``)."""

    requester: str
    seq: int
    nack_at_ns: int


class Swim:
    """One member's membership state machine (see the module docstring).

    Drive it with :meth:`tick` at :meth:`next_deadline` (or any time after) and :meth:`receive`
    for every decoded message; after each call send what :meth:`take_messages` returns
    (``(address, message)`` pairs) and read :meth:`take_events`. Members are named by ``name``
    and reached at ``addr``; this member's own address is ``addr``."""

    def __init__(
        self, name: str, addr: str, *, config: SwimConfig | None = None, seed: int = 0, incarnation: int = 0
    ) -> None:
        self.name = name
        self.addr = addr
        self.config = config or SwimConfig()
        self.incarnation = incarnation
        self.awareness = 0
        self.left = False
        self._rng = random.Random(f"swim-{name}-{seed}")
        self._members: dict[str, _Member] = {}
        self._live = 0  # members ALIVE or SUSPECT (kept, not counted, because every message asks)
        self._reconnects: dict[int, str] = {}  # seq of a ping to a member believed failed -> name
        self._synced_back = False  # pushed-pulled with a member back from failed this interval
        self._suspicions: dict[str, _Suspicion] = {}
        self._queue: dict[str, Update] = {}  # node -> its latest update still to gossip
        self._sent: dict[str, int] = {}  # node -> transmissions of that update so far
        self._enqueued: dict[str, int] = {}  # node -> when its update was queued (a counter)
        self._enqueues = 0
        self._order: list[str] = []
        self._order_at = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._seq = 0
        self._next_probe_ns = 0
        self._next_reconnect_ns = 0
        self._seeds: tuple[str, ...] = ()
        self._joined = True
        self._next_join_ns = 0
        self._out: list[tuple[str, Message]] = []
        self._events: list[Event] = []

    # -- the view -----------------------------------------------------------------------------

    def members(self) -> dict[str, Status]:
        """Every member this one knows of (itself included) and its believed status."""
        view = {name: m.status for name, m in self._members.items()}
        view[self.name] = Status.LEFT if self.left else Status.ALIVE
        return view

    def live_members(self) -> list[str]:
        """Members believed alive or suspect, itself excluded: the ones probed."""
        return [n for n, m in self._members.items() if m.status <= Status.SUSPECT]

    def member(self, name: str) -> Update | None:
        """What this member believes of member ``name`` (its address, incarnation and status), or
        None if it knows none of that name (for the cluster, which dials the members it learns)."""
        m = self._members.get(name)
        return None if m is None else Update(name, m.addr, m.incarnation, m.status)

    def view(self) -> list[Update]:
        """:meth:`member` of every other member known, by name (for reports)."""
        return [Update(n, m.addr, m.incarnation, m.status) for n, m in sorted(self._members.items())]

    def cluster_size(self) -> int:
        """N as this member sees it (alive and suspect members and itself): what the suspicion
        timeout and the retransmit limit scale with."""
        return self._live + 1

    def take_messages(self) -> list[tuple[str, Message]]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> int:
        """The earliest time :meth:`tick` has something to do."""
        times = [self._next_probe_ns]
        if self._probe is not None and not self._probe.acked and not self._probe.indirect_sent:
            times.append(self._probe.indirect_at_ns)
        times += [r.nack_at_ns for r in self._relays.values()]
        times += [s.due_ns for s in self._suspicions.values()]
        if not self._joined:
            times.append(self._next_join_ns)
        times.append(self._next_reconnect_ns)
        return min(times)

    # -- inputs -------------------------------------------------------------------------------

    def join(self, seeds: Sequence[str], now_ns: int) -> None:
        """Start by a push-pull with each seed address (one suffices); retried every period until
        one answers."""
        self._seeds = tuple(s for s in seeds if s != self.addr)
        self._joined = not self._seeds
        self._next_join_ns = now_ns
        self._next_probe_ns = now_ns + self._rng.randrange(self.config.probe_interval_ns)
        self.tick(now_ns)

    def forget_seed(self, addr: str) -> None:
        """``addr`` is this member's own address under another name (the driver heard its own
        datagram from it): stop joining through it. Why: a seed is dropped only when it equals
        :attr:`addr`, and a member whose address is ``":port"`` never equals what it is given."""
        if addr in self._seeds:
            self._seeds = tuple(s for s in self._seeds if s != addr)
            self._joined = self._joined or not self._seeds

    def leave(self, now_ns: int) -> None:
        """Leave gracefully: "left" at a new incarnation, told directly to a few members (the
        gossip carries it on) so that nobody waits for a suspicion timeout; then fall silent."""
        if self.left:
            return
        self.left = True
        self.incarnation += 1
        update = Update(self.name, self.addr, self.incarnation, Status.LEFT)
        live = self.live_members()
        for name in self._rng.sample(live, min(self.config.leave_fanout, len(live))):
            self._out.append((self._members[name].addr, Gossip((update,))))

    def tick(self, now_ns: int) -> None:
        """Do what is due: join retries, the indirect probe, the end of a probe period and the
        next probe, nacks owed as a helper, suspicions that timed out, reconnects."""
        if self.left:
            return
        if not self._joined and now_ns >= self._next_join_ns:
            seeds = self._seeds
            if len(seeds) > self.config.join_fanout:  # (a few at a time: each answers with its whole view)
                seeds = tuple(self._rng.sample(seeds, self.config.join_fanout))
            for seed in seeds:
                self._out.append((seed, self._sync(reply=True)))
            self._next_join_ns = now_ns + self.config.probe_interval_ns
        probe = self._probe
        if probe is not None and not probe.acked and not probe.indirect_sent and now_ns >= probe.indirect_at_ns:
            self._indirect(probe)
        if now_ns >= self._next_probe_ns:
            self._finish_probe(now_ns)
            self._start_probe(now_ns)
        for seq, relay in list(self._relays.items()):
            if now_ns >= relay.nack_at_ns:
                del self._relays[seq]
                self._out.append((relay.requester, Nack(relay.seq, self._piggyback())))
        for name, suspicion in list(self._suspicions.items()):
            if now_ns >= suspicion.due_ns:
                member = self._members[name]
                self._apply(Update(name, member.addr, suspicion.incarnation, Status.FAILED), now_ns)
        self._reconnect(now_ns)

    def receive(self, src: str, message: Message, now_ns: int) -> None:
        """Handle one message from address ``src`` (already decoded and checked)."""
        if self.left:
            return
        if isinstance(message, Sync):
            incarnation = self.incarnation
            self._merge(message, now_ns)
            if message.reply:
                self._out.append((src, self._sync(reply=False)))
            else:
                self._joined = True
                if self.incarnation != incarnation:  # the replier believes this member gone: tell it first
                    self._out.append((src, Gossip((Update(self.name, self.addr, self.incarnation, Status.ALIVE),))))
            return
        for update in message.gossip:
            self._apply(update, now_ns)
        if isinstance(message, Ping):
            if message.target == self.name:
                gossip = self._piggyback()
                if any(u.node == self.name and u.status is not Status.ALIVE for u in message.gossip):
                    # the prober suspects this member, perhaps at an incarnation already refuted:
                    # the answer carries the refutation, whatever the queue holds
                    gossip = (Update(self.name, self.addr, self.incarnation, Status.ALIVE), *gossip[:254])
                self._out.append((src, Ack(message.seq, gossip)))
        elif isinstance(message, Ack):
            self._on_ack(message.seq, now_ns)
        elif isinstance(message, PingReq):
            seq = self._next_seq()
            # unscaled: the requester waits out the rest of its period for this (as memberlist)
            nack_at = now_ns + self.config.probe_timeout_ns * 4 // 5
            self._relays[seq] = _Relay(src, message.seq, nack_at)
            self._out.append((message.addr, Ping(seq, message.target, self._piggyback())))
        elif isinstance(message, Nack) and self._probe is not None and self._probe.seq == message.seq:
            self._probe.nacks += 1

    # -- probing ------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _scaled(self, duration_ns: int) -> int:
        """Lifeguard's local health: a member that is itself slow waits longer before accusing."""
        return duration_ns * (self.awareness + 1)

    def _health(self, delta: int) -> None:
        self.awareness = max(0, min(self.config.max_awareness - 1, self.awareness + delta))

    def _next_target(self) -> str | None:
        """Randomized round-robin: every live member once per round, in a fresh random order."""
        for _ in range(2):
            while self._order_at < len(self._order):
                name = self._order[self._order_at]
                self._order_at += 1
                member = self._members.get(name)
                if member is not None and member.status <= Status.SUSPECT:
                    return name
            self._order = self.live_members()
            self._rng.shuffle(self._order)
            self._order_at = 0
        return None

    def _start_probe(self, now_ns: int) -> None:
        self._next_probe_ns = now_ns + self._scaled(self.config.probe_interval_ns)
        target = self._next_target()
        if target is None:
            return
        seq = self._next_seq()
        self._probe = _Probe(seq, target, now_ns + self._scaled(self.config.probe_timeout_ns))
        member = self._members[target]
        gossip = self._piggyback()
        if member.status is Status.SUSPECT:  # tell the suspect itself, so that it refutes in its ack
            gossip = (Update(target, member.addr, member.incarnation, Status.SUSPECT, self.name), *gossip[:254])
        self._out.append((member.addr, Ping(seq, target, gossip)))

    def _indirect(self, probe: _Probe) -> None:
        probe.indirect_sent = True
        member = self._members.get(probe.target)
        if member is None:
            return
        chosen = self._helpers(probe.target)
        probe.expected_nacks = len(chosen)
        for name in chosen:
            message = PingReq(probe.seq, probe.target, member.addr, self._piggyback())
            self._out.append((self._members[name].addr, message))

    def _helpers(self, target: str) -> list[str]:
        """``indirect_k`` helpers drawn at random from the ``2 * indirect_k`` members whose direct
        probes were acked most recently. Why: a helper's missing nack counts against this
        member's health, which is only fair if the helper was reachable; in a partition, half
        the members are not, and with helpers drawn from all, both sides' health scores climb to
        the maximum and, after the heal, slow their probing (and the gossip it carries) for tens
        of seconds."""
        candidates = [name for name in self.live_members() if name != target]
        self._rng.shuffle(candidates)  # ties (never acked) in random order
        candidates.sort(key=lambda name: self._members[name].answered_ns, reverse=True)
        pool = candidates[: 2 * self.config.indirect_k]
        return self._rng.sample(pool, min(self.config.indirect_k, len(pool)))

    def _on_ack(self, seq: int, now_ns: int) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq and not probe.acked:
            probe.acked = True
            self._health(-1)
            member = self._members.get(probe.target)
            if member is not None:
                member.answered_ns = now_ns
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._out.append((relay.requester, Ack(relay.seq, self._piggyback())))
        name = self._reconnects.pop(seq, None)
        if name is not None and name in self._members:
            # one member believed failed is back: a partition may have healed, so ping the next
            # one at once (a chain at network speed, as long as they answer); push-pull with the
            # first that answers in each interval (the views of the two sides merge)
            if not self._synced_back:
                self._synced_back = True
                self._out.append((self._members[name].addr, self._sync(reply=True)))
            self._ping_failed()

    def _finish_probe(self, now_ns: int) -> None:
        """At the end of a period: a probe without any ack makes its target suspect. Missing
        nacks count against this member's own health (Lifeguard): the helpers were expected to
        answer either way, so silence says the trouble is likely here."""
        probe, self._probe = self._probe, None
        if probe is None or probe.acked:
            return
        if probe.expected_nacks > 0:
            self._health(max(0, probe.expected_nacks - probe.nacks))
        else:
            self._health(1)
        member = self._members.get(probe.target)
        if member is not None:
            member.answered_ns = -1
        if member is not None and member.status <= Status.SUSPECT:
            self._apply(Update(probe.target, member.addr, member.incarnation, Status.SUSPECT, self.name), now_ns)

    # -- the rules of updates -----------------------------------------------------------------

    def _apply(self, update: Update, now_ns: int) -> None:
        """Merge one update: higher incarnations win; at the same incarnation left > failed >
        suspect > alive. A change is gossiped on (and a new confirmation of a suspicion too)."""
        if update.node == self.name:
            self._about_me(update)
            return
        member = self._members.get(update.node)
        if member is None:
            if update.status is Status.ALIVE:
                self._members[update.node] = _Member(update.addr, update.incarnation, Status.ALIVE, now_ns)
                self._live += 1
                self._order.insert(self._rng.randint(self._order_at, len(self._order)), update.node)
                self._changed(update, "joined", now_ns)
            return
        if update.incarnation < member.incarnation:
            return
        newer = update.incarnation > member.incarnation
        if update.status is Status.ALIVE:
            if newer:
                old = member.status
                self._set(update, member, now_ns)
                if old is Status.ALIVE:
                    self._enqueue(update)  # a refutation of a suspicion not heard here: no event
                else:
                    self._changed(update, "joined" if old is Status.LEFT else "alive", now_ns)
        elif update.status is Status.SUSPECT:
            self._apply_suspect(update, member, newer, now_ns)
        elif newer or update.status > member.status:
            self._set(update, member, now_ns)
            self._changed(update, "failed" if update.status is Status.FAILED else "left", now_ns)

    def _apply_suspect(self, update: Update, member: _Member, newer: bool, now_ns: int) -> None:
        if member.status is Status.SUSPECT and not newer:
            suspicion = self._suspicions.get(update.node)
            if suspicion is not None and update.by and suspicion.confirm(update.by):
                self._enqueue(update)
            return
        if not newer and member.status is not Status.ALIVE:
            return
        self._set(update, member, now_ns)
        n = self.cluster_size()
        min_ns = int(self.config.alpha * max(1.0, math.log10(n)) * self.config.probe_interval_ns)
        expected = self.config.confirmations_k if n - 2 >= self.config.confirmations_k else 0
        suspicion = _Suspicion(update.incarnation, now_ns, min_ns, int(min_ns * self.config.beta), expected)
        suspicion.confirm(update.by or "?")
        self._suspicions[update.node] = suspicion
        self._changed(update, "suspect", now_ns)

    def _set(self, update: Update, member: _Member, now_ns: int) -> None:
        self._live += (update.status <= Status.SUSPECT) - (member.status <= Status.SUSPECT)
        member.incarnation = update.incarnation
        member.status = update.status
        member.since_ns = now_ns
        if update.status is Status.ALIVE:
            member.addr = update.addr
        if update.status is not Status.SUSPECT:
            self._suspicions.pop(update.node, None)

    def _changed(self, update: Update, kind: str, now_ns: int) -> None:
        self._events.append(Event(kind, update.node, update.incarnation, now_ns))
        self._enqueue(update)

    def _about_me(self, update: Update) -> None:
        """Refute a suspicion, failure or departure of this member (it is here and alive) with a
        higher incarnation; having to refute counts against this member's health (Lifeguard)."""
        if self.left or update.incarnation < self.incarnation:
            return
        if update.status is Status.ALIVE:
            self.incarnation = update.incarnation
            return
        self.incarnation = update.incarnation + 1
        self._health(1)
        self._enqueue(Update(self.name, self.addr, self.incarnation, Status.ALIVE))

    # -- dissemination ------------------------------------------------------------------------

    def retransmit_limit(self) -> int:
        """lambda * ceil(log10(N+1)): enough copies to reach every member whp (SWIM, memberlist)."""
        return self.config.retransmit_mult * max(1, math.ceil(math.log10(self.cluster_size() + 1)))

    def _enqueue(self, update: Update) -> None:
        """Queue an update for piggybacking; it replaces any queued one about the same member."""
        self._queue[update.node] = update
        self._sent[update.node] = 0
        self._enqueues += 1
        self._enqueued[update.node] = self._enqueues

    def _piggyback(self) -> tuple[Update, ...]:
        """The least-sent queued updates that fit in ``piggyback_bytes`` (at most 255), this
        member's own refutation first; each counts one transmission and is dropped after
        :meth:`retransmit_limit` of them. Among equally sent ones the newest go first (as in
        memberlist): after a heal the queue holds an update about nearly every member, and a
        fixed order would starve the same ones every time."""
        if not self._queue:
            return ()
        limit = self.retransmit_limit()
        budget = self.config.piggyback_bytes
        chosen: list[Update] = []
        order = sorted(self._queue, key=lambda node: (node != self.name, self._sent[node], -self._enqueued[node]))
        for node in order:
            update = self._queue[node]
            budget -= len(update.node) + len(update.addr) + len(update.by) + 13
            if budget < 0 or len(chosen) == 255:
                break
            chosen.append(update)
            self._sent[node] += 1
            if self._sent[node] >= limit:
                del self._queue[node], self._sent[node], self._enqueued[node]
        return tuple(chosen)

    def queued(self) -> int:
        return len(self._queue)

    # -- push-pull ----------------------------------------------------------------------------

    def _sync(self, *, reply: bool) -> Sync:
        own = Update(self.name, self.addr, self.incarnation, Status.ALIVE)
        rest = (Update(n, m.addr, m.incarnation, m.status) for n, m in sorted(self._members.items()))
        return Sync(self.name, reply, (own, *rest))

    def _merge(self, sync: Sync, now_ns: int) -> None:
        """Merge a remote view: members alive (at a higher incarnation) or left, and what it
        believes of this member (refuted). Its suspicions and failures of others are not taken:
        the remote may be the other side of a healed partition, whose "failed" means "was
        unreachable from there", and merging them would make every member of this side refute
        at once; a real failure is found by this member's own probes and the gossip."""
        for update in sync.members:
            if update.node == self.name:
                self._about_me(update)
            elif update.status in (Status.ALIVE, Status.LEFT):
                self._apply(update, now_ns)
            elif update.status is Status.SUSPECT and update.node not in self._members:
                self._apply(Update(update.node, update.addr, update.incarnation, Status.ALIVE), now_ns)

    def _reconnect(self, now_ns: int) -> None:
        """Every ``reconnect_interval``, ping one member believed failed; if it answers, push-pull
        with it (:meth:`_on_ack`). After a partition heals this is what finds the other side:
        nobody probes a failed member. A ping, not the whole view: a crashed member would
        otherwise cost every member O(N) bytes per interval for as long as it is remembered.

        And with a backlog of gossip (after a heal, a mass join: an update about nearly every
        member), a push-pull with a random live member: piggybacking drains such a backlog at
        a few dozen updates per message, a push-pull moves every member's latest incarnation
        at once, which is what ends the stale suspicions a heal leaves behind."""
        if now_ns < self._next_reconnect_ns:
            return
        self._next_reconnect_ns = now_ns + self.config.reconnect_interval_ns
        self._forget(now_ns)
        self._reconnects.clear()
        self._synced_back = False
        if len(self._queue) > self.config.sync_backlog and self._live:
            self._out.append((self._members[self._rng.choice(self.live_members())].addr, self._sync(reply=True)))
        self._ping_failed()

    def _ping_failed(self) -> None:
        """Ping one random member believed failed, telling it so (it refutes in its ack)."""
        failed = [name for name, m in sorted(self._members.items()) if m.status is Status.FAILED]
        if failed:
            name = self._rng.choice(failed)
            seq = self._next_seq()
            self._reconnects[seq] = name
            member = self._members[name]
            gossip = (Update(name, member.addr, member.incarnation, Status.FAILED),)
            self._out.append((member.addr, Ping(seq, name, gossip)))

    def _forget(self, now_ns: int) -> None:
        """Drop members failed or left longer than ``failed_retention`` ago (bounded state)."""
        cutoff = now_ns - self.config.failed_retention_ns
        for name in [n for n, m in self._members.items() if m.status >= Status.FAILED and m.since_ns < cutoff]:
            if name in self._order:
                self._order.remove(name)
            del self._members[name]
            self._queue.pop(name, None)
            self._sent.pop(name, None)
            self._enqueued.pop(name, None)
