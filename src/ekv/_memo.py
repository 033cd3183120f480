"""``memoize``: caching a function's results in the store, for both facades.

A result is stored under ``PREFIX + MODULE.QUALNAME + "/" + ARGS``, where ARGS encodes the call's
arguments (:func:`args_key`), so every process and node sharing the store shares the cache (for
as long as ``ttl``). A cached ``None`` is a hit: the read goes through ``lookup``, which tells an
absent key from a stored ``None``. Exceptions are not cached. Concurrent callers that miss at the
same time each call the function and store their result (the last write wins): there is no
locking between them.

Written once: :class:`Memo` takes the four store operations it needs, either as plain
functions (:meth:`ekv.EKV.memoize`, and :meth:`ekv.AsyncEKV.memoize` for a sync function) or as
coroutine functions (:meth:`ekv.AsyncEKV.memoize` for an ``async def``).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import pickle
from collections.abc import Callable
from typing import Any, TypeVar

from ekv._core.durations import duration_ns
from ekv._core.keys import check_prefix
from ekv._errors import InvalidArgumentType
from ekv._model import Version

__all__ = ["Memo", "args_key"]

F = TypeVar("F", bound=Callable[..., Any])

_SIMPLE = (type(None), bool, int, float, complex, str, bytes)
_MAX_READABLE = 200


def _readable(value: object) -> bool:
    kind = type(value)
    if kind in _SIMPLE:
        return True
    if kind is tuple or kind is list:
        return all(_readable(item) for item in value)  # type: ignore[attr-defined]
    return False


def args_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A stable text for a call's arguments, the same in every process and on every machine.

    Arguments of the built-in scalar types (None, bool, int, float, complex, str, bytes) and
    tuples and lists of them are written as their ``repr`` (keyword arguments sorted by name),
    so such keys are readable: ``(1, 'a')``, ``(1,) {'n': 2}``. Any other argument (or a
    readable form longer than 200 characters) makes the whole key ``sha256:`` + the SHA-256 of
    the pickle of ``(args, sorted kwargs)``: such arguments must pickle, and equal arguments must
    pickle to the same bytes (true of most values; not of dicts or sets built in a different
    order, nor of objects whose pickle depends on their identity). Types count: ``f(1)`` and
    ``f(1.0)`` are different keys, as are ``f(1)`` and ``f(n=1)``."""
    items = sorted(kwargs.items())
    if _readable(args) and all(_readable(value) for _, value in items):
        text = repr(args) if not items else f"{args!r} {dict(items)!r}"
        if len(text) <= _MAX_READABLE:
            return text
    try:
        data = pickle.dumps((args, items), protocol=5)
    except Exception as exc:
        raise InvalidArgumentType(
            f"memoize cannot build a key for these arguments: they are not of a simple type and do not pickle "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Memo:
    """The ``memoize`` decorator over one store's operations (plain or coroutine functions)."""

    def __init__(
        self,
        *,
        lookup: Callable[[str], Any],
        put: Callable[[str, Any, float | None], Any],
        delete: Callable[[str], Any],
        delete_prefix: Callable[[str], Any],
        is_async: bool,
        ttl: object,
        prefix: str,
    ) -> None:
        if ttl is not None:
            duration_ns(ttl, "ttl")  # a bad ttl fails at decoration, not at the first call
        self._lookup, self._put, self._delete, self._delete_prefix = lookup, put, delete, delete_prefix
        self._async = is_async
        self._ttl: Any = ttl
        self._prefix = check_prefix(prefix)

    def __call__(self, fn: F) -> F:
        if not callable(fn):
            raise InvalidArgumentType(f"memoize decorates a function, not {type(fn).__name__}")
        base = f"{self._prefix}{fn.__module__}.{fn.__qualname__}/"
        lookup, put, delete, delete_prefix, ttl = self._lookup, self._put, self._delete, self._delete_prefix, self._ttl

        def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            return base + args_key(args, kwargs)

        wrapper: Any
        if self._async:
            # The store's operations are coroutine functions (AsyncEKV).
            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def wrapper(*args: Any, **kwargs: Any) -> Any:
                    key = key_of(args, kwargs)
                    found = await lookup(key)
                    if found is not None:
                        return found[0]
                    result = await fn(*args, **kwargs)
                    await put(key, result, ttl)
                    return result

            else:
                raise InvalidArgumentType(
                    "AsyncEKV.memoize caches async functions (its store calls must be awaited); "
                    "use EKV.memoize for a plain function"
                )

            async def invalidate(*args: Any, **kwargs: Any) -> Version:
                return await delete(key_of(args, kwargs))  # type: ignore[no-any-return]

            async def invalidate_all() -> int:
                return await delete_prefix(base)  # type: ignore[no-any-return]

        else:
            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def wrapper(*args: Any, **kwargs: Any) -> Any:
                    key = key_of(args, kwargs)
                    found = lookup(key)
                    if found is not None:
                        return found[0]
                    result = await fn(*args, **kwargs)
                    put(key, result, ttl)
                    return result

            else:

                @functools.wraps(fn)
                def wrapper(*args: Any, **kwargs: Any) -> Any:
                    key = key_of(args, kwargs)
                    found = lookup(key)
                    if found is not None:
                        return found[0]
                    result = fn(*args, **kwargs)
                    put(key, result, ttl)
                    return result

            def invalidate(*args: Any, **kwargs: Any) -> Version:  # type: ignore[misc]
                return delete(key_of(args, kwargs))  # type: ignore[no-any-return]

            def invalidate_all() -> int:  # type: ignore[misc]
                return delete_prefix(base)  # type: ignore[no-any-return]

        wrapper.invalidate = invalidate
        wrapper.invalidate_all = invalidate_all
        wrapper.key = lambda *args, **kwargs: key_of(args, kwargs)
        return wrapper  # type: ignore[no-any-return]
