"""Summary anti-entropy for large clusters: the pure parts (digests, partner rotation).

In a cluster of a few nodes, every node pulls every shard from every member each
``anti_entropy_interval`` (:mod:`ekv._cluster.replicator`): 2 x shards x (N-1) messages per node
per interval even when nothing differs, which grows with N. From :data:`SUMMARY_MIN_MEMBERS`
connected members on, a round instead probes ONE member, chosen by :class:`Rotation`, with a
:class:`~ekv._cluster.messages.Summary` (a digest of each shard's version vector); the member
answers with a :class:`~ekv._cluster.messages.SummaryDiff` naming the shards whose digests differ,
and both pull only those. Idle, a node sends one probe and one answer per round on average
(it is probed about once per round too): independent of N. Repair costs what differs.

Equal version vectors mean equal coverage: a vector is raised only by writes applied in oseq order
or by a complete sync, so two members with the same vector hold the same writes (rows that differ
under equal vectors are damage, which the repair pulls handle). The digest compares them in 8
bytes; a collision (2^-64 per shard and probe) only delays a repair to a later round with
another member, it never records a write as covered.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["SUMMARY_MIN_MEMBERS", "Rotation", "differing", "digest"]

SUMMARY_MIN_MEMBERS = 8
"""From this many connected members on (a cluster of 9 nodes or more), anti-entropy probes one
member per round; below it, every member is pulled every round, as it always was (cheap there, and
a partitioned pair repairs within one interval)."""


def digest(vv: Mapping[str, int]) -> bytes:
    """8 bytes that are equal for equal version vectors (entries at 0 count as absent)."""
    h = hashlib.blake2b(digest_size=8)
    for origin in sorted(vv):
        oseq = vv[origin]
        if oseq > 0:
            h.update(origin.encode())
            h.update(b"\x00" + oseq.to_bytes(8, "big"))
    return h.digest()


def differing(mine: Sequence[bytes], theirs: Sequence[bytes]) -> tuple[int, ...]:
    """The shards (ascending) whose digests differ."""
    return tuple(shard for shard, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b)


BACK_QUEUE = 4
"""Members back from a partition that wait for an extra round (:meth:`Rotation.back`)."""


class Rotation:
    """Partners for anti-entropy rounds: a shuffled round-robin.

    Each pass visits every eligible member once, in an order shuffled anew per pass, so a member
    connected throughout is chosen once in every pass (at most 2N-2 rounds apart), where a
    uniform random choice would leave some unvisited for long (the coupon collector). Members
    that left or became ineligible are skipped; new ones join the next pass."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._pass: list[str] = []
        self._back: dict[str, None] = {}  # (ordered: first back, first probed)
        self._extra: str | None = None  # the last extra round's partner
        self.next_back_ns = 0
        """Earliest time of the next extra round with a member back (at most one a second)."""

    def back(self, member: str) -> None:
        """``member`` is back (SWIM saw it alive again after a suspicion or a failure, or its failed
        session can be dialed again: :class:`~ekv._cluster.ondemand.OnDemand`): an extra round
        with it is due. In large mode nothing else carries writes made on the other side of a
        healed partition before the next regular round (``anti_entropy_interval``, 30 s by
        default): with each node probing one member back a second, they spread within a few
        seconds, as an epidemic does (docs/scale.md). At most :data:`BACK_QUEUE` wait: after a heal
        of two halves each node sees half the cluster back, and a few exchanges across the cut
        each already carry the other side's writes to every node (the rest is the epidemic)."""
        if len(self._back) < BACK_QUEUE:
            self._back[member] = None

    def in_sync(self, member: str) -> None:
        """A round found ``member`` with the same data: if it was an extra round's partner, forget
        the members back that wait for one. After a heal the exchanges across the cut stop once
        this node meets a member back that already has everything (the rest of the repair is
        other nodes', an epidemic); members SWIM reports back later still queue."""
        if member == self._extra:
            self._extra = None
            self._back.clear()

    def next_back(self, eligible: Iterable[str], now_ns: int, gap_ns: int) -> str | None:
        """The first member back that is still eligible (forgetting those that are not), if the
        last extra round was ``gap_ns`` ago or more; None otherwise."""
        if not self._back or now_ns < self.next_back_ns:
            return None
        members = set(eligible)
        while self._back:
            member = next(iter(self._back))
            del self._back[member]
            if member in members:
                self.next_back_ns = now_ns + gap_ns
                self._extra = member
                return member
        return None

    def next(self, eligible: Iterable[str]) -> str | None:
        """The next partner among ``eligible`` (None if there is none)."""
        members = set(eligible)
        while self._pass:
            candidate = self._pass.pop()
            if candidate in members:
                return candidate
        if not members:
            return None
        self._pass = sorted(members)  # sorted first: the same seed gives the same order
        self._rng.shuffle(self._pass)
        return self._pass.pop()
