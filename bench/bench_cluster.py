"""Replication benchmark: ekv node processes on 127.0.0.1, measured in one run.

    python3 -m pip install -e . && python3 bench/bench_cluster.py           # full run
    python3 bench/bench_cluster.py --quick                                  # smaller

What it measures (node A lives in this process, node B is a child process):

* replication latency: ``A.put`` until B's subscriber sees the event (both sides read
  ``time.monotonic_ns``, which is one clock for every process of the machine); p50/p99 over
  sequential puts;
* sustained replicated writes: A puts N keys as fast as one thread can; throughput = N / (time
  until B has them all, known from one marker key per shard written after them), next to A's
  single-node put throughput measured in the same run;
* full sync: A holds K keys, B starts empty; keys/s until B has them all (and B's RSS growth);
* delta sync: A and B connected, then partitioned; A writes 10,000 keys; time from the heal until
  B has them;
* 3 nodes: the latency of a put on A as seen on the two others.

Each figure is the median of the repetitions (default 3; sync runs once per size); every
repetition is preceded by ``os.sync()`` and a short pause, as in bench_local.py.

Every wait is bounded: a step that does not finish within its deadline (``TIMEOUT_S``, generous)
stops the run with an error that names it, instead of hanging.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ekv
import ekv.testing
from ekv._model import Entry

try:
    from ekv.testing._hooks import cut_off
except ImportError:  # a revision from before cut_off, measured by bench/compare.py with this script

    def cut_off(kv: ekv.EKV, node_ids: Any) -> None:
        cluster = ekv.testing.node_of(kv).cluster
        assert cluster is not None
        cluster.set_blocked(set(node_ids))  # type: ignore[attr-defined]


FAST = {"heartbeat_interval": 0.5, "heartbeat_timeout": 5.0, "anti_entropy_interval": 2.0, "reconnect_max": 0.5}
TIMEOUT_S = 600.0
"""The longest any one step may take (a full sync of a million keys takes about a minute)."""


# -- the peer process ---------------------------------------------------------------------------


def peer_main(args: argparse.Namespace) -> int:
    """Run node B; ``expect`` subscribes to a prefix and records when its events arrive. B dials
    A only on ``connect``, so that a subscription made before it sees every write of the first
    sync (subscribing after connecting would miss the events of a sync already under way)."""
    kv = ekv.EKV("bench", args.data_dir, listen="127.0.0.1:0", log=False, codec="pickle", **FAST)
    out = sys.stdout
    out.write(json.dumps({"ready": True, "listen": kv.listen_address, "node_id": kv.node_id}) + "\n")
    out.flush()
    arrivals: dict[str, int] = {}
    lock = threading.Lock()
    state: dict[str, Any] = {"expect": None, "done_at": None, "rss_peak": 0.0, "count": 0, "track": True}
    current: list[Any] = [None]

    def consume(sub: Any) -> None:
        for batch in sub:
            now = time.monotonic_ns()
            with lock:
                if state["track"]:
                    for event in batch:
                        arrivals.setdefault(event.key, now)
                state["count"] += len(batch)
                if state["done_at"] is None and state["count"] >= state["expect"]:
                    state["done_at"] = now
            state["rss_peak"] = max(state["rss_peak"], rss_mb())

    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "expect":
            if current[0] is not None:
                current[0].close()
            with lock:
                state.update(
                    expect=command["count"], done_at=None, rss_peak=rss_mb(), count=0, track=command.get("track", True)
                )
            sub = kv.subscribe(command["prefix"], max_queue=1_000_000, overflow="drop_oldest")
            current[0] = sub
            threading.Thread(target=consume, args=(sub,), daemon=True).start()
            reply: dict[str, Any] = {"ok": True, "rss": rss_mb()}
        elif op == "connect":
            kv.connect(args.peer)
            reply = {"ok": True}
        elif op == "wait":
            deadline = time.monotonic() + command["timeout"]
            while state["done_at"] is None and time.monotonic() < deadline:
                time.sleep(0.001)
            with lock:
                reply = {
                    "done_at": state["done_at"],
                    "count": state["count"],
                    "expect": state["expect"],
                    "rss_peak": state["rss_peak"],
                    "rss_now": rss_mb(),
                }
        elif op == "arrivals":
            prefix = command["prefix"]
            with lock:
                reply = {"arrivals": {k: v for k, v in arrivals.items() if k.startswith(prefix)}}
        elif op == "block":
            cut_off(kv, command["node_ids"])
            reply = {"ok": True}
        elif op == "close":
            break
        else:
            reply = {"error": op}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    kv.close()
    return 0


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Peer:
    """Node B in a child process. It dials ``peer`` at once unless ``connect=False`` (then on
    :meth:`connect`, after the caller has subscribed with ``expect``)."""

    def __init__(self, data_dir: Path, peer: str, *, connect: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--peer-mode", "--data-dir", str(data_dir), "--peer", peer],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        ready = self.read(TIMEOUT_S)
        self.listen = ready["listen"]
        self.node_id = ready["node_id"]
        if connect:
            self.connect()

    def _pump(self) -> None:
        """The only reader of the child's stdout: lines into a queue, so reads can time out."""
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            for line in stdout:
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put("")
            stdout.close()

    def read(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"the peer process did not answer within {timeout:.0f} s") from None
        if not line:
            raise RuntimeError(f"the peer process died (exit code {self.proc.wait(30)})")
        result: dict[str, Any] = json.loads(line)
        return result

    def call(self, op: str, *, answer_within: float = TIMEOUT_S, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self.read(answer_within)

    def connect(self) -> None:
        self.call("connect")

    def wait(self, what: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        """Until every event announced by ``expect`` has arrived; an error after ``timeout``."""
        reply = self.call("wait", answer_within=timeout + 60, timeout=timeout)
        if reply["done_at"] is None:
            raise RuntimeError(
                f"{what}: node B saw {reply['count']} of the {reply['expect']} expected events within {timeout:.0f} s"
            )
        return reply

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "close"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(30)
        except Exception:
            self.proc.kill()
            self.proc.wait(30)
        if self.proc.stdin is not None:  # stdout belongs to the pump thread, which closes it
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


# -- measurements -------------------------------------------------------------------------------


def wait_connected(kv: ekv.EKV, count: int, timeout: float = 60) -> None:
    ekv.testing.wait_until(
        lambda: sum(1 for m in kv.info()["members"].values() if m.get("connected")) >= count, timeout
    )


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def settle() -> None:
    """These 2-vCPU machines slow down on back-to-back runs (kernel writeback): let it finish."""
    gc.collect()
    os.sync()
    time.sleep(0.3)


def measure_latency(a: ekv.EKV, peers: list[Peer], count: int, tag: str) -> dict[str, float]:
    settle()
    for peer in peers:
        peer.call("expect", count=count, prefix=tag)
    sent: dict[str, int] = {}
    for i in range(count):
        key = f"{tag}{i:06d}"
        sent[key] = time.monotonic_ns()
        a.put(key, i)
        time.sleep(0.0005)  # sequential, spaced puts: latency, not throughput
    lat: list[float] = []
    for peer in peers:
        peer.wait(f"latency run {tag}")
        arrivals = peer.call("arrivals", prefix=tag)["arrivals"]
        lat += [(arrivals[k] - sent[k]) / 1e3 for k in sent if k in arrivals]
    return {"p50_us": percentile(lat, 0.5), "p99_us": percentile(lat, 0.99), "samples": len(lat)}


def measure_throughput(a: ekv.EKV, peer: Peer, count: int, tag: str) -> dict[str, float]:
    """One thread puts ``count`` keys on A, then one marker key per shard. B subscribes only to
    the markers (so it does not decode every value for an event); live replication is in order
    per shard, so when every shard's marker has arrived, B holds all the keys."""
    settle()
    shards = len(ekv.testing.node_of(a).store.shards)
    markers = marker_keys(f"{tag}done/", shards)
    peer.call("expect", count=len(markers), prefix=f"{tag}done/")
    start = time.monotonic_ns()
    for i in range(count):
        a.put(f"{tag}{i:07d}", i)
    local_done = time.monotonic_ns()
    for key in markers:
        a.put(key, True)
    done = peer.wait(f"throughput run {tag}")["done_at"]
    return {
        "local_ops_s": count / ((local_done - start) / 1e9),
        "replicated_ops_s": count / ((done - start) / 1e9),
    }


def marker_keys(prefix: str, shards: int) -> list[str]:
    from ekv._core.keys import shard_of

    found: dict[int, str] = {}
    i = 0
    while len(found) < shards:
        key = f"{prefix}{i}"
        found.setdefault(shard_of(key.encode(), shards), key)
        i += 1
    return list(found.values())


def single_node_put(path: Path, count: int) -> float:
    with ekv.EKV("bench", path, log=False) as kv:
        settle()
        start = time.perf_counter()
        for i in range(count):
            kv.put(f"single/{i:07d}", i)
        return count / (time.perf_counter() - start)


def load(kv: ekv.EKV, count: int, prefix: str) -> None:
    """Fill a store fast through the apply path (as if replicated from a loader node)."""
    import pickle

    store = ekv.testing.node_of(kv).store
    blob = pickle.dumps({"v": "x" * 40}, protocol=5)
    ts = time.time_ns()
    batch: list[Entry] = []
    for i in range(count):
        batch.append(Entry(f"{prefix}{i:08d}", ts + i, "loader", i + 1, None, blob))
        if len(batch) == 5000:
            store.apply(batch)
            batch = []
    if batch:
        store.apply(batch)


def measure_full_sync(root: Path, size: int) -> dict[str, float]:
    """A fresh source holding only ``size`` keys, and an empty node B that subscribes first and
    then connects: the time from its connect until it has seen every key."""
    source = ekv.EKV("bench", root / f"src{size}", listen="127.0.0.1:0", log=False, **FAST)
    try:
        load(source, size, f"full{size}/")
        ekv.testing.run_gc(source)  # no members yet: the log is truncated, so this is a full sync
        settle()
        peer = Peer(root / f"full{size}", source.listen_address, connect=False)  # type: ignore[arg-type]
        try:
            rss_start = peer.call("expect", count=size, prefix=f"full{size}/", track=False)["rss"]
            start = time.monotonic_ns()
            peer.connect()
            reply = peer.wait(f"full sync of {size} keys")
            seconds = (reply["done_at"] - start) / 1e9
            return {
                "keys": size,
                "seconds": seconds,
                "keys_per_s": size / seconds,
                "peer_rss_peak_mb": reply["rss_peak"],
                "peer_rss_start_mb": rss_start,
            }
        finally:
            peer.close()
    finally:
        source.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="ekv-bench-cluster-"))
    results: dict[str, Any] = {}
    try:
        results["single_node_put_ops_s"] = statistics.median(
            single_node_put(root / f"single{i}", args.writes) for i in range(args.reps)
        )
        a = ekv.EKV("bench", root / "a", listen="127.0.0.1:0", log=False, **FAST)
        try:
            b = Peer(root / "b", a.listen_address)  # type: ignore[arg-type]
            try:
                wait_connected(a, 1)
                lat = [measure_latency(a, [b], args.latency, f"lat{r}/") for r in range(args.reps)]
                results["latency_2_nodes"] = {k: statistics.median(x[k] for x in lat) for k in lat[0]}
                thr = [measure_throughput(a, b, args.writes, f"thr{r}/") for r in range(args.reps)]
                results["throughput_2_nodes"] = {k: statistics.median(x[k] for x in thr) for k in thr[0]}
                # delta sync after a partition
                cut_off(a, {b.node_id})
                b.call("block", node_ids=[a.node_id])
                ekv.testing.wait_until(
                    lambda: not any(m.get("connected") for m in a.info()["members"].values()),
                    TIMEOUT_S,
                    message="the partition did not take effect",
                )
                for i in range(args.delta):
                    a.put(f"delta/{i:06d}", i)
                settle()
                b.call("expect", count=args.delta, prefix="delta/")
                healed = time.monotonic_ns()
                cut_off(a, ())
                b.call("block", node_ids=[])
                done = b.wait("delta sync")["done_at"]
                results["delta_sync"] = {"writes": args.delta, "seconds": (done - healed) / 1e9}
                # 3 nodes
                c = Peer(root / "c", a.listen_address)  # type: ignore[arg-type]
                try:
                    wait_connected(a, 2)
                    lat3 = [measure_latency(a, [b, c], args.latency, f"lat3-{r}/") for r in range(args.reps)]
                    results["latency_3_nodes"] = {k: statistics.median(x[k] for x in lat3) for k in lat3[0]}
                finally:
                    c.close()
            finally:
                b.close()
            # full sync of K keys to an empty node, each size from a fresh source holding only them
            for size in args.full:
                results[f"full_sync_{size}"] = measure_full_sync(root, size)
        finally:
            a.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def report(r: dict[str, Any]) -> str:
    lines = [f"ekv {ekv.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, 127.0.0.1", ""]
    l2, l3 = r["latency_2_nodes"], r["latency_3_nodes"]
    lines.append(
        f"replication latency, put on A -> event on B: p50 {l2['p50_us']:.0f} us, p99 {l2['p99_us']:.0f} us "
        "(Elixir ekv 0.1.5 here: p50 316 us, p99 582 us)"
    )
    lines.append(f"  3 nodes, seen on both others: p50 {l3['p50_us']:.0f} us, p99 {l3['p99_us']:.0f} us")
    t = r["throughput_2_nodes"]
    single = r["single_node_put_ops_s"]
    lines.append(
        f"sustained replicated writes: {t['replicated_ops_s']:,.0f}/s visible on B "
        f"({t['replicated_ops_s'] / single:.0%} of the single-node put, {single:,.0f}/s, same run)"
    )
    d = r["delta_sync"]
    lines.append(f"delta sync after a partition: {d['writes']:,} writes in {d['seconds']:.2f} s after the heal")
    for key, value in r.items():
        if key.startswith("full_sync_"):
            lines.append(
                f"full sync of {value['keys']:,} keys: {value['seconds']:.2f} s = {value['keys_per_s']:,.0f} keys/s "
                "(Elixir 0.1.5: 10,000 keys in 486 ms = 20.5k keys/s); "
                f"receiver RSS {value['peer_rss_start_mb']:.0f} -> peak {value['peer_rss_peak_mb']:.0f} MB"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-mode", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--latency", type=int, default=1000, help="sequential puts per latency repetition")
    parser.add_argument("--writes", type=int, default=20_000, help="puts per throughput repetition")
    parser.add_argument("--delta", type=int, default=10_000, help="writes made during the partition")
    parser.add_argument("--full", type=int, nargs="*", default=[10_000, 100_000], help="full-sync sizes")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.peer_mode:
        return peer_main(args)
    if args.quick:
        args.reps, args.latency, args.writes, args.delta, args.full = 1, 200, 2000, 2000, [5000]
    results = run(args)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
