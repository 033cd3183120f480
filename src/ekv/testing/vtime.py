"""An asyncio event loop in virtual time: it never waits, it jumps to its next timer.

:class:`VirtualTimeLoop` is a real :class:`asyncio.SelectorEventLoop` whose clock
(:meth:`~VirtualTimeLoop.time`) is a number the loop advances itself: when nothing is ready, its
selector returns at once and moves the clock to the loop's next timer. ``asyncio.sleep(3600)``
takes no wall time, and code that runs only on the loop (timers, ``wait_for`` timeouts, the
:mod:`ekv.testing.memnet` network) runs in the same order on every run: with seeded randomness,
a run is a function of its seed.

It cannot wait for anything outside the loop: a thread that calls ``call_soon_threadsafe`` while
the loop has nothing ready may find the clock moved on (use it only for single-threaded runs), and
a file descriptor that becomes readable is seen only at the next turn (memnet has none).
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

__all__ = ["VirtualTimeLoop"]


class _VirtualSelector(selectors.BaseSelector):
    """Registers file objects like any selector, and on select() advances the loop's clock
    by the timeout instead of waiting."""

    def __init__(self) -> None:
        self._keys: dict[Any, selectors.SelectorKey] = {}
        self.loop: VirtualTimeLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, _fd(fileobj), events, data)
        self._keys[key.fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(_fd(fileobj))

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        if loop is not None and timeout is not None and timeout > 0:
            loop.advance(timeout)
        elif loop is not None and timeout is None:
            raise RuntimeError("the virtual-time loop has nothing scheduled: it would wait for ever")
        return []

    def close(self) -> None:
        self._keys.clear()

    def get_map(self) -> Any:
        return dict(self._keys)


def _fd(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock starts at ``start`` seconds and moves only when it would wait."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock on (the loop does this itself when it would wait)."""
        self._now += seconds
