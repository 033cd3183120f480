"""Reach into a store for tests and tools, without widening the public API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from ekv._api.aio import AsyncEKV
from ekv._api.sync import EKV
from ekv._errors import ClosedError
from ekv._model import Entry
from ekv._node.node import Node
from ekv._storage.store import GcReport

__all__ = ["entries", "node_of", "partition", "run_gc", "wait_until"]


def node_of(kv: EKV | AsyncEKV) -> Node:
    """The :class:`~ekv._node.node.Node` behind a facade (an opened AsyncEKV)."""
    node = kv._node
    if node is None:
        raise ClosedError("the store is not open")
    return node


def run_gc(kv: EKV | AsyncEKV) -> GcReport:
    """Run one GC pass now (TTL expiry with events, tombstone purge, change-log truncation)."""
    return node_of(kv).run_gc()


def entries(kv: EKV | AsyncEKV) -> Iterator[Entry]:
    """Every stored entry, tombstones and expired puts included, shard by shard."""
    return node_of(kv).store.entries()


def partition(*groups: list[EKV]) -> None:
    """Cut a cluster of stores in this process into ``groups``: members of different groups drop
    their connections and refuse each other. ``partition([a, b, c])`` (one group) heals."""
    all_nodes = [kv for group in groups for kv in group]
    for group in groups:
        others = {node_of(kv).node_id for kv in all_nodes if kv not in group}
        for kv in group:
            cluster = node_of(kv).cluster
            if cluster is None:
                raise ValueError(f"{kv!r} is not clustered")
            cluster.set_blocked(others)


def wait_until(
    predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.01, message: str = ""
) -> None:
    """Poll ``predicate`` until it is true; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not reached within {timeout} s")
        time.sleep(interval)
