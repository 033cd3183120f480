"""The argument and codec layer: what every caller's key, ttl and value go through on their way to
storage, and what stored bytes go through on their way back.

Storage (:mod:`ekv._storage`) moves bytes: it takes a validated key (with its UTF-8 form, which
picks the shard), a value's bytes and an expiry in nanoseconds, and returns bytes and versions.
Everything about the caller's arguments lives here, once: the key check
(:func:`ekv._core.keys.check_key`), the prefix check, ttl parsing, the codec and its errors, and
``max_value_size``. Both facades (through :class:`ekv._node.node.Node`), the cluster's
serving of command-line clients and the offline command line (over a read-only store) use one
:class:`Values`, so a new operation is written once and validated the same way everywhere.

It is on the hot path: each operation is one method here and one call into storage, with the
codec called inline rather than through a helper.
"""

from __future__ import annotations

import functools
import pickle
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ekv._codec import PickleCodec
from ekv._core.durations import duration_ns
from ekv._core.keys import MAX_KEY_BYTES, check_key, check_prefix
from ekv._errors import ConsistentKeyError, DecodeError, EncodeError, InvalidArgumentType, ValueTooLargeError
from ekv._model import Version
from ekv._storage.store import ShardedStore

if TYPE_CHECKING:
    from ekv._linear import Linear, Lock

__all__ = ["NOWAIT_VALUE_MAX", "Pending", "Values"]

T = TypeVar("T")


class Values:
    """Keys, ttls and values of one :class:`ShardedStore`, checked and encoded; thread-safe."""

    __slots__ = ("_dumps", "_loads", "_max_value", "_now", "_nowait_writes", "_prefixes", "linear", "store")

    def __init__(self, store: ShardedStore) -> None:
        config = store.config
        self.store = store
        codec = config.codec
        self._dumps: Callable[[Any], Any] = codec.dumps
        self._loads: Callable[[bytes], Any] = codec.loads
        if type(codec) is PickleCodec:  # the default codec, called in C: no Python frame per value
            self._dumps = functools.partial(pickle.dumps, protocol=5)
            self._loads = pickle.loads
        self._max_value = config.max_value_size
        self._now = config.clock.now_ns
        self._prefixes = config.consistent_prefixes
        self._nowait_writes = config.durability != "full"  # else every commit fsyncs: milliseconds
        self.linear: Linear | None = None
        """The linearizable operations (SPEC 13), set by the node; None on a read-only store."""

    def _linear(self) -> Linear:
        linear = self.linear
        if linear is None:
            self.store._unusable()
            raise AssertionError("a writable store has its linearizable operations")
        return linear

    def _plain(self, key: str) -> None:
        """Refuse a plain write of a consistent key (called only when prefixes are declared)."""
        if key.startswith(self._prefixes):
            raise ConsistentKeyError(
                f"key {key!r:.80} is under consistent_prefixes: write it with if_absent=, if_version=, "
                "consistent=True, update() or lock() (plain writes would break its linearizability)"
            )

    def encode(self, key: str, value: Any) -> bytes:
        """``value`` as the codec's bytes, checked against ``max_value_size`` (batches and
        linearizable writes; :meth:`put`, the hot path, does the same inline)."""
        try:
            blob = self._dumps(value)
        except Exception as exc:
            raise EncodeError(f"cannot encode the value for key {key!r:.80}: {type(exc).__name__}: {exc}") from exc
        if type(blob) is not bytes:
            blob = _coerce_blob(blob, key)
        if len(blob) > self._max_value:
            raise ValueTooLargeError(
                f"the encoded value for key {key!r:.80} is {len(blob)} bytes; "
                f"the maximum (max_value_size) is {self._max_value}"
            )
        return blob

    # -- writes ------------------------------------------------------------------------------

    def put(
        self,
        key: str,
        value: Any,
        ttl: object = None,
        if_absent: bool = False,
        if_version: object = None,
        consistent: bool = False,
        timeout: object = None,
    ) -> Version:
        """Store ``value`` under ``key``; return the write's version once it is durable. With
        ``if_absent``, ``if_version`` or ``consistent``: a linearizable write (:mod:`ekv._linear`)."""
        store = self.store
        if store._closed or store._readonly:
            store._unusable()
        if if_absent or if_version is not None or consistent:
            return self._linear().put(key, value, ttl, if_absent, if_version, consistent, timeout)
        encoded = check_key(key)
        if self._prefixes:
            self._plain(key)
        expires_at = None if ttl is None else self._now() + duration_ns(ttl, "ttl")
        try:
            blob = self._dumps(value)
        except Exception as exc:
            raise EncodeError(f"cannot encode the value for key {key!r:.80}: {type(exc).__name__}: {exc}") from exc
        if type(blob) is not bytes:
            blob = _coerce_blob(blob, key)
        if len(blob) > self._max_value:
            raise ValueTooLargeError(
                f"the encoded value for key {key!r:.80} is {len(blob)} bytes; "
                f"the maximum (max_value_size) is {self._max_value}"
            )
        return store.write(key, encoded, blob, expires_at)

    def put_many(self, mapping: Any, ttl: object = None) -> dict[str, Version]:
        """Store every item of ``mapping`` (a mapping, or ``(key, value)`` pairs: the last of a
        repeated key counts, as in ``dict()``); return ``key -> version`` once durable. Every key
        and value is checked and encoded first, so bad input raises before anything is written;
        then each shard's part commits as one transaction (:meth:`ShardedStore.write_many`)."""
        store = self.store
        if store._closed or store._readonly:
            store._unusable()
        pairs = mapping.items() if isinstance(mapping, Mapping) else mapping
        expires_at = None if ttl is None else self._now() + duration_ns(ttl, "ttl")
        items: dict[str, tuple[str, bytes, bytes | None, int | None]] = {}
        for key, value in pairs:
            encoded = check_key(key)
            if self._prefixes:
                self._plain(key)
            items[key] = (key, encoded, self.encode(key, value), expires_at)
        return store.write_many(list(items.values()))

    def delete_many(self, keys: Any) -> dict[str, Version]:
        """Write a tombstone for each of ``keys`` (an iterable of keys; repeats count once), each
        shard's part in one transaction; return ``key -> version``. Every key is checked first."""
        store = self.store
        if store._closed or store._readonly:
            store._unusable()
        if isinstance(keys, str):
            raise InvalidArgumentType("delete_many takes an iterable of keys, not a str")
        items = {key: (key, check_key(key), None, None) for key in keys}
        if self._prefixes:
            for key in items:
                self._plain(key)
        return store.write_many(list(items.values()))

    def touch(self, key: str, ttl: object) -> bool:
        """Give a visible ``key`` a new expiry (``ttl`` seconds from now; None: never), keeping its
        value, as a new version; False (nothing written) if ``key`` is not visible."""
        store = self.store
        if store._closed or store._readonly:
            store._unusable()
        encoded = check_key(key)
        if self._prefixes:
            self._plain(key)
        expires_at = None if ttl is None else self._now() + duration_ns(ttl, "ttl")
        return store.touch(key, encoded, expires_at) is not None

    def delete(self, key: str, if_version: object = None, consistent: bool = False, timeout: object = None) -> Version:
        """Write a tombstone for ``key`` (also when it is absent); return its version. With
        ``if_version`` or ``consistent``: a linearizable delete (:mod:`ekv._linear`)."""
        store = self.store
        if store._closed or store._readonly:
            store._unusable()
        if if_version is not None or consistent:
            return self._linear().delete(key, if_version, consistent, timeout)
        encoded = check_key(key)
        if self._prefixes:
            self._plain(key)
        return store.write(key, encoded, None, None)

    def update_key(
        self, key: str, fn: Any, ttl: object = None, retries: int = 100, timeout: object = None
    ) -> tuple[Any, Version]:
        """Linearizable read-modify-write of one key (``update(key, fn)``, :meth:`Linear.update`)."""
        return self._linear().update(key, fn, ttl, retries, timeout)

    def lock(self, key: str, ttl: object = 30, timeout: object = None) -> Lock:
        """Acquire a lock (:meth:`Linear.lock`)."""
        return self._linear().lock(key, ttl, timeout)

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None, consistent: bool = False, timeout: object = None) -> Any:
        """The value of ``key``, or ``default`` if it is absent, deleted or expired. With
        ``consistent``: a linearizable read (:meth:`Linear.lookup`)."""
        store = self.store
        if store._closed:
            store._unusable()
        if consistent:
            found = self._linear().lookup(key, timeout)
            return default if found is None else found[0]
        # check_key's fast path inlined (a call less per get); anything unusual goes to it
        encoded = b""
        if type(key) is str:
            try:
                encoded = key.encode()
            except UnicodeEncodeError:
                encoded = b""
        if not encoded or len(encoded) > MAX_KEY_BYTES or b"\x00" in encoded:
            encoded = check_key(key)  # raises the error that says what is wrong
        blob = store.read(key, encoded)
        if blob is None:
            return default
        try:
            return self._loads(blob)
        except Exception as exc:
            raise _decode_error(key, exc) from exc

    def get_many(self, keys: Any) -> dict[str, Any]:
        """``key -> value`` for the visible ones of ``keys`` (an iterable of keys), in the order
        given; one query per shard (:meth:`StoreReads.read_many`). Every key is checked first."""
        store = self.store
        if store._closed:
            store._unusable()
        if isinstance(keys, str):
            raise InvalidArgumentType("get_many takes an iterable of keys, not a str")
        checked = {key: check_key(key) for key in keys}
        found = store.read_many(list(checked.items()))
        loads = self._loads
        result: dict[str, Any] = {}
        for key in checked:
            blob = found.get(key)
            if blob is not None:
                try:
                    result[key] = loads(blob)
                except Exception as exc:
                    raise _decode_error(key, exc) from exc
        return result

    def ttl(self, key: str) -> float | None:
        """Seconds until a visible ``key`` expires, or None if it never does; :class:`KeyError`
        if it is absent, deleted or expired."""
        store = self.store
        if store._closed:
            store._unusable()
        check_key(key)
        entry = store.entry(key)
        now = self._now()
        if entry is None or entry.value is None or (entry.expires_at_ns is not None and entry.expires_at_ns <= now):
            raise KeyError(key)
        return None if entry.expires_at_ns is None else (entry.expires_at_ns - now) / 1e9

    def getitem(self, key: str) -> Any:
        """The value of ``key``; :class:`KeyError` if it is absent, deleted or expired (``kv[key]``)."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def contains(self, key: str) -> bool:
        """Whether ``key`` is visible (present, not deleted, not expired); the value is not decoded."""
        store = self.store
        if store._closed:
            store._unusable()
        return store.read(key, check_key(key)) is not None

    def delitem(self, key: str) -> Version:
        """Delete a visible ``key`` (``del kv[key]``); :class:`KeyError`, and nothing written, if
        it is absent. The check and the delete are two steps: a concurrent delete of the same key
        may make both succeed, as two ``kv.delete(key)`` would."""
        if not self.contains(key):
            raise KeyError(key)
        return self.delete(key)

    def update(self, other: Any, fn: Any, kwds: dict[str, Any]) -> Any:
        """``dict.update``: put each item of ``other`` (a mapping, an object with ``keys()``, or
        ``(key, value)`` pairs), then of ``kwds``; one put per item, in order. With a key and a
        function: the linearizable ``update(key, fn)`` (:meth:`update_key`)."""
        if isinstance(other, str):
            if fn is None:
                raise InvalidArgumentType(f"update({other!r:.80}) needs a function: update(key, fn)")
            return self.update_key(other, fn, **kwds)
        if fn is not None:
            raise InvalidArgumentType("update(mapping) takes one positional argument; update(key, fn) takes a str key")
        if isinstance(other, Mapping):
            for key in other:
                self.put(key, other[key])
        elif hasattr(other, "keys"):
            for key in other.keys():  # noqa: SIM118 (an object with keys(), maybe not iterable)
                self.put(key, other[key])
        else:
            for key, value in other:
                self.put(key, value)
        for key, value in kwds.items():
            self.put(key, value)
        return None

    def setdefault(self, key: str, default: Any) -> Any:
        """``dict.setdefault``: the value of a visible ``key``, else put ``default`` and return it."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            self.put(key, default)
            return default
        return value

    def pop(self, key: str, *default: Any) -> Any:
        """``dict.pop``: delete a visible ``key`` and return its value; else the default, or
        :class:`KeyError` (and nothing written) without one."""
        if len(default) > 1:
            raise InvalidArgumentType(f"pop expected at most 2 arguments, got {1 + len(default)}")
        value = self.get(key, _MISSING)
        if value is _MISSING:
            if default:
                return default[0]
            raise KeyError(key)
        self.delete(key)
        return value

    def popitem(self) -> tuple[str, Any]:
        """Delete the smallest visible key and return ``(key, value)``; :class:`KeyError` if
        there is none."""
        for key in self.store.iter_keys(""):
            if self._prefixes and key.startswith(self._prefixes):
                continue  # only its linearizable operations may delete it
            value = self.get(key, _MISSING)
            if value is not _MISSING:  # else deleted or expired since it was listed
                self.delete(key)
                return key, value
        raise KeyError("popitem(): the store is empty")

    def clear(self) -> int:
        """Delete every visible key (a tombstone each, which replicates like any delete); return
        how many. Keys are read first, then deleted one by one: a key written meanwhile may stay.
        Keys of ``consistent_prefixes`` are left alone: only their own operations change them."""
        deleted = 0
        prefixes = self._prefixes
        for key in self.store.keys(""):
            if prefixes and key.startswith(prefixes):
                continue
            self.delete(key)
            deleted += 1
        return deleted

    def lookup(self, key: str, consistent: bool = False, timeout: object = None) -> tuple[Any, Version] | None:
        """``(value, version)`` of a visible key, else ``None`` (``consistent``: linearizable)."""
        store = self.store
        if store._closed:
            store._unusable()
        if consistent:
            return self._linear().lookup(key, timeout)
        found = store.read_version(key, check_key(key))
        if found is None:
            return None
        try:
            return self._loads(found[0]), found[1]
        except Exception as exc:
            raise _decode_error(key, exc) from exc

    def scan(self, prefix: str) -> dict[str, Any]:
        """Every visible key under ``prefix`` with its value, as a dict in ascending key order."""
        keys, values = self._decoded(self.store.items(check_prefix(prefix)))
        return dict(zip(keys, values, strict=True))

    def keys(self, prefix: str) -> list[str]:
        """Every visible key under ``prefix``, ascending."""
        return self.store.keys(check_prefix(prefix))

    def values(self, prefix: str) -> list[Any]:
        """The values of every visible key under ``prefix``, in ascending key order."""
        return self._decoded(self.store.items(check_prefix(prefix)))[1]

    def items(self, prefix: str) -> list[tuple[str, Any]]:
        """``(key, value)`` for every visible key under ``prefix``, in ascending key order."""
        keys, values = self._decoded(self.store.items(check_prefix(prefix)))
        return list(zip(keys, values, strict=True))

    def count(self, prefix: str) -> int:
        """How many visible keys are under ``prefix``: one COUNT query per shard, O(keys)."""
        return self.store.count(check_prefix(prefix))

    def iter_items(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Lazily yield ``(key, value)`` for visible keys under ``prefix``, ascending; memory
        stays bounded by one page per shard. Arguments are checked on the first ``next()``."""
        decode = self.decode
        for key, blob in self.store.iter_rows(check_prefix(prefix)):
            yield key, decode(blob, key)

    def iter_keys(self, prefix: str) -> Iterator[str]:
        """Lazily yield visible keys under ``prefix`` in ascending order (checked on the first
        ``next()``)."""
        yield from self.store.iter_keys(check_prefix(prefix))

    # -- without waiting (AsyncEKV, on its event loop) ----------------------------------------

    def get_nowait(self, key: str, default: Any = None, consistent: bool = False, timeout: object = None) -> Any:
        """:meth:`get` if it is done within microseconds on this thread, else a :class:`Pending`
        (see :data:`NOWAIT_VALUE_MAX` and :meth:`_lookup_nowait`)."""
        found = self._lookup_nowait(key, consistent)
        if found is None:
            return default
        if type(found) is tuple:
            return found[0]
        return Pending(lambda: self.get(key, default, consistent, timeout), found is _NO_READERS)

    def lookup_nowait(
        self, key: str, consistent: bool = False, timeout: object = None
    ) -> tuple[Any, Version] | Pending[tuple[Any, Version] | None] | None:
        """:meth:`lookup` if it is done within microseconds on this thread, else a :class:`Pending`."""
        found = self._lookup_nowait(key, consistent)
        if found is None or type(found) is tuple:
            return found
        return Pending(lambda: self.lookup(key, consistent, timeout), found is _NO_READERS)

    def contains_nowait(self, key: str) -> bool | Pending[bool]:
        """:meth:`contains` if it is done within microseconds on this thread, else a :class:`Pending`."""
        found = self._lookup_nowait(key, False, decode=False)
        if found is None:
            return False
        if type(found) is tuple:
            return True
        return Pending(lambda: self.contains(key), found is _NO_READERS)

    def _lookup_nowait(self, key: str, consistent: bool, decode: bool = True) -> Any:
        """``(value, version)``, None (not visible), or why not read here: ``_NO_READERS`` (this
        thread has no reader connections: opening them takes milliseconds), ``_WAIT`` (a
        linearizable read, which goes over the network; a closed store, which may reopen after
        fork(); a value longer than :data:`NOWAIT_VALUE_MAX`). A point read of a short value
        takes microseconds: WAL readers never wait for a writer."""
        store = self.store
        if consistent or store._closed:
            return _WAIT
        found = store.read_bounded(key, check_key(key), NOWAIT_VALUE_MAX)
        if found is None:
            return None
        if type(found) is bool:
            return _NO_READERS if found else _WAIT
        if not decode:
            return found
        try:
            return self._loads(found[0]), found[1]
        except Exception as exc:
            raise _decode_error(key, exc) from exc

    def put_nowait(
        self,
        key: str,
        value: Any,
        ttl: object = None,
        if_absent: bool = False,
        if_version: object = None,
        consistent: bool = False,
        timeout: object = None,
    ) -> Version | Pending[Version]:
        """:meth:`put` if it commits at once on this thread, else a :class:`Pending` that
        finishes it (the value is encoded once). Not here: linearizable writes (the network),
        ``durability="full"`` (an fsync per commit), a value that may be long to encode or write
        (a ``sys.getsizeof`` or an encoding above :data:`NOWAIT_VALUE_MAX`), a shard another
        thread or process is writing (:meth:`ekv._storage.shard.Shard.write_nowait`). Bad input
        raises here, as :meth:`put` would."""
        store = self.store
        if (
            if_absent
            or if_version is not None
            or consistent
            or not self._nowait_writes
            or store._closed
            or store._readonly
            or sys.getsizeof(value) > NOWAIT_VALUE_MAX
        ):
            return Pending(lambda: self.put(key, value, ttl, if_absent, if_version, consistent, timeout))
        encoded = check_key(key)
        if self._prefixes:
            self._plain(key)
        expires_at = None if ttl is None else self._now() + duration_ns(ttl, "ttl")
        blob = self.encode(key, value)
        if len(blob) <= NOWAIT_VALUE_MAX:
            version = store.write_nowait(key, encoded, blob, expires_at)
            if version is not None:
                return version
        return Pending(lambda: store.write(key, encoded, blob, expires_at))

    def delete_nowait(
        self, key: str, if_version: object = None, consistent: bool = False, timeout: object = None
    ) -> Version | Pending[Version]:
        """:meth:`delete` if it commits at once on this thread, else a :class:`Pending` (as
        :meth:`put_nowait`)."""
        store = self.store
        if if_version is not None or consistent or not self._nowait_writes or store._closed or store._readonly:
            return Pending(lambda: self.delete(key, if_version, consistent, timeout))
        encoded = check_key(key)
        if self._prefixes:
            self._plain(key)
        version = store.write_nowait(key, encoded, None, None)
        if version is not None:
            return version
        return Pending(lambda: store.write(key, encoded, None, None))

    def _decoded(self, found: tuple[tuple[str, ...], tuple[bytes, ...]]) -> tuple[tuple[str, ...], list[Any]]:
        """``found`` (keys, value bytes) with the values decoded, the codec mapped over them in one
        call (no Python code per row with the default codec); :class:`~ekv.DecodeError` names
        the first key whose value does not decode."""
        keys, blobs = found
        try:
            return keys, list(map(self._loads, blobs))
        except Exception:
            for key, blob in zip(keys, blobs, strict=True):
                self.decode(blob, key)
            raise

    def decode(self, blob: bytes, key: str) -> Any:
        """The value stored as ``blob`` under ``key``; :class:`~ekv.DecodeError` if the codec
        cannot decode it."""
        try:
            return self._loads(blob)
        except Exception as exc:
            raise _decode_error(key, exc) from exc


_MISSING: Any = object()
_WAIT: Any = object()
_NO_READERS: Any = object()

NOWAIT_VALUE_MAX = 64 << 10
"""The longest value (bytes, encoded; or ``sys.getsizeof`` of the value given) that the
``*_nowait`` operations read or write on the calling thread: reading or writing a value costs
about 5 ms a MiB here, so 64 KiB stays well under a millisecond; longer ones go to a thread."""


class Pending(Generic[T]):
    """What a ``*_nowait`` operation returns when it could not finish without waiting: ``run()``
    finishes it on a thread that may wait (AsyncEKV's pool). ``readers``: the calling thread has
    no reader connections; open them elsewhere (``ShardedStore.new_readers``) and adopt them so
    that its next reads are done at once."""

    __slots__ = ("readers", "run")

    def __init__(self, run: Callable[[], T], readers: bool = False) -> None:
        self.run = run
        self.readers = readers


def _coerce_blob(blob: object, key: str) -> bytes:
    if isinstance(blob, bytes | bytearray | memoryview):
        return bytes(blob)
    raise EncodeError(f"the codec returned {type(blob).__name__}, not bytes, for key {key!r:.80}")


def _decode_error(key: str, exc: Exception) -> DecodeError:
    return DecodeError(f"cannot decode the stored value of key {key!r:.80}: {exc}")
