"""Last-writer-wins: the one merge rule of ekv.

A write carries a :class:`~ekv.Version` ``(timestamp_ns, origin)``. The entry with the higher
version wins; deletes are tombstone entries and follow the same rule. The SQL upsert in
:mod:`ekv._storage.schema` mirrors :func:`wins` exactly (``ts > old.ts OR (ts = old.ts AND
origin > old.origin)``); a test checks both agree.

Because versions are totally ordered and an entry is identified by its version, :func:`merge` is
commutative, associative and idempotent: any delivery order, with duplicates, converges.
"""

from __future__ import annotations

from ekv._model import Entry, Version

__all__ = ["merge", "wins"]


def wins(incoming: Version, current: Version | None) -> bool:
    """True if a write with version ``incoming`` replaces the stored ``current`` one.

    An equal version is not a win: re-applying the same write is a no-op.
    """
    return current is None or incoming > current


def merge(a: Entry | None, b: Entry | None) -> Entry | None:
    """The entry that survives when ``a`` and ``b`` (versions of the same key) meet."""
    if a is None:
        return b
    if b is None:
        return a
    assert a.key == b.key, (a.key, b.key)
    return b if wins(b.version, a.version) else a
