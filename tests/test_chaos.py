"""The chaos harness (:mod:`ekv.testing._internal.chaos`): its pure schedule, and real runs that CI does on
every change: a loopback run, and a network-namespace run with packet loss when root is
available. A run is judged by the offline checker (:mod:`ekv.testing._internal.checker`); a failing run
leaves its history, verdict and timelines under the test's temporary directory, and the seed
replays the same fault schedule: ``python -m ekv.testing._internal.chaos --seed N ...``.

The published 10-minute, 5-node figures come from the same command (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ekv.testing import wait_until
from ekv.testing._internal.chaos import KINDS, RunOptions, RunResult, run, schedule
from ekv.testing._internal.chaos.net import namespaces_available

# One minute each in the default run: the schedules of seeds 11 and 12 hold every fault kind
# several times within it (test_a_one_minute_run_draws_every_fault); the 2-minute runs are the
# soak tier's (--soak), longer ones the harness's command line (docs/reliability.md).
RUN_SECONDS = [60.0, pytest.param(120.0, marks=pytest.mark.soak)]


# -- the schedule (pure) -------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_schedule() -> None:
    assert schedule(7, 5, 120) == schedule(7, 5, 120)
    assert [e.args for e in schedule(7, 5, 120)] == [e.args for e in schedule(7, 5, 120)]
    assert schedule(7, 5, 120) != schedule(8, 5, 120)


@pytest.mark.parametrize("seed", range(20))
def test_a_schedule_uses_every_fault_and_stays_within_the_run(seed: int) -> None:
    events = schedule(seed, 5, 600)
    assert all(0 <= e.at < 600 for e in events)
    assert events == sorted(events)
    actions = {e.action for e in events}
    assert {"partition", "heal", "kill", "restart", "pause", "resume", "skew", "loss"} <= actions
    shapes = {e.args["shape"] for e in events if e.action == "partition"}
    assert shapes == {"halves", "isolate", "bridge", "three-way", "flapping"}


@pytest.mark.parametrize(("seed", "nodes"), [(11, 3), (12, 5)])
def test_a_one_minute_run_draws_every_fault(seed: int, nodes: int) -> None:
    """The real runs below last one minute in the default run: their seeds still schedule every
    fault kind within it, and partitions of several shapes."""
    events = schedule(seed, nodes, 60.0)
    assert {"partition", "heal", "kill", "restart", "pause", "resume", "skew", "loss"} <= {e.action for e in events}
    assert len({e.args["shape"] for e in events if e.action == "partition"}) >= 4


@pytest.mark.parametrize("seed", range(20))
def test_one_process_fault_at_a_time_and_each_is_undone_or_left_to_the_final_heal(seed: int) -> None:
    down: int | None = None
    for event in schedule(seed, 5, 300):
        if event.action in ("kill", "pause"):
            assert down is None, f"{event} while node {down} is down"
            down = event.args["node"]
        elif event.action in ("restart", "resume"):
            assert event.args["node"] == down
            down = None


def test_skew_stays_within_its_bounds() -> None:
    for seed in range(10):
        for event in schedule(seed, 5, 300, skew_ms=200, bump_ms=500):
            if event.action == "skew":
                assert abs(event.args["offset_ms"]) <= 700


def test_a_fault_kind_can_be_left_out() -> None:
    events = schedule(1, 5, 300, kinds=("partition",))
    assert {e.action for e in events} <= {"partition", "heal"}
    assert set(KINDS) == {"partition", "kill", "pause", "skew", "loss"}


def test_group_mode_adds_process_kills_and_leaves_the_other_faults_as_they_were() -> None:
    """With ``processes`` > 1 the schedule gains process kills (of the node process or of a
    process by index, each undone by a restart unless the final heal does it), drawn from a
    generator of their own: a seed's other faults do not move."""
    for seed in range(10):
        grouped = schedule(seed, 3, 120, processes=3)
        assert [e for e in grouped if not e.action.startswith("proc-")] == schedule(seed, 3, 120)
        kills = [e for e in grouped if e.action == "proc-kill"]
        assert kills and all(e.args["process"] in ("node", 0, 1, 2) for e in kills)
        down: int | None = None
        for event in grouped:
            if event.action == "proc-kill":
                assert down is None
                down = event.args["node"]
            elif event.action == "proc-restart":
                assert event.args["node"] == down
                down = None
    assert not any(e.action.startswith("proc-") for e in schedule(1, 3, 120, processes=1))
    assert not any(e.action.startswith("proc-") for e in schedule(1, 3, 120, processes=3, kinds=("partition",)))


# -- the loopback fault proxy ------------------------------------------------------------------


def test_the_fault_proxy_holds_cut_links_and_refuses_new_connections() -> None:
    """Two fake members behind the proxy: bytes flow, a cut silences the established connection
    and refuses a new one, the heal releases the held bytes."""
    import socket
    import struct
    import threading
    import time

    from ekv.testing.proxy import FaultProxy

    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen()
    received: list[bytes] = []

    accepted: list[socket.socket] = []
    readers: list[threading.Thread] = []

    def read(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(100):
                received.append(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = upstream.accept()
            except OSError:
                return
            accepted.append(conn)
            reader = threading.Thread(target=read, args=(conn,), daemon=True)
            readers.append(reader)
            reader.start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    proxy = FaultProxy({"node-a": 0, "node-b": 1}.get)
    try:
        port_b = proxy.start([upstream.getsockname()[1]] * 2)[1]  # node 1 (node-b) listens behind it
        body = json.dumps({"node_id": "node-a"}).encode()
        hello = struct.pack(">IB", len(body) + 1, 1) + body
        a = socket.create_connection(("127.0.0.1", port_b))
        a.sendall(hello + b"one")

        def wait_for(data: bytes) -> bool:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if data in b"".join(received):
                    return True
                time.sleep(0.01)
            return False

        assert wait_for(hello + b"one")
        proxy.cut({0: {1}})
        a.sendall(b"held")
        late = socket.create_connection(("127.0.0.1", port_b))
        late.sendall(hello)
        late.settimeout(30)
        assert late.recv(10) == b""  # refused: closed at once
        assert b"held" not in b"".join(received)  # (it stays held until the heal below)
        proxy.cut({})
        assert wait_for(b"held")
        a.close()
        late.close()
    finally:
        proxy.close()
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (close alone does not)
        upstream.close()
        server.join(30)
        for reader in readers:  # the proxy closed its side: each reader sees EOF and closes
            reader.join(30)
        for conn in accepted:
            conn.close()


def test_the_fault_proxy_relays_datagrams_from_the_senders_proxy_port_and_drops_them_across_a_cut() -> None:
    """SWIM speaks UDP on a node's listen port and answers members at their advertised (proxy)
    address: the proxy relays a datagram from node a's real port to node b's real port, sent
    from a's proxy port; across a cut, and from a port that is no node's, it drops them."""
    import socket

    from ekv.testing.proxy import FaultProxy

    a, b, stranger = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3))
    proxy = FaultProxy(lambda node_id: None)
    try:
        for sock in (a, b, stranger):
            sock.bind(("127.0.0.1", 0))
        b.settimeout(30)
        proxy_a, proxy_b = proxy.start([a.getsockname()[1], b.getsockname()[1]])

        def relayed(kind: str, count: int) -> None:
            wait_until(lambda: proxy.relayed[kind] >= count, 30, message=str(proxy.relayed))

        a.sendto(b"ping", ("127.0.0.1", proxy_b))
        assert b.recvfrom(100) == (b"ping", ("127.0.0.1", proxy_a))  # from a's advertised address
        proxy.cut({0: {1}})
        a.sendto(b"lost", ("127.0.0.1", proxy_b))
        relayed("cut", 1)
        proxy.cut({})
        stranger.sendto(b"stranger", ("127.0.0.1", proxy_b))
        relayed("stranger", 1)
        a.sendto(b"healed", ("127.0.0.1", proxy_b))
        assert b.recvfrom(100)[0] == b"healed"  # neither the cut one nor the stranger's came through
    finally:
        proxy.close()
        for sock in (a, b, stranger):
            sock.close()


def test_free_ports_lie_below_the_ephemeral_range_so_outgoing_connections_cannot_take_them() -> None:
    """A chaos run reserves its nodes' ports, then starts the nodes one by one while the first
    ones already dial each other: a port of the ephemeral range could be handed to one of those
    connections meanwhile (24 nodes: "address already in use" in two runs out of three)."""
    import socket
    from pathlib import Path

    from ekv.testing.proxy import free_ports

    range_file = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if not range_file.exists():
        pytest.skip("no Linux ephemeral port range to stay below")
    low = int(range_file.read_text().split()[0])
    ports = free_ports(24)
    assert len(set(ports)) == 24 and all(1024 < port < low for port in ports), (low, ports)
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):  # free for the listener and for SWIM
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", ports[0]))


# -- real runs -----------------------------------------------------------------------------------


def _check(result_dir: Path, valid: bool, converged: bool) -> None:
    summary = json.loads((result_dir / "result.json").read_text())
    timelines = (result_dir / "timelines.txt").read_text()
    assert converged, f"no convergence after the final heal; see {result_dir}"
    assert valid, f"violations {summary['violations']}:\n{timelines[:6000]}"


@pytest.mark.long
@pytest.mark.parametrize("seconds", RUN_SECONDS)
def test_loopback_chaos_run(tmp_path: Path, seconds: float) -> None:
    """Three nodes on 127.0.0.1 with partitions (the loopback fault proxy), kills, pauses and
    skew."""
    result = run(RunOptions(nodes=3, duration=seconds, seed=11, net="local", out=tmp_path, rate=15))
    print(result.summary())
    _check(Path(result.out), result.valid, result.converged)
    assert result.ops["put"]["ok"] > 100 and result.ops["get"]["ok"] > 100
    assert result.nemesis.get("kill", 0) + result.nemesis.get("pause", 0) >= 2
    assert result.nemesis.get("partition", 0) >= 2
    assert result.availability is not None and result.availability >= 0.95


@pytest.mark.long
@pytest.mark.parametrize("seconds", RUN_SECONDS)
@pytest.mark.skipif(namespaces_available() is not None, reason=str(namespaces_available()))
def test_namespace_chaos_run(tmp_path: Path, seconds: float) -> None:
    """Five nodes in network namespaces: partitions by routes, loss by iptables, kills, pauses,
    skew. The kernel drops the packets; ekv is not told. The fifth node starts from a byte copy
    of the first one's data directory (a duplicate node id, resolved while the faults run)."""
    result = run(RunOptions(nodes=5, duration=seconds, seed=12, net="netns", out=tmp_path, rate=10, clone=True))
    print(result.summary())
    _check(Path(result.out), result.valid, result.converged)
    assert result.net == "netns"
    assert result.nemesis.get("clone") == 1
    logs = "".join(p.read_text(errors="replace") for p in Path(result.out).glob("n*.log"))
    assert "DUPLICATE NODE ID" in logs and "its data is kept" in logs
    if shutil.which("iptables"):  # .ci/run installs it where it can
        assert result.nemesis.get("loss", 0) >= 2
    assert result.ops["put"]["ok"] > 100
    assert result.availability is not None and result.availability >= 0.95
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(line.startswith(f"ek{os.getpid() % 100000}") for line in leftovers.splitlines())


@pytest.mark.long
def test_group_mode_chaos_run(tmp_path: Path) -> None:
    """Three nodes of three processes each on one data directory per node (SPEC section 12), on
    loopback: clients inside every process, the nemesis SIGKILLs single processes (the node
    process among them: an attached one takes over and binds the node's address) besides the
    usual faults. Nothing acknowledged is lost, neither at the kills (the restart states) nor in
    the end, and the nodes converge."""
    result = run(RunOptions(nodes=3, processes=3, duration=40.0, seed=6, net="local", out=tmp_path, threads=2, rate=10))
    print(result.summary())
    out = Path(result.out)
    _check(out, result.valid, result.converged)
    assert result.processes == 3
    records = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    kills = [r["detail"] for r in records if r.get("record") == "nemesis" and r["action"] == "proc-kill"]
    assert len(kills) >= 2 and any(k["role"] == "node" for k in kills), kills
    assert sum(1 for r in records if r.get("record") == "restart" and "process" in r) == len(kills)
    logs = "".join(p.read_text(errors="replace") for p in out.glob("n*p*.log"))
    assert "takes over" in logs
    writers = {r["proc"] for r in records if r.get("type") == "ok" and r.get("f") == "put"}
    assert writers == {f"n{i}p{j}" for i in range(3) for j in range(3)}  # attached processes write too
    assert result.ops["put"]["ok"] > 100 and result.ops["get"]["ok"] > 100
    assert result.availability is not None and result.availability >= 0.95


def _check_consistent(result: RunResult, min_ok: int) -> dict[str, Any]:
    """A consistent run: valid (the plain checks and linearizability), and usable (every fault
    window with a reachable majority completed consistent operations)."""
    figures = result.consistent
    assert figures is not None
    out = Path(result.out)
    details = json.loads((out / "linear.json").read_text())["details"]
    assert figures["valid"], f"not linearizable: {figures['violations']}\n{json.dumps(details[:3], indent=1)[:6000]}"
    _check(out, result.valid, result.converged)
    assert figures["usable"], f"unusable run: {figures['empty_windows']}"
    assert figures["ops"]["all"]["ok"] >= min_ok, figures["ops"]
    return figures


@pytest.mark.long
def test_consistent_chaos_run(tmp_path: Path) -> None:
    """Three voters with consistent keys on loopback, 35 s of partitions, kills (restarted on
    the same directory) and pauses: consistent reads, if_absent / if_version / consistent puts
    and deletes on four keys, and a lock, checked for linearizability besides the plain checks.
    Seed 12's schedule has a partition, a kill and a pause of at least 3 s with a majority up
    (windows that must complete consistent operations: a run without them proves nothing; on a
    loaded machine a slow restart delays the later faults, so at least two such windows)."""
    opts = RunOptions(nodes=3, duration=35.0, seed=12, net="local", out=tmp_path, rate=10, consistent=True)
    result = run(RunOptions(**{**opts.__dict__, "kinds": ("partition", "kill", "pause")}))
    print(result.summary())
    figures = _check_consistent(result, min_ok=150)
    assert figures["required_windows"] >= 2, figures["windows"]  # when the schedule runs on time: 4
    assert all(result.nemesis.get(kind, 0) >= 1 for kind in ("partition", "kill", "pause")), result.nemesis
    for f in ("cread", "cwrite", "acquire", "release"):
        assert figures["ops"][f]["ok"] > 0, figures["ops"]
    assert figures["ops"]["cwrite"]["fail"] > 0  # conflicts: the keys were contended


@pytest.mark.long
@pytest.mark.soak
@pytest.mark.parametrize(
    ("nodes", "seconds", "seed", "kinds", "powercut"),
    [
        (5, 120.0, 1, ("partition", "kill", "pause", "skew"), False),
        (3, 90.0, 12, ("partition", "kill", "pause", "skew"), False),
        (3, 60.0, 12, ("partition", "kill", "skew"), True),
    ],
    ids=["5-voters", "3-voters-skew", "3-voters-powercut"],
)
def test_longer_consistent_chaos_runs(
    tmp_path: Path, nodes: int, seconds: float, seed: int, kinds: tuple[str, ...], powercut: bool
) -> None:
    """Longer consistent runs: five voters, clock skew, and power cuts (the nodes under the
    power-cut VFS with durability="full": a kill loses what was not fsynced)."""
    opts = RunOptions(nodes=nodes, duration=seconds, seed=seed, net="local", out=tmp_path, rate=8, kinds=kinds)
    result = run(RunOptions(**{**opts.__dict__, "consistent": True, "powercut": powercut}))
    print(result.summary())
    figures = _check_consistent(result, min_ok=300)
    assert figures["required_windows"] >= 2
    if powercut:
        assert result.nemesis.get("kill", 0) >= 2


def test_the_command_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ekv.testing._internal.chaos", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "--seed" in done.stdout and "--minutes" in done.stdout
    assert "--processes" in done.stdout and "--consistent" in done.stdout and "--powercut" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "ekv.testing._internal.chaos", "--faults", "meteor"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "meteor" in bad.stderr
    short = subprocess.run(
        [
            sys.executable,
            "-m",
            "ekv.testing._internal.chaos",
            "--nodes",
            "2",
            "--seconds",
            "8",
            "--net",
            "local",
            "--seed",
            "5",
            "--quiet",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert short.returncode == 0, short.stdout + short.stderr
    assert "VALID" in short.stdout
    runs = json.loads((tmp_path / "summary.json").read_text())
    assert runs[0]["seed"] == 5 and runs[0]["valid"]
    for name in ("history.jsonl", "verdict.json", "timelines.txt", "result.json", "schedule.json"):
        assert (tmp_path / "seed-5" / name).exists()
    report = subprocess.run(
        [sys.executable, "-m", "ekv.testing._internal.chaos.report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert lines[0].startswith("| seed | ops |") and lines[2].startswith("| 5 | ")
    assert "| seed | partitions |" in report.stdout
