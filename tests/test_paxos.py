"""The pure rules of linearizable operations (ekv._core.paxos) and their wire format."""

from __future__ import annotations

import contextlib
import random

import pytest

from ekv._cluster import wire
from ekv._cluster.messages import Accept, Accepted, Outcome, Prepare, Promise, Propose
from ekv._core.paxos import (
    ABSENT,
    ANY,
    READ,
    ZERO,
    Ballot,
    Committed,
    Conflict,
    Lost,
    Op,
    Read,
    Record,
    Round,
    SendAccept,
    Unconfirmed,
    accept_granted,
    condition_holds,
    mark,
    next_record,
    prepare_granted,
)
from ekv._core.paxos import Promise as P
from ekv._errors import ProtocolError

B1, B2, B3 = Ballot(10, "a"), Ballot(20, "b"), Ballot(30, "c")
R0 = Record(5, "z", None, b"zero", mark(0, ""))


def rnd(op: Op, ballot: Ballot = B2, attempts: list[Record] | None = None) -> Round:
    return Round(op, ballot, 2, 3, now_ns=100, origin="me", clock_ns=50, attempts=attempts or [])


def test_acceptor_decisions() -> None:
    assert prepare_granted(B1, 0, True, B2) and not prepare_granted(B2, 0, True, B2)
    assert accept_granted(B2, 0, True, B2) and not accept_granted(B3, 0, True, B2)
    assert not prepare_granted(ZERO, 25, False, B2)  # below the floor of collected rows
    assert prepare_granted(ZERO, 25, True, B2) and prepare_granted(ZERO, 25, False, B3)


def test_conditions_and_next_records() -> None:
    live, gone = Record(5, "z", None, b"v"), Record(5, "z", None, None)
    expired = Record(5, "z", 99, b"v")
    assert condition_holds(ANY, None, 100) and condition_holds(ABSENT, None, 100)
    assert condition_holds(ABSENT, gone, 100) and condition_holds(ABSENT, expired, 100)
    assert not condition_holds(ABSENT, live, 100) and not condition_holds(READ, live, 100)
    assert condition_holds(5, live, 100) and not condition_holds(5, gone, 100) and not condition_holds(6, live, 100)
    new = next_record(Op("k", ANY, b"n", 200), Record(900, "z", None, b"v"), B2, "me", 50)
    assert new.ts == 901 and new.origin == "me" and new.expires_at == 200  # above the current version
    assert new.lineage[:12] == mark(900, "z")
    assert next_record(Op("k", ANY, b"n", None), None, B2, "me", 50).ts == 50
    deleted = next_record(Op("k", ANY, None, 200), None, Ballot(70, "x"), "me", 50)
    assert deleted == Record(70, "me", None, None, mark(0, ""))


def test_a_read_that_finds_a_quorum_agreeing_returns_without_writing() -> None:
    r = rnd(Op("k", READ, None, None))
    assert r.on_promise("a", P(True, B2, B1, R0)) is None
    assert r.on_promise("b", P(True, B2, B1, R0)) == Read(R0, False)


def test_a_read_that_finds_disagreement_accepts_what_it_found_first() -> None:
    r = rnd(Op("k", READ, None, None))
    r.on_promise("a", P(True, B2, B1, R0))
    assert r.on_promise("b", P(True, B2, ZERO, None)) == SendAccept(R0)
    assert r.on_accepted("a", True, B2) is None
    assert r.on_accepted("a", True, B2) is None  # one voice per voter
    assert r.on_accepted("b", True, B2) == Read(R0, True)


def test_the_highest_accepted_ballot_wins_and_a_conflict_reports_it() -> None:
    newer = Record(8, "y", None, b"newer")
    r = rnd(Op("k", ABSENT, b"x", None))
    r.on_promise("a", P(True, B2, B1, R0))
    assert r.on_promise("b", P(True, B2, Ballot(15, "y"), newer)) == SendAccept(newer)
    assert r.identity and r.on_accepted("a", True, B2) is None
    assert r.on_accepted("c", True, B2) == Conflict(newer, True)


def test_refusals_that_leave_no_quorum_lose_the_round() -> None:
    r = rnd(Op("k", ANY, b"x", None))
    assert r.on_promise("a", P(False, B3)) is None
    assert r.on_promise("b", P(False, Ballot(40, "d"))) == Lost(40)
    r = rnd(Op("k", ANY, b"x", None))
    r.on_promise("a", P(True, B2, B1, R0))
    action = r.on_promise("b", P(True, B2, B1, R0))
    assert isinstance(action, SendAccept) and action.record is not None and r.attempts == [action.record]
    assert r.on_accepted("a", False, B3) is None
    assert r.on_accepted("b", False, B3) == Lost(30)


def test_recovery_after_a_refused_accept() -> None:
    mine = next_record(Op("k", ANY, b"mine", None), R0, B1, "me", 50)
    # 1. our own record is the state: accept it again, success
    r = rnd(Op("k", ANY, b"mine", None), B3, [mine])
    r.on_promise("a", P(True, B3, B1, mine))
    assert r.on_promise("b", P(True, B3, ZERO, R0)) == SendAccept(mine)
    r.on_accepted("a", True, B3)
    assert r.on_accepted("b", True, B3) == Committed(mine)
    # 2. another proposer built on ours: confirmed by its lineage
    built = next_record(Op("k", ANY, b"theirs", None), mine, B2, "them", 50)
    r = rnd(Op("k", ANY, b"mine", None), B3, [mine])
    r.on_promise("a", P(True, B3, B2, built))
    assert r.on_promise("b", P(True, B3, B2, built)) == SendAccept(built)  # never the shortcut in recovery
    r.on_accepted("a", True, B3)
    assert r.on_accepted("b", True, B3) == Committed(mine, built)
    # 3. a sibling (built on our parent by another branch): ours was not chosen; decide afresh
    sibling = next_record(Op("k", ANY, b"sib", None), R0, B2, "them", 50)
    r = rnd(Op("k", ANY, b"mine", None), B3, [mine])
    r.on_promise("a", P(True, B3, B2, sibling))
    action = r.on_promise("b", P(True, B3, B2, sibling))
    assert isinstance(action, SendAccept) and action.record is not None and action.record.value == b"mine"
    assert action.record.lineage[:12] == mark(sibling.ts, sibling.origin) and len(r.attempts) == 2
    # 4. a conditional write whose condition no longer holds after a sibling: conflict, fenced
    r = rnd(Op("k", R0.ts, b"mine", None), B3, [mine])
    r.on_promise("a", P(True, B3, B2, sibling))
    assert r.on_promise("b", P(True, B3, B2, sibling)) == SendAccept(sibling)
    r.on_accepted("a", True, B3)
    assert r.on_accepted("b", True, B3) == Conflict(sibling, True)
    # 5. a newer state whose lineage says nothing of ours or of our parent: unknowable
    stranger = Record(10**6, "x", None, b"?", mark(999, "q"))
    r = rnd(Op("k", ANY, b"mine", None), B3, [mine])
    r.on_promise("a", P(True, B3, B2, stranger))
    assert r.on_promise("b", P(True, B3, B2, stranger)) == Unconfirmed()


MESSAGES = [
    Prepare(1, "k", B1),
    Promise(2, P(True, B2, B1, R0)),
    Promise(3, P(False, B3)),
    Promise(4, P(True, B2, ZERO, Record(7, "o", 99, None, b""))),
    Accept(5, "ключ", B2, Record(1, "o", None, b"\x00" * 100, mark(1, "p") * 3)),
    Accept(6, "k", B2, None),
    Accepted(7, True, B2),
    Accepted(8, False, B3),
    Propose(9, Op("k", ANY, b"v", 5), 100),
    Propose(10, Op("k", ABSENT, None, None), 1),
    Propose(11, Op("k", READ, None, None), 1),
    Propose(12, Op("k", 1234, b"", None), 1),
    Outcome(13, "committed", R0),
    Outcome(14, "no_quorum", None),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_round_trip(message: object) -> None:
    frame = wire.encode(message)  # type: ignore[arg-type]
    assert wire.decode(frame, max_frame_size=1 << 20) == message


def test_malformed_messages_raise_protocol_errors_only() -> None:
    rng = random.Random(7)
    for message in MESSAGES:
        frame = wire.encode(message)  # type: ignore[arg-type]
        for cut in range(5, len(frame)):
            broken = len(frame[:cut]) - 4
            with pytest.raises(ProtocolError):
                wire.decode(broken.to_bytes(4, "big") + frame[4:cut], max_frame_size=1 << 20)
        with pytest.raises(ProtocolError, match="trailing"):
            wire.decode((len(frame) - 3).to_bytes(4, "big") + frame[4:] + b"x", max_frame_size=1 << 20)
        for _ in range(200):
            body = bytearray(frame[4:])
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(1, len(body))] = rng.randrange(256)
            with contextlib.suppress(ProtocolError):
                wire.decode(len(body).to_bytes(4, "big") + bytes(body), max_frame_size=1 << 20)


def test_the_one_round_trip_path() -> None:
    from ekv._core.paxos import next_ballot

    assert next_ballot(B1) == Ballot(11, "a") and next_ballot(B1) > B1
    assert accept_granted(next_ballot(B1), 0, True, next_ballot(B1))  # what an accept promised
    assert not prepare_granted(next_ballot(B1), 0, True, Ballot(11, "a"))  # nobody else gets it twice
    r = rnd(Op("k", ANY, b"x", None), next_ballot(B1))
    action = r.start_cached(R0)
    assert isinstance(action, SendAccept) and action.record is not None and r.attempts == [action.record]
    assert action.record.lineage[:12] == mark(R0.ts, R0.origin)
    r.on_accepted("a", True, next_ballot(B1))
    assert r.on_accepted("b", True, next_ballot(B1)) == Committed(action.record)
    # a condition that fails on the cached (possibly stale) state, and reads: a full round instead
    assert rnd(Op("k", ABSENT, b"x", None)).start_cached(R0) is None
    assert rnd(Op("k", READ, None, None)).start_cached(R0) is None
