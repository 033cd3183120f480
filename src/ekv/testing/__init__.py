"""Helpers for testing code that uses ekv, and for testing ekv itself.

* :class:`FakeClock`: a wall clock you move by hand, to test TTLs and GC without sleeping.
* :func:`run_gc`: run one garbage-collection pass now instead of waiting for ``gc_interval``.
* :func:`entries`: every stored entry of a store, tombstones included (a dump for checkers).
* :func:`partition`: cut a cluster of stores in this process into groups (and heal it).
* :func:`wait_until`: poll a condition with a deadline (never a fixed sleep).
* :mod:`ekv.testing.sim`: the deterministic cluster simulator.
* :mod:`ekv.testing.cluster`: clusters of real node processes (kill, pause, partition).
* :mod:`ekv.testing.chaos`: the Jepsen-style harness (``python -m ekv.testing.chaos``), and
  :mod:`ekv.testing.checker`, the offline checker of the histories it records.
* :mod:`ekv.testing.powercut`: run a process whose un-fsynced writes a SIGKILL loses.
* :mod:`ekv.testing.faults`: deliberate bugs for negative controls.

See docs/reliability.md.
"""

from ekv.testing._clock import FakeClock
from ekv.testing._hooks import entries, node_of, partition, run_gc, wait_until

__all__ = ["FakeClock", "entries", "node_of", "partition", "run_gc", "wait_until"]
