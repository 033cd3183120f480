"""``info()`` for a data directory nobody has open, and the human-readable rendering of info."""

from __future__ import annotations

import time
from typing import Any

from ekv._storage.procs import Election
from ekv._storage.sqlite import sqlite_version
from ekv._storage.store import ShardedStore
from ekv._version import __version__

__all__ = ["format_info", "format_metrics", "offline_info"]


def offline_info(store: ShardedStore) -> dict[str, Any]:
    """What a data directory holds, read from its files (read-only: nothing is written), and
    whether a node process has it open (``running``; the live figures are its ``info()``)."""
    shards = [store.shard_info(i) for i in range(store.config.shards)]
    last_active = [s["last_active_at_ns"] for s in shards if s["last_active_at_ns"] is not None]
    holder = Election(store.config.data_dir).holder()
    return {
        "name": store.manifest.name,
        "node_id": store.node_id,
        "data_dir": str(store.config.data_dir),
        "running": holder is not None,
        "node_process": None if holder is None else {"pid": holder[0], "slot": holder[1]},
        "listen": None,
        "members": {},
        "ekv_version": __version__,
        "sqlite_version": sqlite_version(),
        "last_active_at_ns": min(last_active) if last_active else None,
        "keys": sum(s["keys"] for s in shards),
        "tombstones": sum(s["tombstones"] for s in shards),
        "options": {"shards": store.config.shards},
        "shards": shards,
    }


def _ago(ns: int | None) -> str:
    if not ns:
        return "-"
    seconds = time.time() - ns / 1e9
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ns / 1e9))
    if abs(seconds) < 120:
        return f"{stamp} ({seconds:.0f} s ago)"
    if abs(seconds) < 7200:
        return f"{stamp} ({seconds / 60:.0f} min ago)"
    return f"{stamp} ({seconds / 3600:.1f} h ago)"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def format_info(info: dict[str, Any]) -> str:
    """A readable summary of an info() dict, for ``ekv info``."""
    lines = [
        f"instance     {info.get('name')}",
        f"node         {info.get('node_id')}",
        f"data dir     {info.get('data_dir')}",
        f"listen       {info.get('listen') or '-'}",
        f"keys         {info.get('keys', 0):,}    tombstones {info.get('tombstones', 0):,}",
        f"last active  {_ago(info.get('last_active_at_ns'))}",
    ]
    if info.get("running") is False:
        lines.append("state        not running (read from the data directory)")
    elif info.get("node_process"):
        lines.append(
            f"state        running: node process pid {info['node_process']['pid']} (read from the data directory)"
        )
    if info.get("stale_data_moved_to"):
        lines.append(f"stale data   moved to {info['stale_data_moved_to']}")
    quarantined = info.get("quarantined") or {}
    if quarantined:
        lines.append(f"QUARANTINED  {', '.join(sorted(quarantined))}  (see docs/operators.md)")
    for host, item in sorted((info.get("refused") or {}).items()):
        lines.append(
            f"REFUSED      {host} (node {item.get('node_id')}): {item.get('reason')}, "
            f"{item.get('count', 1)} time(s), last {_ago(item.get('last_at_ns'))}"
        )
    members = info.get("members") or {}
    if members:
        lines.append("")
        lines.append(f"{'member':<18} {'state':<12} {'address':<22} {'last seen':<28} {'rtt ms':>7} {'skew ms':>8}")
        for node_id, m in sorted(members.items()):
            rtt = m.get("rtt_s")
            skew = m.get("skew_ns")
            lines.append(
                f"{str(node_id)[:18]:<18} {m.get('state', '-')!s:<12} {str(m.get('address') or '-')[:22]:<22} "
                f"{_ago(m.get('last_seen_ns')):<28} {'-' if rtt is None else f'{rtt * 1e3:.2f}':>7} "
                f"{'-' if skew is None else f'{skew / 1e6:+.1f}':>8}"
            )
    shards = info.get("shards") or []
    if shards:
        lines.append("")
        lines.append(f"{'shard':>5} {'keys':>10} {'tombstones':>11} {'log entries':>12} {'size':>10}")
        for s in shards:
            lines.append(
                f"{s['index']:>5} {s['keys']:>10,} {s['tombstones']:>11,} {s['log']['entries']:>12,} "
                f"{_size(int(s.get('size_bytes') or 0)):>10}"
            )
    return "\n".join(lines) + "\n"


def format_metrics(metrics: dict[str, float]) -> str:
    """Render :meth:`ekv.EKV.metrics` in the Prometheus text exposition format (serve it from
    any HTTP handler at ``/metrics``)."""
    lines = []
    typed: set[str] = set()
    for name in sorted(metrics):
        base = name.split("{", 1)[0]
        if base not in typed:
            typed.add(base)
            lines.append(f"# TYPE {base} {'counter' if base.endswith('_total') else 'gauge'}")
        value = metrics[name]
        lines.append(f"{name} {int(value) if float(value).is_integer() else value}")
    return "\n".join(lines) + "\n"
