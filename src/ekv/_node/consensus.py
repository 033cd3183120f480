"""Where a linearizable operation runs (SPEC 13): the node's :class:`~ekv._linear.Engine`.

* This directory is the only voter (``cluster_size`` 1, the default without a cluster): the
  whole operation is one ``BEGIN IMMEDIATE`` transaction on the key's shard
  (:func:`ekv._storage.acceptor.single`), in whichever process calls it: SQLite's write lock
  orders it with every other process's operations on the directory, no network, no node process.
* Several voters: CASPaxos among them. The node process proposes (the cluster's
  :meth:`~ekv._cluster.cluster.ClusterNode.propose`); an attached process hands the operation
  to the node process over the local bus; an observer hands it to a voter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ekv._core.paxos import NoQuorum, Op, Outcome
from ekv._errors import ClosedError
from ekv._node.bus import BusClient
from ekv._storage.acceptor import Acceptor

if TYPE_CHECKING:
    from ekv._node.node import Node

__all__ = ["Consensus"]


class Consensus:
    """Runs linearizable operations for one node (thread-safe)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.acceptor = Acceptor(node.store)
        config = node.config
        self.single = config.voters == 1 and config.role == "voter"

    def run(self, op: Op, timeout_ns: int) -> Outcome:
        if self.single:
            return self.acceptor.single(op)
        node = self.node
        if node.role.is_node:
            cluster = node.cluster
            if cluster is None:
                raise ClosedError("the store is closed")
            return cluster.propose(op, timeout_ns)
        bus = node.role.bus
        if not isinstance(bus, BusClient):
            return NoQuorum()  # between two roles (a takeover): nothing was sent
        return bus.propose(op, timeout_ns)
