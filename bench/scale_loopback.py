"""N real ekv node processes on 127.0.0.1: what membership, broadcast and anti-entropy cost (issue 15).

    PYTHONPATH=src python3 bench/scale_loopback.py                 # 24 nodes
    PYTHONPATH=src python3 bench/scale_loopback.py --nodes 4 --idle 2 --writes 20 --json out.json

The loopback counterpart of the simulators (docs/scale.md): every node is a ``python -m
ekv.testing.node`` process with its own data directory under a temporary directory, all joined
through ONE seed (the first node). Phases, each timed on this machine's monotonic clock:

1. join: until every node's SWIM view has the N-1 others alive;
2. idle: for ``--idle`` s, SWIM datagrams and replication messages per node per second;
3. burst: ``--writes`` writes from ``--writers`` nodes at once; how long until every node has
   every write, the messages per write, each node's broadcast mode and sessions per node;
4. kill: SIGKILL ``--kill`` nodes (while ``--writers`` write a few more); until the first member
   suspects / declares each one failed, and until every other member has declared it failed;
5. restart: the killed nodes on their own directories; until every SWIM view is whole again and
   every node holds every write;
6. partition (only with ``--partition S``): the nodes then run behind the loopback fault proxy
   (:mod:`ekv.testing.proxy`, which cuts TCP and drops SWIM's datagrams across a cut; it relays
   every byte in this process, so the other phases' figures are not comparable with a run
   without it); two halves for S s, one writer on each side; until each side has declared the
   other failed, then after the heal until every view is whole and every node holds every write.

The counters are
the nodes' own (``kv.metrics()``; messages a node sends): SWIM datagrams, ``Live`` entries sent
directly, the broadcast tree's frames by kind, shard syncs served (each at least a request and a
response; summary probes and heartbeats are not counted, but are in the bytes every node sent
on its sessions, summed over the sessions open at the window's end). Every process started is killed on exit, Ctrl-C
included. Prints a table; ``--json PATH`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ekv.testing.cluster import NodeProcess
from ekv.testing.proxy import FaultProxy, free_ports

OPTIONS = {
    # ekv's defaults, but anti-entropy every second as in the simulators' figures (docs/scale.md)
    "heartbeat_interval": 1.0,
    "heartbeat_timeout": 5.0,
    "anti_entropy_interval": 1.0,
    "reconnect_max": 2.0,
}
TREE_KINDS = ("gossip", "ihave", "graft", "prune", "neighbor", "accept", "disconnect")
POLL_S = 0.1


class Node(NodeProcess):
    """A node process whose commands may come from several threads (a writer and the poller)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def call(self, op: str, timeout: float = 60, **args: Any) -> dict[str, Any]:
        with self._lock:
            return super().call(op, timeout, **args)


class Bench:
    def __init__(self, root: Path, n: int, timeout: float, proxied: bool) -> None:
        self.root = root
        self.timeout = timeout
        self.nodes = [Node(f"n{i}", root / f"n{i}", instance="scale", options=OPTIONS) for i in range(n)]
        for node in self.nodes:
            node.stderr_path = root / f"{node.name}.log"
        self.pool = ThreadPoolExecutor(max_workers=n + 8)
        self.proxy: FaultProxy | None = None
        if proxied:  # listen on a free port, advertise the proxy's port in front of it
            self.proxy = FaultProxy(self.index_of)
            ports = free_ports(n)
            for node, port, front in zip(self.nodes, ports, self.proxy.start(ports), strict=True):
                node.listen = f"127.0.0.1:{port}"
                node.options["advertise"] = f"127.0.0.1:{front}"

    def index_of(self, node_id: str) -> int | None:
        return next((i for i, node in enumerate(self.nodes) if node.node_id == node_id), None)

    def each(self, nodes: Iterable[Node], f: Callable[[Node], Any]) -> list[Any]:
        return list(self.pool.map(f, list(nodes)))

    def live(self) -> list[Node]:
        return [node for node in self.nodes if node.running]

    def close(self) -> None:
        for node in self.nodes:
            try:
                node.kill()
            except Exception as exc:  # keep killing the others
                print(f"could not kill {node.name}: {exc}", file=sys.stderr)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.proxy is not None:
            self.proxy.close()

    def wait(self, what: str, done: Callable[[], bool]) -> float:
        """Seconds until ``done()`` (polled); an error after ``timeout`` s."""
        start = time.monotonic()
        while not done():
            if time.monotonic() - start > self.timeout:
                raise TimeoutError(f"{what}: not reached within {self.timeout} s")
            time.sleep(POLL_S)
        return time.monotonic() - start

    # -- what the nodes report

    def views(self, nodes: list[Node]) -> dict[str, dict[str, str]]:
        """node id -> {member id: SWIM status}."""
        answers = self.each(nodes, lambda n: n.call("cluster", keys=["membership"])["cluster"]["membership"])
        pairs = zip(nodes, answers, strict=True)
        return {n.node_id or "": {m: e["status"] for m, e in a.get("members", {}).items()} for n, a in pairs}

    def whole(self) -> bool:
        """Every running node sees every other node alive."""
        nodes = self.live()
        ids = {n.node_id for n in self.nodes}
        return all(
            sum(1 for m, s in view.items() if m in ids and s == "alive") == len(ids) - 1
            for view in self.views(nodes).values()
        )

    def counters(self) -> dict[str, dict[str, float]]:
        """Each running node's metrics, plus the bytes it sent on each current session."""

        def one(node: Node) -> dict[str, float]:
            members = node.call("cluster", keys=["members"])["cluster"]["members"]
            sent = {f'tcp_bytes_sent_total{{peer="{k}"}}': m.get("bytes_out", 0) for k, m in members.items()}
            return {**node.call("metrics")["metrics"], **sent}

        nodes = self.live()
        return dict(zip([n.name for n in nodes], self.each(nodes, one), strict=True))

    def key_counts(self, prefix: str) -> list[int]:
        return self.each(self.live(), lambda n: len(n.call("keys", prefix=prefix)["keys"]))

    def clusters(self) -> list[dict[str, Any]]:
        keys = ["broadcast", "large_mode"]
        return self.each(self.live(), lambda n: n.call("cluster", keys=keys)["cluster"])


def delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
    """Summed over nodes present in both, per counter family (a per-peer counter that disappears
    with its session counts 0, never negative)."""
    total: dict[str, float] = {}
    for name, now in after.items():
        then = before.get(name, {})
        for key, value in now.items():
            family = key.split("{")[0]
            if family.endswith("_total"):
                label = key[len(family) :]
                kind = label.split('kind="')[1].split('"')[0] if 'kind="' in label else ""
                family = f"{family}:{kind}" if kind and "broadcast" in family else family
                total[family] = total.get(family, 0) + max(0.0, value - then.get(key, 0))
    return total


def messages(d: dict[str, float]) -> dict[str, float]:
    tree = {k: d.get(f"ekv_broadcast_sent_total:{k}", 0) for k in TREE_KINDS}
    out = {
        "swim_datagrams": d.get("ekv_membership_datagrams_sent_total", 0),
        "live_sent": d.get("ekv_replication_live_sent_total", 0),
        **{f"tree_{k}": v for k, v in tree.items()},
        "syncs_served": d.get("ekv_syncs_sent_total", 0),
        "tcp_bytes": d.get("tcp_bytes_sent_total", 0),
    }
    out["replication"] = out["live_sent"] + sum(tree.values()) + out["syncs_served"]  # messages, not bytes
    return out


def spread(values: list[float]) -> dict[str, float]:
    return {"max": max(values), "mean": round(statistics.fmean(values), 2)}


def run(args: argparse.Namespace, bench: Bench, result: dict[str, Any]) -> None:
    seed, rest = bench.nodes[0], bench.nodes[1:]
    seed.start()
    for node in rest:
        node.peers = [seed.options.get("advertise") or seed.address or ""]
    started = time.monotonic()
    bench.each(rest, lambda n: n.start(timeout=bench.timeout))
    result["start_s"] = round(time.monotonic() - started, 2)
    result["join_s"] = round(bench.wait("every SWIM view has every node alive", bench.whole), 2)
    n = len(bench.nodes)

    # 2. idle
    before = bench.counters()
    time.sleep(args.idle)  # the measuring window itself
    idle = messages(delta(before, bench.counters()))
    result["idle"] = {"seconds": args.idle, "per_node_per_s": {k: round(v / n / args.idle, 2) for k, v in idle.items()}}

    # 3. burst
    victims = bench.nodes[-args.kill :] if args.kill else []
    writers = [node for node in bench.nodes if node not in victims][: args.writers]
    each = max(1, args.writes // len(writers))
    total = each * len(writers)

    def write(node: Node, prefix: str, count: int) -> None:
        for i in range(count):
            node.put(f"{prefix}/{node.name}/{i:05}", i)

    before = bench.counters()
    start = time.monotonic()
    bench.each(writers, lambda w: write(w, "burst", each))
    acked = time.monotonic() - start
    seen = bench.wait("every node has every write", lambda: min(bench.key_counts("burst/")) == total) + acked
    after, clusters = bench.counters(), bench.clusters()
    msgs = messages(delta(before, after))
    modes = [(c.get("broadcast") or {}).get("mode", "none") for c in clusters]
    result["burst"] = {
        "writes": total,
        "writers": len(writers),
        "acked_s": round(acked, 2),
        "all_have_all_s": round(seen, 2),
        "per_write": {k: round(v / total, 2) for k, v in msgs.items()},
        "modes": {mode: modes.count(mode) for mode in sorted(set(modes))},
        "sessions": spread([m.get("ekv_members_connected", 0) for m in after.values()]),
        "large_mode": [c.get("large_mode") for c in clusters] if any(c.get("large_mode") for c in clusters) else None,
    }

    # 4. kill
    if victims:
        ids = {v.node_id for v in victims}
        killed_at = time.monotonic()
        for victim in victims:
            victim.kill()
        first: dict[str, dict[str, float]] = {i or "": {} for i in ids}
        everyone: dict[str, float] = {}

        def detected() -> bool:
            now = time.monotonic() - killed_at
            views = bench.views(bench.live())
            for victim in ids:
                states = [view.get(victim or "") for view in views.values()]
                for status in ("suspect", "failed"):
                    if status in states or (status == "suspect" and "failed" in states):
                        first[victim or ""].setdefault(status, now)
                if all(s == "failed" for s in states):
                    everyone.setdefault(victim or "", now)
            return len(everyone) == len(ids)

        down = [bench.pool.submit(write, w, "down", max(1, each // 10)) for w in writers]
        bench.wait("every member declares the killed ones failed", detected)
        for future in down:
            future.result()
        result["kill"] = {
            "killed": len(victims),
            "first_suspect_s": round(statistics.fmean(f["suspect"] for f in first.values()), 2),
            "first_failed_s": round(statistics.fmean(f["failed"] for f in first.values()), 2),
            "all_failed_s": round(max(everyone.values()), 2),
            "dissemination_s": round(max(everyone[v] - first[v]["failed"] for v in everyone), 2),
        }

        # 5. restart
        expected = total + len(writers) * max(1, each // 10)
        restarted = time.monotonic()
        bench.each(victims, lambda v: v.start(timeout=bench.timeout))
        result["restart"] = {
            "start_s": round(time.monotonic() - restarted, 2),
        }
        bench.wait("SWIM views whole again", bench.whole)
        result["restart"]["whole_s"] = round(time.monotonic() - restarted, 2)
        bench.wait("every node holds every write", lambda: min(bench.key_counts("")) == expected)
        result["restart"]["converged_s"] = round(time.monotonic() - restarted, 2)
    if bench.proxy is None:
        result["partition"] = "skipped (--partition S: a run behind the loopback fault proxy)"
        return

    # 6. partition
    half = len(bench.nodes) // 2
    sides = [bench.nodes[:half], bench.nodes[half:]]
    expected = min(bench.key_counts(""))
    bench.proxy.cut({i: set(range(half, len(bench.nodes))) for i in range(half)})
    cut_at = time.monotonic()
    for side in sides:
        write(side[0], "split", 10)
    expected += 20

    def split() -> bool:
        views = bench.views(bench.nodes)
        return all(
            views[node.node_id or ""].get(other.node_id or "") == "failed"
            for mine, theirs in (sides, sides[::-1])
            for node in mine
            for other in theirs
        )

    split_s = None
    while time.monotonic() - cut_at < args.partition:
        if split_s is None and split():
            split_s = round(time.monotonic() - cut_at, 2)
        time.sleep(POLL_S)
    bench.proxy.cut({})
    healed = time.monotonic()
    bench.wait("SWIM views whole after the heal", bench.whole)
    whole = time.monotonic() - healed
    bench.wait("every node holds every write after the heal", lambda: min(bench.key_counts("")) == expected)
    result["partition"] = {
        "seconds": args.partition,
        "halves": [len(side) for side in sides],
        "each_side_declared_the_other_failed_s": split_s,
        "heal_whole_s": round(whole, 2),
        "heal_converged_s": round(time.monotonic() - healed, 2),
    }


def flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in flat(v, f"{prefix}.{k}" if prefix else str(k))]
    return [(prefix, value)]


def table(result: dict[str, Any]) -> str:
    rows = flat(result)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds to main's cleanup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=24)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle window")
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--kill", type=int, default=2, help="nodes SIGKILLed, then restarted")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds any one wait may take")
    parser.add_argument("--partition", type=float, default=0, help="seconds of a partition in halves (0: none)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    args = parser.parse_args(argv)
    if args.nodes < 2 or not 0 <= args.kill < args.nodes - 1 or not 1 <= args.writers <= args.nodes - args.kill:
        parser.error("need --nodes >= 2, 0 <= --kill < nodes - 1 and 1 <= --writers <= nodes - kill")
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell starts `... &` with it ignored
        signal.signal(signum, interrupt)
    root = Path(tempfile.mkdtemp(prefix="ekv-scale-"))
    result: dict[str, Any] = {"nodes": args.nodes, "load_before": [round(x, 2) for x in os.getloadavg()]}
    bench = Bench(root, args.nodes, args.timeout, proxied=args.partition > 0)
    try:
        run(args, bench, result)
    except KeyboardInterrupt:
        print("interrupted: every node process killed", file=sys.stderr)
        return 130
    finally:
        bench.close()
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
