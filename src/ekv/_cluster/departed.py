"""Members that leave for good: the others retire their origins (issue 15, version vectors).

A node retires its own origins (:mod:`ekv._core.retire`): at a clean close, or when its data
directory is opened again after a crash. A node that never runs again (decommissioned, its data
directory deleted, or crashed for good) retires nothing the others hear of: its marker, if it
wrote one at close, is in its own files only. So the members write the markers for it, when SWIM
says it is gone for good:

* **"left"** (a graceful leave: it said so as it closed): at once;
* **"failed"** for longer than ``tombstone_ttl``, without coming back in between (the same SWIM
  incarnation, SPEC 7: a member back after that long is quarantined, its pairs do not sync until
  the operator clears them): when that time has passed.

The member writing them (any member that hears of it; see :func:`retire_member`) puts
``marker(O): now`` into every shard's vector next to each origin ``O`` of that node id
(``node_id~incarnation``, :func:`origins_of`) that holds no marker yet, at the highest counter it
holds (its own ``O`` entry: the pair is stored in one transaction, as the node's own retirement
stores them). From there it is the ordinary record: it spreads by sync, settles at ``T +
tombstone_ttl`` and is dropped after the margin.

Why ``T`` = now at the member writing it, and why a member holding a higher counter loses nothing:
a marker says that its holder holds ``O`` up to the counter next to it, not up to the origin's
last write. The node is gone, so every write of ``O`` that survives is held by some member at
``T`` already (a write held by none is lost with the node, marker or not). Members connected
to that one pull it within ``tombstone_ttl`` of ``T`` (their vectors differ on ``O``, so digests
and deltas carry it), before anyone settles past ``T``: the rule compaction already relies on
(:mod:`ekv._core.retire`, "Why it is safe"). Writing later would only postpone the drop; an earlier
``T`` (the time it left) would not give the members that hold the last writes that whole
``tombstone_ttl``. Several members writing at once are harmless: markers merge by max, so the
vectors agree on the latest ``T``; members that dropped on an earlier one take the later one back
with a merge (:func:`ekv._core.retire.mergeable` filters only markers already due) and drop again;
SWIM tells every member within seconds, far less than the margin, and one that receives a marker
before it hears the news writes none. A node that comes back under the same data directory after
"left" writes its own, later, marker at its reopen (with its final counter), and the max keeps it.

Limits: the failed case's timer lives in memory (a member that restarts during the wait does
not resume it, the others do; one member is enough). A live origin must never be marked: SWIM
says "left" only of a node that closed, and a node reopened under the same id writes under a new
origin; should a late "left" still mark its new origin, its node never merges a marker of its own
live origin (:meth:`ekv._cluster.replicator.Replicator`'s vector merge), so it keeps serving its
writes and the others take the entry back once they dropped the marker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from ekv._core.durations import NS_PER_S
from ekv._core.retire import marker, retirable
from ekv._core.swim import Event, Status

__all__ = ["on_event", "origins_of", "retire_member"]


def origins_of(vv: Iterable[str], node_id: str) -> list[str]:
    """The origins in ``vv`` written by node ``node_id`` (``node_id~incarnation``, or the bare node
    id of an ekv 0.1 store) that may be given a marker."""
    return [o for o in vv if o.partition("~")[0] == node_id and retirable(o)]


def retire_member(rep: Any, node_id: str, now_ns: int) -> int:
    """Write ``marker(O): now_ns`` next to each origin ``O`` of ``node_id`` that holds none in the
    :class:`~ekv._cluster.replicator.Replicator` ``rep``'s vectors, memory and store (never this
    node's own origin). Returns how many were written."""
    written = 0
    for shard, vv in enumerate(rep.vv):
        due = {marker(o): now_ns for o in origins_of(vv, node_id) if o != rep.origin and marker(o) not in vv}
        if due:
            rep.store.apply(shard, [], due)  # (the store's vector holds O at least at vv's counter)
            vv.update(due)
            written += len(due)
    if written:
        rep.retired.note(now_ns)
        rep._info("member %s left for good: %d of its origins retired (version vectors)", node_id, written)
    return written


def on_event(driver: Any, membership: Any, event: Event, wall: Callable[[], int]) -> None:
    """A SWIM event about another member (every mode; :meth:`ekv._cluster.ondemand.OnDemand.on_event`):
    "left" retires its origins now, "failed" in ``tombstone_ttl`` if it is still failed then.
    ``driver`` is the node's :class:`~ekv._cluster.driver.Driver` (its replicator is looked up when
    used: taking a new node id replaces it), ``membership`` its
    :class:`~ekv._cluster.membership.ClusterMembership`."""
    if event.kind == "left":
        _retire(driver, event.node, wall())
    elif event.kind == "failed":
        delay_s = driver.settings.tombstone_ttl_ns / NS_PER_S
        asyncio.get_running_loop().call_later(delay_s, _still_failed, driver, membership, event, wall)


def _still_failed(driver: Any, membership: Any, event: Event, wall: Callable[[], int]) -> None:
    """``tombstone_ttl`` after SWIM said ``event.node`` failed: retire its origins if SWIM still
    says so of the same incarnation (it did not come back in between), or forgot it and the
    replicator has it down for that long."""
    gossip = membership.membership
    if gossip is None or not gossip.running or driver.stopping:
        return
    update = gossip.member(event.node)
    now = wall()
    if update is None:
        rep = driver.replicator
        down = None if rep is None else rep.down_since().get(event.node)
        if down is None or now - down < driver.settings.tombstone_ttl_ns:
            return
    elif update.status < Status.FAILED or update.incarnation != event.incarnation:
        return
    _retire(driver, event.node, now)


def _retire(driver: Any, node_id: str, now_ns: int) -> None:
    rep = driver.replicator
    if rep is not None:
        retire_member(rep, node_id, now_ns)
