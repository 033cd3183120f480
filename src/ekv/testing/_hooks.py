"""Reach into a store for tests and tools, without widening the public API.

Partitions (:func:`partition`, :func:`cut_off`) are made here, outside the production classes:
ekv has no switch for them, no option and no command a peer or a client could send. The first
cut of a node wraps, on that one instance, the method every new member session passes through
before it is registered (``MemberSet.establish``, for dialed and accepted connections alike);
the wrapper refuses the members the node is cut off from, and the cut closes the sessions it
already has with them. A process that never calls these helpers runs ekv's code untouched.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ekv._api.aio import AsyncEKV
from ekv._api.sync import EKV
from ekv._cluster.cluster import ClusterNode
from ekv._errors import ClosedError
from ekv._model import Entry
from ekv._node.node import Node
from ekv._storage.store import GcReport

__all__ = ["cut_off", "entries", "node_of", "partition", "run_gc", "wait_until"]

_CUT_REASON = "cut off by ekv.testing (a test partition)"


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
        others = {node_of(kv).node_id for kv in all_nodes if not any(kv is member for member in group)}
        for kv in group:
            cut_off(kv, others)


def cut_off(kv: EKV | AsyncEKV, node_ids: Iterable[str]) -> None:
    """Cut ``kv`` off from the members ``node_ids``, as seen from ``kv``: its sessions with them
    are closed and new ones (dialed or accepted) refused, until the next call replaces the set
    (``cut_off(kv, ())`` heals). One-sided, so asymmetric and non-transitive partitions can be
    made; :func:`partition` calls it on every member."""
    cluster = node_of(kv).cluster
    if cluster is None:
        raise ValueError(f"{kv!r} is not clustered")
    blocked = frozenset(node_ids)

    def apply() -> None:  # on the loop thread, where sessions are made and closed
        _Cut.of(cluster).blocked = blocked
        for node_id, session in list(cluster.sessions.items()):
            if node_id in blocked:
                session.close(_CUT_REASON)

    cluster.call(apply)


class _Cut:
    """The members one cluster node is cut off from, and the wrapper that enforces it."""

    def __init__(self) -> None:
        self.blocked: frozenset[str] = frozenset()

    @classmethod
    def of(cls, cluster: ClusterNode) -> _Cut:
        cut = _installed.get(cluster)
        if cut is None:
            cut = _installed[cluster] = cls()
            members = cluster.members
            establish = members.establish
            state = cut

            def establish_unless_cut(session: Any) -> bool:
                if session.peer_id in state.blocked:
                    session.close(_CUT_REASON)
                    return False
                return establish(session)

            # An instance attribute shadows the method for this node only.
            setattr(members, "establish", establish_unless_cut)  # noqa: B010
        return cut


def wait_until(
    predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.01, message: str = ""
) -> None:
    """Poll ``predicate`` until it is true; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not reached within {timeout} s")
        time.sleep(interval)


_installed: weakref.WeakKeyDictionary[ClusterNode, _Cut] = weakref.WeakKeyDictionary()
"""The cut of every node that was ever cut (or healed) in this process."""
