"""The per-row check that catches bit rot SQLite cannot see.

SQLite keeps no page checksums: a bit flipped inside a stored value passes ``PRAGMA
integrity_check`` and would be served as if it were data. Every stored version therefore
carries a *check record* (``kv.crc``, :func:`row_check`): the version's metadata packed into
bytes (expiry, timestamp, sequence number, tombstone flag, origin) followed by a CRC-32 of the
key, the value and that metadata. It is written with the row and verified whenever the row is
read back to be served: by reads, by sync (before a row is sent to a peer), by GC and by
``ekv check``.

The layout is chosen so that a read verifies a row with C calls only (schema 4; measured in
docs/architecture.md, "Performance notes"): the CRC sits at the end of what it covers, so
``crc32(check, crc32(value, crc32(key, RESIDUE)))`` equals the constant :data:`RESIDUE` exactly when
nothing changed (a property of CRC-32: a message followed by its own little-endian CRC always
checks to the same value). The CRC starts from that residue rather than from 0, so a run of
intact rows, concatenated, also checks to :data:`RESIDUE`: a scan verifies a whole page with one
``crc32`` call (a damaged row leaves the chain off the residue, and no later row brings it back).
A read takes what it needs (expiry, timestamp, origin) from the
verified record instead of from the unverified columns, which stay for SQL (indexes, the LWW
rule, the change log); the paths that use the columns (sync, GC, ``ekv check``) compare the
whole record with one rebuilt from them (:func:`row_check`). The expiry is stored first,
big-endian and offset by 2**63, so a byte comparison with :func:`expiry_floor` tells whether a
row is still visible, again without unpacking.

CRC-32 detects every 1-, 2- and 3-bit error and every burst up to 32 bits, and 1 in 2**32 of
anything else; it guards against the disk, not against an adversary (the cluster cookie does
that on the wire).
"""

from __future__ import annotations

import struct
from zlib import crc32

__all__ = ["NO_EXPIRY", "RESIDUE", "check_fields", "expiry_floor", "legacy_row_checksum", "row_check"]

_HEAD = struct.Struct(">QqqB")
HEAD_SIZE = _HEAD.size
"""Bytes of packed numbers before the origin in a check record."""
_BIAS = 1 << 63
NO_EXPIRY = (1 << 64) - 1
"""The stored expiry of a version that never expires."""
RESIDUE = 0x2144DF1C
"""CRC-32 of any message followed by its own CRC-32 (little-endian)."""
EXPIRY_AND_TS = struct.Struct(">Qq").unpack_from
"""``(stored expiry, ts)`` of a check record (stored expiry: :data:`NO_EXPIRY`, or expires_at + 2**63)."""
BIAS = _BIAS
_FLOOR = struct.Struct(">Q").pack


def row_check(key: str, ts: int, origin: str, oseq: int, expires_at: int | None, value: bytes | None) -> bytes:
    """The check record of one stored version (``value`` None for a tombstone, which is told
    apart from an empty value by the record's flag)."""
    stored_expiry = NO_EXPIRY if expires_at is None else expires_at + _BIAS
    meta = _HEAD.pack(stored_expiry, ts, oseq, value is None) + origin.encode()
    seed = crc32(key.encode(), RESIDUE)
    if value is not None:
        seed = crc32(value, seed)
    return meta + crc32(meta, seed).to_bytes(4, "little")


def check_fields(check: bytes) -> tuple[int | None, int, int, bool, str]:
    """``(expires_at, ts, oseq, tombstone, origin)`` of a (verified) check record."""
    stored, ts, oseq, tombstone = _HEAD.unpack_from(check)
    return (None if stored == NO_EXPIRY else stored - _BIAS), ts, oseq, bool(tombstone), check[HEAD_SIZE:-4].decode()


def expiry_floor(now_ns: int) -> bytes:
    """Bytes that every check record of a version still visible at ``now_ns`` sorts above (and
    every expired one below): a record starts with its expiry, big-endian."""
    return _FLOOR(now_ns + 1 + _BIAS)


_NUMBERS = struct.Struct("<qqqB").pack


def legacy_row_checksum(key: str, ts: int, origin: str, oseq: int, expires_at: int | None, value: bytes | None) -> int:
    """The checksum of schemas 2 and 3 (an integer in ``kv.crc``), kept to verify rows while
    upgrading them to schema 4: a row that fails it is not given a valid check record."""
    tombstone = value is None
    head = (key + "\x00" + origin).encode() + _NUMBERS(ts, oseq, -1 if expires_at is None else expires_at, tombstone)
    return crc32(head) if value is None else crc32(value, crc32(head))
