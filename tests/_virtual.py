"""Running a test scenario in virtual time (``ekv.testing.vtime``), for the tests of the cluster
parts that run over ``ekv.testing.memnet``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from ekv.testing.vtime import VirtualTimeLoop


def run_virtual(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``scenario()`` to its end on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


async def until(predicate: Callable[[], bool], seconds: float, what: str) -> float:
    """Wait (virtual time) until ``predicate``; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > seconds:
            raise AssertionError(f"{what}: not within {seconds} virtual seconds")
        await asyncio.sleep(0.05)
    return loop.time() - start
