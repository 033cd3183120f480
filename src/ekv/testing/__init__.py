"""Helpers for testing code that uses ekv, and for testing ekv itself.

The stable part, for your own tests (kept compatible like the rest of ekv's API):

* :class:`FakeClock`: a wall clock you move by hand, to test TTLs and GC without sleeping.
* :func:`run_gc`: run one garbage-collection pass now instead of waiting for ``gc_interval``.
* :func:`entries`: every stored entry of a store, tombstones included (a dump for checkers).
* :func:`partition`: cut a cluster of stores in this process into groups (and heal it).
* :func:`wait_until`: poll a condition with a deadline (never a fixed sleep).
* :func:`node_of`: the node behind a store (for tools that need its internals).
* :mod:`ekv.testing.sim`: the deterministic cluster simulator (``Simulation``): real cluster nodes, an
  in-memory network, virtual time.
* :mod:`ekv.testing.cluster`: clusters of real node processes (``ProcCluster``, ``NodeProcess``:
  kill, pause, partition), driving :mod:`ekv.testing.node` processes.
* :mod:`ekv.testing.proxy`: the loopback fault proxy that partitions node processes (used by
  ``ekv demo`` and the chaos harness).

The internal part, ekv's own verification tools (no compatibility promise; they change with
ekv's test suite): :mod:`ekv.testing._internal` holds the Jepsen-style chaos harness
(``python -m ekv.testing._internal.chaos``), the offline history checker
(``python -m ekv.testing._internal.checker``), the power-cut VFS
(``python -m ekv.testing._internal.powercut``) and the deliberate faults of the negative controls.

None of this is a hook inside ekv: partitions are made from outside (a wrapper installed on the
node's session set-up by :func:`partition`, or a real proxy), and ekv's production code has no
test-only switch, option or command. See docs/reliability.md.
"""

from ekv.testing._clock import FakeClock
from ekv.testing._hooks import entries, node_of, partition, run_gc, wait_until

__all__ = ["FakeClock", "entries", "node_of", "partition", "run_gc", "wait_until"]
