"""Linearizable operations in the deterministic simulator (:mod:`ekv.testing.sim`), and the
history they leave for :mod:`ekv.testing._internal.checker.linear`.

With ``Simulation(consistent=True)`` every node is a voter (``cluster_size`` = the number of
nodes, ``consistent_prefixes=["c/"]``) and :class:`ConsistentClients` runs several concurrent
clients per node on a few keys ``c/0..c/K`` (few keys: contention is what breaks a broken
protocol). Each client awaits ``ClusterNode.consensus.run`` on the simulation's loop, during
the simulation's partitions, crashes, drops and delays, one operation at a time: consistent
reads, unconditional writes, ``if_absent`` writes, writes conditional on the version the client
last saw live, and deletes, every written value unique. Each operation is recorded as an invoke
and a completion in virtual time: ``ok`` (Committed, Read), ``fail`` ``conflict`` with the state
that made the condition false, ``fail`` ``no_quorum``, ``info`` (Unconfirmed, or the node crashed
under it: the client lost its connection and cannot know; an operation still pending at the end
has no completion at all, which the checker reads as ``info`` too).

Why the client sees a crash as ``info`` rather than the outcome its old ``Consensus`` object may
still produce: a real client's connection to a crashed node is gone, and the old object's
acceptor is closed, so what it would say is not a client's view.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import TYPE_CHECKING, Any

from ekv._core.durations import NS_PER_S
from ekv._core.paxos import ABSENT, ANY, READ, Committed, Conflict, NoQuorum, Op, Read, Record, Unconfirmed
from ekv.testing._internal.checker.linear import Violation, check_linearizable

if TYPE_CHECKING:
    from ekv._cluster.cluster import ClusterNode
    from ekv.testing.sim import Simulation

__all__ = ["PREFIX", "ConsistentClients"]

PREFIX = "c/"
"""The declared consistent prefix of the simulated cluster."""


class ConsistentClients:
    """The clients of linearizable operations and their history (see the module docstring)."""

    def __init__(
        self,
        sim: Simulation,
        *,
        keys: int = 3,
        clients_per_node: int = 2,
        timeout_ms: int = 1_000,
        ops_per_s: float = 20.0,
    ) -> None:
        self.sim = sim
        self.rng = random.Random(f"consistent-{sim.seed}")
        self.keys = [f"{PREFIX}{i}" for i in range(keys)]
        self.timeout_ns = timeout_ms * NS_PER_S // 1000
        self.ops_per_s = ops_per_s
        self.history: list[dict[str, Any]] = []
        self.stats: Counter[str] = Counter()
        self.voters = sorted(sim.nodes)
        """Every node of the simulation at the start is a voter (``cluster_size`` = their number)."""
        self._clients = [(node, i) for node in self.voters for i in range(clients_per_node)]
        self._process = {client: n for n, client in enumerate(self._clients)}
        self._next_process = len(self._clients)
        self._busy: set[tuple[str, int]] = set()
        self._seen: dict[tuple[str, int], dict[str, int]] = {}
        self._values = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- issuing -----------------------------------------------------------------------------------

    def tick(self, seconds: float) -> None:
        """Called by the simulation's timer: each idle client on a live node may start one operation."""
        for client in self._clients:
            if client in self._busy or client[0] not in self.sim.clusters:
                continue
            if self.rng.random() < self.ops_per_s * seconds:
                self._busy.add(client)
                op, fields = self._choose(client)
                process = self._process[client]
                self._record(process, client[0], "invoke", fields)
                cluster = self.sim.clusters[client[0]]
                task = self.sim.loop.create_task(self._operate(client, cluster, process, op, fields))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _choose(self, client: tuple[str, int]) -> tuple[Op, dict[str, Any]]:
        """One random operation, and its invoke record's fields."""
        key = self.rng.choice(self.keys)
        roll = self.rng.random()
        seen = self._seen.setdefault(client, {}).get(key)
        if roll < 0.3:
            return Op(key, READ, None, None), {"f": "cread", "key": key}
        if roll < 0.45:
            value: str | None = None
        else:
            self._values += 1
            value = f"{client[0]}.{client[1]}.{self._values}"
        cond: str | int = ANY
        choice = self.rng.random()
        if choice < 0.45 and seen is not None:
            cond = seen
        elif choice < 0.75 and value is not None:
            cond = ABSENT
        store = self.sim.nodes[client[0]].store
        assert store is not None
        encoded = None if value is None else store.config.codec.dumps(value)
        return Op(key, cond, encoded, None), {"f": "cwrite", "key": key, "value": value, "cond": cond}

    async def _operate(
        self, client: tuple[str, int], cluster: ClusterNode, process: int, op: Op, fields: dict[str, Any]
    ) -> None:
        name = client[0]
        try:
            result: Any = await cluster.consensus.run(op, self.timeout_ns)
        except Exception as exc:  # the node closed under it (a crash): unknown outcome
            result = exc
        finally:
            self._busy.discard(client)
        if self.sim.clusters.get(name) is not cluster:
            result = None  # crashed meanwhile: the client lost its connection
        self._complete(client, process, op, fields, result)

    # -- recording ---------------------------------------------------------------------------------

    def _record(self, process: int, node: str, kind: str, fields: dict[str, Any]) -> None:
        self.history.append({"process": process, "node": node, "type": kind, "time": self.sim.elapsed_ns(), **fields})

    def _decode(self, name: str, record: Record | None) -> Any:
        if record is None or record.value is None:
            return None
        store = self.sim.nodes[name].store
        assert store is not None
        return store.config.codec.loads(record.value)

    def _complete(self, client: tuple[str, int], process: int, op: Op, fields: dict[str, Any], result: Any) -> None:
        name, key = client[0], op.key
        base = {"f": fields["f"], "key": key}
        seen = self._seen.setdefault(client, {})
        if isinstance(result, Committed | Read):
            record = result.record
            live = record is not None and record.value is not None
            if live:
                assert record is not None
                seen[key] = record.ts
            else:
                seen.pop(key, None)
            extra: dict[str, Any] = {"version": None if record is None else record.ts}
            if isinstance(result, Read):
                extra["value"] = self._decode(name, record)
            self._record(process, name, "ok", {**base, **extra})
            self.stats["ok"] += 1
            if self.sim.blocked:
                self.stats["ok_partitioned"] += 1
        elif isinstance(result, Conflict):
            record = result.record
            if record is not None and record.value is not None:
                seen[key] = record.ts
                current: Any = [self._decode(name, record), record.ts]
            else:
                seen.pop(key, None)
                current = None
            self._record(process, name, "fail", {**base, "error": "conflict", "current": current})
            self.stats["conflict"] += 1
        elif isinstance(result, NoQuorum):
            self._record(process, name, "fail", {**base, "error": "no_quorum"})
            self.stats["no_quorum"] += 1
        else:
            assert result is None or isinstance(result, Unconfirmed | Exception), result
            self._record(process, name, "info", {**base, "error": "unconfirmed" if result is not None else "crashed"})
            self.stats["info"] += 1
            # an operation of unknown outcome ends its process (as in Jepsen): a new one goes on
            self._process[client] = self._next_process
            self._next_process += 1

    # -- the verdict -------------------------------------------------------------------------------

    def pending(self) -> int:
        """Operations not completed (yet)."""
        return len(self._busy)

    async def stop(self) -> None:
        """Cancel the operations still pending (they stay without a completion: unknown outcome)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def check(self) -> list[Violation]:
        """The linearizability checker's violations over the history so far."""
        return check_linearizable(self.history)
