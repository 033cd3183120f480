"""This open's place among the processes that share its data directory (SPEC section 12).

One open at a time is the *node process* (it won the election, :class:`ekv._storage.procs.Election`):
it runs the cluster, GC and checkpoints, and serves the local bus (:mod:`ekv._node.bus`). Every
other open is *attached*: it reads and writes the shard files itself, sends its writes and events
to the node process over the bus, and checks every ``takeover_interval`` whether the node process
is still there; the first to find it gone takes over (:meth:`Node._try_take_over`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ekv._cluster.runtime import runtime
from ekv._log import NodeLog
from ekv._node.bus import BusClient, BusServer, LocalSink, bus_path, link_path
from ekv._storage.procs import Election, live_slots

if TYPE_CHECKING:
    from ekv._config import Config
    from ekv._node.subscriptions import Registry
    from ekv._storage.store import ShardedStore

__all__ = ["ProcessRole"]

_ATTACH_WAIT_S = 2.0


class ProcessRole:
    """The election, the bus end and the takeover state of one open."""

    def __init__(self, config: Config, registry: Registry, sink: LocalSink, log: NodeLog) -> None:
        self.config = config
        self.registry = registry
        self.sink = sink
        self.log = log
        self.election = Election(config.data_dir)
        self.path = bus_path(config.data_dir)
        self._runtime = runtime()
        self._loop = self._runtime.acquire()
        self.bus: BusServer | BusClient | None = None
        self._closed = False

    @property
    def is_node(self) -> bool:
        return self.election.won

    def try_win(self, store: ShardedStore) -> bool:
        """Try to become the node process; record the role in this open's slot."""
        slot = store.slot
        assert slot is not None
        if not self.election.try_win(slot.id, store.origin):
            return False
        slot.set_origin(store.origin, "node")
        return True

    def serve(self) -> BusServer:
        """Start the node process's end of the bus (this open won the election)."""
        server = BusServer(
            self.path,
            self._loop,
            self.config.data_dir,
            local_patterns=self.registry.patterns,
            publish=self.registry.publish,
            log=self.log,
        )
        self._runtime.run(server.start(), timeout=60)
        self._use(server)
        return server

    def attach(self, store: ShardedStore) -> None:
        """Connect to the node process's end of the bus (this open lost the election)."""
        assert store.slot is not None
        client = BusClient(
            self.path,
            self._loop,
            link_path(self.config.data_dir, store.slot.id),
            local_patterns=self.registry.patterns,
            publish=self.registry.publish,
            log=self.log,
        )
        self._use(client)
        for shard in store.shards:
            shard.outbox = client.writes
        if not client.wait_ready(_ATTACH_WAIT_S):
            self.log.warning("the node process of %s does not answer on its bus yet", self.config.data_dir)

    def _use(self, bus: BusServer | BusClient) -> None:
        self.bus = self.sink.bus = bus

    def reconnect(self) -> None:
        """An attached open's takeover tick: reconnect to a new node process if disconnected."""
        bus = self.bus
        if isinstance(bus, BusClient) and not bus.connected:
            bus.connect()

    def leave_bus(self, store: ShardedStore) -> None:
        """Drop the attached end (before becoming the node process)."""
        bus = self.bus
        if isinstance(bus, BusClient):
            for shard in store.shards:
                shard.outbox = None
            bus.close()
        self.bus = self.sink.bus = None

    def step_down(self, store: ShardedStore) -> None:
        """A takeover failed half-way (the listen address is still taken, say): stop serving,
        resign, attach again; the next takeover tick tries again."""
        bus = self.bus
        if isinstance(bus, BusServer) and self._runtime.running:
            self._runtime.run(bus.stop(), timeout=30)
        self.bus = self.sink.bus = None
        self.election.resign()
        self.attach(store)

    def close(self) -> None:
        """Leave the bus and the election (the store is closed). Idempotent."""
        if self._closed:
            return
        self._closed = True
        bus, self.bus = self.bus, None
        self.sink.bus = None
        try:
            if isinstance(bus, BusServer) and self._runtime.running:
                self._runtime.run(bus.stop(), timeout=30)
            elif isinstance(bus, BusClient):
                bus.close()
        finally:
            self.election.resign()
            self._runtime.release()

    def info(self, store: ShardedStore) -> dict[str, Any]:
        """This open's role and every live open of the data directory."""
        holder = self.election.holder()
        own = store.slot.id if store.slot is not None else None
        bus = self.bus
        return {
            "role": "node" if self.is_node else "attached",
            "pid": os.getpid(),
            "slot": own,
            "node_process": None if holder is None else {"pid": holder[0], "slot": holder[1]},
            "bus": {
                "path": self.path,
                "connected": bus.processes if isinstance(bus, BusServer) else bool(bus and bus.connected),
                # events of one attached process the node process relayed to another / this
                # attached process sent to others over its direct links
                "relayed": bus.relayed if isinstance(bus, BusServer) else 0,
                "direct": bus.links.sent if isinstance(bus, BusClient) else 0,
            },
            "opens": [
                {
                    "slot": info.slot,
                    "pid": info.pid,
                    "origin": info.origin,
                    "role": "node" if holder is not None and info.slot == holder[1] else "attached",
                    "started_at_ns": info.started_ns,
                    "this": info.slot == own,
                }
                for info in live_slots(self.config.data_dir)
            ],
        }
