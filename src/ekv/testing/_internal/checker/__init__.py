"""An offline checker for operation histories recorded against an ekv cluster (Jepsen style).

A harness runs real node processes, concurrent clients and a nemesis, and records what happened;
this module judges the record afterwards. It is pure and stdlib-only: no node, no network, no
clock; ``load_jsonl`` / ``dump_jsonl`` are its only I/O.

    verdict = check(load_jsonl("history.jsonl"))
    print(verdict.summary())
    for violation in verdict.violations:
        print(verdict.timeline(violation))

    python -m ekv.testing._internal.checker history.jsonl          # exits 1 if anything is violated

ekv is leaderless last-writer-wins, not linearizable: concurrent writes to one key are ordered
by their versions, not by real time, and a write that loses to a higher version is *superseded*,
not lost. Every check below is therefore stated in terms of the versions the store returned
(``(timestamp_ns, origin)``, compared as tuples), never as "the last write in real time wins".
The properties are those of ``reliability.md`` section 2 (P1-P10); each check is one
polynomial pass (group, then sort per key or per node).

History format
==============

One JSON object per line (``dump_jsonl`` writes it, ``load_jsonl`` reads it). Each object has a
``record`` field; it may be left out on operation records.

**Operation records** (``"record": "op"``), one at the start of an operation and one at its end:

    {"process": 7, "node": "n3", "type": "invoke", "f": "put", "key": "r17", "value": "p7-123",
     "time": 1200450000}
    {"process": 7, "node": "n3", "type": "ok", "f": "put", "key": "r17", "value": "p7-123",
     "version": [1795600068123456789, "3fa0c1d2e4b5a697"], "time": 1200980000}

* ``process``: the client (an int or a string). A process runs one operation at a time: its
  invoke is followed by exactly one completion before its next invoke.
* ``node``: the node the client sent the operation to (the same names as in the final states).
* ``proc`` (optional): the process of that node that served the operation, when a node is a
  group of processes on one data directory (the chaos harness's group mode); the node-clock
  check is then per process (each has its own hybrid clock), every other check per node.
* ``type``: ``invoke``, then ``ok`` (done), ``fail`` (*definitely* not applied, e.g. refused
  before anything was sent) or ``info`` (outcome unknown: a timeout, a dropped connection, the
  node died). An invoke without a completion counts as ``info``. A paused node answers queued
  requests after it resumes, so a timeout is never a ``fail``.
* ``f``: ``put``, ``delete`` or ``get``; ``key``: a string.
* ``value``: on a put, the value written; every put writes a globally unique value (such as
  ``"p7-123"``), so a value names its write. On a get's ``ok``, the value read, or ``null``.
  Values are compared as canonical JSON (use strings).
* ``version``: ``[timestamp_ns, origin]`` on ``ok`` puts and deletes (required), and on ``ok``
  gets that found a value. A get that found a tombstone may report it as ``value: null`` with
  the tombstone's version; a plain ``null`` without a version means "absent, version unknown".
* ``time``: the harness's monotonic clock in ns (shared by all clients and never skewed).
* ``error`` (optional): why an operation failed or is unknown; shown in timelines.
* ``ttl`` (optional, on a put's invoke): the put expires. Its key may then read as nothing, and
  an expired put legitimately leaves a tombstone carrying the put's own version.

**Final states** (``"record": "final"``), one per node, dumped after the final heal and
quiescence, tombstones included: ``{"record": "final", "node": "n1", "state": {KEY: [timestamp_ns,
origin, value_or_null, ...]}}``. A tombstone is ``value: null`` with its version. Extra trailing
fields (an expiry time, say) are compared by the convergence check and otherwise ignored.

**Restart states** (``"record": "restart"``), for the durability check: ``{"record": "restart",
"node": "n2", "kill_time": T, "state": {...}}``, the node's local state dumped right after it was
restarted following a kill at harness time ``T``, before it could sync with anyone.
When only one process of a node made of several was killed, the state is the node's, dumped by a
surviving process right after the kill (``"process"`` names the killed one): what the node
acknowledged before must be there all the same.

**Nemesis events** (``"record": "nemesis"``): ``{"time": T, "action": "partition", "detail": ...}``;
used only to draw timelines.

**Metadata** (``"record": "meta"``): free-form (seed, options), except ``converged_after_s``: the
time from the final heal until every node held the same digest, as measured by the harness.

Checks
======

``convergence`` (P1)
    Every node's final state is identical: per key the same version and value, a tombstone
    being a null value with its version and a missing row being different from a tombstone (run
    with a ``tombstone_ttl`` longer than the test). With ``max_convergence_s``, a
    ``converged_after_s`` above it is a violation too.

``lost_writes`` (P2)
    Per key, the highest-versioned ``ok`` write must survive on every node: the node holds a
    higher version, or exactly that write (same version, same value or tombstone). A lower
    version, a missing row, or another write under the same version is a loss. Lower ``ok``
    writes are superseded by it and are not losses: that is LWW by design (the Riak lesson), so
    only this is checked. For write-once keys (one put attempted, no delete) this is Jepsen's set
    check: the value must be on every node; the verdict's ``stats.write_once`` counts them
    (acknowledged, lost, recovered = an unknown-outcome put that is present everywhere).

``phantoms`` (P10)
    Every value read by an ``ok`` get, or present in a final or restart state, was written to
    that key by a put that did not fail (``ok`` or ``info``), with the version it is seen with:
    an ``ok`` put's value seen under another version is corruption, and so is an ``info`` put's
    value seen under two versions. A read that returns a value before its put was invoked is a
    phantom too. A tombstone must carry the version of a delete (or of a put with a ``ttl``,
    which is what an expiry leaves), unless a delete (or expiring put) of unknown outcome could
    have produced it.

``duplicate_versions`` (P3)
    No two operations are acknowledged with the same version, on any key (an ``info`` put whose
    value was seen under one version takes part with that version). The hybrid clock never
    issues a timestamp twice on a node, and origins differ between nodes.

``resurrection`` (P4)
    If the highest-versioned ``ok`` write of a key is a delete, no node may hold a value for it,
    unless that value comes from a put of unknown outcome (``info``) seen with a higher version:
    such a put may have taken effect, and then it rightly wins. A put with a higher version
    acknowledged later is the normal case and is not a resurrection (the delete is then not the
    highest ``ok`` write).

``session`` (P8)
    For each client and key at one node, in the client's order, ``ok`` operations only:
    *monotonic reads* (a read's version is never below an earlier read's),
    *read-your-writes* (a read's version is at least the client's last write's) and
    *monotonic writes* (the client's writes get strictly increasing versions). A read of
    ``null`` without a version counts as "nothing" (below every version) only for keys that
    nobody ever tried to delete (or to put with a ``ttl``); otherwise its version is unknown
    and it is not compared.
    A client that talks to several nodes is checked per node: a node's state for a key only
    moves forward, so the guarantees hold per (client, node, key).

``causal`` (P9, writes-follow-reads)
    A write acknowledged by a node must get a version above every version that node returned
    for the same key to a read that completed before the write was invoked: the hybrid clock
    moves past every version it applies, and a local write that would lose is re-stamped above
    the stored one, whatever the clock skew. This is what wall-clock timestamps fail under skew.
    The check covers every client of the node; ``detail.same_process`` tells the classic
    writes-follow-reads case (the writer had read the value itself) from the general one.

``durability`` (P6)
    For each restart state: every write the node acknowledged before the kill is still there,
    locally, with its version or a higher one (same rule as ``lost_writes``).

``node_clock`` (P3)
    A node's timestamps strictly increase in real time: a write acknowledged by a node gets a
    higher timestamp than every write that node acknowledged before it was invoked, on any key
    and across restarts (this is what caught EKV's same-node timestamp reuse). With ``proc`` on
    the operations: per process of the node instead.

Not checked here: stable convergence of reads during the run (reads may be stale by design),
availability (P13), resource bounds (P14), linearizability (LWW is not linearizable). For runs
where data loss is expected by design (power cuts with ``durability="normal"``), pass ``checks``
without ``durability``, ``session``, ``causal`` and ``node_clock``.

Package layout: ``history`` (the format, reading, writing and parsing), ``verdict`` (violations,
the verdict and its timelines), ``context`` (the indexes the checks share), ``checks_state`` and
``checks_order`` (the checks), ``run`` (:func:`check`) and ``cli`` (the command line).
"""

from ekv.testing._internal.checker.cli import main
from ekv.testing._internal.checker.history import History, HistoryError, Operation, Row, Version, dump_jsonl, load_jsonl
from ekv.testing._internal.checker.run import check
from ekv.testing._internal.checker.verdict import CHECKS, Verdict, Violation

__all__ = [
    "CHECKS",
    "History",
    "HistoryError",
    "Operation",
    "Row",
    "Verdict",
    "Version",
    "Violation",
    "check",
    "dump_jsonl",
    "load_jsonl",
    "main",
]
