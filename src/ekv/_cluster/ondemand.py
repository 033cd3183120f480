"""Large mode: sessions on demand (issue 15, step 1; docs/scale.md).

Why: below the broadcast tree's threshold every node keeps a session with every member it knows
(:class:`~ekv._cluster.members.MemberSet` dials every address), N-1 sessions per node, N²/2 in
the cluster, each with its handshake, heartbeats and session-start probe. From
:data:`~ekv._core.plumtree.DIRECT_THRESHOLD` members on, counted by SWIM (alive or suspect,
itself included), a node no longer needs them: writes travel along the Plumtree view's 3-5
links, anti-entropy talks to one partner per round, and SWIM detects failures without sessions.
In *large mode* a node therefore holds sessions only with

* the broadcast view's peers (eager, lazy and those asked to be: the tree's messages travel on
  sessions; one for a member without a session waits while it is dialed,
  :class:`~ekv._cluster.broadcast.Broadcast`);
* the anti-entropy round's partner, drawn from SWIM's live members and dialed for the round (the
  session start's digest probe is the round's exchange; :meth:`Replicator._probe_round`);
* voters (linearizable operations need a session to each; a small set, known from their Hellos);
* members that lack the ``"plumtree"`` feature (an older version: they get direct ``Live``);
* and whoever dials it (inbound sessions are always accepted).

A session that this side does not need (none of the above, no sync in flight, no probe awaiting
its answer) for ``idle_close`` (half an ``anti_entropy_interval``, at least half a second) is
closed by its dialer with a ``Bye`` saying so; neither side counts that as the member going
down. Since sessions now come and go, a member's down-since time (quarantine after ``tombstone_ttl``, SPEC 7)
comes from SWIM in large mode: "failed" or "left" records it, and the quarantine check runs at the
next session start, as before; session ends record nothing.

Two transitions have their own rules. At its *start*, a node that knows enough addresses for
large mode (an operator's list of every member) dials only a few of them while SWIM counts the
live members (``_JOIN_S``), instead of all of them before SWIM has counted 16. And a member whose
session *failed* in large mode (reset, timed out: a partition shorter than SWIM's failure
detection, which declares nobody failed) is offered for an extra anti-entropy round until a
session with it is up again (:meth:`OnDemand._offer_cut`), as members SWIM sees back are.

Below the threshold (and on a node that runs no SWIM) nothing else here acts: every address is
dialed (after the start's window, on a node given 15 addresses or more) and kept, and sessions'
ends record down-since, exactly as before. The mode follows SWIM's count: a cluster that shrinks
below the threshold dials everyone again.

Runs on the network loop thread, as the rest of the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from ekv._cluster import departed, wire
from ekv._cluster.messages import Bye
from ekv._core import plumtree
from ekv._core.addresses import format_address, parse_address
from ekv._core.durations import NS_PER_S
from ekv._core.swim import Event

__all__ = ["IDLE_REASON", "OnDemand"]

IDLE_REASON = "idle: neither side needs this session (large mode)"
"""The reason of an idle close (the dialer's Bye, and the session's close reason)."""
_LIVE_KINDS = ("joined", "alive", "suspect")
_DEMAND_S = 5.0
"""How long a member asked for (:meth:`OnDemand.want`) stays wanted without a session: long
enough for a dial and its handshake, short enough that a member that cannot be reached is not
dialed for ever."""
_PARK_S = 10.0
"""A parked dialer looks again this often even if nothing woke it (a safety net)."""
_CUT_S = 30.0
_CUT_MAX = 256
"""A member whose session failed is offered for an extra round for at most :data:`_CUT_S` (then
the regular rounds, every ``anti_entropy_interval``, take over), at most :data:`_CUT_MAX` at a time."""
_FAILED = ("connection lost", "no heartbeat")
"""How the reason of a session that failed begins (:class:`~ekv._cluster.session.Session`): the
connection reset or timed out, or the member fell silent (a partition, or a crash)."""
_JOIN_S = 3.0
_JOIN_SEEDS = 3
"""At its start, a node that knows enough addresses for large mode (an operator's list of every
member, or a discovery name standing for them) dials only :data:`_JOIN_SEEDS` of them for
:data:`_JOIN_S` seconds, while SWIM (which joins through all of them, by datagram) counts the
live members: dialing all at once, before SWIM had counted 16, made a full mesh in the first
100 ms (at 100 nodes, 80% of a run's anti-entropy probes were the sessions' first ones). If SWIM
counts 16 by then, large mode decides who is dialed; otherwise everyone is, as before."""


class OnDemand:
    """Large mode of one cluster node (see the module docstring). ``members`` is the node's
    :class:`~ekv._cluster.members.MemberSet`, ``membership`` its
    :class:`~ekv._cluster.membership.ClusterMembership`."""

    def __init__(
        self,
        members: Any,
        membership: Any,
        *,
        idle_close_s: float,
        wall: Callable[[], int],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
    ) -> None:
        self._members = members
        self._wall = wall
        self._spawn = spawn
        self._looping = False
        self._membership = membership
        self.idle_close_s = idle_close_s
        self.live: set[str] = set()
        """SWIM's members believed alive or suspect (this node excluded)."""
        self._large = False
        self._wake: dict[str, asyncio.Event] = {}  # address -> its parked dialer's wake-up
        self._wanted_until: dict[str, float] = {}  # node id -> loop time its demand expires
        self._unneeded_since: dict[str, float] = {}  # node id -> since when its session is not needed
        self.voters: set[str] = set()
        """Node ids whose Hello said ``role="voter"``: always dialed."""
        self.lacking: set[str] = set()
        """Node ids whose last session lacked the ``"plumtree"`` feature: always dialed."""
        self.stats = {"idle_closed": 0, "dialed_on_demand": 0}
        self._joining_until: float | None = None  # loop time the start's window ends (see _JOIN_S)
        self._seeds: tuple[int, frozenset[str]] = (0, frozenset())  # (addresses known, the seeds dialed then)
        self._cut_until: dict[str, float] = {}  # node id -> until when its failed session is retried (_offer_cut)

    # -- the mode ------------------------------------------------------------------------------

    @property
    def large(self) -> bool:
        return self._large

    def live_members(self) -> Collection[str] | None:
        """SWIM's live members in large mode; None below it (the sessions are the members)."""
        return self.live if self._large else None

    def tree_members(self) -> Collection[str] | None:
        """The members the broadcast tree may use in large mode: SWIM's live members but those
        known to lack the ``"plumtree"`` feature (they get direct Lives, over sessions kept)."""
        return self.live - self.lacking if self._large else None

    def on_event(self, event: Event | None) -> None:
        """A SWIM event (from :class:`~ekv._cluster.membership.ClusterMembership`); None: it restarted."""
        if event is None:
            self.live.clear()
            self._update()
            return
        if event.node == self._members.node_id:
            return
        departed.on_event(self._members.driver, self._membership, event, self._wall)  # (every mode)
        if event.kind in _LIVE_KINDS:
            if event.kind == "alive" and self._large:  # (back from suspect or failed)
                rep = self._members.driver.replicator
                if rep is not None:
                    rep.rotation.back(event.node)  # (the writes made apart, if a partition kept it away)
            self.live.add(event.node)
        else:
            self.live.discard(event.node)
            self._wanted_until.pop(event.node, None)
        if event.kind in ("failed", "left") and self._large:
            rep = self._members.driver.replicator
            if rep is not None:
                rep.member_gone(event.node, self._wall())
        self._update()

    def _update(self) -> None:
        membership = self._membership.membership
        large = (
            membership is not None
            and len(self.live) + 1 >= plumtree.DIRECT_THRESHOLD
            # (a node that does not offer the tree sends every write directly, to every member)
            and wire.PLUMTREE_FEATURE in self._members._handshake_params().hello.features
        )
        changed = large != self._large
        if changed:
            self._large = large
            if large and not self._looping:
                self._looping = True  # (only in large mode: below it, nothing here runs)
                self._spawn(self._idle_loop())
            if not large:
                self._unneeded_since.clear()
                for wake in self._wake.values():
                    wake.set()  # back to the full mesh: every parked dialer dials
        broadcast = self._members.driver.broadcast
        if broadcast is not None and (large or changed):
            broadcast.peers_changed()

    # -- who is needed --------------------------------------------------------------------------

    def wanted(self, node_id: str) -> bool:
        """Whether this side needs a session with ``node_id`` (always, below the threshold)."""
        if not self._large:
            return True
        if node_id in self.voters:
            return True
        until = self._wanted_until.get(node_id)
        if until is not None:
            if until > asyncio.get_running_loop().time():
                return True
            del self._wanted_until[node_id]
        members = self._members
        broadcast = members.driver.broadcast
        if broadcast is not None and broadcast.needs(node_id):
            return True
        if node_id in self.lacking:
            return True  # an older version: it gets direct Lives
        rep = members.driver.replicator
        state = None if rep is None else rep.peers.get(node_id)
        return state is not None and bool(state.inbound or state.out or state.probe is not None)

    def want(self, node_id: str) -> None:
        """Dial ``node_id`` now (by the address SWIM gives for it) unless a session is up."""
        if not self._large:
            return
        members = self._members
        self._wanted_until[node_id] = asyncio.get_running_loop().time() + _DEMAND_S
        if node_id in members.sessions:
            return
        address = self._address_of(node_id)
        if address is None:
            return
        self.stats["dialed_on_demand"] += 1
        if address not in members.addresses:
            members.add_address(address, "swim")
            entry = members.addresses.get(address)
            if entry is not None and entry["node_id"] is None:
                entry["node_id"] = node_id
        wake = self._wake.get(address)
        if wake is not None:
            wake.set()

    def _address_of(self, node_id: str) -> str | None:
        for address, entry in self._members.addresses.items():
            if entry["node_id"] == node_id:
                return str(address)
        membership = self._membership.membership
        update = None if membership is None else membership.member(node_id)
        if update is None:
            return None
        with contextlib.suppress(Exception):
            host, port = parse_address(update.addr, "member address")
            if host not in ("", "0.0.0.0", "::"):
                return format_address(host, port)
        return None

    def node_at(self, address: str) -> str | None:
        membership = self._membership.membership
        if membership is None:
            return None
        for update in membership.view():
            if update.addr == address:
                return str(update.node)
        return None

    # -- the dialers (MemberSet._dial_loop) ---------------------------------------------------

    def may_dial(self, address: str, entry: dict[str, Any]) -> bool:
        """Whether the dialer of ``address`` dials now. In large mode only a member that is
        needed, or an address no member is known at (a seed: SWIM joins through it too)."""
        if not self._large:
            return self._joined(address)
        node_id = entry["node_id"]
        if node_id is None:
            node_id = entry["node_id"] = self.node_at(address)
            if node_id is None:
                return True
        return self.wanted(node_id)

    def _joined(self, address: str) -> bool:
        """Below the threshold, whether ``address`` is dialed now: always, but in the start's window
        of a node that knows enough addresses for large mode and runs SWIM, where only a few
        seeds are (chosen by a hash of this node's id, so that nodes pick different ones)."""
        members = self._members
        known = members.addresses
        if self._membership.membership is None or len(known) + 1 < plumtree.DIRECT_THRESHOLD:
            return True
        loop = asyncio.get_running_loop()
        if self._joining_until is None:
            self._joining_until = loop.time() + _JOIN_S
            loop.call_at(self._joining_until, self._joining_ended)
        if loop.time() >= self._joining_until:
            return True
        if self._seeds[0] != len(known):  # (ranked again only when addresses were added)
            node = str(members.node_id)
            rank = sorted(known, key=lambda a: hashlib.blake2b(f"{node} {a}".encode(), digest_size=8).digest())
            self._seeds = (len(known), frozenset(rank[:_JOIN_SEEDS]))
        return address in self._seeds[1]

    def _joining_ended(self) -> None:
        if not self._large:
            for wake in self._wake.values():
                wake.set()  # SWIM did not count 16 live members: a small cluster, the full mesh

    async def park(self, address: str) -> None:
        """Wait until the dialer of ``address`` is woken (its member is wanted, or large mode ended)."""
        wake = self._wake.setdefault(address, asyncio.Event())
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), _PARK_S)

    # -- sessions ---------------------------------------------------------------------------------

    def session_up(self, session: Any) -> None:
        self._wanted_until.pop(session.peer_id, None)  # (asked for and got: what it is needed for keeps it)
        if wire.PLUMTREE_FEATURE in session.features:
            self.lacking.discard(session.peer_id)
        else:
            self.lacking.add(session.peer_id)
        hello = session.hello
        if hello.role == "voter" and hello.cluster_size is not None:  # (a voter of linearizable operations)
            self.voters.add(session.peer_id)

    def session_down(self, node_id: str, reason: str) -> None:
        """A session ended: in large mode the tree keeps the member (SWIM says whether it is
        alive) but, unless the close was idle, leaves it out of the view for a few seconds."""
        broadcast = self._members.driver.broadcast
        if self._large and broadcast is not None:
            broadcast.session_ended(node_id, cut=IDLE_REASON not in reason)
        failed = reason.startswith(_FAILED)  # (not an idle close, a goodbye, a duplicate's end: a clean EOF)
        if self._large and failed and not self._members.stopping and len(self._cut_until) < _CUT_MAX:
            self._cut_until[node_id] = asyncio.get_running_loop().time() + _CUT_S
            self._offer_cut()

    def _offer_cut(self) -> None:
        """Offer every member whose session failed for an extra anti-entropy round (the replicator
        probes one member back a second, dialing it): again each time this runs (every second, from
        the idle loop) until a session with it is up, SWIM no longer counts it live, or
        :data:`_CUT_S` passed. Why: a partition shorter than SWIM's failure detection cuts sessions
        but declares nobody failed; a member SWIM suspected and sees alive again is queued once
        (:meth:`on_event`, a bounded queue that one round in sync clears), one it never suspected
        not at all, and the writes the tree could not carry across waited for a later round (30 s
        by default). The dials fail while the cut lasts; the first that succeeds starts with the
        round's probe."""
        rep = self._members.driver.replicator
        now = asyncio.get_running_loop().time()
        for node_id, until in list(self._cut_until.items()):
            if until <= now or node_id in self._members.sessions or node_id not in self.live or not self._large:
                del self._cut_until[node_id]
            elif rep is not None:
                rep.rotation.back(node_id)

    def records_down(self, reason: str) -> bool:
        """Whether a session's end records the member's down-since time: below the threshold,
        as always; in large mode never (SWIM's "failed" and "left" do, :meth:`on_event`)."""
        return not self._large and IDLE_REASON not in reason

    async def _idle_loop(self) -> None:
        """While in large mode, every second (or half ``idle_close``): look at the mode again (the tree's view too:
        members whose session failed come back after a while) and close the sessions this side
        dialed and has not needed for ``idle_close``."""
        try:
            while self._large and not self._members.stopping:
                await asyncio.sleep(min(1.0, self.idle_close_s / 2))
                self._update()
                self.close_idle()
                self._offer_cut()
        finally:
            self._looping = False

    def close_idle(self) -> None:
        members = self._members
        if not self._large:
            return
        now = asyncio.get_running_loop().time()
        for node_id in list(self._unneeded_since):
            if node_id not in members.sessions:
                del self._unneeded_since[node_id]
        for node_id, session in list(members.sessions.items()):
            if self.wanted(node_id):
                self._unneeded_since.pop(node_id, None)
                continue
            since = self._unneeded_since.setdefault(node_id, now)
            if session.dialer and now - since >= self.idle_close_s:
                del self._unneeded_since[node_id]
                self.stats["idle_closed"] += 1
                session.send(Bye(IDLE_REASON))
                session.close(IDLE_REASON)

    def info(self) -> dict[str, Any]:
        return {"large": self._large, "live_members": len(self.live), "voters": sorted(self.voters), **self.stats}


def idle_close_s(anti_entropy_interval_ns: int) -> float:
    """``idle_close``: half an anti-entropy interval, at least half a second and at most 5 s. A
    round's exchange takes a few round trips; a session kept longer only adds to every node's
    count (each node dials one partner per interval and is dialed by one on average; after a
    heal, one member back a second: 15 s, half the default interval, kept 15 sessions each)."""
    return min(5.0, max(0.5, anti_entropy_interval_ns / NS_PER_S / 2))
