"""What a running cluster reports: ``info()``'s cluster part and the metrics (run on the loop
thread, through :meth:`ClusterNode.call`). Kept apart from the cluster's mechanics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ekv._core.durations import NS_PER_S

if TYPE_CHECKING:
    from ekv._cluster.cluster import ClusterNode

__all__ = ["cluster_info", "cluster_metrics"]


def cluster_info(self: ClusterNode) -> dict[str, Any]:
    """``info()["cluster"]``: members with their state, replication, skew (loop thread)."""
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
        "vv": [rep.current_vv(i) for i in range(len(self.store.shards))],
        "stats": dict(rep.stats),
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
        "ekv_replication_outbox": len(self._outbox),
    }
    own = [self.store.shards[i].oseq for i in range(len(self.store.shards))]
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
