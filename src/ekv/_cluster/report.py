"""What a running cluster reports: ``info()``'s cluster part and the metrics (run on the loop
thread, through :meth:`ClusterNode.call`). Kept apart from the cluster's mechanics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from ekv._cluster import wire
from ekv._cluster.broadcast import KINDS
from ekv._cluster.messages import Hello
from ekv._cluster.session import Refused
from ekv._core.addresses import format_address, parse_address
from ekv._core.durations import NS_PER_S

if TYPE_CHECKING:
    from ekv._cluster.cluster import ClusterNode
    from ekv._cluster.members import MemberSet

__all__ = [
    "COOKIE_HINT",
    "RateLimit",
    "cluster_info",
    "cluster_metrics",
    "note_refused",
    "remote_host_of",
    "remote_of",
    "repeats_note",
]

REPEAT_WARNING_S = 300.0  # a problem that keeps happening is logged again at most this often
MAX_REFUSED = 64  # refused peers remembered for info() (the least recent are forgotten)
COOKIE_HINT = "every member needs the same cookie: cookie= in EKV(...), or EKV_COOKIE / --cookie-file for ekv serve"


class RateLimit:
    """Says when a repeated problem should be logged: the first time, then at most once every
    ``interval_s`` per key, with how many occurrences were not logged in between. A node that
    keeps retrying must not flood the log, nor go quiet after the first line."""

    def __init__(self, interval_s: float = REPEAT_WARNING_S) -> None:
        self._interval = interval_s
        self._state: dict[object, tuple[float, int]] = {}

    def check(self, key: object) -> int | None:
        """None: stay quiet; else log now, mentioning the returned count of silenced repeats."""
        now = time.monotonic()
        last = self._state.get(key)
        if last is not None and now - last[0] < self._interval:
            self._state[key] = (last[0], last[1] + 1)
            return None
        if len(self._state) >= 1024:
            self._state.clear()
        self._state[key] = (now, 0)
        return 0 if last is None else last[1]


def repeats_note(count: int) -> str:
    return f" ({count} more times since the last message)" if count else ""


def cluster_info(self: ClusterNode) -> dict[str, Any]:
    """The cluster's part of ``info()`` (the node copies its keys): members with their state,
    replication, skew, membership, broadcast, large mode (loop thread)."""
    rep = self.replicator
    assert rep is not None
    peers = rep.peer_info()
    members = {}
    for address, entry in self.addresses.items():
        node_id = entry["node_id"]
        members[node_id or address] = {
            "node_id": node_id,
            "address": address,
            "source": entry["source"],
            "connected": node_id in self.sessions,
            "state": "connected" if node_id in self.sessions else entry["state"],
            "last_error": entry["last_error"],
            "attempts": entry["attempts"],
        }
    for node_id, session in self.sessions.items():
        item = members.setdefault(node_id, {"node_id": node_id, "address": session.address, "source": "inbound"})
        item.update(
            {
                "connected": True,
                "state": "quarantined" if rep.peers.get(node_id) and rep.peers[node_id].quarantined else "connected",
                "remote": session.remote,
                "dialed": session.dialer,
                "last_seen_ns": session.last_seen_wall_ns,
                "rtt_s": session.rtt_s,
                "skew_ns": session.skew_ns,
                "bytes_in": session.bytes_in,
                "bytes_out": session.bytes_out,
                "send_queue_bytes": session.queued_bytes,
                "features": sorted(session.features),
                "replication": peers.get(node_id),
            }
        )
    for node_id, (when, reason) in self.last_disconnect.items():
        item = members.setdefault(node_id, {"node_id": node_id, "connected": False, "state": "down"})
        item["last_disconnect"] = {"at_ns": when, "reason": reason}
    for node_id, since in rep.down_since().items():
        item = members.setdefault(node_id, {"node_id": node_id, "connected": False, "state": "down"})
        item["down_since_ns"] = since
    return {
        "listen": self.listen_address,
        "advertised": self.advertised,
        "members": members,
        "quarantined": dict(rep.quarantined),
        "refused": {host: dict(item) for host, item in self.refused.items()},
        "vv": [rep.current_vv(i) for i in range(rep.store.shard_count)],
        "stats": {**rep.stats, "outbox_dropped": self.outbox.dropped},
        "membership": self.membership.info(),
        "broadcast": None if self.driver.broadcast is None else self.driver.broadcast.info(),
        "large_mode": self.ondemand.info(),
    }


def cluster_metrics(self: ClusterNode) -> dict[str, float]:
    """The cluster's Prometheus gauges and counters (loop thread)."""
    rep = self.replicator
    assert rep is not None
    m: dict[str, float] = {
        "ekv_members_connected": len(self.sessions),
        "ekv_members_known": len({e["node_id"] for e in self.addresses.values() if e["node_id"]} | set(self.sessions)),
        "ekv_members_quarantined": len(rep.quarantined),
        "ekv_replication_live_sent_total": rep.stats["live_sent"],
        "ekv_replication_live_received_total": rep.stats["live_received"],
        "ekv_replication_live_applied_total": rep.stats["live_applied"],
        "ekv_replication_sync_entries_applied_total": rep.stats["sync_entries_applied"],
        "ekv_replication_repair_pulls_total": rep.stats["repair_pulls"],
        "ekv_replication_outbox": len(self.outbox),
        "ekv_replication_outbox_dropped_total": self.outbox.dropped,
    }
    m.update(self.membership.metrics())
    tree = self.driver.broadcast
    if tree is not None:
        m["ekv_broadcast_tree"] = int(tree.active)
        m["ekv_broadcast_eager_peers"] = len(tree.tree.eager)
        m["ekv_broadcast_lazy_peers"] = len(tree.tree.lazy)
        for kind in KINDS:
            m[f'ekv_broadcast_sent_total{{kind="{kind}"}}'] = tree.sent[kind]
            m[f'ekv_broadcast_received_total{{kind="{kind}"}}'] = tree.received[kind]
    own = [rep.store.own_seq(i) for i in range(rep.store.shard_count)]
    for node_id, state in rep.peers.items():
        label = f'{{peer="{node_id}"}}'
        for kind in ("delta", "full"):
            m[f'ekv_syncs_received_total{{peer="{node_id}",kind="{kind}"}}'] = state.syncs_in[kind]
            m[f'ekv_syncs_sent_total{{peer="{node_id}",kind="{kind}"}}'] = state.syncs_out[kind]
        # how many of this node's writes the member has not yet reported having
        lag = sum(max(0, own[i] - state.reported_vv.get(i, {}).get(rep.origin, 0)) for i in range(len(own)))
        m[f"ekv_replication_lag_writes{label}"] = lag
        session = self.sessions.get(node_id)
        if session is not None:
            m[f"ekv_send_queue_bytes{label}"] = session.queued_bytes
            if session.skew_ns is not None:
                m[f"ekv_clock_skew_seconds{label}"] = session.skew_ns / NS_PER_S
            if session.rtt_s is not None:
                m[f"ekv_rtt_seconds{label}"] = session.rtt_s
    return m


def note_refused(self: MemberSet, writer: asyncio.StreamWriter, theirs: Hello, exc: Refused) -> None:
    """Log a refused handshake (rate-limited per remote host and reason: a misconfigured member
    retries every few seconds) and keep it for info(); a cookie mismatch also marks the member
    it claims to be, if this node dials that member too."""
    remote = remote_of(writer)
    host = remote_host_of(writer)
    client = wire.CLIENT_FEATURE in theirs.features
    reason = str(exc)
    kind = "cookie" if exc.cookie_mismatch else reason
    repeats = self._warn_limit.check(("accept", host, kind))
    if repeats is not None:
        who = f"client {remote}" if client else f"{remote} (node {theirs.node_id})"
        hint = f"; {COOKIE_HINT}" if exc.cookie_mismatch and not client else ""
        self.log.warning("refused a connection from %s: %s%s%s", who, reason, hint, repeats_note(repeats))
    if client:
        return
    seen = self.refused.pop(host, None)
    if seen is None and len(self.refused) >= MAX_REFUSED:
        del self.refused[next(iter(self.refused))]
    self.refused[host] = {
        "node_id": theirs.node_id,
        "listen": theirs.listen,
        "reason": reason,
        "count": (seen["count"] + 1) if seen else 1,
        "last_at_ns": self._wall(),
    }
    if exc.cookie_mismatch and theirs.listen:
        with contextlib.suppress(Exception):
            address = format_address(*parse_address(theirs.listen, "listen", default_host=host))
            entry = self.addresses.get(address)
            if entry is not None and entry["node_id"] not in self.sessions:
                entry["state"] = "auth failed"
                entry["last_error"] = reason


def remote_of(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


def remote_host_of(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else ""
