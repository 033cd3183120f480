"""Real cluster nodes over the in-memory network (ekv.testing.memnet): the network seam carries
everything, so membership, gossip, the handshake, sessions, the outbox and the replicator run as in
production, with no socket; cutting a link resets its sessions and healing it converges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ekv._cluster.cluster import ClusterNode
from ekv._cluster.runtime import runtime
from ekv._config import Config
from ekv._core.clock import HybridClock
from ekv._log import NodeLog
from ekv._storage.store import ShardedStore
from ekv.testing import wait_until
from ekv.testing.memnet import MemoryNetwork

HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
PORT = 7000


class _NoEvents:
    active = False

    def matches(self, key: str) -> bool:
        return False

    def publish(self, events: list[Any]) -> None:
        pass


class _Member:
    """A real store and a real ClusterNode on one host of the in-memory network."""

    def __init__(self, root: Path, net: MemoryNetwork, host: str, **options: Any) -> None:
        self.host = host
        config = Config.create(
            "mem",
            root / host,
            shards=2,
            listen=f"{host}:{PORT}",
            cookie="memnet-test",
            anti_entropy_interval=0.3,
            reconnect_max=0.2,
            log=False,
            **options,
        )
        self.store = ShardedStore.open(config, HybridClock(config.clock), _NoEvents())
        self.cluster = ClusterNode(config, self.store, NodeLog("mem", False), network=net.host(host))
        self.cluster.start()

    def members(self) -> set[str]:
        return set(self.cluster.call(lambda: list(self.cluster.sessions)))

    def get(self, key: str) -> Any:
        found = self.store.lookup(key)
        return None if found is None else found[0]

    def close(self) -> None:
        self.cluster.stop()
        self.store.close()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[MemoryNetwork, list[_Member]]]:
    net = MemoryNetwork()
    members: list[_Member] = []
    try:
        # each node knows only the first: gossip makes the full mesh
        for host in HOSTS:
            members.append(_Member(tmp_path, net, host, peers=[] if host == HOSTS[0] else [f"{HOSTS[0]}:{PORT}"]))
        yield net, members
    finally:
        for member in members:
            member.close()


def _full_mesh(members: list[_Member]) -> bool:
    return all(len(member.members()) == len(members) - 1 for member in members)


def test_three_nodes_replicate_over_the_in_memory_network_without_sockets(
    mesh: tuple[MemoryNetwork, list[_Member]],
) -> None:
    net, (a, b, c) = mesh
    wait_until(lambda: _full_mesh([a, b, c]), message="the nodes did not form a mesh through gossip")
    assert not runtime()._listeners, "a node over the in-memory network bound a socket"
    assert net.connections >= 3
    a.store.put("k", "from a")
    c.store.put("other", 3)
    wait_until(lambda: b.get("k") == "from a" and c.get("k") == "from a", message="a's write did not reach b and c")
    wait_until(lambda: a.get("other") == 3 and b.get("other") == 3)
    info = a.cluster.info()
    assert {m["state"] for m in info["members"].values()} == {"connected"}


def test_cutting_a_link_resets_it_and_healing_converges(mesh: tuple[MemoryNetwork, list[_Member]]) -> None:
    net, (a, b, c) = mesh
    wait_until(lambda: _full_mesh([a, b, c]))
    net.partition([a.host], [b.host, c.host])
    wait_until(lambda: not a.members() and b.members() == {c.cluster.node_id}, message="the cut did not end sessions")
    a.store.put("k", "a, cut off")
    b.store.put("k2", "b, cut off")
    wait_until(lambda: c.get("k2") == "b, cut off")
    assert b.get("k") is None and c.get("k") is None and a.get("k2") is None
    assert not a.members()  # the dialers keep being refused while the link is cut
    net.heal()
    wait_until(lambda: _full_mesh([a, b, c]), message="the nodes did not reconnect after the heal")
    for member in (a, b, c):
        wait_until(lambda m=member: m.get("k") == "a, cut off" and m.get("k2") == "b, cut off")  # type: ignore[misc]
