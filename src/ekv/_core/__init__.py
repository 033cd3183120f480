"""The pure, deterministic core of ekv.

Rule 1: nothing in this package does I/O, starts threads, sleeps or reads the wall clock by
itself. Time enters as an argument or through the injectable :class:`~ekv._core.clock.WallClock`.

Rule 2: every decision that replicas must agree on (which version wins, which shard owns a key,
when a tombstone may be purged) is made here, once, so that storage, replication and the
simulator all share one implementation.
"""
