"""Replication benchmark: ekv node processes on 127.0.0.1, measured in one run.

    python3 -m pip install -e . && python3 bench/bench_cluster.py           # full run
    python3 bench/bench_cluster.py --quick                                  # smaller
    python3 bench/bench_cluster.py --json new.json --compare old.json      # and the change since old.json
    python3 bench/bench_cluster.py --elixir $EKV_EBIN                      # the original beside, same window

What it measures (node A lives in this process, node B is a child process):

* the floor: a plain blocking loopback TCP round trip between two Python processes (32-byte
  ping-pong, TCP_NODELAY), p50/p99, measured before each latency repetition; the latency targets
  are ratios to its p50, so they hold or fail on this machine as it is during this run;
* replication latency: ``A.put`` until B's subscriber sees the event (both sides read
  ``time.monotonic_ns``, which is one clock for every process of the machine); p50/p99 over
  strictly sequential puts (the next put waits until every subscriber has the event, as in the
  original's repl2.exs), after 50 warm-up puts, of the original's ~100-byte map;
* sustained replicated writes: A puts N keys as fast as one thread can; throughput = N / (time
  until B has them all, known from one marker key per shard written after them), next to A's
  single-node put throughput measured in the same run;
* full sync: A holds K keys, B starts empty; keys/s until B has them all (and B's RSS growth);
* delta sync: A and B connected, then partitioned; A writes 10,000 keys; time from the heal until
  B has them;
* 3 nodes: the latency of a put on A as seen on the two others.

Each figure is the median of the repetitions (default 3; sync runs once per size); every
repetition is preceded by ``os.sync()`` and a short pause, as in bench_local.py. The report ends
with issue 13's targets, each with its verdict (met / MISSED); ``--json`` writes every repetition
besides the medians; ``--compare OLD.json`` prints the change of every figure against an earlier
run (``--results NEW.json`` compares two files without measuring).

With ``--elixir EBIN`` (or ``$EKV_EBIN``; the original built by
``/work/shared/tools/ekv-elixir/build.sh``), each latency repetition is followed by one run of the
original's ``repl2.exs`` (two BEAM VMs, put on A -> subscriber event on B, 1,000 sequential puts),
so "below the original's" is checked in the same window.

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
import socket
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Target, compare_table, load_rows, median_of, targets_table

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
    state: dict[str, Any] = {
        "expect": None,
        "done_at": None,
        "rss_peak": 0.0,
        "count": 0,
        "track": True,
        "notify": None,
    }
    current: list[Any] = [None]

    notify = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

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
                port = state["notify"]
            if port:  # a sequential latency run: tell A, which waits for it before its next put
                notify.sendto("\n".join(event.key for event in batch).encode(), ("127.0.0.1", port))
            state["rss_peak"] = max(state["rss_peak"], rss_mb())

    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "expect":
            if current[0] is not None:
                current[0].close()
            with lock:
                state.update(
                    expect=command["count"],
                    done_at=None,
                    rss_peak=rss_mb(),
                    count=0,
                    track=command.get("track", True),
                    notify=command.get("notify"),
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


WARM_UP = 50
"""Puts before each latency repetition's measured ones (the original's repl2.exs does the same)."""


def bench_value(i: int) -> dict[str, Any]:
    """The ~100-byte map of the original's benchmarks (repl2.exs, repl2_py.py)."""
    return {"id": i, "name": f"user_{i:05d}", "email": f"u{i}@example.com", "plan": "pro", "bio": "xxxxx"}


def measure_latency(a: ekv.EKV, peers: list[Peer], count: int, tag: str) -> dict[str, float]:
    """Strictly sequential puts, as the original's repl2.exs: each peer's subscriber tells A (a
    loopback datagram) when it has the event, and only then does A put the next key. (Puts spaced
    by a fixed pause measure queueing instead, once a put's work on the nodes takes longer than the
    pause: on a loaded machine with 3 nodes it did.) latency = the subscriber's arrival time - A's
    time before ``put``, both ``time.monotonic_ns``."""
    settle()
    total = WARM_UP + count
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as note:
        note.bind(("127.0.0.1", 0))
        note.settimeout(60)
        for peer in peers:
            peer.call("expect", count=total, prefix=tag, notify=note.getsockname()[1])
        sent: dict[str, int] = {}
        for i in range(total):
            key = f"{tag}{i:06d}"
            sent[key] = time.monotonic_ns()
            a.put(key, bench_value(i))
            seen = 0
            while seen < len(peers):
                try:
                    # (errors="replace": a stray SWIM datagram can land here, see bench_consistent.py)
                    seen += note.recv(65536).decode(errors="replace").split("\n").count(key)
                except TimeoutError:
                    raise RuntimeError(f"latency run {tag}: {key} was not seen on every peer within 60 s") from None
        measured = set(list(sent)[WARM_UP:])
    lat: list[float] = []
    for peer in peers:
        peer.wait(f"latency run {tag}")
        arrivals = peer.call("arrivals", prefix=tag)["arrivals"]
        lat += [(arrivals[k] - sent[k]) / 1e3 for k in measured if k in arrivals]
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


# -- the floor: a plain loopback TCP round trip between two Python processes ----------------------

FLOOR_MESSAGE = 32
"""Bytes each way: about a small Live frame's header and key."""


def echo_main(args: argparse.Namespace) -> int:
    """The floor's other process: connect, then echo every message (blocking socket)."""
    host, port = args.peer.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = _recv_exact(sock, FLOOR_MESSAGE)
            if not data:
                return 0
            sock.sendall(data)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf


def measure_floor(count: int) -> dict[str, float]:
    """p50/p99 of ``count`` blocking ping-pongs with a child Python process over 127.0.0.1."""
    settle()
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        server.settimeout(TIMEOUT_S)
        child = subprocess.Popen([sys.executable, __file__, "--echo-mode", "--peer", address])
        try:
            sock, _ = server.accept()
            with sock:
                sock.settimeout(TIMEOUT_S)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                message = b"x" * FLOOR_MESSAGE
                for _ in range(200):  # warm-up
                    sock.sendall(message)
                    _recv_exact(sock, FLOOR_MESSAGE)
                rtt: list[float] = []
                for _ in range(count):
                    t0 = time.perf_counter_ns()
                    sock.sendall(message)
                    if not _recv_exact(sock, FLOOR_MESSAGE):
                        raise RuntimeError("the echo process closed the connection")
                    rtt.append((time.perf_counter_ns() - t0) / 1e3)
        finally:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(30)
    return {"p50_us": percentile(rtt, 0.5), "p99_us": percentile(rtt, 0.99), "samples": len(rtt)}


# -- the original, beside -------------------------------------------------------------------------

ELIXIR_TOOLS = Path("/work/shared/tools/ekv-elixir")


def elixir_repl2(ebin: Path, work: Path, count: int) -> dict[str, float]:
    """One run of the original's ``repl2.exs`` (node A = the driver VM, node B = a peer VM):
    put on A -> subscriber event on B, ``count`` sequential puts; its one-way p50/p99. The node
    names carry this process's pid, so that two benchmarks running at once do not collide."""
    tag = f"ekvbc{os.getpid()}"
    cookie = ["--cookie", tag]
    peer_name = f"{tag}b@127.0.0.1"
    peer = subprocess.Popen(
        ["elixir", "--name", peer_name, *cookie, "-pa", str(ebin), str(ELIXIR_TOOLS / "peer.exs")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        driver = ["elixir", "--name", f"{tag}a@127.0.0.1", *cookie, "-pa", str(ebin), "repl2.exs"]
        proc = subprocess.run(
            [*driver, peer_name, str(work), str(count)],
            cwd=ELIXIR_TOOLS,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    finally:
        peer.terminate()
        try:
            peer.wait(30)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait(30)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"repl2.exs printed no RESULT line (exit {proc.returncode}): {proc.stderr[-2000:]}")
    one_way = json.loads(lines[-1][len("RESULT ") :])["one_way"]
    return {"p50_us": float(one_way["p50_us"]), "p99_us": float(one_way["p99_us"]), "samples": int(one_way["n"])}


# -- the run --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement; returns ``{"meta", "rows", "targets"}``: each row holds the medians
    and, under ``reps``, every repetition."""
    root = Path(tempfile.mkdtemp(prefix="ekv-bench-cluster-"))
    rows: dict[str, Any] = {}
    meta: dict[str, Any] = {
        "ekv": ekv.__version__,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    try:
        rows["single_node_put"] = median_of(
            [{"ops_s": single_node_put(root / f"single{i}", args.writes)} for i in range(args.reps)]
        )
        floors: list[dict[str, Any]] = []
        elixir: list[dict[str, Any]] = []
        a = ekv.EKV("bench", root / "a", listen="127.0.0.1:0", log=False, **FAST)
        try:
            b = Peer(root / "b", a.listen_address)  # type: ignore[arg-type]
            try:
                wait_connected(a, 1)
                lat = []
                for r in range(args.reps):  # the floor, ekv and the original take turns
                    floors.append(measure_floor(args.floor))
                    lat.append(measure_latency(a, [b], args.latency, f"lat{r}/"))
                    if args.elixir:
                        settle()
                        elixir.append(elixir_repl2(args.elixir, root / f"ex{r}", args.latency))
                rows["latency_2_nodes"] = median_of(lat)
                thr = [measure_throughput(a, b, args.writes, f"thr{r}/") for r in range(args.reps)]
                rows["throughput_2_nodes"] = median_of(thr)
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
                rows["delta_sync"] = {"writes": args.delta, "seconds": (done - healed) / 1e9}
                # 3 nodes
                c = Peer(root / "c", a.listen_address)  # type: ignore[arg-type]
                try:
                    wait_connected(a, 2)
                    lat3 = []
                    for r in range(args.reps):
                        floors.append(measure_floor(args.floor))
                        lat3.append(measure_latency(a, [b, c], args.latency, f"lat3-{r}/"))
                    rows["latency_3_nodes"] = median_of(lat3)
                finally:
                    c.close()
            finally:
                b.close()
            rows["floor_tcp_rtt"] = median_of(floors)
            if elixir:
                rows["original_latency_2_nodes"] = median_of(elixir)
            # full sync of K keys to an empty node, each size from a fresh source holding only them
            for size in args.full:
                rows[f"full_sync_{size}"] = measure_full_sync(root, size)
        finally:
            a.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    meta["loadavg_end"] = os.getloadavg()
    rows["ratios"] = ratios(rows)
    return {"meta": meta, "rows": rows, "targets": [t.as_dict() for t in targets(rows)]}


def ratios(rows: dict[str, Any]) -> dict[str, float]:
    """The figures the targets are about, as ratios to the floor (and to the single-node put)."""
    floor = rows["floor_tcp_rtt"]["p50_us"]
    l2, l3 = rows["latency_2_nodes"], rows["latency_3_nodes"]
    return {
        "latency_2_nodes_p50_over_floor_x": l2["p50_us"] / floor,
        "latency_2_nodes_p99_over_floor_x": l2["p99_us"] / floor,
        "latency_3_nodes_p50_over_floor_x": l3["p50_us"] / floor,
        "latency_3_nodes_p99_over_floor_x": l3["p99_us"] / floor,
        "replicated_over_single_put_share": rows["throughput_2_nodes"]["replicated_ops_s"]
        / rows["single_node_put"]["ops_s"],
    }


def targets(rows: dict[str, Any]) -> list[Target]:
    """Issue 13's targets, each with the figure of this run."""
    q = rows["ratios"]
    out = [
        Target("2 nodes p50 / floor p50", q["latency_2_nodes_p50_over_floor_x"], 15, at_most=True),
        Target("2 nodes p99 / floor p50", q["latency_2_nodes_p99_over_floor_x"], 50, at_most=True),
        Target("3 nodes p99 / floor p50", q["latency_3_nodes_p99_over_floor_x"], 60, at_most=True),
    ]
    original = rows.get("original_latency_2_nodes")
    why = "" if original else "pass --elixir EBIN"
    for pct in ("p50", "p99"):
        value = rows["latency_2_nodes"][f"{pct}_us"] / original[f"{pct}_us"] if original else None
        out.append(Target(f"2 nodes {pct} / the original's {pct}, same window", value, 1.0, at_most=True, note=why))
    out.append(Target("replicated writes / single-node put", q["replicated_over_single_put_share"], 0.9, False, "%"))
    return out


def report(results: dict[str, Any]) -> str:
    r, meta = results["rows"], results["meta"]
    lines = [
        f"ekv {meta['ekv']}, Python {meta['python']}, {meta['cpus']} CPUs, 127.0.0.1; load average "
        f"{meta['loadavg_start'][0]:.1f} at the start, {meta['loadavg_end'][0]:.1f} at the end",
        "",
    ]
    f, l2, l3 = r["floor_tcp_rtt"], r["latency_2_nodes"], r["latency_3_nodes"]
    lines.append(
        f"floor: loopback TCP round trip between two Python processes (blocking): p50 {f['p50_us']:.1f} us, "
        f"p99 {f['p99_us']:.1f} us"
    )
    lines.append(
        f"replication latency, put on A -> event on B: p50 {l2['p50_us']:.0f} us, p99 {l2['p99_us']:.0f} us "
        f"({l2['p50_us'] / f['p50_us']:.1f}x / {l2['p99_us'] / f['p50_us']:.1f}x the floor's p50)"
    )
    lines.append(
        f"  3 nodes, seen on both others: p50 {l3['p50_us']:.0f} us, p99 {l3['p99_us']:.0f} us "
        f"({l3['p50_us'] / f['p50_us']:.1f}x / {l3['p99_us'] / f['p50_us']:.1f}x)"
    )
    ex = r.get("original_latency_2_nodes")
    if ex:
        lines.append(
            f"  the original (Elixir, repl2.exs), same window: p50 {ex['p50_us']:.0f} us, p99 {ex['p99_us']:.0f} us"
        )
    t = r["throughput_2_nodes"]
    single = r["single_node_put"]["ops_s"]
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
    lines += ["", "Targets (issue 13), ratios within this run:", ""]
    lines.append(targets_table([Target.from_dict(t) for t in results["targets"]]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-mode", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--echo-mode", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--latency", type=int, default=1000, help="sequential puts per latency repetition")
    parser.add_argument("--floor", type=int, default=2000, help="round trips per floor repetition")
    parser.add_argument("--writes", type=int, default=20_000, help="puts per throughput repetition")
    parser.add_argument("--delta", type=int, default=10_000, help="writes made during the partition")
    parser.add_argument("--full", type=int, nargs="*", default=[10_000, 100_000], help="full-sync sizes")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--elixir",
        type=Path,
        metavar="EBIN",
        default=os.environ.get("EKV_EBIN") or None,
        help="also run the original's repl2.exs after each latency repetition (default: $EKV_EBIN)",
    )
    parser.add_argument("--json", type=Path, help="write the results (medians and every repetition) here")
    parser.add_argument("--compare", type=Path, metavar="OLD.json", help="print the change against an earlier run")
    parser.add_argument(
        "--results", type=Path, metavar="NEW.json", help="with --compare: compare this file instead of measuring"
    )
    args = parser.parse_args(argv)
    if args.peer_mode:
        return peer_main(args)
    if args.echo_mode:
        return echo_main(args)
    if args.results:
        if not args.compare:
            parser.error("--results needs --compare OLD.json")
        print(compare_table(load_rows(args.compare), load_rows(args.results)))
        return 0
    if args.quick:
        args.reps, args.latency, args.floor, args.writes, args.delta, args.full = 1, 200, 500, 2000, 2000, [5000]
    results = run(args)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.compare:
        print(f"\nChange against {args.compare} (a hint: two runs on a shared machine; the ratios are steadier):\n")
        print(compare_table(load_rows(args.compare), results["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
