"""Version vectors: how replication progress is measured, in the dots of the writes themselves.

Every write carries a *dot* ``(origin, oseq)``: the node that made it and that node's dense,
per-shard sequence number. A dot names exactly one write, on every node, forever, so progress
measured in dots can be compared between any two nodes. (The original library measured progress
in each node's local change-log positions and compared positions from different nodes; that
skipped writes after skewed merges. Nothing here ever compares two nodes' local positions.)

A version vector ``vv`` of a shard maps origin -> n, meaning: every write of that origin with
oseq <= n is *covered* here, i.e. applied, or superseded by a write with a higher version of the
same key. A missing origin means 0.

Facts the sync protocol relies on (see docs/architecture.md for the argument):

* A sync from S to R that sends every current row of S whose dot R does not cover, read from one
  snapshot, lets R raise its vector to ``merge(vv_R, vv_S_snapshot)``.
* S can find those rows from its change log when, for every origin, the log still holds every
  entry above what R covers: ``floor_S[origin] <= vv_R[origin]`` (:func:`log_covers`).
  Otherwise S sends every live row and recent tombstone (a full sync).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["Ahead", "advance", "covered", "log_covers", "merge", "truncation_targets"]

VV = Mapping[str, int]


def covered(vv: VV, origin: str, oseq: int) -> bool:
    """True if the write ``(origin, oseq)`` is covered by ``vv``."""
    return oseq <= vv.get(origin, 0)


def merge(a: VV, b: VV) -> dict[str, int]:
    """The pointwise maximum of two vectors."""
    out = dict(a)
    for origin, oseq in b.items():
        if oseq > out.get(origin, 0):
            out[origin] = oseq
    return out


def log_covers(floors: VV, peer_vv: VV) -> bool:
    """True if a change log truncated at ``floors`` still holds every write the peer lacks."""
    return all(floor <= peer_vv.get(origin, 0) for origin, floor in floors.items() if floor > 0)


def advance(vv: dict[str, int], origin: str, oseqs: Iterable[int]) -> int | None:
    """Raise ``vv[origin]`` through consecutive oseqs (writes of one origin in order, as the
    origin sends them). Returns the new value if it moved, else None. A gap stops the advance:
    the missing write must come from a sync before the vector may claim it."""
    current = vv.get(origin, 0)
    start = current
    for oseq in oseqs:
        if oseq == current + 1:
            current = oseq
        elif oseq > current + 1:
            break
    if current == start:
        return None
    vv[origin] = current
    return current


class Ahead:
    """The dots of one shard applied beyond a gap in its vector, so the vector can pass them once
    the gap is filled.

    Why: writes of one origin arrive in order over its own session, but a broadcast tree
    (:mod:`ekv._cluster.broadcast`) may deliver oseq 7 before 6, when 6 came by a graft. 7 is
    applied at once, but the vector may not claim it before 6 (:func:`advance` stops at a gap);
    without this, the vector stayed at 5 after 6 arrived, and anti-entropy sent 7 again. Kept in
    memory only (a restart forgets them: anti-entropy then fills in, as before) and at most
    :attr:`LIMIT` dots per origin (beyond that the highest are forgotten, same fallback)."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._held: dict[str, set[int]] = {}

    def raised(self, vv: Mapping[str, int], by_origin: Mapping[str, list[int]]) -> dict[str, int]:
        """Per origin, how far ``vv`` may rise once the writes ``by_origin`` (their oseqs in
        order) are applied: :func:`advance` through them and the dots held for that origin."""
        trial = dict(vv)
        out: dict[str, int] = {}
        for origin, oseqs in by_origin.items():
            held = self._held.get(origin)
            new = advance(trial, origin, sorted(held.union(oseqs)) if held else oseqs)
            if new is not None:
                out[origin] = new
        return out

    def hold(self, vv: Mapping[str, int], by_origin: Mapping[str, list[int]]) -> None:
        """Once the writes ``by_origin`` (their oseqs in order) are applied: keep the dots the
        vector ``vv`` did not reach, and drop the ones it passed."""
        for origin, oseqs in by_origin.items():
            top = vv.get(origin, 0)
            if origin not in self._held and (not oseqs or oseqs[-1] <= top):
                continue  # the usual case: in order, nothing held (no set built per message)
            held = {oseq for oseq in self._held.get(origin, ()) if oseq > top}
            held.update(oseq for oseq in oseqs if oseq > top)
            if len(held) > self.LIMIT:
                held = set(sorted(held)[: self.LIMIT])
            if held:
                self._held[origin] = held
            else:
                self._held.pop(origin, None)


def truncation_targets(own: VV, reports: Iterable[VV]) -> dict[str, int]:
    """Per origin, how far the change log may be truncated: what every reporting peer covers,
    and never beyond what this node itself covers. With no reports, everything this node
    covers may go (nobody can ask for a delta)."""
    targets = dict(own)
    for report in reports:
        for origin in list(targets):
            targets[origin] = min(targets[origin], report.get(origin, 0))
    return {origin: oseq for origin, oseq in targets.items() if oseq > 0}
