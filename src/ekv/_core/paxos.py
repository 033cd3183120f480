"""Single-decree consensus per key (CASPaxos, Rystsov 2018): the pure rules.

A key under ``consistent_prefixes`` is a register agreed by ``cluster_size`` voters. Each voter is
an *acceptor* that stores, per key, the highest ballot it promised and the record it last
accepted (with that record's ballot). Any process may be a *proposer*: to change the key it

1. picks a ballot higher than any it has seen and asks every voter to *prepare* it; a voter
   promises unless it already promised a ballot as high, and answers with what it accepted;
2. once a quorum (``cluster_size // 2 + 1`` distinct voters) promised, takes the record accepted
   under the highest ballot among the answers as the key's current state, applies the operation
   to it (a condition: absent, a version, anything, or a read) and asks every voter to *accept*
   the result under its ballot;
3. once a quorum accepted, the result is chosen: it commits it into its own store as an ordinary
   version, which replicates like any other write.

This module holds the rules and nothing else: ballots, records, the acceptor's two decisions and
the proposer's state machine (:class:`Round`), so that the storage (the acceptor's rows), the node
(single-voter transactions) and the cluster (messages, timers) all run the same code, and the
simulator can drive it. No I/O, no clock reads, no randomness.

Why it is safe, in the terms the code uses:

* Ballots ``(counter, origin)`` never repeat: the origin names one open of one data directory
  (a fresh one per open), the counter comes from the hybrid clock and rises past every ballot
  the proposer has been refused with.
* Versions of a consistent key rise with every chosen record (:func:`next_record`: above the
  ballot's counter and above the current version), so ordinary last-writer-wins replication of
  the committed versions converges on the latest chosen one, and a version's timestamp alone
  names a chosen record of its key (conditions compare timestamps).
* Reads never see an accepted record that was not chosen: plain reads read committed rows only,
  and a consistent read either finds a quorum that accepted the same ballot (then that record
  is chosen) or makes the record it found chosen by accepting it again under its own ballot.
* An operation that sent an accept and lost track of it (a refused accept, a timeout) is never
  reported as not applied unless a later round of the same operation fenced it: its next round
  accepts under a higher ballot, and only a state older than the lost attempt proves the attempt
  was not chosen (:meth:`Round._recovering`).
* Acceptor rows of keys deleted long ago are dropped by GC, which first raises the shard's
  ballot *floor* above every ballot they held: a voter without a row refuses ballots at or below
  the floor, so a proposer that prepared before the drop cannot get an accept past it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "ABSENT",
    "ANY",
    "LINEAGE",
    "READ",
    "REFRESH",
    "ZERO",
    "Ballot",
    "Committed",
    "Conflict",
    "Lost",
    "NoQuorum",
    "Op",
    "Outcome",
    "Promise",
    "Read",
    "Record",
    "Round",
    "SendAccept",
    "Step",
    "Unconfirmed",
    "accept_granted",
    "condition_holds",
    "mark",
    "next_ballot",
    "next_record",
    "prepare_granted",
    "quorum_of",
]


class Ballot(NamedTuple):
    """``(counter, proposer origin)``, ordered as a tuple."""

    counter: int
    by: str


ZERO = Ballot(0, "")
"""The ballot of nothing accepted (and of a committed row offered in place of an acceptor row)."""


def next_ballot(ballot: Ballot) -> Ballot:
    """The ballot a voter promises as it accepts ``ballot``: the same proposer's next one. A
    proposer whose accept a quorum took thereby holds a quorum's promises for it, with its own
    record as the highest accepted: phase 1 of its next round on the key is done (the paper's
    one-round-trip optimisation), unless another proposer's prepare came in between."""
    return Ballot(ballot.counter + 1, ballot.by)


class Record(NamedTuple):
    """The state of a register: the version ``(ts, origin)`` and value (None: deleted) that a
    chosen write gave the key, and when it expires. ``lineage`` names the records it was built
    on, newest first (:func:`mark` each, at most :data:`LINEAGE` of them): it lets a proposer whose
    accept was refused tell, from the state that followed, whether its write is in the key's
    history (:meth:`Round._recovering`)."""

    ts: int
    origin: str
    expires_at: int | None
    value: bytes | None
    lineage: bytes = b""

    def live(self, now_ns: int) -> bool:
        """True if the key has a value at ``now_ns`` (not deleted, not expired)."""
        return self.value is not None and (self.expires_at is None or self.expires_at > now_ns)


LINEAGE = 16
"""Ancestors a record names (12 bytes each)."""
_MARK = struct.Struct(">qI")


def mark(ts: int, origin: str) -> bytes:
    """A record's name in a lineage: its timestamp and a CRC of its origin (12 bytes). The state
    "absent" is ``mark(0, "")``."""
    return _MARK.pack(ts, zlib.crc32(origin.encode()))


def _ancestors(record: Record) -> set[bytes]:
    lineage = record.lineage
    return {lineage[i : i + _MARK.size] for i in range(0, len(lineage), _MARK.size)}


ANY = "any"
"""Condition of an unconditional (``consistent=True``) write."""
ABSENT = "absent"
"""Condition of ``if_absent=True``: no live value (never written, deleted or expired)."""
READ = "read"
"""A linearizable read: nothing is written unless the state found must be made chosen first."""
REFRESH = "refresh"
"""A read that always accepts the state found again under its own ballot (voter replacement:
every key's latest chosen record is then accepted by every voter of the quorum that ran it)."""


class Op(NamedTuple):
    """One linearizable operation on one key, as it crosses threads, processes and nodes.

    ``cond``: :data:`ANY`, :data:`ABSENT`, :data:`READ`, or an int: the write applies only if
    the current version's timestamp is this one (``if_version``). ``value`` is the encoded new
    value, None to delete; ``expires_at`` the new value's expiry."""

    key: str
    cond: str | int
    value: bytes | None
    expires_at: int | None


def quorum_of(cluster_size: int) -> int:
    """How many distinct voters make a quorum."""
    return cluster_size // 2 + 1


def condition_holds(cond: str | int, current: Record | None, now_ns: int) -> bool:
    """Whether a write with ``cond`` applies to the register in state ``current``."""
    if cond == ANY:
        return True
    live = current is not None and current.live(now_ns)
    if cond == ABSENT:
        return not live
    if cond in (READ, REFRESH):
        return False
    return live and current is not None and current.ts == cond


def next_record(op: Op, current: Record | None, ballot: Ballot, origin: str, clock_ns: int) -> Record:
    """The record a write chosen under ``ballot`` gives the key: its timestamp is above the
    current version's (so replication's last-writer-wins keeps the latest chosen record), above
    the ballot's counter (so it is above every version of the key that GC dropped, which the
    ballot floor is above) and at least the proposer's clock."""
    ts = max(clock_ns, ballot.counter, current.ts + 1 if current is not None else 0)
    if current is None:
        lineage = mark(0, "")
    else:
        lineage = (mark(current.ts, current.origin) + current.lineage)[: LINEAGE * _MARK.size]
    return Record(ts, origin, op.expires_at if op.value is not None else None, op.value, lineage)


# -- the acceptor's decisions ------------------------------------------------------------------------


def prepare_granted(promised: Ballot, floor: int, has_row: bool, ballot: Ballot) -> bool:
    """Whether a voter promises ``ballot``: it must be above the promise already given, and for
    a key without an acceptor row above the shard's ballot floor (rows dropped by GC)."""
    return ballot > promised and (has_row or ballot.counter > floor)


def accept_granted(promised: Ballot, floor: int, has_row: bool, ballot: Ballot) -> bool:
    """Whether a voter accepts a record under ``ballot``: not below its promise (its own
    proposer's promise included), and above the floor for a key without a row."""
    return ballot >= promised and (has_row or ballot.counter > floor)


# -- the proposer ------------------------------------------------------------------------------------


class Promise(NamedTuple):
    """A voter's answer to a prepare. ``ok`` False: refused, ``promised`` is what it promised
    (or the floor); else ``accepted`` is the ballot of ``record`` (ZERO: none, or the committed
    row offered in place of an acceptor row)."""

    ok: bool
    promised: Ballot
    accepted: Ballot = ZERO
    record: Record | None = None


class Step(NamedTuple):
    """One step of a voter's acceptor, as the proposer and the acceptor service queue them:
    ``kind`` "prepare" (``ballot``), "accept" (``ballot``, ``record``: None accepts the absent
    state) or "chosen" (``record``: write it into the store). See
    :meth:`ekv._storage.acceptor.Acceptor.steps`."""

    kind: str
    key: str
    ballot: Ballot = ZERO
    record: Record | None = None


@dataclass(frozen=True)
class SendAccept:
    """Ask every voter to accept ``record`` under the round's ballot."""

    record: Record | None


@dataclass(frozen=True)
class Committed:
    """The write was chosen: ``record``. ``latest``: the key's chosen state, when a later write
    built on ``record`` already (commit ``latest or record`` locally)."""

    record: Record
    latest: Record | None = None


@dataclass(frozen=True)
class Read:
    """A consistent read: ``record`` is the chosen state (None: the key was never written).
    ``commit``: accepted again under this round's ballot, commit it locally (it may be missing)."""

    record: Record | None
    commit: bool


@dataclass(frozen=True)
class Conflict:
    """The condition did not hold on the chosen state ``record``; nothing was applied.
    ``commit`` as for :class:`Read`."""

    record: Record | None
    commit: bool


@dataclass(frozen=True)
class Lost:
    """The round was refused by enough voters that no quorum is left (a higher ballot won):
    retry with a counter above ``above``. Nothing of this round was chosen."""

    above: int


@dataclass(frozen=True)
class Unconfirmed:
    """An accept of this operation may have been chosen, and it cannot be known here."""


@dataclass(frozen=True)
class NoQuorum:
    """Not enough voters answered in time; nothing of this operation was applied."""


Outcome = Committed | Read | Conflict | Unconfirmed | NoQuorum
Action = SendAccept | Outcome | Lost | None


@dataclass
class Round:
    """One prepare/accept round of an operation, fed the voters' answers.

    An operation runs rounds until one ends in an :data:`Outcome` (or its time is up); between
    rounds it keeps ``attempts``, the records of its own that it asked voters to accept, which
    decide what a later round may conclude (see :meth:`_recovering`)."""

    op: Op
    ballot: Ballot
    quorum: int
    voters: int
    now_ns: int
    origin: str
    clock_ns: int
    attempts: list[Record] = field(default_factory=list)
    phase: str = "prepare"
    promises: dict[str, Promise] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    refused: dict[str, Ballot] = field(default_factory=dict)
    proposed: Record | None = None
    identity: bool = False
    confirms: Record | None = None
    """Set when this round re-accepts a state built on an attempt of ours: that attempt."""

    def start_cached(self, current: Record | None) -> Action:
        """The one-round-trip path: this proposer's last round on the key was accepted by a
        quorum under the ballot before this round's (:func:`next_ballot`), so a quorum promised
        this ballot with ``current`` as the highest accepted record; go straight to accept.
        None when the condition does not hold on ``current`` (it may be stale: another proposer
        may have written since; only a round with a prepare can report a conflict)."""
        op = self.op
        if op.cond in (READ, REFRESH) or not condition_holds(op.cond, current, self.now_ns):
            return None
        return self._accept(next_record(op, current, self.ballot, self.origin, self.clock_ns), identity=False)

    def on_promise(self, voter: str, promise: Promise) -> Action:
        """A voter answered the prepare (the first answer of each voter counts)."""
        if self.phase != "prepare" or voter in self.promises or voter in self.refused:
            return None
        if not promise.ok:
            self.refused[voter] = promise.promised
            return self._lost_if_hopeless()
        self.promises[voter] = promise
        if len(self.promises) < self.quorum:
            return None
        return self._decide()

    def on_accepted(self, voter: str, ok: bool, promised: Ballot) -> Action:
        """A voter answered the accept."""
        if self.phase != "accept" or voter in self.accepted or voter in self.refused:
            return None
        if not ok:
            self.refused[voter] = promised
            return self._lost_if_hopeless()
        self.accepted.add(voter)
        if len(self.accepted) < self.quorum:
            return None
        self.phase = "done"
        record = self.proposed
        assert record is not None or self.identity
        if self.confirms is not None and record is not None:
            return Committed(self.confirms, record)
        if self.identity:
            if self.op.cond in (READ, REFRESH):
                return Read(record, True)
            return Conflict(record, True)
        assert record is not None
        return Committed(record)

    def _lost_if_hopeless(self) -> Action:
        answered = self.accepted if self.phase == "accept" else self.promises
        if self.voters - len(self.refused) >= self.quorum or len(answered) >= self.quorum:
            return None
        self.phase = "done"
        return Lost(max(b.counter for b in self.refused.values()))

    def _decide(self) -> Action:
        """A quorum promised: find the current state and decide what to accept."""
        best = max(self.promises.values(), key=lambda p: (p.accepted, _record_order(p.record)))
        current = best.record
        agreed = all(p.accepted == best.accepted and p.record == current for p in self.promises.values())
        if self.attempts:
            return self._recovering(current)
        op = self.op
        if op.cond in (READ, REFRESH) or not condition_holds(op.cond, current, self.now_ns):
            if agreed and op.cond != REFRESH:
                # a quorum accepted this very ballot's record: it is chosen, nothing to write
                self.phase = "done"
                return Read(current, False) if op.cond == READ else Conflict(current, False)
            return self._accept(current, identity=True)
        return self._accept(next_record(op, current, self.ballot, self.origin, self.clock_ns), identity=False)

    def _recovering(self, current: Record | None) -> Action:
        """A later round of an operation whose earlier accept may have been chosen.

        Timestamps of a key's chosen records rise, so the state found tells: our own record ->
        accept it again (it is then chosen, the operation succeeded); a record built on ours (its
        lineage names ours: other proposers found ours and wrote over it) -> accept that one
        again, which makes it, and so ours before it, part of the key's history: succeeded; an
        older one, or one whose lineage goes back to the state ours was built on without passing
        through ours -> ours was not chosen,
        and accepting anything under this (higher) ballot fences it for good, so the operation is
        decided afresh on that state; any other newer one -> ours may have been chosen and
        written over since: unknowable. Never the "already
        chosen" shortcut here: an attempt of ours under a ballot above the one found could still
        be picked up later unless this round's accept goes through."""
        if current is not None:
            ancestors = _ancestors(current)
            for attempt in self.attempts:
                if current.ts == attempt.ts and current.origin == attempt.origin:
                    return self._accept(current, identity=False)
                if mark(attempt.ts, attempt.origin) in ancestors:
                    self.confirms = attempt
                    return self._accept(current, identity=True)
            if not all(_not_chosen(attempt, current, ancestors) for attempt in self.attempts):
                self.phase = "done"
                return Unconfirmed()
        op = self.op
        if condition_holds(op.cond, current, self.now_ns):
            return self._accept(next_record(op, current, self.ballot, self.origin, self.clock_ns), identity=False)
        return self._accept(current, identity=True)

    def _accept(self, record: Record | None, *, identity: bool) -> SendAccept:
        self.phase = "accept"
        self.proposed = record
        self.identity = identity
        if not identity:
            assert record is not None
            if record not in self.attempts:
                self.attempts.append(record)
        return SendAccept(record)


def _not_chosen(attempt: Record, current: Record, ancestors: set[bytes]) -> bool:
    """Whether ``attempt`` cannot have been chosen, given that a quorum's highest accepted state
    is ``current`` (neither ``attempt`` nor built on it). Had it been chosen, every record
    accepted since would descend from it, with a timestamp above its own: so an older state, or
    one descending from ``attempt``'s own parent by another branch, proves it was not (yet: the
    round's accept under a higher ballot then fences it for good)."""
    return current.ts < attempt.ts or attempt.lineage[: _MARK.size] in ancestors


def _record_order(record: Record | None) -> tuple[int, str]:
    """Among answers with the same ballot (committed rows offered under ZERO), the newest."""
    return (-1, "") if record is None else (record.ts, record.origin)
