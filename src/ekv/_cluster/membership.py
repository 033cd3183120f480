"""The cluster's SWIM membership: a :class:`~ekv._cluster.gossip.Membership` run by every listening
:class:`~ekv._cluster.cluster.ClusterNode`, fed with the addresses the node learns and feeding the
members it learns to :class:`~ekv._cluster.members.MemberSet` (issue 15, step 1; docs/scale.md).

Why both: below 16 members the sessions form a full mesh (every write is sent over them), and the
mesh learns its members from ``peers``, discovery, ``connect()`` and the member lists sessions
exchange when they start. Those lists travel only when a session starts, so a member that joins
later is learned by the others only when it dials them, and not at all across a link it cannot
use. SWIM disseminates every join to every member within a few periods, and from
:data:`~ekv._core.plumtree.DIRECT_THRESHOLD` live members on the node dials a member SWIM names
that it does not know (source ``"swim"``; below it the mesh is formed as before). SWIM's view of
who is alive, suspect, failed or left is reported in ``info()["membership"]``, and every event
goes to :attr:`ClusterMembership.on_event`: from 16 live members on, large mode
(:mod:`ekv._cluster.ondemand`) keeps sessions only where they are needed and takes members'
down-since times from SWIM's "failed" and "left".

* **Address and port**: the membership's datagrams use the listener's ``host:port`` over UDP; its
  address for the others is the node's advertised one. A node whose UDP port cannot be bound
  (taken by another program) runs no membership: logged and reported, the cluster works as
  before.
* **A wildcard listen without advertise=** (``listen="0.0.0.0:4370"``, the usual server setup):
  the node has no host to announce, so it announces ``":4370"``, as it does in its TCP Hello.
  SWIM names members by node id and keeps an address per member, so the host can be filled in
  where it is known: a member that hears the node *directly* completes the node's own entry with
  the host its datagram came from, under the port announced (the authenticated envelope names
  the sender, so only the sender's own entry is completed), and from then on holds and gossips
  the completed form. A host-less address about anyone else is dropped (counted in
  ``datagrams["hostless"]``): whoever heard that member directly disseminates its full address,
  and a relayed ``":port"`` would name the relayer's host, or none. Such a node's datagrams use
  envelope version 2 (:mod:`ekv._cluster.datagram`), which members of a release that knows only
  version 1 drop instead of taking ``":4370"`` for an address to send to and gossip on.

  Why this and not the node learning its own host: nothing tells it today (the TCP handshake
  fills in the dialer's host on the accepting side and says nothing back), a machine with
  several interfaces has no single host to learn, and a node that learned one would have to
  rejoin under it; completion at the receiving end needs no new message, no restart and no
  change to the state machine (:mod:`ekv._core.swim` keeps only complete addresses of others).

  Limits (``advertise=`` remains the answer): the host recorded is the source address the first
  hearer saw, which all members then use. A multi-homed host sends from the interface its route
  to that hearer picks, which other members may not reach; behind NAT the source is the
  translated address, whose port may not lead to the node; and a node told of its peers by
  ``127.0.0.1`` is recorded as ``127.0.0.1:port``, right only for members on the same machine
  (as the TCP side's member lists, which fill in the host the same way).
* **Cookie**: the cluster cookie keys the datagrams' MAC (:mod:`ekv._cluster.datagram`). Without a
  cookie (loopback only) the key is derived from the empty cookie, as the TCP handshake's proofs
  are then keyed by it: both only tell ekv's own traffic for this instance (the instance name is
  inside what the MAC covers) from strays.
* **Incarnation**: kept in the data directory (:func:`ekv._storage.datadir.save_membership_incarnation`),
  so a restarted node starts above every incarnation it announced and refutes its old "failed"
  at once. Only the node process runs a cluster (SPEC 12), so there is one writer.
* **Joining**: through every address the node learns (peers, discovery, ``connect()``, session
  member lists, inbound connections) that SWIM does not know yet, gathered per loop turn. One of
  them may be the node itself under another name (its own ``host:port`` in ``peers``): its own
  datagram coming back is dropped, and that seed forgotten (:meth:`ekv._core.swim.Swim.forget_seed`).
* **Leaving**: :meth:`close` sends "left" before the sessions say goodbye, so the others see "left",
  not "failed".

Runs on the network loop thread, as the rest of the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ekv._cluster.gossip import Membership
from ekv._cluster.members import MemberSet
from ekv._cluster.network import Network
from ekv._core.addresses import format_address, parse_address
from ekv._core.plumtree import DIRECT_THRESHOLD
from ekv._core.swim import Event
from ekv._storage.datadir import load_membership_incarnation, save_membership_incarnation

__all__ = ["ClusterMembership"]

_WILDCARDS = ("", "0.0.0.0", "::")


class ClusterMembership:
    """The node's SWIM member (see the module docstring). Not running until :meth:`start` bound
    its datagram endpoint; :meth:`info` says why when it does not run."""

    def __init__(
        self,
        members: MemberSet,
        network: Network,
        *,
        instance: str,
        cookie: bytes,
        data_dir: Path,
        log: Any,
        wall: Callable[[], int],
        rng: random.Random,
    ) -> None:
        self._members = members
        self._network = network
        self._instance = instance
        self._cookie = cookie
        self._data_dir = data_dir
        self._log = log
        self._wall = wall
        self._rng = rng
        self._listen: tuple[str, int] | None = None
        self._advertise: str | None = None
        self.membership: Membership | None = None
        self.reason = "not started"
        """Why no membership runs (for info())."""
        self._since: dict[str, int] = {}  # member -> wall ns of its last status change seen here
        self._pending: list[str] = []  # addresses to join through at the end of this loop turn
        self._join_scheduled = False
        self._save_failed = False
        self._restarting: asyncio.Task[None] | None = None
        self._closed = False
        self.on_event: Callable[[Event | None], None] | None = None
        """Told every SWIM event, and None when the membership restarts (large mode,
        :mod:`ekv._cluster.ondemand`)."""

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, listen: tuple[str, int], advertised: str) -> None:
        """Bind the datagram endpoint on the listener's ``listen`` address and start, unless the
        port is taken (logged, reported). ``advertised`` is ``":port"`` for a node listening on a
        wildcard address without ``advertise=`` (see the module docstring)."""
        self._listen, self._advertise = listen, advertised
        await self._start()

    async def _start(self) -> None:
        assert self._listen is not None
        membership = Membership(
            self._network,
            name=self._members.node_id,
            instance=self._instance,
            cookie=self._cookie,
            listen=self._listen,
            advertise=self._advertise,
            seed=self._rng.getrandbits(64),
            load_incarnation=lambda: load_membership_incarnation(self._data_dir),
            save_incarnation=self._save,
            on_event=self._on_event,
        )
        try:
            await membership.start()
        except OSError as exc:
            self.reason = f"cannot bind UDP {format_address(*self._listen)}: {exc.strerror or exc}"
            self._log.warning(
                "SWIM membership off: %s; the cluster runs without it (members are still found through peers, "
                "discovery and the sessions' member lists)",
                self.reason,
            )
            return
        self.membership = membership
        self.reason = ""
        self.learn_all(list(self._members.addresses))

    async def close(self, *, leave: bool = True) -> None:
        """Stop; with ``leave``, tell a few members this node left (before the sessions' goodbyes)."""
        self._closed = True
        if self._restarting is not None:
            self._restarting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restarting
        membership, self.membership = self.membership, None
        if membership is not None:
            await membership.close(leave=leave)
            self.reason = "closed"

    def renamed(self) -> None:
        """The node took a new node id (:meth:`MemberSet._reidentify`): run as a new member under
        it (the old name's datagrams end; its incarnation carries on from the saved one)."""
        if self.membership is None or self._closed or self._restarting is not None:
            return
        self._restarting = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        try:
            membership, self.membership = self.membership, None
            if membership is not None:
                await membership.close(leave=False)
            self._since.clear()
            if self.on_event is not None:
                self.on_event(None)
            if not self._closed:
                await self._start()
        finally:
            self._restarting = None

    # -- addresses in, members out ------------------------------------------------------------

    def learn(self, address: str, source: str) -> None:
        """The node learned ``address`` (:meth:`MemberSet.add_address`): join SWIM through it too,
        unless SWIM knows it already or named it (``source`` "swim")."""
        if source != "swim" and self.membership is not None and address not in self._pending:
            self._pending.append(address)
            if not self._join_scheduled:
                self._join_scheduled = True
                asyncio.get_running_loop().call_soon(self._join_pending)

    def learn_all(self, addresses: list[str]) -> None:
        for address in addresses:
            self.learn(address, "known")

    def _join_pending(self) -> None:
        self._join_scheduled = False
        pending, self._pending = self._pending, []
        membership = self.membership
        if membership is None or not membership.running:
            return
        known = {u.addr for u in membership.view()} | {membership.address}
        seeds = [a for a in pending if a not in known]
        if seeds:
            membership.join(seeds)

    def _on_event(self, event: Event) -> None:
        membership = self.membership
        self._since[event.node] = self._wall()
        if len(self._since) > 1024 and membership is not None:  # (members forgotten by SWIM)
            names = {u.node for u in membership.view()}
            self._since = {n: t for n, t in self._since.items() if n in names}
        if self.on_event is not None:
            self.on_event(event)
        if event.kind not in ("joined", "alive") or membership is None:
            return
        if len(membership.live_members()) + 1 < DIRECT_THRESHOLD:
            # A small cluster's mesh learns its members from the sessions' member lists, as it did
            # before SWIM: dialing what SWIM names there let a voter refused by the voters (one
            # beyond cluster_size) reach an observer that had not met every voter yet, which then
            # admitted it and refused a rightful voter (first come, first admitted).
            return
        update = membership.member(event.node)
        members = self._members
        if update is None or event.node == members.node_id or event.node in members.sessions:
            return
        try:
            host, port = parse_address(update.addr, "member address")
        except Exception:
            return
        if host in _WILDCARDS:
            return
        address = format_address(host, port)
        if address in members.addresses or any(e["node_id"] == event.node for e in members.addresses.values()):
            return
        members.add_address(address, "swim")

    def _save(self, incarnation: int) -> None:
        try:
            save_membership_incarnation(self._data_dir, incarnation)
        except OSError as exc:
            if not self._save_failed:  # (once: it is retried at every rise)
                self._save_failed = True
                self._log.warning("cannot save the SWIM incarnation in %s: %s", self._data_dir, exc)

    # -- reports ------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """``info()["membership"]``: this member, every member with SWIM's belief
        about it, datagram counts and drops by reason; or why it does not run."""
        membership = self.membership
        if membership is None or not membership.running:
            return {"running": False, "reason": self.reason or "restarting"}
        return {
            "running": True,
            "name": membership.name,
            "address": membership.address,
            "incarnation": membership.incarnation,
            "members": {
                u.node: {
                    "address": u.addr,
                    "status": u.status.name.lower(),
                    "incarnation": u.incarnation,
                    "since_ns": self._since.get(u.node),
                }
                for u in membership.view()
            },
            "datagrams": dict(membership.stats),
            "dropped": membership.drops,
        }

    def metrics(self) -> dict[str, float]:
        """The membership's Prometheus gauges and counters (none while it does not run)."""
        membership = self.membership
        if membership is None or not membership.running:
            return {"ekv_membership_running": 0}
        m: dict[str, float] = {"ekv_membership_running": 1, "ekv_membership_incarnation": membership.incarnation}
        counts = dict.fromkeys(("alive", "suspect", "failed", "left"), 0)
        for update in membership.view():
            counts[update.status.name.lower()] += 1
        for status, count in counts.items():
            m[f'ekv_membership_members{{status="{status}"}}'] = count
        m["ekv_membership_datagrams_sent_total"] = membership.stats["sent"]
        m["ekv_membership_datagrams_received_total"] = membership.stats["received"]
        for reason, count in membership.drops.items():
            m[f'ekv_membership_datagrams_dropped_total{{reason="{reason}"}}'] = count
        m['ekv_membership_datagrams_dropped_total{reason="undecodable"}'] = membership.stats["undecodable"]
        return m
