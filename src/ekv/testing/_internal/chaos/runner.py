"""One chaos run: real node processes, clients recording a history, a seeded nemesis, a verdict.

    result = run(RunOptions(nodes=5, duration=600, seed=3, out=Path("chaos-out")))
    print(result.summary())

What happens, in order (everything a run produces lands in ``out/seed-N/``):

1. The network is set up (:mod:`.net`: namespaces on a bridge as root, else loopback), a
   wall-clock shim is written (:mod:`.skew`), and N ``python -m ekv.testing.node`` processes
   start with a cookie, fast failure detection and a ``tombstone_ttl`` longer than the run (so a
   missing row and a tombstone stay distinguishable for the checker).
2. One client process per node (:mod:`.workload`) runs until the end of the run, recording
   every operation (``ops-nI.jsonl``).
3. The nemesis schedule (:mod:`.nemesis`) is executed; every action is recorded. After a kill
   the node's data directory is read offline, before the node restarts and can sync: that is
   its *restart state*, against which the durability check compares what it acknowledged.
   Every ``sample_every`` seconds each reachable node reports its keys, tombstones and change-log
   size (``samples``).
4. At the end of the schedule: final heal (network healed, loss off, clocks back to their base
   offsets, paused nodes resumed, dead nodes restarted). The harness then polls every node's
   full dump until all are identical: the time that takes is the *convergence time*.
5. ``history.jsonl`` (the checker's format) is written, :func:`ekv.testing._internal.checker.check`
   judges it, and ``verdict.json``, ``timelines.txt`` and ``result.json`` are written.

*Group mode* (``processes`` > 1): every node is a :class:`~.group.NodeGroup` of that many
processes on one data directory, opened with the node's options (one node process, the others
attached, SPEC section 12). The clients run inside each process (:mod:`.member`), calling its
store directly, so attached processes' reads and writes are in the history too. The nemesis adds
``proc-kill``: one process of a group SIGKILLed (half of the time the current node process,
which an attached one then replaces) and restarted later. Its operations in flight never
complete (``info``). The restart record of a process kill is the group's state dumped by a
surviving process right after the kill: everything the group acknowledged before it must be in
the files (a crash of one process loses no SQLite commit). ``kill`` and ``pause`` act on whole
groups (the machine crashes or stalls), with the restart state read offline as above.

*Availability* is the share of client operations that succeeded among those that did not
overlap a window in which their node was killed or paused (SPEC: a live node serves local
reads and writes whatever the network does).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ekv.testing._internal import powercut
from ekv.testing._internal.chaos import consistent, skew
from ekv.testing._internal.chaos.group import NodeGroup
from ekv.testing._internal.chaos.nemesis import KINDS, Event, schedule
from ekv.testing._internal.chaos.net import LocalNet, NamespaceNet, Network, namespaces_available
from ekv.testing._internal.checker import History, Verdict, check
from ekv.testing.cluster import NodeProcess

__all__ = ["RunOptions", "RunResult", "run"]

NS = 1_000_000_000
INSTANCE = "chaos"


@dataclass
class RunOptions:
    """What one run does. The defaults are the published configuration, except ``duration``."""

    nodes: int = 5
    duration: float = 60.0
    """Seconds of workload and faults; convergence is measured after it."""
    seed: int = 0
    net: str = "auto"
    """``netns`` (root), ``local`` (loopback, partitions by ekv's test hook) or ``auto``."""
    out: Path = Path("chaos-out")
    kinds: tuple[str, ...] = KINDS
    threads: int = 3
    """Client threads per node."""
    keys: int = 30
    rate: float = 20.0
    """Operations per second per client thread, about."""
    skew_ms: float = 200.0
    bump_ms: float = 500.0
    sample_every: float = 10.0
    convergence_timeout: float = 120.0
    node_options: dict[str, Any] = field(default_factory=dict)
    """Extra or overriding ekv options for every node."""
    node_env: dict[str, str] = field(default_factory=dict)
    """Extra environment of the node processes (e.g. test-only faults)."""
    progress: bool = False
    """Print what happens to stderr."""
    processes: int = 1
    """Processes per node (group mode when above 1): see the module docstring."""
    clone: bool = False
    """Start the last node from a byte copy of the first node's data directory (closed cleanly
    after one start): both run under one node id until the cluster finds the duplicate and one
    of them takes a new id; its clients write to it from the start."""
    consistent: bool = False
    """Voters of one cluster (``cluster_size=nodes``) with consistent keys, and clients of
    linearizable operations besides the plain ones (:mod:`.consistent`; implies processes that
    run their clients inside, as in group mode)."""
    consistent_threads: int = 2
    """Consistent client threads per node process (consistent runs)."""
    consistent_rate: float = 10.0
    powercut: bool = False
    """Nodes run under the power-cut VFS (:mod:`ekv.testing._internal.powercut`) with
    ``durability="full"``: a kill loses what was not fsynced, as a power cut would."""


@dataclass
class RunResult:
    """The figures of one run (``result.json``) and the checker's verdict."""

    seed: int
    nodes: int
    duration_s: float
    net: str
    ops: dict[str, dict[str, int]]
    violations: dict[str, int]
    valid: bool
    converged: bool
    convergence_s: float | None
    availability: float | None
    available_ops: int
    nemesis: dict[str, int]
    samples: list[dict[str, Any]]
    out: str
    processes: int = 1
    consistent: dict[str, Any] | None = None
    """Consistent runs: :func:`.consistent.judge`'s figures (ops, violations, windows, usable)."""
    verdict: Verdict | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("verdict")
        return data

    def summary(self) -> str:
        ops = self.ops.get("all", {})
        writes = {f: self.ops.get(f, {}) for f in ("put", "delete")}
        acked = sum(w.get("ok", 0) for w in writes.values())
        lines = [
            f"seed {self.seed}: {self.nodes} nodes"
            + (f" x {self.processes} processes" if self.processes > 1 else "")
            + f", {self.duration_s:g} s, net={self.net}: "
            + ("VALID" if self.valid else "INVALID"),
            f"  operations: {ops.get('attempted', 0)} attempted, {ops.get('ok', 0)} ok "
            f"({acked} acknowledged writes), {ops.get('fail', 0)} failed, {ops.get('info', 0)} unknown",
            "  violations: " + (", ".join(f"{k}={v}" for k, v in self.violations.items()) or "none"),
            "  convergence after the final heal: "
            + (f"{self.convergence_s:.2f} s" if self.converged and self.convergence_s is not None else "NOT REACHED"),
            "  availability of live nodes: "
            + ("n/a" if self.availability is None else f"{100 * self.availability:.2f}% of {self.available_ops} ops"),
            "  nemesis: " + ", ".join(f"{k}={v}" for k, v in sorted(self.nemesis.items())),
            f"  output: {self.out}",
        ]
        if self.consistent is not None:
            lines[-1:-1] = _consistent_summary(self.consistent)
        return "\n".join(lines)


def _consistent_summary(figures: dict[str, Any]) -> list[str]:
    ops = figures["ops"].get("all", {})
    empty = figures["empty_windows"]
    return [
        f"  consistent operations: {ops.get('attempted', 0)} attempted, {ops.get('ok', 0)} ok, "
        f"{ops.get('fail', 0)} failed, {ops.get('info', 0)} unknown; linearizable: "
        + ("yes" if figures["valid"] else "NO " + ", ".join(f"{k}={v}" for k, v in figures["violations"].items())),
        f"  fault windows: {len(figures['windows'])}, {figures['required_windows']} required an ok consistent "
        "operation: "
        + (
            "all had some"
            if not empty
            else "UNUSABLE RUN (not a violation): none in "
            + ", ".join(f"{w['kind']} {w['from_s']}-{w['to_s']} s" for w in empty)
        ),
    ]


def _pick_net(kind: str, index_of: Callable[[str], int | None]) -> Network:
    if kind == "auto":
        kind = "netns" if namespaces_available() is None else "local"
    if kind == "netns":
        why = namespaces_available()
        if why is not None:
            raise RuntimeError(f"--net netns: {why}")
        return NamespaceNet()
    if kind == "local":
        return LocalNet(index_of)
    raise ValueError(f"unknown network {kind!r} (netns, local or auto)")


def _state(entries: Iterable[Sequence[Any]]) -> dict[str, list[Any]]:
    """A node's rows in the checker's format; values come as JSON text (the nodes' codec)."""
    return {
        key: [ts, origin, None if text is None else json.loads(text), expires]
        for key, ts, origin, text, expires in entries
    }


def _offline_state(data_dir: Path) -> dict[str, list[Any]]:
    """What a stopped node's data directory holds, read without starting the node."""
    from ekv._storage.store import ShardedStore

    store = ShardedStore.open_readonly(data_dir, codec="json")
    try:
        return _state(
            (e.key, e.timestamp_ns, e.origin, None if e.value is None else e.value.decode(), e.expires_at_ns)
            for e in store.entries()
        )
    finally:
        store.close()


class _Run:
    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.dir = (opts.out / f"seed-{opts.seed}").resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("*.jsonl"):
            stale.unlink()
        for i in range(opts.nodes):  # a previous run's data: every key must start absent
            shutil.rmtree(self.dir / f"n{i}", ignore_errors=True)
        self.records: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.down: dict[int, list[list[int]]] = defaultdict(list)  # node -> [[from, to], ...]
        self.nemesis_counts: dict[str, int] = defaultdict(int)
        self.cookie = secrets.token_hex(16)
        self.net = _pick_net(opts.net, self._index_of)
        self.nodes: list[NodeProcess | NodeGroup] = []
        self.workers: list[Any] = []
        self.base_skew: dict[int, float] = {}
        self.t0 = 0
        self._log_lock = threading.Lock()

    # -- helpers ---------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        if self.opts.progress:
            elapsed = (time.monotonic_ns() - self.t0) / NS if self.t0 else 0.0
            with self._log_lock:
                print(f"[{elapsed:7.2f}s] {message}", file=sys.stderr, flush=True)

    def live(self, index: int) -> bool:
        node = self.nodes[index]
        return node.running and not node.paused

    def _index_of(self, node_id: str) -> int | None:
        for index, node in enumerate(self.nodes):
            if node.node_id == node_id:
                return index
        return None

    def nemesis(self, action: str, detail: dict[str, Any]) -> None:
        self.records.append({"record": "nemesis", "time": time.monotonic_ns(), "action": action, "detail": detail})
        self.nemesis_counts[action] += 1
        self.log(f"nemesis {action} {detail}")

    # -- set-up ----------------------------------------------------------------------------------

    def start_nodes(self) -> None:
        opts = self.opts
        self.net.setup(opts.nodes)
        shim = skew.install(self.dir / "shim")
        options: dict[str, Any] = {
            "cookie": self.cookie,
            "heartbeat_interval": 0.5,
            "heartbeat_timeout": 3.0,
            "reconnect_max": 1.0,
            "anti_entropy_interval": 5.0,
            "tombstone_ttl": opts.duration + 3600,
            "log_retention": opts.duration + 600,
            "gc_interval": min(30.0, max(opts.duration / 4, 1.0)),
            "shards": 4,
            "log": "info",
            **opts.node_options,
        }
        if opts.consistent:
            options.update(cluster_size=opts.nodes, consistent_prefixes=list(consistent.PREFIXES))
        if opts.powercut:
            options["durability"] = "full"
        cut = powercut.node_prefix() if opts.powercut else []
        pythonpath = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
        for i in range(opts.nodes):
            skew_file = self.dir / f"skew-n{i}"
            skew.set_offset(skew_file, 0)
            advertise = self.net.advertise(i)
            kwargs: dict[str, Any] = {
                "instance": INSTANCE,
                "options": options if advertise is None else {**options, "advertise": advertise},
                "prefix": [*self.net.prefix(i), *cut],
                "env": {"PYTHONPATH": pythonpath, skew.ENV: str(skew_file), "EKV_TESTING_LOG": "INFO", **opts.node_env},
            }
            node: NodeProcess | NodeGroup
            if opts.processes > 1 or opts.consistent:
                node = NodeGroup(f"n{i}", self.dir / f"n{i}", opts.processes, **kwargs)
            else:
                node = NodeProcess(f"n{i}", self.dir / f"n{i}", **kwargs)
            node.listen = self.net.listen(i)
            node.peers = self.net.peers(i)
            node.stderr_path = self.dir / f"n{i}.log"
            self.nodes.append(node)
        if opts.clone and len(self.nodes) >= 2:
            first, copy = self.nodes[0], self.nodes[-1]
            first.start()
            first.stop()
            shutil.copytree(first.data_dir, copy.data_dir)
            self.nemesis("clone", {"node": copy.name, "of": first.name})
        for node in self.nodes:
            node.start()
        self.wait_mesh(60)

    def refresh_ids(self) -> None:
        """Learn the nodes' current node ids (a copy of a data directory takes a new one)."""
        for i, node in enumerate(self.nodes):
            if self.live(i):
                with contextlib.suppress(RuntimeError, TimeoutError, OSError):
                    node.node_id = node.call("info", timeout=10)["info"]["node_id"]

    def wait_mesh(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.refresh_ids()
            ids = {n.node_id for n in self.nodes}
            if all(
                sum(1 for k, up in n.members().items() if up and k in ids) >= len(self.nodes) - 1 for n in self.nodes
            ):
                return True
            time.sleep(0.1)
        return False

    def start_workers(self, until_ns: int) -> None:
        import subprocess

        opts = self.opts
        for i, node in enumerate(self.nodes):
            if isinstance(node, NodeGroup):
                clients: dict[str, Any] = {"threads": opts.threads, "keys": opts.keys, "seed": opts.seed}
                clients["rate"] = opts.rate
                if opts.consistent:
                    lock_ttl = opts.duration + 3600
                    clients["consistent"] = {"threads": opts.consistent_threads, "rate": opts.consistent_rate}
                    clients["consistent"]["lock_ttl"] = lock_ttl
                node.start_clients(**clients, until_ns=until_ns)
                continue
            cmd = [
                *self.net.prefix(i),
                sys.executable,
                "-m",
                "ekv.testing._internal.chaos.workload",
                "--address",
                str(node.address),
                "--node",
                node.name,
                "--out",
                str(self.dir / f"ops-n{i}.jsonl"),
                "--instance",
                INSTANCE,
                "--cookie",
                self.cookie,
                "--threads",
                str(self.opts.threads),
                "--keys",
                str(self.opts.keys),
                "--seed",
                str(self.opts.seed),
                "--rate",
                str(self.opts.rate),
                "--until-ns",
                str(until_ns),
            ]
            log = open(self.dir / f"workload-n{i}.log", "a")  # noqa: SIM115 - the child owns it
            self.workers.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log))
            log.close()

    # -- the nemesis -----------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        args = event.args
        if event.action == "partition":
            groups: list[list[int]] = args["groups"]
            blocked: dict[int, set[int]] = {}
            for group in groups:
                others = {n for g in groups if g is not group for n in g}
                for n in group:
                    blocked[n] = others
            self.nemesis("partition", {"shape": args["shape"], "groups": groups, "bridge": args["bridge"]})
            self.net.cut(blocked)
        elif event.action == "heal":
            self.nemesis("heal", {})
            self.net.cut({})
        elif event.action == "kill":
            self.kill(args["node"])
        elif event.action == "restart":
            self.restart(args["node"])
        elif event.action == "proc-kill":
            self.kill_process(args["node"], args["process"])
        elif event.action == "proc-restart":
            self.restart_processes(args["node"])
        elif event.action == "pause":
            node = self.nodes[args["node"]]
            if node.running and not node.paused:
                self.nemesis("pause", {"node": node.name})
                self.down[args["node"]].append([time.monotonic_ns(), 0])
                node.pause()
        elif event.action == "resume":
            node = self.nodes[args["node"]]
            if node.paused:
                node.resume()
                self.down[args["node"]][-1][1] = time.monotonic_ns()
                self.nemesis("resume", {"node": node.name})
                self.net.node_started(args["node"])
        elif event.action == "skew":
            offset_ms = float(args["offset_ms"])
            if event.at == 0.0:
                self.base_skew[args["node"]] = offset_ms
            skew.set_offset(self.dir / f"skew-n{args['node']}", int(offset_ms * 1_000_000))
            self.nemesis("skew", {"node": self.nodes[args["node"]].name, "offset_ms": offset_ms})
        elif event.action == "loss":
            if self.net.supports_loss:
                self.net.loss(args["node"], int(args["percent"]))
                self.nemesis("loss", {"node": self.nodes[args["node"]].name, "percent": args["percent"]})
        else:
            raise ValueError(f"unknown nemesis action {event.action!r}")

    def kill(self, index: int) -> None:
        node = self.nodes[index]
        if not node.running:
            return
        kill_time = time.monotonic_ns()
        self.down[index].append([kill_time, 0])
        node.kill()
        if self.opts.powercut:  # what a reboot does: the shared-memory WAL index is gone
            powercut.after_cut(node.data_dir)
        self.nemesis("kill", {"node": node.name})
        state = _offline_state(node.data_dir)
        self.records.append({"record": "restart", "node": node.name, "kill_time": kill_time, "state": state})

    def kill_process(self, index: int, which: int | str) -> None:
        """SIGKILL one process of a live group; its restart state is what a survivor reads."""
        group = self.nodes[index]
        if not isinstance(group, NodeGroup) or not group.running or group.paused:
            return
        killed = group.kill_process(which)
        if killed is None:
            return
        name, role, kill_time = killed
        self.nemesis("proc-kill", {"node": group.name, "process": name, "role": role})
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            state = _state(group.call("dump", timeout=30)["entries"])
            self.records.append(
                {"record": "restart", "node": group.name, "process": name, "kill_time": kill_time, "state": state}
            )

    def restart_processes(self, index: int) -> None:
        group = self.nodes[index]
        if isinstance(group, NodeGroup) and group.running and not group.paused:
            for name in group.start_missing():
                self.nemesis("proc-restart", {"node": group.name, "process": name})

    def restart(self, index: int) -> None:
        node = self.nodes[index]
        if node.running:
            return
        node.start()
        self.down[index][-1][1] = time.monotonic_ns()
        self.nemesis("restart", {"node": node.name})
        self.net.node_started(index)

    def sample(self) -> None:
        row: dict[str, Any] = {"t": round((time.monotonic_ns() - self.t0) / NS, 1), "nodes": {}}
        for i, node in enumerate(self.nodes):
            if not self.live(i):
                continue
            try:
                info = node.call("info", timeout=10)["info"]
            except (RuntimeError, TimeoutError, OSError):
                continue
            node.node_id = info["node_id"]
            row["nodes"][node.name] = {
                "keys": info["keys"],
                "tombstones": info["tombstones"],
                "log_entries": sum(s["log"]["entries"] for s in info["shards"]),
                "bytes": sum(s["size_bytes"] for s in info["shards"]),
            }
        self.samples.append(row)

    def final_heal(self) -> int:
        """Undo every fault; return the time the cluster was whole again."""
        self.net.cut({})
        for i in range(len(self.nodes)):
            self.net.loss(i, 0)
            skew.set_offset(self.dir / f"skew-n{i}", int(self.base_skew.get(i, 0.0) * 1_000_000))
            if self.nodes[i].paused:
                self.apply(Event(0, "resume", {"node": i}))
            if not self.nodes[i].running:
                self.restart(i)
            self.restart_processes(i)
        self.nemesis("final-heal", {})
        return time.monotonic_ns()

    def measure_convergence(self, healed_at: int) -> tuple[bool, float | None, dict[str, dict[str, list[Any]]]]:
        deadline = time.monotonic() + self.opts.convergence_timeout
        states: dict[str, dict[str, list[Any]]] = {}
        while True:
            states = {node.name: _state(node.call("dump", timeout=30)["entries"]) for node in self.nodes}
            if self.opts.consistent:  # see .consistent: those keys are judged by linearizability
                states = {name: consistent.strip(state) for name, state in states.items()}
            first = next(iter(states.values()))
            if all(s == first for s in states.values()):
                return True, (time.monotonic_ns() - healed_at) / NS, states
            if time.monotonic() > deadline:
                return False, None, states
            time.sleep(0.1)

    # -- the run ---------------------------------------------------------------------------------

    def execute(self) -> RunResult:
        opts = self.opts
        events = schedule(
            opts.seed,
            opts.nodes,
            opts.duration,
            kinds=opts.kinds,
            skew_ms=opts.skew_ms,
            bump_ms=opts.bump_ms,
            processes=opts.processes,
        )
        (self.dir / "schedule.json").write_text(
            json.dumps([{"at": e.at, "action": e.action, **e.args} for e in events], indent=1)
        )
        try:
            self.t0 = time.monotonic_ns()
            self.log(f"starting {opts.nodes} nodes on {self.net.kind} in {self.dir}")
            self.start_nodes()
            for initial in [e for e in events if e.at == 0.0]:
                self.apply(initial)
            start = time.monotonic_ns()
            self.t0 = start
            until = start + int(opts.duration * NS)
            self.start_workers(until)
            timeline = [e for e in events if e.at > 0.0]
            next_sample = 0.0
            for event in [*timeline, None]:
                at = opts.duration if event is None else event.at
                while next_sample <= at:
                    self._sleep_until(start + int(next_sample * NS))
                    self.sample()
                    next_sample += opts.sample_every
                self._sleep_until(start + int(at * NS))
                if event is not None:
                    self.apply(event)
            for worker in self.workers:
                worker.wait(timeout=opts.duration + 60)
            healed_at = self.final_heal()
            converged, took, states = self.measure_convergence(healed_at)
            self.log(f"converged in {took:.2f} s" if converged and took is not None else "did NOT converge")
            self.sample()
            for name, state in states.items():
                self.records.append({"record": "final", "node": name, "state": state})
            self.records.append(
                {
                    "record": "meta",
                    "seed": opts.seed,
                    "nodes": opts.nodes,
                    "processes": opts.processes,
                    "duration_s": opts.duration,
                    "net": self.net.kind,
                    "converged_after_s": took,
                }
            )
        finally:
            self.teardown()
        return self.judge(converged, took)

    def _sleep_until(self, deadline_ns: int) -> None:
        delay = (deadline_ns - time.monotonic_ns()) / NS
        if delay > 0:
            time.sleep(delay)  # the schedule's pacing, not a wait for a condition

    def teardown(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(30)
        for node in self.nodes:  # SIGKILL: the verdict is in, and an interrupted run must end fast
            with contextlib.suppress(Exception):
                node.kill()
        self.net.teardown()

    def history(self) -> list[dict[str, Any]]:
        ops: list[dict[str, Any]] = []
        for path in sorted(self.dir.glob("ops-n*.jsonl")):
            with open(path) as f:
                for line in f:
                    with contextlib.suppress(json.JSONDecodeError):  # a line cut by a SIGKILL mid-write
                        ops.append(json.loads(line))
        ops.sort(key=lambda r: r["time"])  # stable: a process's records keep their order
        return ops + self.records

    def availability(self, ops: list[dict[str, Any]]) -> tuple[float | None, int]:
        names = {node.name: i for i, node in enumerate(self.nodes)}
        pending: dict[Any, dict[str, Any]] = {}
        ok = counted = 0
        for record in ops:
            if record["type"] == "invoke":
                pending[record["process"]] = record
                continue
            invoke = pending.pop(record["process"], None)
            if invoke is None:
                continue
            start, end = invoke["time"], record["time"]
            windows = self.down.get(names.get(record["node"], -1), [])
            if any(a <= end and (b == 0 or b >= start) for a, b in windows):
                continue
            counted += 1
            ok += record["type"] == "ok"
        return (ok / counted if counted else None), counted

    def judge(self, converged: bool, took: float | None) -> RunResult:
        records = self.history()
        with open(self.dir / "history.jsonl", "w") as f:
            for record in records:
                f.write(json.dumps(record, separators=(",", ":")) + "\n")
        figures = None
        if self.opts.consistent:
            names = [node.name for node in self.nodes]
            figures = consistent.judge(records, names, self.t0, self.t0 + int(self.opts.duration * NS))
            (self.dir / "linear.json").write_text(json.dumps(figures, indent=1, default=str))
            records = consistent.plain(records)
        verdict = check(History.from_records(records))
        (self.dir / "verdict.json").write_text(verdict.to_json(max_per_check=50))
        with open(self.dir / "timelines.txt", "w") as f:
            f.write(verdict.summary() + "\n")
            shown: dict[str, int] = defaultdict(int)
            for violation in verdict.violations:
                shown[violation.check] += 1
                if shown[violation.check] <= 5:
                    f.write("\n" + verdict.timeline(violation) + "\n")
        availability, counted = self.availability([r for r in records if r.get("record", "op") == "op"])
        result = RunResult(
            seed=self.opts.seed,
            nodes=self.opts.nodes,
            duration_s=self.opts.duration,
            net=self.net.kind,
            ops=verdict.counts,
            violations=dict(verdict.violations_per_check),
            valid=verdict.valid and converged and (figures is None or figures["valid"]),
            converged=converged,
            convergence_s=None if took is None else round(took, 3),
            availability=None if availability is None else round(availability, 5),
            available_ops=counted,
            nemesis=dict(self.nemesis_counts),
            samples=self.samples,
            out=str(self.dir),
            processes=self.opts.processes,
            consistent=None if figures is None else {k: v for k, v in figures.items() if k != "details"},
            verdict=verdict,
        )
        (self.dir / "result.json").write_text(json.dumps(result.to_dict(), indent=1))
        return result


def run(opts: RunOptions) -> RunResult:
    """Run one chaos run (see the module docstring) and return its figures and verdict."""
    return _Run(opts).execute()
