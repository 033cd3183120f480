"""SWIM + Lifeguard membership (src/ekv/_core/swim.py, swim_wire.py) and its simulator
(src/ekv/testing/_internal/simswim.py), issue 15.

The unit tests drive a few state machines by hand over an instant network whose links can be
cut one way; the simulator tests run 100 members and check the bounds SWIM's analysis gives
(stated next to each assertion)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from ekv import ProtocolError
from ekv._core.swim import (
    NS_PER_S,
    Ack,
    Gossip,
    Message,
    Nack,
    Ping,
    PingReq,
    Status,
    Swim,
    SwimConfig,
    Sync,
    Update,
)
from ekv._core.swim_wire import decode, encode
from ekv.testing._internal.simswim import SwimSim, run_scenario

T = NS_PER_S  # the protocol period of the default config


class Net:
    """Members by name (= address), messages delivered at once through encode/decode, unless
    ``cut(src, dst)`` says the link drops them."""

    def __init__(self, names: list[str], config: SwimConfig | None = None) -> None:
        self.nodes = {name: Swim(name, name, config=config, seed=1) for name in names}
        self.now = 0
        self.cut: Callable[[str, str], bool] = lambda src, dst: False
        self.down: set[str] = set()
        self.log: list[tuple[str, str, Message]] = []
        for name in names[1:]:
            self.nodes[name].join([names[0]], 0)
        self.nodes[names[0]].join([], 0)
        self.pump()

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for src, node in self.nodes.items():
                for dst, message in node.take_messages():
                    moved = True
                    self.log.append((src, dst, message))
                    if src in self.down or dst in self.down or self.cut(src, dst):
                        continue
                    self.nodes[dst].receive(src, decode(encode(message)), self.now)

    def run(self, seconds: float, step_ns: int = T // 20) -> None:
        end = self.now + int(seconds * T)
        while self.now < end:
            self.now += step_ns
            for name, node in self.nodes.items():
                if name not in self.down:
                    node.tick(self.now)
            self.pump()

    def events(self, observer: str) -> list[tuple[str, str]]:
        return [(e.kind, e.node) for e in self.nodes[observer].take_events()]


def test_join_through_one_seed_and_probes_are_acked() -> None:
    net = Net(["a", "b", "c", "d"])
    net.run(5)
    for name, node in net.nodes.items():
        assert node.members() == dict.fromkeys("abcd", Status.ALIVE), name
    pings = [m for _, _, m in net.log if isinstance(m, Ping)]
    acks = [m for _, _, m in net.log if isinstance(m, Ack)]
    assert len(pings) >= 4 * 4 and len(acks) == len(pings)  # one probe per member per period
    assert all(node.awareness == 0 for node in net.nodes.values())


def test_a_join_through_many_seeds_asks_a_few_at_a_time_until_one_answers() -> None:
    """Each seed answers a join with its whole view: a node given its 49 peers asks 3 per period
    (SwimConfig.join_fanout), drawn anew on each retry, so dead seeds only delay it."""
    names = [f"m{i:02d}" for i in range(50)]
    net = Net(names[:1])  # m00 alone; the others are named as seeds but only m00 and m49 run
    newcomer = Swim("m49", "m49", seed=1)
    net.nodes["m49"] = newcomer
    net.down = set(names[1:49])  # (never started: their joins go nowhere)
    newcomer.join([*names[1:49], "m00"], net.now)
    first = newcomer.take_messages()
    assert len(first) == 3 and all(isinstance(m, Sync) for _, m in first), first
    for dst, message in first:
        net.log.append(("m49", dst, message))
        if dst == "m00":
            net.nodes["m00"].receive("m49", decode(encode(message)), net.now)
    net.run(30)
    assert newcomer.members().get("m00") is Status.ALIVE  # (it answered one of the retries)
    joins = [m for src, _, m in net.log if src == "m49" and isinstance(m, Sync)]
    assert len(joins) <= 3 * 31, len(joins)


def test_randomized_round_robin_probes_every_member_once_per_round() -> None:
    names = [f"m{i}" for i in range(8)]
    net = Net(names)
    net.run(3)
    start = len(net.log)
    net.run(70)  # 70 probes: 10 rounds of the 7 others, over at most 11 (partial) rounds
    targets = [m.target for src, _, m in net.log[start:] if src == "m0" and isinstance(m, Ping)]
    assert len(targets) == 70
    assert {name: targets.count(name) for name in names[1:]} == {
        name: pytest.approx(10, abs=1) for name in names[1:]
    }  # a random choice each period would spread these counts over about 10 +- 3


def test_indirect_probe_through_a_helper_avoids_a_suspicion() -> None:
    net = Net(["a", "b", "c"])
    net.run(3)
    net.events("a")
    net.cut = lambda src, dst: {src, dst} == {"a", "b"}  # a and b cannot talk directly
    net.run(10)
    assert net.nodes["a"].members()["b"] is Status.ALIVE
    assert ("suspect", "b") not in net.events("a")
    assert any(isinstance(m, PingReq) and src == "a" and dst == "c" for src, dst, m in net.log)
    assert any(isinstance(m, Ack) and src == "c" and dst == "a" for src, dst, m in net.log)


def test_suspicion_is_refuted_with_a_higher_incarnation() -> None:
    net = Net(["a", "b", "c", "d"])
    net.run(3)
    for name in net.nodes:
        net.events(name)
    net.cut = lambda src, dst: "b" in (src, dst)
    net.run(3)  # shorter than the suspicion timeout: alpha * max(1, log10(4)) = 5 periods
    assert any(("suspect", "b") in net.events(name) for name in "acd")
    assert net.nodes["b"].incarnation == 0
    net.cut = lambda src, dst: False
    net.run(4)
    assert net.nodes["b"].incarnation >= 1  # b heard it was suspected, and refuted
    assert all(node.members()["b"] is Status.ALIVE for node in net.nodes.values())
    assert all(("failed", "b") not in net.events(name) for name in "acd")


def test_a_crashed_member_is_failed_after_the_suspicion_timeout_and_a_leaver_left() -> None:
    config = SwimConfig()
    net = Net(["a", "b", "c", "d", "e"], config)
    net.run(3)
    for name in net.nodes:
        net.events(name)
    net.down.add("e")
    net.nodes["d"].leave(net.now)
    net.pump()
    net.down.add("d")
    net.run(2)
    assert all(node.members()["d"] is Status.LEFT for name, node in net.nodes.items() if name in "abc")
    # n = 4 live members at suspicion time: min = alpha * max(1, log10(4)) periods = 5 s, max = 30 s
    net.run(35)
    for name in "abc":
        kinds = net.events(name)
        assert ("left", "d") in kinds and ("failed", "d") not in kinds
        assert ("failed", "e") in kinds and ("left", "e") not in kinds
        assert net.nodes[name].members()["e"] is Status.FAILED


def test_confirmations_shrink_the_suspicion_timeout() -> None:
    """Lifeguard: max = beta * min with no confirmation, min after K independent ones."""
    config = SwimConfig()
    node = Swim("me", "me", config=config)
    for i in range(99):
        node.receive("x", Gossip((Update(f"m{i}", f"m{i}", 0, Status.ALIVE),)), 0)
    node.receive("x", Gossip((Update("m0", "m0", 0, Status.SUSPECT, "m1"),)), 0)
    minimum = int(config.alpha * math.log10(100) * T)  # 10 s for 100 members
    deadlines = [node._suspicions["m0"].due_ns]
    for accuser in ("m2", "m3", "m4", "m4"):
        node.receive("x", Gossip((Update("m0", "m0", 0, Status.SUSPECT, accuser),)), 0)
        deadlines.append(node._suspicions["m0"].due_ns)
    assert deadlines[0] == int(config.beta * minimum)
    assert deadlines[0] > deadlines[1] > deadlines[2] > deadlines[3] == minimum == deadlines[4]
    node.tick(minimum)
    assert node.members()["m0"] is Status.FAILED


def test_incarnations_order_the_updates() -> None:
    node = Swim("me", "me")
    seq = [
        (Update("x", "x", 3, Status.ALIVE), Status.ALIVE),
        (Update("x", "x", 2, Status.SUSPECT, "y"), Status.ALIVE),  # older: ignored
        (Update("x", "x", 3, Status.SUSPECT, "y"), Status.SUSPECT),  # suspect beats alive at equal
        (Update("x", "x", 3, Status.ALIVE), Status.SUSPECT),  # alive needs a higher incarnation
        (Update("x", "x", 4, Status.ALIVE), Status.ALIVE),
        (Update("x", "x", 4, Status.FAILED), Status.FAILED),
        (Update("x", "x", 4, Status.SUSPECT, "y"), Status.FAILED),
        (Update("x", "x", 4, Status.LEFT), Status.LEFT),
        (Update("x", "x", 5, Status.ALIVE), Status.ALIVE),  # a rejoin
    ]
    for update, expected in seq:
        node.receive("y", Gossip((update,)), 0)
        assert node.members()["x"] is expected, update
    kinds = [e.kind for e in node.take_events()]
    assert kinds == ["joined", "suspect", "alive", "failed", "left", "joined"]
    node.receive("y", Gossip((Update("me", "me", 0, Status.SUSPECT, "y"),)), 0)
    assert node.incarnation == 1 and node.awareness == 1  # refuted; refuting costs health


def test_piggybacked_updates_are_sent_at_most_the_retransmit_limit() -> None:
    node = Swim("me", "me", config=SwimConfig(piggyback_bytes=10_000))
    for i in range(9):
        node.receive("x", Gossip((Update(f"m{i}", f"m{i}", 0, Status.ALIVE),)), 0)
    limit = node.retransmit_limit()
    assert limit == 4 * math.ceil(math.log10(10 + 1))  # lambda * ceil(log10(N+1)), N = 10
    sends = [node._piggyback() for _ in range(limit + 3)]
    assert [len(s) for s in sends] == [9] * limit + [0, 0, 0]
    small = Swim("me", "me", config=SwimConfig(piggyback_bytes=100))
    for i in range(9):
        small.receive("x", Gossip((Update(f"m{i}", f"m{i}", 0, Status.ALIVE),)), 0)
    assert 0 < len(small._piggyback()) < 9  # a message carries what fits


def test_missed_acks_raise_the_local_health_multiplier() -> None:
    net = Net(["a", "b", "c", "d"])
    net.run(3)
    net.down.update({"b", "c", "d"})
    net.run(4)
    a = net.nodes["a"]
    assert a.awareness >= 2
    before = a.next_deadline()
    assert before - net.now <= (a.awareness + 1) * T  # the probe interval is scaled by it
    net.down.clear()
    net.run(40)
    assert a.awareness == 0


ALL_MESSAGES: list[Message] = [
    Ping(1, "b", (Update("a", "10.0.0.1:7000", 3, Status.ALIVE),)),
    Ack(2**64 - 1),
    PingReq(5, "c", "10.0.0.3:7000", (Update("c", "x", 1, Status.SUSPECT, "a"),)),
    Nack(7),
    Sync("a", True, (Update("a", "x", 0, Status.ALIVE), Update("é", "y", 9, Status.LEFT))),
    Gossip((Update("d", "z", 2, Status.FAILED),)),
]


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x09",  # unknown kind
        encode(Ping(1, "b")) + b"\x00",  # trailing byte
        encode(Ping(1, "b"))[:-2],  # truncated
        encode(Sync("a", True, ()))[:3] + b"\x02" + b"\x00\x00",  # reply flag 2
        encode(Gossip((Update("d", "z", 2, Status.FAILED),))).replace(b"\x02\x00", b"\x07\x00"),  # status 7
        encode(Gossip((Update("d", "z", 2, Status.FAILED),))).replace(b"\x02\x00", b"\x02\x01a"),  # accuser
        b"\x01" + b"\x00" * 8 + b"\x01\xff\x00",  # target not UTF-8
        b"\x01" + b"\x00" * 8 + b"\x00\x00",  # empty target
        b"\x02" + b"\x00" * 8 + b"\x05",  # five updates announced, none there
    ],
)
def test_decode_rejects_malformed_input(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data)


def test_encode_refuses_what_cannot_be_sent() -> None:
    with pytest.raises(ProtocolError):
        encode(Ping(1, "x" * 256))
    with pytest.raises(ProtocolError):
        encode(Ack(-1))
    with pytest.raises(ProtocolError):
        decode("not bytes")  # type: ignore[arg-type]


# -- the simulator, 100 members -----------------------------------------------------------------

E_RATIO = math.e / (math.e - 1)


def _check_scenario(nodes: int, seed: int, loss: float, check_wire: bool = False, heal_s: float = 10) -> None:
    f = run_scenario(nodes, seed, loss=loss, crashes=3, check_wire=check_wire, all_alive=False)
    assert f.join_s is not None and f.join_s < 30, f
    # SWIM: a crashed member is first probed after e/(e-1) = 1.58 periods on average; the probe
    # then fails at the end of its period: 2.58 periods expected. Three crashes per run: the mean
    # within 1.5 times that, each within 8 periods (the chance of no probe for k periods is ~e^-k).
    assert sum(f.first_suspect_s) / len(f.first_suspect_s) <= 1.5 * (E_RATIO + 1), f
    assert max(f.first_suspect_s) <= 8, f
    # Lifeguard: K=3 confirmations arrive within a few periods, so "failed" follows the first
    # suspicion after the minimum timeout, alpha * log10(n) periods (10 for n = 100; n counts the
    # members alive or suspect at that moment, the crashed ones among them), plus at most 3.
    alpha = SwimConfig().alpha
    for suspect, failed in zip(f.first_suspect_s, f.first_failed_s, strict=True):
        assert alpha * math.log10(nodes - 3) <= failed - suspect <= alpha * math.log10(nodes) + 3, f
    # Dissemination: an epidemic reaches everyone in log2(N) + ln(N) rounds (Pittel); with loss,
    # 1/(1-loss) as many.
    spread = (math.ceil(math.log2(nodes)) + math.ceil(math.log(nodes))) / (1 - loss)
    for failed, everyone in zip(f.first_failed_s, f.all_failed_s, strict=True):
        assert everyone is not None and everyone - failed <= spread, f
    assert f.leave_s is not None and f.leave_s <= spread, f
    assert f.heal_s is not None and f.heal_s <= heal_s, f
    if loss == 0:
        assert f.false_positives == 0, f


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.soak)])
def test_100_members_without_loss(seed: int) -> None:
    _check_scenario(100, seed, 0.0)


def test_30_members_every_message_through_the_wire_encoding() -> None:
    """The same scenario with each message delivered as decode(encode(message)). (A heal takes
    longer in a small cluster: its suspicion timeout, alpha * log10(n), is shorter than the time
    refutations need to cross, so some stale suspicions end as failures and wait for a reconnect.)"""
    _check_scenario(30, 0, 0.05, check_wire=True, heal_s=20)


def test_100_members_with_5_percent_loss() -> None:
    _check_scenario(100, 2, 0.05)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(3, 13))
def test_100_members_more_seeds(seed: int) -> None:
    _check_scenario(100, seed, 0.05 if seed % 2 == 0 else 0.0)


def _idle_rate(nodes: int) -> tuple[float, float]:
    sim = SwimSim(seed=0)
    names = [f"ekv-node-{i:04d}" for i in range(nodes)]
    sim.add(names[0])
    for name in names[1:]:
        sim.run_for(0.01)
        sim.add(name, [names[0]])
    assert sim.run_until_converged(60, strict=False) is not None
    sim.run_until_quiet(60)
    return sim.idle_rate(10)


def test_idle_cost_per_member_does_not_grow_with_n() -> None:
    """Idle, a member sends one ping per period and answers, on average, one: 2 messages per
    period whatever N, and no gossip. The constant stated (docs/scale.md): at most 2.2 messages
    and 100 bytes per member per second, the same at N=20 and N=100."""
    small, large = _idle_rate(20), _idle_rate(100)
    for messages, size in (small, large):
        assert messages <= 2.2 and size <= 100, (small, large)
    assert large[0] <= small[0] * 1.1 and large[1] <= small[1] * 1.1, (small, large)
