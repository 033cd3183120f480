"""A wall clock under the test's control."""

from __future__ import annotations

import threading
from datetime import timedelta

from ekv._core.durations import NS_PER_S

__all__ = ["FakeClock"]

_DEFAULT_START_NS = 1_767_225_600 * NS_PER_S  # 2026-01-01T00:00:00Z


class FakeClock:
    """A wall clock that only moves when told to. Thread-safe.

    ``FakeClock()`` starts at 2026-01-01 UTC; ``advance(seconds)`` moves it forward and
    ``set_ns(ns)`` jumps anywhere, backwards included (to test that ekv's clock never goes back).
    """

    def __init__(self, start_ns: int = _DEFAULT_START_NS) -> None:
        self._now = start_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        return self._now

    def advance(self, seconds: float | timedelta) -> int:
        """Move forward by ``seconds``; return the new time in ns."""
        delta = seconds.total_seconds() if isinstance(seconds, timedelta) else seconds
        with self._lock:
            self._now += round(delta * NS_PER_S)
            return self._now

    def set_ns(self, now_ns: int) -> None:
        with self._lock:
            self._now = now_ns

    def __repr__(self) -> str:
        return f"FakeClock({self._now})"
