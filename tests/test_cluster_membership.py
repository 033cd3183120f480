"""The cluster running SWIM membership (src/ekv/_cluster/membership.py; issue 15 step 1): every
listening ClusterNode runs a Membership on its listener's port, dials the members SWIM names,
reports what SWIM believes in info()["membership"], says "left" on close and keeps its
incarnation in the data directory.

Real ClusterNodes over the in-memory network in virtual time (as tests/test_memnet.py), and real
nodes on 127.0.0.1 for the UDP socket (a taken port leaves the cluster working without SWIM)."""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ekv
from _virtual import run_virtual, until
from ekv._cluster import report
from ekv._cluster.cluster import ClusterNode
from ekv._config import Config
from ekv._core.clock import HybridClock
from ekv._log import NodeLog
from ekv._storage.datadir import load_membership_incarnation, save_membership_incarnation
from ekv._storage.store import ShardedStore
from ekv.testing import wait_until
from ekv.testing.memnet import MemoryNetwork

PORT = 4370


class _LoopClock:
    """A node's wall clock: the virtual loop's time from a fixed epoch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def now_ns(self) -> int:
        return 1_800_000_000 * 10**9 + int(self._loop.time() * 1e9)


class _Nodes:
    """Real ClusterNodes on one MemoryNetwork, host = node name, data directories under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.net = MemoryNetwork()
        self.nodes: dict[str, tuple[ShardedStore, ClusterNode]] = {}

    async def open(self, host: str, peers: tuple[str, ...] = (), **options: Any) -> ClusterNode:
        loop = asyncio.get_running_loop()
        config = Config.create(
            "swimwire",
            self.root / host,
            shards=2,
            listen=options.pop("listen", f"{host}:{PORT}"),
            peers=[f"{p}:{PORT}" for p in peers],
            cookie="membership-test",
            anti_entropy_interval=1.0,
            reconnect_max=0.5,
            log=False,
            clock=_LoopClock(loop),
            **options,
        )
        store = ShardedStore.open(config, HybridClock(config.clock))
        cluster = ClusterNode(
            config, store, NodeLog("m", False), network=self.net.host(host), rng=random.Random(len(self.nodes))
        )
        await cluster.open()
        self.nodes[host] = (store, cluster)
        return cluster

    def cluster(self, host: str) -> ClusterNode:
        return self.nodes[host][1]

    async def close(self, host: str) -> None:
        store, cluster = self.nodes.pop(host)
        await cluster.aclose()
        store.close()

    async def crash(self, host: str) -> None:
        """Stop a node as a crash does (as the simulator): no Bye, no SWIM "left"."""
        self.net.reset_host(host)
        store, cluster = self.nodes.pop(host)
        await cluster.membership.close(leave=False)
        await cluster.aclose()
        store.close()

    async def close_all(self) -> None:
        for host in list(self.nodes):
            await self.close(host)

    def swim_status(self, viewer: str, host: str) -> str | None:
        """What ``viewer``'s membership believes of node ``host`` (None: unknown)."""
        info = self.cluster(viewer).membership.info()
        assert info["running"], info
        member = info["members"].get(self.nodes[host][1].node_id if host in self.nodes else host)
        return None if member is None else str(member["status"])


def _all_alive(nodes: _Nodes) -> bool:
    return all(
        nodes.swim_status(viewer, other) == "alive"
        for viewer in nodes.nodes
        for other in nodes.nodes
        if viewer != other
    )


def test_below_the_threshold_a_member_swim_names_is_known_but_not_dialed(tmp_path: Path) -> None:
    """c knows only a; b joins through a later, and the link b-c is cut. SWIM's gossip through a
    tells c that b is alive, but a small cluster's mesh is formed from the sessions' member lists
    only, as before SWIM (see ClusterMembership._on_event: dialing what SWIM names let an excess
    voter reach an observer that had not met every voter yet). Large clusters dial them (sessions
    on demand)."""

    async def scenario() -> None:
        nodes = _Nodes(tmp_path)
        try:
            await nodes.open("a")
            c = await nodes.open("c", ("a",))
            await until(lambda: len(c.sessions) == 1, 10, "c connects to a")
            nodes.net.cut("b", "c")
            b = await nodes.open("b", ("a",))
            await until(lambda: nodes.swim_status("c", b.node_id) == "alive", 20, "c's SWIM sees b alive")
            assert report.cluster_info(c)["membership"]["members"][b.node_id]["address"] == f"b:{PORT}"
            assert all(entry["source"] != "swim" for entry in c.addresses.values())
        finally:
            await nodes.close_all()

    run_virtual(scenario)


def test_a_closed_node_is_seen_left_and_a_cut_one_failed(tmp_path: Path) -> None:
    async def scenario() -> None:
        nodes = _Nodes(tmp_path)
        try:
            await nodes.open("a")
            for host in ("b", "c", "d"):
                await nodes.open(host, ("a",))
            await until(lambda: _all_alive(nodes), 30, "every member sees every other alive")
            d_id = nodes.cluster("d").node_id
            await nodes.close("d")
            await until(lambda: all(nodes.swim_status(v, d_id) == "left" for v in ("a", "b", "c")), 5, "d seen left")
            info = nodes.cluster("a").membership.info()
            assert info["members"][d_id]["since_ns"] is not None
            assert info["datagrams"]["sent"] > 0 and info["datagrams"]["received"] > 0
            assert set(info["dropped"]) >= {"mac", "replay"} and info["incarnation"] == 0

            nodes.net.partition(["c"], ["a", "b"])
            c_id = nodes.cluster("c").node_id
            await until(lambda: nodes.swim_status("a", c_id) == "suspect", 10, "a suspects c")
            await until(
                lambda: all(nodes.swim_status(v, c_id) == "failed" for v in ("a", "b")), 60, "c declared failed"
            )
            await until(lambda: nodes.swim_status("c", "a") == "failed", 60, "c declares a failed")
            metrics = report.cluster_metrics(nodes.cluster("a"))
            assert metrics['ekv_membership_members{status="failed"}'] == 1
            assert metrics['ekv_membership_members{status="left"}'] == 1
            nodes.net.heal()
            await until(lambda: _all_alive(nodes), 60, "after the heal every member sees every other alive")
            assert nodes.cluster("c").membership.info()["incarnation"] > 0  # (it refuted "failed")
        finally:
            await nodes.close_all()

    run_virtual(scenario)


def test_nodes_on_a_wildcard_address_without_advertise_run_swim_with_each_others_hosts(tmp_path: Path) -> None:
    """Five nodes listen on 0.0.0.0 without advertise= (each its own host), all given only a as
    their peer: each announces ":4370", whoever hears it directly completes the host from the
    datagram's source and gossips that on, so every member knows every other's reachable
    address; a crash is declared failed and a close seen left."""

    async def scenario() -> None:
        nodes = _Nodes(tmp_path)
        hosts = ["a", "b", "c", "d", "e"]
        try:
            for host in hosts:
                await nodes.open(host, () if host == "a" else ("a",), listen=f"0.0.0.0:{PORT}")

            def knows_everyone(viewer: str) -> bool:
                info = nodes.cluster(viewer).membership.info()
                assert info["running"], info
                expected = {nodes.cluster(h).node_id: f"{h}:{PORT}" for h in nodes.nodes if h != viewer}
                members = info["members"]
                return {n: m["address"] for n, m in members.items() if m["status"] == "alive"} == expected

            await until(lambda: all(knows_everyone(h) for h in hosts), 30, "every member knows every other's host")
            for host in hosts:
                info = nodes.cluster(host).membership.info()
                assert info["address"] == f":{PORT}" and info["datagrams"]["hostless"] == 0, info
            e_id, d_id = nodes.cluster("e").node_id, nodes.cluster("d").node_id
            await nodes.crash("e")
            await until(lambda: all(nodes.swim_status(v, e_id) == "failed" for v in "abcd"), 60, "e declared failed")
            await nodes.close("d")
            await until(lambda: all(nodes.swim_status(v, d_id) == "left" for v in "abc"), 5, "d seen left")
            assert all(nodes.swim_status(v, e_id) == "failed" for v in "abc")
        finally:
            await nodes.close_all()

    run_virtual(scenario)


def test_the_incarnation_is_kept_in_the_data_directory_across_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        nodes = _Nodes(tmp_path)
        try:
            await nodes.open("a")
            b = await nodes.open("b", ("a",))
            await until(lambda: _all_alive(nodes), 30, "a and b see each other")
            first = b.membership.info()["incarnation"]
            b_id = b.node_id
            await nodes.close("b")  # leaving raises it (left at a new incarnation), saved
            saved = load_membership_incarnation(tmp_path / "b")
            assert saved > first
            b = await nodes.open("b", ("a",))
            assert b.node_id == b_id
            assert b.membership.info()["incarnation"] == saved + 1
            # alive at the new incarnation beats "left" at the old one at once: no refutation needed
            await until(lambda: nodes.swim_status("a", "b") == "alive", 5, "a sees b alive again")
        finally:
            await nodes.close_all()

    run_virtual(scenario)


def test_a_node_not_listening_runs_no_membership(tmp_path: Path) -> None:
    async def scenario() -> None:
        nodes = _Nodes(tmp_path)
        try:
            await nodes.open("a")
            loop = asyncio.get_running_loop()
            config = Config.create(
                "swimwire",
                tmp_path / "quiet",
                shards=2,
                peers=[f"a:{PORT}"],
                cookie="membership-test",
                log=False,
                clock=_LoopClock(loop),
            )
            store = ShardedStore.open(config, HybridClock(config.clock))
            quiet = ClusterNode(config, store, NodeLog("m", False), network=nodes.net.host("q"))
            await quiet.open()
            await until(lambda: len(quiet.sessions) == 1, 10, "the quiet node connects to a")
            assert quiet.membership.info() == {"running": False, "reason": "not listening"}
            assert quiet.node_id not in nodes.cluster("a").membership.info()["members"]
            await quiet.aclose()
            store.close()
            assert not (tmp_path / "quiet" / "membership.incarnation").exists()
        finally:
            await nodes.close_all()

    run_virtual(scenario)


# -- real sockets --------------------------------------------------------------------------------


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., ekv.EKV]]:
    opened: list[ekv.EKV] = []

    def _make(**options: Any) -> ekv.EKV:
        options = {"listen": "127.0.0.1:0", "shards": 2, "reconnect_max": 0.3, "log": False, **options}
        kv = ekv.EKV("swimwire", tmp_path / f"n{len(opened)}", **options)
        opened.append(kv)
        return kv

    yield _make
    for kv in opened:
        kv.close()


def _udp_port_with_free_tcp() -> tuple[socket.socket, int]:
    """A UDP socket bound on 127.0.0.1 whose port is free for TCP (the node listens there)."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind(("127.0.0.1", port))
            return udp, port
        except OSError:
            udp.close()
        finally:
            probe.close()
    raise AssertionError("no UDP port with a free TCP twin")


def test_real_nodes_run_membership_over_udp(make: Callable[..., ekv.EKV]) -> None:
    a = make()
    b = make(peers=[a.listen_address])
    c = make(peers=[a.listen_address])
    for kv in (a, b, c):
        assert kv.info()["membership"]["running"], kv.info()["membership"]

    def sees_all(kv: ekv.EKV) -> bool:
        members = kv.info()["membership"]["members"]
        return len(members) == 2 and all(m["status"] == "alive" for m in members.values())

    wait_until(lambda: all(sees_all(kv) for kv in (a, b, c)), message="the three did not see each other alive")
    assert b.info()["membership"]["members"][a.node_id]["address"] == a.listen_address
    info = b.info()  # the broadcast and large mode are part of the public info() too
    assert info["broadcast"]["mode"] == "direct" and info["large_mode"]["large"] is False
    c_id = c.node_id
    c.close()
    wait_until(lambda: a.info()["membership"]["members"][c_id]["status"] == "left", message="c not seen left")
    metrics = a.metrics()
    assert metrics["ekv_membership_running"] == 1 and metrics["ekv_membership_datagrams_received_total"] > 0


def _free_port_on_every_interface() -> int:
    """A port free for both TCP and UDP on 0.0.0.0 (the node binds both)."""
    for _ in range(50):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        ):
            tcp.bind(("0.0.0.0", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free for both TCP and UDP")


def test_real_nodes_on_0_0_0_0_without_advertise_run_membership_over_udp(make: Callable[..., ekv.EKV]) -> None:
    ports = []
    while len(ports) < 3:
        port = _free_port_on_every_interface()
        if port not in ports:
            ports.append(port)
    options = {"cookie": "wildcard-membership-test"}
    a = make(listen=f"0.0.0.0:{ports[0]}", **options)
    b = make(listen=f"0.0.0.0:{ports[1]}", peers=[f"127.0.0.1:{ports[0]}"], **options)
    c = make(listen=f"0.0.0.0:{ports[2]}", peers=[f"127.0.0.1:{ports[0]}"], **options)
    kvs = (a, b, c)
    for kv, port in zip(kvs, ports, strict=True):
        membership = kv.info()["membership"]
        assert membership["running"] and membership["address"] == f":{port}", membership

    def sees_all(kv: ekv.EKV) -> bool:
        expected = {
            other.node_id: f"127.0.0.1:{port}" for other, port in zip(kvs, ports, strict=True) if other is not kv
        }
        members = kv.info()["membership"]["members"]
        return {n: m["address"] for n, m in members.items() if m["status"] == "alive"} == expected

    wait_until(lambda: all(sees_all(kv) for kv in kvs), message="the three did not learn each other's addresses")
    c_id = c.node_id
    c.close()
    wait_until(lambda: a.info()["membership"]["members"][c_id]["status"] == "left", message="c not seen left")
    assert b.info()["membership"]["datagrams"]["hostless"] == 0


def test_a_taken_udp_port_is_a_warning_and_the_cluster_still_replicates(
    make: Callable[..., ekv.EKV], caplog: pytest.LogCaptureFixture
) -> None:
    udp, port = _udp_port_with_free_tcp()
    try:
        with caplog.at_level(logging.WARNING, logger="ekv"):
            a = make(listen=f"127.0.0.1:{port}", log="info")
        assert "SWIM membership off" in caplog.text and f"127.0.0.1:{port}" in caplog.text
        membership = a.info()["membership"]
        assert membership["running"] is False and "cannot bind UDP" in membership["reason"]
        assert a.metrics()["ekv_membership_running"] == 0
        b = make(peers=[a.listen_address])
        assert b.info()["membership"]["running"]
        a.put("k", "from a")
        wait_until(lambda: b.get("k") == "from a", message="a's write did not reach b")
        b.put("k2", "from b")
        wait_until(lambda: a.get("k2") == "from b", message="b's write did not reach a")
    finally:
        udp.close()


def test_the_saved_incarnation_reads_back_and_a_damaged_file_reads_as_none(tmp_path: Path) -> None:
    assert load_membership_incarnation(tmp_path) == -1
    save_membership_incarnation(tmp_path, 7)
    save_membership_incarnation(tmp_path, 12)
    assert load_membership_incarnation(tmp_path) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["membership.incarnation"]  # (the temporary renamed)
    for damaged in ("", "12x", "-3", "\xff"):
        (tmp_path / "membership.incarnation").write_text(damaged, encoding="latin-1")
        assert load_membership_incarnation(tmp_path) == -1


def test_a_node_that_takes_a_new_node_id_runs_its_member_under_it(tmp_path: Path) -> None:
    """Two copies of one data directory (one node id) meet; the one that takes a new node id
    restarts its SWIM member under the new id, and the others see both ids alive."""

    async def scenario() -> None:
        nodes = _Nodes(tmp_path)
        try:
            await nodes.open("a")
            await nodes.open("b", ("a",))
            await nodes.close("b")
            shutil.copytree(tmp_path / "b", tmp_path / "c")  # a VM snapshot, a restored backup
            b = await nodes.open("b", ("a",))
            c = await nodes.open("c", ("a",))
            shared = b.node_id
            assert c.node_id == shared
            await until(lambda: b.node_id != c.node_id, 60, "the duplicate node id is resolved")
            renamed = b if b.node_id != shared else c
            await until(
                lambda: all(n.membership.info().get("name") == n.node_id for n in (b, c)),
                10,
                "each member runs under its node's id",
            )
            await until(lambda: _all_alive(nodes), 60, "every member sees every other alive under its id")
            assert renamed.membership.info()["incarnation"] > 0  # (carried on from the saved one)
        finally:
            await nodes.close_all()

    run_virtual(scenario)
