"""``ekv.AsyncEKV``: the asyncio facade.

The same operations as :class:`ekv.EKV`, as coroutines; subscriptions are async iterators fed
with ``call_soon_threadsafe``.

Where a call runs (issue 13; SPEC 1: nothing blocks the loop for more than a few milliseconds): a
hop to a thread and back costs about 100 µs on these machines, twenty times a point read (about
5 µs). So ``get``, ``lookup``, ``contains``, ``put`` and ``delete`` first try to finish on the
loop itself, through the value layer's ``*_nowait`` operations, which do only what is bounded to
microseconds and hand back an ``ekv._values.Pending`` for the rest, finished in the pool:

* reads: a point read through this thread's reader connections (WAL readers never wait for the
  writer) of a value up to ``NOWAIT_VALUE_MAX`` (64 KiB) bytes; a longer one, a linearizable read
  (the network) or a thread without reader connections yet (opening them takes milliseconds: they
  are opened in the pool and adopted by the loop's thread for its next reads) go to the pool;
* writes: a plain put or delete of a short value that commits at once: not with
  ``durability="full"`` (an fsync per commit: the whole call, codec included, goes to the pool),
  not a linearizable write, not when another thread of this process is committing to the shard
  (a group commit, a ``put_many``, GC: the loop never waits for it nor serves its writes), not
  when another process holds the shard's SQLite write lock (the statement fails at once instead
  of sleeping in the busy handler, and the pool retries it);
* a store that is not open yet, or was inherited through ``fork()``, opens in the pool.

The codec runs on the loop for what runs there: a custom codec should be fast on short values.
Everything else (scans, batches, iteration pages, info, locks, opening and closing) runs in the
pool.

The operations that only forward one call (put, get, scan, info, ...) are generated from
:class:`ekv.EKV`'s by ``python3 scripts/gen_facades.py``, between its markers below: edit EKV and
regenerate. What differs by more than where it runs (opening, closing, iterators, subscribe) is
written by hand here.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar, Unpack

from ekv._config import Config, OverflowPolicy, check_positive_int
from ekv._errors import ClosedError, LockError
from ekv._linear import Lock
from ekv._memo import Memo
from ekv._model import Version
from ekv._node.node import Node
from ekv._node.subscriptions import AsyncSubscription
from ekv._options import DEFAULTS, AsyncOptions, Seconds
from ekv._values import Pending

__all__ = ["AsyncEKV"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_ITER_CHUNK = 256
MAX_WORKERS = 256
"""Upper bound of ``workers``: SQLite serialises the writes of a shard, so more threads only wait."""


_stores: weakref.WeakSet[AsyncEKV] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The thread pool's threads do not exist in a child made by fork() (and it would not start
    # new ones: it counts them idle). A store opened in the parent reopens on its first use in
    # the child (Node._revive_in_child) through a new pool.
    for kv in list(_stores):
        kv._executor = ThreadPoolExecutor(max_workers=kv._pool_size, thread_name_prefix=f"ekv-{kv.name}")
        if kv._opening is not None and not kv._opening.done():
            kv._opening = None  # an open in flight in the parent: open again in the child


os.register_at_fork(after_in_child=_after_fork_in_child)


class AsyncEKV:
    """The asyncio facade of an ekv store. Options are those of :class:`ekv.EKV`, and ``workers``.

    ::

        async with ekv.AsyncEKV("my_kv", data_dir="data/ekv/my_kv") as kv:
            await kv.put("user/1", {"name": "Alice"})
            async for batch in await kv.subscribe("user/"):
                ...

    The store opens on ``async with`` or ``await kv.open()`` (or on first use); the constructor
    only validates options. ``workers`` (1-256) bounds the thread pool that runs the storage calls
    that may take long or wait; a point read or write that can finish at once runs on the loop.

    AsyncEKV is not a :class:`collections.abc.MutableMapping` (``kv[key]``, ``len(kv)`` and
    ``key in kv`` cannot be awaited); the mapping operations have async forms instead:
    ``await kv.count(prefix)``, ``await kv.contains(key)``, ``await kv.keys()/values()/items()``
    (lists, optional prefix), ``await kv.update()/setdefault()/pop()/popitem()/clear()``, and
    ``async for key in kv``.
    """

    def __init__(self, name: str, data_dir: str | PathLike[str], **options: Unpack[AsyncOptions]) -> None:
        pool_size = check_positive_int(options.pop("workers", DEFAULTS["workers"]), "workers", maximum=MAX_WORKERS)
        self._config = Config.create(name, data_dir, **options)
        self._node: Node | None = None
        self._pool_size = pool_size
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix=f"ekv-{name}")
        self._opening: asyncio.Future[Node] | None = None
        self._closed = False
        _stores.add(self)

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def data_dir(self) -> Path:
        return self._config.data_dir

    @property
    def node_id(self) -> str:
        """This node's identity (available once open)."""
        if self._node is None:
            raise ClosedError("the store is not open yet; await kv.open() first")
        return self._node.node_id

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._node else "not opened")
        return f"<ekv.AsyncEKV {self.name!r} at {str(self.data_dir)!r} ({state})>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> AsyncEKV:
        """Open the data directory (in the thread pool). Idempotent."""
        await self._ensure()
        return self

    async def _ensure(self) -> Node:
        node = self._node
        if node is not None:
            if node.closed:
                if not node._inherited:
                    raise ClosedError("the store is closed")
                await self._call(node.check_open)  # opened before fork(): reopen it in this child
            return node
        if self._closed:
            raise ClosedError("the store is closed")
        loop = asyncio.get_running_loop()
        if self._opening is None:
            self._opening = asyncio.ensure_future(loop.run_in_executor(self._executor, Node, self._config))
        opening = self._opening
        try:
            node = await asyncio.shield(opening)
        except BaseException:
            if opening.done():
                self._opening = None
            raise
        self._node = node
        return node

    async def close(self) -> None:
        """Close the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        opening, node = self._opening, self._node
        if node is None and opening is not None:
            try:
                node = await opening
            except Exception:
                node = None
        if node is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, node.close)
        self._executor.shutdown(wait=False)

    async def __aenter__(self) -> AsyncEKV:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __del__(self) -> None:
        node = getattr(self, "_node", None)
        if node is not None and not node.closed:
            warnings.warn(f"unclosed {self!r}; await close() or use 'async with'", ResourceWarning, stacklevel=2)
            node.close()
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _finish(self, pending: Pending[T]) -> T:
        """Finish in the pool an operation that could not finish on the loop without waiting
        (``Values.*_nowait``). The first read on a thread also opens that thread's reader
        connections, in the pool (milliseconds): the loop's later reads are then done on it."""
        if pending.readers:
            node = self._node
            assert node is not None
            store = node.store
            store.adopt_readers(await self._call(store.new_readers))
        return await self._call(pending.run)

    # -- operations ---------------------------------------------------------------------------

    # -- generated from EKV by scripts/gen_facades.py: do not edit by hand ---------------------

    async def put(
        self,
        key: str,
        value: Any,
        ttl: Seconds | None = None,
        *,
        if_absent: bool = False,
        if_version: Version | None = None,
        consistent: bool = False,
        timeout: Seconds | None = None,
    ) -> Version:
        """See :meth:`ekv.EKV.put`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        result = node.values.put_nowait(key, value, ttl, if_absent, if_version, consistent, timeout)
        if isinstance(result, Pending):
            return await self._finish(result)
        return result

    async def delete(
        self, key: str, *, if_version: Version | None = None, consistent: bool = False, timeout: Seconds | None = None
    ) -> Version:
        """See :meth:`ekv.EKV.delete`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        result = node.values.delete_nowait(key, if_version, consistent, timeout)
        if isinstance(result, Pending):
            return await self._finish(result)
        return result

    async def put_many(
        self, mapping: Mapping[str, Any] | Iterable[tuple[str, Any]], ttl: Seconds | None = None
    ) -> dict[str, Version]:
        """See :meth:`ekv.EKV.put_many`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.put_many, mapping, ttl)

    async def delete_many(self, keys: Iterable[str]) -> dict[str, Version]:
        """See :meth:`ekv.EKV.delete_many`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.delete_many, keys)

    async def touch(self, key: str, ttl: Seconds | None) -> bool:
        """See :meth:`ekv.EKV.touch`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.touch, key, ttl)

    async def get(
        self,
        key: str,
        default: Any = None,
        *,
        consistent: bool = False,
        timeout: Seconds | None = None,
    ) -> Any:
        """See :meth:`ekv.EKV.get`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        result = node.values.get_nowait(key, default, consistent, timeout)
        if isinstance(result, Pending):
            return await self._finish(result)
        return result

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """See :meth:`ekv.EKV.get_many`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.get_many, keys)

    async def ttl(self, key: str) -> float | None:
        """See :meth:`ekv.EKV.ttl`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.ttl, key)

    async def lookup(
        self, key: str, *, consistent: bool = False, timeout: Seconds | None = None
    ) -> tuple[Any, Version] | None:
        """See :meth:`ekv.EKV.lookup`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        result = node.values.lookup_nowait(key, consistent, timeout)
        if isinstance(result, Pending):
            return await self._finish(result)
        return result

    async def scan(self, prefix: str = "") -> dict[str, Any]:
        """See :meth:`ekv.EKV.scan`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.scan, prefix)

    async def keys(self, prefix: str = "") -> list[str]:
        """See :meth:`ekv.EKV.keys`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.keys, prefix)

    async def values(self, prefix: str = "") -> list[Any]:
        """See :meth:`ekv.EKV.values`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.values, prefix)

    async def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        """See :meth:`ekv.EKV.items`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.items, prefix)

    async def count(self, prefix: str = "") -> int:
        """See :meth:`ekv.EKV.count`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.count, prefix)

    async def contains(self, key: str) -> bool:
        """See :meth:`ekv.EKV.contains`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        result = node.values.contains_nowait(key)
        if isinstance(result, Pending):
            return await self._finish(result)
        return result

    async def clear(self) -> None:
        """See :meth:`ekv.EKV.clear`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        await self._call(node.values.clear)

    async def update(self, other: Any = (), fn: Callable[[Any], Any] | None = None, /, **kwds: Any) -> Any:
        """See :meth:`ekv.EKV.update`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.update, other, fn, kwds)

    async def setdefault(self, key: str, default: Any = None) -> Any:
        """See :meth:`ekv.EKV.setdefault`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.setdefault, key, default)

    async def pop(self, key: str, *default: Any) -> Any:
        """See :meth:`ekv.EKV.pop`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.pop, key, *default)

    async def popitem(self) -> tuple[str, Any]:
        """See :meth:`ekv.EKV.popitem`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.values.popitem)

    async def unsubscribe(self, prefix: str = "") -> None:
        """See :meth:`ekv.EKV.unsubscribe`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        node.unsubscribe(prefix, self)

    async def connect(self, address: str) -> None:
        """See :meth:`ekv.EKV.connect`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        node.connect(address)

    async def clear_quarantine(self, node_id: str) -> bool:
        """See :meth:`ekv.EKV.clear_quarantine`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.clear_quarantine, node_id)

    async def replace_voter(self, node_id: str, timeout: Seconds | None = None) -> dict[str, Any]:
        """See :meth:`ekv.EKV.replace_voter`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.replace_voter, node_id, timeout)

    async def info(self) -> dict[str, Any]:
        """See :meth:`ekv.EKV.info`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.info)

    async def metrics(self) -> dict[str, float]:
        """See :meth:`ekv.EKV.metrics`."""
        node = self._node
        if node is None or node.closed:
            node = await self._ensure()
        return await self._call(node.metrics)

    # -- end of the generated methods ------------------------------------------------------------

    def memoize(self, ttl: Seconds | None = None, prefix: str = "memo/") -> Callable[[F], F]:
        """A decorator that caches an ``async def`` function's results in this store, as
        :meth:`ekv.EKV.memoize` (same keys, so both facades share a cache); the store calls are
        awaited (:meth:`lookup`, :meth:`put`), and ``f.invalidate(...)``/``f.invalidate_all()`` are
        coroutines. A plain function raises :class:`TypeError` (its store calls could not be
        awaited): decorate it with ``EKV.memoize``."""

        async def delete_prefix(base: str) -> int:
            node = await self._ensure()
            values = node.values
            return await self._call(lambda: len(values.delete_many(values.keys(base))))

        return Memo(
            lookup=self.lookup,
            put=self.put,
            delete=self.delete,
            delete_prefix=delete_prefix,
            is_async=True,
            ttl=ttl,
            prefix=prefix,
        )

    def lock(self, key: str, ttl: Seconds = 30, timeout: Seconds | None = None) -> AsyncLock:
        """See :meth:`ekv.EKV.lock`: ``async with kv.lock(key, ttl=30) as lock:`` (or ``lock =
        await kv.lock(...)``); acquiring, renewing and releasing run in the thread pool."""
        return AsyncLock(self, key, ttl, timeout)

    async def iter(self, prefix: str = "") -> AsyncIterator[tuple[str, Any]]:
        """Lazily yield ``(key, value)`` under ``prefix`` in ascending order (``async for``);
        pages are read in the thread pool."""
        node = await self._ensure()
        items = node.values.iter_items(prefix)
        async for item in self._drain(items):
            yield item

    async def iter_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Lazily yield the keys under ``prefix`` in ascending order."""
        node = await self._ensure()
        async for key in self._drain(node.values.iter_keys(prefix)):
            yield key

    def __aiter__(self) -> AsyncIterator[str]:
        """``async for key in kv``: every visible key in ascending order (see :meth:`iter_keys`)."""
        return self.iter_keys("")

    async def _drain(self, source: Iterator[T]) -> AsyncIterator[T]:
        while True:
            chunk = await self._call(lambda: list(itertools.islice(source, _ITER_CHUNK)))
            for item in chunk:
                yield item
            if len(chunk) < _ITER_CHUNK:
                return

    async def subscribe(
        self,
        prefix: str = "",
        *more: str,
        max_queue: int | None = None,
        overflow: OverflowPolicy = "error",
    ) -> AsyncSubscription:
        """An :class:`ekv.AsyncSubscription` (``async for batch in sub``) for keys matching
        ``prefix`` and ``more``; see :meth:`ekv.EKV.subscribe` for matching and overflow."""
        node = await self._ensure()
        sub = node.subscribe(
            (prefix, *more),
            factory=AsyncSubscription,
            max_queue=max_queue,
            overflow=overflow,
            owner=self,
            loop=asyncio.get_running_loop(),
        )
        assert isinstance(sub, AsyncSubscription)
        return sub

    @property
    def listen_address(self) -> str | None:
        """See :attr:`ekv.EKV.listen_address` (available once open)."""
        node = self._node
        return None if node is None or node.cluster is None else node.cluster.listen_address


class AsyncLock:
    """:class:`ekv.EKV.lock`'s lock for asyncio: acquired by ``await`` or ``async with``."""

    def __init__(self, kv: AsyncEKV, key: str, ttl: Seconds, timeout: Seconds | None) -> None:
        self._kv = kv
        self._args = (key, ttl, timeout)
        self._lock: Lock | None = None

    def __await__(self) -> Generator[Any, None, AsyncLock]:
        return self._acquire().__await__()

    async def _acquire(self) -> AsyncLock:
        if self._lock is None:
            node = await self._kv._ensure()
            self._lock = await self._kv._call(node.values.lock, *self._args)
        return self

    @property
    def _held(self) -> Lock:
        if self._lock is None:
            raise LockError(f"lock {self._args[0]!r:.80} is not acquired yet: await it or use async with")
        return self._lock

    @property
    def token(self) -> int:
        """The fencing token (see :meth:`ekv.EKV.lock`)."""
        return self._held.token

    @property
    def version(self) -> Version:
        return self._held.version

    async def renew(self, ttl: Seconds | None = None) -> None:
        await self._kv._call(self._held.renew, ttl)

    async def release(self) -> bool:
        return await self._kv._call(self._held.release)

    async def __aenter__(self) -> AsyncLock:
        return await self._acquire()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
