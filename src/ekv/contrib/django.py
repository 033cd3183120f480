"""``ekv.contrib.django.EKVCache``: a Django cache backend on an ekv store (SPEC 14).

::

    CACHES = {
        "default": {
            "BACKEND": "ekv.contrib.django.EKVCache",
            "LOCATION": "/var/lib/mysite/cache",      # the ekv data directory
            "TIMEOUT": 300,
            "OPTIONS": {"name": "mysite-cache", "listen": "10.0.0.5:7400", "peers": ["10.0.0.6:7400"],
                        "cookie": "..."},
        }
    }

LOCATION is the data directory; OPTIONS in lower case are ekv constructor options (``name``
defaults to ``"django-cache"``), OPTIONS in upper case belong to this backend (``KEEP_OPEN``).
Keys are Django's (``make_and_validate_key``: KEY_PREFIX, VERSION, KEY_FUNCTION), stored verbatim;
values go through the store's codec (pickle by default).

One process opens each data directory once: every alias and every thread's cache object naming
the same LOCATION shares one :class:`ekv.EKV` (a refcount per LOCATION). Django calls ``close()``
on every cache at the end of every request; opening a store costs a tenth of a second and, for a
clustered one, its membership, so by default (``KEEP_OPEN``: True) the store stays open after the
last alias closes, until the process exits. With ``KEEP_OPEN`` False the last ``close()`` closes
it (scripts, tests) and the next operation opens it again. A cache object used in a forked child
opens the store again in the child (the parent's connections and threads are not the child's).

What is not atomic (docs/django.md, "Atomicity"): ``add``, ``incr``, ``decr``, ``touch`` and
``get_or_set`` read, then write. Within one process the read and the write happen under one lock
per LOCATION, so they are atomic against each other there; across processes and machines the
writes are last-writer-wins.
"""

from __future__ import annotations

import atexit
import os
import pickle
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from ekv._api.sync import EKV
from ekv._errors import ConfigError, ConflictError, EncodeError

__all__ = ["DEFAULT_NAME", "EKVCache", "PickleEncodeError"]

DEFAULT_NAME = "django-cache"
"""The ekv instance name used when OPTIONS carry no ``name``."""

_BACKEND_OPTIONS = {"KEEP_OPEN": True}
"""This backend's own OPTIONS (upper case, as Django's MAX_ENTRIES) and their defaults."""

_NO_CULLING = {"MAX_ENTRIES", "CULL_FREQUENCY"}

_MISSING = object()


class PickleEncodeError(EncodeError, pickle.PicklingError):
    """A value could not be encoded. An :class:`ekv.EncodeError` that is also a
    ``pickle.PicklingError``, because Django's cache contract (and its test suite) expects a
    pickling error from ``set``/``add`` of an unpicklable value, as its own backends raise."""


class _Shared:
    """One open store of this process and the cache objects that hold it."""

    def __init__(self, kv: EKV, options: dict[str, Any], keep_open: bool) -> None:
        self.kv = kv
        self.options = options
        self.keep_open = keep_open
        self.refs = 0
        self.pid = os.getpid()
        self.lock = threading.Lock()
        """Serialises the read-then-write operations (add, incr, decr, touch) of this process."""


_registry: dict[Path, _Shared] = {}
_registry_lock = threading.Lock()


def _forget_parent_stores() -> None:
    """In a forked child: drop the parent's stores. ekv marks a store inherited through fork()
    closed in the child, and closing it there touches nothing (the parent owns its files,
    connections and threads), so they are only forgotten; the child opens its own. The lock is
    new too: another thread of the parent may have held it at the fork."""
    global _registry_lock
    _registry_lock = threading.Lock()
    _registry.clear()


os.register_at_fork(after_in_child=_forget_parent_stores)


def _acquire(location: Path, options: dict[str, Any], keep_open: bool) -> _Shared:
    with _registry_lock:
        shared = _registry.get(location)
        if shared is None or shared.kv.closed:  # closed: someone closed cache.store itself
            kv = EKV(options["name"], location, **{k: v for k, v in options.items() if k != "name"})
            shared = _registry[location] = _Shared(kv, options, keep_open)
        elif shared.options != options or shared.keep_open != keep_open:
            differing = sorted(
                k for k in {*options, *shared.options} if options.get(k, _MISSING) != shared.options.get(k, _MISSING)
            )
            if shared.keep_open != keep_open:
                differing.append("KEEP_OPEN")
            raise ConfigError(
                f"cache LOCATION {str(location)!r} is already open in this process with other OPTIONS "
                f"(differing: {', '.join(differing)}); every alias naming one LOCATION must give the same OPTIONS"
            )
        shared.refs += 1
        return shared


def _release(shared: _Shared) -> None:
    with _registry_lock:
        if shared.pid != os.getpid() or shared.refs == 0:
            return  # a forked child's copy of a parent's store (forgotten, never closed here)
        shared.refs -= 1
        if shared.refs == 0 and not shared.keep_open:
            for location, entry in list(_registry.items()):
                if entry is shared:
                    del _registry[location]
            shared.kv.close()


@atexit.register
def _close_all() -> None:
    """Close this process's stores at interpreter exit (KEEP_OPEN keeps them open until then)."""
    with _registry_lock:
        for shared in _registry.values():
            shared.kv.close()
        _registry.clear()


class EKVCache(BaseCache):  # type: ignore[misc]  # Django ships no type information
    """A Django cache backend storing in the ekv data directory LOCATION (see the module doc)."""

    def __init__(self, location: str | os.PathLike[str], params: dict[str, Any]) -> None:
        if not location:
            raise ConfigError("EKVCache needs LOCATION: the ekv data directory of the cache")
        options = dict(params.get("OPTIONS") or {})
        culling = sorted(_NO_CULLING & set(options))
        if culling:
            raise ConfigError(
                f"EKVCache does not cull: OPTIONS {', '.join(culling)} have no meaning for it (ekv keeps every key "
                "until it expires or is deleted); remove them"
            )
        backend = {k: options.pop(k, default) for k, default in _BACKEND_OPTIONS.items()}
        unknown = sorted(k for k in options if k.isupper())
        if unknown:
            raise ConfigError(
                f"unknown EKVCache OPTIONS {', '.join(unknown)}; the backend's own are {', '.join(_BACKEND_OPTIONS)}, "
                "and ekv's constructor options are lower case"
            )
        super().__init__({**params, "OPTIONS": {}})
        options.setdefault("name", DEFAULT_NAME)
        self._location = Path(os.path.abspath(os.fspath(location)))
        self._options = options
        self._keep_open = bool(backend["KEEP_OPEN"])
        self._shared: _Shared | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    # -- the shared store ------------------------------------------------------------------

    def _get_shared(self) -> _Shared:
        shared = self._shared
        pid = os.getpid()
        if shared is not None and shared.pid == pid and not shared.kv.closed:
            return shared
        if self._pid != pid:  # a forked child: this object's lock may have been held at the fork
            self._pid, self._lock, self._shared = pid, threading.Lock(), None
        with self._lock:
            shared = self._shared
            if shared is None or shared.pid != os.getpid() or shared.kv.closed:
                shared = self._shared = _acquire(self._location, self._options, self._keep_open)
            return shared

    @property
    def store(self) -> EKV:
        """The :class:`ekv.EKV` under this cache (shared with every alias of its LOCATION in this
        process): for its cluster address, ``subscribe``, ``info``. Do not close it."""
        return self._get_shared().kv

    def close(self, **kwargs: Any) -> None:
        """Release this cache object's hold on the store (Django calls it after every request).
        The store closes when the last holder releases it and ``KEEP_OPEN`` is False; the next
        operation opens it again."""
        with self._lock:
            shared, self._shared = self._shared, None
        if shared is not None:
            _release(shared)

    # -- timeouts ----------------------------------------------------------------------------

    def _ttl(self, timeout: Any) -> float | bool | None:
        """Django's timeout as ekv's ttl: None = forever, False = do not store (0 or negative:
        "expire immediately"), else seconds."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        if timeout <= 0:
            return False
        return float(timeout)

    @staticmethod
    def _linear(kv: EKV, key: str) -> bool:
        """Whether ``key`` (a Django key: KEY_PREFIX:VERSION:key) is under the store's
        ``consistent_prefixes``: then every write of it is linearizable (SPEC 13)."""
        prefixes = kv._config.consistent_prefixes
        return bool(prefixes) and key.startswith(prefixes)

    def _put(self, kv: EKV, key: str, value: Any, ttl: float | bool | None) -> None:
        linear = self._linear(kv, key)
        if ttl is False:
            # a tombstone: an older value of key, here or elsewhere, must not be served
            kv.delete(key, consistent=linear)
            return
        try:
            kv.put(key, value, ttl=ttl, consistent=linear)
        except EncodeError as exc:
            if isinstance(exc, pickle.PicklingError):
                raise
            raise PickleEncodeError(str(exc)) from exc.__cause__

    # -- the cache API -----------------------------------------------------------------------

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        return self._get_shared().kv.get(key, default)

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        key = self.make_and_validate_key(key, version=version)
        self._put(self._get_shared().kv, key, value, self._ttl(timeout))

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """Set ``key`` only if it is absent; True if it was set. Under ``consistent_prefixes``
        a linearizable ``put(if_absent=True)``: exactly one of concurrent adds wins, across
        processes and machines. Otherwise read-then-write: atomic within this process,
        last-writer-wins across processes and machines (docs/django.md)."""
        key = self.make_and_validate_key(key, version=version)
        shared = self._get_shared()
        ttl = self._ttl(timeout)
        if self._linear(shared.kv, key):
            try:
                shared.kv.put(key, value, ttl=None if ttl is False else ttl, if_absent=True)
            except ConflictError:
                return False
            if ttl is False:  # "expire at once": it was absent, and stays so
                shared.kv.delete(key, consistent=True)
            return True
        with shared.lock:
            if shared.kv.contains(key):
                return False
            if ttl is not False:
                self._put(shared.kv, key, value, ttl)
            return True

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """Give ``key`` a new timeout; False if it is absent. The store's ``touch``: the value is
        read and written again with the new expiry in one transaction, so a concurrent write of
        the key, from any thread or process of this machine, is never lost (across machines the
        touch is a write like any other: last writer wins). A timeout of 0 deletes the key."""
        key = self.make_and_validate_key(key, version=version)
        shared = self._get_shared()
        ttl = self._ttl(timeout)
        if self._linear(shared.kv, key):
            found = shared.kv.lookup(key, consistent=True)
            if found is None:
                return False
            try:
                if ttl is False:
                    shared.kv.delete(key, if_version=found[1])
                else:
                    shared.kv.put(key, found[0], ttl=ttl, if_version=found[1])
            except ConflictError as exc:  # written meanwhile: that write is newer than the touch
                return exc.current is not None
            return True
        if ttl is False:
            with shared.lock:
                if not shared.kv.contains(key):
                    return False
                shared.kv.delete(key)
                return True
        return shared.kv.touch(key, ttl)

    def delete(self, key: Any, version: int | None = None) -> bool:
        """Delete ``key``; True if it was visible. The tombstone is written either way, so a
        value on its way from another machine is deleted too when it is older."""
        key = self.make_and_validate_key(key, version=version)
        kv = self._get_shared().kv
        existed = kv.contains(key)
        kv.delete(key, consistent=self._linear(kv, key))
        return existed

    def has_key(self, key: Any, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return self._get_shared().kv.contains(key)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Add ``delta`` to the value of ``key`` and return it; ValueError if ``key`` is absent.
        The new value gets the default TIMEOUT (as Django's base implementation, which the file
        and database backends use). Under ``consistent_prefixes`` a linearizable ``update``:
        no increment is ever lost, across processes and machines. Otherwise atomic within this
        process only: see docs/django.md."""
        key = self.make_and_validate_key(key, version=version)
        shared = self._get_shared()
        if self._linear(shared.kv, key):
            ttl = self._ttl(DEFAULT_TIMEOUT)

            def add(value: Any) -> Any:
                if value is None:
                    raise ValueError(f"Key '{key}' not found")
                return value + delta

            return shared.kv.update(key, add, ttl=None if ttl is False else ttl)[0]
        with shared.lock:
            value = shared.kv.get(key, _MISSING)
            if value is _MISSING:
                raise ValueError(f"Key '{key}' not found")
            new_value = value + delta
            self._put(shared.kv, key, new_value, self._ttl(DEFAULT_TIMEOUT))
            return new_value

    def decr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return self.incr(key, -delta, version=version)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        kv = self._get_shared().kv
        found = {}
        for key in keys:
            value = kv.get(self.make_and_validate_key(key, version=version), _MISSING)
            if value is not _MISSING:
                found[key] = value
        return found

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        """Set every item (one write each, not one transaction); returns the keys that failed,
        always none: a failure raises."""
        kv = self._get_shared().kv
        ttl = self._ttl(timeout)
        for key, value in data.items():
            self._put(kv, self.make_and_validate_key(key, version=version), value, ttl)
        return []

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        kv = self._get_shared().kv
        for key in keys:
            key = self.make_and_validate_key(key, version=version)
            kv.delete(key, consistent=self._linear(kv, key))

    def clear(self) -> None:
        """Delete every key of the store, cluster-wide (every alias of LOCATION, every version),
        but those under ``consistent_prefixes``: only their own linearizable writes change them."""
        self._get_shared().kv.clear()
