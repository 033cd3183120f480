"""The handshake of a cluster connection as a sans-I/O state machine, shared by every driver.

Like h11, :class:`Handshake` never touches a socket or a clock: the driver feeds it the bytes it
received (:meth:`Handshake.receive_data`) and writes what :meth:`Handshake.data_to_send` returns,
until :attr:`Handshake.state` is ``DONE`` or a :class:`Refused` is raised. Timeouts, closing and
logging stay in the drivers: the asyncio ones of members (``session.py``, both roles) and the
blocking command-line client (``client.py``, dialer only). So the rules of the protocol, the
order of its messages and the text of its refusals exist once.

Protocol (the dialer speaks first, the acceptor never proves anything to a stranger first)::

    dialer                         acceptor
      Hello  ───────────────────▶  ROUTE: the driver picks the instance by name, then answer()
             ◀───────────────────  Hello (or Reject + close: version, shards, codec, identity)
      Auth   ───────────────────▶  verify the dialer's proof (or Reject + close)
             ◀───────────────────  Auth
      verify the acceptor's proof

Until both proofs are verified the frame cap is :data:`PRE_AUTH_MAX_FRAME`, so an unauthenticated
peer cannot make us buffer much; then the decoder (and any messages that arrived with the last
handshake frame, :attr:`Handshake.pending`) passes to the session.
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import replace
from typing import Literal, NoReturn

from ekv._cluster import auth, wire
from ekv._cluster.messages import PROTOCOL_VERSION, Auth, Hello, Message, Reject
from ekv._errors import AuthenticationError, ClusterError, ProtocolError

__all__ = [
    "COOKIE_MISMATCH",
    "PRE_AUTH_MAX_FRAME",
    "Handshake",
    "Refused",
    "State",
    "check_peer_hello",
    "client_hello",
    "describe_foreign",
    "reject_frame",
]

PRE_AUTH_MAX_FRAME = 64 * 1024

COOKIE_MISMATCH = "authentication failed: cookie mismatch"
"""The Reject reason for a wrong proof, and how both sides' logs and info() name it. (Nodes
before it sent a bare "authentication failed", which the dialer reads the same way.)"""

Kind = Literal["rejected", "unexpected", "check", "cookie", "auth", "foreign", "protocol", "closed"]


class Refused(ClusterError):
    """The handshake failed; the message says why, worded for a member's log.

    ``cookie_mismatch``: the two sides have different cookies (logged louder, see ClusterNode).
    ``reject``: the reason to send the peer in a Reject before closing (None: just close).
    ``kind``, ``stage`` (``"Hello"`` or ``"Auth"``: the message awaited) and ``detail`` (the
    peer's reason, the unexpected message's type, the decoder's error ...) let a driver word the
    refusal its own way (the command-line client names the node's address)."""

    def __init__(
        self,
        message: str,
        *,
        cookie_mismatch: bool = False,
        reject: str | None = None,
        kind: Kind = "check",
        stage: str = "",
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.cookie_mismatch = cookie_mismatch
        self.reject = reject
        self.kind: Kind = kind
        self.stage = stage
        self.detail = detail


def reject_frame(reason: str) -> bytes:
    """The Reject frame telling the peer why it is refused (the reason cut to 200 characters)."""
    return wire.encode(Reject(reason[:200]))


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
    if not client and (theirs.node_id in mine.retired or mine.node_id in theirs.retired):
        gone = theirs.node_id if theirs.node_id in mine.retired else mine.node_id
        raise Refused(
            f"node {gone} was replaced as a voter (ekv replace-voter); it may not rejoin under that id: "
            "start it on an empty data directory (a new node id), or as an observer on a new one"
        )
    if not client and theirs.consistent_prefixes != mine.consistent_prefixes:
        raise Refused(
            f"peer {theirs.node_id} declares consistent_prefixes {list(theirs.consistent_prefixes)!r}, we declare "
            f"{list(mine.consistent_prefixes)!r}; every member must declare the same list"
        )
    if not client and theirs.cluster_size != mine.cluster_size and mine.consistent_prefixes:
        raise Refused(
            f"peer {theirs.node_id} has cluster_size={theirs.cluster_size}, we have {mine.cluster_size}; every "
            "member must count the same voters"
        )
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


def client_hello(instance: str) -> Hello:
    """A command-line client's Hello, sized so that its frame header ends in a line feed.

    Line-based servers (HTTP, SMTP, Redis ...) wait for a line feed before they answer anything,
    which a binary Hello would not contain; with the last header byte a line feed such a server
    sees one malformed line and answers at once (see :func:`describe_foreign`), while an ekv node
    does not care about the sizes. ``pad`` more bytes come from a longer nonce (two hex digits
    each) and, for an odd count, one more digit of the client id."""
    nonce = auth.new_nonce()
    mine = Hello(
        versions=(PROTOCOL_VERSION,),
        features=(*wire.FEATURES, wire.CLIENT_FEATURE),
        instance=instance,
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


class State(enum.Enum):
    AWAIT_HELLO = "awaiting the peer's Hello"
    ROUTE = "the acceptor has the dialer's Hello and waits for answer()"
    AWAIT_AUTH = "awaiting the peer's Auth"
    DONE = "both sides authenticated"
    REFUSED = "refused"


class Handshake:
    """One side of one connection's handshake. Make it with :meth:`dial` or :meth:`accept`.

    A dialer whose Hello has the ``"client"`` feature (the command line) does not check the
    node's Hello: it has no instance or shards to compare, and the node refuses a version it does
    not speak. Either side's cookie proof is checked the same way (``auth.verify``)."""

    def __init__(self, *, dialer: bool, hello: Hello | None, cookie: bytes | str, max_frame_size: int) -> None:
        self.dialer = dialer
        self.state = State.AWAIT_HELLO
        self.peer_hello: Hello | None = None
        """The peer's Hello, once received."""
        self.features: frozenset[str] = frozenset()
        """The optional features both Hellos list (negotiated when the peer's Hello is checked)."""
        self.decoder = wire.FrameDecoder(PRE_AUTH_MAX_FRAME)
        """Passes to the session when DONE (its cap then raised to ``max_frame_size``)."""
        self.pending: list[Message] = []
        """Messages received but not handled yet; when DONE, those that came after the handshake."""
        self.heard = False
        """Whether a message from the peer was decoded yet (until then bad bytes are described
        as a foreign protocol)."""
        self._hello = hello
        self._cookie = cookie
        self._max_frame_size = max_frame_size
        self._head = b""
        self._out: list[bytes] = []

    @classmethod
    def dial(cls, hello: Hello, cookie: bytes | str, *, max_frame_size: int) -> Handshake:
        """The connecting side; its Hello is queued at once (see :meth:`data_to_send`)."""
        handshake = cls(dialer=True, hello=hello, cookie=cookie, max_frame_size=max_frame_size)
        handshake._out.append(wire.encode(hello))
        return handshake

    @classmethod
    def accept(cls) -> Handshake:
        """The accepting side: it reads the dialer's Hello, then waits in ``ROUTE`` for
        :meth:`answer` (the Hello names the instance, so the driver picks who answers)."""
        return cls(dialer=False, hello=None, cookie=b"", max_frame_size=PRE_AUTH_MAX_FRAME)

    @classmethod
    def routed(cls, theirs: Hello, decoder: wire.FrameDecoder, pending: list[Message]) -> Handshake:
        """An acceptor in ``ROUTE`` whose routing read has already taken ``theirs`` (with the
        decoder and whatever arrived after it): the routing read and the instance's answer run in
        different places (``runtime.py``, then the instance)."""
        handshake = cls.accept()
        handshake.state = State.ROUTE
        handshake.peer_hello, handshake.decoder, handshake.pending = theirs, decoder, pending
        handshake.heard = True
        return handshake

    @property
    def _client(self) -> bool:
        return self._hello is not None and wire.CLIENT_FEATURE in self._hello.features

    def data_to_send(self) -> bytes:
        """The bytes to write to the peer now (empty if none), in order; each call drains them."""
        out, self._out = b"".join(self._out), []
        return out

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the peer; ``b""`` means the peer closed the connection.

        Raises Refused (state ``REFUSED``): send :meth:`data_to_send` (what was due before the
        failure), then ``reject_frame(exc.reject)`` if ``exc.reject`` is set, then close."""
        if self.state in (State.DONE, State.REFUSED):
            raise ClusterError(f"the handshake is over ({self.state.value}): no more data expected")
        if not data:
            self._refuse("connection closed during the handshake", kind="closed")
        try:
            messages = self.decoder.feed(data)
        except ProtocolError as exc:
            if self.heard:
                self._refuse(f"handshake failed: {exc}", kind="protocol", detail=str(exc))
            what = describe_foreign((self._head + data)[:64])
            self._refuse(f"it does not speak the ekv protocol ({what})", kind="foreign", detail=what)
        if not self.heard:
            self._head = (self._head + data)[:64]
            self.heard = bool(messages)
        self.pending.extend(messages)
        self._advance()

    def answer(self, hello: Hello, cookie: bytes | str, *, max_frame_size: int) -> None:
        """The acceptor's answer once routed: check the dialer's Hello and queue ours (then
        handle whatever already arrived). Raises Refused as :meth:`receive_data` does."""
        if self.state is not State.ROUTE or self.peer_hello is None:
            raise ClusterError(f"answer() is for an acceptor that read a Hello, not one {self.state.value}")
        self._hello, self._cookie, self._max_frame_size = hello, cookie, max_frame_size
        self._check(self.peer_hello)
        self._out.append(wire.encode(hello))
        self.state = State.AWAIT_AUTH
        self._advance()

    # -- the protocol --------------------------------------------------------------------------

    def _advance(self) -> None:
        while self.pending and self.state in (State.AWAIT_HELLO, State.AWAIT_AUTH):
            message = self.pending.pop(0)
            if self.state is State.AWAIT_HELLO:
                self._on_hello(message)
            else:
                self._on_auth(message)

    def _on_hello(self, message: Message) -> None:
        if not self.dialer:
            if not isinstance(message, Hello):
                name = type(message).__name__
                self._refuse(f"expected Hello, got {name}", kind="unexpected", detail=name, reject="expected Hello")
            self.peer_hello = message
            self.state = State.ROUTE
            return
        if isinstance(message, Reject):
            self._refuse(f"refused by the peer: {message.reason}", kind="rejected", detail=message.reason)
        if not isinstance(message, Hello):
            name = type(message).__name__
            self._refuse(f"expected Hello, got {name}", kind="unexpected", detail=name)
        self.peer_hello = message
        if self._client:
            self.features = frozenset()
        else:
            self._check(message)
        self._out.append(wire.encode(Auth(auth.proof(self._cookie, mine=self._mine, theirs=message))))
        self.state = State.AWAIT_AUTH

    def _on_auth(self, message: Message) -> None:
        if self.dialer and isinstance(message, Reject):
            reason = message.reason
            if reason == "authentication failed" or reason.startswith(COOKIE_MISMATCH):
                text = f"{COOKIE_MISMATCH}: the peer does not accept this node's cookie"
                self._refuse(text, kind="rejected", detail=reason, cookie_mismatch=True)
            self._refuse(f"refused by the peer: {reason}", kind="rejected", detail=reason)
        if not isinstance(message, Auth):
            name = type(message).__name__
            reject = None if self.dialer else "expected Auth"
            self._refuse(f"expected Auth, got {name}", kind="unexpected", detail=name, reject=reject)
        theirs = self._theirs
        who = "the peer" if self.dialer else f"node {theirs.node_id}"
        try:
            auth.verify(self._cookie, message.mac, mine=self._mine, theirs=theirs)
        except auth.CookieMismatch:
            text = f"{COOKIE_MISMATCH}: {who} does not know this cluster's cookie"
            self._refuse(text, kind="cookie", reject=COOKIE_MISMATCH, cookie_mismatch=True)
        except AuthenticationError as exc:
            self._refuse(f"authentication failed: {exc}", kind="auth", detail=str(exc), reject="authentication failed")
        if not self.dialer:
            self._out.append(wire.encode(Auth(auth.proof(self._cookie, mine=self._mine, theirs=theirs))))
        self.decoder.set_max_frame_size(self._max_frame_size)
        self.state = State.DONE

    def _check(self, theirs: Hello) -> None:
        try:
            _, self.features = check_peer_hello(self._mine, theirs)
        except Refused as exc:
            self._refuse(str(exc), kind="check", reject=str(exc))

    @property
    def _mine(self) -> Hello:
        assert self._hello is not None  # (set by dial() or answer() before any use)
        return self._hello

    @property
    def _theirs(self) -> Hello:
        assert self.peer_hello is not None
        return self.peer_hello

    def _refuse(
        self,
        message: str,
        *,
        kind: Kind,
        detail: str = "",
        reject: str | None = None,
        cookie_mismatch: bool = False,
    ) -> NoReturn:
        stage = "Hello" if self.state is State.AWAIT_HELLO else "Auth"
        self.state = State.REFUSED
        raise Refused(message, kind=kind, stage=stage, detail=detail, reject=reject, cookie_mismatch=cookie_mismatch)
