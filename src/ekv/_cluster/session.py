"""One connection between two members: the handshake, then framed messages both ways.

Handshake (the dialer speaks first, the listener never proves anything to a stranger first)::

    dialer                         listener
      Hello  ───────────────────▶  route by instance name; check version, shards, identity
             ◀───────────────────  Hello (or Reject + close)
      Auth   ───────────────────▶  verify the dialer's proof (or Reject + close)
             ◀───────────────────  Auth
      verify the listener's proof

Until both proofs are verified the frame cap is small (64 KiB), so an unauthenticated peer cannot
make us buffer much; everything it sends goes through :class:`~ekv._cluster.wire.FrameDecoder`,
and any violation closes the connection with a log line and changes no data.

After the handshake a :class:`Session` reads frames and hands messages to its owner, writes
frames the owner sends (counting queued bytes for backpressure: a peer that falls more than
``send_buffer`` bytes behind is disconnected, to be resynced when it comes back), and runs the
heartbeat: a Ping every ``heartbeat_interval``; a peer silent for ``heartbeat_timeout`` (dead,
partitioned or SIGSTOPped) is declared down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ekv._cluster import auth, wire
from ekv._cluster.messages import Auth, Bye, Hello, Message, Ping, Pong, Reject
from ekv._errors import AuthenticationError, ClusterError, ProtocolError

__all__ = [
    "COOKIE_MISMATCH",
    "PRE_AUTH_MAX_FRAME",
    "HandshakeParams",
    "Session",
    "SessionOwner",
    "accept_handshake",
    "describe_foreign",
    "dial_handshake",
]

PRE_AUTH_MAX_FRAME = 64 * 1024
_READ_SIZE = 256 * 1024


class SessionOwner(Protocol):
    def session_message(self, session: Session, message: Message) -> None: ...

    def session_skew(self, session: Session, skew_ns: int) -> None: ...

    def session_closed(self, session: Session, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class HandshakeParams:
    hello: Hello
    cookie: bytes
    timeout_s: float
    max_frame_size: int


COOKIE_MISMATCH = "authentication failed: cookie mismatch"
"""The Reject reason for a wrong proof, and how both sides' logs and info() name it. (Nodes
before it sent a bare "authentication failed", which the dialer reads the same way.)"""


class Refused(ClusterError):
    """The handshake failed; ``reason`` says why (also sent to the peer when possible).
    ``cookie_mismatch``: the two sides have different cookies (logged louder, see ClusterNode)."""

    def __init__(self, message: str, *, cookie_mismatch: bool = False) -> None:
        super().__init__(message)
        self.cookie_mismatch = cookie_mismatch


def describe_foreign(head: bytes) -> str:
    """What the first bytes from something that is not an ekv node look like, for an error
    message ("it answered like an HTTP server"), so that a wrong port is recognised at once rather
    than reported as a frame of 1213486160 bytes (which is b"HTTP" read as a length)."""
    if head.startswith(b"HTTP/") or head.lstrip()[:14].lower().startswith((b"<!doctype html", b"<html")):
        return "it answered like an HTTP server"  # (an HTTP/0.9-style error page has no status line)
    if head.startswith((b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ")):
        return "it sent an HTTP request"
    if len(head) >= 3 and head[0] in (0x15, 0x16) and head[1] == 0x03:
        return "it speaks TLS; is TLS configured on both sides?"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:60]):
        return f"it sent the text {head[:60].decode('ascii').strip()!r}"
    return "it sent bytes that are not an ekv frame"


class _Head:
    """The first bytes a peer sent during the handshake, kept to describe a non-ekv peer."""

    __slots__ = ("data", "decoded")

    def __init__(self) -> None:
        self.data = b""
        self.decoded = False


async def _read_message(
    reader: asyncio.StreamReader, decoder: wire.FrameDecoder, pending: list[Message], head: _Head | None = None
) -> Message:
    while not pending:
        data = await reader.read(_READ_SIZE)
        if not data:
            raise Refused("connection closed during the handshake")
        try:
            pending.extend(decoder.feed(data))
        except ProtocolError:
            if head is None or head.decoded:
                raise
            first = (head.data + data)[:64]
            raise Refused(f"it does not speak the ekv protocol ({describe_foreign(first)})") from None
        if head is not None:
            head.data = (head.data + data)[:64]
            head.decoded = head.decoded or bool(pending)
    return pending.pop(0)


def _dialer_auth_refusal(reason: str) -> Refused:
    if reason == "authentication failed" or reason.startswith(COOKIE_MISMATCH):
        return Refused(f"{COOKIE_MISMATCH}: the peer does not accept this node's cookie", cookie_mismatch=True)
    return Refused(f"refused by the peer: {reason}")


async def read_hello_for_routing(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    lookup: Callable[[str], Any],
    timeout_s: float = 10.0,
) -> tuple[Any, tuple[Hello, wire.FrameDecoder, list[Message]]] | None:
    """Read an incoming connection's Hello and find the instance it asks for (listener side)."""
    decoder = wire.FrameDecoder(PRE_AUTH_MAX_FRAME)
    pending: list[Message] = []
    try:
        first = await asyncio.wait_for(_read_message(reader, decoder, pending, _Head()), timeout_s)
    except (ProtocolError, Refused, TimeoutError, ConnectionError, OSError) as exc:
        _close(writer)
        raise Refused(f"no valid Hello from {_peer(writer)}: {exc}") from None
    if not isinstance(first, Hello):
        await _reject(writer, "expected Hello")
        raise Refused(f"{_peer(writer)} sent {type(first).__name__} before Hello")
    endpoint = lookup(first.instance)
    if endpoint is None:
        await _reject(writer, f"no ekv instance named {first.instance!r} here")
        raise Refused(f"{_peer(writer)} asked for unknown instance {first.instance!r}")
    return endpoint, (first, decoder, pending)


def check_peer_hello(mine: Hello, theirs: Hello) -> tuple[int, frozenset[str]]:
    """Validate the other side's Hello; raises Refused with a reason fit for both logs.

    A client (``"client"`` feature: the command line) may ask for instance ``"*"`` (whatever
    instance the listener runs) and has no shards to compare."""
    client = wire.CLIENT_FEATURE in theirs.features
    if theirs.instance != mine.instance and not (client and theirs.instance == "*"):
        raise Refused(f"peer runs instance {theirs.instance!r}, we run {mine.instance!r}")
    try:
        version, features = wire.negotiate(mine, theirs)
    except ProtocolError as exc:
        raise Refused(str(exc)) from None
    if not client and theirs.shards != mine.shards:
        raise Refused(f"peer {theirs.node_id} has {theirs.shards} shards, we have {mine.shards}; they cannot replicate")
    if not client and theirs.codec is not None and mine.codec is not None and theirs.codec != mine.codec:
        raise Refused(
            f"peer {theirs.node_id} uses codec {theirs.codec!r}, we use {mine.codec!r}; neither could read "
            "the other's values (give every member the same codec= option)"
        )
    if theirs.node_id == mine.node_id and (not theirs.origin or theirs.origin == mine.origin):
        raise Refused("connected to ourselves")
    # Same node id, another origin: a copy of our data directory runs there. The handshake goes
    # on, so that only an authenticated member can make this node take a new identity.
    return version, features


async def dial_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, params: HandshakeParams
) -> tuple[Hello, frozenset[str], wire.FrameDecoder, list[Message]]:
    """The dialer's side of the handshake; returns the peer's Hello and the negotiated features."""
    decoder = wire.FrameDecoder(PRE_AUTH_MAX_FRAME)
    pending: list[Message] = []
    mine = params.hello

    async def run() -> tuple[Hello, frozenset[str]]:
        writer.write(wire.encode(mine))
        theirs = await _read_message(reader, decoder, pending, _Head())
        if isinstance(theirs, Reject):
            raise Refused(f"refused by the peer: {theirs.reason}")
        if not isinstance(theirs, Hello):
            raise Refused(f"expected Hello, got {type(theirs).__name__}")
        try:
            _, features = check_peer_hello(mine, theirs)
        except Refused as exc:
            await _reject(writer, str(exc))
            raise
        writer.write(wire.encode(Auth(auth.proof(params.cookie, mine=mine, theirs=theirs))))
        answer = await _read_message(reader, decoder, pending)
        if isinstance(answer, Reject):
            raise _dialer_auth_refusal(answer.reason)
        if not isinstance(answer, Auth):
            raise Refused(f"expected Auth, got {type(answer).__name__}")
        await _verify_proof(writer, params, answer, theirs, "the peer")
        return theirs, features

    try:
        theirs, features = await asyncio.wait_for(run(), params.timeout_s)
    except TimeoutError:
        raise Refused("handshake timed out") from None
    except (ProtocolError, ConnectionError, OSError) as exc:
        raise Refused(f"handshake failed: {exc}") from None
    decoder.set_max_frame_size(params.max_frame_size)
    return theirs, features, decoder, pending


async def accept_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    params: HandshakeParams,
    theirs: Hello,
    decoder: wire.FrameDecoder,
    pending: list[Message],
) -> frozenset[str]:
    """The listener's side, after routing read the dialer's Hello."""
    mine = params.hello
    try:
        _, features = check_peer_hello(mine, theirs)
    except Refused as exc:
        await _reject(writer, str(exc))
        raise

    async def run() -> None:
        writer.write(wire.encode(mine))
        answer = await _read_message(reader, decoder, pending)
        if not isinstance(answer, Auth):
            await _reject(writer, "expected Auth")
            raise Refused(f"expected Auth, got {type(answer).__name__}")
        await _verify_proof(writer, params, answer, theirs, f"node {theirs.node_id}")
        writer.write(wire.encode(Auth(auth.proof(params.cookie, mine=mine, theirs=theirs))))
        await writer.drain()

    try:
        await asyncio.wait_for(run(), params.timeout_s)
    except TimeoutError:
        raise Refused("handshake timed out") from None
    except (ProtocolError, ConnectionError, OSError) as exc:
        raise Refused(f"handshake failed: {exc}") from None
    decoder.set_max_frame_size(params.max_frame_size)
    return features


async def _verify_proof(
    writer: asyncio.StreamWriter, params: HandshakeParams, answer: Auth, theirs: Hello, who: str
) -> None:
    """Check the peer's cookie proof; on failure tell the peer why (a cookie mismatch is named
    as such: the misconfiguration that keeps a node alone) and raise Refused."""
    try:
        auth.verify(params.cookie, answer.mac, mine=params.hello, theirs=theirs)
    except auth.CookieMismatch:
        await _reject(writer, COOKIE_MISMATCH)
        raise Refused(f"{COOKIE_MISMATCH}: {who} does not know this cluster's cookie", cookie_mismatch=True) from None
    except AuthenticationError as exc:
        await _reject(writer, "authentication failed")
        raise Refused(f"authentication failed: {exc}") from None


async def _reject(writer: asyncio.StreamWriter, reason: str) -> None:
    with contextlib.suppress(Exception):
        writer.write(wire.encode(Reject(reason[:200])))
        await asyncio.wait_for(writer.drain(), 1.0)
    _close(writer)


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


def _peer(writer: asyncio.StreamWriter) -> str:
    try:
        peer = writer.get_extra_info("peername")
    except Exception:
        return "?"
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


class Session:
    """An authenticated connection to one member (lives on the network loop thread)."""

    def __init__(
        self,
        owner: SessionOwner,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        hello: Hello,
        features: frozenset[str],
        decoder: wire.FrameDecoder,
        pending: list[Message],
        dialer: bool,
        address: str | None,
        heartbeat_interval_s: float,
        heartbeat_timeout_s: float,
        send_buffer: int,
        wall: Callable[[], int],
    ) -> None:
        self.owner = owner
        self.reader = reader
        self.writer = writer
        self.hello = hello
        self.peer_id = hello.node_id
        self.local_origin = ""
        """The origin this node announced in the handshake (it may have changed since: see
        ``ekv._cluster.identity``)."""
        self.features = features
        self.dialer = dialer
        self.address = address
        """The address the peer accepts connections on, if known."""
        self.remote = _peer(writer)
        self._decoder = decoder
        self._pending = pending
        self._interval = heartbeat_interval_s
        self._timeout = heartbeat_timeout_s
        self._send_buffer = send_buffer
        self._wall = wall
        self._closed = False
        self.close_reason = ""
        self._monotonic = asyncio.get_running_loop().time
        """The loop's clock (time.monotonic, or virtual time in the tests that run a virtual loop)."""
        self.started_at = self._monotonic()
        self.last_received = self.started_at
        self.last_seen_wall_ns = wall()
        self.rtt_s: float | None = None
        self.skew_ns: int | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_loop()), loop.create_task(self._heartbeat_loop())]
        for message in self._pending:
            self._dispatch(message)
        self._pending = []

    # -- writing -------------------------------------------------------------------------------

    @property
    def queued_bytes(self) -> int:
        transport = self.writer.transport
        return 0 if transport is None or transport.is_closing() else transport.get_write_buffer_size()

    def send_frame(self, frame: bytes) -> None:
        """Queue one encoded frame (on the loop thread). A peer too slow to keep up is dropped."""
        if self._closed:
            return
        transport = self.writer.transport
        if transport is None or transport.is_closing():
            self.close("connection lost")  # (asyncio would otherwise log every failed send)
            return
        try:
            self.writer.write(frame)
        except Exception as exc:
            self.close(f"write failed: {exc}")
            return
        self.bytes_out += len(frame)
        if self.queued_bytes > self._send_buffer:
            self.close(f"too slow: more than {self._send_buffer} bytes queued; it will be resynced on reconnect")

    def send(self, message: Message) -> None:
        self.send_frame(wire.encode(message))

    # -- reading -------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "connection closed by the peer"
        try:
            while not self._closed:
                data = await self.reader.read(_READ_SIZE)
                if not data:
                    break
                self.bytes_in += len(data)
                self.last_received = self._monotonic()
                self.last_seen_wall_ns = self._wall()
                for message in self._decoder.feed(data):
                    self._dispatch(message)  # after a close the owner ignores what is left
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc}"
        except asyncio.CancelledError:
            reason = self.close_reason or "cancelled"
        except Exception as exc:  # a bug while handling a message: drop the connection, keep serving
            reason = f"internal error handling a message: {type(exc).__name__}: {exc}"
            self.owner.session_message(self, Bye(reason))  # lets the owner log it
        self.close(reason)

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, Ping):
            self.send(Pong(message.wall_ns, self._wall()))
        elif isinstance(message, Pong):
            now = self._wall()
            rtt = max(0, now - message.echo_wall_ns)
            self.rtt_s = rtt / 1e9
            self.skew_ns = message.wall_ns - (message.echo_wall_ns + rtt // 2)
            self.owner.session_skew(self, self.skew_ns)
        elif isinstance(message, Bye):
            self.close(f"peer said goodbye: {message.reason}" if message.reason else "peer said goodbye")
        elif isinstance(message, Reject):
            self.close(f"rejected by the peer: {message.reason}")
        else:
            self.owner.session_message(self, message)

    async def _heartbeat_loop(self) -> None:
        try:
            while not self._closed:
                self.send(Ping(self._wall()))
                await asyncio.sleep(self._interval)
                silent = self._monotonic() - self.last_received
                if silent > self._timeout:
                    self.close(f"no heartbeat for {silent:.1f} s (timeout {self._timeout} s)")
        except asyncio.CancelledError:
            pass

    # -- closing -------------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        _close(self.writer)
        self.owner.session_closed(self, reason)
