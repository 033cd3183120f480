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

Two steps, so that a node never has to guess whether a requester lacks an origin it dropped:

* *Settle*, at ``T + tombstone_ttl``: the vector's :data:`BASE` entry rises to ``T``
  (:func:`settle`, for each marker it holds). ``BASE: B`` says "every origin retired at or before
  B is covered here". A node serving a pull counts every origin it marks as retired at or before
  the requester's base as covered by it (:func:`cover`): its rows are not sent again.
* *Drop*, at ``T + tombstone_ttl + margin`` (:func:`margin_ns`; more than the clock skew between
  members, so a member in good standing has settled first): ``O`` and its marker leave the vector
  (:func:`compact`), and the stored shard drops O's change-log entries and floor. The shard
  remembers the latest retirement it dropped; a requester whose base is below it may lack rows
  that no delta can offer any more, so it gets a full sync (:func:`needs_full`): a new member, or
  one that never heard of a retirement.

After the drop a sync answer's vector omits them (:func:`effective`) and a received one is
filtered the same way before it is merged (:func:`mergeable`), so the entry never comes back from
a member whose clock is behind. Digests are taken of the compacted vectors, so members agree
again once each has dropped; the transient difference costs a pull that moves nothing.

Why it is safe: a node settles past ``T`` only holding ``marker(O)``, hence O's writes. The one
assumption is the tombstone rule's (SPEC 7): a member that settled past a later retirement while
lacking an earlier origin it never heard of has missed that origin's writes for longer than
``tombstone_ttl`` while connected, which anti-entropy does not allow; a member away that long is
stale or quarantined. Rows keep their origin strings (versions still compare by ``(ts,
origin)``); only the vector entry goes.

Nodes that leave for good. A node that never runs again (decommissioned, its data directory
deleted, or crashed for good) retires nothing the others hear of: its own marker, if it closed
cleanly, is in its files only. The members write the markers for it
(:mod:`ekv._cluster.departed`): when SWIM says it *left*, at once; when SWIM has said *failed* of
the same incarnation for ``tombstone_ttl`` (it would be quarantined if it came back, SPEC 7), then.
Each member that hears it marks every origin of that node id (``node_id~incarnation``) in its
vectors that has no marker yet, with ``T`` = its own now and next to the highest counter it holds.
Why that ``T``, and why a member holding a higher counter loses nothing: the node is gone, so each
of its writes that survives is held by some member at ``T``; members connected to it pull them
within ``tombstone_ttl`` (their vectors differ on ``O``), before anyone settles past ``T``, the rule
above. Markers merge by max, so members that mark at once agree on the latest ``T``, and one that
dropped on an earlier one takes it back with a merge and drops again. A node never merges a marker
of its own live origin (the replicator's merge), in case a late "left" marked an origin its node
took up again.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "BASE",
    "PREFIX",
    "Compactor",
    "compact",
    "cover",
    "effective",
    "expired",
    "margin_ns",
    "marker",
    "mergeable",
    "needs_full",
    "retirable",
    "settle",
]

PREFIX = "~retired~"
"""The marker of origin ``O`` is ``PREFIX + O``: no origin starts with ``~`` (``node_id~incarnation``
with a non-empty node id), so a marker never names a writer."""

BASE = "~base~"
"""The entry that says up to which retirement time every retired origin is covered (see above)."""

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
    """How long after members settle past a retired origin (``T + tombstone_ttl``) they drop it (a
    tenth of ``tombstone_ttl``, at most 10 minutes): more than the clock skew between members, so
    when a node drops an origin, a member in good standing has settled past it (it is neither sent
    the origin's rows again nor given a full sync)."""
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


def settle(vv: dict[str, int], cutoff_ns: int) -> bool:
    """Raise ``vv``'s :data:`BASE` to the latest retirement it marks at or before ``cutoff_ns``
    (``now - tombstone_ttl``); returns whether it rose."""
    base = vv.get(BASE, 0)
    top = max((when for key, when in vv.items() if key.startswith(PREFIX) and when <= cutoff_ns), default=0)
    if top > base:
        vv[BASE] = top
        return True
    return False


def cover(peer_vv: Mapping[str, int], own: Mapping[str, int]) -> dict[str, int]:
    """The vector of a requester as a node serving it should read it: every origin that ``own``
    marks as retired at or before the requester's :data:`BASE` counts as covered up to ``own``'s
    entry (the requester settled past it, and may have dropped it)."""
    out = dict(peer_vv)
    base = peer_vv.get(BASE, 0)
    for key, when in own.items():
        if key.startswith(PREFIX) and when <= base:
            origin = key[len(PREFIX) :]
            if own.get(origin, 0) > out.get(origin, 0):
                out[origin] = own[origin]
    return out


def needs_full(peer_vv: Mapping[str, int], dropped_ns: int) -> bool:
    """Whether a requester must get a full sync: its :data:`BASE` is below the latest retirement
    the serving shard dropped (``dropped_ns``), so it may lack rows of an origin whose change-log
    entries are gone."""
    return peer_vv.get(BASE, 0) < dropped_ns


class Compactor:
    """Settles and compacts a node's in-memory vectors (one per shard) when a marker comes due,
    not on every tick: it remembers the earliest time one is due."""

    def __init__(self, tombstone_ttl_ns: int) -> None:
        self.ttl_ns = tombstone_ttl_ns
        self.delay_ns = tombstone_ttl_ns + margin_ns(tombstone_ttl_ns)
        """How long after its retirement an origin is dropped."""
        self._due = 0  # the first call scans

    def drop_cutoff(self, now_ns: int) -> int:
        """Markers at or before this time are dropped at ``now_ns``."""
        return now_ns - self.delay_ns

    def compact(self, vvs: list[dict[str, int]], now_ns: int) -> int:
        """Settle and drop what is due at ``now_ns`` in every vector; returns how many entries went."""
        if now_ns < self._due:
            return 0
        dropped = 0
        for vv in vvs:
            settle(vv, now_ns - self.ttl_ns)
            dropped += len(compact(vv, self.drop_cutoff(now_ns)))
        due = (self._next(vv, key, when) for vv in vvs for key, when in vv.items() if key.startswith(PREFIX))
        self._due = min(due, default=now_ns + self.ttl_ns)  # (markers merged later lower it: mergeable)
        return dropped

    def _next(self, vv: Mapping[str, int], key: str, when: int) -> int:
        """When the marker ``key: when`` is next due: its settling, then its drop."""
        return when + (self.ttl_ns if when > vv.get(BASE, 0) else self.delay_ns)

    def note(self, when_ns: int) -> None:
        """A marker of time ``when_ns`` entered a vector (merged, or written for a member that left
        for good: :mod:`ekv._cluster.departed`): be due at its settling."""
        self._due = min(self._due, when_ns + self.ttl_ns)

    def mergeable(self, incoming: Mapping[str, int], own: Mapping[str, int], now_ns: int) -> dict[str, int]:
        """:func:`mergeable` at ``now_ns``; a marker that comes in is noted for its settling."""
        out = mergeable(incoming, own, self.drop_cutoff(now_ns))
        for key, when in out.items():
            if key.startswith(PREFIX):
                self.note(when)
        return out
