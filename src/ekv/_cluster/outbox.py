"""The outbox: local writes queued by writer threads for the network thread to send live.

Writer threads append each commit's entries (any thread); the network thread takes everything
queued at once (:meth:`Outbox.take`) and sends it in batches per shard. Waking the network
thread costs a system call and two GIL hand-offs (tens of µs here), more than the write itself,
so only the write that finds the outbox idle wakes it; while writes pour in, the network thread
drains on its own timer (see ``Driver._drain_outbox`` in driver.py).

The outbox is bounded (:data:`MAX_ENTRIES`, :data:`MAX_BYTES`): when the network thread falls
that far behind, every queued entry is dropped and counted (:attr:`Outbox.dropped`), and the
writer goes on: a writer never waits for the network. Nothing is lost: live replication is only
a shortcut. The dropped writes are in this node's change log; a member's vector advances only
through consecutive sequence numbers, so it stops at the first write it did not get, and its
next pull (within one ``anti_entropy_interval``) finds them and a sync delivers them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator

from ekv._model import Entry

__all__ = ["BUSY", "MAX_BYTES", "MAX_ENTRIES", "Outbox", "live_batches", "live_size"]

MAX_ENTRIES = 100_000
MAX_BYTES = 64 << 20
BUSY = 8  # commits queued at one drain: writes are pouring in
RATE_DRAINS = 4
RATE_WINDOW_S = 0.002
"""Also pouring in: :data:`RATE_DRAINS` drains with writes within :data:`RATE_WINDOW_S` (one
writer thread putting back to back wakes the network thread for every put otherwise, each drain
carrying one write: about a third of that thread's time went to the wake-ups and the GIL
hand-offs they cause). Sequential puts that each wait for something (a reply, a replication
round trip) come slower than that and keep the immediate wake-up."""
_LIVE_BATCH_BYTES = 1 << 20


def live_size(entry: Entry) -> int:
    """The bytes an entry takes in a Live message, near enough to batch and bound by."""
    return len(entry.key) + (len(entry.value) if entry.value is not None else 0) + 40


class Outbox:
    """Writes waiting for the network thread; thread-safe."""

    def __init__(self) -> None:
        self._queue: deque[tuple[int, list[Entry]]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._drains: deque[float] = deque(maxlen=RATE_DRAINS)
        self.entries = 0
        """Entries queued now."""
        self.bytes = 0
        """Their size (:func:`live_size`)."""
        self.dropped = 0
        """Entries dropped because the outbox passed its bound (anti-entropy sends them)."""

    def __len__(self) -> int:
        """Commits queued now."""
        return len(self._queue)

    def put(self, shard: int, entries: list[Entry]) -> bool:
        """Queue a commit's entries (dropping everything queued past the bound); True if the
        caller must wake the network thread (nobody is scheduled to drain)."""
        size = 0
        for entry in entries:
            size += live_size(entry)
        with self._lock:
            self._queue.append((shard, entries))
            self.entries += len(entries)
            self.bytes += size
            if self.entries > MAX_ENTRIES or self.bytes > MAX_BYTES:
                self.dropped += self.entries
                self._queue.clear()
                self.entries = self.bytes = 0
            if self._scheduled:
                return False
            self._scheduled = True
            return True

    def take(self, *, stopping: bool, now_s: float | None = None) -> tuple[list[tuple[int, list[Entry]]], bool]:
        """Everything queued, and whether writes are pouring in (then the caller drains again on
        its own timer and writers need not wake it: the outbox stays scheduled). ``now_s``: the
        caller's clock, for the drain rate (None: by count only)."""
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            self.entries = self.bytes = 0
            pouring = len(items) >= BUSY
            if items and now_s is not None:
                drains = self._drains
                drains.append(now_s)
                pouring = pouring or (len(drains) == RATE_DRAINS and now_s - drains[0] < RATE_WINDOW_S)
            busy = pouring and not stopping
            self._scheduled = busy
        return items, busy


def live_batches(items: list[tuple[int, list[Entry]]]) -> Iterator[tuple[int, list[Entry]]]:
    """``(shard, entries)`` batches to send as Live messages: per shard, in commit order, each
    about 1 MiB at most."""
    by_shard: dict[int, list[Entry]] = {}
    for shard, entries in items:
        by_shard.setdefault(shard, []).extend(entries)
    for shard, entries in by_shard.items():
        batch: list[Entry] = []
        size = 0
        for entry in entries:
            batch.append(entry)
            size += live_size(entry)
            if size >= _LIVE_BATCH_BYTES:
                yield shard, batch
                batch, size = [], 0
        if batch:
            yield shard, batch
