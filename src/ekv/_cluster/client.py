"""A blocking client for a running node: what ``ekv get/put/... --node HOST:PORT`` uses.

It connects to the node's cluster port, runs the same cookie handshake as a member (with the
``"client"`` feature, so the node serves it commands and never replicates with it), then sends
``Request`` messages and waits for their ``Reply``. Values travel as JSON.

Pointed at something that is not an ekv node (an HTTP port, a typo), it says so ("HOST:PORT does
not speak the ekv protocol (it answered like an HTTP server)"). Line-based servers (HTTP, SMTP,
Redis ...) wait for a line feed before they answer anything, which a binary Hello would not
contain: so the client sizes its Hello (a longer random nonce and client id) to make the last
byte of the frame header a line feed. Such a server then sees one malformed line and answers at
once; an ekv node does not care about the sizes.
"""

from __future__ import annotations

import itertools
import json
import secrets
import socket
import ssl
import time
from dataclasses import replace
from typing import Any

from ekv._cluster import auth, wire
from ekv._cluster.messages import PROTOCOL_VERSION, Auth, Hello, Message, Ping, Pong, Reject, Reply, Request
from ekv._cluster.session import COOKIE_MISMATCH, describe_foreign
from ekv._core.addresses import parse_address
from ekv._errors import AuthenticationError, ClusterError, ProtocolError

__all__ = ["Client"]


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
        self._head = b""
        """The first bytes received, until a message decodes (to describe a non-ekv server)."""
        self._decoded = False
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

    def _hello(self) -> Hello:
        """This client's Hello, sized so that its frame header ends in a line feed (see the
        module docstring): ``pad`` more bytes come from a longer nonce (two hex digits each)
        and, for an odd count, one more digit of the client id."""
        nonce = auth.new_nonce()
        mine = Hello(
            versions=(PROTOCOL_VERSION,),
            features=(*wire.FEATURES, wire.CLIENT_FEATURE),
            instance=self._instance,
            node_id="client-" + secrets.token_hex(6),
            shards=1,
            nonce=nonce,
            listen=None,
            wall_ns=time.time_ns(),
        )
        declared = len(wire.encode(mine)) - wire.HEADER_SIZE
        pad = (ord("\n") - declared) % 256
        return replace(
            mine,
            nonce=nonce + secrets.token_bytes(pad // 2),
            node_id=mine.node_id + secrets.token_hex(1)[: pad % 2],
        )

    def _handshake(self) -> None:
        mine = self._hello()
        self._send(mine)
        theirs = self._receive()
        if isinstance(theirs, Reject):
            raise ClusterError(f"{self.address} refused the connection: {theirs.reason}")
        if not isinstance(theirs, Hello):
            raise ProtocolError(f"{self.address} answered {type(theirs).__name__}, not Hello")
        self._send(Auth(auth.proof(self._cookie, mine=mine, theirs=theirs)))
        answer = self._receive()
        if isinstance(answer, Reject):
            reason = answer.reason
            if reason == "authentication failed" or reason.startswith(COOKIE_MISMATCH):
                reason = f"{COOKIE_MISMATCH} (this client's cookie is not the node's)"
            raise AuthenticationError(f"{self.address} refused the connection: {reason}")
        if not isinstance(answer, Auth):
            raise ProtocolError(f"{self.address} answered {type(answer).__name__}, not Auth")
        try:
            auth.verify(self._cookie, answer.mac, mine=mine, theirs=theirs)
        except auth.CookieMismatch:
            raise AuthenticationError(
                f"{self.address}: {COOKIE_MISMATCH} (the node does not know this client's cookie)"
            ) from None
        self._decoder.set_max_frame_size(1 << 30)
        self.server = theirs

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
        assert self._sock is not None
        try:
            self._sock.sendall(wire.encode(message))
        except OSError as exc:
            raise ClusterError(f"connection to {self.address} lost: {exc}") from None

    def _receive(self) -> Message:
        assert self._sock is not None
        unsure = "" if self._decoded else " (is it an ekv node's cluster port?)"
        while not self._pending:
            try:
                data = self._sock.recv(256 * 1024)
            except TimeoutError:
                raise ClusterError(f"{self.address} did not answer within {self._timeout} s{unsure}") from None
            except OSError as exc:
                raise ClusterError(f"connection to {self.address} lost: {exc}{unsure}") from None
            if not data:
                raise ClusterError(f"{self.address} closed the connection{unsure}")
            if self._decoded:
                self._pending.extend(self._decoder.feed(data))
                continue
            self._head = (self._head + data)[:64]
            try:
                self._pending.extend(self._decoder.feed(data))
            except ProtocolError:
                raise ProtocolError(
                    f"{self.address} does not speak the ekv protocol ({describe_foreign(self._head)})"
                ) from None
            self._decoded = bool(self._pending)
        return self._pending.pop(0)
