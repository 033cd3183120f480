"""Live replication through a broadcast tree in large clusters: the caller of
:class:`ekv._core.plumtree.Plumtree`.

Why: a node sends each local write to each member as ``Live`` (:mod:`ekv._cluster.replicator`),
N-1 frames per write from the writer. From :data:`~ekv._core.plumtree.DIRECT_THRESHOLD` (16)
members on, itself included, counting only the connected members that negotiated the
``"plumtree"`` feature and are not quarantined, the writer instead broadcasts the write through
Plumtree's tree: it sends it to its 3-4 eager peers, each member forwards it to its own, and
members announce it lazily (``IHave``) over the other links, so a member whose tree parent
failed asks another (``Graft``) and the tree repairs itself without waiting for anti-entropy.
Below the threshold, and to every member without the feature, the direct sends stay exactly as
they were: in a small cluster N-1 frames cost no more than the tree, and a direct send is one hop.

* **Messages.** A tree message travels as one ``TreeMessage`` frame on the member's session
  (:mod:`ekv._core.plumtree_wire` inside :mod:`ekv._cluster.wire`), only to members with the
  feature that are not quarantined; one from a quarantined member never gets here (the
  replicator drops it), one from a member without the feature is dropped.
* **Dots and payloads.** A broadcast is identified by ``(origin, n)``: this open's origin and a
  counter from 0. The origin is fresh on every open (and on a new node id), so a restarted node
  never reuses a dot whose id members may still remember. The payload is the write's ``Live``
  frame as :func:`ekv._cluster.wire.encode` makes it (values compressed by the node's
  ``compression_threshold``: every member with the feature reads compressed values), relayed
  unchanged; a delivery is decoded by :func:`ekv._cluster.wire.decode`, every field checked
  (nothing unpickled), and applied by :meth:`Replicator.apply_live`, the path of a direct Live.
  A Live too large for one frame with the tree's header goes direct.
* **The peer view** is fed from the replicator's sessions (:meth:`Broadcast.peers_changed`):
  members that qualify join Plumtree's membership while the node is at or above the threshold;
  members whose session ended or that were quarantined leave it at once. A node below the
  threshold still answers members that ask it to be their peer (Neighbor) and relays what they
  push, so a node whose count differs from its members' (a partial partition) still receives
  their writes; its own writes then go direct. In large mode (:mod:`ekv._cluster.ondemand`) the
  view is fed from SWIM's live members instead (:attr:`Broadcast.live_members`): a message for a
  member without a session is held (5 s at most) while it is dialed (:attr:`Broadcast.dial`),
  and a member whose session failed stays out of the view for 5 s.
* **Time**: Plumtree's timers (announcement batches, grafts, view upkeep) run on one loop timer
  at :meth:`Plumtree.next_deadline`, in loop time (monotonic; virtual in the simulator).

Version vectors, anti-entropy (pulls and summary probes), relay across non-transitive partitions
and quarantine stay as they are: the tree only replaces the direct fan-out of ``Live``. A write
that the tree does not deliver (a member unreachable while it was sent) is repaired by
anti-entropy, as a lost direct ``Live`` is.

Measured (docs/scale.md, step 2): 20 nodes without loss (``tests/test_broadcast.py``), 19 Gossip
and 12 IHave per write, the writer sending 1.9 frames instead of 19; ``PYTHONPATH=src python -m
ekv.testing.sim --seeds 1 --first 900 --nodes 20 --seconds 10`` (random faults, 2% loss): 0
violations, 17.2 frames carrying writes per write (18.6 direct), 54 messages per write in all
(34 direct: the tree's announcements cost more than they save in a full mesh).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from ekv._cluster import wire
from ekv._cluster.messages import Live, Message, TreeMessage
from ekv._cluster.replicator import Replicator
from ekv._core import plumtree, plumtree_wire
from ekv._core.durations import NS_PER_S
from ekv._errors import InvalidArgument, ProtocolError

__all__ = ["KINDS", "Broadcast"]

KINDS = ("gossip", "ihave", "graft", "prune", "neighbor", "accept", "disconnect")
"""The tree's message kinds, as counted in ``info()`` and the metrics."""
_KIND: dict[type, str] = {
    plumtree.Gossip: "gossip",
    plumtree.IHave: "ihave",
    plumtree.Graft: "graft",
    plumtree.Prune: "prune",
    plumtree.Neighbor: "neighbor",
    plumtree.Accept: "accept",
    plumtree.Disconnect: "disconnect",
}
_GOSSIP_OVERHEAD = 2 * wire.MAX_ORIGIN_BYTES + 64
"""A bound on what a TreeMessage frame adds around its payload (header, origin, seq, hops)."""
_HOLD_S = 5.0
"""How long a message for a member without a session waits for it (large mode)."""
_MAX_HELD = 1_000
_CUT_S = 5.0
"""How long a member whose session failed stays out of the view (large mode)."""


class _Session(Protocol):
    features: frozenset[str]


class Broadcast:
    """The broadcast tree of one node (loop thread). The replicator calls it through its
    :attr:`~ekv._cluster.replicator.Replicator.tree` hook; see the module docstring."""

    def __init__(
        self,
        rep: Replicator,
        sessions: Mapping[str, _Session],
        send: Callable[[str, Message], None],
        loop: asyncio.AbstractEventLoop,
        *,
        max_frame_size: int,
        compress_threshold: int | None,
        log: Any = None,
        config: plumtree.PlumtreeConfig | None = None,
    ) -> None:
        self._rep = rep
        self._sessions = sessions
        self._send = send
        self._loop = loop
        self._max_frame = max_frame_size
        self._compress = compress_threshold
        self._log = log
        self.origin = rep.origin
        self.tree = plumtree.Plumtree(rep.node_id, config=config, seed=0)  # (the node id is unique)
        self._next_seq = 0
        self.eligible: frozenset[str] = frozenset()
        """Connected members with the feature that are not quarantined."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_ns = 0
        self._closed = False
        self.sent = dict.fromkeys(KINDS, 0)
        self.received = dict.fromkeys(KINDS, 0)
        self.stats = {"broadcasts": 0, "delivered": 0, "bad_payloads": 0, "dropped": 0, "held": 0}
        self.live_members: Callable[[], Collection[str] | None] = lambda: None
        """In large mode (:mod:`ekv._cluster.ondemand`), SWIM's live members: the view is fed from
        them, not from the sessions; None below it."""
        self.dial: Callable[[str], None] = lambda _peer: None
        """Asks for a session with a member (large mode)."""
        self._held: dict[str, list[tuple[float, plumtree.Message]]] = {}
        """Messages for members without a session, sent when it starts (large mode)."""
        self._cut: dict[str, float] = {}
        """Members whose session failed (large mode): out of the view until this loop time."""

    @property
    def active(self) -> bool:
        """At or above the threshold, or in large mode: local writes go through the tree. (In large
        mode always: sessions are kept only with the view's peers, so a write sent directly would
        reach a handful of members and the rest only at anti-entropy's next round, which is what
        happened whenever a few members were briefly out of the view.)"""
        return len(self.eligible) + 1 >= plumtree.DIRECT_THRESHOLD or self.live_members() is not None

    def _now(self) -> int:
        return int(self._loop.time() * NS_PER_S)

    # -- the replicator's hook (ekv._cluster.port.Tree) --------------------------------------

    def peers_changed(self) -> None:
        """Recompute the members that qualify and feed the difference to Plumtree."""
        if self._closed:
            return
        peers = self._rep.peers
        self.eligible = frozenset(
            peer
            for peer, state in peers.items()
            if not state.quarantined
            and (session := self._sessions.get(peer)) is not None
            and wire.PLUMTREE_FEATURE in session.features
        )
        live = self.live_members()
        if live is not None:
            self.eligible |= self._swim_eligible(live)
        now = self._now()
        for member in sorted(self.tree.members() - self.eligible):
            self.tree.member_down(member, now)
        if self.active:
            self.tree.members_up(sorted(self.eligible - self.tree.members()), now)
        self._pump()

    def fanout(self, message: Live) -> Collection[str]:
        """Broadcast a local write if the tree is active; the members it reaches that way."""
        if not self.active or self._closed:
            return ()
        try:
            payload = wire.encode(message, compress_threshold=self._compress)
        except InvalidArgument:
            return ()  # the direct path raises it, as it always did
        if len(payload) + _GOSSIP_OVERHEAD > min(self._max_frame, plumtree_wire.MAX_PAYLOAD):
            return ()
        dot = (self.origin, self._next_seq)
        self._next_seq += 1
        self.stats["broadcasts"] += 1
        self.tree.broadcast(dot, payload, self._now())
        self._pump()
        return self.eligible

    def receive(self, peer_id: str, message: TreeMessage) -> None:
        if self._closed or peer_id not in self.eligible:
            self.stats["dropped"] += 1
            return
        self.received[_KIND[type(message.message)]] += 1
        self.tree.receive(peer_id, message.message, self._now())
        self._pump()

    # -- large mode: the view from SWIM, sessions on demand (ekv._cluster.ondemand) -------------

    def _swim_eligible(self, live: Collection[str]) -> frozenset[str]:
        """SWIM's live members but those quarantined, those whose session lacks the feature, and
        those whose session just failed (for a few seconds)."""
        now = self._loop.time()
        for peer in [p for p, until in self._cut.items() if until <= now or p in self._sessions]:
            del self._cut[peer]
        quarantined = self._rep.quarantined
        return frozenset(
            peer
            for peer in live
            if peer not in quarantined
            and peer not in self._cut
            and ((session := self._sessions.get(peer)) is None or wire.PLUMTREE_FEATURE in session.features)
        )

    def needs(self, peer: str) -> bool:
        """Whether the tree needs a session with ``peer``: a view peer, one asked to be, or one
        with messages waiting for its session."""
        return peer in self._held or peer in self.tree.peers() or self.tree.asked(peer)

    def session_ended(self, peer: str, *, cut: bool) -> None:
        """A session ended in large mode; ``cut``: not an idle close (keep it out of the view for
        a few seconds, or every message to it would wait for a dial that fails)."""
        if cut:
            self._cut[peer] = self._loop.time() + _CUT_S
        self.peers_changed()

    def _hold(self, peer: str, message: plumtree.Message) -> None:
        held = self._held.setdefault(peer, [])
        if len(held) < _MAX_HELD:
            held.append((self._loop.time(), message))
            self.stats["held"] += 1
        self.dial(peer)

    def _release(self) -> None:
        """Send what waited for sessions that are up; forget what waited too long."""
        deadline = self._loop.time() - _HOLD_S
        for peer in list(self._held):
            if peer in self._sessions and peer in self.eligible:
                for _, message in self._held.pop(peer):
                    self._send(peer, TreeMessage(message))
            elif peer not in self.eligible or self._held[peer][-1][0] < deadline:
                del self._held[peer]

    # -- out ---------------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send what Plumtree queued (first: forwarding is what others wait for), apply what it
        delivered, and set the timer for its next deadline."""
        large = self.live_members() is not None
        if self._held:
            self._release()  # (first: a Neighbor waiting for the session goes before what follows it)
        for peer, message in self.tree.take_messages():
            if peer in self.eligible:
                self.sent[_KIND[type(message)]] += 1
                if large and (peer not in self._sessions or peer in self._held):
                    self._hold(peer, message)
                else:
                    self._send(peer, TreeMessage(message))
        for delivery in self.tree.take_deliveries():
            self._deliver(delivery)
        self._arm()

    def _deliver(self, delivery: plumtree.Delivery) -> None:
        try:
            live = wire.decode(delivery.payload, max_frame_size=self._max_frame)
        except ProtocolError:
            live = None
        if not isinstance(live, Live):
            self.stats["bad_payloads"] += 1
            if self._log is not None and self.stats["bad_payloads"] in (1, 10, 100, 1000):
                self._log.warning(
                    "a broadcast from origin %s (relayed by %s) is not a valid Live message; dropped "
                    "(anti-entropy repairs what it held)",
                    delivery.origin,
                    delivery.sender,
                )
            return
        self.stats["delivered"] += 1
        self._rep.apply_live(live)

    # -- time --------------------------------------------------------------------------------------

    def _arm(self) -> None:
        deadline = self.tree.next_deadline()
        if deadline is None or self._closed:
            return
        if self._timer is not None:
            if self._timer_ns <= deadline:
                return
            self._timer.cancel()
        self._timer_ns = deadline
        self._timer = self._loop.call_at(deadline / NS_PER_S, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        # A timer may fire a hair before its time (the loop's clock resolution): count it as due,
        # or it would be set again for the same moment and spin.
        now = max(self._now(), self._timer_ns)
        try:
            self.tree.tick(now)
            self._pump()
        except Exception:
            if self._log is not None:
                self._log.error("broadcast tree tick failed", exc_info=True)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- info --------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """``info()["broadcast"]``."""
        return {
            "mode": "tree" if self.active else "direct",
            "threshold": plumtree.DIRECT_THRESHOLD,
            "tree_members": len(self.eligible) + 1,
            "eager": sorted(self.tree.eager),
            "lazy": sorted(self.tree.lazy),
            "sent": dict(self.sent),
            "received": dict(self.received),
            **self.stats,
        }
