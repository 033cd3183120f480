"""``ekv demo``: a local three-node cluster that shows replication, a partition and its healing.

It starts three ``ekv serve`` processes on free ports of 127.0.0.1 (temporary data directories,
a random cookie passed through the environment), then talks to them as a client would. The
members reach each other through a fault proxy in this process
(:class:`ekv.testing.proxy.FaultProxy`: every node advertises its proxy port), which is how the
partition is made: a real network fault, ekv itself has no command for it. The demo's client
calls go to the nodes' own ports, which the proxy never cuts.

1. a write on n1 arrives on n2 and n3 (with the time it took);
2. n3 is cut off from the others (the proxy holds their traffic, the nodes notice after
   ``heartbeat_timeout``); both sides keep accepting writes, and both write the same key;
3. the partition heals; every node converges, the write with the higher version wins everywhere;
4. everything is stopped and removed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ekv._cluster.client import Client
from ekv.testing.proxy import FaultProxy, free_ports

__all__ = ["run_demo"]

_FAST = {"heartbeat_interval": 0.2, "heartbeat_timeout": 2.0, "anti_entropy_interval": 1.0, "reconnect_max": 0.5}


class _Node:
    def __init__(self, name: str, root: Path, cookie: str, port: int, advertise: str, peers: list[str]) -> None:
        self.name = name
        self.data_dir = root / name
        cmd = [
            sys.executable,
            "-m",
            "ekv",
            "serve",
            "--name",
            "demo",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--advertise",
            advertise,
            "--shards",
            "4",
            "--log",
            "quiet",
        ]
        for peer in peers:
            cmd += ["--peer", peer]
        for key, value in _FAST.items():
            cmd += ["--option", f"{key}={json.dumps(value)}"]
        env = dict(os.environ, EKV_COOKIE=cookie)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"{name} did not start: {line}{err}")
        self.address = line.rsplit("listening on ", 1)[1].strip()  # the node's own port: not cut
        self.advertise = advertise
        self.node_id = line.split("node ", 1)[1].split(",", 1)[0]
        self.client = Client(self.address, cookie=cookie)
        self.client.connect()

    def call(self, op: str, **args: Any) -> Any:
        return self.client.call(op, **args)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError("the demo cluster did not reach the expected state in time")
        time.sleep(0.002)
    return time.monotonic() - start


def _connected(node: _Node, others: list[_Node]) -> bool:
    members = node.call("info")["members"]
    return all((members.get(o.node_id) or {}).get("connected") for o in others)


def _show_mesh(nodes: list[_Node], say: Callable[[str], None]) -> None:
    """The demo's start: who is who, and how long the three took to find each other."""
    for node in nodes:
        say(f"   {node.name}: node {node.node_id} at {node.address} (data in {node.data_dir})")
    took = _wait(lambda: all(_connected(n, [o for o in nodes if o is not n]) for n in nodes))
    say(f"   full mesh in {took * 1000:.0f} ms (n3 only knew n1; it learned n2 from n1)")


def _show_replication(writer: _Node, others: list[_Node], say: Callable[[str], None]) -> None:
    """Step 1: a put on ``writer`` and how long each of the others took to have it."""
    version = writer.call("put", key="demo/greeting", value={"text": "hello from n1"})["version"]
    say(f"   {writer.name} put demo/greeting = {{'text': 'hello from n1'}}  version {version}")
    for node in others:

        def arrived(node: _Node = node) -> bool:
            return node.call("get", key="demo/greeting") is not None

        took = _wait(arrived)
        say(f"   {node.name} has it after {took * 1000:.1f} ms: {node.call('get', key='demo/greeting')['value']}")


def run_demo(*, interactive: bool, keep: bool = False, out: Any = None) -> int:
    out = out or sys.stdout
    root = Path(tempfile.mkdtemp(prefix="ekv-demo-"))
    cookie = secrets.token_urlsafe(24)
    nodes: list[_Node] = []
    proxy = FaultProxy(lambda node_id: next((i for i, n in enumerate(nodes) if n.node_id == node_id), None))

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    def step(title: str) -> None:
        if interactive:
            input("\n[press Enter to continue] ")
        say(f"\n== {title}")

    try:
        say("ekv demo: three nodes on 127.0.0.1, each an 'ekv serve' process with its own data directory")
        ports = free_ports(3)
        fronts = [f"127.0.0.1:{port}" for port in proxy.start(ports)]
        n1 = _Node("n1", root, cookie, ports[0], fronts[0], [])
        nodes.append(n1)
        n2 = _Node("n2", root, cookie, ports[1], fronts[1], [n1.advertise])
        nodes.append(n2)
        n3 = _Node("n3", root, cookie, ports[2], fronts[2], [n1.advertise])
        nodes.append(n3)
        _show_mesh(nodes, say)

        step("1. replication: write on n1, watch it arrive on n2 and n3")
        _show_replication(n1, [n2, n3], say)

        step("2. partition: n3 is cut off from n1 and n2; both sides keep writing")
        proxy.cut({2: {0, 1}})  # the network between n3 and the others drops everything
        cut = [(n3, n1), (n3, n2), (n1, n3), (n2, n3)]
        took = _wait(lambda: not any(_connected(a, [b]) for a, b in cut))
        say(f"   n3 is isolated: its links to n1 and n2 went silent; the nodes noticed after {took:.1f} s")
        v_left = n1.call("put", key="demo/color", value="blue")["version"]
        say(f"   n1 put demo/color = 'blue'   version {v_left}")
        n1.call("delete", key="demo/greeting")
        say("   n1 deleted demo/greeting")
        time.sleep(0.01)
        v_right = n3.call("put", key="demo/color", value="green")["version"]
        say(f"   n3 put demo/color = 'green'  version {v_right}")
        n3.call("put", key="demo/only-n3", value=3)
        say("   n3 put demo/only-n3 = 3")
        _wait(lambda: (n2.call("get", key="demo/color") or {}).get("value") == "blue")
        for node in nodes:
            color = (node.call("get", key="demo/color") or {}).get("value")
            greeting = node.call("get", key="demo/greeting")
            say(f"   {node.name} sees color={color!r}, greeting={'deleted' if greeting is None else greeting['value']}")

        step("3. heal: the nodes reconnect, sync what they missed, and converge")
        proxy.cut({})
        winner = max((v_left, "blue"), (v_right, "green"))
        took = _wait(
            lambda: all(
                (n.call("get", key="demo/color") or {}).get("value") == winner[1]
                and n.call("get", key="demo/greeting") is None
                and n.call("get", key="demo/only-n3") is not None
                for n in nodes
            )
        )
        say(f"   converged {took * 1000:.0f} ms after the heal:")
        for node in nodes:
            items = node.call("scan", prefix="demo/")["items"]
            say(f"   {node.name}: {json.dumps(items, sort_keys=True)}")
        say(f"   demo/color: both sides wrote it; the higher version {winner[0]} ({winner[1]!r}) wins on every node")
        say("   demo/greeting: the delete made during the partition reached n3; demo/only-n3 reached n1 and n2")

        step("4. done: stopping the nodes")
    finally:
        for node in nodes:
            node.stop()
        proxy.close()
        if keep:
            say(f"   data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    say("   all stopped" + ("" if keep else " and removed") + ". Read README.md to use ekv in your code.")
    return 0
