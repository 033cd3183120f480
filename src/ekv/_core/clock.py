"""Wall clocks and the hybrid logical clock (HLC) that stamps every write.

The HLC gives each node timestamps in nanoseconds that

* never go backwards and never repeat, even if the wall clock steps back;
* stay close to the wall clock (they only run ahead of it after seeing a timestamp from the
  future, and then by at most that much);
* respect causality: after a node has applied (observed) a version with timestamp ``t``, every
  later local write gets a timestamp greater than ``t``, whatever the skew between machines.

The wall clock is injected (:class:`WallClock`) so tests and the simulator control time.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["HybridClock", "SystemClock", "WallClock"]


@runtime_checkable
class WallClock(Protocol):
    """Anything with a ``now_ns()`` returning wall-clock time in nanoseconds since the epoch."""

    def now_ns(self) -> int: ...


class SystemClock:
    """The real wall clock: ``time.time_ns()``."""

    __slots__ = ()

    def now_ns(self) -> int:
        return time.time_ns()

    def __repr__(self) -> str:
        return "SystemClock()"


class HybridClock:
    """A thread-safe hybrid logical clock over an injectable wall clock.

    ``tick()`` issues a timestamp for a local write: ``max(wall, last + 1)``. ``observe(ts)``
    records a timestamp seen on an applied remote write so the next ``tick()`` exceeds it.
    """

    __slots__ = ("_lock", "_wall", "last_ns", "wall")

    def __init__(self, wall: WallClock, floor_ns: int = 0) -> None:
        self.wall = wall
        self._wall = wall.now_ns
        self.last_ns = floor_ns
        """The highest timestamp issued or observed so far. Read it freely; only :meth:`tick` and
        :meth:`observe` change it (a plain attribute: every point read compares against it)."""
        self._lock = threading.Lock()

    def tick(self) -> int:
        """A new timestamp, strictly greater than every earlier one issued or observed."""
        with self._lock:
            now = self._wall()
            last = self.last_ns + 1
            if now > last:
                last = now
            self.last_ns = last
            return last

    def observe(self, timestamp_ns: int) -> None:
        """Record a timestamp seen on an applied write (local history or a peer)."""
        with self._lock:
            if timestamp_ns > self.last_ns:
                self.last_ns = timestamp_ns
