"""Real cluster nodes over the in-memory network (ekv.testing.memnet): the network seam carries
everything, so membership, gossip, the handshake, sessions, the outbox and the replicator run as in
production, with no socket; cutting a link resets its sessions and healing it converges."""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ekv._cluster.cluster import ClusterNode
from ekv._cluster.runtime import runtime
from ekv._config import Config
from ekv._core.clock import HybridClock
from ekv._log import NodeLog
from ekv._storage.store import ShardedStore
from ekv._values import Values
from ekv.testing import wait_until
from ekv.testing.memnet import MemoryNetwork
from ekv.testing.vtime import VirtualTimeLoop

HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
PORT = 7000


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
        self.store = Values(ShardedStore.open(config, HybridClock(config.clock)))
        self.cluster = ClusterNode(config, self.store.store, NodeLog("mem", False), network=net.host(host))
        self.cluster.start()

    def members(self) -> set[str]:
        return set(self.cluster.call(lambda: list(self.cluster.sessions)))

    def get(self, key: str) -> Any:
        found = self.store.lookup(key)
        return None if found is None else found[0]

    def close(self) -> None:
        self.cluster.stop()
        self.store.store.close()


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


# -- the same real nodes in virtual time -------------------------------------------------------------


class _LoopClock:
    """A node's wall clock: the virtual loop's time, from a fixed epoch, with a skew."""

    EPOCH_NS = 1_800_000_000 * 10**9

    def __init__(self, loop: asyncio.AbstractEventLoop, skew_ns: int) -> None:
        self._loop = loop
        self._skew_ns = skew_ns

    def now_ns(self) -> int:
        return self.EPOCH_NS + self._skew_ns + int(self._loop.time() * 1e9)


async def _virtual_run(root: Path, seed: int) -> tuple[float, int, list[list[float]], list[list[tuple[str, Any, Any]]]]:
    """Three real ClusterNodes over memnet, one thread, virtual time: writes, a partition, a heal.
    Returns the virtual time when it converged, the connections made, when the sessions started,
    and every node's entries."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    net = MemoryNetwork()
    nodes: list[tuple[Values, ClusterNode]] = []
    for i, host in enumerate(HOSTS):
        clock = _LoopClock(loop, rng.randrange(-50, 50) * 10**6)
        config = Config.create(
            "vt",
            root / f"{seed}-{host}",
            shards=2,
            listen=f"{host}:{PORT}",
            peers=[] if i == 0 else [f"{HOSTS[0]}:{PORT}"],
            cookie="memnet-test",
            anti_entropy_interval=1.0,
            reconnect_max=0.5,
            log=False,
            clock=clock,
        )
        store = Values(
            ShardedStore.open(config, HybridClock(clock), new_node_id=f"{seed:08x}{i:08x}", incarnation=f"{i:08x}")
        )
        cluster = ClusterNode(
            config, store.store, NodeLog("vt", False), network=net.host(host), rng=random.Random(rng.random())
        )
        await cluster.open()
        nodes.append((store, cluster))

    async def until(predicate: Callable[[], bool], what: str) -> None:
        deadline = loop.time() + 120
        while not predicate():
            assert loop.time() < deadline, f"seed {seed}: {what} within 120 virtual seconds"
            await asyncio.sleep(0.05)

    def states() -> list[list[tuple[str, Any, Any]]]:
        return [sorted((k, *store.lookup(k)) for k in store.keys("")) for store, _ in nodes]  # type: ignore[misc]

    await until(lambda: all(len(c.sessions) == 2 for _, c in nodes), "no full mesh")
    for step in range(60):
        if step == 20:
            net.partition([HOSTS[0]], HOSTS[1:])
        if step == 40:
            await asyncio.sleep(30)  # half a minute of refused reconnects, heartbeats, pulls: no wall time
            assert not nodes[0][1].sessions and len(nodes[1][1].sessions) == 1, "the partition did not hold"
            net.heal()
        store = nodes[rng.randrange(3)][0]
        store.put(f"k{rng.randrange(15)}", step)
        await asyncio.sleep(rng.uniform(0, 0.2))
    await until(
        lambda: all(len(c.sessions) == 2 for _, c in nodes) and states()[0] == states()[1] == states()[2],
        "no convergence",
    )
    # when each session started: the reconnects after the heal follow the seeded backoff jitter
    started = [sorted(session.started_at for session in c.sessions.values()) for _, c in nodes]
    result = loop.time(), net.connections, started, states()
    for store, cluster in nodes:
        await cluster.aclose()
        store.store.close()
    return result


def test_real_cluster_nodes_converge_in_virtual_time_and_replay_exactly(tmp_path: Path) -> None:
    """The real membership, session, outbox and replicator code on a VirtualTimeLoop: minutes of
    cluster time (heartbeats, backoff, anti-entropy) pass without waiting, and a seed replays exactly."""
    runs = []
    for attempt in range(2):
        loop = VirtualTimeLoop()
        try:
            runs.append(loop.run_until_complete(_virtual_run(tmp_path / str(attempt), seed=7)))
        finally:
            loop.close()
    assert runs[0][3], "nothing was written"
    assert runs[0] == runs[1], "the same seed ran differently"


# -- a node that took a new node id keeps replicating ------------------------------------------------


async def _reidentified_run(root: Path) -> None:
    """A hub and two nodes started from byte copies of one data directory, over memnet in virtual
    time: one copy takes a new node id (a new Replicator), and a write whose live message never
    went out must still reach it, which only its periodic anti-entropy pulls can do."""
    loop = asyncio.get_running_loop()
    clock = _LoopClock(loop, 0)
    net = MemoryNetwork()

    def config(name: str, host: str, peers: list[str]) -> Config:
        return Config.create(
            "re",
            root / name,
            shards=2,
            listen=f"{host}:{PORT}",
            peers=peers,
            cookie="memnet-test",
            anti_entropy_interval=1.0,
            reconnect_max=0.5,
            log=False,
            clock=clock,
        )

    hub_peer = [f"{HOSTS[0]}:{PORT}"]
    ShardedStore.open(config("copy1", HOSTS[1], hub_peer), HybridClock(clock)).close()
    shutil.copytree(root / "copy1", root / "copy2")  # a VM snapshot, a container image with baked data
    nodes: list[tuple[Values, ClusterNode]] = []
    for name, host, peers in (("hub", HOSTS[0], []), ("copy1", HOSTS[1], hub_peer), ("copy2", HOSTS[2], hub_peer)):
        cfg = config(name, host, peers)
        store = Values(ShardedStore.open(cfg, HybridClock(clock)))
        cluster = ClusterNode(
            cfg, store.store, NodeLog("re", False), network=net.host(host), rng=random.Random(len(nodes))
        )
        await cluster.open()
        nodes.append((store, cluster))
    shared_id = nodes[1][1].node_id
    assert nodes[2][1].node_id == shared_id

    async def until(predicate: Callable[[], bool], what: str, within: float = 120) -> None:
        deadline = loop.time() + within
        while not predicate():
            assert loop.time() < deadline, f"{what} within {within} virtual seconds"
            await asyncio.sleep(0.05)

    try:
        await until(
            lambda: len({c.node_id for _, c in nodes}) == 3 and all(len(c.sessions) == 2 for _, c in nodes),
            "the duplicate node id was not resolved into a full mesh",
        )
        (hub_store, hub), (kept_store, kept), (renamed_store, renamed) = sorted(
            nodes, key=lambda n: (n[1] is not nodes[0][1], n[1].node_id != shared_id)
        )
        assert kept.node_id == shared_id and renamed.node_id != shared_id
        rep = renamed.replicator
        assert rep is not None and rep.node_id == renamed.node_id, "the replicator did not restart with the new id"
        await asyncio.sleep(5)  # the pulls at the start of the new sessions are long done

        def syncs_finished() -> int:
            return sum(
                peer["syncs_in"]["delta"] + peer["syncs_in"]["full"] for peer in renamed.driver.rep.peer_info().values()
            )

        before = syncs_finished()
        applied = rep.stats["sync_entries_applied"]
        # a write on the hub whose live message is lost: no session ends, so no new session's
        # pull repairs it; only the members' periodic anti-entropy pulls do
        for shard in hub_store.store.shards:
            shard.outbox = None
        hub_store.put("hidden", "only anti-entropy delivers this")
        for shard in hub_store.store.shards:
            shard.outbox = hub.driver.on_local_writes
        await until(lambda: kept_store.lookup("hidden") is not None, "the copy that kept its id did not get the write")
        await until(
            lambda: renamed_store.lookup("hidden") is not None,
            "the re-identified node never pulled the write (its new replicator is not ticked)",
            within=30,
        )
        assert renamed.replicator is rep
        assert rep.stats["sync_entries_applied"] > applied
        await asyncio.sleep(5)
        assert syncs_finished() >= before + 4, "the re-identified node's periodic pulls stopped"
    finally:
        for store, cluster in nodes:
            await cluster.aclose()
            store.store.close()


def test_a_node_that_took_a_new_node_id_keeps_running_anti_entropy(tmp_path: Path) -> None:
    """Regression: the driver's tick loop kept the replicator it started with, so after a node took
    a new node id (a duplicate identity) its new replicator was never ticked and anti-entropy
    stopped there."""
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(_reidentified_run(tmp_path))
    finally:
        loop.close()
