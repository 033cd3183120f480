"""Duplicate node identities: two live processes that run under one node id.

That happens when a data directory is copied while closed and both copies run: a VM snapshot, a
container image with baked data, a backup restored on a second machine next to the original.
The data itself is safe whatever happens here, because every open of a data directory writes
under its own origin (``node_id~incarnation``, see :meth:`ekv._storage.store.ShardedStore.open`),
so the two copies never issue the same dot or the same version. What breaks is membership: every
member keeps one session per node id, so one copy would be shut out of the cluster for ever.

So each member compares, after authentication, the origin a new session announces with the one
the existing session of that node id announced:

* a copy of *this* node (the peer's node id is ours, with another origin): the process with the
  greater origin takes a new node id, the other one keeps its own (both sides decide alike);
* a copy of another member: if the existing session is alive (it received something within a
  couple of heartbeat intervals), the newcomer is told it duplicates a live member and takes a
  new node id; if the existing session is silent, the newcomer is that member restarted and
  replaces it.

Taking a new node id keeps the data (:meth:`~ekv._storage.store.ShardedStore.reidentify`); the
old id stays in the manifest's ``former_ids``. Everything here is a pure decision; the cluster
(:mod:`ekv._cluster.cluster`) acts on it.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Verdict", "on_copy_of_us", "on_second_session"]

_SILENT_HEARTBEATS = 2.5
"""A session that received nothing for this many heartbeat intervals may belong to a process
that is gone (its replacement is connecting)."""


class Verdict(Enum):
    KEEP = "keep"
    """Not a duplicate (or not one we can tell): the usual rules apply."""
    REIDENTIFY_SELF = "reidentify_self"
    """This process takes a new node id."""
    DROP = "drop"
    """Close the new session; the other process takes a new node id."""
    TELL_NEWCOMER = "tell_newcomer"
    """Tell the new session's process that it duplicates a live member, and close it."""
    REPLACE = "replace"
    """The existing session belongs to a process that is gone: the new one replaces it."""


def on_copy_of_us(my_origin: str, their_origin: str) -> Verdict:
    """A member announced our own node id with another origin."""
    if not their_origin or their_origin == my_origin:
        return Verdict.KEEP  # ourselves (refused by the handshake), or an ekv 0.1 peer
    return Verdict.REIDENTIFY_SELF if my_origin > their_origin else Verdict.DROP


def on_second_session(
    existing_origin: str, new_origin: str, *, silent_for_s: float, heartbeat_interval_s: float
) -> Verdict:
    """A new session arrived for a node id that has a session already."""
    if not existing_origin or not new_origin or existing_origin == new_origin:
        return Verdict.KEEP  # the same process connecting twice (both dialed), or ekv 0.1
    if silent_for_s > _SILENT_HEARTBEATS * heartbeat_interval_s:
        return Verdict.REPLACE
    return Verdict.TELL_NEWCOMER
