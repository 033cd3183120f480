"""The networks a chaos run can put its nodes on, and how each one cuts and degrades links.

``NamespaceNet`` (needs root and iproute2): every node, and the clients pinned to it, run in a
network namespace of their own, with one veth into a bridge that lives in a separate hub
namespace, so nothing is added to the host's own network. Node *i* has ``10.77.0.(i+1)``.
Partitions are ``blackhole`` routes inside the namespaces (the kernel drops the packets; an
established connection goes silent, a new one fails), packet loss is an ``iptables`` rule
(``-m statistic --mode random``) on a node's veth, both directions (this kernel has no
``tc netem``; without the iptables command, loss windows are skipped). This is a real network
between the processes: ekv's code is not told about the faults.

``LocalNet`` (anyone): every node on 127.0.0.1, every member-to-member connection through a
fault proxy in the harness (:mod:`ekv.testing.proxy`) that holds the bytes of cut links and refuses new
connections across a cut, and relays SWIM's datagrams (dropped across a cut). Packet loss is
not available.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Protocol

from ekv.testing.proxy import FaultProxy, free_ports

__all__ = ["LocalNet", "NamespaceNet", "Network", "namespaces_available"]

PORT = 7000


class Network(Protocol):
    kind: str
    supports_loss: bool

    def setup(self, nodes: int) -> None: ...

    def listen(self, node: int) -> str:
        """The address node ``node`` listens on (``:0``: any free port, kept across restarts)."""
        ...

    def prefix(self, node: int) -> list[str]:
        """What to put before a command to run it where node ``node`` lives."""
        ...

    def advertise(self, node: int) -> str | None:
        """The address node ``node`` tells the others to dial (None: its listen address)."""
        ...

    def peers(self, node: int) -> list[str]:
        """The addresses node ``node`` is given to join the cluster."""
        ...

    def cut(self, blocked: dict[int, set[int]]) -> None:
        """Make node ``i`` unable to reach every node in ``blocked[i]`` (and nothing else)."""
        ...

    def node_started(self, node: int) -> None:
        """Node ``node`` (re)started or resumed: re-apply whatever must live in the process."""
        ...

    def loss(self, node: int, percent: int) -> None: ...

    def teardown(self) -> None: ...


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def namespaces_available() -> str | None:
    """None if :class:`NamespaceNet` can run here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    probe = f"ekvprobe{os.getpid() % 100000}"
    try:
        _run("ip", "netns", "add", probe)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"cannot create a network namespace: {exc}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


class NamespaceNet:
    """Nodes in network namespaces on a bridge (see the module docstring)."""

    kind = "netns"

    def __init__(self) -> None:
        self.pfx = f"ek{os.getpid() % 100000}"
        self.nodes = 0
        self.supports_loss = shutil.which("iptables") is not None
        self._routes: dict[int, set[int]] = {}
        self._lossy: set[int] = set()

    def ns(self, node: int) -> str:
        return f"{self.pfx}n{node}"

    def address(self, node: int) -> str:
        return f"10.77.0.{node + 1}"

    def setup(self, nodes: int) -> None:
        self.nodes = nodes
        hub = f"{self.pfx}h"
        try:
            _run("ip", "netns", "add", hub)
            _run("ip", "-n", hub, "link", "set", "lo", "up")
            _run("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", hub, "link", "set", "br0", "up")
            for node in range(nodes):
                ns, veth, port = self.ns(node), f"{self.pfx}v{node}", f"{self.pfx}b{node}"
                _run("ip", "netns", "add", ns)
                _run("ip", "link", "add", veth, "type", "veth", "peer", "name", port)
                _run("ip", "link", "set", veth, "netns", ns)
                _run("ip", "link", "set", port, "netns", hub)
                _run("ip", "-n", hub, "link", "set", port, "master", "br0")
                _run("ip", "-n", hub, "link", "set", port, "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.address(node)}/24", "dev", veth)
                _run("ip", "-n", ns, "link", "set", veth, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                self._routes[node] = set()
        except BaseException:
            self.teardown()
            raise

    def listen(self, node: int) -> str:
        return f"{self.address(node)}:{PORT}"

    def advertise(self, node: int) -> str | None:
        return None

    def peers(self, node: int) -> list[str]:
        return [self.listen(other) for other in range(self.nodes) if other != node]

    def prefix(self, node: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(node)]

    def cut(self, blocked: dict[int, set[int]]) -> None:
        for node in range(self.nodes):
            want = blocked.get(node, set())
            have = self._routes[node]
            for other in sorted(have - want):
                _run("ip", "-n", self.ns(node), "route", "del", "blackhole", f"{self.address(other)}/32")
            for other in sorted(want - have):
                _run("ip", "-n", self.ns(node), "route", "add", "blackhole", f"{self.address(other)}/32")
            self._routes[node] = set(want)

    def node_started(self, node: int) -> None:
        pass  # routes live in the namespace, not in the process

    def loss(self, node: int, percent: int) -> None:
        if not self.supports_loss:
            return
        veth = f"{self.pfx}v{node}"
        ipt = ["ip", "netns", "exec", self.ns(node), "iptables"]
        if node in self._lossy:
            _run(*ipt, "-F", "INPUT")
            _run(*ipt, "-F", "OUTPUT")
            self._lossy.discard(node)
        if percent > 0:
            rule = ["-m", "statistic", "--mode", "random", "--probability", f"{percent / 100:.2f}", "-j", "DROP"]
            _run(*ipt, "-A", "INPUT", "-i", veth, *rule)
            _run(*ipt, "-A", "OUTPUT", "-o", veth, *rule)
            self._lossy.add(node)

    def teardown(self) -> None:
        """Delete every namespace of this run (which removes their veths, routes and qdiscs)."""
        for node in range(self.nodes):
            subprocess.run(["ip", "netns", "del", self.ns(node)], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", f"{self.pfx}h"], capture_output=True, timeout=30)
        self.nodes = 0


class LocalNet:
    """Nodes on 127.0.0.1 behind a :class:`~ekv.testing.proxy.FaultProxy` (see the module
    docstring). ``index_of(node_id)`` names the node index of a node id (the runner knows them
    once the nodes have started)."""

    kind = "local"
    supports_loss = False

    def __init__(self, index_of: Callable[[str], int | None]) -> None:
        self._index_of = index_of
        self._proxy: FaultProxy | None = None
        self._ports: list[int] = []
        self._proxy_ports: list[int] = []

    def setup(self, nodes: int) -> None:
        self._ports = free_ports(nodes)
        self._proxy = FaultProxy(self._index_of)
        self._proxy_ports = self._proxy.start(self._ports)

    def listen(self, node: int) -> str:
        return f"127.0.0.1:{self._ports[node]}"

    def advertise(self, node: int) -> str | None:
        return f"127.0.0.1:{self._proxy_ports[node]}"

    def peers(self, node: int) -> list[str]:
        return [f"127.0.0.1:{port}" for other, port in enumerate(self._proxy_ports) if other != node]

    def prefix(self, node: int) -> list[str]:
        return []

    def cut(self, blocked: dict[int, set[int]]) -> None:
        assert self._proxy is not None
        self._proxy.cut(blocked)

    def node_started(self, node: int) -> None:
        pass  # the cut lives in the proxy

    def loss(self, node: int, percent: int) -> None:
        pass

    def teardown(self) -> None:
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None
