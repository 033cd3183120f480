"""Test-only faults a node process injects into itself, to prove the history checker catches them.

Each fault below deliberately breaks one guarantee of ekv by monkeypatching it inside one node
process; ``tests/test_negative_controls.py`` runs a short scenario with and without the fault and
expects :mod:`ekv.testing._internal.checker` to report the violation only with it (a *negative control*: a
check that never fails proves nothing). Nothing here is used by ekv itself.

A node process applies the faults named (comma-separated) in the environment variable
``EKV_FAULTS`` when it starts, and shifts its wall clock by ``EKV_SKEW_NS`` nanoseconds. The hook
is a ``sitecustomize.py`` put first on the child's ``PYTHONPATH``, so neither ekv nor
``ekv.testing.node`` knows about it:

    from ekv.testing._internal import faults
    from ekv.testing.cluster import NodeProcess

    env = faults.node_env(faults.install(tmp_path / "hook"), faults=["wallclock"], skew_ns=5 * 10**9)
    node = NodeProcess("n0", tmp_path / "n0", env=env).start()

Faults (see each ``_fault_*`` function for the details):

``wallclock``
    Versions are stamped with the raw wall clock: the hybrid clock no longer moves past the
    timestamps it observes, and a local write that loses to a stored version is acknowledged
    anyway. Under skew, a write made after reading a version from a node whose clock runs ahead
    gets a lower version: ``causal`` (writes-follow-reads) must catch it.
``ack_before_commit``
    A put or delete returns its version before its transaction commits; the commit follows
    ``ACK_DELAY_S`` later. A ``kill -9`` right after an acknowledgement loses the write:
    ``durability`` must catch it (and ``lost_writes`` if no member had received it).
``drop_one_live``
    The first live replication message this node would send is dropped, and anti-entropy pulls
    are off (only the pulls at the start of a session remain). The receiver never gets that
    write while the session stays up: ``convergence`` must catch it (and ``lost_writes``).
``no_quarantine``
    The long-partition protections are off: members that come back after more than
    ``tombstone_ttl`` are not quarantined, and the stale-data check at start-up trusts any data
    directory. After a partition longer than ``tombstone_ttl`` the side that never saw a delete
    keeps (and serves) the deleted value: ``resurrection`` must catch it.
``paxos_no_quorum``
    Consensus rounds decide on one acceptor's answer instead of a majority's: the
    linearizability checker must catch it in a consistent chaos run with partitions.
``paxos_forget_promise``
    The acceptor's promises are not stored, only kept in memory: after a ``kill -9`` the
    restarted acceptor accepts ballots it had promised to refuse.

The wall-clock skew replaces ``time.time_ns`` and ``time.time`` with the real clock plus a fixed
offset (``time.monotonic*`` and sleeps are untouched), like a machine whose clock is set wrong.
ekv reads the wall clock only through ``time.time_ns`` (:class:`ekv._core.clock.SystemClock`), so
the skew reaches its hybrid clock, TTLs, GC and the quarantine timers.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ACK_DELAY_S",
    "APPLY_HOOK",
    "FAULTS",
    "FAULTS_ENV",
    "SKEW_ENV",
    "apply",
    "apply_from_env",
    "install",
    "node_env",
    "skew_wall_clock",
]

FAULTS_ENV = "EKV_FAULTS"
"""Comma-separated names of the faults a node process applies to itself at start-up."""
SKEW_ENV = "EKV_SKEW_NS"
"""A fixed offset in nanoseconds added to the process's wall clock (may be negative)."""
ACK_DELAY_S = 1.0
"""``ack_before_commit``: how long after the acknowledgement the write's commit happens."""

APPLY_HOOK = """\
    try:
        from ekv.testing._internal.faults import apply_from_env as _apply

        _apply()
    except BaseException as _exc:  # a fault that was asked for and not applied must not go unnoticed
        import sys as _sys

        _sys.stderr.write(f"ekv.testing._internal.faults: cannot apply the requested faults: {_exc!r}\\n")
        _sys.stderr.flush()
        _os._exit(3)
"""
"""The body of a ``sitecustomize`` condition that applies the faults of the environment (also
used by :mod:`ekv.testing._internal.chaos.skew`'s hook: one ``sitecustomize`` runs per process)."""

_SITECUSTOMIZE = (
    "# Written by ekv.testing._internal.faults: test-only fault injection (see that module).\n"
    "import os as _os\n\n"
    'if _os.environ.get("EKV_FAULTS") or _os.environ.get("EKV_SKEW_NS"):\n' + APPLY_HOOK
)

_applied: set[str] = set()
_lock = threading.Lock()


# -- installing the hook -----------------------------------------------------------------------------


def install(directory: Path) -> Path:
    """Write the start-up hook (``sitecustomize.py``) into ``directory`` (created) and return the
    directory, to be put first on a child's ``PYTHONPATH`` (see :func:`node_env`)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return directory


def node_env(hook_dir: Path, *, faults: Iterable[str] = (), skew_ns: int = 0) -> dict[str, str]:
    """The extra environment of a node process (``NodeProcess(env=...)``) that applies ``faults``
    and ``skew_ns`` at start-up through the hook installed in ``hook_dir``."""
    names = list(faults)
    unknown = sorted(set(names) - set(FAULTS))
    if unknown:
        raise ValueError(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    path = os.environ.get("PYTHONPATH")
    return {
        "PYTHONPATH": str(hook_dir) if not path else f"{hook_dir}{os.pathsep}{path}",
        FAULTS_ENV: ",".join(names),
        SKEW_ENV: str(int(skew_ns)),
    }


def apply_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Apply the skew in ``EKV_SKEW_NS`` and the faults named in ``EKV_FAULTS`` to this process;
    return the names of the faults applied. Raises ``ValueError`` for an unknown name."""
    env = os.environ if environ is None else environ
    skew = int(env.get(SKEW_ENV, "0") or 0)
    if skew:
        skew_wall_clock(skew)
    names = [name.strip() for name in env.get(FAULTS_ENV, "").split(",") if name.strip()]
    for name in names:
        apply(name)
    return names


def apply(name: str) -> None:
    """Apply one fault to this process (idempotent)."""
    fault = FAULTS.get(name)
    if fault is None:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
    with _lock:
        if name in _applied:
            return
        fault()
        _applied.add(name)
    sys.stderr.write(f"ekv.testing._internal.faults: applied {name} in pid {os.getpid()}\n")


# -- wall-clock skew -------------------------------------------------------------------------------


def skew_wall_clock(offset_ns: int) -> None:
    """Add ``offset_ns`` to ``time.time_ns()`` and ``time.time()`` in this process, for good
    (monotonic clocks untouched). ekv's :class:`~ekv._core.clock.SystemClock` looks
    ``time.time_ns`` up at every call, so stores opened before or after see the skew."""
    real_ns = time.time_ns

    def time_ns() -> int:
        return real_ns() + offset_ns

    def time_s() -> float:
        return (real_ns() + offset_ns) / 1e9

    time.time_ns = time_ns
    time.time = time_s


# -- the faults --------------------------------------------------------------------------------------


def _fault_wallclock() -> None:
    """Stamp versions with the raw wall clock instead of the hybrid logical clock.

    Breaks: ``HybridClock.observe`` does nothing, so ``tick()`` is ``max(wall, last local
    tick + 1)``: still increasing on this node, but no longer above the versions it applied
    from members whose clocks run ahead. And a local write that then loses last-writer-wins
    against the stored version is not re-stamped above it (the overtake of
    ``Shard._write_local``): it is acknowledged with its lower version and changes nothing,
    as in a store that trusts wall clocks.

    Caught by: ``causal`` (P9, writes-follow-reads): a node acknowledges a write with a version
    below one it returned to a read that completed before the write was invoked.
    """
    from ekv._core.clock import HybridClock
    from ekv._storage.shard import Shard

    issued = threading.local()  # the last timestamp this thread was issued

    def tick(self: HybridClock) -> int:
        with self._lock:
            now = self._wall()
            last = self.last_ns + 1
            if now > last:
                last = now
            self.last_ns = last
        issued.ts = last
        return last

    def observe(self: HybridClock, timestamp_ns: int) -> None:
        return None

    def overtake_lost(self: Shard, cur: Any, batch: list[Any]) -> None:
        return None  # the losing writes keep the (lower) versions they were stamped with

    def overtake(self: Shard, cur: Any, op: Any, oseq: int) -> int:
        # The losing timestamp: the one this thread was just issued for this write.
        ts: int = issued.ts
        return ts

    HybridClock.tick = tick  # type: ignore[method-assign]
    HybridClock.observe = observe  # type: ignore[method-assign]
    Shard._overtake_lost = overtake_lost  # type: ignore[method-assign]
    Shard._overtake = overtake  # type: ignore[method-assign]


def _fault_ack_before_commit() -> None:
    """Acknowledge local puts and deletes before their transaction commits.

    Breaks: ``Shard.write`` (what ``put``/``delete`` end in) runs the write on a background
    thread and returns as soon as the write has its version, inside a transaction that is still
    open; the thread commits it ``ACK_DELAY_S`` later, holding the shard's group-commit mutex
    meanwhile (so the next write to that shard is acknowledged only after this one committed:
    at most the latest acknowledged write of each shard is uncommitted). A ``kill -9`` in that
    window loses acknowledged writes. Their live replication messages may still go out (they
    are queued before the commit), so members may hold a write the writer itself lost. Writes
    committed together with replicated entries (the mixed path) are not deferred. (ekv has one
    group-commit queue per shard, although ``ekv._storage.commit`` describes a node-wide one.)

    Caught by: ``durability`` (P6): the write is missing from the node's state dumped right after
    the restart. ``lost_writes`` (P2) too when no member received it.
    """
    from ekv._model import Version
    from ekv._storage.commit import Write
    from ekv._storage.shard import Shard

    original_commit_group = Shard._commit_group
    pending: dict[int, threading.Event] = {}  # id(op) -> set once the op has its version (or error)

    def write(self: Shard, key: str, blob: bytes | None, expires_at: int | None) -> Version:
        op = Write(self, key, blob, expires_at)
        acked = threading.Event()
        pending[id(op)] = acked

        def run() -> None:
            try:
                self._committer.submit(op)
            except BaseException as exc:
                op.error = exc
            finally:
                pending.pop(id(op), None)
                acked.set()

        threading.Thread(target=run, name="ekv-fault-deferred-commit", daemon=True).start()
        acked.wait()
        if op.error is not None:
            raise op.error
        version = op.version
        assert version is not None
        return version

    def commit_group(self: Shard, batch: list[Any], fast: bool) -> None:
        ours = [pending[id(op)] for op in batch if id(op) in pending]
        if not ours or not all(type(op) is Write for op in batch):
            original_commit_group(self, batch, fast)
            return
        cur = self._cur
        cur.execute("BEGIN")
        original_commit_group(self, batch, fast)  # the upsert runs inside our transaction
        failed = any(op.error is not None for op in batch)
        for acked in ours:
            acked.set()  # acknowledged: the caller returns the version now
        if not failed:
            time.sleep(ACK_DELAY_S)
        try:
            cur.execute("ROLLBACK" if failed else "COMMIT")
        except Exception as exc:  # too late to tell the caller: it already has its version
            sys.stderr.write(f"ekv.testing._internal.faults: deferred commit failed: {exc!r}\n")

    Shard.write = write  # type: ignore[method-assign]
    Shard._commit_group = commit_group  # type: ignore[method-assign]


def _fault_drop_one_live() -> None:
    """Drop the first live replication message, with anti-entropy off.

    Breaks: the first time ``Replicator.on_local_writes`` would send this node's committed
    writes to its connected members, it sends nothing (a message lost on a connection that stays
    up), and the periodic anti-entropy pulls that would repair that are never scheduled (the
    pulls at the start of each session still run, so a reconnection would repair it). The
    drop is counted in ``info()["replication"]["fault_live_dropped"]``.

    Caught by: ``convergence`` (P1): the members that missed the message never get the write
    (and ``lost_writes``, P2: the acknowledged write is missing there).
    """
    from ekv._cluster.replicator import Replicator
    from ekv._model import Entry

    original_init = Replicator.__init__
    original_on_local_writes = Replicator.on_local_writes
    budget = [1]

    def init(self: Replicator, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.stats["fault_live_dropped"] = 0

    def no_periodic_pull(self: Replicator, *args: Any) -> None:
        pass  # anti-entropy off: the next pull of a shard is never scheduled

    def on_local_writes(self: Replicator, shard: int, entries: list[Entry]) -> None:
        receivers = [peer for peer, state in self.peers.items() if not state.quarantined]
        if entries and receivers and budget[0] > 0:
            budget[0] -= 1
            self.stats["fault_live_dropped"] = self.stats.get("fault_live_dropped", 0) + len(entries)
            return
        original_on_local_writes(self, shard, entries)

    Replicator.__init__ = init  # type: ignore[method-assign]
    Replicator.on_local_writes = on_local_writes  # type: ignore[method-assign]
    Replicator._schedule_pull = no_periodic_pull  # type: ignore[method-assign,assignment]


def _fault_no_quarantine() -> None:
    """Turn off the protections against partitions and downtime longer than ``tombstone_ttl``.

    Breaks: the replicator's ``quarantine`` setting is forced off (members that come back after
    more than ``tombstone_ttl`` sync as if nothing happened, as with ``quarantine=False``), and
    the stale-data check at start-up (``ekv._node.node.is_stale``) always says "fresh". A member
    that was cut off while a key was deleted, and whose peer has since purged the tombstone,
    keeps the deleted value, serves it, and would hand it back in any full sync.

    Caught by: ``resurrection`` (P4): a key whose highest acknowledged write is a delete holds a
    value on a node after the heal.
    """
    from ekv._cluster.replicator import Replicator
    from ekv._node import node as node_module

    original_init = Replicator.__init__

    def init(self: Replicator, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.settings = dataclasses.replace(self.settings, quarantine=False)

    def is_stale(now_ns: int, last_active_at_ns: int | None, tombstone_ttl_ns: int, gc_interval_ns: int) -> bool:
        return False

    Replicator.__init__ = init  # type: ignore[method-assign]
    node_module.is_stale = is_stale  # type: ignore[attr-defined]


def _fault_paxos_no_quorum() -> None:
    """Every consensus round needs one answer instead of a majority.

    Breaks: ``quorum_of`` (as :mod:`ekv._cluster.consensus` uses it) returns 1, so a proposer
    decides on its own acceptor's promise and accept alone (it answers first). A proposer on
    each side of a partition (or merely two proposers racing) each read and write their own
    acceptor's state: a consistent read misses a write acknowledged on the other side, two
    ``if_absent`` puts both succeed, two clients hold the lock at once.

    Caught by: :func:`~ekv.testing._internal.checker.linear.check_linearizable` in a consistent
    chaos run (``RunOptions(consistent=True)``): ``not_linearizable``, ``overlap`` and kin.
    """
    from ekv._cluster import consensus

    consensus.quorum_of = lambda cluster_size: 1  # type: ignore[attr-defined]


def _fault_paxos_forget_promise() -> None:
    """The acceptor keeps its promises in memory only, not in its SQLite row.

    Breaks: ``prepare`` grants as before but does not store the promise; a dict of this process
    remembers it (so a running acceptor behaves), and a ``kill -9`` forgets it. After the
    restart the acceptor accepts a lower ballot it had promised not to, so two proposers can
    both have their accepts chosen: a value chosen by one is overwritten by a proposer that had
    read the state before it, without seeing it.

    Caught by (with kills among the faults, and luck in the timing: soak only): the
    linearizability checker (``not_linearizable``).
    """
    from ekv._core.paxos import ZERO, Ballot, Promise, prepare_granted
    from ekv._storage import acceptor

    promises: dict[tuple[str, str], Any] = {}
    original_load = acceptor.load

    def load(cur: Any, key: str, path: str) -> Any:
        row = original_load(cur, key, path)
        held = promises.get((path, key))
        if held is not None and held > row.promised:
            row = row._replace(promised=held)
        return row

    def prepare(cur: Any, key: str, ballot: Any, damaged: Any, path: str) -> Any:
        row = load(cur, key, path)
        floor = acceptor._floor(cur)
        if not prepare_granted(row.promised, floor, row.exists, ballot):
            return Promise(False, max(row.promised, Ballot(floor, "")))
        promises[(path, key)] = ballot  # not durable: the fault
        if row.accepted == ZERO:
            return Promise(True, ballot, ZERO, acceptor.committed(cur, key, damaged, path))
        return Promise(True, ballot, row.accepted, row.record)

    acceptor.load = load
    acceptor.prepare = prepare


FAULTS: dict[str, Callable[[], None]] = {
    "wallclock": _fault_wallclock,
    "ack_before_commit": _fault_ack_before_commit,
    "drop_one_live": _fault_drop_one_live,
    "no_quarantine": _fault_no_quarantine,
    "paxos_no_quorum": _fault_paxos_no_quorum,
    "paxos_forget_promise": _fault_paxos_forget_promise,
}
"""Every fault by name; the function applies it to the current process."""
