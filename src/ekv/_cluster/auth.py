"""Mutual authentication with the cluster cookie: challenge-response, the secret never sent.

Each side sends a fresh random nonce in its Hello, then proves it knows the cookie with an
HMAC-SHA256, keyed by the cookie, over a transcript of *both* Hellos (nonces, node ids, instance
names, shard counts, protocol versions and features, listen addresses) in a fixed role order:
first the prover's Hello, then the verifier's.

What this gives, against an attacker who can read, replay, forge and reorder bytes on the network
but does not know the cookie:

* **Both ends are authenticated.** Each side checks the other's proof; a peer that does not know
  the cookie cannot compute one (and learns nothing useful from ours: HMAC does not reveal its
  key, and the cookie itself never crosses the wire).
* **No replay.** Every proof covers the verifier's own fresh nonce (32 random bytes from
  :mod:`secrets`), so a proof recorded from another connection is worthless.
* **No reflection.** A proof is bound to its role: A's proof is over (A's Hello, B's Hello) and the
  proof A expects is over (B's Hello, A's Hello), so sending A's proof back to A fails. A peer that
  claims A's own node id is refused outright, which defeats the variant that relays a proof
  between two connections to the same node (it would need the node to talk to "itself").
* **No downgrade.** The versions and features both sides offered are inside the MACs, so a
  man in the middle who edits a Hello (to strip a feature or a protocol version) breaks both
  proofs.

What it does not give: after the handshake the connection is neither encrypted nor integrity
protected. An attacker on the path can read the replicated data and inject or alter frames of an
authenticated connection. Use TLS (an :class:`ssl.SSLContext`) on untrusted networks; the cookie
handshake then still runs inside TLS and decides cluster membership. An empty cookie is allowed for
loopback-only clusters: the handshake then proves nothing beyond not being a stray connection.
The cookie should be long and random (it is an HMAC key, so a weak cookie can be guessed offline
from one recorded handshake).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Iterable

from ekv._cluster.messages import Hello
from ekv._cluster.wire import IDENTITY_FEATURE
from ekv._errors import AuthenticationError, InvalidArgumentType

__all__ = ["MAC_SIZE", "NONCE_SIZE", "CookieMismatch", "new_nonce", "proof", "verify"]

NONCE_SIZE = 32
MAC_SIZE = 32
_TAG = b"ekv cookie auth v1\x00"
_LEN = struct.Struct(">I")


class CookieMismatch(AuthenticationError):
    """The peer's proof is wrong: it was made with another cookie (the one failure an operator
    causes and fixes, so it is told apart from a replayed or reflected handshake)."""


def new_nonce() -> bytes:
    """A fresh challenge for one Hello; never reused."""
    return secrets.token_bytes(NONCE_SIZE)


def proof(cookie: bytes | str, *, mine: Hello, theirs: Hello) -> bytes:
    """The Auth MAC this side sends: proof that the sender of ``mine`` knows ``cookie``."""
    return hmac.new(_key(cookie), _transcript(prover=mine, verifier=theirs), hashlib.sha256).digest()


def verify(cookie: bytes | str, proof_bytes: bytes, *, mine: Hello, theirs: Hello) -> None:
    """Check the peer's Auth MAC (the peer sent ``theirs``; we sent ``mine``).

    Raises:
        AuthenticationError: the proof is wrong (another cookie, a replay, a reflected proof), or
            the peer claims our own node id or nonce.
    """
    copy = IDENTITY_FEATURE in theirs.features and IDENTITY_FEATURE in mine.features and theirs.origin != mine.origin
    if theirs.node_id == mine.node_id and not copy:
        # (With another origin it is a copy of our data directory, which the cluster resolves
        # once this proof is checked; a reflected Hello carries our own origin.)
        raise AuthenticationError(
            f"peer claims our own node id {mine.node_id!r}: a connection to ourselves, a reflected "
            "handshake, or two nodes sharing a copied data directory"
        )
    if hmac.compare_digest(theirs.nonce, mine.nonce):
        raise AuthenticationError("peer echoed our own nonce")
    expected = proof(cookie, mine=theirs, theirs=mine)
    if type(proof_bytes) is not bytes or not hmac.compare_digest(expected, proof_bytes):
        raise CookieMismatch(
            f"node {theirs.node_id!r} failed the cookie challenge: it does not know this cluster's cookie"
        )


def _key(cookie: bytes | str) -> bytes:
    if isinstance(cookie, str):
        return cookie.encode("utf-8", "surrogatepass")
    if isinstance(cookie, bytes | bytearray | memoryview):
        return bytes(cookie)
    raise InvalidArgumentType(f"cookie must be bytes or str, not {type(cookie).__name__}")


def _transcript(*, prover: Hello, verifier: Hello) -> bytes:
    """Both Hellos as unambiguous length-prefixed fields, prover first.

    Length prefixes (rather than separators) make the encoding injective, so no two different
    pairs of Hellos can produce the same transcript.
    """
    parts = [_TAG]
    # Fields added later are covered once both sides list the feature that added them (an
    # older peer computes the transcript without them; the features themselves are covered).
    identity = IDENTITY_FEATURE in prover.features and IDENTITY_FEATURE in verifier.features
    for role, hello in ((b"prover", prover), (b"verifier", verifier)):
        fields = [
            role,
            bytes(hello.nonce),
            _text(hello.node_id),
            _text(hello.instance),
            _list(str(v).encode() for v in hello.versions),
            _list(_text(f) for f in hello.features),
            str(hello.shards).encode(),
            b"-" if hello.listen is None else b"+" + _text(hello.listen),
            str(hello.wall_ns).encode(),
        ]
        if identity:
            fields.append(_text(hello.origin))
        parts.append(_list(fields))
    return b"".join(parts)


def _text(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _list(items: Iterable[bytes]) -> bytes:
    chunks = list(items)
    return _LEN.pack(len(chunks)) + b"".join(_LEN.pack(len(c)) + c for c in chunks)
