"""A harness for clusters of real ekv node processes on 127.0.0.1.

    with ProcCluster(tmp_path, nodes=3) as cluster:
        a, b, c = cluster.nodes
        a.put("k", 1)
        cluster.wait_converged()
        c.kill()                    # SIGKILL
        c.start()                   # restart from its data directory
        b.pause(); b.resume()       # SIGSTOP / SIGCONT
        cluster.partition([a, b], [c]); cluster.heal()

Every node is a ``python -m ekv.testing.node`` child process; every call has a timeout, and
:meth:`ProcCluster.close` kills whatever is left, so a failing test never leaks processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["NodeProcess", "ProcCluster"]

FAST = {
    "heartbeat_interval": 0.1,
    "heartbeat_timeout": 1.0,
    "anti_entropy_interval": 0.5,
    "reconnect_max": 0.5,
    "shards": 4,
}


class NodeProcess:
    """One node process. ``call`` sends a command and waits for its answer."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        *,
        instance: str = "c",
        options: dict[str, Any] | None = None,
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.prefix = list(prefix or [])
        """Put before the command, e.g. ``["ip", "netns", "exec", "ns1"]`` to run it in a namespace."""
        self.env = env
        """Extra environment variables of the child (e.g. a clock-skew shim)."""
        self.stderr_path: Path | None = None
        """Append the child's stderr to this file instead of a pipe (long runs: a pipe nobody
        reads would eventually block a chatty child)."""
        self.data_dir = data_dir
        self.instance = instance
        self.options = dict(options or {})
        self.peers: list[str] = []
        self.listen = "127.0.0.1:0"
        self.proc: subprocess.Popen[str] | None = None
        self.node_id: str | None = None
        self.address: str | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.paused = False
        self.module = "ekv.testing.node"
        """The program the child runs (``python -m MODULE``), which speaks the protocol of
        :mod:`ekv.testing.node`."""
        self.args: list[str] = []
        """Extra arguments of the child, after the node's own."""

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> NodeProcess:
        cmd = [
            *self.prefix,
            sys.executable,
            "-m",
            self.module,
            "--name",
            self.instance,
            "--data-dir",
            str(self.data_dir),
        ]
        if self.listen:
            cmd += ["--listen", self.listen]
        for peer in self.peers:
            cmd += ["--peer", peer]
        for key, value in self.options.items():
            cmd += ["--option", f"{key}={json.dumps(value)}"]
        cmd += self.args
        self._lines = queue.Queue()
        stderr: Any = subprocess.PIPE
        if self.stderr_path is not None:
            stderr = open(self.stderr_path, "a")  # noqa: SIM115 - the child owns it from here
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            bufsize=1,
            env=None if self.env is None else {**os.environ, **self.env},
        )
        if stderr is not subprocess.PIPE:
            stderr.close()
        threading.Thread(target=self._pump, args=(self.proc, self._lines), daemon=True).start()
        ready = self._read(timeout)
        if not ready.get("ready"):
            raise RuntimeError(f"node {self.name} did not start: {ready}")
        self.node_id = ready["node_id"]
        self.address = ready["listen"]
        if self.address and self.listen.endswith(":0"):
            self.listen = self.address  # keep the same port across restarts
        self.paused = False
        return self

    @staticmethod
    def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        """Move the child's output lines into a queue; the only reader (and closer) of stdout."""
        stdout = proc.stdout
        assert stdout is not None
        try:
            for line in stdout:
                lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            lines.put(None)
            with contextlib.suppress(OSError):
                stdout.close()

    def _read(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"node {self.name} did not answer within {timeout} s") from None
        if line is None:
            if self.proc and self.proc.stderr:
                stderr = self.proc.stderr.read()
            elif self.stderr_path is not None and self.stderr_path.exists():
                stderr = self.stderr_path.read_text(errors="replace")
            else:
                stderr = ""
            raise RuntimeError(f"node {self.name} exited: {stderr[-2000:]}")
        result: dict[str, Any] = json.loads(line)
        return result

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(self, op: str, timeout: float = 60, **args: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        reply = self._read(timeout)
        if not reply.get("ok"):
            raise RuntimeError(f"{self.name}.{op}: {reply.get('type')}: {reply.get('error')}")
        return reply

    def stop(self, timeout: float = 30) -> None:
        """Clean shutdown."""
        if not self.running:
            return
        if self.paused:
            self.resume()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": "close"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL: no shutdown work of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None:
            for stream in (self.proc.stdin, self.proc.stderr):  # stdout belongs to the pump thread
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self.paused = False

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    # -- shortcuts -----------------------------------------------------------------------------

    def put(self, key: str, value: Any, ttl: float | None = None) -> tuple[int, str]:
        version = self.call("put", key=key, value=value, ttl=ttl)["version"]
        return int(version[0]), str(version[1])

    def delete(self, key: str) -> tuple[int, str]:
        version = self.call("delete", key=key)["version"]
        return int(version[0]), str(version[1])

    def get(self, key: str) -> Any:
        return self.call("get", key=key)["value"]

    def dump(self) -> dict[str, tuple[Any, ...]]:
        return {row[0]: tuple(row[1:]) for row in self.call("dump")["entries"]}

    def members(self) -> dict[str, bool]:
        result: dict[str, bool] = self.call("members")["members"]
        return result

    def __repr__(self) -> str:
        return f"<node {self.name} {self.node_id} {self.address}>"


class ProcCluster:
    """Several node processes of one instance, all connected through the first node."""

    def __init__(self, root: Path, nodes: int = 3, *, instance: str = "c", start: bool = True, **options: Any) -> None:
        self.root = root
        self.options = {**FAST, **options}
        self.nodes: list[NodeProcess] = []
        try:
            for _i in range(nodes):
                self.add(start=start, instance=instance)
        except BaseException:
            self.close()
            raise

    def add(self, *, start: bool = True, instance: str = "c", **options: Any) -> NodeProcess:
        node = NodeProcess(
            f"n{len(self.nodes)}",
            self.root / f"n{len(self.nodes)}",
            instance=instance,
            options={**self.options, **options},
        )
        if self.nodes and self.nodes[0].address:
            node.peers = [self.nodes[0].address]
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def running(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.running and not n.paused]

    def wait(self, predicate: Callable[[], bool], timeout: float = 60, message: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(message or f"condition not reached within {timeout} s")
            time.sleep(0.05)

    def wait_connected(self, timeout: float = 60) -> None:
        nodes = self.running()

        def all_connected() -> bool:
            for node in nodes:
                members = node.members()
                if sum(1 for other in nodes if other is not node and members.get(other.node_id or "")) < len(nodes) - 1:
                    return False
            return True

        self.wait(all_connected, timeout, "the nodes did not form a full mesh")

    def converged(self, nodes: list[NodeProcess] | None = None) -> bool:
        nodes = nodes or self.running()
        dumps = [n.dump() for n in nodes]
        return all(d == dumps[0] for d in dumps[1:])

    def wait_converged(self, timeout: float = 60, nodes: list[NodeProcess] | None = None) -> None:
        self.wait(lambda: self.converged(nodes), timeout, "the nodes did not converge")

    def partition(self, *groups: list[NodeProcess]) -> None:
        everyone = [n for g in groups for n in g]
        for group in groups:
            others = [n.node_id for n in everyone if n not in group]
            for node in group:
                node.call("block", node_ids=others)

    def heal(self) -> None:
        for node in self.running():
            node.call("block", node_ids=[])

    def close(self) -> None:
        for node in self.nodes:
            try:
                if node.paused:
                    node.resume()
                node.kill()
            except Exception:
                pass

    def __enter__(self) -> ProcCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
