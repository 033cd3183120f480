"""The binary layout of the linearizable-operation messages (part of :mod:`ekv._cluster.wire`).

They carry values (an accepted record's bytes), so they use a struct layout like ``Live`` rather
than JSON, and the same rules as the rest of the wire format: every field checked, values opaque
bytes never interpreted, nothing read past the frame, :class:`ekv.ProtocolError` for anything
malformed. Layout (big-endian)::

    Prepare   = request:u64  ballot  key
    Promise   = request:u64  ok:u8  promised:ballot  accepted:ballot  record
    Accept    = request:u64  ballot  key  record
    Accepted  = request:u64  ok:u8  promised:ballot
    Propose   = request:u64  timeout_ms:u32  key  cond  record   (the new value, as a record)
    Outcome   = request:u64  kind:u8  record
    ballot    = counter:i64  len:u8  origin
    key       = len:u32  UTF-8
    cond      = kind:u8 (0 any, 1 absent, 2 read, 3 version, 4 refresh)  version:i64
    record    = flags:u8 (1 present, 2 value, 4 expires)  ts:i64  len:u8 origin  expires:i64
                lineage_len:u16  lineage  value_len:u32  value
"""

from __future__ import annotations

import struct
from typing import Final

from ekv._cluster.messages import Accept, Accepted, Outcome, Prepare, Promise, Propose
from ekv._core.keys import MAX_KEY_BYTES
from ekv._core.paxos import (
    ABSENT,
    ANY,
    READ,
    REFRESH,
    Ballot,
    Committed,
    Conflict,
    NoQuorum,
    Op,
    Read,
    Record,
    Unconfirmed,
)
from ekv._core.paxos import Outcome as Result
from ekv._core.paxos import Promise as PaxosPromise
from ekv._errors import InvalidArgument, ProtocolError

__all__ = ["CODES", "OUTCOME", "PROPOSE", "decode", "encode", "outcome_message", "result_of"]

_PREPARE, _PROMISE, _ACCEPT, _ACCEPTED, _PROPOSE, _OUTCOME = range(18, 24)
PROPOSE, OUTCOME = _PROPOSE, _OUTCOME
"""The codes of Propose and Outcome (the local bus carries their bodies too)."""
CODES: Final = frozenset(range(18, 24))
_TYPES: Final[dict[type, int]] = {  # (Retired is a JSON control message, in wire.py)
    Prepare: _PREPARE,
    Promise: _PROMISE,
    Accept: _ACCEPT,
    Accepted: _ACCEPTED,
    Propose: _PROPOSE,
    Outcome: _OUTCOME,
}
_KINDS: Final = ("committed", "read", "conflict", "unconfirmed", "no_quorum")
_CONDS: Final = (ANY, ABSENT, READ, "version", REFRESH)

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_REC = struct.Struct(">Bq")
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _ballot(ballot: Ballot) -> bytes:
    raw = ballot.by.encode()
    if len(raw) > 255:
        raise InvalidArgument(f"invalid ballot origin {ballot.by!r:.80}")
    return _I64.pack(ballot.counter) + bytes((len(raw),)) + raw


def _key(key: str) -> bytes:
    raw = key.encode()
    if not raw or len(raw) > MAX_KEY_BYTES or b"\x00" in raw:
        raise InvalidArgument(f"invalid key {key!r:.80}")
    return _U32.pack(len(raw)) + raw


def _record(record: Record | None) -> bytes:
    if record is None:
        return b"\x00"
    flags = 1 | (2 if record.value is not None else 0) | (4 if record.expires_at is not None else 0)
    origin = record.origin.encode()
    if len(origin) > 255 or len(record.lineage) > 65535:
        raise InvalidArgument(f"invalid origin {record.origin!r:.80}")
    value = record.value or b""
    return b"".join(
        (
            _REC.pack(flags, record.ts),
            bytes((len(origin),)),
            origin,
            _I64.pack(record.expires_at or 0),
            _U16.pack(len(record.lineage)),
            record.lineage,
            _U32.pack(len(value)),
            value,
        )
    )


def encode(message: Prepare | Promise | Accept | Accepted | Propose | Outcome) -> tuple[int, bytes]:
    """``(type code, body)`` of a linearizable-operation message."""
    code = _TYPES[type(message)]
    head = _U64.pack(message.request)
    if isinstance(message, Prepare):
        return code, head + _ballot(message.ballot) + _key(message.key)
    if isinstance(message, Promise):
        p = message.promise
        return code, head + _U8.pack(p.ok) + _ballot(p.promised) + _ballot(p.accepted) + _record(p.record)
    if isinstance(message, Accept):
        return code, head + _ballot(message.ballot) + _key(message.key) + _record(message.record)
    if isinstance(message, Accepted):
        return code, head + _U8.pack(message.ok) + _ballot(message.promised)
    if isinstance(message, Propose):
        op = message.op
        cond = op.cond
        kind, version = (_CONDS.index(cond), 0) if isinstance(cond, str) and cond != "version" else (3, cond)
        new = Record(0, "", op.expires_at, op.value)
        body = _U32.pack(message.timeout_ms) + _key(op.key) + _U8.pack(kind) + _I64.pack(version) + _record(new)
        return code, head + body
    return code, head + _U8.pack(_KINDS.index(message.kind)) + _record(message.record)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolError("a linearizable-operation message is truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> int:
        (value,) = fmt.unpack(self.take(fmt.size))
        return int(value)

    def text(self, length: int, what: str) -> str:
        try:
            return self.take(length).decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not UTF-8") from None

    def ballot(self) -> Ballot:
        counter = self.unpack(_I64)
        return Ballot(counter, self.text(self.unpack(_U8), "a ballot's origin"))

    def key(self) -> str:
        length = self.unpack(_U32)
        if not 0 < length <= MAX_KEY_BYTES:
            raise ProtocolError(f"a key of {length} bytes")
        key = self.text(length, "a key")
        if "\x00" in key:
            raise ProtocolError("a key with a NUL character")
        return key

    def flag(self) -> bool:
        value = self.unpack(_U8)
        if value > 1:
            raise ProtocolError(f"a boolean of {value}")
        return value == 1

    def record(self) -> Record | None:
        flags = self.unpack(_U8)
        if flags == 0:
            return None
        if flags & ~7 or not flags & 1:
            raise ProtocolError(f"record flags {flags}")
        ts = self.unpack(_I64)
        origin = self.text(self.unpack(_U8), "a record's origin")
        expires = self.unpack(_I64)
        lineage = self.take(self.unpack(_U16))
        value = self.take(self.unpack(_U32))
        if not flags & 2 and value:
            raise ProtocolError("a deleted record with a value")
        if not flags & 4 and expires:
            raise ProtocolError("a record without expiry has one")
        return Record(ts, origin, expires if flags & 4 else None, value if flags & 2 else None, lineage)


def decode(code: int, frame: bytes, pos: int) -> Prepare | Promise | Accept | Accepted | Propose | Outcome:
    """The message of type ``code`` whose body starts at ``frame[pos]`` (to the end)."""
    r = _Reader(frame, pos)
    request = r.unpack(_U64)
    message: Prepare | Promise | Accept | Accepted | Propose | Outcome
    if code == _PREPARE:
        ballot = r.ballot()
        message = Prepare(request, r.key(), ballot)
    elif code == _PROMISE:
        ok = r.flag()
        promised, accepted = r.ballot(), r.ballot()
        message = Promise(request, PaxosPromise(ok, promised, accepted, r.record()))
    elif code == _ACCEPT:
        ballot = r.ballot()
        key = r.key()
        message = Accept(request, key, ballot, r.record())
    elif code == _ACCEPTED:
        ok = r.flag()
        message = Accepted(request, ok, r.ballot())
    elif code == _PROPOSE:
        timeout_ms = r.unpack(_U32)
        key = r.key()
        kind, version = r.unpack(_U8), r.unpack(_I64)
        if kind >= len(_CONDS):
            raise ProtocolError(f"condition kind {kind}")
        new = r.record()
        if new is None:
            raise ProtocolError("a Propose without its new value")
        cond: str | int = version if kind == 3 else _CONDS[kind]
        message = Propose(request, Op(key, cond, new.value, new.expires_at), timeout_ms)
    else:
        kind = r.unpack(_U8)
        if kind >= len(_KINDS):
            raise ProtocolError(f"outcome kind {kind}")
        message = Outcome(request, _KINDS[kind], r.record())
    if r.pos != len(frame):
        raise ProtocolError("trailing bytes after a linearizable-operation message")
    return message


_KIND_OF: Final[dict[type, str]] = {
    Committed: "committed",
    Read: "read",
    Conflict: "conflict",
    Unconfirmed: "unconfirmed",
    NoQuorum: "no_quorum",
}


def outcome_message(request: int, result: Result) -> Outcome:
    """The Outcome message that reports ``result``."""
    return Outcome(request, _KIND_OF[type(result)], getattr(result, "record", None))


def result_of(answer: Outcome) -> Result:
    """The outcome an Outcome message reports (a ``committed`` without its record: unconfirmed)."""
    record = answer.record
    if answer.kind == "committed" and record is not None:
        return Committed(record)
    if answer.kind == "read":
        return Read(record, False)
    if answer.kind == "conflict":
        return Conflict(record, False)
    if answer.kind == "no_quorum":
        return NoQuorum()
    return Unconfirmed()
