"""Reach into a store for tests and tools, without widening the public API."""

from __future__ import annotations

from collections.abc import Iterator

from ekv._api.aio import AsyncEKV
from ekv._api.sync import EKV
from ekv._errors import ClosedError
from ekv._model import Entry
from ekv._node.node import Node
from ekv._storage.store import GcReport

__all__ = ["entries", "node_of", "run_gc"]


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
