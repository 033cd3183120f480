"""Value codecs: how Python values become the opaque bytes ekv stores and replicates.

The default is pickle (the analogue of Erlang's ``term_to_binary``): any picklable object round
trips. Pickle executes code while loading, so a node must only load values written by peers it
trusts. Deployments where peers are not fully trusted use ``codec="json"`` or any object with
``dumps(value) -> bytes`` and ``loads(bytes) -> value``.

Values are only ever decoded by a local read (``get``, ``scan``, ...) or to build a subscription
event; the storage, transport and replication layers move them as opaque bytes.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol, runtime_checkable

from ekv._errors import ConfigError

__all__ = ["Codec", "JsonCodec", "PickleCodec", "resolve_codec"]


@runtime_checkable
class Codec(Protocol):
    """The codec interface: ``dumps`` returns ``bytes``; ``loads`` inverts it."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class PickleCodec:
    """pickle protocol 5; any picklable object. Trust every peer whose values you read."""

    name = "pickle"

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=5)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)

    def __repr__(self) -> str:
        return "PickleCodec()"


class JsonCodec:
    """Compact UTF-8 JSON: dicts, lists, strings, numbers, booleans and None. Loading JSON
    cannot run code, so it is safe with untrusted peers. Tuples come back as lists."""

    name = "json"

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)

    def __repr__(self) -> str:
        return "JsonCodec()"


def resolve_codec(codec: object) -> Codec:
    """Turn the ``codec=`` option into a codec object."""
    if codec == "pickle" or codec is None:
        return PickleCodec()
    if codec == "json":
        return JsonCodec()
    if isinstance(codec, str):
        raise ConfigError(f"codec must be 'pickle', 'json' or an object with dumps/loads, not {codec!r}")
    if isinstance(codec, type):
        raise ConfigError(f"codec must be a codec object, not the class {codec.__qualname__}; pass an instance")
    if not (callable(getattr(codec, "dumps", None)) and callable(getattr(codec, "loads", None))):
        raise ConfigError(
            f"codec {codec!r:.80} has no callable dumps() and loads(); use 'pickle', 'json' or an object providing both"
        )
    return codec  # type: ignore[return-value]


def codec_name(codec: Codec) -> str:
    """A short name for ``info()`` and logs."""
    name = getattr(codec, "name", None)
    return name if isinstance(name, str) else type(codec).__qualname__
