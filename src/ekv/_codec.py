"""Value codecs: how Python values become the opaque bytes ekv stores and replicates.

The default is pickle (the analogue of Erlang's ``term_to_binary``): any picklable object round
trips. Pickle executes code while loading, so a node must only load values written by peers it
trusts. Deployments where peers are not fully trusted use ``codec="json"`` or any object with
``dumps(value) -> bytes`` and ``loads(bytes) -> value``.

The codec's name is recorded in the data directory when it is created and announced to members in
the handshake, so a directory is never read with another codec and members with different codecs
never exchange values (each would store bytes the other cannot decode). The built-in codecs are
named ``"pickle"`` and ``"json"``; a custom codec declares its name in a ``name`` attribute (a
short string: the same name means the same encoding) and, without one, is named after its class
(``module.QualifiedName``), so renaming or moving the class then needs ``name`` set to the old one.

Values are only ever decoded by a local read (``get``, ``scan``, ...) or to build a subscription
event; the storage, transport and replication layers move them as opaque bytes.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol, runtime_checkable

from ekv._errors import ConfigError, DecodeError, EncodeError

__all__ = ["BUILTIN_CODECS", "Codec", "JsonCodec", "PickleCodec", "Undecodable", "codec_name", "resolve_codec"]

BUILTIN_CODECS = ("pickle", "json")
"""The codecs ekv builds from their names (``codec="json"``, ``ekv serve --codec json``)."""

MAX_NAME_BYTES = 255
"""Longest codec name, in UTF-8 bytes (it travels in the handshake, like instance names)."""


@runtime_checkable
class Codec(Protocol):
    """The codec interface: ``dumps`` returns ``bytes``; ``loads`` inverts it.

    A custom codec should also have a ``name`` attribute, a short ``str`` such as
    ``"msgpack-v1"``: it is recorded in the data directory and compared between members, so the
    same name must mean the same encoding. Without one the codec is named after its class
    (``module.QualifiedName``)."""

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


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_SCALARS = frozenset({str, int, float, bool, type(None)})


class JsonCodec:
    """Compact UTF-8 JSON: dicts with ``str`` keys, lists, strings, numbers, booleans and None.
    Loading JSON cannot run code, so it is safe with untrusted peers.

    A value that would not come back as it went in is refused (``TypeError``, which ``put``
    reports as :class:`~ekv.EncodeError` naming the spot) rather than silently changed: a tuple
    (JSON makes it a list) and a dict key that is not a ``str`` (JSON makes ``{1: "a"}`` into
    ``{"1": "a"}``, and ``{1: "a", "1": "b"}`` into one key). NaN and infinities are refused
    too. Subclasses of dict, list, str, int and float are accepted and come back as the plain
    type, equal to what was stored."""

    name = "json"

    def dumps(self, value: Any) -> bytes:
        text = _ENCODER.encode(value)  # first: it refuses sets, objects, NaN and circular values
        if type(value) not in _SCALARS:
            try:
                _check_round_trip(value)
            except _NotRoundTrip as exc:
                where = "the value" + "".join(f"[{step}]" for step in reversed(exc.path))
                raise TypeError(f"{where}: {exc.problem}") from None
        return text.encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)

    def __repr__(self) -> str:
        return "JsonCodec()"


class _NotRoundTrip(Exception):
    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.path: list[str] = []


def _check_round_trip(value: Any) -> None:
    """Raise :class:`_NotRoundTrip` where JSON would change ``value``: a tuple or a non-``str``
    dict key. Only called on values JSON could encode, so it need not look at anything else. The
    path is only built on the way out of a failure; a value that passes costs one type check per
    container item: about a third more than the C encoder's own time on nested values, nothing
    measurable next to a put's commit."""
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise _NotRoundTrip(
                    f"the dict key {key!r:.40} ({type(key).__name__}) would come back as the string "
                    f"{_ENCODER.encode(key)!r}; JSON keys are strings: use str keys, or the pickle codec"
                )
            if type(item) not in _SCALARS:
                try:
                    _check_round_trip(item)
                except _NotRoundTrip as exc:
                    exc.path.append(f"{key!r:.40}")
                    raise
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if type(item) not in _SCALARS:
                try:
                    _check_round_trip(item)
                except _NotRoundTrip as exc:
                    exc.path.append(str(index))
                    raise
    elif isinstance(value, tuple):
        raise _NotRoundTrip(
            f"a {type(value).__name__} would come back as a list; store a list, or use the pickle codec"
        )


def resolve_codec(codec: object) -> Codec:
    """Turn the ``codec=`` option into a codec object; its name must be usable (see
    :func:`codec_name`)."""
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
    name = getattr(codec, "name", None)
    if name is not None and not (isinstance(name, str) and name.strip() == name and name.isprintable() and name):
        raise ConfigError(
            f"codec {codec!r:.80} has name {name!r:.80}; a codec's name must be a non-empty printable str "
            "without surrounding spaces (it is recorded in data_dir and compared between members)"
        )
    if len(codec_name(codec).encode("utf-8", "replace")) > MAX_NAME_BYTES:  # type: ignore[arg-type]
        raise ConfigError(
            f"the name of codec {codec!r:.80} is longer than {MAX_NAME_BYTES} bytes; give it a shorter name attribute"
        )
    return codec  # type: ignore[return-value]


def codec_name(codec: Codec) -> str:
    """The name recorded in the data directory and announced to members: the codec's ``name``
    attribute, else its class as ``module.QualifiedName``."""
    name = getattr(codec, "name", None)
    if isinstance(name, str):
        return name
    cls = type(codec)
    return f"{cls.__module__}.{cls.__qualname__}"


class Undecodable:
    """Stands in for a custom codec that only the application knows (read-only tools such as
    ``ekv keys`` need no values; reading one says why it cannot be decoded)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def dumps(self, value: Any) -> bytes:
        raise EncodeError(f"this store's values use the custom codec {self.name!r}, which only its application has")

    def loads(self, data: bytes) -> Any:
        raise DecodeError(f"this store's values use the custom codec {self.name!r}, which only its application has")
