"""The handshake state machine (``ekv._cluster.handshake``) on its own: no sockets, no loop.

Both roles talk to each other in memory (bytes copied from one's ``data_to_send`` to the
other's ``receive_data``), so every rule of the handshake is checked here exactly as the asyncio
members and the blocking client run it: the order of messages, version and feature negotiation
(old peers whose Hello lacks the fields added later), the cookie proofs, the refusals and the
Reject each side owes the other, a foreign protocol's first bytes, and input cut short.
"""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ekv
from ekv._cluster import auth, wire
from ekv._cluster.handshake import (
    COOKIE_MISMATCH,
    PRE_AUTH_MAX_FRAME,
    Handshake,
    Refused,
    State,
    client_hello,
    reject_frame,
)
from ekv._cluster.messages import PROTOCOL_VERSION, Auth, Hello, Ping, Reject

fast = settings(derandomize=True, deadline=None, max_examples=200)
COOKIE = b"the cluster cookie"
BIG = 8 * 1024 * 1024


def hello(node_id: str = "a", **changes: object) -> Hello:
    mine = Hello(
        versions=(PROTOCOL_VERSION,),
        features=wire.FEATURES,
        instance="default",
        node_id=node_id,
        shards=4,
        nonce=auth.new_nonce(),
        listen="127.0.0.1:1",
        wall_ns=1,
        origin=f"{node_id}-origin",
        codec="pickle",
    )
    return replace(mine, **changes)  # type: ignore[arg-type]


def pair(
    dialer_hello: Hello | None = None,
    acceptor_hello: Hello | None = None,
    dialer_cookie: bytes = COOKIE,
    acceptor_cookie: bytes = COOKIE,
) -> tuple[Handshake, Handshake]:
    """A dialer and an acceptor, the acceptor routed and answered as the runtime would."""
    dialer = Handshake.dial(dialer_hello or hello("a"), dialer_cookie, max_frame_size=BIG)
    acceptor = Handshake.accept()
    acceptor.receive_data(dialer.data_to_send())
    assert acceptor.state is State.ROUTE
    acceptor.answer(acceptor_hello or hello("b"), acceptor_cookie, max_frame_size=BIG)
    return dialer, acceptor


def run(dialer: Handshake, acceptor: Handshake) -> None:
    """Copy bytes both ways until neither has anything to say (a refusal propagates)."""
    while True:
        to_dialer, to_acceptor = acceptor.data_to_send(), dialer.data_to_send()
        if not to_dialer and not to_acceptor:
            return
        if to_dialer:
            dialer.receive_data(to_dialer)
        if to_acceptor:
            acceptor.receive_data(to_acceptor)


def feed(shake: Handshake, data: bytes) -> None:
    """Feed bytes as a driver would: to the handshake until it is done, then to its decoder
    (which passes to the session with the messages left over)."""
    if shake.state is State.DONE:
        shake.pending.extend(shake.decoder.feed(data))
    else:
        shake.receive_data(data)


def test_both_roles_complete_and_agree() -> None:
    a, b = hello("a"), hello("b")
    dialer, acceptor = pair(a, b)
    run(dialer, acceptor)
    assert dialer.state is acceptor.state is State.DONE
    assert dialer.peer_hello == b and acceptor.peer_hello == a
    assert dialer.features == acceptor.features == frozenset(wire.FEATURES)
    assert dialer.decoder.max_frame_size == acceptor.decoder.max_frame_size == BIG
    assert dialer.pending == acceptor.pending == []
    with pytest.raises(ekv.ClusterError, match="the handshake is over"):
        dialer.receive_data(wire.encode(Ping(1)))


def test_the_cap_is_small_until_both_proofs_are_checked() -> None:
    dialer, acceptor = pair()
    assert dialer.decoder.max_frame_size == acceptor.decoder.max_frame_size == PRE_AUTH_MAX_FRAME
    dialer.receive_data(acceptor.data_to_send())  # the acceptor's Hello: the dialer sends Auth
    assert dialer.state is State.AWAIT_AUTH and dialer.decoder.max_frame_size == PRE_AUTH_MAX_FRAME
    acceptor.receive_data(dialer.data_to_send())  # the acceptor checked the dialer: done
    assert acceptor.state is State.DONE and acceptor.decoder.max_frame_size == BIG
    dialer.receive_data(acceptor.data_to_send())
    assert dialer.state is State.DONE and dialer.decoder.max_frame_size == BIG


@fast
@given(st.data())
def test_any_split_of_the_stream_gives_the_same_result(data: st.DataObject) -> None:
    """However TCP cuts the bytes, the handshake completes, and messages that arrived with the
    last handshake frame wait in ``pending`` for the session."""
    dialer, acceptor = pair()
    dialer.receive_data(acceptor.data_to_send())
    stream = dialer.data_to_send() + wire.encode(Ping(7))
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8)))
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        feed(acceptor, stream[start:end])
    assert acceptor.state is State.DONE and acceptor.pending == [Ping(7)]
    reply = acceptor.data_to_send() + wire.encode(Ping(8))
    for i in range(len(reply)):
        feed(dialer, reply[i : i + 1])
    assert dialer.state is State.DONE and dialer.pending == [Ping(8)]


def test_a_wrong_cookie_is_refused_by_the_acceptor_and_named_on_both_sides() -> None:
    dialer, acceptor = pair(dialer_cookie=b"another cookie")
    dialer.receive_data(acceptor.data_to_send())
    with pytest.raises(Refused) as caught:
        acceptor.receive_data(dialer.data_to_send())
    refused = caught.value
    assert str(refused) == f"{COOKIE_MISMATCH}: node a does not know this cluster's cookie"
    assert refused.cookie_mismatch and refused.reject == COOKIE_MISMATCH and refused.kind == "cookie"
    assert acceptor.state is State.REFUSED and acceptor.data_to_send() == b""  # its Auth is never sent
    with pytest.raises(Refused) as answered:
        dialer.receive_data(reject_frame(refused.reject))
    assert str(answered.value) == f"{COOKIE_MISMATCH}: the peer does not accept this node's cookie"
    assert answered.value.cookie_mismatch and answered.value.reject is None  # nothing to say back


def test_an_older_nodes_bare_authentication_failed_reads_as_a_cookie_mismatch() -> None:
    dialer, acceptor = pair()
    dialer.receive_data(acceptor.data_to_send())
    with pytest.raises(Refused) as caught:
        dialer.receive_data(reject_frame("authentication failed"))
    assert caught.value.cookie_mismatch and caught.value.stage == "Auth"


def test_the_dialer_checks_the_acceptors_proof_too() -> None:
    """An acceptor that answers with a proof made with another cookie (or replays the dialer's
    own proof) is refused by the dialer, which tells it why."""
    a, b = hello("a"), hello("b")
    dialer = Handshake.dial(a, COOKIE, max_frame_size=BIG)
    assert dialer.data_to_send() == wire.encode(a)
    dialer.receive_data(wire.encode(b))
    own_proof = dialer.data_to_send()
    assert own_proof == wire.encode(Auth(auth.proof(COOKIE, mine=a, theirs=b)))
    forged = Auth(auth.proof(b"wrong", mine=b, theirs=a))
    with pytest.raises(Refused) as caught:
        dialer.receive_data(wire.encode(forged))
    assert str(caught.value) == f"{COOKIE_MISMATCH}: the peer does not know this cluster's cookie"
    assert caught.value.reject == COOKIE_MISMATCH
    reflected = Handshake.dial(a, COOKIE, max_frame_size=BIG)
    reflected.data_to_send()
    reflected.receive_data(wire.encode(b))
    with pytest.raises(Refused, match="cookie mismatch"):
        reflected.receive_data(reflected.data_to_send())  # its own proof sent back


def test_a_peer_with_our_node_id_and_origin_is_refused_before_any_proof() -> None:
    dialer = Handshake.dial(hello("a"), COOKIE, max_frame_size=BIG)
    dialer.data_to_send()
    with pytest.raises(Refused, match="connected to ourselves") as caught:
        dialer.receive_data(wire.encode(hello("a")))
    assert caught.value.reject == "connected to ourselves" and dialer.data_to_send() == b""  # no proof


def test_a_version_mismatch_is_refused_with_a_reason_for_both_sides() -> None:
    future = hello("a", versions=(PROTOCOL_VERSION + 1,))
    dialer = Handshake.dial(future, COOKIE, max_frame_size=BIG)
    acceptor = Handshake.accept()
    acceptor.receive_data(dialer.data_to_send())
    with pytest.raises(Refused, match="no common protocol version") as caught:
        acceptor.answer(hello("b"), COOKIE, max_frame_size=BIG)
    assert caught.value.reject == str(caught.value) and acceptor.data_to_send() == b""  # no Hello either
    with pytest.raises(Refused) as answered:
        dialer.receive_data(reject_frame(str(caught.value)))
    assert str(answered.value) == f"refused by the peer: {caught.value}"
    assert answered.value.kind == "rejected" and answered.value.stage == "Hello"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"shards": 8}, "has 8 shards, we have 4"),
        ({"instance": "other"}, "peer runs instance 'other', we run 'default'"),
        ({"codec": "json"}, "uses codec 'json', we use 'pickle'"),
    ],
)
def test_the_dialer_refuses_an_incompatible_acceptor_and_says_why(change: dict[str, object], reason: str) -> None:
    dialer = Handshake.dial(hello("a"), COOKIE, max_frame_size=BIG)
    dialer.data_to_send()
    with pytest.raises(Refused, match=reason) as caught:
        dialer.receive_data(wire.encode(hello("b", **change)))
    assert caught.value.reject == str(caught.value) and dialer.data_to_send() == b""  # no Auth sent


def _old_hello_frame(new: Hello) -> tuple[bytes, Hello]:
    """The Hello frame of an ekv from before the fields in ``wire._ADDED`` (origin, codec) and
    the ``identity`` feature, and that Hello as this version reads it."""
    old = replace(new, features=("zlib",))
    body = json.loads(wire.encode(old)[5:])
    for field in wire._ADDED[1]:
        del body[field]
    raw = json.dumps(body).encode()
    frame = struct.pack(">IB", len(raw) + 1, 1) + raw
    return frame, wire.decode(frame, max_frame_size=PRE_AUTH_MAX_FRAME)  # type: ignore[return-value]


def test_an_old_dialer_without_the_added_fields_and_features_is_accepted() -> None:
    frame, as_read = _old_hello_frame(hello("old"))
    assert as_read.origin == "" and as_read.codec is None  # the values an old Hello stands for
    acceptor = Handshake.accept()
    acceptor.receive_data(frame)
    mine = hello("b")
    acceptor.answer(mine, COOKIE, max_frame_size=BIG)
    assert acceptor.features == frozenset({"zlib"})  # identity is not used with it
    old_proof = auth.proof(COOKIE, mine=as_read, theirs=mine)  # what the old node computes
    acceptor.data_to_send()
    acceptor.receive_data(wire.encode(Auth(old_proof)))
    assert acceptor.state is State.DONE
    answer = wire.decode(acceptor.data_to_send(), max_frame_size=PRE_AUTH_MAX_FRAME)
    assert isinstance(answer, Auth)
    auth.verify(COOKIE, answer.mac, mine=as_read, theirs=mine)  # the old node accepts our proof


def test_an_old_acceptor_without_the_added_fields_and_features_is_accepted() -> None:
    frame, as_read = _old_hello_frame(hello("old"))
    mine = hello("a")
    dialer = Handshake.dial(mine, COOKIE, max_frame_size=BIG)
    dialer.data_to_send()
    dialer.receive_data(frame)  # no codec: nothing to compare
    assert dialer.features == frozenset({"zlib"})
    sent = wire.decode(dialer.data_to_send(), max_frame_size=PRE_AUTH_MAX_FRAME)
    assert isinstance(sent, Auth)
    auth.verify(COOKIE, sent.mac, mine=as_read, theirs=mine)
    dialer.receive_data(wire.encode(Auth(auth.proof(COOKIE, mine=as_read, theirs=mine))))
    assert dialer.state is State.DONE


@pytest.mark.parametrize(
    ("head", "described"),
    [
        (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "it answered like an HTTP server"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "it sent an HTTP request"),
        (bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), "it speaks TLS; is TLS configured on both sides?"),
        (b"-ERR unknown command\r\n", "it sent the text '-ERR unknown command'"),
        (b"\xff\xff\xff\xff\x00", "it sent bytes that are not an ekv frame"),
    ],
)
@pytest.mark.parametrize("dialer", [True, False])
def test_a_foreign_protocols_first_bytes_are_described(head: bytes, described: str, dialer: bool) -> None:
    shake = Handshake.dial(hello(), COOKIE, max_frame_size=BIG) if dialer else Handshake.accept()
    with pytest.raises(Refused) as caught:
        shake.receive_data(head)
    assert str(caught.value) == f"it does not speak the ekv protocol ({described})"
    assert caught.value.kind == "foreign" and caught.value.reject is None
    assert shake.state is State.REFUSED


def test_a_foreign_protocol_is_recognised_across_pieces() -> None:
    """Bytes too few for a frame header are kept, so the description sees them all."""
    shake = Handshake.accept()
    shake.receive_data(b"HT")
    with pytest.raises(Refused, match=r"\(it answered like an HTTP server\)$"):
        shake.receive_data(b"TP/1.0 400 Bad Request\r\n")


def test_bad_bytes_after_a_valid_message_are_a_protocol_error_not_a_foreign_protocol() -> None:
    dialer = Handshake.dial(hello("a"), COOKIE, max_frame_size=BIG)
    dialer.receive_data(wire.encode(hello("b")))
    with pytest.raises(Refused, match=r"^handshake failed: frame of \d+ bytes declared") as caught:
        dialer.receive_data(b"HTTP/1.1 200 OK\r\n")
    assert caught.value.kind == "protocol"


def test_a_frame_over_the_pre_authentication_cap_is_refused() -> None:
    acceptor = Handshake.accept()
    with pytest.raises(Refused):
        acceptor.receive_data(struct.pack(">I", PRE_AUTH_MAX_FRAME + 1) + b"\x01")


def test_unexpected_messages_are_refused_with_the_reject_each_role_owes() -> None:
    acceptor = Handshake.accept()
    with pytest.raises(Refused, match="expected Hello, got Ping") as caught:
        acceptor.receive_data(wire.encode(Ping(1)))
    assert caught.value.reject == "expected Hello" and caught.value.detail == "Ping"
    dialer = Handshake.dial(hello(), COOKIE, max_frame_size=BIG)
    with pytest.raises(Refused, match="expected Hello, got Auth") as caught:
        dialer.receive_data(wire.encode(Auth(b"x" * 32)))
    assert caught.value.reject is None
    # A dialer that pipelines a Ping after its Hello: the acceptor's Hello is still due before
    # the Reject (data_to_send), as when the two were written one after the other.
    dialer = Handshake.dial(hello("a"), COOKIE, max_frame_size=BIG)
    acceptor = Handshake.accept()
    acceptor.receive_data(dialer.data_to_send() + wire.encode(Ping(1)))
    mine = hello("b")
    with pytest.raises(Refused, match="expected Auth, got Ping") as caught:
        acceptor.answer(mine, COOKIE, max_frame_size=BIG)
    assert caught.value.reject == "expected Auth" and acceptor.data_to_send() == wire.encode(mine)


def test_a_reject_from_the_dialer_at_the_auth_stage_is_unexpected_for_the_acceptor() -> None:
    _, acceptor = pair()
    with pytest.raises(Refused, match="expected Auth, got Reject"):
        acceptor.receive_data(reject_frame("no thanks"))


@fast
@given(st.data())
def test_input_cut_short_waits_then_is_refused_when_the_peer_closes(data: st.DataObject) -> None:
    dialer, acceptor = pair()
    flight = acceptor.data_to_send()
    cut = data.draw(st.integers(0, len(flight) - 1))
    if cut:
        dialer.receive_data(flight[:cut])
    assert dialer.state is State.AWAIT_HELLO or (dialer.state is State.AWAIT_AUTH and cut >= len(flight))
    assert dialer.data_to_send() == b""  # nothing answered on half a frame
    with pytest.raises(Refused, match=r"^connection closed during the handshake$") as caught:
        dialer.receive_data(b"")
    assert caught.value.kind == "closed" and caught.value.reject is None


@fast
@given(st.binary(max_size=200), st.booleans())
def test_arbitrary_bytes_only_ever_refuse_or_wait(junk: bytes, as_dialer: bool) -> None:
    shake = Handshake.dial(hello(), COOKIE, max_frame_size=BIG) if as_dialer else Handshake.accept()
    try:
        shake.receive_data(junk or b"\x00")
    except Refused:
        assert shake.state is State.REFUSED
    else:
        assert shake.state in (State.AWAIT_HELLO, State.AWAIT_AUTH, State.ROUTE)


def test_a_client_completes_the_handshake_with_a_node_and_pads_its_hello() -> None:
    mine = client_hello("*")
    frame = wire.encode(mine)
    assert frame[wire.HEADER_SIZE - 1] == ord("\n")  # line-based servers answer at once
    dialer, acceptor = pair(dialer_hello=mine)
    run(dialer, acceptor)
    assert dialer.state is acceptor.state is State.DONE
    assert acceptor.peer_hello == mine and acceptor.features == frozenset(wire.FEATURES)
    assert dialer.features == frozenset()  # the client leaves the checks to the node


def test_a_client_that_the_node_refuses_learns_why() -> None:
    dialer = Handshake.dial(client_hello("*"), COOKIE, max_frame_size=BIG)
    dialer.data_to_send()
    with pytest.raises(Refused) as caught:
        dialer.receive_data(wire.encode(Reject("no ekv instance named 'x' here")))
    assert caught.value.kind == "rejected" and caught.value.detail == "no ekv instance named 'x' here"


def test_answer_is_only_for_a_routed_acceptor() -> None:
    with pytest.raises(ekv.ClusterError, match="answer"):
        Handshake.accept().answer(hello(), COOKIE, max_frame_size=BIG)
