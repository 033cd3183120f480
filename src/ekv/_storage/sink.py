"""Where a shard sends the events of its committed writes (the subscriptions, through
:class:`ekv._node.bus.LocalSink` when other processes share the data directory)."""

from __future__ import annotations

from typing import Protocol

from ekv._model import RawEvent

__all__ = ["NO_EVENTS", "EventSink"]


class EventSink(Protocol):
    """Where a shard sends the events of committed writes (the subscription registry)."""

    @property
    def active(self) -> bool:
        """False when nobody subscribes: the write path then skips all event work."""

    def matches(self, key: str) -> bool: ...

    def publish(self, events: list[RawEvent]) -> None: ...


class _NoEvents:
    """The sink of a store nobody subscribes to (tools, the simulator, benchmarks)."""

    active = False

    def matches(self, key: str) -> bool:
        return False

    def publish(self, events: list[RawEvent]) -> None:
        pass


NO_EVENTS: EventSink = _NoEvents()
"""Where a store without subscribers sends events: nowhere (``active`` is False)."""
