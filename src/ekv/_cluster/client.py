"""A blocking client for a running node: what ``ekv get/put/... --node HOST:PORT`` uses.

It connects to the node's cluster port, runs the same cookie handshake as a member (with the
``"client"`` feature, so the node serves it commands and never replicates with it), then sends
``Request`` messages and waits for their ``Reply``. Values travel as JSON.

Pointed at something that is not an ekv node (an HTTP port, a typo), it says so ("HOST:PORT does
not speak the ekv protocol (it answered like an HTTP server)"). Line-based servers (HTTP, SMTP,
Redis ...) wait for a line feed before they answer anything, which a binary Hello would not
contain: so the client sizes its Hello (:func:`~ekv._cluster.handshake.client_hello`) to make the
last byte of the frame header a line feed. Such a server then sees one malformed line and answers
at once; an ekv node does not care about the sizes.
"""

from __future__ import annotations

import itertools
import json
import socket
import ssl
import time
from typing import Any

from ekv._cluster import wire
from ekv._cluster.handshake import COOKIE_MISMATCH, Handshake, Refused, State, client_hello
from ekv._cluster.messages import Hello, Message, Ping, Pong, Reject, Reply, Request
from ekv._core.addresses import parse_address
from ekv._errors import AuthenticationError, ClusterError, Error, ProtocolError

__all__ = ["Client"]

_UNSURE = " (is it an ekv node's cluster port?)"
"""Added to a timeout or a closed connection before the node said anything."""


class Client:
    """One connection to one node. Use as a context manager."""

    def __init__(
        self,
        address: str,
        *,
        cookie: bytes | str = b"",
        instance: str = "*",
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        self._cookie = cookie
        self._instance = instance or "*"
        self._timeout = timeout
        self._ssl = ssl_context
        self._sock: socket.socket | None = None
        self._decoder = wire.FrameDecoder(64 * 1024)
        self._pending: list[Message] = []
        self._ids = itertools.count(1)
        self.server: Hello | None = None

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        host, port = parse_address(self.address, "node address")
        try:
            sock = socket.create_connection((host, port), timeout=self._timeout)
        except OSError as exc:
            raise ClusterError(f"cannot connect to {self.address}: {exc.strerror or exc}") from None
        if self._ssl is not None:
            sock = self._ssl.wrap_socket(sock, server_hostname=host)
        self._sock = sock
        try:
            self._handshake()
        except BaseException:
            self.close()
            raise

    def _handshake(self) -> None:
        """Drive the shared state machine (``handshake.py``) over the blocking socket. Unlike a
        member, the client sends no Reject when it refuses the node: it just closes."""
        shake = Handshake.dial(client_hello(self._instance), self._cookie, max_frame_size=1 << 30)
        self._send_bytes(shake.data_to_send())
        while shake.state is not State.DONE:
            data = self._recv("" if shake.heard else _UNSURE)
            try:
                shake.receive_data(data)
            except Refused as exc:
                self._send_bytes(shake.data_to_send())  # (what was due before the refusal)
                raise _client_error(self.address, exc) from None
            self._send_bytes(shake.data_to_send())
        self._decoder, self._pending = shake.decoder, shake.pending
        self.server = shake.peer_hello

    def call(self, op: str, **args: Any) -> Any:
        """Run one command on the node; return its JSON result (raises ClusterError on failure)."""
        request_id = next(self._ids)
        self._send(Request(request_id, op, json.dumps(args)))
        while True:
            message = self._receive()
            if isinstance(message, Reply) and message.request_id == request_id:
                if not message.ok:
                    raise ClusterError(message.error)
                return json.loads(message.result)
            if isinstance(message, Ping):
                self._send(Pong(message.wall_ns, time.time_ns()))
            elif isinstance(message, Reject):
                raise ClusterError(f"{self.address}: {message.reason}")

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _send(self, message: Message) -> None:
        self._send_bytes(wire.encode(message))

    def _send_bytes(self, data: bytes) -> None:
        assert self._sock is not None
        if not data:
            return
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise ClusterError(f"connection to {self.address} lost: {exc}") from None

    def _receive(self) -> Message:
        while not self._pending:
            self._pending.extend(self._decoder.feed(self._recv("")))
        return self._pending.pop(0)

    def _recv(self, unsure: str) -> bytes:
        """The next bytes from the node (``unsure``: a hint for errors before it said anything)."""
        assert self._sock is not None
        try:
            data = self._sock.recv(256 * 1024)
        except TimeoutError:
            raise ClusterError(f"{self.address} did not answer within {self._timeout} s{unsure}") from None
        except OSError as exc:
            raise ClusterError(f"connection to {self.address} lost: {exc}{unsure}") from None
        if not data:
            raise ClusterError(f"{self.address} closed the connection{unsure}")
        return data


def _client_error(address: str, refused: Refused) -> Error:
    """How the command line words a refused handshake: naming the node, with the exception type
    of the cause (a node that refused, a foreign protocol, a cookie the node does not know)."""
    kind, detail = refused.kind, refused.detail
    if kind == "rejected" and refused.stage == "Hello":
        return ClusterError(f"{address} refused the connection: {detail}")
    if kind == "rejected":
        if refused.cookie_mismatch:
            detail = f"{COOKIE_MISMATCH} (this client's cookie is not the node's)"
        return AuthenticationError(f"{address} refused the connection: {detail}")
    if kind == "unexpected":
        return ProtocolError(f"{address} answered {detail}, not {refused.stage}")
    if kind == "foreign":
        return ProtocolError(f"{address} does not speak the ekv protocol ({detail})")
    if kind == "cookie":
        return AuthenticationError(f"{address}: {COOKIE_MISMATCH} (the node does not know this client's cookie)")
    if kind == "auth":
        return AuthenticationError(detail)
    if kind == "protocol":
        return ProtocolError(detail)
    return ClusterError(f"{address}: {refused}")
