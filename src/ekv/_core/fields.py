"""Reading a binary message field by field, each read checked: the part the membership and
broadcast codecs (:mod:`ekv._core.swim_wire`, :mod:`ekv._core.plumtree_wire`) share. Anything
short or malformed is a :class:`ekv.ProtocolError` naming the kind of message, never an
``IndexError`` or a ``struct.error``, because the bytes come from the network."""

from __future__ import annotations

import struct

from ekv._errors import ProtocolError

__all__ = ["FieldReader"]

_U64 = struct.Struct(">Q")


class FieldReader:
    """Reads fields off the front of ``data``; ``what`` names the message in errors."""

    what = "message"

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ProtocolError(f"truncated {self.what} ({len(self.data)} bytes)")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])
