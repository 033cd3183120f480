"""Value types shared by every layer: versions, stored entries and subscription events.

They are immutable and carry no behaviour beyond ordering, so the pure core, the storage and the
facades can pass them around freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

__all__ = ["Entry", "Event", "EventType", "RawEvent", "Version"]


class Version(NamedTuple):
    """The version of a write: ``(timestamp_ns, origin)``.

    Versions are totally ordered as tuples: the higher timestamp wins and equal timestamps are
    ordered by comparing the origin identities (Python ``str`` order, which is the byte order of
    their UTF-8 encoding and the order SQLite's BINARY collation uses). Every node therefore picks
    the same winner without coordination.
    """

    timestamp_ns: int
    origin: str
    """``node_id~incarnation``: the node that made the write and which open of its data
    directory (every open writes under a fresh origin, see docs/semantics.md)."""

    @property
    def node_id(self) -> str:
        """The id of the node that made the write (the origin without its incarnation)."""
        return self.origin.partition("~")[0]


EventType = Literal["put", "delete", "expired"]

RawEvent = tuple[str, str, "bytes | None", Version]
"""``(type, key, encoded value or None, version)``: an event as storage produces it, before the
subscriptions decode its value (only for subscribers that want it)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One change delivered to a subscriber.

    Attributes:
        type: ``"put"``, ``"delete"`` or ``"expired"``.
        key: the key that changed.
        value: the new value for ``"put"``; the value that was deleted (or ``None`` if there was
            none) for ``"delete"``; the value that expired for ``"expired"``.
        version: the version of the write (for ``"expired"``, the version of the expired put).
    """

    type: EventType
    key: str
    value: Any
    version: Version | None = None


class Entry(NamedTuple):
    """One version of one key as stored and replicated.

    ``value`` holds the encoded bytes, or ``None`` for a tombstone (a delete, or a put whose TTL
    has run out and that was turned into a tombstone). ``oseq`` is the per-origin, per-shard
    sequence number of the write: together with ``origin`` it names the write uniquely and
    forever (its "dot"), which is what replication progress is measured in.

    A named tuple rather than a dataclass: one is built for every replicated write, on both
    sides, and a tuple is three times cheaper to create.
    """

    key: str
    timestamp_ns: int
    origin: str
    oseq: int
    expires_at_ns: int | None
    value: bytes | None

    @property
    def version(self) -> Version:
        return Version(self.timestamp_ns, self.origin)

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    @property
    def deleted_at_ns(self) -> int | None:
        """When the key stopped existing, for tombstone purging: the delete's timestamp, or the
        expiry time of an expired put. ``None`` for a live entry."""
        if self.value is not None:
            return None
        return self.expires_at_ns if self.expires_at_ns is not None else self.timestamp_ns

    def is_visible(self, now_ns: int) -> bool:
        """True if a read at wall time ``now_ns`` returns this entry's value."""
        return self.value is not None and (self.expires_at_ns is None or self.expires_at_ns > now_ns)
