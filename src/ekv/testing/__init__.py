"""Helpers for testing code that uses ekv, and for testing ekv itself.

* :class:`FakeClock`: a wall clock you move by hand, to test TTLs and GC without sleeping.
* :func:`run_gc`: run one garbage-collection pass now instead of waiting for ``gc_interval``.
* :func:`entries`: every stored entry of a store, tombstones included (a dump for checkers).
"""

from ekv.testing._clock import FakeClock
from ekv.testing._hooks import entries, node_of, run_gc

__all__ = ["FakeClock", "entries", "node_of", "run_gc"]
