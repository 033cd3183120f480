"""Consistent keys on one shard file: a voter's acceptor steps, a single voter's operations, and
the garbage collection of acceptor rows (SPEC 13; the rules are :mod:`ekv._core.paxos`).

Every function here runs inside :meth:`ekv._storage.shard.Shard.transact`: one ``BEGIN
IMMEDIATE`` transaction on the shard's writer, so a step's read and write are atomic across
threads and processes, and its row is durable (as ``durability`` says) before the caller
replies to anyone.

Where a chosen record goes: into ``kv``, as a local version of the process that commits it, with
the record's timestamp (:func:`write_chosen`). So its change-log row is appended under the committing
process's own origin and sequence (who appended it), while the timestamp says which chosen record
it is: the two are never confused (the Elixir original's replay bug came from recording a
re-proposed value's log row under the value's origin). Two processes that commit the same chosen
record write two versions with one timestamp and one value; last-writer-wins keeps one of them,
and conditions compare timestamps only.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import apsw

from ekv._core.clock import HybridClock
from ekv._core.keys import check_key, shard_of
from ekv._core.paxos import (
    READ,
    ZERO,
    Ballot,
    Committed,
    Conflict,
    Op,
    Promise,
    Read,
    Record,
    Step,
    accept_granted,
    condition_holds,
    next_ballot,
    next_record,
    prepare_granted,
)
from ekv._errors import CorruptionError
from ekv._model import Version
from ekv._storage import schema
from ekv._storage.commit import LocalWrite
from ekv._storage.integrity import damaged_error, row_ok
from ekv._storage.sync import load_markers, set_marker

if TYPE_CHECKING:
    from ekv._storage.shard import Shard
    from ekv._storage.store import ShardedStore

__all__ = ["Acceptor", "AcceptorRow", "accept", "collect", "committed", "load", "prepare", "single"]


class AcceptorRow(NamedTuple):
    """A key's acceptor state; ``exists`` False: no row (never prepared here, or collected)."""

    promised: Ballot
    accepted: Ballot
    record: Record | None
    exists: bool


_NONE = AcceptorRow(ZERO, ZERO, None, False)
_RETIRED = "retired_voter/"


def _crc(key: str, fields: tuple[Any, ...]) -> int:
    value, lineage = fields[8], fields[9]
    crc = zlib.crc32("\x00".join(map(str, (key, *fields[:8]))).encode())
    crc = zlib.crc32(value, crc) if value is not None else crc
    return zlib.crc32(lineage, crc) if lineage is not None else crc


def load(cur: apsw.Cursor, key: str, path: str) -> AcceptorRow:
    """The acceptor state of ``key``; :class:`~ekv.CorruptionError` if its row fails its checksum
    (the voter then answers nothing for the key, like a voter that is down)."""
    row = cur.execute(schema.PAXOS_GET, (key,)).get
    if row is None:
        return _NONE
    *fields, crc = row
    if crc != _crc(key, tuple(fields)):
        raise CorruptionError(f"the acceptor row of key {key!r:.80} in {path} failed its checksum")
    promised, promised_by, accepted, accepted_by, has_record, ts, origin, expires_at, value, lineage = fields
    record = Record(ts, origin, expires_at, value, lineage) if has_record else None
    return AcceptorRow(Ballot(promised, promised_by), Ballot(accepted, accepted_by), record, True)


def _store(cur: apsw.Cursor, key: str, promised: Ballot, accepted: Ballot, record: Record | None) -> None:
    if record is None:
        fields: tuple[Any, ...] = (*promised, *accepted, 0, None, None, None, None, None)
    else:
        fields = (*promised, *accepted, 1, *record)
    cur.execute(schema.PAXOS_PUT, (key, *fields, _crc(key, fields)))


def _floor(cur: apsw.Cursor) -> int:
    value = cur.execute(schema.META_GET, ("paxos_floor",)).get
    return int(value) if value is not None else 0


def committed(cur: apsw.Cursor, key: str, damaged: Any, path: str) -> Record | None:
    """The key's committed row in ``kv`` as a record (None: no row). A damaged row raises
    :class:`~ekv.ChecksumError`: the voter cannot vouch for the key until it is repaired."""
    row = cur.execute(schema.ROW, (key,)).get
    if row is None:
        return None
    if key in damaged or not row_ok(row):
        raise damaged_error(key, path)
    _, ts, origin, _, expires_at, value, _ = row
    return Record(ts, origin, expires_at, value)


def prepare(cur: apsw.Cursor, key: str, ballot: Ballot, damaged: Any, path: str) -> Promise:
    """Promise ``ballot`` (durably) unless a ballot as high was promised; answer with the record
    accepted here, or, if none, the committed row (offered under the ZERO ballot, so any record
    some voter accepted outranks it)."""
    row = load(cur, key, path)
    floor = 0 if row.exists else _floor(cur)  # the floor only speaks for keys without a row
    if not prepare_granted(row.promised, floor, row.exists, ballot):
        return Promise(False, max(row.promised, Ballot(floor, "")))
    _store(cur, key, ballot, row.accepted, row.record)
    if row.accepted == ZERO:
        return Promise(True, ballot, ZERO, committed(cur, key, damaged, path))
    return Promise(True, ballot, row.accepted, row.record)


def accept(cur: apsw.Cursor, key: str, ballot: Ballot, record: Record | None, path: str) -> tuple[bool, Ballot]:
    """Accept ``record`` under ``ballot`` (durably) unless a higher ballot was promised. The
    record stays invisible to reads: it reaches ``kv`` only once chosen (:func:`write_chosen`).

    Accepting also promises the ballot right after it, :func:`~ekv._core.paxos.next_ballot`: the
    proposer's next change of the key may then skip its prepare (the paper's one-round-trip
    path), and a prepare by anyone else, with any higher ballot, revokes that."""
    row = load(cur, key, path)
    floor = 0 if row.exists else _floor(cur)
    if not accept_granted(row.promised, floor, row.exists, ballot):
        return False, max(row.promised, Ballot(floor, ""))
    _store(cur, key, next_ballot(ballot), ballot, record)
    return True, ballot


def write_chosen(cur: apsw.Cursor, write: LocalWrite, clock: HybridClock, key: str, record: Record) -> Version | None:
    """Write a chosen record into ``kv`` as a local version with the record's timestamp, unless
    the row there is already as new (the same record committed by another process, or a later
    one). Returns the version written, or None."""
    stored = cur.execute(schema.VERSION_OF, (key,)).get
    if stored is not None and stored[0] >= record.ts:
        return None
    clock.observe(record.ts)
    return write(key, record.value, record.expires_at, record.ts)


def single(
    cur: apsw.Cursor, write: LocalWrite, clock: HybridClock, origin: str, op: Op, damaged: Any, path: str
) -> Committed | Read | Conflict:
    """A whole operation where this directory is the only voter (``cluster_size`` 1): prepare,
    accept and commit are one transaction, so no other process's operation comes between.
    The state is the acceptor row's accepted record if there is one (left by a larger cluster),
    else the committed row."""
    row = load(cur, op.key, path)
    current = row.record if row.accepted != ZERO else committed(cur, op.key, damaged, path)
    if op.cond == READ:
        return Read(current, False)
    now = clock.wall.now_ns()
    if not condition_holds(op.cond, current, now):
        return Conflict(current, False)
    ballot = Ballot(clock.tick(), origin)
    record = next_record(op, current, ballot, origin, ballot.counter)
    version = write_chosen(cur, write, clock, op.key, record)
    assert version is not None and version.timestamp_ns == record.ts
    if row.exists:
        _store(cur, op.key, ballot, ballot, record)
    return Committed(record)


def collect(cur: apsw.Cursor, cutoff_ns: int, now_ns: int, limit: int, path: str) -> int:
    """Drop acceptor rows whose key is gone for good: the accepted state is absent, a delete or
    an expired value, from before ``cutoff_ns`` (the tombstone cutoff), and ``kv`` holds that
    version or a newer one (or nothing: its tombstone was purged). First the shard's ballot floor
    rises above every ballot and timestamp the rows held, so a voter without the row refuses any
    proposer that prepared before the drop (see :mod:`ekv._core.paxos`). Returns rows dropped."""
    rows: list[Any] = cur.execute(schema.PAXOS_GC_BATCH, (now_ns, limit)).fetchall()
    floor = _floor(cur)
    dropped = []
    for key, *_ in rows:
        row = load(cur, key, path)
        record = row.record
        died = record.expires_at if record is not None and record.value is not None else None
        when = record.ts if record is not None and died is None else died
        if record is not None and (when is None or when >= cutoff_ns):
            continue
        if row.promised.counter >= cutoff_ns:
            continue  # an operation on the key may be in flight
        stored = cur.execute(schema.VERSION_OF, (key,)).get
        if record is not None and stored is not None and stored[0] < record.ts:
            continue  # not committed here yet
        floor = max(floor, row.promised.counter, row.accepted.counter, record.ts if record is not None else 0)
        dropped.append(key)
    if dropped:
        cur.execute(schema.META_SET, ("paxos_floor", floor))
        for key in dropped:
            cur.execute(schema.PAXOS_DELETE, (key,))
    return len(dropped)


def _step(cur: apsw.Cursor, write: LocalWrite, shard: Shard, step: Step) -> Any:
    if step.kind == "prepare":
        return prepare(cur, step.key, step.ballot, shard.damaged, shard.path)
    if step.kind == "accept":
        return accept(cur, step.key, step.ballot, step.record, shard.path)
    assert step.kind == "chosen" and step.record is not None, step
    return write_chosen(cur, write, shard.clock, step.key, step.record)


class Acceptor:
    """The consistent-key steps of one open store, routed to the shard that owns each key.
    Thread-safe (each step is an exclusive job of its shard's writer)."""

    def __init__(self, store: ShardedStore) -> None:
        self.store = store

    def _shard(self, key: str) -> Shard:
        store = self.store
        if store.closed or store.readonly:
            store._unusable()
        return store.shards[shard_of(check_key(key), len(store.shards))]

    def single(self, op: Op) -> Committed | Read | Conflict:
        """Run ``op`` where this directory is the only voter (:func:`single`)."""
        shard = self._shard(op.key)
        origin = self.store.origin
        return shard.transact(lambda cur, write: single(cur, write, shard.clock, origin, op, shard.damaged, shard.path))

    def prepare(self, key: str, ballot: Ballot) -> Promise:
        return self._one(Step("prepare", key, ballot))  # type: ignore[no-any-return]

    def accept(self, key: str, ballot: Ballot, record: Record | None) -> tuple[bool, Ballot]:
        return self._one(Step("accept", key, ballot, record))  # type: ignore[no-any-return]

    def commit_chosen(self, key: str, record: Record) -> Version | None:
        return self._one(Step("chosen", key, record=record))  # type: ignore[no-any-return]

    def _one(self, step: Step) -> Any:
        shard = self._shard(step.key)
        return shard.transact(lambda cur, write: _step(cur, write, shard, step))

    def steps(self, steps: Sequence[Step]) -> list[Any]:
        """Run ``steps`` in order, one transaction per shard for all of that shard's steps, and
        return each step's result (:meth:`prepare`'s, :meth:`accept`'s, :meth:`commit_chosen`'s)
        or the exception it raised, in the order given.

        Why: a voter that answers one turn of its loop's messages (and its own proposals' steps)
        in one ``BEGIN IMMEDIATE ... COMMIT`` per shard pays one commit, one WAL append of the
        shard's pages and one writer hand-off for them all, where each step alone pays its own;
        under concurrent operations that is most of an acceptor's work. Nothing is answered
        before the transaction commits, so each step is as durable as alone. If the shard's
        transaction fails, its steps run again one transaction each, so only the failing step
        reports the error (a damaged row fails its own key, not its neighbours')."""
        results: list[Any] = [None] * len(steps)
        by_shard: dict[Shard, list[int]] = {}
        for i, step in enumerate(steps):
            try:
                by_shard.setdefault(self._shard(step.key), []).append(i)
            except Exception as exc:
                results[i] = exc
        for shard, indexes in by_shard.items():

            def body(cur: apsw.Cursor, write: LocalWrite, shard: Shard = shard, at: list[int] = indexes) -> list[Any]:
                return [_step(cur, write, shard, steps[i]) for i in at]

            try:
                answers = shard.transact(body)
            except Exception as exc:
                # alone, each step reports its own error (one step: that was it)
                answers = [exc] if len(indexes) == 1 else [self._alone(steps[i]) for i in indexes]
            for i, answer in zip(indexes, answers, strict=True):
                results[i] = answer
        return results

    def _alone(self, step: Step) -> Any:
        try:
            return self._one(step)
        except Exception as exc:
            return exc

    def consistent_keys(self, prefixes: tuple[str, ...]) -> list[str]:
        """Every key under ``prefixes`` this node has a row or an acceptor row for (tombstones
        too): what a voter replacement re-reads."""
        keys: set[str] = set()
        for shard in self.store.shards:
            rows: list[Any] = shard.run_exclusive(lambda cur: cur.execute(schema.KV_AND_PAXOS_KEYS).fetchall())
            keys.update(key for (key,) in rows if key.startswith(prefixes))
        return sorted(keys)

    def retired_voters(self) -> set[str]:
        """Node ids of voters replaced with the documented procedure (kept in shard 0)."""
        shard = self.store.shards[0]
        return set(shard.run_exclusive(lambda cur: load_markers(cur, _RETIRED)))

    def retire_voter(self, node_id: str, at_ns: int) -> None:
        shard = self.store.shards[0]
        shard.run_exclusive(lambda cur: set_marker(cur, _RETIRED + node_id, at_ns))

    def counts(self) -> tuple[int, int]:
        """(acceptor rows, highest ballot counter promised) over every shard, for ``info()``."""
        rows = top = 0
        for shard in self.store.shards:
            count, high = shard.run_exclusive(lambda cur: cur.execute(schema.PAXOS_COUNT).get)
            rows, top = rows + count, max(top, high)
        return rows, top
