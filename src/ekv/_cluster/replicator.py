"""The replication state machine of one node: sans-I/O, deterministic, shared by the running node
and the simulator.

It is driven from outside, on one thread: :meth:`peer_up` / :meth:`peer_down` when an
authenticated session with a member starts or ends, :meth:`on_message` for each message from a
member, :meth:`on_local_writes` with the writes this node committed, and :meth:`tick` with the
current time. It answers by calling ``send(peer_id, message)`` and by reading and writing the
store. It never blocks on the network and never reads the clock by itself.

Protocol (per shard, see docs/architecture.md for why it converges):

* Live: every local write is sent to every connected member as it commits (``Live``, the
  sender's own writes only, in oseq order). The receiver applies them through LWW and raises its
  version vector through consecutive oseqs of that origin. In a large cluster the members that
  negotiated ``"plumtree"`` get them through the broadcast tree instead (:attr:`Replicator.tree`,
  :mod:`ekv._cluster.broadcast`), which hands what it delivers to :meth:`Replicator.apply_live`.
* Pull sync: when a session starts, and then every ``anti_entropy_interval`` (jittered), a node
  sends each member ``SyncRequest(vv)`` per shard (one in flight per member and shard). The member
  answers from one snapshot with every row whose dot the requester does not cover, from its change
  log (delta) or all live rows and recent tombstones (full), in bounded chunks, then ``SyncDone``
  with its vector, merged only if every chunk arrived in order. A member's log also holds what it
  applied from third nodes, so pulling from B relays A's writes to C when A and C cannot talk;
  healthy members send each other nothing.
* Summary probes (from :data:`~ekv._cluster.summary.SUMMARY_MIN_MEMBERS` members on, with those
  that negotiated ``"summary"``; :mod:`ekv._cluster.summary`): the periodic pulls are replaced by
  one round per interval probing ONE member (a digest per shard, answered with the shards that
  differ, pulled both ways); sessions start with a probe. In large mode the partner is any live
  member, dialed for the round (:attr:`Replicator.demand`, :mod:`ekv._cluster.ondemand`).
* Long partitions: when a member goes away (in large mode: SWIM says so) its down-since time is
  persisted; a member back after more than ``tombstone_ttl`` is quarantined (no sync, no live
  traffic, logged, in ``info()``) until the operator clears it: deletes may have been purged.
* Repair: while a shard holds rows that failed their checksum (:mod:`ekv._storage.integrity`), each
  connected member is asked once for a full resend of it (a ``SyncRequest`` with an empty vector).
  A member never sends a damaged row, and then withholds its vector (the requester must not
  record as covered a write it never received).

It reaches storage only through :class:`~ekv._cluster.port.ReplicationStore` (never
``ekv._storage``), so it runs as well over an in-memory fake as over the real store.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from ekv._cluster.messages import Live, Message, Summary, SummaryDiff, SyncChunk, SyncDone, SyncRequest, TreeMessage
from ekv._cluster.port import DamagedVersion, Demand, ReplicationStore, SyncSource, Tree
from ekv._cluster.summary import SUMMARY_MIN_MEMBERS, Rotation, differing, digest
from ekv._core import vv as vvmod
from ekv._core.durations import NS_PER_S, tombstone_cutoff_ns
from ekv._core.retire import PREFIX, Compactor
from ekv._model import Entry

__all__ = ["ReplicationSettings", "Replicator"]


@dataclass(frozen=True, slots=True)
class ReplicationSettings:
    anti_entropy_interval_ns: int = 30 * NS_PER_S
    sync_chunk_entries: int = 500
    sync_chunk_bytes: int = 1 << 20
    tombstone_ttl_ns: int = 7 * 86_400 * NS_PER_S
    sync_timeout_ns: int = 60 * NS_PER_S
    """A pull that made no progress for this long is abandoned and retried (its requests or
    answers were lost without the session ending)."""
    quarantine: bool = True
    """Quarantine members that come back after more than ``tombstone_ttl``."""


@dataclass(slots=True)
class _OutSync:
    sync_id: int
    snapshot: SyncSource
    seq: int = 0
    started_ns: int = 0


@dataclass(slots=True)
class _InSync:
    sync_id: int
    started_ns: int
    progress_ns: int = 0
    next_seq: int = 0
    entries: int = 0
    broken: bool = False
    resend: bool = False
    """A repair pull: the member was asked for everything, to replace damaged rows."""


@dataclass(slots=True)
class PeerState:
    """What this node tracks about one connected member."""

    node_id: str
    connected_at_ns: int
    last_seen_ns: int
    quarantined: bool = False
    out: dict[int, _OutSync] = field(default_factory=dict)
    inbound: dict[int, _InSync] = field(default_factory=dict)
    next_pull_ns: dict[int, int] = field(default_factory=dict)
    reported_vv: dict[int, dict[str, int]] = field(default_factory=dict)
    last_sync: dict[int, dict[str, Any]] = field(default_factory=dict)
    syncs_in: dict[str, int] = field(default_factory=lambda: {"delta": 0, "full": 0})
    resent: set[int] = field(default_factory=set)
    """Shards this member has fully resent in this session, after a cleared quarantine."""
    deferred: dict[int, SyncRequest] = field(default_factory=dict)
    """Its sync requests received while it was quarantined: answered if the quarantine is
    cleared during this session (the operator clears both sides, one after the other)."""
    syncs_out: dict[str, int] = field(default_factory=lambda: {"delta": 0, "full": 0})
    summaries: bool = False
    """It negotiated the ``"summary"`` feature: it answers probes (and in a large cluster, only
    probes replace its periodic pulls)."""
    probe: tuple[int, list[dict[str, int]]] | None = None
    """The probe awaiting its answer: its id and the vectors whose digests it carried."""


@dataclass(slots=True)
class _Repair:
    """The repair of one shard's damaged rows: the damage it is for, and the members that
    completed a full resend of the shard since that damage was found."""

    damage: dict[str, DamagedVersion]
    resent_by: set[str] = field(default_factory=set)


class Replicator:
    """Replication for one node (all shards). Not thread-safe: one driver thread at a time."""

    def __init__(
        self,
        store: ReplicationStore,
        settings: ReplicationSettings,
        *,
        send: Callable[[str, Message], None],
        can_send: Callable[[str], bool] = lambda _peer: True,
        rng: random.Random | None = None,
        log: Any = None,
    ) -> None:
        self.store = store
        self.node_id = store.node_id
        self.origin = store.origin
        """This node's current origin: its writes, excluded from merges (it knows them best)."""
        self.settings = settings
        self._send = send
        self._can_send = can_send
        self._rng = rng or random.Random()
        self._log = log
        self._shards = store.shard_count
        self._next_sync_id = 1
        self._now = 0
        self.peers: dict[str, PeerState] = {}
        self._sync_counts: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
        """Per member, the syncs it served us and we served it, by kind, since this node started:
        a session's ``syncs_in``/``syncs_out`` are these dicts, so that a reconnect, or the
        duplicate connection two members dial at once replacing the first, does not reset them
        (they back the ``ekv_syncs_*_total`` counters, which may only grow)."""
        self.vv: list[dict[str, int]] = [self._load_vv(i) for i in range(self._shards)]
        self._ahead = [vvmod.Ahead() for _ in range(self._shards)]  # (writes the tree delivered early)
        self.retired = Compactor(settings.tombstone_ttl_ns)  # drops retired origins (ekv._core.retire)
        self.stats = {
            "live_sent": 0,
            "live_received": 0,
            "live_applied": 0,
            "sync_entries_applied": 0,
            "repair_pulls": 0,
        }
        self._down_since: dict[str, int] = self._load_markers("member_down/")
        self.quarantined: dict[str, int] = self._load_markers("member_quarantined/")
        self._resend_from: dict[str, int] = self._load_markers("member_resend/")
        """Members whose quarantine was cleared: pull everything from them once (persisted)."""
        self._repairs: dict[int, _Repair] = {}
        """Per damaged shard, who has resent it (see :meth:`_repair_of`); not persisted: after
        a restart every member is asked again."""
        self.rotation = Rotation(self._rng)
        """Anti-entropy rounds' partners (large mode: :meth:`Rotation.back` when SWIM sees one back)."""
        self._next_round_ns: int | None = None
        """When the next summary round is due (None: not in summary mode)."""
        self._next_probe = 1
        self.tree: Tree | None = None
        """The broadcast tree, if the driver has one (set after construction)."""
        self.demand: Demand | None = None  # large mode's sessions on demand (set after construction)

    # -- persistent node-level markers (kept by the store) -------------------------------------

    def _load_markers(self, prefix: str) -> dict[str, int]:
        return self.store.load_markers(prefix)

    def _set_marker(self, prefix: str, node_id: str, value: int | None) -> None:
        self.store.set_marker(prefix + node_id, value)

    def _load_vv(self, shard: int) -> dict[str, int]:
        return self.store.version_vector(shard)

    def _info(self, msg: str, *args: object) -> None:
        if self._log is not None:
            self._log.info(msg, *args)

    def _warning(self, msg: str, *args: object) -> None:
        if self._log is not None:
            self._log.warning(msg, *args)

    # -- sessions ----------------------------------------------------------------------------

    def peer_up(self, peer_id: str, now_ns: int, *, summaries: bool = False, probe: bool = True) -> None:
        """A session with member ``peer_id`` started (``summaries``: it negotiated ``"summary"``;
        ``probe``: start with a probe in summary mode; in large mode only the dialer does)."""
        self.peer_down(peer_id, now_ns, record=False)  # a new session replaces any old one
        state = PeerState(peer_id, connected_at_ns=now_ns, last_seen_ns=now_ns, summaries=summaries)
        counts = self._sync_counts.setdefault(peer_id, ({"delta": 0, "full": 0}, {"delta": 0, "full": 0}))
        state.syncs_in, state.syncs_out = counts
        self.peers[peer_id] = state
        down = self._down_since.pop(peer_id, None)
        if peer_id in self.quarantined:
            state.quarantined = True
        elif down is not None and self.settings.quarantine and now_ns - down > self.settings.tombstone_ttl_ns:
            state.quarantined = True
            self.quarantined[peer_id] = now_ns
            self._set_marker("member_quarantined/", peer_id, now_ns)
            self._warning(
                "QUARANTINED member %s: it was unreachable for %.0f s, longer than tombstone_ttl (%.0f s); "
                "syncing could resurrect deleted keys, so this pair will not replicate. See docs/operators.md "
                "('Quarantine') for the way out.",
                peer_id,
                (now_ns - down) / NS_PER_S,
                self.settings.tombstone_ttl_ns / NS_PER_S,
            )
        if down is not None:
            self._set_marker("member_down/", peer_id, None)
        if self.tree is not None:
            self.tree.peers_changed()  # (may send to it, and a failed send ends the session at once)
        if state.quarantined or self.peers.get(peer_id) is not state:
            return
        if summaries and self._summary_mode():
            if probe:
                self._probe(peer_id)  # one digest each way; only the shards that differ are pulled
            return
        for shard in range(self._shards):
            self._pull(state, shard, now_ns)

    def peer_down(self, peer_id: str, now_ns: int, *, record: bool = True) -> None:
        """The session with ``peer_id`` ended: abort its syncs; remember since when it is gone."""
        state = self.peers.pop(peer_id, None)
        if state is None:
            return
        for out in state.out.values():
            out.snapshot.close()
        state.out.clear()
        state.inbound.clear()
        if record:
            self.member_gone(peer_id, now_ns)
        if record and self.tree is not None:
            self.tree.peers_changed()

    def member_gone(self, peer_id: str, now_ns: int) -> None:
        """Remember since when ``peer_id`` is gone (its session ended, or in large mode SWIM said so)."""
        if peer_id not in self._down_since:
            self._down_since[peer_id] = now_ns
            self._set_marker("member_down/", peer_id, now_ns)

    def clear_quarantine(self, peer_id: str) -> bool:
        """Operator override: allow ``peer_id`` to sync again (accepting that deletes purged
        during the partition may come back). Takes effect at once if it is connected, else on
        its next session.

        The first syncs from it are full resends (an empty vector), not deltas: this node's vector
        may cover writes whose rows it no longer has (a purged tombstone covers the put it deleted),
        which a delta would never send again; a resend converges both sides on the surviving value."""
        found = self.quarantined.pop(peer_id, None) is not None
        self._down_since.pop(peer_id, None)
        self._set_marker("member_quarantined/", peer_id, None)
        self._set_marker("member_down/", peer_id, None)
        if found:
            self._resend_from[peer_id] = self._now
            self._set_marker("member_resend/", peer_id, self._now)
        state = self.peers.get(peer_id)
        if state is not None:
            state.quarantined = False
            deferred, state.deferred = state.deferred, {}
            for request in deferred.values():
                self._on_sync_request(state, request, self._now)
            self._resend_pulls(self._now)
            if self.tree is not None:
                self.tree.peers_changed()
        return found

    def close(self) -> None:
        for peer_id in list(self.peers):
            state = self.peers.pop(peer_id)
            for out in state.out.values():
                out.snapshot.close()

    # -- inbound -----------------------------------------------------------------------------

    def on_message(self, peer_id: str, msg: Message, now_ns: int) -> None:
        self._now = now_ns
        state = self.peers.get(peer_id)
        if state is None:
            return  # no session (message raced the end of a session)
        state.last_seen_ns = now_ns
        if state.quarantined:
            if isinstance(msg, SyncRequest) and self._check_shard(msg.shard):
                state.deferred[msg.shard] = msg
            return
        if isinstance(msg, Live):
            self.apply_live(msg)
        elif isinstance(msg, TreeMessage):
            if self.tree is not None:
                self.tree.receive(peer_id, msg)
        elif isinstance(msg, SyncRequest):
            self._on_sync_request(state, msg, now_ns)
        elif isinstance(msg, SyncChunk):
            self._on_sync_chunk(state, msg)
        elif isinstance(msg, SyncDone):
            self._on_sync_done(state, msg, now_ns)
        elif isinstance(msg, Summary):
            self._on_summary(state, msg, now_ns)
        elif isinstance(msg, SummaryDiff):
            self._on_summary_diff(state, msg, now_ns)

    def _check_shard(self, shard: int) -> bool:
        return 0 <= shard < self._shards

    def apply_live(self, msg: Live) -> None:
        """Apply writes sent live: from the member that made them, or delivered by the tree."""
        if not self._check_shard(msg.shard) or not msg.entries:
            return
        self.stats["live_received"] += len(msg.entries)
        vv, ahead = self.vv[msg.shard], self._ahead[msg.shard]
        by_origin: dict[str, list[int]] = {}
        for entry in msg.entries:
            if entry.origin != self.origin:
                by_origin.setdefault(entry.origin, []).append(entry.oseq)
        raised = ahead.raised(vv, by_origin)
        applied = self.store.apply(msg.shard, msg.entries, raised or None)
        self.stats["live_applied"] += len(applied)
        vv.update(raised)
        ahead.hold(vv, by_origin)

    def _on_sync_request(self, state: PeerState, msg: SyncRequest, now_ns: int) -> None:
        if not self._check_shard(msg.shard):
            return
        peer_vv = {origin: oseq for origin, oseq in msg.vv.items() if oseq > 0}
        state.reported_vv[msg.shard] = peer_vv
        self.store.record_member_report(msg.shard, state.node_id, peer_vv, now_ns)
        old = state.out.pop(msg.shard, None)
        if old is not None:
            old.snapshot.close()
        snapshot = self.store.sync_source(
            msg.shard, peer_vv, now_ns=now_ns, cutoff_ns=tombstone_cutoff_ns(now_ns, self.settings.tombstone_ttl_ns)
        )
        state.out[msg.shard] = _OutSync(msg.sync_id, snapshot, started_ns=now_ns)
        state.syncs_out[snapshot.kind] += 1

    def _on_sync_chunk(self, state: PeerState, msg: SyncChunk) -> None:
        current = state.inbound.get(msg.shard)
        if current is None or current.sync_id != msg.sync_id:
            # A late chunk of an abandoned sync: its entries are still valid versions (LWW makes
            # applying them safe), it just cannot count towards a complete sync.
            if msg.entries and self._check_shard(msg.shard):
                self.stats["sync_entries_applied"] += len(self.store.apply(msg.shard, msg.entries))
            return
        current.progress_ns = self._now
        if msg.seq != current.next_seq:
            current.broken = True  # lost or reordered: still apply (LWW is safe), never merge
        current.next_seq = max(current.next_seq, msg.seq) + 1
        current.entries += len(msg.entries)
        if msg.entries:
            applied = self.store.apply(msg.shard, msg.entries)
            self.stats["sync_entries_applied"] += len(applied)

    def _on_sync_done(self, state: PeerState, msg: SyncDone, now_ns: int) -> None:
        current = state.inbound.get(msg.shard)
        if current is None or current.sync_id != msg.sync_id:
            return
        del state.inbound[msg.shard]
        complete = not current.broken and current.next_seq == msg.chunks and current.entries == msg.entries
        if complete and current.resend:
            self._resent(state.node_id, msg.shard)
            if state.node_id in self._resend_from:
                state.resent.add(msg.shard)
                if len(state.resent) == self._shards:
                    del self._resend_from[state.node_id]
                    self._set_marker("member_resend/", state.node_id, None)
        if complete:
            vv = self.vv[msg.shard]
            theirs = self.retired.mergeable(msg.vv, vv, now_ns)  # (no dropped origin back; ours unmarked: departed)
            raised = {o: n for o, n in theirs.items() if o.removeprefix(PREFIX) != self.origin and n > vv.get(o, 0)}
            if raised:
                self.store.apply(msg.shard, [], raised)
                vv.update(raised)
            if msg.kind in state.syncs_in:
                state.syncs_in[msg.kind] += 1
        state.last_sync[msg.shard] = {
            "kind": msg.kind,
            "entries": msg.entries,
            "complete": complete,
            "finished_at_ns": now_ns,
            "duration_s": (now_ns - current.started_ns) / NS_PER_S,
        }
        self._schedule_pull(state, msg.shard, now_ns)

    # -- summary probes (large clusters; see ekv._cluster.summary) ---------------------------------

    def _live(self) -> Collection[str] | None:
        return None if self.demand is None else self.demand.live_members()

    def _summary_mode(self) -> bool:
        return len(self.peers) >= SUMMARY_MIN_MEMBERS or self._live() is not None

    def _probe_round(self, now_ns: int) -> None:
        """Start a summary round if one is due, or an extra one with a member back (Rotation.back)."""
        live, peers, rotation, q = self._live(), self.peers, self.rotation, self.quarantined  # (lazy, below)
        eligible = (p for p in (live or peers) if p not in q and ((s := peers.get(p)) is None or s.summaries))
        if self._next_round_ns is None or self._next_round_ns <= now_ns:
            first, self._next_round_ns = self._next_round_ns is None, self._next_due(now_ns)
            peer_id = None if first else rotation.next(eligible)  # (the first round: one interval from now)
        else:
            peer_id = rotation.next_back(eligible, now_ns, min(self.settings.anti_entropy_interval_ns, NS_PER_S))
        if peer_id in peers:
            self._probe(peer_id)
        elif peer_id is not None and self.demand is not None:
            self.demand.want(peer_id)  # its session starts with our probe: the round's exchange

    def _probe(self, peer_id: str) -> None:
        """Send the member a digest of every shard's vector (answered with those that differ); also
        how sessions start in summary mode (not 2 x shards messages of pulls, N-1 times after a heal)."""
        vvs = [self.current_vv(shard) for shard in range(self._shards)]
        probe = self._next_probe
        self._next_probe += 1
        self.peers[peer_id].probe = (probe, vvs)
        self._send(peer_id, Summary(probe, tuple(digest(vv) for vv in vvs)))

    def _on_summary(self, state: PeerState, msg: Summary, now_ns: int) -> None:
        """A member probes us: name the shards that differ, and pull them from it (push-pull)."""
        if not state.summaries or len(msg.digests) != self._shards:
            return
        vvs = [self.current_vv(shard) for shard in range(self._shards)]
        shards = differing([digest(vv) for vv in vvs], msg.digests)
        self._send(state.node_id, SummaryDiff(msg.probe, shards))
        self._summary_pulls(state, shards, vvs, now_ns)

    def _on_summary_diff(self, state: PeerState, msg: SummaryDiff, now_ns: int) -> None:
        if state.probe is None or state.probe[0] != msg.probe:
            return  # not the probe we await (late, duplicated, or never sent)
        vvs = state.probe[1]
        state.probe = None
        self._summary_pulls(state, tuple(s for s in msg.shards if self._check_shard(s)), vvs, now_ns)

    def _summary_pulls(self, state: PeerState, shards: tuple[int, ...], vvs: list[dict[str, int]], now_ns: int) -> None:
        """Pull the differing ``shards`` from the member; for the others, its vector equals ours
        (``vvs``): the report change-log truncation needs (nothing else refreshes it in summary mode)."""
        differ, large = set(shards), self._live() is not None
        if not differ:
            self.rotation.in_sync(state.node_id)  # (an extra round's partner: the others back need none)
        for shard in range(self._shards):
            if shard not in differ:
                state.reported_vv[shard] = vvs[shard]
                if large:  # (the session may close soon: keep the report for truncation)
                    self.store.record_member_report(shard, state.node_id, vvs[shard], now_ns)
            elif shard not in state.inbound:
                self._pull(state, shard, now_ns)

    # -- outbound ----------------------------------------------------------------------------

    def on_local_writes(self, shard: int, entries: list[Entry]) -> None:
        """Send this node's newly committed writes of ``shard`` to every member: its own, and
        those of the other processes sharing its data directory (their own origins, reported by
        the local bus in commit order), which this vector now covers too: otherwise every pull
        would report them missing and members would send them back."""
        if not entries:
            return
        own = self.origin
        others: dict[str, list[int]] | None = None
        for entry in entries:
            if entry.origin != own:
                if others is None:
                    others = {}
                others.setdefault(entry.origin, []).append(entry.oseq)
        if others is not None:
            vv = self.vv[shard]
            for origin, oseqs in others.items():
                vvmod.advance(vv, origin, oseqs)
        message = Live(shard, tuple(entries))
        tree = () if self.tree is None else self.tree.fanout(message)
        for peer_id, state in self.peers.items():
            if not state.quarantined and peer_id not in tree:
                self._send(peer_id, message)
                self.stats["live_sent"] += len(entries)

    def _pull(self, state: PeerState, shard: int, now_ns: int, *, resend: bool = False) -> None:
        sync_id = self._next_sync_id
        self._next_sync_id += 1
        state.inbound[shard] = _InSync(sync_id, started_ns=now_ns, progress_ns=now_ns, resend=resend)
        state.next_pull_ns.pop(shard, None)
        if resend:
            self.stats["repair_pulls"] += 1
        self._send(state.node_id, SyncRequest(shard, sync_id, {} if resend else self.current_vv(shard)))

    def _resend_pulls(self, now_ns: int) -> None:
        """Full resends from members whose quarantine was cleared (see :meth:`clear_quarantine`)."""
        for peer_id in self._resend_from:
            state = self.peers.get(peer_id)
            if state is None or state.quarantined:
                continue
            for shard in range(self._shards):
                if shard not in state.resent and shard not in state.inbound:
                    self._pull(state, shard, now_ns, resend=True)

    # -- repair of damaged rows ------------------------------------------------------------------

    def _repair_pulls(self, now_ns: int) -> None:
        """Ask every connected member that has not yet done so since the damage was found for a
        full resend of each shard that holds damaged rows."""
        for shard in range(self._shards):
            repair = self._repair_of(shard)
            if repair is None:
                continue
            for peer_id, state in self.peers.items():
                if not state.quarantined and peer_id not in repair.resent_by and shard not in state.inbound:
                    self._pull(state, shard, now_ns, resend=True)

    def _repair_of(self, shard: int) -> _Repair | None:
        """The repair of ``shard``'s damage, None if it has none. Damage found since the resends
        were counted (a key, or a version of a key, not seen before: found by a reader, GC or a
        sync) starts the count again, so every member is asked for the new damage too."""
        damaged = self.store.damaged(shard)
        if not damaged:
            self._repairs.pop(shard, None)
            return None
        repair = self._repairs.get(shard)
        if repair is None or any(repair.damage.get(key) != version for key, version in damaged.items()):
            repair = self._repairs[shard] = _Repair(dict(damaged))
        else:
            repair.damage = dict(damaged)  # keys repaired meanwhile are dropped
        return repair

    def _resent(self, peer_id: str, shard_index: int) -> None:
        """A member completed a full resend. Once every connected member has, keys still listed
        as damaged either verify (replaced by the best version the members had, older than the
        damaged one: forgotten, with a warning) or had no copy anywhere (kept: the key stays
        unreadable until it is written or deleted)."""
        repair = self._repair_of(shard_index)
        if repair is None:
            return
        repair.resent_by.add(peer_id)
        members = {peer for peer, peer_state in self.peers.items() if not peer_state.quarantined}
        if not members <= repair.resent_by:
            return
        remaining = list(repair.damage)
        repaired = [key for key in remaining if self.store.row_verifies(shard_index, key)]
        if repaired:
            self.store.forget_damaged(shard_index, repaired)
            self._warning(
                "damaged keys %s in shard %d (%s) were replaced by the newest versions members had, which are older "
                "than the damaged ones: those writes are lost",
                repaired[:10],
                shard_index,
                self.store.describe(shard_index),
            )
        lost = [key for key in remaining if key not in repaired]
        if lost:
            self._warning(
                "damaged keys %s in shard %d (%s) could not be repaired: no member has a copy; they stay unreadable "
                "until written or deleted",
                lost[:10],
                shard_index,
                self.store.describe(shard_index),
            )

    def current_vv(self, shard: int) -> dict[str, int]:
        """This shard's version vector, with the local origin's entry at the latest local write."""
        vv = dict(self.vv[shard])
        own = self.store.own_seq(shard)
        if own:
            vv[self.origin] = own
        return vv

    def _schedule_pull(self, state: PeerState, shard: int, now_ns: int) -> None:
        state.next_pull_ns[shard] = self._next_due(now_ns)

    def _next_due(self, now_ns: int) -> int:
        interval = self.settings.anti_entropy_interval_ns
        return now_ns + interval + int(self._rng.uniform(0, min(interval / 10, 5 * NS_PER_S)))

    def tick(self, now_ns: int, *, max_chunks: int = 64) -> None:
        """Start due anti-entropy pulls and send pending sync chunks (at most ``max_chunks``
        per call, so the driver interleaves them with live traffic)."""
        self._now = now_ns
        self.retired.compact(self.vv, now_ns)
        timeout = self.settings.sync_timeout_ns
        summary = self._summary_mode()
        for state in list(self.peers.values()):
            if state.quarantined:
                continue
            for shard, pending in list(state.inbound.items()):
                if now_ns - pending.progress_ns > timeout:
                    del state.inbound[shard]  # lost without the session ending: ask again
                    self._pull(state, shard, now_ns)
            if summary and state.summaries:
                continue  # its periodic pulls are replaced by the rounds' probes
            for shard, due in list(state.next_pull_ns.items()):
                if due <= now_ns and shard not in state.inbound:
                    self._pull(state, shard, now_ns)
        if summary:
            self._probe_round(now_ns)
        else:
            self._next_round_ns = None
        self._repair_pulls(now_ns)
        self._resend_pulls(now_ns)
        self.pump(max_chunks)

    def pump(self, max_chunks: int = 64) -> int:
        """Send up to ``max_chunks`` chunks of the outbound syncs, round-robin, while the
        transport accepts them. Returns how many messages were sent."""
        sent = 0
        progress = True
        while progress and sent < max_chunks:
            progress = False
            for peer_id, state in list(self.peers.items()):
                for shard, out in list(state.out.items()):
                    if sent >= max_chunks or not self._can_send(peer_id):
                        break
                    progress = True
                    sent += 1
                    entries = out.snapshot.next_chunk(self.settings.sync_chunk_entries, self.settings.sync_chunk_bytes)
                    if out.snapshot.damaged:
                        self._found_damaged(shard, out.snapshot.damaged)
                    if entries:
                        self._send(peer_id, SyncChunk(shard, out.sync_id, out.seq, tuple(entries)))
                        out.seq += 1
                    else:
                        snap = out.snapshot
                        self._send(
                            peer_id,
                            SyncDone(shard, out.sync_id, dict(snap.vv), snap.kind, out.seq, snap.sent),
                        )
                        snap.close()
                        del state.out[shard]
        return sent

    def _found_damaged(self, shard: int, keys: list[str]) -> None:
        for key in keys:
            self.store.mark_damaged(shard, key, self._now)
        keys.clear()

    @property
    def busy(self) -> bool:
        """True while some outbound sync still has chunks to send."""
        return any(state.out for state in self.peers.values())

    # -- GC support ------------------------------------------------------------------------

    def truncation_targets(self, shard: int, now_ns: int, retention_ns: int) -> dict[str, int] | None:
        """How far ``shard``'s change log may be truncated: what every member seen within
        ``retention_ns`` has reported covering. None (everything) when no member is known."""
        reports: dict[str, dict[str, int]] = {}
        stored = self.store.member_reports(shard)
        for node_id, (vv, reported_at) in stored.items():
            if now_ns - reported_at <= retention_ns:
                reports[node_id] = vv
        for node_id, state in self.peers.items():
            if shard in state.reported_vv:
                reports[node_id] = state.reported_vv[shard]
            elif node_id in reports:
                pass
            else:
                reports[node_id] = {}  # connected but has not reported yet: keep everything
        reports.update({n: {} for n in self._live() or () if n not in reports})  # (large mode: none yet, keep all)
        if not reports:
            return None
        return vvmod.truncation_targets(self.current_vv(shard), reports.values())

    # -- info --------------------------------------------------------------------------------

    def peer_info(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for node_id, state in self.peers.items():
            out[node_id] = {
                "connected_at_ns": state.connected_at_ns,
                "last_seen_ns": state.last_seen_ns,
                "quarantined": state.quarantined,
                "syncs_in": dict(state.syncs_in),
                "syncs_out": dict(state.syncs_out),
                "shards": {
                    shard: {
                        "their_vv": state.reported_vv.get(shard),
                        "pulling": shard in state.inbound,
                        "sending": shard in state.out,
                        "last_sync": state.last_sync.get(shard),
                    }
                    for shard in range(self._shards)
                },
            }
        return out

    def down_since(self) -> dict[str, int]:
        return dict(self._down_since)
