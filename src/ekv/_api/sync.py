"""``ekv.EKV``: the synchronous, thread-safe facade.

Every method runs on the calling thread: reads go straight to this thread's SQLite connections,
writes commit through the owning shard's group commit and return once durable. There is no
hop to a background thread on the hot path.

EKV is written by hand and is the source of :class:`ekv.AsyncEKV`'s operations: each method here
that only forwards one call (to the value layer or the node) is generated as the same ``async
def`` in ``aio.py`` by ``python3 scripts/gen_facades.py`` (tests/test_facades.py fails when it is
stale). So a new operation is written once, here, with its signature and docstring.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar, Unpack, overload

from ekv._config import Config, OverflowPolicy
from ekv._linear import Lock
from ekv._memo import Memo
from ekv._model import Event, Version
from ekv._node.node import Node
from ekv._node.subscriptions import CallbackSubscription, Subscription
from ekv._options import Options, Seconds

__all__ = ["EKV"]

F = TypeVar("F", bound=Callable[..., Any])


class EKV(MutableMapping[str, Any]):
    """An embedded, durable key-value store (one node).

    ::

        import ekv
        with ekv.EKV("my_kv", data_dir="data/ekv/my_kv") as kv:
            kv.put("user/1", {"name": "Alice"})
            kv.get("user/1")          # {'name': 'Alice'}
            kv["user/2"] = {"name": "Bob"}
            "user/2" in kv, len(kv)   # (True, 2)

    EKV is a :class:`collections.abc.MutableMapping` of str keys: ``kv[key]`` (KeyError if absent,
    deleted or expired), ``kv[key] = value``, ``del kv[key]`` (KeyError if absent), ``key in kv``,
    ``len(kv)`` (a COUNT over every shard: O(keys)), iteration over the keys in ascending order,
    and ``update``, ``setdefault``, ``pop``, ``popitem``, ``clear`` as on a dict. ``keys``,
    ``values`` and ``items`` return lists (not views) and take an optional prefix. Two stores
    compare equal, as dicts do, when they hold the same items (``==`` reads both); so compare
    stores by identity (``is``) when that is what is meant, and note that ``bool(kv)`` counts.

    Args:
        name: instance name (letters, digits, ``_ . -``); recorded in ``data_dir``.
        data_dir: directory for the shard files; created if missing.
        **options: the keyword options, each with its type, default and meaning under
            *Options* below (and in the README); their TypedDict, for type checkers, is
            ``ekv._options.Options``.

    Raises:
        ekv.ConfigError: an option is invalid (nothing is created on disk), or ``codec`` is not
            the codec ``data_dir`` was created with (nothing is written).
        ekv.LockedError: another process or ``EKV`` object has ``data_dir`` open.
        ekv.ListenError: ``listen`` cannot be bound, e.g. the port is in use (nothing is created
            or changed on disk).
        ekv.ShardCountError, ekv.InstanceNameError, ekv.CorruptionError, ekv.DataDirError.
    """

    def __init__(self, name: str, data_dir: str | PathLike[str], **options: Unpack[Options]) -> None:
        self._node: Node | None = None
        config = Config.create(name, data_dir, **options)
        self._node = node = Node(config)
        self._store = node.store
        self._values = node.values

    # -- identity ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The instance name."""
        return self._config.name

    @property
    def data_dir(self) -> Path:
        return self._config.data_dir

    @property
    def node_id(self) -> str:
        """This node's identity: stable for the data directory, the ``origin`` of its writes."""
        return self._store.node_id

    @property
    def closed(self) -> bool:
        return self._store.closed

    @property
    def _config(self) -> Config:
        assert self._node is not None
        return self._node.config

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<ekv.EKV {self.name!r} at {str(self.data_dir)!r} ({state})>"

    # -- writes ------------------------------------------------------------------------------

    def put(
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
        """Store ``value`` under ``key`` and return the write's version once it is durable.

        ``ttl`` (seconds or timedelta) makes the key expire: it becomes invisible at once when
        the time is up and is turned into a tombstone by the next GC pass.

        Linearizable writes (keys under ``consistent_prefixes`` only, SPEC 13; one of):
        ``if_absent=True`` writes only if the key has no live value; ``if_version=V`` only if
        its current version is ``V`` (from :meth:`lookup`, a write, or a conflict's
        ``current``); ``consistent=True`` unconditionally. ``timeout`` bounds them (default
        the ``consistent_timeout`` option). They raise :class:`~ekv.ConflictError` (not applied;
        ``current`` is the key's ``(value, Version)`` or None), :class:`~ekv.NoQuorumError` (not
        applied) or :class:`~ekv.UnconfirmedError` (may have been applied).

        Raises:
            TypeError (ekv.InvalidArgumentType): key not a str, ttl of the wrong type.
            ValueError (ekv.InvalidArgument): empty key, NUL in key, ttl <= 0 or NaN.
            ekv.EncodeError: the codec cannot encode ``value``.
            ekv.ValueTooLargeError: the encoded value exceeds ``max_value_size``.
            ekv.DiskFullError / ekv.StorageError: the write was not applied.
            ekv.ConsistentKeyError: a plain put of a key under ``consistent_prefixes``, or a
                linearizable one of a key that is not.
        """
        return self._values.put(key, value, ttl, if_absent, if_version, consistent, timeout)

    def delete(
        self, key: str, *, if_version: Version | None = None, consistent: bool = False, timeout: Seconds | None = None
    ) -> Version:
        """Delete ``key`` (a tombstone that replicates and wins by version, like a put) and
        return the tombstone's version. Deleting an absent key also writes a tombstone.
        ``if_version`` / ``consistent``: a linearizable delete, as for :meth:`put`."""
        return self._values.delete(key, if_version, consistent, timeout)

    def put_many(
        self, mapping: Mapping[str, Any] | Iterable[tuple[str, Any]], ttl: Seconds | None = None
    ) -> dict[str, Version]:
        """Store every item of ``mapping`` (or of ``(key, value)`` pairs; a repeated key counts
        once, its last value) and return ``key -> version`` once durable.

        Each shard's part is written in one transaction (all of it or none of it, every key
        LWW-checked on its own, one event batch, replicated like single puts), which makes a
        batch several times faster than one :meth:`put` per item. Every key and value is
        checked and encoded before anything is written, so bad input (a bad key, a value that
        does not encode or is too large) raises and writes nothing. Across shards the batch is
        not atomic: if a shard's transaction fails (a full disk), the shards written before it
        stay written and the error is raised. ``ttl`` applies to every item.

        Raises: as :meth:`put`.
        """
        return self._values.put_many(mapping, ttl)

    def delete_many(self, keys: Iterable[str]) -> dict[str, Version]:
        """Delete each of ``keys`` (a tombstone each, as :meth:`delete`; absent keys too) and
        return ``key -> version``; each shard's part in one transaction, as :meth:`put_many`.
        Every key is checked before anything is written."""
        return self._values.delete_many(keys)

    def touch(self, key: str, ttl: Seconds | None) -> bool:
        """Give a visible ``key`` a new expiry, ``ttl`` from now (None: it never expires), keeping
        its value; True if it was touched, False (nothing written) if ``key`` is absent, deleted
        or expired.

        The touch is a new version of the key holding the value read, and that read and the
        rewrite are one transaction on the shard's writer: a put of the same key on this node
        (any thread or process) either comes before it, and its value is the one kept, or after
        it, and wins. It replicates like a put; across nodes it is a put of the value it read
        (last writer wins against a concurrent put made elsewhere, as any put would)."""
        return self._values.touch(key, ttl)

    # -- reads -------------------------------------------------------------------------------

    def get(
        self,
        key: str,
        default: Any = None,
        *,
        consistent: bool = False,
        timeout: Seconds | None = None,
    ) -> Any:
        """The value of ``key``, or ``default`` if absent, deleted or expired. ``consistent=True``
        (keys under ``consistent_prefixes``): a linearizable read, which sees every linearizable
        write that completed before it (a plain read may be stale)."""
        return self._values.get(key, default, consistent, timeout)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """``key -> value`` for those of ``keys`` that are visible (absent, deleted and expired
        ones are left out), in the order given. Each shard is read once (one query, for all of
        its keys), checksums verified as by :meth:`get`."""
        return self._values.get_many(keys)

    def ttl(self, key: str) -> float | None:
        """The seconds left before a visible ``key`` expires, or None if it has no expiry.

        Raises:
            KeyError: ``key`` is absent, deleted or expired (as ``kv[key]``), so "no expiry" and
                "no key" are told apart.
        """
        return self._values.ttl(key)

    def lookup(
        self, key: str, *, consistent: bool = False, timeout: Seconds | None = None
    ) -> tuple[Any, Version] | None:
        """``(value, version)`` for a visible key, else ``None``; the version feeds ``if_version``.
        ``consistent=True``: a linearizable read, as for :meth:`get`."""
        return self._values.lookup(key, consistent, timeout)

    def scan(self, prefix: str = "") -> dict[str, Any]:
        """Every visible key starting with ``prefix`` and its value, as a dict in ascending key
        order. Use :meth:`iter` for ranges too large to hold in memory."""
        return self._values.scan(prefix)

    def keys(self, prefix: str = "") -> list[str]:  # type: ignore[override]
        """Every visible key starting with ``prefix``, ascending, as a list (a snapshot, not a
        view as ``dict.keys()`` is)."""
        return self._values.keys(prefix)

    def values(self, prefix: str = "") -> list[Any]:  # type: ignore[override]
        """The values of every visible key starting with ``prefix``, in ascending key order, as
        a list (a snapshot)."""
        return self._values.values(prefix)

    def items(self, prefix: str = "") -> list[tuple[str, Any]]:  # type: ignore[override]
        """``(key, value)`` for every visible key starting with ``prefix``, ascending, as a list
        (a snapshot). Same content as :meth:`scan`, which returns a dict."""
        return self._values.items(prefix)

    def count(self, prefix: str = "") -> int:
        """How many visible keys (not deleted, not expired) start with ``prefix``; ``len(kv)`` is
        ``kv.count()``. Cost: one COUNT query per shard, O(keys counted) (no counter is kept),
        so it is a scan of the key index, cheaper than :meth:`keys` but not free."""
        return self._values.count(prefix)

    def contains(self, key: str) -> bool:
        """Whether ``key`` is visible (``key in kv``); the value is not read or decoded."""
        return self._values.contains(key)

    def clear(self) -> None:
        """Delete every visible key, cluster-wide: each becomes a tombstone that replicates like
        :meth:`delete`. Not atomic: keys are listed, then deleted one by one, so a key written
        meanwhile may stay. Keys under ``consistent_prefixes`` are left alone: only their own
        linearizable operations change them."""
        self._values.clear()

    # -- the mapping protocol ----------------------------------------------------------------
    # update/setdefault/pop/popitem override MutableMapping's with the value layer's (the same
    # semantics), so AsyncEKV gets them generated too.

    def update(self, other: Any = (), fn: Callable[[Any], Any] | None = None, /, **kwds: Any) -> Any:
        """Two forms.

        ``kv.update(mapping_or_pairs, **kwds)``: put each item of ``other`` (a mapping, or
        ``(key, value)`` pairs) and of ``kwds``, as ``dict.update``: one :meth:`put` per item, in
        order (not one transaction). Returns None.

        ``kv.update(key, fn, ttl=None, retries=100, timeout=None)`` (a key under
        ``consistent_prefixes``): a linearizable read-modify-write: ``fn(current value or None)``
        is written under ``if_version``; on a conflict ``fn`` runs again on the value that won,
        up to ``retries`` times. Returns ``(new value, Version)``; raises
        :class:`~ekv.ConflictError` when the retries run out. ``fn`` runs in the calling process
        and may run more than once: keep it free of side effects."""
        return self._values.update(other, fn, kwds)

    def lock(self, key: str, ttl: Seconds = 30, timeout: Seconds | None = None) -> Lock:
        """Acquire the lock ``key`` (under ``consistent_prefixes``) for ``ttl`` seconds, waiting
        up to ``timeout`` (default the ``consistent_timeout`` option); use it as a context
        manager, which releases it::

            with kv.lock("lock/job-42", ttl=30) as lock:
                lock.token    # fencing token: an int, strictly increasing per key
                lock.renew()  # another ttl from now

        Raises :class:`~ekv.LockError` if it is not acquired in time (held by another)."""
        return self._values.lock(key, ttl, timeout)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``kv[key]`` if ``key`` is visible, else put ``default`` and return it (two steps, not
        atomic: a concurrent writer may put ``key`` in between)."""
        return self._values.setdefault(key, default)

    def pop(self, key: str, *default: Any) -> Any:
        """Delete ``key`` and return its value, as ``dict.pop``; without a default, KeyError if
        ``key`` is not visible."""
        return self._values.pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        """Delete and return the ``(key, value)`` of the smallest visible key; KeyError if the
        store is empty."""
        return self._values.popitem()

    def __getitem__(self, key: str) -> Any:
        return self._values.getitem(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._values.put(key, value)

    def __delitem__(self, key: str) -> None:
        self._values.delitem(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False  # as dict: a key that cannot be stored is not in the store
        return self._values.contains(key)

    def __iter__(self) -> Iterator[str]:
        return self._values.iter_keys("")

    def __len__(self) -> int:
        return self._values.count("")

    def __eq__(self, other: object) -> bool:
        # Identity first (cheap, and true for a closed store too); else dict equality.
        return self is other or super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # a mutable mapping, as dict

    def iter(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """Lazily yield ``(key, value)`` pairs under ``prefix`` in ascending key order.

        Memory stays bounded (one page per shard). The iteration is not a snapshot: keys written
        while it runs may or may not appear, but no key appears twice.
        """
        return self._values.iter_items(prefix)

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        """Lazily yield the keys under ``prefix`` in ascending order."""
        return self._values.iter_keys(prefix)

    # -- memoize -----------------------------------------------------------------------------

    def memoize(self, ttl: Seconds | None = None, prefix: str = "memo/") -> Callable[[F], F]:
        """A decorator that caches a function's results in this store, for ``ttl`` (None: until
        invalidated), shared by every process and node of the store::

            @kv.memoize(ttl=60)
            def price(item: str, qty: int = 1) -> float: ...

            price("apple")                  # computed and stored
            price("apple")                  # read from the store
            price.invalidate("apple")       # forget one call (the same arguments, the same way)
            price.invalidate_all()          # forget every call: delete the function's keys
            price.key("apple")              # its key: "memo/shop.price/('apple',)"

        Plain and ``async def`` functions both work (for an ``async def``, the store calls of
        this synchronous facade run on the event loop's thread: use :meth:`ekv.AsyncEKV.memoize`
        to keep them off it). The key is ``prefix`` + the function's module and qualified name +
        ``/`` + its arguments: ``repr`` of arguments of simple built-in types (None, bool, int,
        float, complex, str, bytes and tuples/lists of them), else a SHA-256 of their pickle,
        so other arguments must pickle, and pickle equally when equal (see
        ``ekv._memo.args_key``). A result of ``None`` is cached too. Results must be encodable by
        the store's codec; exceptions are not cached; callers that miss at once each compute.
        """
        values = self._values

        def delete_prefix(base: str) -> int:
            return len(values.delete_many(values.keys(base)))

        return Memo(
            lookup=values.lookup,
            put=values.put,
            delete=values.delete,
            delete_prefix=delete_prefix,
            is_async=False,
            ttl=ttl,
            prefix=prefix,
        )

    # -- subscriptions -----------------------------------------------------------------------

    @overload
    def subscribe(
        self,
        prefix: str = "",
        *more: str,
        callback: None = None,
        max_queue: int | None = None,
        overflow: OverflowPolicy = "error",
    ) -> Subscription: ...

    @overload
    def subscribe(
        self,
        prefix: str = "",
        *more: str,
        callback: Callable[[list[Event]], Any],
        max_queue: int | None = None,
        overflow: OverflowPolicy = "error",
    ) -> CallbackSubscription: ...

    def subscribe(
        self,
        prefix: str = "",
        *more: str,
        callback: Callable[[list[Event]], Any] | None = None,
        max_queue: int | None = None,
        overflow: OverflowPolicy = "error",
    ) -> Subscription | CallbackSubscription:
        """Receive batches of :class:`ekv.Event` for keys matching ``prefix`` (and ``more``).

        ``"room/"`` matches every key under ``room/``; ``"room/1"`` (no trailing slash) only that
        key; ``""`` every key. Events fire for local writes, applied replicated writes and TTL
        expiry, never for a write that lost last-writer-wins; each event reaches a subscription
        once even if several of its patterns match.

        Without ``callback``, iterate the returned :class:`ekv.Subscription` or call its
        ``get(timeout)``. With ``callback``, it is called with each batch on a dispatcher thread.
        The queue holds at most ``max_queue`` events (default ``subscriber_queue``); see
        ``overflow`` policies in the README. Writers are never blocked by a slow subscriber.
        """
        return self._node_checked.subscribe(  # type: ignore[return-value]
            (prefix, *more), callback=callback, max_queue=max_queue, overflow=overflow, owner=self
        )

    def unsubscribe(self, prefix: str = "") -> None:
        """Stop every subscription made through this object from matching ``prefix``; a
        subscription left with no pattern is closed. ``sub.close()`` closes one subscription."""
        self._node_checked.unsubscribe(prefix, self)

    # -- cluster -----------------------------------------------------------------------------

    @property
    def listen_address(self) -> str | None:
        """The address this node accepts members on (the real port if ``listen`` asked for 0)."""
        node = self._node
        return None if node is None or node.cluster is None else node.cluster.listen_address

    def connect(self, address: str) -> None:
        """Dial a member at ``"host:port"``; the rest of the mesh is learned from it. Returns at
        once; the connection is made (and retried) in the background."""
        self._node_checked.connect(address)

    def clear_quarantine(self, node_id: str) -> bool:
        """Let a quarantined member replicate again (see the operators guide: deletes made
        during the partition may come back). Returns False if it was not quarantined."""
        return self._node_checked.clear_quarantine(node_id)

    def replace_voter(self, node_id: str, timeout: Seconds | None = None) -> dict[str, Any]:
        """Replace a voter that is gone for good (its machine lost, say) with a new one: run this
        on a live voter with the old one stopped; then start the new voter on an empty data
        directory with the same ``cluster_size``. It retires ``node_id`` (every member refuses it
        from now on) and re-reads every consistent key through a quorum of the remaining voters,
        so no quorum that includes the empty newcomer can miss a chosen value (SPEC 13; the
        procedure: docs/operators.md). Returns ``{"retired": node_id, "keys_reread": n}``.

        Raises:
            ekv.ConfigError: not a clustered node process, or not a voter with ``cluster_size``.
            ekv.InvalidArgument: ``node_id`` is this node, or is still connected.
            ekv.NoQuorumError: some keys could not be re-read; run it again once a quorum is up.
        """
        return self._node_checked.replace_voter(node_id, timeout)

    # -- operations --------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Node identity, options, per-shard key/tombstone counts, change-log state, GC and
        subscription counters (see README, "info()")."""
        return self._node_checked.info()

    def metrics(self) -> dict[str, float]:
        """Counters and gauges for monitoring (writes, reads, replication lag per member, syncs
        by kind, queue depths, subscriber overflows, GC work, quarantines, clock skew), as
        ``name -> number`` with Prometheus-style names; :func:`ekv.format_metrics` renders them
        in Prometheus' text format. Cheaper than :meth:`info`."""
        return self._node_checked.metrics()

    def close(self) -> None:
        """Close the store: stop GC, close subscriptions, checkpoint and close every shard,
        release ``data_dir``. Idempotent."""
        if self._node is not None:
            self._node.close()

    @property
    def _node_checked(self) -> Node:
        node = self._node
        assert node is not None
        node.check_open()
        return node

    def __enter__(self) -> EKV:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        node = getattr(self, "_node", None)
        if node is not None and not node.closed:
            warnings.warn(f"unclosed {self!r}; call close() or use 'with'", ResourceWarning, stacklevel=2)
            node.close()
