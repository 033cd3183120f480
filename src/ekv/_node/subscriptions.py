"""Subscriptions: who wants which keys, and the bounded queues events wait in.

Matching follows the original library: ``""`` matches every key, a pattern ending in ``"/"``
matches every key under it, any other pattern matches exactly one key. A subscription may hold
several patterns and receives each event once, however many of its patterns match.

Events are produced by the thread that committed the write (or ran GC) and are pushed into each
matching subscription's queue without waiting: writers are never slowed by a slow consumer. Each
queue is bounded in *events*; when a push would exceed the bound, the subscription's overflow
policy decides:

``"error"`` (default)
    The subscription stops receiving. The consumer first gets every event queued before the
    overflow, then :class:`~ekv.SubscriptionOverflow`; it should re-subscribe and re-read.
``"drop_oldest"``
    The oldest queued events are discarded to make room; ``sub.dropped`` counts them.
``"drop_newest"``
    The new events are discarded; ``sub.dropped`` counts them.

Overflows and dropped events are counted in ``info()["subscriptions"]``.

Three consumer styles share one queue implementation: blocking (:class:`Subscription`, iterate
or ``get(timeout)``), asyncio (:class:`AsyncSubscription`, ``async for``) and callbacks (run on
one dispatcher thread per store so a slow callback cannot block a writer).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ekv._core.keys import subscription_candidates
from ekv._errors import ClosedError, SubscriptionClosed, SubscriptionOverflow, Timeout
from ekv._log import NodeLog
from ekv._model import Event
from ekv._storage.shard import RawEvent

__all__ = ["AsyncSubscription", "CallbackSubscription", "Registry", "Subscription"]


class Registry:
    """The subscriptions of one store, indexed by pattern. Implements the shards' EventSink.

    Lookups happen on every write while subscriptions exist, so the index is copy-on-write: a
    writer reads ``self._index`` without a lock, and (un)subscribing swaps in a new dict.
    """

    def __init__(self, loads: Callable[[bytes], Any], log: NodeLog) -> None:
        self._loads = loads
        self.log = log
        self._index: dict[str, tuple[BaseSubscription, ...]] = {}
        self._lock = threading.Lock()
        self.active = False
        self.overflows = 0
        self.dropped = 0
        self.delivered = 0
        self.on_change: Callable[[], None] | None = None
        """Called after the set of patterns changed (the local bus tells the other processes
        of the data directory what this one watches)."""

    # -- membership --------------------------------------------------------------------------

    def add(self, sub: BaseSubscription, patterns: Iterable[str]) -> None:
        with self._lock:
            index = dict(self._index)
            for pattern in patterns:
                current = index.get(pattern, ())
                if sub not in current:
                    index[pattern] = (*current, sub)
            changed = index.keys() != self._index.keys()
            self._index = index
            self.active = bool(index)
        if changed:
            self._changed()

    def remove(self, sub: BaseSubscription, patterns: Iterable[str] | None = None) -> None:
        with self._lock:
            index = dict(self._index)
            for pattern in list(index) if patterns is None else patterns:
                current = index.get(pattern, ())
                if sub in current:
                    rest = tuple(s for s in current if s is not sub)
                    if rest:
                        index[pattern] = rest
                    else:
                        del index[pattern]
            changed = index.keys() != self._index.keys()
            self._index = index
            self.active = bool(index)
        if changed:
            self._changed()

    def _changed(self) -> None:
        hook = self.on_change
        if hook is not None:
            try:
                hook()
            except Exception:
                self.log.error("announcing subscription patterns failed", exc_info=True)

    def patterns(self) -> frozenset[str]:
        """The patterns subscribed to in this store."""
        return frozenset(self._index)

    def subscriptions(self) -> list[BaseSubscription]:
        seen: dict[int, BaseSubscription] = {}
        for subs in self._index.values():
            for sub in subs:
                seen[id(sub)] = sub
        return list(seen.values())

    # -- EventSink ---------------------------------------------------------------------------

    def matches(self, key: str) -> bool:
        index = self._index
        if "" in index:
            return True
        return any(candidate in index for candidate in subscription_candidates(key))

    def publish(self, events: list[RawEvent]) -> None:
        """Decode each event once and push one batch per matching subscription."""
        index = self._index
        if not index:
            return
        batches: dict[BaseSubscription, list[Event]] = {}
        for kind, key, blob, version in events:
            targets: dict[BaseSubscription, None] = {}
            for candidate in subscription_candidates(key):
                for sub in index.get(candidate, ()):
                    targets[sub] = None
            if not targets:
                continue
            event = Event(kind, key, self._decode(blob, key), version)  # type: ignore[arg-type]
            for sub in targets:
                batch = batches.get(sub)
                if batch is None:
                    batches[sub] = [event]
                else:
                    batch.append(event)
        for sub, batch in batches.items():
            sub._push(batch)

    def _decode(self, blob: bytes | None, key: str) -> Any:
        if blob is None:
            return None
        try:
            return self._loads(blob)
        except Exception as exc:
            self.log.warning("cannot decode the value of %r for an event (%s); delivering None", key, exc)
            return None

    def close_all(self) -> None:
        for sub in self.subscriptions():
            sub._close(SubscriptionClosed("the store was closed"))


class BaseSubscription:
    """A bounded queue of event batches fed by writer threads."""

    def __init__(
        self,
        registry: Registry,
        patterns: list[str],
        *,
        max_queue: int,
        overflow: str,
        owner: Any = None,
    ) -> None:
        self._registry = registry
        self.patterns: list[str] = list(dict.fromkeys(patterns))
        self.max_queue = max_queue
        self.overflow = overflow
        self.owner = owner
        self._lock = threading.Lock()
        self._batches: deque[list[Event]] = deque()
        self._queued = 0
        self._closed: ClosedError | None = None
        self._discard_queue = False
        self.dropped = 0
        """Events discarded by a ``drop_oldest`` / ``drop_newest`` overflow policy."""

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._queued} queued"
        return f"<{type(self).__name__} {self.patterns!r} {state}>"

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def pending(self) -> int:
        """Events queued and not yet consumed."""
        return self._queued

    # -- producer side (writer threads) ------------------------------------------------------

    def _push(self, events: list[Event]) -> None:
        with self._lock:
            if self._closed is not None:
                return
            if self._queued + len(events) > self.max_queue and not self._make_room(events):
                # Dropped (drop_newest) or overflowed (error): only an overflow wakes the
                # consumer, which must learn that the subscription ended.
                wake = self._closed is not None
            else:
                self._batches.append(events)
                self._queued += len(events)
                self._registry.delivered += len(events)
                wake = self._queued == len(events)  # the queue was empty: a consumer may wait
        if wake:
            self._wake()  # never with self._lock held: a Condition shares that lock

    def _make_room(self, events: list[Event]) -> bool:
        """Apply the overflow policy with ``self._lock`` held. False: nothing to enqueue."""
        registry = self._registry
        count = len(events)
        if self.overflow == "drop_newest":
            self.dropped += count
            registry.dropped += count
            return False
        if self.overflow == "drop_oldest":
            if count > self.max_queue:
                excess = count - self.max_queue
                del events[:excess]
                self.dropped += excess
                registry.dropped += excess
                count = len(events)
            while self._batches and self._queued + count > self.max_queue:
                old = self._batches[0]
                need = self._queued + count - self.max_queue
                if len(old) <= need:
                    self._batches.popleft()
                    removed = len(old)
                else:
                    del old[:need]
                    removed = need
                self._queued -= removed
                self.dropped += removed
                registry.dropped += removed
            return True
        registry.overflows += 1
        self._closed = SubscriptionOverflow(
            f"subscription {self.patterns!r} overflowed its queue of {self.max_queue} events; "
            "events after the overflow were not delivered: re-subscribe and re-read the keys"
        )
        registry.remove(self)  # lock order: subscription, then registry (never the reverse)
        registry.log.warning("subscriber %r overflowed (%d events queued); it was closed", self.patterns, self._queued)
        return False

    def _wake(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop this subscription; queued events are discarded. Idempotent."""
        self._close(SubscriptionClosed("the subscription was closed"), discard=True)

    def _close(self, reason: ClosedError, discard: bool = False) -> None:
        with self._lock:
            if self._closed is None:
                self._closed = reason
            if discard:
                self._batches.clear()
                self._queued = 0
        self._registry.remove(self)
        self._wake()

    def _remove_pattern(self, pattern: str) -> None:
        """Stop matching ``pattern``; close the subscription when no pattern is left."""
        if pattern in self.patterns:
            self.patterns.remove(pattern)
            self._registry.remove(self, [pattern])
        if not self.patterns:
            self._close(SubscriptionClosed(f"unsubscribed from {pattern!r}"), discard=True)

    def _pop(self) -> list[Event] | None:
        """The next batch, or None (caller holds no lock)."""
        with self._lock:
            if not self._batches:
                return None
            batch = self._batches.popleft()
            self._queued -= len(batch)
            return batch


class Subscription(BaseSubscription):
    """A blocking subscription. Iterate it (``for batch in sub``) to receive lists of
    :class:`~ekv.Event`, or call :meth:`get`.

    Iteration ends when the subscription is closed normally and raises
    :class:`~ekv.SubscriptionOverflow` if it overflowed with ``overflow="error"``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cond = threading.Condition(self._lock)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> list[Event]:
        """The next batch of events.

        Raises:
            ekv.Timeout: (a ``TimeoutError``) nothing arrived within ``timeout`` seconds.
            ekv.SubscriptionClosed: the subscription is closed (after its queue is drained,
                ``SubscriptionOverflow`` if it overflowed).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._batches:
                if self._closed is not None:
                    raise type(self._closed)(*self._closed.args)
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if (remaining <= 0 or not self._cond.wait(remaining)) and not self._batches:
                        if self._closed is not None:
                            raise type(self._closed)(*self._closed.args)
                        raise Timeout(f"no event within {timeout} s")
            batch = self._batches.popleft()
            self._queued -= len(batch)
            return batch

    def __iter__(self) -> Iterator[list[Event]]:
        return self

    def __next__(self) -> list[Event]:
        try:
            return self.get()
        except SubscriptionOverflow:
            raise
        except SubscriptionClosed:
            raise StopIteration from None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSubscription(BaseSubscription):
    """An asyncio subscription: ``async for batch in sub`` or ``await sub.get(timeout)``.

    Writer threads hand it events with ``loop.call_soon_threadsafe`` (only when the queue goes
    from empty to non-empty), so the event loop is never blocked.
    """

    def __init__(self, *args: Any, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop = loop
        self._ready = asyncio.Event()

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed: nobody can consume any more
            with self._lock:
                if self._closed is None:
                    self._closed = SubscriptionClosed("the event loop of this subscription is closed")

    async def get(self, timeout: float | None = None) -> list[Event]:
        """The next batch of events; raises :class:`ekv.Timeout` or a closed error."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while True:
            batch = self._pop()
            if batch is not None:
                return batch
            if self._closed is not None:
                raise type(self._closed)(*self._closed.args)
            self._ready.clear()
            if self._batches or self._closed is not None:
                continue
            if deadline is None:
                await self._ready.wait()
            else:
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    raise Timeout(f"no event within {timeout} s")
                try:
                    await asyncio.wait_for(self._ready.wait(), remaining)
                except TimeoutError:
                    if not self._batches and self._closed is None:
                        raise Timeout(f"no event within {timeout} s") from None

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> list[Event]:
        try:
            return await self.get()
        except SubscriptionOverflow:
            raise
        except SubscriptionClosed:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class CallbackSubscription(BaseSubscription):
    """Calls ``callback(events)`` on the store's dispatcher thread for every batch."""

    def __init__(
        self, *args: Any, callback: Callable[[list[Event]], Any], dispatcher: Dispatcher, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.callback = callback
        self._dispatcher = dispatcher

    def _wake(self) -> None:
        self._dispatcher.notify(self)


class Dispatcher:
    """One thread per store that runs subscription callbacks, in order per subscription."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._ready: deque[CallbackSubscription] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def notify(self, sub: CallbackSubscription) -> None:
        with self._cond:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name=f"ekv-callbacks-{self._name}", daemon=True)
                self._thread.start()
            self._ready.append(sub)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._stopping:
                    self._cond.wait()
                if not self._ready:
                    return
                sub = self._ready.popleft()
            while (batch := sub._pop()) is not None:
                try:
                    sub.callback(batch)
                except Exception:
                    sub._registry.log.error("subscription callback %r raised", sub.callback, exc_info=True)

    def stop(self, timeout: float = 10.0) -> None:
        """Run the callbacks still queued, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
