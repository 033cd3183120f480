"""Durations given by users (seconds as int/float, or ``datetime.timedelta``) and the GC and
expiry arithmetic built on them. Pure functions, no clock reads."""

from __future__ import annotations

import math
from datetime import timedelta

from ekv._errors import InvalidArgument, InvalidArgumentType

__all__ = [
    "NS_PER_S",
    "duration_ns",
    "expires_at_ns",
    "is_stale",
    "tombstone_cutoff_ns",
]

NS_PER_S = 1_000_000_000

_MAX_NS = 2**62  # keeps every sum of a timestamp and a duration inside SQLite's int64


def duration_ns(value: object, what: str, *, error: type[InvalidArgument] = InvalidArgument) -> int:
    """Convert a positive duration to nanoseconds.

    Accepts an ``int`` or ``float`` number of seconds or a ``timedelta``. Booleans, NaN,
    infinities, zero and negative values are rejected, naming ``what``.
    """
    if isinstance(value, timedelta):
        seconds: float = value.total_seconds()
        ns = (value.days * 86_400 + value.seconds) * NS_PER_S + value.microseconds * 1_000
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentType(
            f"{what} must be a number of seconds or a datetime.timedelta, not {type(value).__name__}: {value!r:.80}"
        )
    else:
        seconds = float(value)
        if math.isnan(seconds) or math.isinf(seconds):
            raise error(f"{what} must be a finite number of seconds, got {value!r}")
        if seconds > _MAX_NS / NS_PER_S:
            raise error(f"{what} is too large: {value!r}")
        ns = value * NS_PER_S if isinstance(value, int) else round(value * NS_PER_S)
    if seconds <= 0 or ns <= 0:
        raise error(f"{what} must be greater than zero, got {value!r}")
    if ns > _MAX_NS:
        raise error(f"{what} is too large: {value!r}")
    return int(ns)


def expires_at_ns(now_ns: int, ttl_ns: int) -> int:
    """The absolute expiry time of a put made at wall time ``now_ns`` with a TTL."""
    return now_ns + ttl_ns


def tombstone_cutoff_ns(now_ns: int, tombstone_ttl_ns: int) -> int:
    """Tombstones that died before this wall time may be purged."""
    return now_ns - tombstone_ttl_ns


def is_stale(now_ns: int, last_active_at_ns: int | None, tombstone_ttl_ns: int, gc_interval_ns: int) -> bool:
    """True if a data directory last active at ``last_active_at_ns`` is too old to rejoin a
    cluster with its data.

    ``last_active_at`` is refreshed on open, on every GC tick and on close, so it can lag real
    activity by up to one GC interval; the threshold subtracts that interval to stay on the safe
    side (peers may already have purged tombstones of deletes this node never saw). A directory
    that never recorded activity counts as stale.
    """
    if last_active_at_ns is None:
        return True
    return now_ns - last_active_at_ns > tombstone_ttl_ns - gc_interval_ns
