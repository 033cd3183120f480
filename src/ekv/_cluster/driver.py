"""The replicator's glue on the network loop: local writes in, encoded messages out, and time.

The :class:`~ekv._cluster.replicator.Replicator` decides what to send; the :class:`Driver` feeds it
and carries out its decisions:

* local writes reach it through the :class:`~ekv._cluster.outbox.Outbox` the writer threads fill
  (one wake-up per burst, not per write) and are drained in batches per shard;
* its messages are encoded once and written to every member's session, one socket write per
  member for a whole drain; sync chunks are produced only while the member's send buffer has room
  (:meth:`Driver.can_send`), so a large sync interleaves with live traffic and memory stays bounded;
* it ticks (anti-entropy pulls, sync timeouts) every 50 ms, every 5 ms while it has work queued;
* it makes the broadcast tree (:mod:`ekv._cluster.broadcast`) with each replicator: in a large
  cluster, local writes go out through it instead of to every member.

The sessions are the membership's (:mod:`ekv._cluster.members`); the driver only reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from ekv._cluster import wire
from ekv._cluster.broadcast import Broadcast
from ekv._cluster.messages import Message
from ekv._cluster.ondemand import OnDemand
from ekv._cluster.outbox import Outbox, live_batches
from ekv._cluster.port import ReplicationStore
from ekv._cluster.replicator import ReplicationSettings, Replicator
from ekv._cluster.session import Session
from ekv._config import ClusterOptions
from ekv._model import Entry

__all__ = ["Driver"]

_CAN_SEND_BYTES = 2 << 20
_BUSY_DRAIN_DELAY_S = 0.002


class Driver:
    """Runs the replicator of one cluster node (loop thread, but for :meth:`on_local_writes`)."""

    def __init__(
        self,
        store: ReplicationStore,
        settings: ReplicationSettings,
        options: ClusterOptions,
        log: Any,
        wall: Any,
        sessions: dict[str, Session],
        rng: random.Random,
    ) -> None:
        self.store = store
        self.settings = settings
        self.options = options
        self.log = log
        self._wall = wall
        self.sessions = sessions
        self._rng = rng
        self.outbox = Outbox()
        self.replicator: Replicator | None = None
        self.broadcast: Broadcast | None = None
        self.ondemand: OnDemand | None = None
        """Large mode's sessions on demand (set by ClusterNode before :meth:`start`)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        """The loop the driver runs on (set when the cluster starts)."""
        self.stopping = False
        self._encoded: tuple[Message, bool, bytes] | None = None
        self._coalesce: dict[Session, list[bytes]] | None = None

    def start(self) -> None:
        """Make the replicator (on the loop thread); again after the node took a new node id."""
        self.replicator = rep = Replicator(
            self.store, self.settings, send=self._send, can_send=self._can_send, log=self.log, rng=self._rng
        )
        demand = self.ondemand
        rep.demand = demand
        if self.loop is not None:
            rep.tree = self.broadcast = Broadcast(
                rep,
                self.sessions,
                self._send,
                self.loop,
                max_frame_size=self.options.max_frame_size,
                compress_threshold=self.options.compression_threshold,
                log=self.log,
            )
            if demand is not None:
                self.broadcast.live_members = demand.tree_members
                self.broadcast.dial = demand.want

    def close(self) -> None:
        if self.broadcast is not None:
            self.broadcast.close()
        if self.replicator is not None:
            self.replicator.close()

    @property
    def rep(self) -> Replicator:
        rep = self.replicator
        assert rep is not None, "the cluster has not started"
        return rep

    # -- out ---------------------------------------------------------------------------------------

    def _send(self, peer_id: str, message: Message) -> None:
        session = self.sessions.get(peer_id)
        if session is None or session.closed:
            return
        pending = self._coalesce
        compress = "zlib" in session.features and self.options.compression_threshold is not None
        # The replicator sends the same message object to every member: encode it once. The
        # cache holds the message itself, so its identity cannot be reused by a new object.
        cached = self._encoded
        if cached is not None and cached[0] is message and cached[1] == compress:
            frame = cached[2]
        else:
            frame = wire.encode(message, compress_threshold=self.options.compression_threshold if compress else None)
            self._encoded = (message, compress, frame)
        if pending is not None:
            pending.setdefault(session, []).append(frame)  # written together at the end of the drain
        else:
            session.send_frame(frame)

    def _can_send(self, peer_id: str) -> bool:
        session = self.sessions.get(peer_id)
        return session is not None and not session.closed and session.queued_bytes < _CAN_SEND_BYTES

    # -- local writes ------------------------------------------------------------------------------

    def on_local_writes(self, shard: int, entries: list[Entry]) -> None:
        """Called by writer threads after each commit of local writes (any thread): queue them
        in the (bounded) outbox. A quiet node wakes the network thread at once (low latency);
        while writes pour in, it drains every couple of milliseconds on its own timer and
        writers do not wake it at all (throughput). See :mod:`ekv._cluster.outbox`."""
        if not self.outbox.put(shard, entries):
            return
        loop = self.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._drain_outbox)

    def _drain_outbox(self) -> None:
        loop = self.loop
        items, busy = self.outbox.take(stopping=self.stopping, now_s=None if loop is None else loop.time())
        if busy and loop is not None:
            loop.call_later(_BUSY_DRAIN_DELAY_S, self._drain_outbox)
        rep = self.replicator
        if rep is None or not items or not self.sessions:
            return
        self._coalesce = {}  # one socket write per member for the whole drain
        try:
            for shard, batch in live_batches(items):
                rep.on_local_writes(shard, batch)
        finally:
            pending, self._coalesce = self._coalesce, None
            for session, frames in pending.items():
                session.send_frame(frames[0] if len(frames) == 1 else b"".join(frames))

    # -- time --------------------------------------------------------------------------------------

    def kick(self) -> None:
        """Let the replicator send what it has queued (after a message or a new member)."""
        rep = self.replicator
        if rep is not None and rep.busy:
            rep.pump()

    async def tick_loop(self) -> None:
        """Tick the current replicator for as long as the node runs. The replicator is looked up
        on every tick, never kept: taking a new node id replaces it (:meth:`start`), and the new
        one must get the anti-entropy pulls, sync timeouts and chunk sending that ticks drive."""
        while not self.stopping:
            rep = self.rep
            try:
                rep.tick(self._wall())
            except Exception:
                self.log.error("replication tick failed", exc_info=True)
            await asyncio.sleep(0.005 if rep.busy else 0.05)
