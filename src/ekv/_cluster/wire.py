"""The binary wire format of protocol version 1: framing, message encoding, negotiation.

Everything a peer sends passes through :class:`FrameDecoder` before any other code sees it, so
this module is the trust boundary of the cluster layer. It follows three rules:

* **No pickle, no eval, nothing clever.** Control messages are small JSON objects, data messages
  a fixed struct layout; values inside entries stay opaque bytes that are never interpreted.
* **Every field is checked.** Types, integer ranges, key and origin rules (the same rules
  :func:`ekv._core.keys.check_key` applies to local writes), counts against the bytes that are
  left, no trailing bytes. Anything else raises :class:`ekv.ProtocolError` and nothing but it,
  whatever the input: the transport closes the connection and no data changes.
* **Memory follows the bytes that arrived, not the sizes that were claimed.** A frame header is
  checked against the cap before its body is buffered, counts are checked against the remaining
  bytes before looping, and compressed values inflate only up to what the cap still allows.

Layout (all integers big-endian)::

    frame      = length:u32  type:u8  body          length = 1 + len(body), 1 .. max_frame_size
    control    = UTF-8 JSON object (Hello, Auth, Reject, Bye, Ping, Pong, Members, SyncRequest,
                 SyncDone, Retired); bytes fields are lowercase hex
    Prepare, Promise, Accept, Accepted, Propose, Outcome: see wire_paxos.py
    Summary, SummaryDiff: see wire_summary.py
    TreeMessage = one broadcast-tree message as plumtree_wire.py encodes it (a Gossip's payload
                 is a whole Live frame, relayed unchanged)
    Live       = shard:u16               entries
    SyncChunk  = shard:u16  sync_id:u64  seq:u64  entries
    entries    = n_origins:u16  (len:u8 origin)*  n_entries:u32  entry*
    entry      = flags:u8  key_len:u32  origin_index:u16  timestamp_ns:i64  oseq:u64
                 expires_at_ns:i64  value_len:u32  key  value
    flags      = 1 expires_at_ns present | 2 value present (else tombstone) | 4 value is zlib

The origin table is why entries are cheap: a Live message carries one origin (the sender) for any
number of entries, and a sync chunk a handful, so each origin string is sent, decoded and checked
once per message. The entry header is fixed-size (absent fields are zero, which the decoder
insists on) so one ``struct.unpack_from`` reads it. JSON is used where flexibility matters more
than speed: Hello must stay readable by every future version, so its decoder ignores fields it
does not know, while the other control messages are parsed strictly.

Compression is decided per value by the sender (``compress_threshold``, once both sides have
negotiated the ``"zlib"`` feature) and kept only when it saves bytes. A frame must fit the
receiver's cap *as if it were uncompressed*: the inflated values of one frame share the budget
``max_frame_size - len(frame)``, so a decompression bomb is cut off at the cap.
"""

from __future__ import annotations

import binascii
import json
import struct
import zlib
from collections.abc import Callable
from typing import Any, Final

from ekv._cluster import wire_paxos, wire_summary
from ekv._cluster.messages import (
    PAXOS,
    Auth,
    Bye,
    Duplicate,
    Hello,
    Live,
    Members,
    Message,
    Ping,
    Pong,
    Reject,
    Reply,
    Request,
    Retired,
    Summary,
    SummaryDiff,
    SyncChunk,
    SyncDone,
    SyncRequest,
    TreeMessage,
    VersionVector,
)
from ekv._core import plumtree_wire
from ekv._core.keys import MAX_KEY_BYTES
from ekv._errors import InvalidArgument, ProtocolError
from ekv._model import Entry

__all__ = [
    "CLIENT_FEATURE",
    "FEATURES",
    "HEADER_SIZE",
    "IDENTITY_FEATURE",
    "MAX_ORIGIN_BYTES",
    "PAXOS_FEATURE",
    "PLUMTREE_FEATURE",
    "SUMMARY_FEATURE",
    "FrameDecoder",
    "decode",
    "encode",
    "negotiate",
]

FEATURES: Final[tuple[str, ...]] = ("zlib", "identity", "paxos", "summary", "plumtree")
CLIENT_FEATURE: Final = "client"
"""Offered by a client (not a member): its session carries Request/Reply, never replication."""
IDENTITY_FEATURE: Final = "identity"
"""Hello carries the sender's origin (covered by the cookie proof) and a member may be told it
duplicates another's node id (the Duplicate message)."""
PAXOS_FEATURE: Final = "paxos"
"""The member takes part in linearizable operations (the messages of :mod:`wire_paxos`)."""
SUMMARY_FEATURE: Final = "summary"
"""The member answers anti-entropy probes (Summary/SummaryDiff, :mod:`wire_summary`)."""
PLUMTREE_FEATURE: Final = "plumtree"
"""The member takes part in the broadcast tree of large clusters (TreeMessage,
:mod:`ekv._cluster.broadcast`)."""
"""The optional features this implementation supports; a feature is used on a connection only if
both Hellos list it."""

HEADER_SIZE: Final = 4
"""Bytes of the length prefix in front of every frame."""
MAX_ORIGIN_BYTES: Final = 255
"""Longest node id / origin, in UTF-8 bytes (its length is one byte on the wire)."""

_MAX_NAME_BYTES = 255  # instance names and listen addresses
_MIN_NONCE, _MAX_NONCE = 16, 255
_MAX_LIST = 64  # versions and features in a Hello
_U16_MAX, _U32_MAX, _U64_MAX = 2**16 - 1, 2**32 - 1, 2**64 - 1

_LEN = struct.Struct(">I")
_FRAME_HEAD = struct.Struct(">IB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_LIVE_HEAD = struct.Struct(">H")
_CHUNK_HEAD = struct.Struct(">HQQ")
_ENTRY = struct.Struct(">BIHqQqI")
_ENTRY_SIZE = _ENTRY.size

_F_EXPIRES, _F_VALUE, _F_ZLIB = 1, 2, 4
_VALID_FLAGS = frozenset({0, 1, 2, 3, 6, 7})  # compressed only with a value

_MALFORMED = (ValueError, TypeError, KeyError, IndexError, struct.error, zlib.error, RecursionError, OverflowError)
"""What a malformed body can make the parsing code raise; reported as a ProtocolError."""

_HELLO, _AUTH, _REJECT, _BYE, _PING, _PONG, _MEMBERS, _SYNC_REQUEST, _SYNC_DONE, _REQUEST, _REPLY, _DUPLICATE = range(
    1, 13
)
_RETIRED = 13
_LIVE, _SYNC_CHUNK = 16, 17
_TREE = 26


# -- negotiation ---------------------------------------------------------------------------------


def negotiate(mine: Hello, theirs: Hello) -> tuple[int, frozenset[str]]:
    """The protocol version (the highest both speak) and the features (those both offer) of a
    connection. Both sides compute the same answer from the two Hellos, so nothing more needs to
    be exchanged; the Auth MACs cover both Hellos, so a man in the middle cannot force a downgrade.
    """
    common = set(mine.versions) & set(theirs.versions)
    if not common:
        raise ProtocolError(
            f"no common protocol version: we speak {sorted(mine.versions)}, the peer speaks {sorted(theirs.versions)}"
        )
    return max(common), frozenset(mine.features) & frozenset(theirs.features)


# -- encoding ------------------------------------------------------------------------------------


def encode(message: Message, *, compress_threshold: int | None = None) -> bytes:
    """One complete frame holding ``message``.

    ``compress_threshold``: zlib-compress values of at least this many bytes (only once the
    ``"zlib"`` feature is negotiated). Raises :class:`ekv.InvalidArgument` for a message the
    decoder would reject (an invalid key, ``oseq`` < 1, an out-of-range integer ...): sending it
    would only make the peer drop the connection, again on every reconnect.
    """
    try:
        if isinstance(message, Live | SyncChunk):
            code, body = _encode_data(message, compress_threshold)
        elif isinstance(message, Summary | SummaryDiff):
            code, body = wire_summary.encode(message)
        elif isinstance(message, TreeMessage):
            code, body = _TREE, plumtree_wire.encode(message.message)
        elif isinstance(message, PAXOS) and not isinstance(message, Retired):
            code, body = wire_paxos.encode(message)
        else:
            code, body = _encode_control(message)
    except (
        struct.error,
        TypeError,
        AttributeError,
        UnicodeEncodeError,
        OverflowError,
        ValueError,
        ProtocolError,  # (a tree message the decoder would reject: plumtree_wire raises it)
    ) as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise InvalidArgument(f"cannot encode {type(message).__name__}: {exc}") from None
    return _FRAME_HEAD.pack(len(body) + 1, code) + body


def _encode_data(message: Live | SyncChunk, threshold: int | None) -> tuple[int, bytes]:
    if isinstance(message, Live):
        code, head = _LIVE, _LIVE_HEAD.pack(message.shard)
    else:
        code, head = _SYNC_CHUNK, _CHUNK_HEAD.pack(message.shard, message.sync_id, message.seq)
    origins: dict[str, int] = {}
    parts: list[bytes] = []
    append = parts.append
    pack = _ENTRY.pack
    for entry in message.entries:
        key = entry.key.encode()
        if not key or len(key) > MAX_KEY_BYTES or b"\x00" in key:
            raise InvalidArgument(f"invalid key {entry.key!r:.80}")
        index = origins.get(entry.origin)
        if index is None:
            index = origins[entry.origin] = len(origins)
        if entry.oseq < 1:
            raise InvalidArgument(f"oseq must be >= 1, not {entry.oseq}")
        flags = 0
        expires = entry.expires_at_ns
        if expires is not None:
            flags = _F_EXPIRES
        value = entry.value
        if value is None:
            append(pack(flags, len(key), index, entry.timestamp_ns, entry.oseq, expires or 0, 0))
            append(key)
            continue
        flags |= _F_VALUE
        if threshold is not None and len(value) >= threshold:
            packed = zlib.compress(value, 1)
            if len(packed) < len(value):
                value, flags = packed, flags | _F_ZLIB
        append(pack(flags, len(key), index, entry.timestamp_ns, entry.oseq, expires or 0, len(value)))
        append(key)
        append(value)
    if len(origins) > _U16_MAX:
        raise InvalidArgument(f"too many origins in one message: {len(origins)}")
    table = [head, _U16.pack(len(origins))]
    for origin in origins:
        raw = origin.encode()
        if not raw or len(raw) > MAX_ORIGIN_BYTES:
            raise InvalidArgument(f"invalid origin {origin!r:.80}")
        table.append(bytes((len(raw),)) + raw)
    table.append(_U32.pack(len(message.entries)))
    return code, b"".join(table + parts)


def _encode_control(message: Message) -> tuple[int, bytes]:
    code = _CODES.get(type(message))
    if code is None:
        raise InvalidArgument(f"not an ekv message: {type(message).__name__}")
    obj = {name: _jsonable(getattr(message, name)) for name, _ in _SCHEMAS[code][1]}
    if isinstance(obj.get("reason"), str):  # free text, often an exception message: always send it
        obj["reason"] = obj["reason"].encode("utf-8", "replace").decode()
    try:  # control messages are rare: check them with the decoder, so both sides agree exactly
        _from_fields(code, obj)
    except ProtocolError as exc:
        raise InvalidArgument(f"cannot encode {type(message).__name__}: {exc}") from None
    return code, json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value


# -- decoding ------------------------------------------------------------------------------------


class FrameDecoder:
    """Turns a byte stream into messages, however the stream is split into chunks.

    The cap is small until the peer has authenticated (a stranger cannot make us buffer much) and
    large afterwards (:meth:`set_max_frame_size`). After a :class:`ekv.ProtocolError` the stream
    cannot be resynchronised, so every later :meth:`feed` raises again.
    """

    __slots__ = ("_buf", "_error", "_max")

    def __init__(self, max_frame_size: int) -> None:
        self._buf = bytearray()
        self._error: str | None = None
        self._max = 0
        self.set_max_frame_size(max_frame_size)

    @property
    def max_frame_size(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded (a partial frame)."""
        return len(self._buf)

    def set_max_frame_size(self, max_frame_size: int) -> None:
        """Change the cap; it applies to every frame not yet decoded, buffered ones included."""
        if type(max_frame_size) is not int or not 1 <= max_frame_size <= _U32_MAX:
            raise InvalidArgument(f"max_frame_size must be an int in 1..{_U32_MAX}, not {max_frame_size!r}")
        self._max = max_frame_size

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Decode every frame completed by ``data``; keep the rest for the next call."""
        if self._error is not None:
            raise ProtocolError(f"stream already rejected: {self._error}")
        buf = self._buf
        src: bytes | bytearray | memoryview
        if buf:
            buf += data
            src = buf
        else:
            src = data  # the common case: no copy of whole frames into the buffer
        out: list[Message] = []
        pos, end, cap = 0, len(src), self._max
        try:
            while end - pos >= HEADER_SIZE:
                (size,) = _LEN.unpack_from(src, pos)
                if not 0 < size <= cap:
                    raise ProtocolError(f"frame of {size} bytes declared; the limit is 1..{cap}")
                if end - pos - HEADER_SIZE < size:
                    break
                start = pos + HEADER_SIZE
                pos = start + size
                if src is buf:  # one copy out of the buffer, not two (bytearray slice, then bytes)
                    with memoryview(buf) as view:
                        frame = bytes(view[start:pos])
                else:
                    frame = bytes(src[start:pos])
                out.append(_decode_frame(frame, cap))
        except ProtocolError as exc:
            self._error = str(exc)
            buf.clear()
            raise
        if src is buf:
            del buf[:pos]
        else:
            buf += src[pos:]
        return out


def decode(frame: bytes, *, max_frame_size: int) -> Message:
    """Decode exactly one complete frame (header included), as :class:`FrameDecoder` would."""
    decoder = FrameDecoder(max_frame_size)
    messages = decoder.feed(frame)
    if len(messages) != 1 or decoder.buffered:
        raise ProtocolError(f"expected exactly one frame, got {len(messages)} and {decoder.buffered} more bytes")
    return messages[0]


def _decode_frame(frame: bytes, cap: int) -> Message:
    """``frame`` is the type byte and the body. Anything unexpected becomes a ProtocolError."""
    code = frame[0]
    try:
        if code in (_LIVE, _SYNC_CHUNK):
            return _decode_data(code, frame, cap - len(frame))
        if code in wire_paxos.CODES:
            return wire_paxos.decode(code, frame, 1)
        if code in wire_summary.CODES:
            return wire_summary.decode(code, frame, 1)
        if code == _TREE:
            return TreeMessage(plumtree_wire.decode(frame[1:]))
        if code not in _SCHEMAS:
            raise ProtocolError(f"unknown message type {code}")
        return _from_fields(code, _parse_json(frame))
    except ProtocolError:
        raise
    except _MALFORMED as exc:
        raise ProtocolError(f"malformed message (type {code}): {type(exc).__name__}: {exc}") from None


def _decode_data(code: int, frame: bytes, budget: int) -> Live | SyncChunk:
    head = _LIVE_HEAD if code == _LIVE else _CHUNK_HEAD  # (shard) or (shard, sync_id, seq)
    if len(frame) < 1 + head.size:
        raise ProtocolError("truncated message header")
    fields = head.unpack_from(frame, 1)
    entries = _decode_entries(frame, 1 + head.size, budget)
    return Live(fields[0], entries) if code == _LIVE else SyncChunk(fields[0], fields[1], fields[2], entries)


def _decode_entries(frame: bytes, pos: int, budget: int) -> tuple[Entry, ...]:
    origins, pos = _decode_origins(frame, pos)
    n_origins, end = len(origins), len(frame)
    if end - pos < 4:
        raise ProtocolError("truncated entry count")
    (count,) = _U32.unpack_from(frame, pos)
    pos += 4
    if count * _ENTRY_SIZE > end - pos:
        raise ProtocolError(f"{count} entries declared but only {end - pos} bytes left")
    entries: list[Entry] = []
    append, unpack = entries.append, _ENTRY.unpack_from
    try:  # the hot loop: one combined check per entry, the diagnosis only when it fails
        for _ in range(count):
            if end - pos < _ENTRY_SIZE:
                raise ProtocolError("truncated entry header")
            flags, key_len, index, timestamp, oseq, expires, value_len = unpack(frame, pos)
            start = pos + _ENTRY_SIZE
            key_end = start + key_len
            pos = key_end + value_len
            if (
                flags not in _VALID_FLAGS
                or not 0 < key_len <= MAX_KEY_BYTES
                or pos > end
                or index >= n_origins
                or oseq < 1
                or (expires and not flags & _F_EXPIRES)
                or (value_len and not flags & _F_VALUE)
            ):
                raise ProtocolError(_bad_entry(flags, key_len, pos > end, index, n_origins, oseq))
            raw_key = frame[start:key_end]
            if b"\x00" in raw_key:
                raise ProtocolError("key contains a NUL character")
            value = frame[key_end:pos] if flags & _F_VALUE else None
            if flags & _F_ZLIB:
                value = _inflate(frame[key_end:pos], budget + value_len)
                budget -= len(value) - value_len
            append(Entry(raw_key.decode(), timestamp, origins[index], oseq, expires if flags & 1 else None, value))
    except UnicodeDecodeError as exc:  # only keys are decoded in the loop
        raise ProtocolError(f"key is not valid UTF-8: {exc.object[:40]!r}") from None
    if pos != end:
        raise ProtocolError(f"{end - pos} trailing bytes after the entries")
    return tuple(entries)


def _decode_origins(frame: bytes, pos: int) -> tuple[list[str], int]:
    if len(frame) - pos < 2:
        raise ProtocolError("truncated origin table")
    (count,) = _U16.unpack_from(frame, pos)
    pos += 2
    origins: list[str] = []
    for _ in range(count):
        size = frame[pos] if pos < len(frame) else 0
        raw = frame[pos + 1 : pos + 1 + size]
        if not raw or len(raw) != size:
            raise ProtocolError("truncated origin table, or an empty origin")
        try:
            origins.append(raw.decode())
        except UnicodeDecodeError:
            raise ProtocolError(f"origin is not valid UTF-8: {raw[:40]!r}") from None
        pos += 1 + size
    return origins, pos


def _bad_entry(flags: int, key_len: int, truncated: bool, index: int, n_origins: int, oseq: int) -> str:
    if flags not in _VALID_FLAGS:
        return f"invalid entry flags {flags:#x}"
    if not 0 < key_len <= MAX_KEY_BYTES:
        return f"invalid key length {key_len}"
    if truncated:
        return "truncated entry"
    if index >= n_origins:
        return f"origin index {index} out of range (the message has {n_origins} origins)"
    if oseq < 1:
        return "oseq must be >= 1"
    return "a field that its flags mark absent is not zero"


def _inflate(data: bytes, limit: int) -> bytes:
    """Inflate one zlib stream into at most ``limit`` bytes; anything else is rejected."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max(limit, 1))  # max_length 0 would mean "no limit"
    except zlib.error as exc:
        raise ProtocolError(f"corrupt compressed value: {exc}") from None
    if len(out) > limit or (not inflater.eof and len(out) == limit):
        raise ProtocolError(f"compressed value inflates past the frame size limit ({limit} bytes left)")
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise ProtocolError("truncated or padded compressed value")
    return out


# -- control messages (JSON) ---------------------------------------------------------------------


def _parse_json(frame: bytes) -> Any:
    """Strict JSON: UTF-8, nothing before or after the value, no duplicate names. Floats and
    integer literals of more than 20 digits are kept as text (the field checks then reject them
    where an integer is due), so an unknown Hello field may hold any JSON, while a huge number
    costs nothing to parse. Nesting too deep (RecursionError) is just another invalid body."""
    try:
        text = frame[1:].decode()
        obj, end = _JSON.raw_decode(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise ProtocolError(f"body is not valid JSON: {type(exc).__name__}: {exc}") from None
    if end != len(text):
        raise ProtocolError(f"{len(text) - end} trailing characters after the JSON body")
    return obj


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ProtocolError("duplicate name in a JSON object")
    return obj


def _int_or_text(text: str) -> int | str:
    return int(text) if len(text) <= 20 else text


_JSON: Final = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_float=str, parse_constant=str, parse_int=_int_or_text
)

_Check = Callable[[Any, str], Any]
"""Validates one decoded JSON field (``what`` names it in errors); returns the message's value."""


def _int(lo: int, hi: int) -> _Check:
    def check(value: Any, what: str) -> int:
        if type(value) is not int or not lo <= value <= hi:
            raise ProtocolError(f"{what} must be an integer in {lo}..{hi}, not {value!r:.40}")
        return value

    return check


def _text(max_bytes: int | None = _MAX_NAME_BYTES, *, empty: bool = False) -> _Check:
    def check(value: Any, what: str) -> str:
        if type(value) is not str:
            raise ProtocolError(f"{what} must be a string, not {type(value).__name__}")
        try:
            size = len(value.encode())
        except UnicodeEncodeError:
            raise ProtocolError(f"{what} is not valid UTF-8") from None
        if (size == 0 and not empty) or (max_bytes is not None and size > max_bytes):
            raise ProtocolError(f"{what} must be {0 if empty else 1}..{max_bytes} bytes of UTF-8, not {size}")
        return value

    return check


def _hex(lo: int, hi: int) -> _Check:
    def check(value: Any, what: str) -> bytes:
        if type(value) is not str or not 2 * lo <= len(value) <= 2 * hi or value != value.lower():
            raise ProtocolError(f"{what} must be {lo}..{hi} bytes in lowercase hex")
        try:
            return binascii.unhexlify(value)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"{what} is not valid hex") from None

    return check


def _tuple(item: _Check, min_len: int = 0, max_len: int | None = None) -> _Check:
    def check(value: Any, what: str) -> tuple[Any, ...]:
        if type(value) is not list or len(value) < min_len or (max_len is not None and len(value) > max_len):
            raise ProtocolError(f"{what} must be a list of {min_len}..{max_len or 'any'} items")
        try:  # (items are named only for the error: formatting each name costs more than its check)
            return tuple([item(v, what) for v in value])
        except ProtocolError:
            return tuple(item(v, f"{what}[{i}]") for i, v in enumerate(value))  # (raises, naming the item)

    return check


def _optional(inner: _Check) -> _Check:
    return lambda value, what: None if value is None else inner(value, what)


def _choice(*options: str) -> _Check:
    def check(value: Any, what: str) -> str:
        if value not in options or type(value) is not str:
            raise ProtocolError(f"{what} must be one of {options}, not {value!r:.40}")
        return value

    return check


_NAME, _ORIGIN, _REASON = _text(), _text(MAX_ORIGIN_BYTES), _text(None, empty=True)
_I64, _U64, _SHARD = _int(-(2**63), 2**63 - 1), _int(0, _U64_MAX), _int(0, _U16_MAX)


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise ProtocolError(f"{what} must be true or false")
    return value


def _member(value: Any, what: str) -> tuple[str, str]:
    if type(value) is not list or len(value) != 2:
        raise ProtocolError(f"{what} must be a [node_id, listen] pair")
    try:  # (the fields are named only for the error, as in _tuple)
        return _ORIGIN(value[0], what), _NAME(value[1], what)
    except ProtocolError:
        return _ORIGIN(value[0], f"{what} node id"), _NAME(value[1], f"{what} address")


def _vv(value: Any, what: str) -> VersionVector:
    if type(value) is not dict:
        raise ProtocolError(f"{what} must be an object")
    try:  # (the entries are named only for the error, as in _tuple)
        return {_ORIGIN(k, what): _U64(v, what) for k, v in value.items()}
    except ProtocolError:
        return {_ORIGIN(k, f"{what} origin"): _U64(v, f"{what}[{k!r:.40}]") for k, v in value.items()}


_SCHEMAS: Final[dict[int, tuple[Callable[..., Message], tuple[tuple[str, _Check], ...]]]] = {
    _HELLO: (
        Hello,
        (
            ("versions", _tuple(_int(1, _U16_MAX), 1, _MAX_LIST)),
            ("features", _tuple(_text(64), 0, _MAX_LIST)),
            ("instance", _NAME),
            ("node_id", _ORIGIN),
            ("shards", _int(1, _U16_MAX)),
            ("nonce", _hex(_MIN_NONCE, _MAX_NONCE)),
            ("listen", _optional(_NAME)),
            ("wall_ns", _I64),
            ("origin", _text(MAX_ORIGIN_BYTES, empty=True)),
            ("codec", _optional(_NAME)),
            ("consistent_prefixes", _tuple(_text(MAX_KEY_BYTES), 0, 1024)),
            ("cluster_size", _optional(_int(1, 64))),
            ("role", _choice("voter", "observer")),
            ("retired", _tuple(_ORIGIN, 0, 1024)),
        ),
    ),
    _AUTH: (Auth, (("mac", _hex(1, 64)),)),
    _REJECT: (Reject, (("reason", _REASON),)),
    _BYE: (Bye, (("reason", _REASON),)),
    _DUPLICATE: (Duplicate, (("origin", _ORIGIN), ("address", _REASON))),
    _PING: (Ping, (("wall_ns", _I64),)),
    _PONG: (Pong, (("echo_wall_ns", _I64), ("wall_ns", _I64))),
    _MEMBERS: (Members, (("members", _tuple(_member)),)),
    _SYNC_REQUEST: (SyncRequest, (("shard", _SHARD), ("sync_id", _U64), ("vv", _vv))),
    _SYNC_DONE: (
        SyncDone,
        (
            ("shard", _SHARD),
            ("sync_id", _U64),
            ("vv", _vv),
            ("kind", _choice("delta", "full")),
            ("chunks", _U64),
            ("entries", _U64),
        ),
    ),
    _REQUEST: (Request, (("request_id", _U64), ("op", _text(64)), ("args", _text(None, empty=True)))),
    _RETIRED: (Retired, (("node_ids", _tuple(_ORIGIN, 0, 1024)),)),
    _REPLY: (
        Reply,
        (("request_id", _U64), ("ok", _bool), ("result", _text(None, empty=True)), ("error", _REASON)),
    ),
}
"""Each control message: its class and its fields in constructor order, with their checks."""

_CODES: Final[dict[object, int]] = {cls: code for code, (cls, _) in _SCHEMAS.items()}
_LENIENT: Final = frozenset({_HELLO})
"""Messages whose unknown fields are ignored: Hello is read before any version is agreed, so a
newer version may add fields to it that this one must skip. The others are strict."""
_ADDED: Final[dict[int, dict[str, Any]]] = {
    _HELLO: {
        "origin": "",
        "codec": None,
        "consistent_prefixes": (),
        "cluster_size": None,
        "role": "voter",
        "retired": (),
    }
}
"""Fields added to a lenient message after the first release, with the value an older peer's
message (which lacks them) stands for."""


def _from_fields(code: int, obj: Any) -> Message:
    cls, schema = _SCHEMAS[code]
    name = getattr(cls, "__name__", "message")
    if type(obj) is not dict:
        raise ProtocolError(f"{name} is not a JSON object")
    added = _ADDED.get(code, {})
    missing = [field for field, _ in schema if field not in obj and field not in added]
    if missing:
        raise ProtocolError(f"{name} lacks {', '.join(missing)}")
    if code not in _LENIENT and len(obj) != len(schema):
        raise ProtocolError(f"{name} has unknown fields {sorted(set(obj) - {f for f, _ in schema})!r:.200}")
    try:  # (the fields are named only for the error, as in _tuple)
        return cls(*[check(obj[field], name) if field in obj else added[field] for field, check in schema])
    except ProtocolError:
        return cls(*(check(obj[field], f"{name}.{field}") if field in obj else added[field] for field, check in schema))
