"""The binary layout of the anti-entropy probe messages (part of :mod:`ekv._cluster.wire`).

A probe is sent once per anti-entropy round by every node of a large cluster, so it is a fixed
struct layout rather than JSON, with the rules of the rest of the wire format: every field
checked, nothing read past the frame, :class:`ekv.ProtocolError` for anything malformed.
Only sent on sessions that negotiated the ``"summary"`` feature. Layout (big-endian)::

    Summary     = probe:u64  count:u16  digest{count}     (digest: 8 bytes, one per shard)
    SummaryDiff = probe:u64  count:u16  shard:u16{count}  (strictly ascending)
"""

from __future__ import annotations

import itertools
import struct
from typing import Final

from ekv._cluster.messages import Summary, SummaryDiff
from ekv._errors import InvalidArgument, ProtocolError

__all__ = ["CODES", "DIGEST_BYTES", "decode", "encode"]

_SUMMARY, _SUMMARY_DIFF = 24, 25
CODES: Final = frozenset({_SUMMARY, _SUMMARY_DIFF})
DIGEST_BYTES: Final = 8
"""The size of one shard's digest."""

_HEAD = struct.Struct(">QH")
_U16_MAX, _U64_MAX = 2**16 - 1, 2**64 - 1


def encode(message: Summary | SummaryDiff) -> tuple[int, bytes]:
    """``(type code, body)`` of a probe or its answer; :class:`ekv.InvalidArgument` for one the
    decoder would reject."""
    if not 0 <= message.probe <= _U64_MAX:
        raise InvalidArgument(f"probe id out of range: {message.probe}")
    if isinstance(message, Summary):
        if len(message.digests) > _U16_MAX or any(len(d) != DIGEST_BYTES for d in message.digests):
            raise InvalidArgument(f"a Summary holds at most {_U16_MAX} digests of {DIGEST_BYTES} bytes")
        return _SUMMARY, _HEAD.pack(message.probe, len(message.digests)) + b"".join(message.digests)
    shards = message.shards
    if len(shards) > _U16_MAX or any(not 0 <= s <= _U16_MAX for s in shards) or list(shards) != sorted(set(shards)):
        raise InvalidArgument(f"SummaryDiff shards must be ascending, distinct, in 0..{_U16_MAX}: {shards!r:.80}")
    return _SUMMARY_DIFF, _HEAD.pack(message.probe, len(shards)) + struct.pack(f">{len(shards)}H", *shards)


def decode(code: int, frame: bytes, pos: int) -> Summary | SummaryDiff:
    """The message of type ``code`` whose body starts at ``frame[pos]`` (to the end)."""
    if len(frame) - pos < _HEAD.size:
        raise ProtocolError("truncated probe header")
    probe, count = _HEAD.unpack_from(frame, pos)
    pos += _HEAD.size
    size = DIGEST_BYTES if code == _SUMMARY else 2
    if len(frame) - pos != count * size:
        raise ProtocolError(f"{count} items of {size} bytes declared, {len(frame) - pos} bytes follow")
    if code == _SUMMARY:
        return Summary(probe, tuple(frame[pos + i * size : pos + (i + 1) * size] for i in range(count)))
    shards = struct.unpack_from(f">{count}H", frame, pos)
    if any(a >= b for a, b in itertools.pairwise(shards)):
        raise ProtocolError("SummaryDiff shards are not strictly ascending")
    return SummaryDiff(probe, tuple(shards))
