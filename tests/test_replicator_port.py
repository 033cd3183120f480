"""The replicator against an in-memory fake of its storage port (no SQLite): Hypothesis chooses
the writes, the order in which messages are delivered, which are dropped or duplicated, the
partitions and the times of the ticks, and the replicator's invariants are checked after every
step; after healing, every node must hold the same data, and that data must keep every write
(the last-writer-wins winner of each key). The way h11 tests its state machine: the protocol
alone, driven exhaustively and fast, apart from the real storage it is also tested with
(tests/test_replicator.py, tests/test_sim.py).

Why the fake is enough here: the port's contract (``ekv._cluster.port.ReplicationStore``) is
small, and :class:`MemPort` implements it with dicts and the one merge rule (``ekv._core.lww``):
an apply keeps the winner of each key and raises the stored vector in the same step; a sync
source serves, from a copy taken when it opens, every row whose dot the requester does not cover,
with the vector of that copy."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ekv._cluster.messages import Live, Message, Summary, SummaryDiff, SyncChunk, SyncRequest
from ekv._cluster.port import DamagedVersion, ReplicationStore
from ekv._cluster.replicator import ReplicationSettings, Replicator
from ekv._cluster.summary import SUMMARY_MIN_MEMBERS
from ekv._core import lww
from ekv._core import vv as vvmod
from ekv._core.keys import check_key, shard_of
from ekv._model import Entry

SHARDS = 2
NS = 1_000_000_000
SETTINGS = ReplicationSettings(
    anti_entropy_interval_ns=10 * NS,
    sync_chunk_entries=2,  # small chunks: many messages to reorder and lose
    sync_timeout_ns=5 * NS,
    quarantine=False,
)


# -- the fake port ------------------------------------------------------------------------------


@dataclass
class MemShard:
    rows: dict[str, Entry] = field(default_factory=dict)
    vv: dict[str, int] = field(default_factory=dict)
    """The stored vector of other origins (raised only by :meth:`MemPort.apply`)."""
    oseq: int = 0
    reports: dict[str, tuple[dict[str, int], int]] = field(default_factory=dict)
    damaged: dict[str, DamagedVersion] = field(default_factory=dict)
    rotten: set[str] = field(default_factory=set)
    """Keys whose stored row "fails its checksum" (set by a test)."""


class MemSync:
    """A sync source over a copy of the shard taken when it opens."""

    def __init__(self, shard: MemShard, version_vector: dict[str, int], peer_vv: Mapping[str, int]) -> None:
        self.kind = "delta"
        self.vv: dict[str, int] = version_vector
        self.sent = 0
        self.damaged: list[str] = []
        self._pending = sorted(
            (e for e in shard.rows.values() if not vvmod.covered(peer_vv, e.origin, e.oseq)), key=lambda e: e.key
        )
        self._rotten = set(shard.rotten)
        self.closed = False

    def next_chunk(self, max_entries: int, max_bytes: int) -> list[Entry]:
        out: list[Entry] = []
        while self._pending and len(out) < max_entries:
            entry = self._pending.pop(0)
            if entry.key in self._rotten:
                self.damaged.append(entry.key)
                self.vv = {}  # withheld, and so is the vector
                continue
            out.append(entry)
        self.sent += len(out)
        return out

    def close(self) -> None:
        self.closed = True


class MemPort:
    """:class:`ReplicationStore` in memory."""

    def __init__(self, node_id: str, origin: str) -> None:
        self.node_id = node_id
        self.origin = origin
        self.shard_count = SHARDS
        self.shards = [MemShard() for _ in range(SHARDS)]
        self.markers: dict[str, int] = {}
        self.last_ts = 0
        self.applies = 0

    # the local write path (not part of the port: the node's own writes)
    def write(self, key: str, value: bytes | None) -> tuple[int, Entry]:
        index = shard_of(check_key(key), SHARDS)
        shard = self.shards[index]
        self.last_ts += 1
        shard.oseq += 1
        entry = Entry(key, self.last_ts, self.origin, shard.oseq, None, value)
        shard.rows[key] = entry  # a local write always wins: its clock is past every version seen
        shard.rotten.discard(key)
        shard.damaged.pop(key, None)
        return index, entry

    def version_vector(self, shard: int) -> dict[str, int]:
        vv = dict(self.shards[shard].vv)
        if self.shards[shard].oseq:
            vv[self.origin] = self.shards[shard].oseq
        return vv

    def own_seq(self, shard: int) -> int:
        return self.shards[shard].oseq

    def apply(self, shard: int, entries: Sequence[Entry], vv: Mapping[str, int] | None = None) -> list[Entry]:
        self.applies += 1
        target = self.shards[shard]
        won = []
        for entry in entries:
            assert shard_of(check_key(entry.key), SHARDS) == shard
            self.last_ts = max(self.last_ts, entry.timestamp_ns)  # the hybrid clock observes it
            current = target.rows.get(entry.key)
            if entry.key in target.rotten or lww.wins(entry.version, current.version if current else None):
                target.rows[entry.key] = entry
                target.rotten.discard(entry.key)
                won.append(entry)
        for origin, oseq in (vv or {}).items():
            assert origin != self.origin, "a node's own origin is never merged"
            target.vv[origin] = max(target.vv.get(origin, 0), oseq)
        return won

    def sync_source(self, shard: int, peer_vv: Mapping[str, int], *, now_ns: int, cutoff_ns: int) -> MemSync:
        return MemSync(self.shards[shard], self.version_vector(shard), peer_vv)

    def record_member_report(self, shard: int, node_id: str, vv: Mapping[str, int], now_ns: int) -> None:
        self.shards[shard].reports[node_id] = (dict(vv), now_ns)

    def member_reports(self, shard: int) -> dict[str, tuple[dict[str, int], int]]:
        return dict(self.shards[shard].reports)

    def load_markers(self, prefix: str) -> dict[str, int]:
        return {name[len(prefix) :]: value for name, value in self.markers.items() if name.startswith(prefix)}

    def set_marker(self, name: str, value: int | None) -> None:
        if value is None:
            self.markers.pop(name, None)
        else:
            self.markers[name] = value

    def damaged(self, shard: int) -> Mapping[str, DamagedVersion]:
        return self.shards[shard].damaged

    def mark_damaged(self, shard: int, key: str, now_ns: int) -> bool:
        target = self.shards[shard]
        if key not in target.rotten:
            return False
        row = target.rows[key]
        target.damaged.setdefault(key, (row.timestamp_ns, row.origin, row.oseq))
        return True

    def row_verifies(self, shard: int, key: str) -> bool:
        return key not in self.shards[shard].rotten

    def forget_damaged(self, shard: int, keys: Sequence[str]) -> None:
        for key in keys:
            self.shards[shard].damaged.pop(key, None)

    def describe(self, shard: int) -> str:
        return f"{self.node_id}/shard-{shard}"


def test_the_fake_implements_the_port() -> None:
    port: ReplicationStore = MemPort("a", "a1")  # mypy checks the structural match
    assert port.shard_count == SHARDS


# -- a cluster of replicators over the fake, with a network Hypothesis controls ---------------------


@dataclass
class InFlight:
    src: str
    dst: str
    session: int
    msg: Message


class Net:
    """Nodes ``n0..``, each a Replicator over a MemPort; a pool of messages in flight."""

    def __init__(self, count: int, seed: int, *, summaries: bool = False) -> None:
        self.summaries = summaries
        """Sessions negotiate the "summary" feature (probes from SUMMARY_MIN_MEMBERS members on)."""
        self.names = [f"n{i}" for i in range(count)]
        self.ports = {name: MemPort(name, f"{name}-origin") for name in self.names}
        self.reps = {
            name: Replicator(
                self.ports[name],
                SETTINGS,
                send=lambda peer, msg, src=name: self._send(src, peer, msg),
                rng=random.Random(seed + i),
            )
            for i, name in enumerate(self.names)
        }
        self.now = NS
        self.sessions: dict[frozenset[str], int] = {}  # connected pairs -> session number
        self._next_session = 1
        self.flight: list[InFlight] = []
        self.writes: list[Entry] = []  # every acknowledged write, of every node

    def _send(self, src: str, dst: str, msg: Message) -> None:
        session = self.sessions.get(frozenset((src, dst)))
        if session is not None:
            self.flight.append(InFlight(src, dst, session, msg))

    def connect(self, a: str, b: str) -> None:
        pair = frozenset((a, b))
        if a == b or pair in self.sessions:
            return
        self.sessions[pair] = self._next_session
        self._next_session += 1
        self.reps[a].peer_up(b, self.now, summaries=self.summaries)
        self.reps[b].peer_up(a, self.now, summaries=self.summaries)

    def disconnect(self, a: str, b: str) -> None:
        if self.sessions.pop(frozenset((a, b)), None) is None:
            return
        self.flight = [m for m in self.flight if frozenset((m.src, m.dst)) != frozenset((a, b))]
        self.reps[a].peer_down(b, self.now)
        self.reps[b].peer_down(a, self.now)

    def write(self, name: str, key: str, value: bytes | None) -> None:
        shard, entry = self.ports[name].write(key, value)
        self.writes.append(entry)
        self.reps[name].on_local_writes(shard, [entry])

    def deliver(self, index: int, *, duplicate: bool = False) -> None:
        item = self.flight[index] if duplicate else self.flight.pop(index)
        if self.sessions.get(frozenset((item.src, item.dst))) == item.session:
            rep = self.reps[item.dst]
            rep.on_message(item.src, item.msg, self.now)
            if rep.busy:
                rep.pump()  # as ClusterNode._kick does after each message

    def tick(self, name: str, advance_ns: int) -> None:
        self.now += advance_ns
        self.reps[name].tick(self.now)

    # -- invariants -------------------------------------------------------------------------------

    def check_invariants(self) -> None:
        for name in self.names:
            port, rep = self.ports[name], self.reps[name]
            for shard in range(SHARDS):
                stored = port.version_vector(shard)
                # the replicator's vector is the stored one: it never claims more than was applied
                assert rep.current_vv(shard) == stored, (name, shard)
                rows = port.shards[shard].rows
                for write in self.writes:
                    if shard_of(check_key(write.key), SHARDS) != shard:
                        continue
                    if vvmod.covered(stored, write.origin, write.oseq):
                        # a covered write is held, or a newer version of its key is
                        row = rows.get(write.key)
                        assert row is not None and row.version >= write.version, (name, write, row)

    def heal(self) -> None:
        """Connect everyone, deliver in order with no loss, tick past the anti-entropy interval
        until nothing is left to send."""
        for a in self.names:
            for b in self.names:
                self.connect(a, b)
        for _ in range(50):
            while self.flight:
                self.deliver(0)
            if not any(rep.busy for rep in self.reps.values()) and self.converged():
                return
            for name in self.names:
                self.tick(name, SETTINGS.anti_entropy_interval_ns)
        raise AssertionError("did not converge after healing")

    def converged(self) -> bool:
        """Same rows everywhere, and every vector covers every write."""
        first = self.ports[self.names[0]]
        for name in self.names:
            for shard in range(SHARDS):
                if self.ports[name].shards[shard].rows != first.shards[shard].rows:
                    return False
                vv = self.reps[name].current_vv(shard)
                if any(not vvmod.covered(vv, w.origin, w.oseq) for w in self.writes if _shard(w.key) == shard):
                    return False
        return True

    def expected(self) -> dict[str, Entry]:
        best: dict[str, Entry] = {}
        for write in self.writes:
            merged = lww.merge(best.get(write.key), write)
            assert merged is not None
            best[write.key] = merged
        return best


def _shard(key: str) -> int:
    return shard_of(check_key(key), SHARDS)


KEYS = ["a", "b", "c", "d", "e"]
NODES = 3

write_action = st.tuples(
    st.just("write"),
    st.integers(0, NODES - 1),
    st.sampled_from(KEYS),
    st.one_of(st.none(), st.binary(min_size=1, max_size=3)),
)
action = st.one_of(
    write_action,
    st.tuples(st.just("deliver"), st.integers(0, 1 << 16)),
    st.tuples(st.just("deliver"), st.integers(0, 1 << 16)),
    st.tuples(st.just("deliver"), st.integers(0, 1 << 16)),
    st.tuples(st.just("drop"), st.integers(0, 1 << 16)),
    st.tuples(st.just("duplicate"), st.integers(0, 1 << 16)),
    st.tuples(st.just("tick"), st.integers(0, NODES - 1), st.integers(0, 12 * NS)),
    st.tuples(st.just("connect"), st.integers(0, NODES - 1), st.integers(0, NODES - 1)),
    st.tuples(st.just("disconnect"), st.integers(0, NODES - 1), st.integers(0, NODES - 1)),
)


def run(net: Net, actions: list[tuple[Any, ...]]) -> None:
    names = net.names
    for act in actions:
        kind = act[0]
        if kind == "write":
            net.write(names[act[1]], act[2], act[3])
        elif kind in ("deliver", "drop", "duplicate") and net.flight:
            index = act[1] % len(net.flight)
            if kind == "drop":
                del net.flight[index]
            else:
                net.deliver(index, duplicate=kind == "duplicate")
        elif kind == "tick":
            net.tick(names[act[1]], act[2])
        elif kind == "connect":
            net.connect(names[act[1]], names[act[2]])
        elif kind == "disconnect":
            net.disconnect(names[act[1]], names[act[2]])
        net.check_invariants()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(apart=st.lists(write_action, max_size=8), actions=st.lists(action, max_size=60), seed=st.integers(0, 1 << 16))
def test_any_delivery_order_keeps_the_invariants_and_converges_after_healing(
    apart: list[tuple[Any, ...]], actions: list[tuple[Any, ...]], seed: int
) -> None:
    net = Net(NODES, seed)
    run(net, apart)  # writes made apart: the sessions start with syncs that carry data
    net.connect("n0", "n1")
    net.connect("n1", "n2")
    run(net, actions)
    net.heal()
    net.check_invariants()
    expected = net.expected()
    for name in net.names:
        rows = {key: entry for shard in net.ports[name].shards for key, entry in shard.rows.items()}
        assert rows == expected, name  # no acknowledged write lost, on any node


def test_healthy_members_exchange_nothing_once_in_sync() -> None:
    """After convergence a round of anti-entropy sends no entries: each vector covers the
    other's writes (the fake serves only rows the requester does not cover)."""
    net = Net(2, 0)
    net.connect("n0", "n1")
    for i in range(5):
        net.write("n0", f"k{i}", b"x")
        net.write("n1", f"j{i}", b"y")
    net.heal()
    net.flight.clear()
    for name in net.names:
        net.tick(name, 2 * SETTINGS.anti_entropy_interval_ns)
    chunks = []
    while net.flight:
        item = net.flight.pop(0)
        chunks += [item.msg] if isinstance(item.msg, SyncChunk) else []
        net.reps[item.dst].on_message(item.src, item.msg, net.now)
    assert chunks == []


# -- repair bookkeeping: who resent a damaged shard is the replicator's state ---------------------


def _drain(net: Net) -> None:
    while net.flight:
        net.deliver(0)


def test_a_damaged_key_is_repaired_once_every_member_resent_the_shard() -> None:
    net = Net(3, 0)
    net.write("n1", "a", b"good")
    shard = shard_of(check_key("a"), SHARDS)
    for a, b in (("n0", "n1"), ("n0", "n2"), ("n1", "n2")):
        net.connect(a, b)
    _drain(net)
    port = net.ports["n0"]
    assert port.shards[shard].rows["a"].value == b"good"
    port.shards[shard].rotten.add("a")  # bit rot on n0
    port.mark_damaged(shard, "a", net.now)
    assert "a" in port.damaged(shard)

    net.tick("n0", 1)  # one resend asked of each member
    requests = [m for m in net.flight if isinstance(m.msg, SyncRequest) and m.src == "n0"]
    assert sorted(m.dst for m in requests) == ["n1", "n2"]
    assert all(m.msg.vv == {} for m in requests)
    _drain(net)
    assert "a" not in port.shards[shard].rotten  # the resent copy replaced the damaged row
    assert port.damaged(shard) == {}  # and, every member having resent, the record is gone
    net.tick("n0", 1)
    assert not [m for m in net.flight if isinstance(m.msg, SyncRequest) and m.src == "n0"]  # not asked again


def test_damage_found_after_a_resend_asks_every_member_again() -> None:
    """The count of members that resent a shard starts again when new damage is found there
    (it used to be ``Shard.resent_by``, cleared by the shard; now the replicator sees it)."""
    net = Net(2, 0)
    shard = shard_of(check_key("a"), SHARDS)
    other = next(k for k in ("b", "c", "d", "e", "f", "g") if shard_of(check_key(k), SHARDS) == shard)
    net.write("n0", "a", b"1")
    net.write("n0", other, b"only here")
    port = net.ports["n0"]
    # damage with no copy anywhere (n1 never got it): the resend cannot replace it, it stays
    port.shards[shard].rotten.add(other)
    port.mark_damaged(shard, other, net.now)
    net.flight.clear()
    net.connect("n0", "n1")
    _drain(net)
    assert other not in net.ports["n1"].shards[shard].rows  # a damaged row is never sent
    net.tick("n0", 1)
    _drain(net)
    assert other in port.damaged(shard)
    net.tick("n0", 1)
    assert not net.flight  # n1 already resent for this damage
    port.shards[shard].rotten.add("a")
    port.mark_damaged(shard, "a", net.now)  # new damage: n1 is asked again
    net.tick("n0", 1)
    assert [(m.dst, m.msg.vv) for m in net.flight if isinstance(m.msg, SyncRequest)] == [("n1", {})]
    _drain(net)
    assert set(port.damaged(shard)) == {other}
    assert port.shards[shard].rows["a"].value == b"1"


def test_live_messages_out_of_order_never_raise_the_vector_past_a_gap() -> None:
    net = Net(2, 0)
    net.connect("n0", "n1")
    _drain(net)
    for value in (b"1", b"2", b"3"):
        net.write("n0", "a", value)
    lives = [m for m in net.flight if isinstance(m.msg, Live)]
    assert len(lives) == 3
    net.flight = [lives[2], lives[1]]  # the first is lost, the rest arrive reversed
    _drain(net)
    shard = shard_of(check_key("a"), SHARDS)
    assert net.ports["n1"].shards[shard].rows["a"].value == b"3"
    assert net.reps["n1"].current_vv(shard).get("n0-origin", 0) == 0
    net.check_invariants()
    net.heal()
    assert net.reps["n1"].current_vv(shard)["n0-origin"] == 3


def test_an_incomplete_sync_is_not_merged() -> None:
    net = Net(2, 0)
    for i in range(6):
        net.write("n0", f"k{i}", b"v")
    net.connect("n0", "n1")

    def chunk_to_n1() -> InFlight | None:
        return next((m for m in net.flight if isinstance(m.msg, SyncChunk) and m.dst == "n1"), None)

    while chunk_to_n1() is None:
        net.deliver(0)
    lost = chunk_to_n1()
    assert lost is not None
    net.flight.remove(lost)
    _drain(net)
    shard = lost.msg.shard
    assert net.reps["n1"].peers["n0"].last_sync[shard]["complete"] is False
    assert net.reps["n1"].current_vv(shard).get("n0-origin", 0) == 0  # not merged
    net.check_invariants()
    net.heal()


# -- summary probes (large clusters) -------------------------------------------------------------


def _round(net: Net) -> list[InFlight]:
    """Every node ticks one anti-entropy interval later; everything sent meanwhile, delivered."""
    net.flight.clear()
    for name in net.names:
        net.tick(name, 2 * SETTINGS.anti_entropy_interval_ns)
    sent: list[InFlight] = []
    while net.flight:
        sent.append(net.flight[0])
        net.deliver(0)
    return sent


def test_an_idle_large_cluster_sends_one_probe_and_one_answer_per_node_and_round() -> None:
    net = Net(SUMMARY_MIN_MEMBERS + 1, 0, summaries=True)
    for i in range(4):
        net.write(net.names[i], f"k{i}", b"x")
    net.heal()
    _round(net)  # (a node's first round in summary mode is one interval after entering it)
    for _ in range(3):
        sent = _round(net)
        assert sorted(type(m.msg).__name__ for m in sent) == ["Summary"] * len(net.names) + ["SummaryDiff"] * len(
            net.names
        )
        assert all(m.msg.shards == () for m in sent if isinstance(m.msg, SummaryDiff))
        assert len({m.src for m in sent if isinstance(m.msg, Summary)}) == len(net.names)  # one probe each


def test_below_the_threshold_every_member_is_pulled_every_round() -> None:
    """Small clusters keep the full pulls, also with members that support probes."""
    net = Net(SUMMARY_MIN_MEMBERS, 0, summaries=True)  # SUMMARY_MIN_MEMBERS - 1 members each
    net.heal()
    _round(net)
    sent = _round(net)
    requests = [m for m in sent if isinstance(m.msg, SyncRequest)]
    assert len(requests) == len(net.names) * (len(net.names) - 1) * SHARDS
    assert not any(isinstance(m.msg, Summary | SummaryDiff) for m in sent)


def test_members_without_the_feature_are_pulled_as_before_in_a_large_cluster() -> None:
    net = Net(SUMMARY_MIN_MEMBERS + 1, 0, summaries=False)
    net.heal()
    _round(net)
    sent = _round(net)
    assert len([m for m in sent if isinstance(m.msg, SyncRequest)]) == len(net.names) * (len(net.names) - 1) * SHARDS
    assert not any(isinstance(m.msg, Summary) for m in sent)


def test_a_probe_pulls_only_the_shards_that_differ_both_ways() -> None:
    net = Net(SUMMARY_MIN_MEMBERS + 1, 1, summaries=True)
    net.heal()
    _round(net)
    net.write("n0", "lost", b"v")  # its Live messages are lost
    net.flight.clear()
    shard = _shard("lost")
    net.tick("n0", 2 * SETTINGS.anti_entropy_interval_ns)
    (probe,) = net.flight
    assert isinstance(probe.msg, Summary) and len(probe.msg.digests) == SHARDS
    net.deliver(0)
    answer, pull = net.flight  # the member answers, and pulls the differing shard from the prober
    assert isinstance(answer.msg, SummaryDiff) and answer.msg.shards == (shard,)
    assert isinstance(pull.msg, SyncRequest) and pull.msg.shard == shard and pull.dst == "n0"
    net.deliver(0)
    assert [(type(m.msg), m.msg.shard) for m in net.flight[1:]] == [(SyncRequest, shard)]  # n0 pulls it too
    _drain(net)
    assert "lost" in net.ports[probe.dst].shards[shard].rows
    assert net.reps[probe.dst].current_vv(shard) == net.reps["n0"].current_vv(shard)


def test_a_matching_probe_reports_the_members_vector_for_log_truncation() -> None:
    """In summary mode nothing but probes tells a node what its members cover between sessions:
    without it, the change log could never be truncated past the session's start."""
    net = Net(SUMMARY_MIN_MEMBERS + 1, 2, summaries=True)
    net.heal()
    for i in range(6):
        net.write("n0", f"t{i}", b"v")
    for _ in range(SUMMARY_MIN_MEMBERS * 3):  # every pair probes at least once
        _round(net)
    for shard in range(SHARDS):
        vv = net.reps["n0"].current_vv(shard)
        assert net.reps["n0"].truncation_targets(shard, net.now, NS) == vv


def test_answers_to_probes_never_sent_are_ignored() -> None:
    net = Net(SUMMARY_MIN_MEMBERS + 1, 3, summaries=True)
    net.heal()
    net.flight.clear()
    net.reps["n0"].on_message("n1", SummaryDiff(12345, (0, 1)), net.now)
    net.reps["n0"].on_message("n1", Summary(1, (b"\0" * 8,)), net.now)  # wrong shard count: ignored
    assert net.flight == []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(action, max_size=60), seed=st.integers(0, 1 << 16))
def test_probes_under_any_delivery_order_keep_the_invariants_and_converge(
    actions: list[tuple[Any, ...]], seed: int
) -> None:
    """A large cluster (probes, not full pulls) with Hypothesis choosing deliveries, losses,
    duplicates, ticks and sessions among three of its nodes; the others are always connected."""
    net = Net(SUMMARY_MIN_MEMBERS + 2, seed, summaries=True)
    net.heal()
    run(net, actions)
    net.heal()
    net.check_invariants()
    expected = net.expected()
    for name in net.names:
        rows = {key: entry for shard in net.ports[name].shards for key, entry in shard.rows.items()}
        assert rows == expected, name


def test_a_session_starting_in_a_large_cluster_exchanges_digests_not_a_pull_of_every_shard() -> None:
    """A partition's heal or a restart starts N-1 sessions at once: with a pull of every shard on
    each, a 64-node simulation spent most of its messages there (docs/scale.md)."""
    net = Net(SUMMARY_MIN_MEMBERS + 1, 4, summaries=True)
    net.heal()
    _drain(net)
    net.disconnect("n0", "n1")
    net.flight.clear()
    net.connect("n0", "n1")
    assert sorted((m.src, type(m.msg).__name__) for m in net.flight) == [("n0", "Summary"), ("n1", "Summary")]
    _drain(net)  # equal vectors: the answers name no shard, and nothing is pulled


def test_a_session_starting_in_a_large_cluster_pulls_the_shards_that_differ() -> None:
    net = Net(SUMMARY_MIN_MEMBERS + 1, 5, summaries=True)
    net.heal()
    _drain(net)
    for other in net.names[1:]:
        net.disconnect("n0", other)
    net.write("n0", "apart", b"v")  # made while n0 is cut off
    for other in net.names[2:]:
        net.connect("n0", other)
    net.flight = [m for m in net.flight if "n1" not in (m.src, m.dst)]
    net.connect("n0", "n1")  # n1 has heard nothing of it yet: only the session start can tell it
    requests = [m for m in net.flight if isinstance(m.msg, SyncRequest) and m.src == "n1"]
    assert requests == []  # no pull of every shard
    while any("n1" in (m.src, m.dst) for m in net.flight):
        net.deliver(next(i for i, m in enumerate(net.flight) if "n1" in (m.src, m.dst)))
    assert "apart" in net.ports["n1"].shards[_shard("apart")].rows


def test_writes_delivered_out_of_order_are_covered_once_the_gap_fills() -> None:
    """A broadcast tree may deliver an origin's oseq 2 before 1 (1 came by a graft): 2 is applied
    at once, and when 1 arrives the vector must pass both, not stop at 1 and make anti-entropy
    send 2 again."""
    net = Net(2, 6)
    writer, receiver = net.ports["n0"], net.reps["n1"]
    shard, first = writer.write("k1", b"a")
    entries = [first]
    while len(entries) < 3:  # more writes of the same shard, oseqs 2 and 3
        index, entry = writer.write(f"k{len(entries) + 1}-{net.now}", b"b")
        if index == shard:
            entries.append(entry)
        net.now += 1
    receiver.apply_live(Live(shard, (entries[2],)))
    receiver.apply_live(Live(shard, (entries[1],)))
    assert receiver.current_vv(shard).get(writer.origin, 0) == 0  # (the gap at 1)
    receiver.apply_live(Live(shard, (entries[0],)))
    assert receiver.current_vv(shard)[writer.origin] == 3
    assert net.ports["n1"].version_vector(shard)[writer.origin] == 3  # stored with the rows


def test_ahead_keeps_at_most_its_limit_and_forgets_what_the_vector_passed() -> None:
    ahead = vvmod.Ahead()
    vv: dict[str, int] = {}
    ahead.hold(vv, {"o": list(range(3, 3 + vvmod.Ahead.LIMIT + 10))})
    vv.update(ahead.raised(vv, {"o": [1, 2]}))
    assert vv == {"o": 2 + vvmod.Ahead.LIMIT}  # the lowest LIMIT were kept
    ahead.hold(vv, {"o": [1, 2]})
    assert ahead.raised(vv, {"o": []}) == {}  # nothing held any more


class _Demand:
    """Large mode's hook (:class:`ekv._cluster.ondemand.OnDemand`, the port's ``Demand``): SWIM's
    live members, and the members asked for."""

    def __init__(self, live: set[str]) -> None:
        self.live = live
        self.wanted: list[str] = []

    def live_members(self) -> set[str]:
        return self.live

    def want(self, node_id: str) -> None:
        self.wanted.append(node_id)


def test_large_mode_truncation_waits_for_live_members_without_sessions_and_rounds_dial_them() -> None:
    port = MemPort("a", "a1")
    shard, _ = port.write("k0/x", b"v")
    rep = Replicator(port, ReplicationSettings(anti_entropy_interval_ns=NS), send=lambda _p, _m: None)
    assert rep.truncation_targets(shard, 10 * NS, NS) is None  # nobody known: the log may go
    rep.demand = demand = _Demand({"b", "c"})
    targets = rep.truncation_targets(shard, 10 * NS, NS)
    assert targets is not None and all(oseq == 0 for oseq in targets.values()), targets  # b, c never reported
    port.record_member_report(shard, "b", rep.current_vv(shard), 10 * NS)
    port.record_member_report(shard, "c", rep.current_vv(shard), 10 * NS)
    assert rep.truncation_targets(shard, 10 * NS, NS) == rep.current_vv(shard)  # both reported (a probe matched)
    for t in range(1, 6):  # the rounds' partners: live members without a session, dialed for the round
        rep.tick(t * 2 * NS)
    assert set(demand.wanted) == {"b", "c"}, demand.wanted
