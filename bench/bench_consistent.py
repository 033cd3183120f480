"""Linearizable operations (SPEC 13, issue 12's speed targets) on three voters, against the plain
replication latency measured in the same run.

    PYTHONPATH=src python3 bench/bench_consistent.py                    # about a minute
    PYTHONPATH=src python3 bench/bench_consistent.py --seconds 0.2 --rounds 1 --clients 4   # smoke

Three ekv nodes, each a separate OS process (this script starts them: ``--node-mode``), on
127.0.0.1 with ``cluster_size=3`` and ``consistent_prefixes=["c/"]``; this process only drives
them over their stdin/stdout and runs no node. Every sequential row is one client thread in node
A. Rows, each ``--seconds`` long per round, the rounds (``--rounds``) interleaved so the baseline
and the consistent rows see the same machine noise; latencies are pooled over the rounds:

* baseline ``replication``: a plain ``put`` on A until B's and C's subscribers see the event
  (both sides read ``time.monotonic_ns``, one clock for every process of the machine), as
  ``bench_cluster.py`` measures it; B's and C's one-way latencies pooled. Strictly sequential,
  as the original's ``cas3.exs``: each subscriber acknowledges to A (a UDP datagram on loopback)
  and A's next put waits for both, then 0.5 ms; spaced puts that do not wait build a queue on a
  loaded machine and measure it instead of the latency;
* baseline ``plain put``: A's local ``put`` call (new keys);
* ``consistent put``: ``put(k, v, consistent=True)`` on new keys;
* ``update (one key)``: ``update(k, inc)`` repeated on one counter key from A (the case the
  one-round-trip path is for);
* ``consistent get``: ``get(k, consistent=True)`` on random keys written by the consistent puts;
* ``if_absent put``: ``put(k, v, if_absent=True)`` on new keys;
* throughput: consistent puts and updates from 1 client (calls / wall time) and from
  ``--clients`` threads spread over the three nodes, each on its own keys (each its own counter
  for updates), all starting at one agreed CLOCK_MONOTONIC instant; total calls / ``--seconds``.

With ``--elixir EBIN`` (the Elixir original built by ``/work/shared/tools/ekv-elixir/build.sh``,
``EKV_EBIN`` there), each round is followed by one run of that directory's ``cas3.exs`` (3 BEAM VMs
on loopback, cluster_size 3, ``--elixir-n`` operations per phase) and its figures are printed
beside ekv's: the same window, interleaved. Its throughput rows are 16 processes on node A.

Ratios printed: consistent put p50 / replication p50 (issue 12: at most 2.5x), repeated update
p50 / replication p50 (at most 1.5x with the one-round-trip path). Latencies are per call
(``perf_counter_ns``); p50/p99 are nearest-rank. Errors (``ekv.Error``) are counted, not
raised: a row with errors says so.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import queue
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FAST = {"heartbeat_interval": 0.5, "heartbeat_timeout": 5.0, "anti_entropy_interval": 2.0, "reconnect_max": 0.5}
CONSISTENT = {"cluster_size": 3, "consistent_prefixes": ["c/"]}
TIMEOUT_S = 120.0
"""The longest a node process may take to answer one command; past it the run fails, not hangs."""
WARM = 20
"""Untimed operations before each timed sequential row (on other keys)."""


def value(i: int) -> dict[str, Any]:
    """About 100 bytes pickled, like the Elixir benchmark's value."""
    return {"id": i, "name": "Alice", "role": "admin", "tags": ["a", "b"], "n": i * 7}


def inc(v: Any) -> int:
    return (v or 0) + 1


# -- the node process ---------------------------------------------------------------------------


def node_main(args: argparse.Namespace) -> int:
    """One voter; it runs the commands the driver writes to its stdin, one JSON object a line."""
    import ekv

    peers = [args.peer] if args.peer else []
    kv = ekv.EKV(
        "benchc", args.data_dir, listen="127.0.0.1:0", peers=peers, log=False, codec="pickle", **CONSISTENT, **FAST
    )
    out = sys.stdout
    arrivals: dict[str, int] = {}
    lock = threading.Lock()
    written: list[str] = []
    subs: list[Any] = []

    acks = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    acks.bind(("127.0.0.1", 0))
    acks.settimeout(TIMEOUT_S)

    def consume(sub: Any, ack_to: tuple[str, int]) -> None:
        for batch in sub:
            now = time.monotonic_ns()
            with lock:
                for event in batch:
                    arrivals.setdefault(event.key, now)
            for event in batch:  # tell the writer, which waits for every peer before its next put
                acks.sendto(event.key.encode(), ack_to)

    def one(kind: str, key: str, i: int) -> None:
        if kind == "put":
            kv.put(key, value(i))
        elif kind == "cput":
            kv.put(key, value(i), consistent=True)
        elif kind == "ifabsent":
            kv.put(key, value(i), if_absent=True)
        elif kind == "update":
            kv.update(key, inc)
        elif kind == "cget":
            kv.get(key, consistent=True)
        else:
            raise ValueError(kind)

    def key_for(kind: str, prefix: str, i: int, rng: random.Random) -> str:
        if kind == "update":
            return f"{prefix}ctr"
        if kind == "cget":
            return rng.choice(written)
        return f"{prefix}{i:07d}"

    def timed(kind: str, prefix: str, seconds: float, start_at: int) -> dict[str, Any]:
        """Calls of ``kind`` for ``seconds`` from one thread: latencies (ns) and errors."""
        rng = random.Random(prefix)
        lat: list[int] = []
        errors = 0
        if start_at:
            time.sleep(max(0.0, (start_at - time.monotonic_ns()) / 1e9))
        t_start = time.monotonic_ns()
        end = t_start + int(seconds * 1e9)
        i = 0
        while True:
            key = key_for(kind, prefix, i, rng)
            t0 = time.perf_counter_ns()
            try:
                one(kind, key, i)
            except ekv.Error:
                errors += 1
            lat.append(time.perf_counter_ns() - t0)
            if kind == "cput":
                written.append(key)
            i += 1
            if time.monotonic_ns() >= end:
                break
        return {"lat": lat, "errors": errors, "wall_ns": time.monotonic_ns() - t_start}

    ready = {"ready": True, "listen": kv.listen_address, "node_id": kv.node_id, "ack_port": acks.getsockname()[1]}
    out.write(json.dumps(ready) + "\n")
    out.flush()
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        reply: dict[str, Any]
        if op == "connected":
            members = kv.info()["members"].values()
            reply = {"connected": sum(1 for m in members if m.get("connected"))}
        elif op == "probe":  # one consistent put: the voters answer (a quorum is connected)
            try:
                kv.put(command["key"], 0, consistent=True)
                reply = {"ok": True}
            except ekv.Error as exc:
                reply = {"ok": False, "error": repr(exc)}
        elif op == "expect":
            sub = kv.subscribe(command["prefix"], max_queue=1_000_000, overflow="drop_oldest")
            subs.append(sub)
            ack_to = ("127.0.0.1", command["ack_port"])
            threading.Thread(target=consume, args=(sub, ack_to), daemon=True).start()
            reply = {"ok": True}
        elif op == "arrivals":
            prefix = command["prefix"]
            deadline = time.monotonic() + command["timeout"]
            while time.monotonic() < deadline:
                with lock:
                    got = {k: v for k, v in arrivals.items() if k.startswith(prefix)}
                if len(got) >= command["count"]:
                    break
                time.sleep(0.005)
            reply = {"arrivals": got}
        elif op == "paced":  # the replication baseline: plain puts, each stamped before the call
            sent: dict[str, int] = {}
            end = time.monotonic() + command["seconds"]
            i = 0
            while True:
                key = f"{command['prefix']}{i:07d}"
                sent[key] = time.monotonic_ns()
                kv.put(key, value(i))
                seen = 0
                wanted = key.encode()
                while seen < command["peers"]:  # strictly sequential: no queue builds up behind a put
                    # (bytes, not text: a member's SWIM datagram can land here when a node's TCP
                    # port number equals this socket's UDP one, and that node's SWIM then could not bind)
                    seen += acks.recv(256) == wanted
                i += 1
                if time.monotonic() >= end:
                    break
                time.sleep(0.0005)
            reply = {"sent": sent}
        elif op == "seq":
            for w in range(WARM):
                with contextlib.suppress(ekv.Error):
                    one(command["kind"], f"{command['prefix']}warm/{w}", w)
            reply = timed(command["kind"], command["prefix"], command["seconds"], 0)
        elif op == "par":  # ``threads`` clients in this node, each on its own keys
            results: list[dict[str, Any]] = []
            kind, seconds, start_at = command["kind"], command["seconds"], command["start_at"]

            def client(prefix: str, into: list[dict[str, Any]] = results) -> None:
                into.append(timed(kind, prefix, seconds, start_at))  # noqa: B023 (joined below)

            threads = [
                threading.Thread(target=client, args=(f"{command['prefix']}{t}/",)) for t in range(command["threads"])
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            reply = {
                "ops": sum(len(r["lat"]) for r in results),
                "errors": sum(r["errors"] for r in results),
                "lat": [x for r in results for x in r["lat"]],
            }
        elif op == "close":
            break
        else:
            reply = {"error": op}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    for sub in subs:
        sub.close()
    kv.close()
    return 0


class Node:
    """A node process, driven by one JSON command a line; every answer is awaited with a deadline."""

    def __init__(self, data_dir: Path, peer: str | None) -> None:
        command = [sys.executable, __file__, "--node-mode", "--data-dir", str(data_dir)]
        if peer:
            command += ["--peer", peer]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        ready = self.read(TIMEOUT_S)
        self.listen: str = ready["listen"]
        self.node_id: str = ready["node_id"]
        self.ack_port: int = ready["ack_port"]

    def _pump(self) -> None:
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
            raise RuntimeError(f"a node process did not answer within {timeout:.0f} s") from None
        if not line:
            raise RuntimeError(f"a node process died (exit code {self.proc.wait(30)})")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self.read(TIMEOUT_S + float(args.get("seconds", 0)))

    def close(self) -> None:
        try:
            self.send("close")
            self.proc.wait(30)
        except Exception:
            self.proc.kill()
            self.proc.wait(30)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


# -- the Elixir original, beside -----------------------------------------------------------------

ELIXIR_TOOLS = Path("/work/shared/tools/ekv-elixir")


def elixir_cas3(ebin: Path, tools: Path, work: Path, n: int) -> dict[str, Any]:
    """One run of the original's ``cas3.exs`` as ``run_all.sh`` does it: two peer VMs, the driver
    VM (node A, the only client); its ``RESULT {json}`` line."""
    cookie = ["--cookie", "ekvbench"]
    peer_names = ["b@127.0.0.1", "c@127.0.0.1"]
    peers = [
        subprocess.Popen(
            ["elixir", "--name", f"{name}@127.0.0.1", *cookie, "-pa", str(ebin), str(tools / "peer.exs")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("b", "c")
    ]
    try:
        proc = subprocess.run(
            ["elixir", "--name", "a@127.0.0.1", *cookie, "-pa", str(ebin), "cas3.exs", *peer_names, str(work), str(n)],
            cwd=tools,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S * 5,
        )
    finally:
        for peer in peers:
            peer.terminate()
        for peer in peers:
            try:
                peer.wait(30)
            except subprocess.TimeoutExpired:
                peer.kill()
                peer.wait(30)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"cas3.exs printed no RESULT line (exit {proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def elixir_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs of the figures the table shows."""

    def med(*path: str) -> float:
        values = []
        for run in runs:
            x: Any = run
            for p in path:
                x = x[p]
            values.append(float(x))
        return statistics.median(values)

    rows = {
        "replication": "plain_one_way_pooled",
        "plain_put": "plain_put_call",
        "consistent_put": "cput",
        "update_one_key": "upd_hot",
        "consistent_get": "cget",
    }
    summary: dict[str, Any] = {
        name: {k: med(src, k) for k in ("p50_us", "p99_us", "ops_s")} for name, src in rows.items()
    }
    summary["throughput_1_client"] = {"cput": med("cput", "ops_s"), "update": med("upd_hot", "ops_s")}
    summary["throughput_16_processes"] = {
        "cput": med("par_cput", "wall_ops_s"),
        "update": med("par_update", "wall_ops_s"),
        "put": med("par_put", "wall_ops_s"),
    }
    summary["cas_errors"] = sum(int(run["cas_errors"]) for run in runs)
    summary["runs"] = len(runs)
    base = summary["replication"]["p50_us"]
    summary["ratios"] = {
        "consistent_put_p50_over_replication_p50": summary["consistent_put"]["p50_us"] / base,
        "update_p50_over_replication_p50": summary["update_one_key"]["p50_us"] / base,
    }
    return summary


# -- measurements -------------------------------------------------------------------------------


def settle() -> None:
    """These 2-vCPU machines slow down on back-to-back runs (kernel writeback): let it finish."""
    gc.collect()
    os.sync()
    time.sleep(0.3)


def stats(lat_ns: list[int], errors: int = 0) -> dict[str, Any]:
    lat = sorted(lat_ns)
    n = len(lat)
    if not n:
        return {"n": 0, "errors": errors, "p50_us": float("nan"), "p99_us": float("nan")}
    return {
        "n": n,
        "errors": errors,
        "p50_us": lat[n // 2] / 1e3,
        "p99_us": lat[min(n - 1, (n * 99) // 100)] / 1e3,
        "ops_s": n / (sum(lat) / 1e9),
    }


def replication(a: Node, others: list[Node], seconds: float, tag: str) -> list[int]:
    for node in others:
        node.call("expect", prefix=tag, ack_port=a.ack_port)
    sent = a.call("paced", prefix=tag, seconds=seconds, peers=len(others))["sent"]
    lat: list[int] = []
    for node in others:
        arrivals = node.call("arrivals", prefix=tag, count=len(sent), timeout=60)["arrivals"]
        missing = len(sent) - len(arrivals)
        if missing:
            raise RuntimeError(f"replication {tag}: {missing} of {len(sent)} puts never reached node {node.node_id}")
        lat += [arrivals[k] - sent[k] for k in sent]
    return lat


def parallel(nodes: list[Node], kind: str, clients: int, seconds: float, tag: str) -> dict[str, Any]:
    """``clients`` threads spread over the nodes, each on its own keys, from one agreed instant."""
    start_at = time.monotonic_ns() + 300_000_000
    spread = [clients // len(nodes) + (1 if i < clients % len(nodes) else 0) for i in range(len(nodes))]
    busy = [(node, n) for node, n in zip(nodes, spread, strict=True) if n]
    for i, (node, n) in enumerate(busy):
        node.send("par", kind=kind, prefix=f"{tag}{i}/", threads=n, seconds=seconds, start_at=start_at)
    replies = [node.read(TIMEOUT_S + seconds) for node, _ in busy]
    ops = sum(r["ops"] for r in replies)
    return {
        "clients": clients,
        "ops": ops,
        "errors": sum(r["errors"] for r in replies),
        "ops_s": ops / seconds,
        **{k: v for k, v in stats([x for r in replies for x in r["lat"]]).items() if k.endswith("_us")},
    }


SEQ = [
    ("plain_put", "put", "p/"),
    ("consistent_put", "cput", "c/p/"),
    ("update_one_key", "update", "c/u/"),
    ("consistent_get", "cget", "c/p/"),
    ("if_absent_put", "ifabsent", "c/a/"),
]


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="ekv-bench-consistent-"))
    nodes: list[Node] = []
    try:
        nodes.append(Node(root / "a", None))
        nodes += [Node(root / name, nodes[0].listen) for name in ("b", "c")]
        a = nodes[0]
        deadline = time.monotonic() + TIMEOUT_S
        while not all(node.call("connected")["connected"] >= 2 for node in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the three nodes did not connect")
            time.sleep(0.05)
        while not all(node.call("probe", key=f"c/probe/{i}")["ok"] for i, node in enumerate(nodes)):
            if time.monotonic() > deadline:
                raise RuntimeError("the voters did not reach a quorum")
            time.sleep(0.1)
        pooled: dict[str, list[int]] = {"replication": []}
        errors: dict[str, int] = {}
        one_client: dict[str, list[float]] = {"cput": [], "update": []}
        many: dict[str, list[dict[str, Any]]] = {"cput": [], "update": [], "put": []}
        elixir_runs: list[dict[str, Any]] = []
        for r in range(args.rounds):
            settle()
            pooled["replication"] += replication(a, nodes[1:], args.seconds, f"rep{r}/")
            for name, kind, prefix in SEQ:
                settle()
                reply = a.call("seq", kind=kind, prefix=f"{prefix}{r}/", seconds=args.seconds)
                pooled.setdefault(name, []).extend(reply["lat"])
                errors[name] = errors.get(name, 0) + reply["errors"]
                if kind in one_client:
                    one_client[kind].append(len(reply["lat"]) / (reply["wall_ns"] / 1e9))
            for kind in many:
                settle()
                tag = f"{'c/' if kind != 'put' else ''}m{kind}{r}/"
                many[kind].append(parallel(nodes, kind, args.clients, args.seconds, tag))
            if args.elixir:
                settle()
                elixir_runs.append(elixir_cas3(args.elixir, args.elixir_tools, root / f"cas3-{r}", args.elixir_n))
        results: dict[str, Any] = {"rounds": args.rounds, "seconds": args.seconds, "clients": args.clients}
        results["load_before"], results["load_after"] = load_before, os.getloadavg()[0]
        for name, lat in pooled.items():
            results[name] = stats(lat, errors.get(name, 0))
        results["throughput_1_client"] = {k: statistics.median(v) for k, v in one_client.items()}
        results["throughput_n_clients"] = {
            k: {
                "clients": args.clients,
                "ops_s": statistics.median(x["ops_s"] for x in v),
                "p50_us": statistics.median(x["p50_us"] for x in v),
                "errors": sum(x["errors"] for x in v),
            }
            for k, v in many.items()
        }
        base = results["replication"]["p50_us"]
        results["ratios"] = {
            "consistent_put_p50_over_replication_p50": results["consistent_put"]["p50_us"] / base,
            "update_p50_over_replication_p50": results["update_one_key"]["p50_us"] / base,
            "consistent_get_p50_over_replication_p50": results["consistent_get"]["p50_us"] / base,
        }
        if elixir_runs:
            results["elixir"] = elixir_summary(elixir_runs)
        return results
    finally:
        for node in nodes:
            node.close()
        shutil.rmtree(root, ignore_errors=True)


def report(r: dict[str, Any]) -> str:
    import ekv

    ex = r.get("elixir")
    lines = [
        f"ekv {ekv.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, 3 voters (processes) on "
        f"127.0.0.1; {r['rounds']} round(s) of {r['seconds']} s per row; load average {r['load_before']:.1f} before, "
        f"{r['load_after']:.1f} after",
    ]
    if ex:
        lines.append(f"Elixir original (bc996c4, cas3.exs): {ex['runs']} run(s) interleaved with the rounds, medians")
    head = "| row | p50 us | p99 us | ops/s | n | errors |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if ex:
        head += " Elixir p50 us | Elixir p99 us | Elixir ops/s |"
        rule += "---:|---:|---:|"
    lines += ["", head, rule]
    labels = {
        "replication": "baseline: replication, put on A -> event on B/C",
        "plain_put": "baseline: plain put (local call)",
        "consistent_put": "consistent put",
        "update_one_key": "update, one key from one node",
        "consistent_get": "consistent get",
        "if_absent_put": "if_absent put",
    }
    for name, label in labels.items():
        s = r[name]
        ops = "" if name == "replication" else f"{s['ops_s']:,.0f}"
        line = f"| {label} | {s['p50_us']:,.0f} | {s['p99_us']:,.0f} | {ops} | {s['n']} | {s['errors']} |"
        if ex:
            e = ex.get(name)
            eops = "" if name == "replication" or not e else f"{e['ops_s']:,.0f}"
            line += f" {e['p50_us']:,.0f} | {e['p99_us']:,.0f} | {eops} |" if e else " | | |"
        lines.append(line)
    one = r["throughput_1_client"]
    many = r["throughput_n_clients"]
    n = r["clients"]
    head = f"| throughput | 1 client ops/s | {n} clients ops/s | {n} clients p50 us | errors |"
    rule = "|---|---:|---:|---:|---:|"
    if ex:
        head += " Elixir 1 client ops/s | Elixir 16 processes ops/s |"
        rule += "---:|---:|"
    lines += ["", head, rule]
    for kind, label in (("cput", "consistent put, own keys"), ("update", "update, own counter"), ("put", "plain put")):
        single = f"{one[kind]:,.0f}" if kind in one else ""
        m = many[kind]
        line = f"| {label} | {single} | {m['ops_s']:,.0f} | {m['p50_us']:,.0f} | {m['errors']} |"
        if ex:
            e1 = ex["throughput_1_client"].get(kind)
            line += f" {'' if e1 is None else f'{e1:,.0f}'} | {ex['throughput_16_processes'][kind]:,.0f} |"
        lines.append(line)
    q = r["ratios"]
    lines += [
        "",
        f"consistent put p50 / replication p50: {q['consistent_put_p50_over_replication_p50']:.2f}x (target <= 2.5x)",
        f"update (one key) p50 / replication p50: {q['update_p50_over_replication_p50']:.2f}x (target <= 1.5x)",
        f"consistent get p50 / replication p50: {q['consistent_get_p50_over_replication_p50']:.2f}x",
    ]
    if ex:
        eq = ex["ratios"]
        lines += [
            f"Elixir: consistent put / replication {eq['consistent_put_p50_over_replication_p50']:.2f}x, "
            f"update / replication {eq['update_p50_over_replication_p50']:.2f}x; CAS errors {ex['cas_errors']}",
            f"ekv / Elixir: consistent put p50 {r['consistent_put']['p50_us'] / ex['consistent_put']['p50_us']:.2f}x, "
            f"consistent get p50 {r['consistent_get']['p50_us'] / ex['consistent_get']['p50_us']:.2f}x, "
            f"1-client consistent put ops/s {one['cput'] / ex['throughput_1_client']['cput']:.2f}x, "
            f"{n}-client update ops/s {many['update']['ops_s'] / ex['throughput_16_processes']['update']:.2f}x "
            "(targets: p50 < 1x, throughput >= 1.5x)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node-mode", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each row in each round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; latencies pooled over them")
    parser.add_argument("--clients", type=int, default=16, help="client threads for the many-client rows")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--elixir", type=Path, metavar="EBIN", help="also run the original's cas3.exs each round")
    parser.add_argument("--elixir-tools", type=Path, default=ELIXIR_TOOLS, help="where cas3.exs is")
    parser.add_argument("--elixir-n", type=int, default=2000, help="cas3.exs operations per phase")
    args = parser.parse_args(argv)
    if args.node_mode:
        return node_main(args)
    results = run(args)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
