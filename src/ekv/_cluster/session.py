"""One connection between two members: the handshake, then framed messages both ways.

The handshake itself (messages, negotiation, cookie proofs, refusals) is the sans-I/O state
machine of :mod:`ekv._cluster.handshake`; this module drives it over asyncio streams, in both
roles, adding what a state machine cannot do: reading, writing, the timeout, sending the Reject
it asks for and closing. The listener reads the dialer's Hello first (:func:`read_hello_for_routing`,
called by the runtime to pick the instance by name), then the instance answers
(:func:`accept_handshake`). Until both proofs are verified the frame cap is small (64 KiB), so an
unauthenticated peer cannot make us buffer much; any violation closes the connection with a log
line and changes no data.

After the handshake a :class:`Session` reads frames and hands messages to its owner, writes
frames the owner sends (counting queued bytes for backpressure: a peer that falls more than
``send_buffer`` bytes behind is disconnected, to be resynced when it comes back), and runs the
heartbeat: a Ping every ``heartbeat_interval``; a peer silent for ``heartbeat_timeout`` (dead,
partitioned or SIGSTOPped) is declared down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ekv._cluster import wire
from ekv._cluster.handshake import Handshake, Refused, State, check_peer_hello, reject_frame
from ekv._cluster.messages import Bye, Hello, Message, Ping, Pong, Reject, merge_live
from ekv._errors import ProtocolError

__all__ = [  # (Refused and check_peer_hello live in handshake.py; named here for older imports)
    "HandshakeParams",
    "Refused",
    "Session",
    "SessionOwner",
    "accept_handshake",
    "check_peer_hello",
    "dial_handshake",
    "read_hello_for_routing",
]

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


async def _drive(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handshake: Handshake, until: State
) -> None:
    """Run ``handshake`` until it reaches ``until``: write what it says, feed it what arrives."""
    _flush(writer, handshake)
    while handshake.state is not until:
        handshake.receive_data(await reader.read(_READ_SIZE))
        _flush(writer, handshake)


def _flush(writer: asyncio.StreamWriter, handshake: Handshake) -> None:
    data = handshake.data_to_send()
    if data:
        writer.write(data)


async def _refusing(writer: asyncio.StreamWriter, handshake: Handshake, step: Awaitable[None]) -> None:
    """Await ``step``; if the state machine refused the peer, send what was due before the
    refusal and, when it says so, a Reject telling the peer why (then close)."""
    try:
        await step
    except Refused as exc:
        with contextlib.suppress(Exception):
            _flush(writer, handshake)
        if exc.reject is not None:
            await _reject(writer, exc.reject)
        raise


async def read_hello_for_routing(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    lookup: Callable[[str], Any],
    timeout_s: float = 10.0,
) -> tuple[Any, tuple[Hello, wire.FrameDecoder, list[Message]]] | None:
    """Read an incoming connection's Hello and find the instance it asks for (listener side)."""
    handshake = Handshake.accept()
    try:
        await asyncio.wait_for(_drive(reader, writer, handshake, State.ROUTE), timeout_s)
    except Refused as exc:
        if exc.reject is None:  # (no frame, a foreign protocol, or closed: nothing to tell it)
            _close(writer)
            raise Refused(f"no valid Hello from {_peer(writer)}: {exc}") from None
        await _reject(writer, exc.reject)
        raise Refused(f"{_peer(writer)} sent {exc.detail} before Hello") from None
    except (TimeoutError, ConnectionError, OSError) as exc:
        _close(writer)
        raise Refused(f"no valid Hello from {_peer(writer)}: {exc}") from None
    first = handshake.peer_hello
    assert first is not None
    endpoint = lookup(first.instance)
    if endpoint is None:
        await _reject(writer, f"no ekv instance named {first.instance!r} here")
        raise Refused(f"{_peer(writer)} asked for unknown instance {first.instance!r}")
    return endpoint, (first, handshake.decoder, handshake.pending)


async def dial_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, params: HandshakeParams
) -> tuple[Hello, frozenset[str], wire.FrameDecoder, list[Message]]:
    """The dialer's side of the handshake; returns the peer's Hello and the negotiated features."""
    handshake = Handshake.dial(params.hello, params.cookie, max_frame_size=params.max_frame_size)
    await _timed(_refusing(writer, handshake, _drive(reader, writer, handshake, State.DONE)), params.timeout_s)
    assert handshake.peer_hello is not None
    return handshake.peer_hello, handshake.features, handshake.decoder, handshake.pending


async def accept_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    params: HandshakeParams,
    theirs: Hello,
    decoder: wire.FrameDecoder,
    pending: list[Message],
) -> frozenset[str]:
    """The listener's side, after routing read the dialer's Hello."""
    handshake = Handshake.routed(theirs, decoder, pending)

    async def run() -> None:
        handshake.answer(params.hello, params.cookie, max_frame_size=params.max_frame_size)
        await _drive(reader, writer, handshake, State.DONE)
        await writer.drain()

    await _timed(_refusing(writer, handshake, run()), params.timeout_s)
    return handshake.features


async def _timed(step: Awaitable[None], timeout_s: float) -> None:
    try:
        await asyncio.wait_for(step, timeout_s)
    except TimeoutError:
        raise Refused("handshake timed out") from None
    except (ConnectionError, OSError) as exc:  # (the state machine words protocol errors itself)
        raise Refused(f"handshake failed: {exc}") from None


async def _reject(writer: asyncio.StreamWriter, reason: str) -> None:
    with contextlib.suppress(Exception):
        writer.write(reject_frame(reason))
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
                # (Live messages that queued up are applied together: see merge_live)
                for message in merge_live(self._decoder.feed(data)):
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
