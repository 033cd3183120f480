"""Version-vector compaction: origins that retired are dropped from every vector, by agreement.

Every open of a data directory writes under a fresh origin (SPEC 12), so without compaction a
shard's vector gains an entry per restart and per worker process, forever, and vectors travel
in every sync request, sync answer and summary digest.

The record. When an origin ``O`` stops writing into a shard (its open closed, or died and was
taken over: :func:`ekv._storage.writers.retire_origin`), the node that holds its final counter
``n`` writes, in the same transaction that puts ``O: n`` into the stored vector, a second entry
``marker(O): T`` (T: the wall time of the retirement). The marker *is* a vector entry: it travels
with ordinary replication and anti-entropy (sync answers carry vectors), is stored by the same
``VV_RAISE`` (max: a second retirement of the same origin only postpones the drop), and counts
in digests, so members agree on it like on any entry. No user key, no event, no wire change.

Why a marker implies the writes: a receiver raises its vector by a sync answer's vector only
after a complete sync (all of it at once), and the retiring node puts ``O: n`` and the marker
together, so every vector holding ``marker(O)`` also holds ``O >= n``: holding the record means
holding every write of ``O`` that its node had (members hold any tail a crash took back from it).

The drop. At ``T + tombstone_ttl + margin`` (:func:`margin_ns`) every node removes ``O`` and its
marker from its vectors (:func:`compact`), and from then on:

* a sync answer's vector omits them (:func:`effective`), and a received one is filtered the same
  way before it is merged (:func:`mergeable`), so the entry never comes back from a member whose
  clock is behind;
* a node serving a pull treats ``O`` as covered by the requester from ``T + tombstone_ttl`` on
  (:func:`cover`): a member that dropped ``O`` is not sent O's rows again (nor a full sync for
  O's truncated log). The ``margin`` between the two is there for clock skew: whoever dropped, its
  partners already cover (see docs/scale.md, step 4);
* digests are taken of the compacted vectors, so two members that dropped agree, and the
  transient difference while one has and the other has not yet dropped costs a pull that moves
  nothing.

Why it is safe: it is the tombstone rule (SPEC 7). A member that has not received O's writes
``tombstone_ttl`` after O retired has been away longer than ``tombstone_ttl`` and is stale or
quarantined anyway; within that time ordinary anti-entropy delivers them. Rows keep their origin
strings (versions still compare by ``(ts, origin)``); only the vector entry goes.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["PREFIX", "Compactor", "compact", "cover", "effective", "expired", "margin_ns", "marker", "retirable"]

PREFIX = "~retired~"
"""The marker of origin ``O`` is ``PREFIX + O``: no origin starts with ``~`` (``node_id~incarnation``
with a non-empty node id), so a marker never names a writer."""

MAX_ENTRY_BYTES = 255
"""The longest vector entry name the wire accepts (``ekv._cluster.wire.MAX_ORIGIN_BYTES``): an
origin whose marker would be longer is never compacted (:func:`retirable`)."""

NS_PER_S = 1_000_000_000
MAX_MARGIN_NS = 600 * NS_PER_S


def marker(origin: str) -> str:
    """The vector entry that records ``origin`` as retired (its value: when)."""
    return PREFIX + origin


def retirable(origin: str) -> bool:
    """Whether ``origin`` may be given a retirement marker."""
    return bool(origin) and not origin.startswith("~") and len(marker(origin).encode()) <= MAX_ENTRY_BYTES


def margin_ns(tombstone_ttl_ns: int) -> int:
    """How long after members start treating a retired origin as covered (``T + tombstone_ttl``)
    a node drops it (a tenth of ``tombstone_ttl``, at most 10 minutes): more than the clock skew
    between members, so a node that dropped is never sent the origin's rows by a member whose
    clock is behind."""
    return min(max(tombstone_ttl_ns, 0) // 10, MAX_MARGIN_NS)


def expired(vv: Mapping[str, int], cutoff_ns: int) -> set[str]:
    """The entries of ``vv`` to drop at ``cutoff_ns``: each marker whose time is at or before it,
    and the origin it marks."""
    out: set[str] = set()
    for key, when in vv.items():
        if key.startswith(PREFIX) and when <= cutoff_ns:
            out.add(key)
            out.add(key[len(PREFIX) :])
    return out


def effective(vv: Mapping[str, int], cutoff_ns: int) -> dict[str, int]:
    """``vv`` without the entries :func:`expired` drops."""
    gone = expired(vv, cutoff_ns)
    return {key: oseq for key, oseq in vv.items() if key not in gone}


def compact(vv: dict[str, int], cutoff_ns: int) -> set[str]:
    """Drop :func:`expired` entries from ``vv`` in place; returns what was dropped."""
    gone = expired(vv, cutoff_ns)
    for key in gone:
        vv.pop(key, None)
    return gone


def mergeable(incoming: Mapping[str, int], own: Mapping[str, int], cutoff_ns: int) -> dict[str, int]:
    """``incoming`` (a member's vector, about to be merged into ``own``) without what either
    vector's markers drop at ``cutoff_ns``: a member whose clock is behind does not bring back an
    origin this node dropped."""
    gone = expired(incoming, cutoff_ns) | expired(own, cutoff_ns)
    return {key: oseq for key, oseq in incoming.items() if key not in gone}


def cover(peer_vv: Mapping[str, int], own: Mapping[str, int], cutoff_ns: int) -> dict[str, int]:
    """The vector of a requester as a node serving it should read it: every origin that ``own``
    marks as retired at or before ``cutoff_ns`` counts as covered up to ``own``'s entry (the
    requester dropped it, or, if it never had its writes, is beyond ``tombstone_ttl``)."""
    out = dict(peer_vv)
    for key in expired(own, cutoff_ns):
        if not key.startswith(PREFIX) and own.get(key, 0) > out.get(key, 0):
            out[key] = own[key]
    return out


class Compactor:
    """Compacts a node's in-memory vectors (one per shard) when a marker comes due, not on every
    tick: it remembers the earliest drop time of the markers it has seen."""

    def __init__(self, tombstone_ttl_ns: int) -> None:
        self.delay_ns = tombstone_ttl_ns + margin_ns(tombstone_ttl_ns)
        """How long after its retirement an origin is dropped."""
        self._due = 0  # the first call scans

    def drop_cutoff(self, now_ns: int) -> int:
        """Markers at or before this time are dropped at ``now_ns``."""
        return now_ns - self.delay_ns

    def compact(self, vvs: list[dict[str, int]], now_ns: int) -> int:
        """Drop the entries due at ``now_ns`` from every vector; returns how many went."""
        if now_ns < self._due:
            return 0
        cutoff = self.drop_cutoff(now_ns)
        dropped = sum(len(compact(vv, cutoff)) for vv in vvs)
        pending = [when for vv in vvs for key, when in vv.items() if key.startswith(PREFIX)]
        self._due = min(pending) + self.delay_ns if pending else now_ns + self.delay_ns
        return dropped

    def mergeable(self, incoming: Mapping[str, int], own: Mapping[str, int], now_ns: int) -> dict[str, int]:
        """:func:`mergeable` at ``now_ns``; a marker that comes in is noted for its drop."""
        out = mergeable(incoming, own, self.drop_cutoff(now_ns))
        for key, when in out.items():
            if key.startswith(PREFIX):
                self._due = min(self._due, when + self.delay_ns)
        return out
