"""The running node: storage, clock, subscriptions and background work wired together.

Both facades (:class:`ekv.EKV` and :class:`ekv.AsyncEKV`) wrap one :class:`Node`. The node owns

* the :class:`~ekv._storage.store.ShardedStore` (reads and writes run on the caller's thread),
  and the :class:`~ekv._values.Values` above it that the facades call: key and ttl checks, the
  codec, ``max_value_size``;
* the :class:`~ekv._core.clock.HybridClock` that stamps every local write;
* the subscription :class:`~ekv._node.subscriptions.Registry` and the callback dispatcher;
* the GC thread, which every ``gc_interval`` expires TTL entries, purges old tombstones,
  truncates the change log and refreshes ``last_active_at``.

Background threads hold only a weak reference to the node, so a node that is dropped without
``close()`` can still be collected (its facade warns with ``ResourceWarning``). A node still open
when the interpreter exits is closed by an :mod:`atexit` hook, while the background threads (the
network loop in particular) can still run: later, when objects are finalised, daemon threads are
frozen and a close that needs one would wait for it in vain.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ekv._codec import codec_name
from ekv._config import Config, check_overflow, check_positive_int
from ekv._core.clock import HybridClock
from ekv._core.durations import NS_PER_S, duration_ns, is_stale, tombstone_cutoff_ns
from ekv._core.keys import check_prefix
from ekv._errors import ClosedError, ConfigError, InvalidArgumentType, ListenError, LockedError
from ekv._linear import Linear
from ekv._model import Event
from ekv._node.bus import BusServer, LocalSink, runtime_path
from ekv._node.consensus import Consensus
from ekv._node.role import ProcessRole
from ekv._node.subscriptions import (
    BaseSubscription,
    CallbackSubscription,
    Dispatcher,
    Registry,
    Subscription,
)
from ekv._storage.acceptor import Acceptor
from ekv._storage.procs import Election, exclusive
from ekv._storage.sqlite import sqlite_version
from ekv._storage.store import GcReport, ShardedStore
from ekv._values import Values

if TYPE_CHECKING:
    from ekv._cluster.cluster import ClusterNode
    from ekv._cluster.listener import ListenerHold
from ekv._log import NodeLog
from ekv._version import __version__

__all__ = ["Node", "NodeLog"]


_open_nodes: weakref.WeakSet[Node] = weakref.WeakSet()


def _close_open_nodes() -> None:
    """Close every node still open at interpreter exit (an :mod:`atexit` hook).

    Without it, a store left open would be closed by its facade's ``__del__`` while modules are
    torn down, after the interpreter has frozen its daemon threads: a clustered node would wait
    for its network thread until the timeouts ran out (about a minute) before the process
    exited. Here every thread still runs, so members get their goodbye and every shard is marked
    cleanly shut down, and the next open keeps its origin."""
    for node in list(_open_nodes):
        try:
            node.close()
        except Exception:
            node.log.error("closing %s at interpreter exit failed", node.config.data_dir, exc_info=True)


def _after_fork_in_child() -> None:
    # A child made by fork() inherits the parent's nodes but owns none of them: its exit must not
    # close them. Each is reopened in the child on its first use there (Node._revive_in_child).
    for node in list(_open_nodes):
        node._inherited = True
        node._revive_lock = threading.Lock()  # the parent's may have been held by another thread
    _open_nodes.clear()


atexit.register(_close_open_nodes)
os.register_at_fork(after_in_child=_after_fork_in_child)


class _Periodic:
    """Runs ``job(node)`` every ``interval_s`` on its own thread until stopped.

    The thread holds only a weak reference to the node, so an abandoned node can be collected.
    Used for GC (every ``gc_interval``) and for WAL checkpoints (every 0.1 s, so that no commit
    pays for a checkpoint's fsync; measured here, a write that triggered one stalled 10-20 ms).
    """

    def __init__(self, node: Node, what: str, interval_s: float, job: Callable[[Node], object]) -> None:
        self._node_ref = weakref.ref(node)
        self._what = what
        self._interval_s = interval_s
        self._job = job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ekv-{what}-{node.config.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            node = self._node_ref()
            if node is None or node.closed:
                return
            try:
                self._job(node)
            except ClosedError:
                return
            except Exception:
                node.log.error("%s failed; will retry", self._what, exc_info=True)
            del node

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(30)


def _node_process_alive(config: Config) -> bool:
    """Whether another open of ``config.data_dir`` is its node process (this one will attach)."""
    return config.data_dir.is_dir() and Election(config.data_dir).holder() is not None


def _wait_for_election(ref: weakref.ref[Node], election: Election) -> None:
    """An attached open's election waiter (its own thread): blocks until the node process's lock
    is free, takes it, and takes over at once (the ``takeover_interval`` check is the fallback).
    Holds only a weak reference to the node; a node closed meanwhile lets the lock go."""
    try:
        fd = election.wait_for_it()
    except Exception:
        return  # the periodic check still runs
    node = ref()
    if node is None or node.closed or node.role.election is not election:
        Election.drop(fd)
        return
    slot = node.store.slot
    election.adopt(fd, slot.id if slot is not None else "", node.store.origin)
    try:
        node._try_take_over()
    except Exception:
        node.log.error("taking over as the node process failed; will retry", exc_info=True)


def _becoming(config: Config) -> contextlib.AbstractContextManager[None]:
    """Serialise, among the processes of this machine, the opens of one data directory from the
    check "is there a node process?" to the election: two workers starting at once must not both
    bind the ``listen`` address (the second would fail with ListenError). The lock lives in the
    private runtime directory, so that it exists before the data directory does."""
    return exclusive(runtime_path(config.data_dir, ".open"), f"opening data_dir {str(config.data_dir)!r}", remove=True)


def _bind_unless_attaching(config: Config) -> ListenerHold | None:
    """Bind the listener first, when this open will probably be the node process: a port in use
    must fail before the data directory is created or marked as opened (ekv.ListenError; nothing
    on disk changes). Not when another process is the directory's node process: it listens,
    this one attaches."""
    if config.cluster is None or config.cluster.listen is None or _node_process_alive(config):
        return None
    from ekv._cluster.listener import ListenerHold

    return ListenerHold(config)


class Node:
    """One open ekv instance. Thread-safe."""

    cluster: ClusterNode | None
    role: ProcessRole
    _closed: bool

    def __init__(self, config: Config) -> None:
        self.config = config
        self.log = NodeLog(config.name, config.log)
        self.clock = HybridClock(config.clock)
        self.registry = Registry(config.codec.loads, self.log.child("ekv.subscriptions"))
        self.sink = LocalSink(self.registry)
        self.dispatcher = Dispatcher(config.name)
        started = time.perf_counter()
        with _becoming(config):
            listener = _bind_unless_attaching(config)
            try:
                self._open(config, listener)
            finally:
                if listener is not None:
                    listener.release()  # the cluster serves on it now (or it failed): drop our hold
        self.log.info(
            "opened %s (node %s, %d shards, durability=%s) in %.1f ms%s",
            config.data_dir,
            self.node_id,
            config.shards,
            config.durability,
            (time.perf_counter() - started) * 1e3,
            "" if self.role.is_node else ", attached to the node process",
        )
        self._inherited = False
        self._revive_lock = threading.Lock()
        self._takeover_lock = threading.Lock()
        self.store.revive = self._revive_in_child
        self._start_threads()
        _open_nodes.add(self)

    def _start_threads(self) -> None:
        """GC and checkpoints in the node process; the takeover check in an attached one."""
        self._gc_thread: _Periodic | None = None
        self._checkpoint_thread: _Periodic | None = None
        self._takeover_thread: _Periodic | None = None
        if self.role.is_node:
            self._start_background()
        else:
            interval = self.config.takeover_interval_ns / NS_PER_S
            self._takeover_thread = _Periodic(self, "takeover", interval, Node._try_take_over)
            waiter = threading.Thread(
                target=_wait_for_election,
                args=(weakref.ref(self), self.role.election),
                name=f"ekv-election-{self.config.name}",
                daemon=True,
            )
            waiter.start()

    def _revive_in_child(self) -> None:
        """Reopen, in a child made by ``fork()``, a node its parent had open (gunicorn
        ``--preload``, multiprocessing with fork): on the first use in the child, called by the
        store (``ShardedStore._unusable``). The same objects carry on with new connections, a new
        origin, new threads and a new role (the child attaches while the parent lives);
        subscriptions made in the parent stay in the parent."""
        with self._revive_lock:
            if not self._inherited or self._closed:
                return
            config = self.config
            self.clock = HybridClock(config.clock, self.clock.last_ns)
            self.registry = Registry(config.codec.loads, self.log.child("ekv.subscriptions"))
            self.sink = LocalSink(self.registry)
            self.dispatcher = Dispatcher(config.name)
            self.cluster = None
            self._close_lock = threading.Lock()
            self._gc_lock = threading.Lock()
            self._takeover_lock = threading.Lock()
            self.store.reopen_in_child(self.clock, self.sink)
            self.role = ProcessRole(config, self.registry, self.sink, self.log)
            with _becoming(config):
                listener = _bind_unless_attaching(config)
                try:
                    self._take_role(listener, check_stale=False)
                finally:
                    if listener is not None:
                        listener.release()
            self._inherited = False
            self._start_threads()
            _open_nodes.add(self)
            self.log.info("reopened %s in the child process %d after fork()", config.data_dir, os.getpid())

    def _start_background(self) -> None:
        config = self.config
        self._gc_thread = _Periodic(self, "gc", config.gc_interval_ns / NS_PER_S, Node.run_gc)
        self._checkpoint_thread = _Periodic(self, "checkpoint", 0.1, lambda node: node.store.checkpoint())

    def _open(self, config: Config, listener: ListenerHold | None) -> None:
        self.store = ShardedStore.open(config, self.clock, self.sink)
        try:
            self.role = ProcessRole(config, self.registry, self.sink, self.log)
        except BaseException:
            self.store.close()
            raise
        won = self.role.try_win(self.store)
        self.stale_moved_to: str | None = None
        self._make_values()
        self.opened_at_ns = config.clock.now_ns()
        self._closed = False
        self._close_lock = threading.Lock()
        self._gc_lock = threading.Lock()
        self.gc_stats: dict[str, Any] = {
            "runs": 0,
            "last_run_at_ns": None,
            "last_duration_s": None,
            "expired": 0,
            "purged": 0,
            "log_truncated": 0,
        }
        self.cluster = None
        self._take_role(listener, won=won)

    def _make_values(self) -> None:
        """The value layer, with the linearizable operations (SPEC 13) of this open."""
        config = self.config
        self.values = Values(self.store)
        engine = Consensus(self) if config.voters is not None else None
        self.values.linear = Linear(self.values, engine, config.consistent_prefixes, config.consistent_timeout_ns)

    def _take_role(self, listener: ListenerHold | None, *, won: bool | None = None, check_stale: bool = True) -> None:
        """Attach, or (having won the election) serve the bus and start the cluster."""
        config = self.config
        if won is None:
            won = self.role.try_win(self.store)
        late: ListenerHold | None = None
        try:
            if won and listener is None and config.cluster is not None and config.cluster.listen is not None:
                # The node process died after this open found it alive: bind now, as a takeover does.
                listener = late = self._bind_late()
                won = listener is not None
            if not won:
                self.role.attach(self.store)
                return
            if check_stale and config.cluster is not None and not self.store.created and self.store.alone():
                self._check_stale()
                self._make_values()
            server = self.role.serve()
            if config.cluster is not None:
                server.on_writes = self._start_cluster(listener).driver.on_local_writes
        except BaseException:
            self._stop_cluster()
            self.role.close()
            self.store.close()
            raise
        finally:
            if late is not None:
                late.release()

    def _bind_late(self) -> ListenerHold | None:
        """Bind ``listen`` after winning the election; if the address is still taken (the old node
        process's socket not closed yet), resign and attach: the takeover check tries again."""
        from ekv._cluster.listener import ListenerHold

        try:
            return ListenerHold(self.config)
        except ListenError as exc:
            self.log.warning("cannot become the node process yet (%s); attached until the address is free", exc)
            self.role.election.resign()
            return None

    def _start_cluster(self, listener: ListenerHold | None) -> ClusterNode:
        from ekv._cluster.cluster import ClusterNode

        cluster = self.cluster = ClusterNode(self.config, self.store, self.log, listener)
        cluster.node_info = self.info
        cluster.start()
        if isinstance(self.role.bus, BusServer):
            self.role.bus.on_propose = cluster.consensus.run  # attached processes' linearizable operations
        return cluster

    def _stop_cluster(self) -> None:
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            cluster.stop()

    def _try_take_over(self) -> None:
        """Run by an attached open every ``takeover_interval``: if the node process is gone
        (exited, crashed, killed), become the node process: serve the bus, listen on the same
        address, join the cluster, run GC and checkpoints. Else make sure the bus is connected."""
        with self._takeover_lock:  # the election waiter and the periodic check may both get here
            if self.closed or self._gc_thread is not None:
                return
            self._take_over()

    def _take_over(self) -> None:
        role = self.role
        if not role.try_win(self.store):
            role.reconnect()
            return
        self.log.info("%s: the node process is gone; pid %d takes over", self.config.data_dir, os.getpid())
        role.leave_bus(self.store)
        listener = None
        try:
            server = role.serve()
            options = self.config.cluster
            if options is not None:
                if options.listen is not None:
                    from ekv._cluster.listener import ListenerHold

                    listener = ListenerHold(self.config)
                server.on_writes = self._start_cluster(listener).driver.on_local_writes
        except Exception:
            self.log.error("taking over as the node process failed; will retry", exc_info=True)
            self._stop_cluster()
            role.step_down(self.store)
            return
        finally:
            if listener is not None:
                listener.release()
        self._start_background()
        if self._takeover_thread is not None:
            self._takeover_thread.stop()

    @property
    def node_id(self) -> str:
        """This node's identity (it changes only if the cluster finds a copy of this data
        directory running under the same id, see :meth:`ShardedStore.reidentify`)."""
        return self.store.node_id

    def _check_stale(self) -> None:
        """Stale data protection (clustered nodes): a data directory last active longer ago than
        ``tombstone_ttl`` (minus one GC interval) must not rejoin with its data, because peers may
        have purged the tombstones of deletes it never saw, which would come back. Its files are
        moved aside (never deleted) and the node starts empty, under a new identity, and is rebuilt
        by full sync. ``allow_stale_startup=True`` trusts the old data instead."""
        config = self.config
        now = config.clock.now_ns()
        last = self.store.last_active_at_ns()
        if not is_stale(now, last, config.tombstone_ttl_ns, config.gc_interval_ns):
            return
        age = "unknown" if last is None else f"{(now - last) / NS_PER_S:.0f} s"
        if config.allow_stale_startup:
            self.log.warning(
                "data_dir %s was last active %s ago, longer than tombstone_ttl (%.0f s); "
                "allow_stale_startup=True: trusting its data (deletes purged meanwhile may come back)",
                config.data_dir,
                age,
                config.tombstone_ttl_ns / NS_PER_S,
            )
            return
        old_id = self.store.node_id
        self.store.close()
        try:
            with self.store.datadir.exclusive():
                moved = self.store.datadir.move_aside(config.shards, now)
        except LockedError:
            self.store = ShardedStore.open(config, self.clock, self.sink)
            self.role.try_win(self.store)  # the election is still ours: record the new open in it
            self.log.warning(
                "data_dir %s is stale, but another process opened it meanwhile: left as it is", config.data_dir
            )
            return
        self.stale_moved_to = str(moved)
        self.store = ShardedStore.open(config, self.clock, self.sink)
        self.role.try_win(self.store)
        self.log.warning(
            "STALE DATA: data_dir %s was last active %s ago, longer than tombstone_ttl (%.0f s). Its files were "
            "moved to %s (nothing was deleted); node %s starts empty as new node %s and is rebuilt from its peers. "
            "For a whole-cluster restore from old data, start every node with allow_stale_startup=True.",
            config.data_dir,
            age,
            config.tombstone_ttl_ns / NS_PER_S,
            moved,
            old_id,
            self.store.node_id,
        )

    @property
    def closed(self) -> bool:
        return self._closed or self.store.closed

    def check_open(self) -> None:
        if self.closed:
            if self._inherited:
                self.store._unusable()  # reopens it in a forked child, or raises
                return
            raise ClosedError("the store is closed")

    # -- subscriptions -----------------------------------------------------------------------

    def subscribe(
        self,
        patterns: tuple[str, ...],
        *,
        factory: Callable[..., BaseSubscription] | None = None,
        callback: Callable[[list[Event]], Any] | None = None,
        max_queue: int | None,
        overflow: str,
        owner: Any,
        **extra: Any,
    ) -> BaseSubscription:
        """Register a subscription for ``patterns`` (one or more prefixes or exact keys)."""
        self.check_open()
        checked = [check_prefix(p) for p in patterns] or [""]
        queue = self.config.subscriber_queue if max_queue is None else check_positive_int(max_queue, "max_queue")
        policy = check_overflow(overflow)
        if callback is not None:
            if not callable(callback):
                raise InvalidArgumentType(f"callback must be callable, not {type(callback).__name__}")
            sub: BaseSubscription = CallbackSubscription(
                self.registry,
                checked,
                max_queue=queue,
                overflow=policy,
                owner=owner,
                callback=callback,
                dispatcher=self.dispatcher,
            )
        else:
            make = factory or Subscription
            sub = make(self.registry, checked, max_queue=queue, overflow=policy, owner=owner, **extra)
        self.registry.add(sub, sub.patterns)
        return sub

    def unsubscribe(self, pattern: str, owner: Any) -> int:
        """Remove ``pattern`` from every subscription made through ``owner``; return how many
        subscriptions it was removed from."""
        self.check_open()
        pattern = check_prefix(pattern)
        count = 0
        for sub in self.registry.subscriptions():
            if sub.owner is owner and pattern in sub.patterns:
                sub._remove_pattern(pattern)
                count += 1
        return count

    # -- garbage collection ------------------------------------------------------------------

    def run_gc(self) -> GcReport:
        """One GC pass over every shard (normally run by the GC thread)."""
        self.check_open()
        with self._gc_lock:
            started = time.perf_counter()
            now = self.config.clock.now_ns()
            cutoff = tombstone_cutoff_ns(now, self.config.tombstone_ttl_ns)
            total = GcReport()
            for index in range(self.config.shards):
                # Keep what a member still lacks; a node without members truncates everything.
                targets = None if self.cluster is None else self.cluster.truncation_targets(index, now)
                report = self.store.gc_shard(index, now_ns=now, cutoff_ns=cutoff, log_targets=targets)
                total.expired += report.expired
                total.purged += report.purged
                total.log_truncated += report.log_truncated
                total.acceptors += report.acceptors
                self.log.verbose(
                    "gc shard %d: expired %d, purged %d, log truncated %d",
                    index,
                    report.expired,
                    report.purged,
                    report.log_truncated,
                )
            stats = self.gc_stats
            stats["runs"] += 1
            stats["last_run_at_ns"] = now
            stats["last_duration_s"] = time.perf_counter() - started
            stats["expired"] += total.expired
            stats["purged"] += total.purged
            stats["log_truncated"] += total.log_truncated
            return total

    # -- cluster -------------------------------------------------------------------------------

    def connect(self, address: str) -> None:
        """Add a member address to dial (the mesh is learned from it)."""
        self.check_open()
        if self.cluster is None:
            from ekv._errors import ClusterError

            raise ClusterError("this store was opened without cluster options (listen=, peers= or discovery=)")
        self.cluster.connect(address)

    def clear_quarantine(self, node_id: str) -> bool:
        self.check_open()
        return self.cluster is not None and self.cluster.clear_quarantine(node_id)

    def replace_voter(self, node_id: str, timeout: object = None) -> dict[str, Any]:
        self.check_open()
        if self.cluster is None:
            raise ConfigError(
                "replace_voter runs on a live voter of a cluster: call it in the node process (or use "
                "ekv replace-voter NODE_ID --node HOST:PORT)"
            )
        timeout_ns = self.config.consistent_timeout_ns if timeout is None else duration_ns(timeout, "timeout")
        return self.cluster.replace_voter(node_id, timeout_ns)

    # -- info --------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """A snapshot of the node's identity, configuration and per-shard state."""
        self.check_open()
        config = self.config
        shards = [self.store.shard_info(i) for i in range(config.shards)]
        subs = self.registry.subscriptions()
        last_active = [s["last_active_at_ns"] for s in shards if s["last_active_at_ns"] is not None]
        result: dict[str, Any] = {
            "name": config.name,
            "node_id": self.node_id,
            "origin": self.store.origin,
            "data_dir": str(config.data_dir),
            "listen": None,
            "members": {},
            "ekv_version": __version__,
            "sqlite_version": sqlite_version(),
            "codec": codec_name(config.codec),
            "options": config.summary(),
            "opened_at_ns": self.opened_at_ns,
            "stale_data_moved_to": self.stale_moved_to,
            "last_active_at_ns": min(last_active) if last_active else None,
            "clock": {"last_ns": self.clock.last_ns, "wall_ns": config.clock.now_ns(), "skew_ns": {}},
            "keys": sum(s["keys"] for s in shards),
            "tombstones": sum(s["tombstones"] for s in shards),
            "subscriptions": {
                "count": len(subs),
                "queued_events": sum(s.pending for s in subs),
                "delivered_events": self.registry.delivered,
                "overflows": self.registry.overflows,
                "dropped_events": self.registry.dropped,
            },
            "gc": dict(self.gc_stats),
            "processes": self.role.info(self.store),
            "consensus": self._consensus_info(),
            "shards": shards,
        }
        if self.cluster is not None:
            cluster = self.cluster.info()
            result["listen"] = cluster["listen"]
            result["members"] = cluster["members"]
            result["quarantined"] = cluster["quarantined"]
            result["refused"] = cluster["refused"]
            result["replication"] = cluster["stats"]
            result["membership"] = cluster["membership"]
            result["broadcast"] = cluster["broadcast"]
            result["large_mode"] = cluster["large_mode"]
            result["clock"]["skew_ns"] = {
                node_id: member.get("skew_ns")
                for node_id, member in cluster["members"].items()
                if member.get("connected")
            }
            for index, shard in enumerate(shards):
                shard["vv"] = cluster["vv"][index]
                shard["peers"] = {
                    node_id: (member.get("replication") or {}).get("shards", {}).get(index)
                    for node_id, member in cluster["members"].items()
                    if member.get("connected")
                }
        return result

    def _consensus_info(self) -> dict[str, Any]:
        """Linearizable operations (SPEC 13): voters, quorum, acceptor rows and what this node's
        proposer did (the cluster's counters, in the node process)."""
        config = self.config
        rows, ballot = Acceptor(self.store).counts()
        voters = config.voters
        info: dict[str, Any] = {
            "consistent_prefixes": list(config.consistent_prefixes),
            "role": config.role,
            "cluster_size": voters,
            "quorum": None if voters is None else voters // 2 + 1,
            "acceptor_rows": rows,
            "highest_promised_ballot": ballot,
        }
        if self.cluster is not None:
            info.update(self.cluster.call(self.cluster.consensus.info))
            info["cluster_size"] = voters
        return info

    # -- metrics -----------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """Counters and gauges an operator graphs, as a flat ``name -> number`` dict (names in
        Prometheus style). Cheap: no table scans, unlike :meth:`info`."""
        self.check_open()
        store = self.store
        m: dict[str, float] = {
            "ekv_local_writes_total": sum(shard.oseq for shard in store.shards),
            "ekv_reads_total": store.reads,
            "ekv_damaged_keys": sum(len(shard.damaged) for shard in store.shards),
            "ekv_gc_runs_total": self.gc_stats["runs"],
            "ekv_gc_expired_total": self.gc_stats["expired"],
            "ekv_gc_purged_total": self.gc_stats["purged"],
            "ekv_gc_log_truncated_total": self.gc_stats["log_truncated"],
            "ekv_subscriptions": len(self.registry.subscriptions()),
            "ekv_subscription_events_delivered_total": self.registry.delivered,
            "ekv_subscription_overflows_total": self.registry.overflows,
            "ekv_subscription_events_dropped_total": self.registry.dropped,
            "ekv_subscription_events_queued": sum(s.pending for s in self.registry.subscriptions()),
        }
        if self.cluster is not None:
            m.update(self.cluster.metrics())
        return m

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop background work, close subscriptions and storage. Idempotent and thread-safe."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _open_nodes.discard(self)
        for thread in (self._takeover_thread, self._gc_thread, self._checkpoint_thread):
            if thread is not None:
                thread.stop()
        if self.cluster is not None:
            try:
                self.cluster.stop()
            except Exception:
                self.log.error("stopping replication failed", exc_info=True)
        with self._gc_lock:
            self.registry.close_all()
            self.dispatcher.stop()
            self.store.close()
        self.role.close()
        self.log.info("closed %s", self.config.data_dir)
