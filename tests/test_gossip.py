"""SWIM membership over authenticated datagrams (src/ekv/_cluster/gossip.py, datagram.py, the
datagram channel of the network seam), issue 15 step 1.

Two halves: members on the in-memory network in virtual time (minutes of protocol in well under
a second: join, crash, leave, partition, restart), and members on real UDP sockets on 127.0.0.1 on
the process's network loop (convergence, the runtime closing the sockets, and every check of the
envelope against datagrams forged on a plain socket)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import pytest

from _virtual import run_virtual, until
from ekv._cluster.datagram import MAX_DATAGRAM, Opener, Sealer
from ekv._cluster.gossip import Membership
from ekv._cluster.network import TcpNetwork
from ekv._cluster.runtime import runtime
from ekv._core import swim_wire
from ekv._core.swim import Event, Gossip, Ping, PingReq, Status, SwimConfig, Update
from ekv.testing import wait_until
from ekv.testing.memnet import MemoryNetwork

COOKIE = b"gossip-test-cookie"


class Cluster:
    """Memberships on one MemoryNetwork, host ``h{i}`` port 7000 each, incarnations saved in
    ``self.saved`` (as a data directory would keep them)."""

    def __init__(self, net: MemoryNetwork | None = None, prefix: str = "") -> None:
        self.net = net or MemoryNetwork()
        self.prefix = prefix
        """Put before each node id (the host stays ``h{i}``)."""
        self.members: dict[str, Membership] = {}
        self.saved: dict[str, int] = {}
        self.events: list[tuple[str, Event]] = []

    async def start(self, i: int, seeds: Iterable[str] = ()) -> Membership:
        host = f"h{i}"
        name = self.prefix + host
        m = Membership(
            self.net.host(host),
            name=name,
            instance="main",
            cookie=COOKIE,
            listen=(host, 7000),
            seed=i,
            load_incarnation=lambda: self.saved.get(name, -1),
            save_incarnation=lambda inc: self.saved.__setitem__(name, inc),
            on_event=lambda event: self.events.append((name, event)),
        )
        await m.start()
        m.join(list(seeds))
        self.members[name] = m
        return m

    def running(self) -> list[Membership]:
        return list(self.members.values())

    def all_see(self, node: str, status: Status, among: Iterable[Membership] | None = None) -> bool:
        return all(m.members().get(node) is status for m in among or self.running() if m.name != node)

    def converged(self) -> bool:
        names = set(self.members)
        return all({n for n, s in m.members().items() if s is Status.ALIVE} == names for m in self.running())


async def _join_six() -> Cluster:
    c = Cluster()
    await c.start(0)
    for i in range(1, 6):
        await c.start(i, ["h0:7000"])
    await until(c.converged, 10, "6 members joining through h0 know each other")
    return c


def test_members_join_through_one_seed_and_a_crash_is_declared_failed() -> None:
    async def scenario() -> None:
        c = await _join_six()
        crashed = c.members.pop("h3")
        await crashed.close(leave=False)  # (silent: as a process that died)
        took = await until(lambda: c.all_see("h3", Status.FAILED), 40, "every member declares h3 failed")
        # Lifeguard's minimum suspicion timeout at N=6 is 5 * log10(6) * 1 s = 3.9 s; the maximum 6x that
        assert 3 < took < 30
        assert ("h0", "failed") in {(who, e.kind) for who, e in c.events if e.node == "h3"}
        for m in c.running():
            await m.close()

    run_virtual(scenario)


def test_a_member_that_leaves_is_seen_as_left_not_failed() -> None:
    async def scenario() -> None:
        c = await _join_six()
        leaving = c.members.pop("h2")
        await leaving.close()
        await until(lambda: c.all_see("h2", Status.LEFT), 5, "every member sees h2 left")
        await asyncio.sleep(30)  # long past any suspicion timeout
        assert c.all_see("h2", Status.LEFT)
        assert not [e for _, e in c.events if e.node == "h2" and e.kind in ("suspect", "failed")]
        for m in c.running():
            await m.close()

    run_virtual(scenario)


def test_a_partition_is_detected_on_both_sides_and_heals() -> None:
    async def scenario() -> None:
        c = await _join_six()
        left, right = ["h0", "h1", "h2"], ["h3", "h4", "h5"]
        c.net.partition(left, right)
        sides = [[c.members[n] for n in side] for side in (left, right)]
        await until(
            lambda: (
                all(c.all_see(n, Status.FAILED, sides[0]) for n in right)
                and all(c.all_see(n, Status.FAILED, sides[1]) for n in left)
            ),
            60,
            "each side declares the other failed",
        )
        c.net.heal()
        await until(c.converged, 30, "after the heal every member sees every other alive")
        for m in c.running():  # refuting raised incarnations; each was saved as it rose
            assert c.saved[m.name] == m.incarnation
        assert any(m.incarnation > 0 for m in c.running())
        for m in c.running():
            await m.close()

    run_virtual(scenario)


def test_a_restarted_member_starts_above_its_saved_incarnation() -> None:
    """A member that crashed and was declared failed comes back at an incarnation above the one
    it had: its first datagram already beats the "failed" the others hold (no round trip to learn
    what to refute). Fails if the incarnation is not loaded at start."""

    async def scenario() -> None:
        c = await _join_six()
        crashed = c.members.pop("h4")
        before = crashed.incarnation
        await crashed.close(leave=False)
        await until(lambda: c.all_see("h4", Status.FAILED), 40, "h4 declared failed")
        restarted = await c.start(4, ["h0:7000"])
        assert restarted.incarnation == before + 1 == c.saved["h4"]
        await until(lambda: c.all_see("h4", Status.ALIVE), 10, "h4 back alive everywhere")
        await until(c.converged, 10, "converged after the restart")
        for m in c.running():
            await m.close()

    run_virtual(scenario)


def test_a_view_larger_than_a_datagram_is_pushed_in_pieces_and_loss_is_tolerated() -> None:
    """60 members with long node ids: the seed's view (about 4 KB) does not fit one datagram, so
    it travels as several Sync pieces (without them it cannot be sent at all: "unsendable");
    5% of all datagrams are lost."""
    rng = random.Random(7)

    def lossy(source: str, destination: str) -> Callable[[bytes], list[tuple[float, bytes]]]:
        def shape(data: bytes) -> list[tuple[float, bytes]]:
            loop = asyncio.get_running_loop()
            return [] if rng.random() < 0.05 else [(loop.time() + rng.uniform(0.001, 0.01), data)]

        return shape

    async def scenario() -> None:
        c = Cluster(MemoryNetwork(datagram_shaper=lossy), prefix="a-rather-long-node-id-of-40-characters-")
        await c.start(0)
        for i in range(1, 60):
            await c.start(i, ["h0:7000"])
        await until(c.converged, 60, "60 members know each other")
        seed = c.members[c.prefix + "h0"]
        assert len(seed._encode(seed._running()._sync(reply=True))) >= 3  # (the view's pieces)
        assert max(m.stats["sent"] for m in c.running()) > 0
        assert all(m.stats["unsendable"] == 0 for m in c.running())
        for m in c.running():
            await m.close()

    run_virtual(scenario)


def _wildcard(net: MemoryNetwork, host: str) -> Membership:
    """A member listening on 0.0.0.0 of ``host`` without an advertised address."""
    return Membership(net.host(host), name=host, instance="main", cookie=COOKIE, listen=("0.0.0.0", 7000), seed=7)


def test_a_hostless_sender_is_completed_from_its_source_and_hostless_gossip_about_others_dropped() -> None:
    """A member on a wildcard address announces ":port" in datagrams of envelope version 2; a
    receiver completes the sender's own entry with the datagram's source host, and drops a
    host-less address about anyone else (and an indirect probe of one): counted as "hostless"."""

    async def scenario() -> None:
        net = MemoryNetwork()
        c = Cluster(net)
        m = await c.start(0)
        w = _wildcard(net, "h9")
        await w.start()
        assert w.address == ":7000"
        w.join(["h0:7000"])
        await until(lambda: m.members().get("h9") is Status.ALIVE and w.members().get("h0") is Status.ALIVE, 5, "join")
        assert m.member("h9") == Update("h9", "h9:7000", 0, Status.ALIVE)
        assert w.member("h0") is not None and w.member("h0").addr == "h0:7000"  # (h0 has a host: unchanged)

        raw = await net.host("h8").open_datagram(("h8", 7000), "main", lambda data, source: None)
        sealer = Sealer(COOKIE, instance="main", sender="h8", hostless=True)
        assert sealer.seal(b"x")[4] == 2  # (the envelope's version byte)
        gossip = (
            Update("h8", ":7000", 0, Status.ALIVE),  # the sender itself: completed
            Update("x", ":7001", 0, Status.ALIVE),  # another member without a host: dropped
            Update("y", "h7:7000", 0, Status.ALIVE),  # another member with one: taken
        )
        raw.send(sealer.seal(swim_wire.encode(Gossip(gossip))), ("h0", 7000))
        raw.send(sealer.seal(swim_wire.encode(PingReq(5, "y", ":7000"))), ("h0", 7000))
        await until(lambda: m.member("h8") is not None and m.stats["hostless"] == 2, 1, "the datagrams handled")
        assert m.member("h8") == Update("h8", "h8:7000", 0, Status.ALIVE)
        assert m.member("x") is None
        assert m.member("y") == Update("y", "h7:7000", 0, Status.ALIVE)
        raw.close()
        for member in (m, w):
            await member.close()

    run_virtual(scenario)


def test_a_hostless_member_given_its_own_address_as_a_seed_keeps_joining_through_the_others() -> None:
    """A member announcing ":port" cannot tell its own ``host:port`` from a seed's; its own
    datagram coming back tells it, and that seed is dropped: it does not count as joined (through
    itself) and keeps trying the seed that is not up yet."""

    async def scenario() -> None:
        net = MemoryNetwork()
        w = _wildcard(net, "h1")
        await w.start()
        w.join(["h1:7000", "h0:7000"])
        await asyncio.sleep(3)
        m = Membership(net.host("h0"), name="h0", instance="main", cookie=COOKIE, listen=("h0", 7000), seed=0)
        await m.start()  # (no seeds: only w's retries can bring the two together)
        await until(lambda: m.members().get("h1") is Status.ALIVE, 5, "h1 joins through h0 once it is up")
        assert w.members().get("h0") is Status.ALIVE
        for member in (m, w):
            await member.close()

    run_virtual(scenario)


def test_the_envelope_takes_versions_1_and_2_only() -> None:
    opener = Opener(COOKIE, instance="main")
    for hostless in (False, True):
        sealer = Sealer(COOKIE, instance="main", sender=f"s{hostless}", hostless=hostless)
        assert opener.open(sealer.seal(b"p")) == (f"s{hostless}", b"p")
    future = bytearray(Sealer(COOKIE, instance="main", sender="s3").seal(b"p"))
    future[4] = 3
    assert opener.open(bytes(future)) is None and opener.drops["format"] == 1


# -- real UDP on 127.0.0.1 -------------------------------------------------------------------------

FAST = SwimConfig(probe_interval_ns=200_000_000, probe_timeout_ns=100_000_000, reconnect_interval_ns=400_000_000)


def _on_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    return runtime().run(coro, timeout=30)


def _new(name: str, instance: str = "main", cookie: bytes = COOKIE, port: int = 0) -> Membership:
    m = Membership(
        TcpNetwork(), name=name, instance=instance, cookie=cookie, listen=("127.0.0.1", port), config=FAST, seed=1
    )
    _on_loop(m.start())
    return m


@pytest.fixture
def loop_thread() -> Iterable[None]:
    runtime().acquire()
    try:
        yield
    finally:
        runtime().release()


def _view(m: Membership) -> dict[str, Status]:
    async def get() -> dict[str, Status]:
        return m.members()

    return dict(_on_loop(get()))


def test_five_members_converge_over_real_udp(loop_thread: None) -> None:
    members = [_new(f"n{i}") for i in range(5)]
    try:
        for m in members[1:]:
            runtime().call(m.join, [members[0].address])
        names = {m.name for m in members}
        wait_until(
            lambda: all({n for n, s in _view(m).items() if s is Status.ALIVE} == names for m in members),
            20,
            message="5 members over UDP know each other",
        )
        _on_loop(members[4].close())
        wait_until(lambda: all(_view(m).get("n4") is Status.LEFT for m in members[:4]), 20)
    finally:
        for m in members:
            _on_loop(m.close())


def test_named_instances_share_a_udp_port_and_stay_apart(loop_thread: None) -> None:
    """Like the TCP listener: two instances on one port, each datagram routed to the one it names."""
    main0 = _new("m0", "main")
    port = int(main0.address.rsplit(":", 1)[1])
    other0 = _new("o0", "other", port=port)  # the same UDP socket
    main1, other1 = _new("m1", "main"), _new("o1", "other")
    members = [main0, other0, main1, other1]
    try:
        assert other0.address == main0.address
        runtime().call(main1.join, [main0.address])
        runtime().call(other1.join, [other0.address])
        wait_until(lambda: set(_view(main1)) == {"m0", "m1"} and set(_view(other1)) == {"o0", "o1"}, 20)
        wait_until(lambda: _view(main0) == {"m0": Status.ALIVE, "m1": Status.ALIVE}, 20)
        assert _view(other0) == {"o0": Status.ALIVE, "o1": Status.ALIVE}
        assert all(m.drops["instance"] == 0 for m in members)  # routed, not broadcast and refused
    finally:
        for m in members:
            _on_loop(m.close())


def test_the_runtime_closes_an_open_datagram_socket_when_it_stops() -> None:
    assert not runtime().running, "another user holds the network runtime: it would not stop here"
    runtime().acquire()
    try:
        m = _new("alone")
        port = int(m.address.rsplit(":", 1)[1])
    finally:
        runtime().release()  # the last user: the loop stops and drains, with m never closed
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("127.0.0.1", port))  # fails (address in use) while the socket is open
    finally:
        probe.close()


def _send_raw(m: Membership, data: bytes) -> None:
    host, port = m.address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.sendto(data, (host, int(port)))


def _ping_payload() -> bytes:
    return swim_wire.encode(Ping(1, "target"))


def _received(m: Membership) -> int:
    async def get() -> int:
        return m.stats["received"]

    return int(_on_loop(get()))


def test_forged_replayed_and_oversized_datagrams_are_dropped_and_counted(loop_thread: None) -> None:
    m = _new("victim")
    try:
        good = Sealer(COOKIE, instance="main", sender="peer")
        datagram = good.seal(_ping_payload())
        cases: list[tuple[str, bytes]] = [
            ("mac", Sealer(b"another cookie", instance="main", sender="peer").seal(_ping_payload())),
            ("mac", datagram[:-1] + bytes([datagram[-1] ^ 1])),  # one bit of the tag
            ("mac", datagram[:40] + bytes([datagram[40] ^ 1]) + datagram[41:]),  # one bit of the payload
            ("instance", Sealer(COOKIE, instance="other", sender="peer").seal(_ping_payload())),
            ("size", good.seal(_ping_payload())[:-16] + b"\0" * (MAX_DATAGRAM + 1)),
            ("format", b"not a datagram at all"),
        ]
        for reason, data in cases:
            before = m.drops[reason]
            _send_raw(m, data)
            wait_until(lambda r=reason, b=before: m.drops[r] == b + 1, 10, message=f"dropped as {reason}")
        assert _received(m) == 0
        _send_raw(m, datagram)
        wait_until(lambda: _received(m) == 1, 10, message="the genuine datagram is accepted")
        _send_raw(m, datagram)  # the same one again: a replay
        wait_until(lambda: m.drops["replay"] == 1, 10, message="the replay is dropped")
        _send_raw(m, good.seal(_ping_payload()))  # the next one of the same sender passes
        wait_until(lambda: _received(m) == 2, 10)
        assert m.drops == {"size": 1, "format": 1, "mac": 3, "instance": 1, "replay": 1}
    finally:
        _on_loop(m.close())


def test_the_replay_window_takes_reordered_datagrams_once_and_refuses_old_boots() -> None:
    opener = Opener(COOKIE, instance="main")
    sealer = Sealer(COOKIE, instance="main", sender="peer")
    sent = [sealer.seal(b"x%d" % i) for i in range(10)]
    order = [3, 0, 1, 9, 2, 5, 4, 8, 7, 6]
    assert [opener.open(sent[i]) for i in order] == [("peer", b"x%d" % i) for i in order]
    assert all(opener.open(d) is None for d in sent)
    assert opener.drops["replay"] == 10
    restarted = Sealer(COOKIE, instance="main", sender="peer")  # a new boot: counters start again
    assert opener.open(restarted.seal(b"new")) == ("peer", b"new")
    assert opener.open(sealer.seal(b"old boot")) is None  # the earlier boot is over
    assert opener.drops["replay"] == 11


def test_mutated_datagrams_never_raise() -> None:
    rng = random.Random(3)
    sealer = Sealer(COOKIE, instance="main", sender="peer")
    for _ in range(2_000):
        data = bytearray(sealer.seal(bytes(rng.randrange(256) for _ in range(rng.randrange(50)))))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.randrange(len(data) + 1)
        opener = Opener(COOKIE, instance="main")
        opener.open(bytes(data[:cut] if rng.random() < 0.3 else data))
