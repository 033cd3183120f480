"""The binary encoding of the broadcast messages (:mod:`ekv._core.plumtree`): the trust boundary.

Why binary and hand-checked, as :mod:`ekv._core.swim_wire`: nothing received from the network is
unpickled (ekv's rule), and a message that is garbage, truncated, too long, or has trailing
bytes, an unknown kind, a flag that is not 0/1, a hop count of 0, a string that is not UTF-8 or
is empty, or more dots than announced, is refused with one error type (:class:`ekv.ProtocolError`)
before any of it reaches the state machine. Every field is checked as it is read.

Layout (big-endian): one kind byte, then per kind

* Gossip: origin str, seq u64, hops u8 (1..255), payload length u32 and the payload bytes;
* IHave / Graft: count u16 (1..:data:`MAX_DOTS`), that many dots (origin str, seq u64);
* Neighbor: urgent u8 (0/1);  Prune, Accept, Disconnect: nothing;

where str is a u8 byte length and UTF-8 bytes. A payload is at most :data:`MAX_PAYLOAD` bytes.
"""

from __future__ import annotations

import struct

from ekv._core.fields import FieldReader
from ekv._core.plumtree import Accept, Disconnect, Dot, Gossip, Graft, IHave, Message, Neighbor, Prune
from ekv._errors import ProtocolError

__all__ = ["MAX_DOTS", "MAX_PAYLOAD", "decode", "encode"]

MAX_PAYLOAD = 16 << 20
MAX_DOTS = 4_096
_MAX_STR = 255
_U64_MAX = 2**64 - 1
_GOSSIP, _IHAVE, _GRAFT, _PRUNE, _NEIGHBOR, _ACCEPT, _DISCONNECT = range(1, 8)
_EMPTY: dict[int, Message] = {_PRUNE: Prune(), _ACCEPT: Accept(), _DISCONNECT: Disconnect()}
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def _str(out: list[bytes], text: str) -> None:
    data = text.encode("utf-8")
    if not data or len(data) > _MAX_STR:
        raise ProtocolError(f"a name of {len(data)} bytes; a name has 1 to {_MAX_STR}")
    out += (bytes((len(data),)), data)


def _seq(out: list[bytes], seq: int) -> None:
    if not 0 <= seq <= _U64_MAX:
        raise ProtocolError(f"sequence number {seq} does not fit in 64 bits")
    out.append(_U64.pack(seq))


def _dots(out: list[bytes], dots: tuple[Dot, ...]) -> None:
    if not 1 <= len(dots) <= MAX_DOTS:
        raise ProtocolError(f"{len(dots)} message ids in one message; 1 to {MAX_DOTS} are allowed")
    out.append(_U16.pack(len(dots)))
    for origin, seq in dots:
        _str(out, origin)
        _seq(out, seq)


def encode(message: Message) -> bytes:
    """The bytes of ``message``; :class:`ekv.ProtocolError` if a field cannot be sent."""
    out: list[bytes] = []
    if isinstance(message, Gossip):
        out.append(bytes((_GOSSIP,)))
        _str(out, message.origin)
        _seq(out, message.seq)
        if not 1 <= message.hops <= 255:
            raise ProtocolError(f"a hop count of {message.hops}; 1 to 255 are allowed")
        if len(message.payload) > MAX_PAYLOAD:
            raise ProtocolError(f"a payload of {len(message.payload)} bytes; the limit is {MAX_PAYLOAD}")
        out += (bytes((message.hops,)), _U32.pack(len(message.payload)), bytes(message.payload))
    elif isinstance(message, IHave | Graft):
        out.append(bytes((_IHAVE if isinstance(message, IHave) else _GRAFT,)))
        _dots(out, message.dots)
    elif isinstance(message, Neighbor):
        out.append(bytes((_NEIGHBOR, 1 if message.urgent else 0)))
    elif isinstance(message, Prune):
        out.append(bytes((_PRUNE,)))
    elif isinstance(message, Accept):
        out.append(bytes((_ACCEPT,)))
    else:
        out.append(bytes((_DISCONNECT,)))
    return b"".join(out)


class _Reader(FieldReader):
    """Reads fields off the front of a message, checking each."""

    what = "broadcast message"

    def flag(self) -> bool:
        value = self.u8()
        if value > 1:
            raise ProtocolError(f"a flag of {value} in a broadcast message")
        return value == 1

    def name(self) -> str:
        raw = self.take(self.u8())
        if not raw:
            raise ProtocolError("an empty name in a broadcast message")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("a name that is not UTF-8 in a broadcast message") from None

    def seq(self) -> int:
        return self.u64()

    def dots(self) -> tuple[Dot, ...]:
        count = int(_U16.unpack(self.take(2))[0])
        if not 1 <= count <= MAX_DOTS:
            raise ProtocolError(f"{count} message ids in one message; 1 to {MAX_DOTS} are allowed")
        return tuple((self.name(), self.seq()) for _ in range(count))


def decode(data: bytes) -> Message:
    """The message in ``data``, every field checked; :class:`ekv.ProtocolError` otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"a broadcast message must be bytes, not {type(data).__name__}")
    if len(data) > MAX_PAYLOAD + 2 * _MAX_STR + 32:
        raise ProtocolError(f"a broadcast message of {len(data)} bytes is over the limit")
    reader = _Reader(bytes(data))
    kind = reader.u8()
    message: Message
    if kind == _GOSSIP:
        origin, seq, hops = reader.name(), reader.seq(), reader.u8()
        if hops == 0:
            raise ProtocolError("a hop count of 0 in a broadcast message")
        size = int(_U32.unpack(reader.take(4))[0])
        if size > MAX_PAYLOAD:
            raise ProtocolError(f"a payload of {size} bytes; the limit is {MAX_PAYLOAD}")
        message = Gossip(origin, seq, hops, reader.take(size))
    elif kind in (_IHAVE, _GRAFT):
        dots = reader.dots()
        message = IHave(dots) if kind == _IHAVE else Graft(dots)
    elif kind == _NEIGHBOR:
        message = Neighbor(reader.flag())
    elif kind in _EMPTY:
        message = _EMPTY[kind]
    else:
        raise ProtocolError(f"unknown broadcast message kind {kind}")
    if reader.at != len(reader.data):
        raise ProtocolError(f"{len(reader.data) - reader.at} trailing bytes after a broadcast message")
    return message
