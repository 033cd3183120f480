"""Keys: validation, the stable key-to-shard hash, prefix ranges and subscription matching.

Keys are non-empty ``str`` without NUL characters whose UTF-8 encoding is at most
:data:`MAX_KEY_BYTES` bytes. Stored keys are compared by their UTF-8 bytes (SQLite's BINARY
collation), which is the same order as Python's ``str`` comparison (code point order), so a prefix
range computed here matches what SQLite returns and what ``heapq.merge`` expects.
"""

from __future__ import annotations

from zlib import crc32

from ekv._errors import InvalidArgument, InvalidArgumentType

__all__ = [
    "MAX_KEY_BYTES",
    "check_key",
    "check_prefix",
    "prefix_upper_bound",
    "shard_of",
    "subscription_candidates",
]

MAX_KEY_BYTES = 65_536
"""Longest key accepted, in UTF-8 bytes."""

_MAX_CODE_POINT = 0x10FFFF


def _describe(key: str) -> str:
    shown = key if len(key) <= 60 else key[:57] + "..."
    return repr(shown)


def check_key(key: object) -> bytes:
    """Validate ``key`` and return its UTF-8 encoding: the one key check of every path (writes,
    reads, replication). A valid ``str`` key costs one encode and a NUL scan; anything else goes
    to :func:`_key_error` for the message.

    Raises:
        InvalidArgumentType: the key is not a ``str``.
        InvalidArgument: the key is empty, contains NUL, is not encodable as UTF-8 (a lone
            surrogate) or is longer than :data:`MAX_KEY_BYTES`.
    """
    if type(key) is str:
        try:
            encoded = key.encode()
        except UnicodeEncodeError:
            return _key_error(key)
        if encoded and len(encoded) <= MAX_KEY_BYTES and b"\x00" not in encoded:
            return encoded
    return _key_error(key)


def _key_error(key: object) -> bytes:
    """The slow path of :func:`check_key`: raise the error that says what is wrong with ``key``,
    or return the encoding of a valid key of a ``str`` subclass."""
    if type(key) is not str:
        if not isinstance(key, str):
            raise InvalidArgumentType(f"key must be a str, not {type(key).__name__}: {key!r:.80}")
        key = str(key)
    try:
        encoded = key.encode()
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"key {_describe(key)} is not valid UTF-8: {exc.reason}") from None
    if not encoded:
        raise InvalidArgument("key must not be empty")
    if b"\x00" in encoded:
        raise InvalidArgument(f"key {_describe(key)} contains a NUL character")
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidArgument(f"key {_describe(key)} is {len(encoded)} bytes long; the maximum is {MAX_KEY_BYTES}")
    return encoded


def check_prefix(prefix: object) -> str:
    """Validate a scan or subscription prefix; ``""`` (everything) is allowed."""
    if not isinstance(prefix, str):
        raise InvalidArgumentType(f"prefix must be a str, not {type(prefix).__name__}: {prefix!r:.80}")
    if prefix:
        try:
            prefix.encode()
        except UnicodeEncodeError as exc:
            raise InvalidArgument(f"prefix {_describe(prefix)} is not valid UTF-8: {exc.reason}") from None
        if "\x00" in prefix:
            raise InvalidArgument(f"prefix {_describe(prefix)} contains a NUL character")
    return str(prefix)


def shard_of(encoded_key: bytes, shards: int) -> int:
    """The shard that owns a key: CRC-32 of its UTF-8 bytes modulo the shard count.

    Stable across processes, machines and Python versions (unlike the built-in ``hash``).
    """
    return crc32(encoded_key) % shards


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    ``None`` means there is no upper bound (the empty prefix, or a prefix made only of
    U+10FFFF characters). The last character that can be incremented is incremented and the rest
    dropped; the surrogate block is skipped because surrogates cannot be stored.
    """
    chars = prefix
    while chars:
        last = ord(chars[-1])
        if last < _MAX_CODE_POINT:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:
                nxt = 0xE000
            return chars[:-1] + chr(nxt)
        chars = chars[:-1]
    return None


def subscription_candidates(key: str) -> list[str]:
    """The subscription patterns that match ``key``.

    ``""`` matches everything; a pattern ending in ``"/"`` matches every key under it; any other
    pattern matches exactly one key. So the candidates are ``""``, each prefix of ``key`` that
    ends at a ``"/"``, and ``key`` itself: a lookup per slash, whatever the number of subscribers.
    """
    candidates = [""]
    start = 0
    while True:
        slash = key.find("/", start)
        if slash < 0:
            break
        candidates.append(key[: slash + 1])
        start = slash + 1
    if not key.endswith("/"):
        candidates.append(key)
    return candidates
