"""Authenticated datagrams: the envelope of every UDP message between cluster members.

Why an envelope of its own: the TCP sessions authenticate once, in the handshake
(:mod:`ekv._cluster.auth`), and trust the connection after. A datagram has no connection, so each
one must prove itself, and the rule that every listener off loopback requires the cluster cookie
holds for the UDP port too. Nothing in a datagram is unpickled; the payload (a SWIM message,
:mod:`ekv._core.swim_wire`) is decoded only after the envelope passed every check here.

Layout (big-endian)::

    magic "ekvD" | version u8 (1 or 2) | instance (u8 length, UTF-8) | sender (u8 length, UTF-8)
    | boot u64 | counter u64 | payload | tag (16 bytes)

* **tag**: keyed BLAKE2b-128 over everything before it. The key is derived from the cookie
  (HMAC-SHA256 of a fixed label, keyed by the cookie), so it is never the cookie itself and is
  unrelated to the handshake's MACs. Without the cookie nobody can make a datagram that passes.
* **instance**: datagrams for another instance are dropped (named instances share a port, and
  an instance only talks with same-named ones, as on the TCP listener).
* **replay**: ``sender`` (the node id) with ``boot`` (its clock in nanoseconds when its sealer
  was made, strictly increasing within a process) and a ``counter`` that increases by one per
  datagram. The receiver keeps, per sender, the latest boot and a sliding window of the last
  :data:`REPLAY_WINDOW` counters: a datagram of an earlier boot, below the window, or seen
  already is dropped; reordering within the window is accepted. At most ``max_senders`` senders
  are remembered (least recently heard forgotten first), and only after their MAC passed, so the
  state is bounded by the members, not by what an attacker sends.

  What it does not cover: a receiver that restarted has no window, so a datagram recorded from a
  sender's current boot can be replayed to it until it hears that sender again (about one
  protocol period; SWIM tolerates stale messages: updates are ordered by incarnation), and a
  sender whose clock went back across a restart is not heard until its boot passes the old one.
* **version**: 1, or 2 from a sender that has no host of its own to give (a node listening on a
  wildcard address without ``advertise=``): its payload may name the sender's own address as
  ``":port"``, for the receiver to complete with the host the datagram came from
  (:mod:`ekv._cluster.gossip`). Receivers accept both; a member of a release that knows only
  version 1 drops version 2 as "format" rather than taking ``":port"`` for an address to send
  to and to gossip on (the sender then stays unknown to it until it is upgraded).
* **size**: at most :data:`MAX_DATAGRAM` bytes (under a 1,500-byte Ethernet MTU, so never
  fragmented); larger ones are refused before anything else.

Datagrams failing any check are dropped and counted by reason in :attr:`Opener.drops`; nothing
here raises on received bytes. The envelope is neither encrypted nor hidden: like the sessions
without TLS, membership traffic can be read on the path.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
import time
from collections import OrderedDict

from ekv._errors import InvalidArgumentType, ProtocolError

__all__ = ["MAX_DATAGRAM", "REPLAY_WINDOW", "TAG_SIZE", "Opener", "Sealer", "datagram_key", "peek_instance"]

MAX_DATAGRAM = 1_400
"""The largest datagram sent or accepted, envelope included."""
TAG_SIZE = 16
REPLAY_WINDOW = 256
"""How far behind the highest counter seen from a sender a datagram may arrive (reordered)."""
DROP_REASONS = ("size", "format", "mac", "instance", "replay")

_MAGIC = b"ekvD"
_VERSION = 1
_VERSION_HOSTLESS = 2
_VERSIONS = (_VERSION, _VERSION_HOSTLESS)
_LABEL = b"ekv datagram key v1"
_NUMBERS = struct.Struct(">QQ")

_boot_lock = threading.Lock()
_last_boot = 0


def datagram_key(cookie: bytes | str) -> bytes:
    """The MAC key of the datagrams, derived from the cluster cookie."""
    if isinstance(cookie, str):
        raw = cookie.encode("utf-8", "surrogatepass")
    elif isinstance(cookie, bytes | bytearray | memoryview):
        raw = bytes(cookie)
    else:
        raise InvalidArgumentType(f"cookie must be bytes or str, not {type(cookie).__name__}")
    return hmac.new(raw, _LABEL, hashlib.sha256).digest()


def _tag(key: bytes, data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=TAG_SIZE).digest()


def _name(text: str, what: str) -> bytes:
    data = text.encode("utf-8")
    if not 0 < len(data) <= 255:
        raise ProtocolError(f"the {what} must be 1-255 bytes of UTF-8, not {len(data)}")
    return bytes((len(data),)) + data


def _new_boot() -> int:
    """The clock in ns, strictly above every boot stamp handed out before in this process."""
    global _last_boot
    with _boot_lock:
        _last_boot = max(_last_boot + 1, time.time_ns())
        return _last_boot


class Sealer:
    """Wraps outgoing payloads of one sender (this node) in the envelope; ``hostless`` for a
    sender whose payloads give its own address as ``":port"`` (version 2, see the module
    docstring)."""

    def __init__(self, cookie: bytes | str, *, instance: str, sender: str, hostless: bool = False) -> None:
        self._key = datagram_key(cookie)
        version = _VERSION_HOSTLESS if hostless else _VERSION
        self._prefix = _MAGIC + bytes((version,)) + _name(instance, "instance name") + _name(sender, "node id")
        self.boot = _new_boot()
        self._counter = 0
        self.max_payload = MAX_DATAGRAM - len(self._prefix) - _NUMBERS.size - TAG_SIZE
        """The largest payload that fits in one datagram."""

    def seal(self, payload: bytes) -> bytes:
        """The datagram carrying ``payload``; :class:`ekv.ProtocolError` if it does not fit."""
        if len(payload) > self.max_payload:
            raise ProtocolError(f"a datagram payload of {len(payload)} bytes; at most {self.max_payload} fit")
        self._counter += 1
        body = b"".join((self._prefix, _NUMBERS.pack(self.boot, self._counter), payload))
        return body + _tag(self._key, body)


class _Window:
    __slots__ = ("boot", "mask", "top")

    def __init__(self, boot: int, counter: int) -> None:
        self.boot = boot
        self.top = counter
        self.mask = 1  # bit i: counter top - i was seen

    def accept(self, boot: int, counter: int) -> bool:
        """Record (boot, counter); False if it is a replay (or of an earlier boot)."""
        if boot != self.boot:
            if boot < self.boot:
                return False
            self.boot, self.top, self.mask = boot, counter, 1
            return True
        if counter > self.top:
            shift = counter - self.top
            self.mask = ((self.mask << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
            self.top = counter
            return True
        behind = self.top - counter
        if behind >= REPLAY_WINDOW or self.mask >> behind & 1:
            return False
        self.mask |= 1 << behind
        return True


class Opener:
    """Checks incoming datagrams for one instance and unwraps those that pass (see the module
    docstring); never raises on what it receives."""

    def __init__(self, cookie: bytes | str, *, instance: str, max_senders: int = 4_096) -> None:
        self._key = datagram_key(cookie)
        self._instance = instance.encode("utf-8")
        self._max_senders = max_senders
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        """Datagrams dropped so far, by reason."""

    def open(self, data: bytes) -> tuple[str, bytes] | None:
        """``(sender, payload)`` of a datagram that passed every check, else None (counted)."""
        reason, parsed = self._check(data)
        if parsed is None:
            self.drops[reason] += 1
            return None
        sender, boot, counter, payload = parsed
        window = self._windows.get(sender)
        if window is None:
            self._windows[sender] = _Window(boot, counter)
            if len(self._windows) > self._max_senders:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(sender)
            if not window.accept(boot, counter):
                self.drops["replay"] += 1
                return None
        return sender, payload

    def _check(self, data: bytes) -> tuple[str, tuple[str, int, int, bytes] | None]:
        """Everything but the replay window: (reason, None) or ("", the fields)."""
        if type(data) is not bytes or len(data) > MAX_DATAGRAM:
            return "size", None
        fields = _parse(data)
        if fields is None:
            return "format", None
        instance, sender, boot, counter, payload_at = fields
        if not hmac.compare_digest(_tag(self._key, memoryview(data)[:-TAG_SIZE]), data[-TAG_SIZE:]):
            return "mac", None
        if instance != self._instance:
            return "instance", None
        try:
            name = sender.decode("utf-8")
        except UnicodeDecodeError:
            return "format", None
        return "", (name, boot, counter, data[payload_at:-TAG_SIZE])


def _parse(data: bytes) -> tuple[bytes, bytes, int, int, int] | None:
    """(instance, sender, boot, counter, offset of the payload), or None if malformed."""
    pos = len(_MAGIC) + 1
    if len(data) < pos + 2 + _NUMBERS.size + TAG_SIZE or data[: len(_MAGIC)] != _MAGIC:
        return None
    if data[pos - 1] not in _VERSIONS:
        return None
    names = []
    for _ in range(2):
        size = data[pos]
        if size == 0 or pos + 1 + size > len(data):
            return None
        names.append(data[pos + 1 : pos + 1 + size])
        pos += 1 + size
    if pos + _NUMBERS.size + TAG_SIZE > len(data):
        return None
    boot, counter = _NUMBERS.unpack_from(data, pos)
    if counter == 0 or boot == 0:
        return None
    return names[0], names[1], boot, counter, pos + _NUMBERS.size


def peek_instance(data: bytes) -> str | None:
    """The instance a datagram names, unchecked (for routing it on a shared port), or None."""
    pos = len(_MAGIC) + 1
    if len(data) <= pos or data[: len(_MAGIC)] != _MAGIC:
        return None
    size = data[pos]
    try:
        return data[pos + 1 : pos + 1 + size].decode("utf-8")
    except UnicodeDecodeError:
        return None
