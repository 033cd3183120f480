"""Live replication through the broadcast tree (ekv._cluster.broadcast): real cluster nodes over
memnet in virtual time (ekv.testing.sim), no loss, anti-entropy slowed to a minute so that only
live traffic (direct or through the tree) can deliver a write within the tests' deadlines."""

from __future__ import annotations

import dataclasses
from typing import Any

from ekv._cluster import report, wire
from ekv._cluster.members import MemberSet
from ekv._cluster.session import HandshakeParams
from ekv._model import Version
from ekv._values import Values
from ekv.testing import sim

_TREE = 26  # TreeMessage's frame code
_LIVE = 16


def _simulation(nodes: int, seed: int = 11, **options: Any) -> sim.Simulation:
    s = sim.Simulation(
        seed, nodes=nodes, drop=0, duplicate=0, reorder=0, delay_ms=(1, 10), anti_entropy_ms=60_000, **options
    )
    for _ in range(200):  # the full mesh forms (below 16 nodes), or every node is in large mode
        if all(len(c.sessions) == len(s.clusters) - 1 for c in s.clusters.values()) or all(
            c.ondemand.large for c in s.clusters.values()
        ):
            break
        s.run(100, writes_per_s=0, faults=False)
    # (from 16 nodes on, sessions are on demand: a node given every member as a peer no longer
    # dials them all at start, ekv._cluster.ondemand)
    assert all(len(c.sessions) == len(s.clusters) - 1 for c in s.clusters.values()) or all(
        c.ondemand.large for c in s.clusters.values()
    )
    return s


def _write(s: sim.Simulation, name: str, key: str) -> Version:
    store = s.nodes[name].store
    assert store is not None
    return Values(store).put(key, f"{name}:{key}".encode())


def _deliver(s: sim.Simulation, name: str, key: str, *, limit_ms: int = 1_000, absent: str = "") -> int:
    """Write ``key`` on ``name`` and run until every node but ``absent`` holds it; the virtual ms
    it took."""
    version = _write(s, name, key)
    for waited in range(0, limit_ms + 1, 20):
        missing = [n for n in s.nodes if n != absent and _version(s, n, key) != version]
        if not missing:
            return waited
        s.run(20, writes_per_s=0, faults=False)
    raise AssertionError(f"{key} written on {name} had not reached {missing} after {limit_ms} ms")


def _version(s: sim.Simulation, name: str, key: str) -> Version | None:
    store = s.nodes[name].store
    entry = None if store is None else store.entry(key)
    return None if entry is None else entry.version


def _modes(s: sim.Simulation) -> dict[str, str]:
    """Each node's broadcast mode, as info() reports it."""
    return {name: report.cluster_info(c)["broadcast"]["mode"] for name, c in s.clusters.items()}


def _warm_up(s: sim.Simulation, writes: int = 20) -> None:
    """A few writes from every side. New links start lazy (ekv._core.plumtree), so the first
    writes after the tree formed reach some members by grafts, hop after hop (about a second):
    those grafts make the tree."""
    names = sorted(s.clusters)
    for i in range(writes):
        _deliver(s, names[i % len(names)], f"k0/warm{i}", limit_ms=3_000)
    s.run(1_000, writes_per_s=0, faults=False)


def test_twenty_nodes_writes_reach_everyone_through_the_tree() -> None:
    with _simulation(20) as s:
        assert set(_modes(s).values()) == {"tree"}
        _warm_up(s)
        names = sorted(s.clusters)
        s.frames.clear()
        own: list[int] = []
        for i in range(40):
            origin = names[i % len(names)]
            before = s.live_frames(origin)
            _deliver(s, origin, f"k1/w{i}")
            own.append(s.live_frames(origin) - before)
        per_write = s.live_frames() / 40
        direct = s.live_frames(tree=False)
        # every write reached all 20; the frames carrying it: about N-1, at most 2(N-1)
        assert per_write <= 2 * 19, per_write
        assert direct == 0
        # the writer sends its 3-4 eager peers (and answers a graft now and then), not N-1
        assert max(own) <= 6, own
        assert sum(own) / len(own) <= 4.5, own


def test_the_tree_repairs_after_a_node_crashes() -> None:
    with _simulation(20) as s:
        _warm_up(s)
        victim = "n7"
        parents = [
            n for n, c in s.clusters.items() if s.node_id(victim) in report.cluster_info(c)["broadcast"]["eager"]
        ]
        assert parents, "the victim is nobody's eager peer: pick another seed or node"
        s.partition([[victim], [n for n in s.nodes if n != victim]])  # for the others, it crashed
        writers = ["n0", "n3", "n12", "n19", *parents]
        waits = [_deliver(s, n, f"k2/after{i}", limit_ms=1_500, absent=victim) for i, n in enumerate(writers)]
        modes = _modes(s)
        modes.pop(victim)  # (alone: its own writes reach nobody either way)
        assert set(modes.values()) == {"tree"}
        # grafts around the gap: a batch period plus the graft timeout, not anti-entropy's minute
        assert max(waits) <= 1_000, waits
        assert s.live_frames(tree=False) == 0


def test_five_nodes_keep_direct_sends() -> None:
    with _simulation(5) as s:
        assert set(_modes(s).values()) == {"direct"}
        s.frames.clear()
        for i in range(10):
            _deliver(s, f"n{i % 5}", f"k0/small{i}", limit_ms=200)
        assert s.live_frames(tree=False) == 10 * 4  # each write straight to each member
        assert not any(code == _TREE for (_, _, code, _) in s.frames)


def _without_plumtree(members: MemberSet) -> None:
    """Make ``members`` offer every feature but "plumtree" (an older version's node)."""
    original = members._handshake_params

    def params() -> HandshakeParams:
        mine = original()
        features = tuple(f for f in mine.hello.features if f != wire.PLUMTREE_FEATURE)
        return dataclasses.replace(mine, hello=dataclasses.replace(mine.hello, features=features))

    members._handshake_params = params  # type: ignore[method-assign]


def test_a_member_without_the_feature_gets_direct_lives() -> None:
    with _simulation(20) as s:
        old = "n19"
        _without_plumtree(s.clusters[old].members)
        s.net.reset_host(old)  # its sessions are negotiated again, without the feature
        for _ in range(100):
            s.run(100, writes_per_s=0, faults=False)
            if len(s.clusters[old].sessions) == 19:
                break
        assert all(wire.PLUMTREE_FEATURE not in session.features for session in s.clusters[old].sessions.values())
        _warm_up(s)
        s.frames.clear()
        for i in range(5):
            _deliver(s, "n0", f"k3/new{i}")
            _deliver(s, old, f"k3/old{i}")
        direct = {(a, b): n for (a, b, code, _), n in s.frames.items() if code == _LIVE}
        tree = sum(n for (a, b, code, _), n in s.frames.items() if code == _TREE and old in (a, b))
        assert tree == 0  # nothing of the tree to or from it
        assert direct.get(("n0", old)) == 5  # n0 (tree mode) sends it each write directly
        assert sum(n for (a, _), n in direct.items() if a == "n0") == 5  # and nobody else
        assert sum(n for (a, _), n in direct.items() if a == old) == 5 * 19  # its own writes go to all
        modes = _modes(s)
        assert modes[old] == "direct" and modes["n0"] == "tree"
        metrics = report.cluster_metrics(s.clusters["n0"])
        assert metrics["ekv_broadcast_tree"] == 1 and metrics['ekv_broadcast_sent_total{kind="gossip"}'] > 0
