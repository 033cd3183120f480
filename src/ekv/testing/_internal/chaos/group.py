"""A node made of several processes on one data directory (SPEC section 12), for group-mode runs.

Every process of a group is a :mod:`.member` child opened with the node's own options (listen
address, peers, cookie): one is elected node process, the others attach, and when the node
process dies an attached one takes over and binds the same listen address. A :class:`NodeGroup`
stands where the runner otherwise has a :class:`~ekv.testing.cluster.NodeProcess`: the same
attributes and lifecycle (``kill`` and ``pause`` act on every process: the machine's crash or
stall), plus :meth:`kill_process` / :meth:`start_missing` for the nemesis's process kills.
Cluster questions (members, info) go to the current node process, found through
``info()["processes"]``; data questions (dump) to any live process, since all read the same files.
"""

from __future__ import annotations

import contextlib
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ekv.testing.cluster import NodeProcess

__all__ = ["NodeGroup"]

MODULE = "ekv.testing._internal.chaos.member"
CLUSTER_OPS = ("members", "info", "block", "connect", "clear_quarantine")
"""Commands that need the node process (an attached process has no cluster)."""


class NodeGroup:
    """``size`` processes of node ``name`` sharing ``data_dir`` (see the module docstring)."""

    def __init__(self, name: str, data_dir: Path, size: int, **kwargs: Any) -> None:
        self.name = name
        self.data_dir = data_dir
        self.procs = [NodeProcess(f"{name}p{j}", data_dir, **kwargs) for j in range(size)]
        for proc in self.procs:
            proc.module = MODULE
        self.lives = [0] * size
        self.workload: dict[str, Any] | None = None
        """The ``workload`` command's fields once the clients run (restarted processes get them too)."""
        self.out_dir: Path = data_dir.parent
        self.node_id: str | None = None
        self.address: str | None = None

    # -- what the runner sets on a node, passed to every process

    @property
    def listen(self) -> str:
        return self.procs[0].listen

    @listen.setter
    def listen(self, value: str) -> None:
        for proc in self.procs:
            proc.listen = value

    @property
    def peers(self) -> list[str]:
        return self.procs[0].peers

    @peers.setter
    def peers(self, value: list[str]) -> None:
        for proc in self.procs:
            proc.peers = list(value)

    @property
    def stderr_path(self) -> Path | None:
        return self.procs[0].stderr_path

    @stderr_path.setter
    def stderr_path(self, value: Path | None) -> None:
        for proc in self.procs:
            proc.stderr_path = None if value is None else value.with_name(f"{proc.name}.log")

    # -- lifecycle

    @property
    def running(self) -> bool:
        """Some process of the group is alive (the node serves)."""
        return any(proc.running for proc in self.procs)

    @property
    def paused(self) -> bool:
        return any(proc.paused for proc in self.procs)

    def start(self, timeout: float = 60) -> NodeGroup:
        self.start_missing(timeout)
        return self

    def start_missing(self, timeout: float = 60) -> list[str]:
        """Start every process of the group that is not running, all at once (a Python process
        takes seconds to start on a loaded machine); return their names."""
        missing = [j for j, proc in enumerate(self.procs) if not proc.running]
        # Opens that find no node process all bind the listen address, and the losers fail
        # instead of attaching (an ekv bug, tests/test_processes_simultaneous_open.py): so the
        # first process alone, and no start while a takeover is under way.
        if missing and len(missing) == len(self.procs):
            self._start_one(missing[0], timeout)
        elif missing:
            self.node_process(timeout)
        with ThreadPoolExecutor(max_workers=max(1, len(missing))) as pool:
            rest = [j for j in missing if not self.procs[j].running]
            for future in [pool.submit(self._start_one, j, timeout) for j in rest]:
                future.result()
        return [self.procs[j].name for j in missing]

    def _start_one(self, j: int, timeout: float) -> None:
        proc = self.procs[j]
        proc.start(timeout)
        self.lives[j] += 1
        self.node_id = proc.node_id
        self.address = self.address or proc.address
        if self.workload is not None:
            self._start_clients(j)

    def start_clients(self, **fields: Any) -> None:
        """Start the clients inside every process (and in every process started later)."""
        self.workload = fields
        for j, proc in enumerate(self.procs):
            if proc.running:
                self._start_clients(j)

    def _start_clients(self, j: int) -> None:
        assert self.workload is not None
        proc = self.procs[j]
        out = self.out_dir / f"ops-{proc.name}-{self.lives[j]}.jsonl"
        proc.call("workload", node=self.name, proc=proc.name, life=self.lives[j], out=str(out), **self.workload)

    def stop(self, timeout: float = 30) -> None:
        for proc in reversed(self.procs):  # the node process (usually the first) last: no takeovers
            proc.stop(timeout)

    def kill(self) -> None:
        """SIGKILL every process at once (one by one, a survivor would take over in between)."""
        for proc in self.procs:
            if proc.proc is not None and proc.running:
                proc.proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            proc.kill()

    def pause(self) -> None:
        for proc in self.procs:
            if proc.running:
                proc.pause()

    def resume(self) -> None:
        for proc in self.procs:
            if proc.paused:
                proc.resume()

    # -- one process

    def node_process(self, timeout: float = 10) -> int | None:
        """The index of the current node process (None if there is none within ``timeout``: a
        takeover under way, or nobody alive)."""
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.procs:
                if not proc.running or proc.paused:
                    continue
                with contextlib.suppress(RuntimeError, TimeoutError, OSError):
                    holder = proc.call("info", timeout=10)["info"]["processes"]["node_process"]
                    pids = [p.proc.pid if p.proc is not None and p.running else None for p in self.procs]
                    if holder is not None and holder["pid"] in pids:
                        return pids.index(holder["pid"])
                break  # one live process's answer is the directory's answer
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def kill_process(self, which: int | str) -> tuple[str, str, int] | None:
        """SIGKILL one process: ``which`` is its index or ``"node"`` (the current node process).
        Returns (its name, its role, the ``monotonic_ns`` just before the kill), or None if it
        was not running or no other process of the group would stay alive to serve (a whole-node
        kill is the other action)."""
        node = self.node_process()
        index = node if which == "node" else int(which)
        if index is None or not self.procs[index].running:
            return None
        if sum(1 for p in self.procs if p.running) < 2:
            return None
        proc = self.procs[index]
        kill_time = time.monotonic_ns()
        proc.kill()
        return proc.name, "node" if index == node else "attached", kill_time

    def call(self, op: str, timeout: float = 60, **args: Any) -> dict[str, Any]:
        """A command for the node: cluster commands to the node process, the others to any
        live process (they read the same files)."""
        if op in CLUSTER_OPS:
            index = self.node_process(timeout=min(timeout, 10))
            if index is None:
                raise RuntimeError(f"{self.name}: no node process")
            return self.procs[index].call(op, timeout, **args)
        for proc in self.procs:
            if proc.running and not proc.paused:
                return proc.call(op, timeout, **args)
        raise RuntimeError(f"{self.name}: no live process")

    def members(self) -> dict[str, bool]:
        result: dict[str, bool] = self.call("members")["members"]
        return result

    def __repr__(self) -> str:
        return f"<node group {self.name} {self.node_id} x{len(self.procs)}>"
