"""The binary encoding of the membership messages (:mod:`ekv._core.swim`): the trust boundary.

Why binary and hand-checked rather than pickle or a generic format: nothing received from the
network is unpickled (ekv's rule), and a message that is garbage, truncated, too long, or has
trailing bytes, an unknown kind or status, a boolean that is not 0/1, a string that is not UTF-8
or is empty where a name is needed, must be refused with one error type
(:class:`ekv.ProtocolError`) before any of it reaches the state machine. Every field is checked
as it is read.

Layout (big-endian): one kind byte, then per kind

* Ping: seq u64, target str, gossip;  Ack / Nack: seq u64, gossip;
* PingReq: seq u64, target str, addr str, gossip;  Gossip: gossip;
* Sync: sender str, reply u8 (0/1), count u16, that many updates;

where str is a u8 byte length and UTF-8 bytes, gossip is a u8 count and that many updates, and
an update is node str, addr str, incarnation u64, status u8, by str (empty unless a suspicion).
A message is at most :data:`MAX_MESSAGE` bytes: about 1,500 members' worth of a Sync; piggybacked
gossip is far smaller (a few updates per message).
"""

from __future__ import annotations

import struct

from ekv._core.fields import FieldReader
from ekv._core.swim import Ack, Gossip, Message, Nack, Ping, PingReq, Status, Sync, Update
from ekv._errors import ProtocolError

__all__ = ["MAX_MESSAGE", "decode", "encode"]

MAX_MESSAGE = 1 << 20
_MAX_STR = 255
_MAX_GOSSIP = 255
_MAX_MEMBERS = 65_535
_PING, _ACK, _PING_REQ, _NACK, _SYNC, _GOSSIP = range(1, 7)
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_INC_STATUS = struct.Struct(">QB")
_U64_MAX = 2**64 - 1
_STATUSES = tuple(Status)


def _str(out: list[bytes], text: str) -> None:
    data = text.encode("utf-8")
    if len(data) > _MAX_STR:
        raise ProtocolError(f"a name of {len(data)} bytes; the limit is {_MAX_STR}")
    out += (_U8.pack(len(data)), data)


def _u64(out: list[bytes], value: int) -> None:
    if not 0 <= value <= _U64_MAX:
        raise ProtocolError(f"{value} does not fit in 64 bits")
    out.append(_U64.pack(value))


def _update(out: list[bytes], update: Update) -> None:
    node, addr, by = update.node.encode("utf-8"), update.addr.encode("utf-8"), update.by.encode("utf-8")
    if max(len(node), len(addr), len(by)) > _MAX_STR:
        raise ProtocolError(f"a name of over {_MAX_STR} bytes in an update about {update.node!r}")
    if not 0 <= update.incarnation <= _U64_MAX:
        raise ProtocolError(f"incarnation {update.incarnation} does not fit in 64 bits")
    tail = _INC_STATUS.pack(update.incarnation, int(update.status))
    out.append(b"".join((bytes((len(node),)), node, bytes((len(addr),)), addr, tail, bytes((len(by),)), by)))


def _gossip(out: list[bytes], gossip: tuple[Update, ...]) -> None:
    if len(gossip) > _MAX_GOSSIP:
        raise ProtocolError(f"{len(gossip)} piggybacked updates; the limit is {_MAX_GOSSIP}")
    out.append(_U8.pack(len(gossip)))
    for update in gossip:
        _update(out, update)


def encode(message: Message) -> bytes:
    """The bytes of ``message``; :class:`ekv.ProtocolError` if a field cannot be sent."""
    out: list[bytes] = []
    if isinstance(message, Ping | PingReq):
        out.append(_U8.pack(_PING if isinstance(message, Ping) else _PING_REQ))
        _u64(out, message.seq)
        _str(out, message.target)
        if isinstance(message, PingReq):
            _str(out, message.addr)
    elif isinstance(message, Ack | Nack):
        out.append(_U8.pack(_ACK if isinstance(message, Ack) else _NACK))
        _u64(out, message.seq)
    elif isinstance(message, Gossip):
        out.append(_U8.pack(_GOSSIP))
    else:
        out.append(_U8.pack(_SYNC))
        _str(out, message.sender)
        out.append(_U8.pack(1 if message.reply else 0))
        if len(message.members) > _MAX_MEMBERS:
            raise ProtocolError(f"a view of {len(message.members)} members; the limit is {_MAX_MEMBERS}")
        out.append(_U16.pack(len(message.members)))
        for update in message.members:
            _update(out, update)
    if not isinstance(message, Sync):
        _gossip(out, message.gossip)
    data = b"".join(out)
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"a message of {len(data)} bytes; the limit is {MAX_MESSAGE}")
    return data


class _Reader(FieldReader):
    """Reads fields off the front of a message, checking each."""

    what = "membership message"

    def text(self, *, name: bool = True) -> str:
        raw = self.take(self.u8())
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("a name that is not UTF-8 in a membership message") from None
        if name and not text:
            raise ProtocolError("an empty name in a membership message")
        return text

    def update(self) -> Update:
        """One update, read in one go (a Sync holds one per member: this is the hot path)."""
        data, at = self.data, self.at
        try:
            n = data[at]
            node = data[at + 1 : at + 1 + n]
            at += 1 + n
            n = data[at]
            addr = data[at + 1 : at + 1 + n]
            at += 1 + n
            incarnation, raw_status = _INC_STATUS.unpack_from(data, at)
            at += _INC_STATUS.size
            n = data[at]
            by = data[at + 1 : at + 1 + n]
            at += 1 + n
        except (IndexError, struct.error):
            raise ProtocolError(f"truncated membership message ({len(data)} bytes)") from None
        if at > len(data):
            raise ProtocolError(f"truncated membership message ({len(data)} bytes)")
        if raw_status >= len(_STATUSES):
            raise ProtocolError(f"unknown member status {raw_status}")
        status = _STATUSES[raw_status]
        if by and status is not Status.SUSPECT:
            raise ProtocolError("an accuser on an update that is not a suspicion")
        if not node or not addr:
            raise ProtocolError("an empty name in a membership message")
        self.at = at
        try:
            return Update(node.decode("utf-8"), addr.decode("utf-8"), incarnation, status, by.decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError("a name that is not UTF-8 in a membership message") from None

    def gossip(self) -> tuple[Update, ...]:
        return tuple(self.update() for _ in range(self.u8()))


def decode(data: bytes) -> Message:
    """The message in ``data``, every field checked; :class:`ekv.ProtocolError` otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"a membership message must be bytes, not {type(data).__name__}")
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"a membership message of {len(data)} bytes; the limit is {MAX_MESSAGE}")
    reader = _Reader(bytes(data))
    kind = reader.u8()
    message: Message
    if kind in (_PING, _PING_REQ):
        seq, target = reader.u64(), reader.text()
        if kind == _PING:
            message = Ping(seq, target, reader.gossip())
        else:
            message = PingReq(seq, target, reader.text(), reader.gossip())
    elif kind in (_ACK, _NACK):
        seq = reader.u64()
        message = Ack(seq, reader.gossip()) if kind == _ACK else Nack(seq, reader.gossip())
    elif kind == _GOSSIP:
        message = Gossip(reader.gossip())
    elif kind == _SYNC:
        sender, reply = reader.text(), reader.u8()
        if reply > 1:
            raise ProtocolError(f"a Sync reply flag of {reply}")
        count = _U16.unpack(reader.take(2))[0]
        message = Sync(sender, bool(reply), tuple(reader.update() for _ in range(count)))
    else:
        raise ProtocolError(f"unknown membership message kind {kind}")
    if reader.at != len(reader.data):
        raise ProtocolError(f"{len(reader.data) - reader.at} trailing bytes after a membership message")
    return message
