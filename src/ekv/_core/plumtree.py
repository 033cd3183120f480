"""Broadcast by Plumtree (Leitão, Pereira, Rodrigues 2007, "Epidemic Broadcast Trees") over a
small, symmetric, HyParView-like peer view fed by the membership: a pure, deterministic, sans-I/O
state machine, like :mod:`ekv._core.swim`.

Why: sending each write to each member costs the writer N-1 messages and every member a session
with every other. Plumtree sends each message once over each edge of a spanning tree (*eager
push*) and only a tiny announcement, "I have (origin, seq)", over the other edges of the peer
graph (*lazy push*). The tree is not built by anyone: it is what is left after duplicates are
pruned, and it repairs itself:

* a message received for the first time is delivered, pushed to the eager peers and queued for
  announcement to the lazy ones; its sender becomes (or stays) eager;
* a duplicate moves its sender to lazy and tells it so (``Prune``): the edge leaves the tree;
* an announcement of a message not received starts a timer; if the message has not come when it
  fires, ``Graft`` asks the announcer for it and makes that edge eager (the tree grows a branch
  around a failed or slow node); the next announcer is asked after a shorter retry.

Cost per broadcast: N-1 eager messages once the tree has settled, plus announcements. Two
choices keep the announcements below N-1 at 100 members (docs/scale.md has the figures):
announcements are *batched* per peer and sent every ``lazy_interval`` (one ``IHave`` carries
every message queued for that peer), and one is *not sent* to a peer known to have the message
already (it pushed it, or announced it, to this member). With the peer degree d, each non-tree
edge carries about one announcement per batch: (d/2 - 1) * N lazy messages at most, and fewer as
writes share batches.

The peer view (*active view*) is bounded: ``max(min_active, round(log10 N) + 1)`` peers, HyParView's
size (3 at N=100, 4 at 500, 5 at 10,000), plus one of slack before requests are refused, so a
member's cost per broadcast and its number of peers do not grow with N. Links are symmetric:
``Neighbor`` asks, ``Accept`` or ``Disconnect`` answers (an isolated member's request is
``urgent`` and always accepted). The membership (SWIM's view, fed in with :meth:`Plumtree.member_up`
and :meth:`Plumtree.member_down`) plays HyParView's passive view: a failed or departed peer is
replaced by a random member. Every ``rotate_interval`` a member swaps one peer for a random
member, so the graph stays random and the two sides of a healed partition, each with a full view
of its own side, are joined again.

Messages are identified by *dots*, ``(origin, seq)``, as ekv's writes are; payloads are opaque
bytes. Memory is bounded: payloads are kept ``cache_ttl`` (to answer grafts) and at most
``max_cache`` of them, ids of received messages ``seen_ttl`` and at most ``max_seen``. Delivery is
at least once: a copy arriving after its id expired is delivered again (ekv's merge is
idempotent). Plumtree does not resend messages made while a member was unreachable (a partition):
that is anti-entropy's job.

Below :data:`DIRECT_THRESHOLD` members the caller should keep sending each write directly to
each member: N-1 messages is then no more than the tree costs and the latency is one hop.

Nothing here reads a clock or does I/O: time comes in with each call, randomness from a seeded
``random.Random``, and what to send goes out through :meth:`Plumtree.take_messages`. The wire
encoding is :mod:`ekv._core.plumtree_wire`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = [
    "DIRECT_THRESHOLD",
    "Accept",
    "Delivery",
    "Disconnect",
    "Dot",
    "Gossip",
    "Graft",
    "IHave",
    "Message",
    "Neighbor",
    "Plumtree",
    "PlumtreeConfig",
    "Prune",
]

NS_PER_S = 1_000_000_000
MS = NS_PER_S // 1000

DIRECT_THRESHOLD = 16
"""Below this many members (itself included) the caller sends each write directly to every
member instead: Plumtree's N-1 eager messages plus announcements are then no cheaper, and a
direct send is one hop where the tree is up to log N."""

Dot = tuple[str, int]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Gossip:
    """The message itself (eager push); ``hops`` counts the links it has crossed, this one included."""

    origin: str
    seq: int
    hops: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class IHave:
    """Announcements (lazy push): the sender has these messages."""

    dots: tuple[Dot, ...]


@dataclass(frozen=True, slots=True)
class Graft:
    """Send me these messages, and push to me from now on (the edge joins the tree)."""

    dots: tuple[Dot, ...]


@dataclass(frozen=True, slots=True)
class Prune:
    """A duplicate came over this edge: only announce to me from now on."""


@dataclass(frozen=True, slots=True)
class Neighbor:
    """Be my peer; ``urgent`` when the sender has none (then it is always accepted)."""

    urgent: bool


@dataclass(frozen=True, slots=True)
class Accept:
    """Yes to a ``Neighbor``: the link is up, eager both ways."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """No to a ``Neighbor``, or the end of a link."""


Message = Gossip | IHave | Graft | Prune | Neighbor | Accept | Disconnect


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message received for the first time, from peer ``sender`` after ``hops`` links."""

    origin: str
    seq: int
    payload: bytes
    hops: int
    sender: str


@dataclass(frozen=True, slots=True)
class PlumtreeConfig:
    """The protocol's parameters. ``lazy_interval`` is the announcement batch period;
    ``graft_timeout`` how long a member waits for a message after its first announcement
    before grafting (longer than the eager path usually takes: the tree is depth O(log N) and
    announcements wait up to a batch period), ``graft_retry`` before asking the next announcer."""

    min_active: int = 3
    slack: int = 1
    lazy_interval_ns: int = 100 * MS
    graft_timeout_ns: int = 200 * MS
    graft_retry_ns: int = 150 * MS
    neighbor_timeout_ns: int = NS_PER_S
    rotate_interval_ns: int = 60 * NS_PER_S
    cache_ttl_ns: int = 30 * NS_PER_S
    seen_ttl_ns: int = 120 * NS_PER_S
    max_cache: int = 10_000
    max_seen: int = 200_000
    max_dots: int = 1_000


@dataclass(slots=True)
class _Cached:
    payload: bytes
    hops: int
    expires_ns: int
    holders: set[str] = field(default_factory=set)  # peers known to have it: no announcement to them


@dataclass(slots=True)
class _Missing:
    """Announced but not received: who announced it, in order, and when to graft."""

    expires_ns: int
    announcers: list[str]
    due_ns: int | None


class Plumtree:
    """One member's broadcast state machine (see the module docstring).

    Feed it the membership with :meth:`member_up` / :meth:`member_down` (or :meth:`on_member`
    with SWIM's event kinds), drive it with :meth:`tick` at :meth:`next_deadline` and
    :meth:`receive` for every decoded message, start broadcasts with :meth:`broadcast`; after each
    call send what :meth:`take_messages` returns (``(member, message)`` pairs) and apply what
    :meth:`take_deliveries` returns."""

    def __init__(self, name: str, *, config: PlumtreeConfig | None = None, seed: int = 0) -> None:
        self.name = name
        self.config = config or PlumtreeConfig()
        self._rng = random.Random(f"plumtree-{name}-{seed}")
        self._members: list[str] = []  # the passive view: every live member but this one
        self._member_at: dict[str, int] = {}
        self.eager: set[str] = set()
        self.lazy: set[str] = set()
        self._pending: dict[str, int] = {}  # Neighbor sent -> when to give up
        self._seen: dict[Dot, int] = {}  # received ids -> expiry, in arrival order
        self._cache: dict[Dot, _Cached] = {}  # in arrival order
        self._missing: dict[Dot, _Missing] = {}
        self._announce: dict[str, dict[Dot, None]] = {}  # peer -> announcements queued for it
        self._first_from: dict[str, int] = {}  # peer -> when it last delivered a message first
        self._next_flush_ns = 0
        self._next_rotate_ns: int | None = None
        self._next_gc_ns = 0
        self._out: list[tuple[str, Message]] = []
        self._deliveries: list[Delivery] = []

    # -- the view -----------------------------------------------------------------------------

    def peers(self) -> set[str]:
        """The active view: eager and lazy peers."""
        return self.eager | self.lazy

    def asked(self, node: str) -> bool:
        """Whether a ``Neighbor`` request to ``node`` awaits its answer."""
        return node in self._pending

    def members(self) -> frozenset[str]:
        """The membership as fed in (and as learned from ``Neighbor`` requests): the passive view."""
        return frozenset(self._member_at)

    def target(self) -> int:
        """HyParView's active view size, ``round(log10 N) + 1``, at least ``min_active``."""
        n = len(self._members) + 1
        return min(len(self._members), max(self.config.min_active, round(math.log10(n)) + 1))

    def take_messages(self) -> list[tuple[str, Message]]:
        out, self._out = self._out, []
        return out

    def take_deliveries(self) -> list[Delivery]:
        deliveries, self._deliveries = self._deliveries, []
        return deliveries

    def stored(self) -> tuple[int, int, int]:
        """(ids remembered, payloads cached, messages awaited): what bounded memory bounds."""
        return len(self._seen), len(self._cache), len(self._missing)

    def next_deadline(self) -> int | None:
        """The earliest time :meth:`tick` has something to do (None: nothing until an input)."""
        times = [m.due_ns for m in self._missing.values() if m.due_ns is not None]
        times += self._pending.values()
        if self._announce:
            times.append(self._next_flush_ns)
        if self._next_rotate_ns is not None:
            times.append(self._next_rotate_ns)
        if self._seen or self._missing:
            times.append(self._next_gc_ns)
        return min(times) if times else None

    # -- inputs: membership -------------------------------------------------------------------

    def on_member(self, kind: str, node: str, now_ns: int) -> None:
        """A SWIM event (:class:`ekv._core.swim.Event`): joined/alive add, failed/left remove."""
        if kind in ("joined", "alive"):
            self.member_up(node, now_ns)
        elif kind in ("failed", "left"):
            self.member_down(node, now_ns)

    def member_up(self, node: str, now_ns: int) -> None:
        self.members_up((node,), now_ns)

    def members_up(self, nodes: Iterable[str], now_ns: int) -> None:
        """Several members at once: all are added before the view is filled. (Added one by one,
        each fills the view from the members so far, so the view ends up with the first few in
        the order given: a node learning many members at once, in sorted order, asked the same
        three for a session as every other node did, and those three were dialed by everyone.)"""
        added = False
        for node in nodes:
            if node == self.name or node in self._member_at:
                continue
            self._member_at[node] = len(self._members)
            self._members.append(node)
            added = True
        if not added:
            return
        if self._next_rotate_ns is None and self.config.rotate_interval_ns > 0:
            self._next_rotate_ns = now_ns + self._rng.randrange(self.config.rotate_interval_ns)
        self._fill(now_ns)

    def member_down(self, node: str, now_ns: int) -> None:
        at = self._member_at.pop(node, None)
        if at is None:
            return
        last = self._members.pop()
        if last != node:
            self._members[at] = last
            self._member_at[last] = at
        if node in self.eager or node in self.lazy:
            self._out.append((node, Disconnect()))  # in case it is alive after all (a false suspicion)
        self._drop(node)
        for missing in self._missing.values():
            if node in missing.announcers:
                missing.announcers.remove(node)
        self._fill(now_ns)

    def _drop(self, peer: str) -> None:
        self.eager.discard(peer)
        self.lazy.discard(peer)
        self._pending.pop(peer, None)
        self._announce.pop(peer, None)
        self._first_from.pop(peer, None)

    def _fill(self, now_ns: int, avoid: str = "") -> None:
        """Ask random members to be peers until the view (with requests in flight) is full."""
        want = self.target() - len(self.eager) - len(self.lazy) - len(self._pending)
        tries = 4 * want
        while want > 0 and tries > 0:
            tries -= 1
            node = self._members[self._rng.randrange(len(self._members))]
            if node == avoid or node in self.eager or node in self.lazy or node in self._pending:
                continue
            self._pending[node] = now_ns + self.config.neighbor_timeout_ns
            self._out.append((node, Neighbor(urgent=not (self.eager or self.lazy))))
            want -= 1

    # -- inputs: broadcasts and messages ------------------------------------------------------

    def broadcast(self, dot: Dot, payload: bytes, now_ns: int) -> bool:
        """Send a new message (this member's own write) to every member; False if ``dot`` was
        already seen here (nothing is sent)."""
        if dot in self._seen:
            return False
        self._store(dot, payload, 0, now_ns)
        self._forward(dot, payload, 0, "", now_ns)
        return True

    def receive(self, src: str, message: Message, now_ns: int) -> None:
        """Handle one message from member ``src`` (already decoded and checked)."""
        if isinstance(message, Gossip | IHave | Graft | Prune) and src not in self.eager and src not in self.lazy:
            self._adopt(src)
        if isinstance(message, Gossip):
            self._on_gossip(src, message, now_ns)
        elif isinstance(message, IHave):
            self._on_ihave(src, message.dots, now_ns)
        elif isinstance(message, Graft):
            self._on_graft(src, message.dots)
        elif isinstance(message, Prune):
            if src in self.eager:
                self.eager.discard(src)
                self.lazy.add(src)
        else:
            self._on_view(src, message, now_ns)

    def _on_gossip(self, src: str, message: Gossip, now_ns: int) -> None:
        dot = (message.origin, message.seq)
        if dot in self._seen:
            cached = self._cache.get(dot)
            if cached is not None:
                cached.holders.add(src)
            if src in self.eager and now_ns - self._first_from.get(src, -NS_PER_S) < self.config.graft_timeout_ns:
                pass  # it was first with another message just now: concurrent broadcasts, keep the edge
            elif src in self.eager:  # a duplicate: this edge is not needed in the tree
                self.eager.discard(src)
                self.lazy.add(src)
                self._out.append((src, Prune()))
            elif src in self.lazy:
                self._out.append((src, Prune()))
            return
        self._missing.pop(dot, None)
        self._first_from[src] = now_ns
        self._store(dot, message.payload, message.hops, now_ns).holders.add(src)
        self._deliveries.append(Delivery(message.origin, message.seq, message.payload, message.hops, src))
        if src in self.lazy:
            self.lazy.discard(src)
            self.eager.add(src)
        self._forward(dot, message.payload, message.hops, src, now_ns)

    def _adopt(self, src: str) -> None:
        """A message from a member not in the view: a Neighbor it accepted whose Accept is still
        on its way (the link is up), or a link this member dropped without it hearing of it (a
        Disconnect lost, or the membership here believed it failed): tell it, so that views stay
        symmetric (a member whose peers do not count it as theirs would hear nothing)."""
        if src in self._pending:
            del self._pending[src]
            self._link(src)
        else:
            self._out.append((src, Disconnect()))

    def _forward(self, dot: Dot, payload: bytes, hops: int, src: str, now_ns: int) -> None:
        """Eager push to the eager peers, announcements queued for the lazy ones (the sender
        excluded from both). The first announcement queued after a pause waits a random
        0.5-1.5 batch periods: the peer, if it got the message too, then usually announces it
        here first, and this member leaves it out."""
        for peer in sorted(self.eager):
            if peer != src:
                self._out.append((peer, Gossip(dot[0], dot[1], min(hops + 1, 255), payload)))
        lazy = [peer for peer in self.lazy if peer != src]
        if lazy and not self._announce:
            delay = self._rng.randrange(self.config.lazy_interval_ns // 2, self.config.lazy_interval_ns * 3 // 2)
            self._next_flush_ns = max(self._next_flush_ns, now_ns + delay)
        for peer in lazy:
            self._announce.setdefault(peer, {})[dot] = None

    def _on_ihave(self, src: str, dots: tuple[Dot, ...], now_ns: int) -> None:
        for dot in dots:
            if dot in self._seen:
                cached = self._cache.get(dot)
                if cached is not None:
                    cached.holders.add(src)
                continue
            missing = self._missing.get(dot)
            if missing is None:
                due = now_ns + self.config.graft_timeout_ns
                self._missing[dot] = _Missing(now_ns + self.config.seen_ttl_ns, [src], due)
            elif src not in missing.announcers:
                missing.announcers.append(src)
                if missing.due_ns is None:  # every announcer so far was asked in vain
                    missing.due_ns = now_ns
        _trim_front(self._missing, lambda m: m.expires_ns <= now_ns, self.config.max_seen)

    def _on_graft(self, src: str, dots: tuple[Dot, ...]) -> None:
        if src in self.lazy:
            self.lazy.discard(src)
            self.eager.add(src)
        for dot in dots:
            cached = self._cache.get(dot)
            if cached is not None:
                self._out.append((src, Gossip(dot[0], dot[1], min(cached.hops + 1, 255), cached.payload)))

    def _on_view(self, src: str, message: Message, now_ns: int) -> None:
        if isinstance(message, Neighbor):
            if src in self.eager or src in self.lazy:
                self._out.append((src, Accept()))
                return
            if len(self.eager) + len(self.lazy) >= self.target() + self.config.slack and not message.urgent:
                self._out.append((src, Disconnect()))
                return
            self.member_up(src, now_ns)  # alive, whatever the membership has said so far
            self._pending.pop(src, None)
            self._link(src)
            self._out.append((src, Accept()))
            self._trim(avoid=src)
        elif isinstance(message, Accept):
            if src in self._pending or len(self.eager) + len(self.lazy) < self.target() + self.config.slack:
                self._pending.pop(src, None)
                if src not in self.eager:
                    self._link(src)
            elif src not in self.eager and src not in self.lazy:
                self._out.append((src, Disconnect()))
        elif isinstance(message, Disconnect):
            known = src in self.eager or src in self.lazy or src in self._pending
            self._drop(src)
            if known:
                self._fill(now_ns, avoid=src)

    def _link(self, peer: str) -> None:
        """A new link starts lazy, unless this member has no eager peer yet (it would hear
        nothing but announcements). Why not eager, as in the paper: a new link closes a cycle in
        the tree, and every broadcast would then cost a duplicate and a Prune until one came;
        a lazy link joins the tree only where a Graft needs it."""
        self.lazy.discard(peer)
        (self.lazy if self.eager else self.eager).add(peer)

    def _trim(self, avoid: str) -> None:
        """Over the view's limit (an urgent request accepted): drop a random other peer."""
        while len(self.eager) + len(self.lazy) > self.target() + self.config.slack:
            peer = self._rng.choice(sorted(self.peers() - {avoid}))
            self._drop(peer)
            self._out.append((peer, Disconnect()))

    # -- time ---------------------------------------------------------------------------------

    def tick(self, now_ns: int) -> None:
        """Do what is due: grafts, the announcement batch, expired Neighbor requests, the
        view's rotation, expiry of old ids and payloads."""
        self._graft_due(now_ns)
        if self._announce and now_ns >= self._next_flush_ns:
            self._flush()
            self._next_flush_ns = now_ns + self.config.lazy_interval_ns
        expired = [peer for peer, at in self._pending.items() if now_ns >= at]
        for peer in expired:
            del self._pending[peer]
        if expired:
            self._fill(now_ns)
        if self._next_rotate_ns is not None and now_ns >= self._next_rotate_ns:
            self._next_rotate_ns = now_ns + self.config.rotate_interval_ns
            self._rotate(now_ns)
        if now_ns >= self._next_gc_ns:
            self._next_gc_ns = now_ns + NS_PER_S
            self._expire(now_ns)

    def _graft_due(self, now_ns: int) -> None:
        """Ask the next announcer of each message overdue for it, one Graft per announcer."""
        asks: dict[str, list[Dot]] = {}
        for dot, missing in self._missing.items():
            if missing.due_ns is None or now_ns < missing.due_ns:
                continue
            if missing.announcers:
                asks.setdefault(missing.announcers.pop(0), []).append(dot)
                missing.due_ns = now_ns + self.config.graft_retry_ns
            else:
                missing.due_ns = None
        for peer, dots in asks.items():
            if peer in self.lazy:
                self.lazy.discard(peer)
                self.eager.add(peer)
            for at in range(0, len(dots), self.config.max_dots):
                self._out.append((peer, Graft(tuple(dots[at : at + self.config.max_dots]))))

    def _flush(self) -> None:
        """Send the queued announcements, one IHave per peer, leaving out what it is known to have."""
        queued, self._announce = self._announce, {}
        for peer in sorted(queued):
            if peer not in self.eager and peer not in self.lazy:
                continue
            dots = []
            for dot in queued[peer]:
                cached = self._cache.get(dot)
                if cached is not None and peer not in cached.holders:
                    dots.append(dot)
            for at in range(0, len(dots), self.config.max_dots):
                self._out.append((peer, IHave(tuple(dots[at : at + self.config.max_dots]))))

    def _rotate(self, now_ns: int) -> None:
        """Swap one peer for a random member (keeps the graph random; rejoins healed sides)."""
        peers = sorted(self.peers())
        if len(peers) < self.target() or len(self._members) <= len(peers):
            return
        peer = self._rng.choice(peers)
        self._drop(peer)
        self._out.append((peer, Disconnect()))
        self._fill(now_ns, avoid=peer)

    def _store(self, dot: Dot, payload: bytes, hops: int, now_ns: int) -> _Cached:
        self._seen[dot] = now_ns + self.config.seen_ttl_ns
        cached = self._cache[dot] = _Cached(payload, hops, now_ns + self.config.cache_ttl_ns)
        self._expire(now_ns)
        return cached

    def _expire(self, now_ns: int) -> None:
        """Forget ids, payloads and awaited messages past their time or over their limits
        (both dicts are in arrival order, so the oldest are first)."""
        _trim_front(self._seen, lambda at: at <= now_ns, self.config.max_seen)
        _trim_front(self._cache, lambda c: c.expires_ns <= now_ns, self.config.max_cache)
        _trim_front(self._missing, lambda m: m.expires_ns <= now_ns, self.config.max_seen)


def _trim_front(table: dict[Dot, _T], old: Callable[[_T], bool], limit: int) -> None:
    """Drop the entries at the front of ``table`` that are ``old`` or over ``limit``."""
    excess = len(table) - limit
    doomed = []
    for dot, value in table.items():
        if excess <= 0 and not old(value):
            break
        doomed.append(dot)
        excess -= 1
    for dot in doomed:
        del table[dot]
