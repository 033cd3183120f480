"""Linearizable operations among the voters (SPEC 13): this node as proposer, acceptor and, for
observers, the forwarding of operations to a voter. Runs on the network loop thread.

The rules are :mod:`ekv._core.paxos`; this module only carries them out: it numbers requests,
sends Prepare and Accept to the connected voters (those whose Hello says ``role="voter"`` and
that speak the ``"paxos"`` feature) and feeds their answers to the operation's
:class:`~ekv._core.paxos.Round`, with this node's own acceptor answering first, durably, through
the :class:`AcceptorPort` (the store's :class:`ekv._storage.acceptor.Acceptor`). A chosen record
is committed into this node's store as an ordinary local version, so it replicates, fires events
and obeys TTL like any other write; the other voters need no commit message.

Acceptor steps are SQLite transactions run on the loop thread, as remote applies are (see
docs/architecture.md, "Which thread runs remote applies"). The steps queued during one turn of the
loop (members' Prepares and Accepts, this node's own) run together, one transaction per shard
(:meth:`_acceptor_step`): under concurrent operations a voter pays one commit for many answers.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ekv._cluster import wire
from ekv._cluster.messages import Accept, Accepted, Message, Outcome, Prepare, Promise, Propose, Retired
from ekv._cluster.session import Session
from ekv._cluster.wire import PAXOS_FEATURE
from ekv._cluster.wire_paxos import outcome_message, result_of
from ekv._core.durations import NS_PER_S
from ekv._core.paxos import (
    Ballot,
    Committed,
    Conflict,
    Lost,
    NoQuorum,
    Op,
    Read,
    Record,
    Round,
    SendAccept,
    Step,
    Unconfirmed,
    next_ballot,
    quorum_of,
)
from ekv._core.paxos import Outcome as Result
from ekv._core.paxos import Promise as PaxosPromise
from ekv._model import Version

__all__ = ["AcceptorPort", "Consensus"]

_CACHE_KEYS = 4096
"""Keys whose one-round-trip state a node keeps (a few hundred bytes each)."""


class _FullRound:
    """The cached (one-round-trip) path does not apply: run a round with a prepare."""


_FULL_ROUND = _FullRound()


class AcceptorPort(Protocol):
    """This node's acceptor and commit (the store's, or a test's in memory)."""

    def prepare(self, key: str, ballot: Ballot) -> PaxosPromise: ...

    def accept(self, key: str, ballot: Ballot, record: Record | None) -> tuple[bool, Ballot]: ...

    def commit_chosen(self, key: str, record: Record) -> Version | None: ...

    def steps(self, steps: Sequence[Step]) -> list[Any]: ...

    def retired_voters(self) -> set[str]: ...

    def retire_voter(self, node_id: str, at_ns: int) -> None: ...


class _Pending:
    __slots__ = ("future", "key", "round")

    def __init__(self, rnd: Round, key: str, future: asyncio.Future[Any]) -> None:
        self.round = rnd
        self.key = key
        self.future = future


class Consensus:
    """Proposer, acceptor service and observer forwarding of one cluster node (loop thread)."""

    def __init__(
        self,
        acceptor: AcceptorPort,
        *,
        cluster_size: int | None,
        role: str,
        sessions: dict[str, Session],
        node_id: Callable[[], str],
        origin: Callable[[], str],
        tick: Callable[[], int],
        wall: Callable[[], int],
        log: Any,
        rng: random.Random,
    ) -> None:
        self.acceptor = acceptor
        self.cluster_size = cluster_size
        self.voter = role == "voter"
        self.sessions = sessions
        self._node_id = node_id
        self._origin = origin
        self._tick = tick
        self._wall = wall
        self.log = log
        self._rng = rng
        self._requests = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._forwarded: dict[int, asyncio.Future[Outcome]] = {}
        self._keys: dict[str, list[Any]] = {}
        """key -> [lock, waiters]: this node's operations on a key run one after the other."""
        self._steps: list[tuple[Step, Callable[[Any], None]]] = []
        """Acceptor steps queued this turn of the loop, with what to do with each result
        (:meth:`_acceptor_step`)."""
        self._outgoing: dict[Session, list[bytes]] = {}
        """Frames queued this turn of the loop, per session (:meth:`_send`)."""
        self._cache: dict[str, tuple[Ballot, Record | None]] = {}
        """key -> (the ballot a quorum promised us, the state we had chosen): the one-round-trip
        path of the key's next operation (insertion-ordered: the oldest go first)."""
        self._reserved = 0
        """The highest ballot counter promised to a cached entry: fresh ballots go above it."""
        self.stats: dict[str, int] = {"committed": 0, "read": 0, "conflict": 0, "unconfirmed": 0, "no_quorum": 0}
        self.stats.update(rounds=0, rounds_one_trip=0, lost=0, prepared=0, accepted=0, refused=0)
        self.recent: list[tuple[int, str, str]] = []
        """The last outcomes: (wall ns, key, kind), for info()."""
        self.retired: set[str] = acceptor.retired_voters()
        """Voters replaced with the documented procedure: refused for good (and told to members)."""

    # -- who votes ----------------------------------------------------------------------------------

    def voter_sessions(self) -> list[Session]:
        return [
            s
            for s in self.sessions.values()
            if not s.closed and s.hello.role == "voter" and PAXOS_FEATURE in s.features
        ]

    def refuses(self, session: Session) -> str | None:
        """Why a new member must be refused: a replaced voter, or a voter that makes more
        distinct voters than ``cluster_size`` (None: admit it)."""
        if session.peer_id in self.retired:
            return f"node {session.peer_id} was replaced as a voter (ekv replace-voter); it may not rejoin"
        size = self.cluster_size
        if size is None or session.hello.role != "voter":
            return None
        voters = {s.peer_id for s in self.voter_sessions()} | {session.peer_id}
        if self.voter:
            voters.add(self._node_id())
        if len(voters) > size:
            return (
                f"voter {session.peer_id} would make {len(voters)} distinct voters, more than cluster_size={size}; "
                "replace a voter with the documented procedure (docs/operators.md) or start it as an observer"
            )
        return None

    def learn_retired(self, node_ids: tuple[str, ...]) -> None:
        """A member told us of replaced voters: remember them too (durably), refuse them."""
        for node_id in node_ids:
            if node_id not in self.retired and node_id != self._node_id():
                self.retire(node_id)

    def retire(self, node_id: str) -> None:
        """Refuse ``node_id`` as a member from now on, durably, and drop its session (loop thread)."""
        self.acceptor.retire_voter(node_id, self._wall())
        self.retired.add(node_id)
        session = self.sessions.get(node_id)
        if session is not None:
            session.close(f"node {node_id} was replaced as a voter")
        for other in list(self.sessions.values()):
            if PAXOS_FEATURE in other.features and not other.closed:
                other.send(Retired(tuple(sorted(self.retired))))
        self.log.warning("voter %s is retired: it will be refused from now on", node_id)

    # -- proposing ----------------------------------------------------------------------------------

    async def run(self, op: Op, timeout_ns: int) -> Result:
        """Run ``op`` to its outcome within ``timeout_ns``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ns / NS_PER_S
        if not self.voter:
            result = await self._forward(op, deadline)
        else:
            # One round per key at a time from this node: its own proposals would only refuse
            # each other's ballots (and turn each other's accepts into unconfirmed outcomes).
            queue = self._keys.get(op.key)
            if queue is None:
                queue = self._keys[op.key] = [asyncio.Lock(), 0]
            queue[1] += 1
            try:
                async with queue[0]:
                    result = await self._run_rounds(op, deadline) if loop.time() < deadline else NoQuorum()
            finally:
                queue[1] -= 1
                if not queue[1]:
                    del self._keys[op.key]
        self._count(op.key, result)
        return result

    async def _run_rounds(self, op: Op, deadline: float) -> Result:
        loop = asyncio.get_running_loop()
        size = self.cluster_size
        assert size is not None
        attempts: list[Record] = []
        above = 0
        lost = 0
        cached = self._cache.pop(op.key, None)
        while True:
            # Nothing is sent while fewer than a quorum of voters are connected: a plain NoQuorum
            # then, rather than an accept that may linger (and an Unconfirmed).
            while len(self.voter_sessions()) + 1 < quorum_of(size):
                if loop.time() + 0.001 >= deadline:
                    return Unconfirmed() if attempts else NoQuorum()
                await asyncio.sleep(min(0.02, deadline - loop.time()))
            if cached is not None:
                ballot, current = cached
            else:
                ballot = Ballot(max(self._tick(), above + 1, self._reserved + 1), self._origin())
            now = self._wall()
            rnd = Round(op, ballot, quorum_of(size), size, now, self._origin(), max(ballot.counter, now), attempts)
            action = await self._round(rnd, deadline, cached=None if cached is None else (current,))
            cached = None
            if isinstance(action, _FullRound):
                continue
            if isinstance(action, Lost):
                above = max(above, action.above)
                lost += 1
                self.stats["lost"] += 1
                # Duelling proposers fall out of step; but one whose accept went out looks again at
                # once, before the key moves on past what its record's lineage can tell.
                cap = 0.001 if attempts else min(0.05, 0.001 * 2**lost)
                pause = self._rng.uniform(0, cap)
                if loop.time() + pause >= deadline:
                    return Unconfirmed() if attempts else NoQuorum()
                await asyncio.sleep(pause)
                continue
            if action is None:
                return Unconfirmed() if attempts else NoQuorum()
            if isinstance(action, Committed | Read | Conflict) and (isinstance(action, Committed) or action.commit):
                # accepted by a quorum under this ballot: the next change may skip its prepare
                chosen = action.latest or action.record if isinstance(action, Committed) else action.record
                self._cache[op.key] = (next_ballot(ballot), chosen)
                self._reserved = max(self._reserved, ballot.counter + 1)
                while len(self._cache) > _CACHE_KEYS:
                    del self._cache[next(iter(self._cache))]
            return self._finish(op.key, action)

    def _finish(self, key: str, result: Result) -> Result:
        record = getattr(result, "record", None)
        if isinstance(result, Committed) and result.latest is not None:
            record = result.latest
        chosen_here = isinstance(result, Committed) or (isinstance(result, Read | Conflict) and result.commit)
        if record is not None and chosen_here:
            # Now, with whatever steps are queued: the commit is on the caller's path (its
            # read-your-writes), a wait for the next turn of the loop is not.
            answers: list[Any] = []
            self._acceptor_step(Step("chosen", key, record=record), answers.append)
            self._run_steps()
            if isinstance(answers[0], Exception):  # chosen all the same: the next operation on the key commits it
                self.log.error("committing the chosen record of %r failed", key, exc_info=answers[0])
        return result

    async def _round(
        self, rnd: Round, deadline: float, cached: tuple[Record | None] | None = None
    ) -> Result | Lost | _FullRound | None:
        """One round; ``cached``: this node's last chosen state of the key, whose accept already
        promised this round's ballot (the one-round-trip path: no prepare). Returns the
        outcome, Lost, None (out of time) or ``_FULL_ROUND`` (the cached path does not apply)."""
        loop = asyncio.get_running_loop()
        request = next(self._requests)
        future: asyncio.Future[Any] = loop.create_future()
        pending = self._pending[request] = _Pending(rnd, rnd.op.key, future)
        try:
            if cached is not None:
                action = rnd.start_cached(cached[0])
                if action is None:
                    return _FULL_ROUND
                self.stats["rounds_one_trip"] += 1
                self._step(request, pending, action)
            else:
                self.stats["rounds"] += 1
                # the others first: their transactions run while this node's own does
                self._broadcast(Prepare(request, rnd.op.key, rnd.ballot))
                self._flush()
                self._acceptor_step(
                    Step("prepare", rnd.op.key, rnd.ballot),
                    lambda promise: self._local(request, pending, rnd.on_promise, promise),
                )
            try:
                return await asyncio.wait_for(future, max(deadline - loop.time(), 0))
            except TimeoutError:
                return None
        finally:
            del self._pending[request]

    def _step(self, request: int, pending: _Pending, action: Any) -> None:
        """Carry out what the round decided."""
        if isinstance(action, SendAccept):
            rnd = pending.round
            self._broadcast(Accept(request, pending.key, rnd.ballot, action.record))
            self._flush()  # out before this node's own accept: the transactions overlap
            self._acceptor_step(
                Step("accept", pending.key, rnd.ballot, action.record),
                lambda answer: self._local(request, pending, lambda node, a: rnd.on_accepted(node, *a), answer),
            )
        elif action is not None and not pending.future.done():
            pending.future.set_result(action)

    def _local(self, request: int, pending: _Pending, feed: Callable[[str, Any], Any], answer: Any) -> None:
        """This node's own acceptor answered a step of round ``request``: feed the answer to the
        round (if it is still running); an error ends the operation with that error, as it did
        when the step ran inline."""
        if self._pending.get(request) is not pending or pending.future.done():
            return
        if isinstance(answer, Exception):
            pending.future.set_exception(answer)
            return
        self._step(request, pending, feed(self._node_id(), answer))

    def _acceptor_step(self, step: Step, then: Callable[[Any], None]) -> None:
        """Queue ``step`` for this node's acceptor; ``then(result or exception)`` runs once the
        step is durable. Every step queued during one turn of the loop (several members'
        Prepares and Accepts, this node's own) runs in one transaction per shard
        (:meth:`ekv._storage.acceptor.Acceptor.steps`)."""
        if not self._steps:
            asyncio.get_running_loop().call_soon(self._run_steps)
        self._steps.append((step, then))

    def _run_steps(self) -> None:
        batch, self._steps = self._steps, []
        if not batch:
            return
        try:
            results = self.acceptor.steps([step for step, _ in batch])
        except Exception as exc:  # the port itself failed: every step failed
            results = [exc] * len(batch)
        for (_, then), result in zip(batch, results, strict=True):
            try:
                then(result)
            except Exception:
                self.log.error("handling the acceptor's answer failed", exc_info=True)
        self._flush()

    def _broadcast(self, message: Message) -> None:
        frame = wire.encode(message)  # once for every voter
        for session in self.voter_sessions():
            self._send(session, frame)

    def _send(self, session: Session, frame: bytes) -> None:
        """Queue ``frame`` for ``session``; every frame queued during one turn of the loop goes
        out in one write per session (a burst of answers costs one system call, not one each)."""
        queued = self._outgoing.get(session)
        if queued is None:
            queued = self._outgoing[session] = []
            if len(self._outgoing) == 1:
                asyncio.get_running_loop().call_soon(self._flush)
        queued.append(frame)

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, {}
        for session, frames in outgoing.items():
            session.send_frame(frames[0] if len(frames) == 1 else b"".join(frames))

    # -- forwarding (observers) ----------------------------------------------------------------------

    async def _forward(self, op: Op, deadline: float) -> Result:
        """An observer hands ``op`` to a voter and commits what was chosen here too, so that its
        own reads see it at once."""
        loop = asyncio.get_running_loop()
        while not self.voter_sessions():
            if loop.time() >= deadline:
                return NoQuorum()
            await asyncio.sleep(0.05)
        session = self._rng.choice(self.voter_sessions())
        request = next(self._requests)
        future: asyncio.Future[Outcome] = loop.create_future()
        self._forwarded[request] = future
        timeout_ms = max(int((deadline - loop.time()) * 1000), 1)
        session.send(Propose(request, op, timeout_ms))
        try:
            answer = await asyncio.wait_for(future, max(deadline - loop.time(), 0) + 1.0)
        except TimeoutError:
            return Unconfirmed()
        finally:
            self._forwarded.pop(request, None)
        return self._finish(op.key, result_of(answer))

    # -- messages ------------------------------------------------------------------------------------

    def on_message(self, session: Session, message: Message) -> None:
        """A linearizable-operation message from a member (loop thread)."""
        peer = session.peer_id
        if isinstance(message, Promise | Accepted):
            pending = self._pending.get(message.request)
            if pending is None or session.hello.role != "voter":
                return  # a late answer, or a stranger's
            rnd = pending.round
            if isinstance(message, Promise):
                action = rnd.on_promise(peer, message.promise)
            else:
                action = rnd.on_accepted(peer, message.ok, message.promised)
            self._step(message.request, pending, action)
        elif isinstance(message, Prepare | Accept):
            if self.voter:
                self._answer(session, message)
        elif isinstance(message, Propose):
            if self.voter:
                asyncio.get_running_loop().create_task(self._serve(session, message))
        elif isinstance(message, Outcome):
            future = self._forwarded.get(message.request)
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, Retired):
            self.learn_retired(message.node_ids)

    def _answer(self, session: Session, message: Prepare | Accept) -> None:
        if isinstance(message, Prepare):
            step = Step("prepare", message.key, message.ballot)
        else:
            step = Step("accept", message.key, message.ballot, message.record)
        self._acceptor_step(step, lambda answer: self._answered(session, message, answer))

    def _answered(self, session: Session, message: Prepare | Accept, answer: Any) -> None:
        if isinstance(answer, Exception):  # no answer: to the proposer this voter is down for the key
            self.log.error("the acceptor step for %r failed", message.key, exc_info=answer)
            return
        if isinstance(message, Prepare):
            self.stats["prepared" if answer.ok else "refused"] += 1
            reply: Message = Promise(message.request, answer)
        else:
            ok, promised = answer
            self.stats["accepted" if ok else "refused"] += 1
            reply = Accepted(message.request, ok, promised)
        if not session.closed:
            self._send(session, wire.encode(reply))

    async def _serve(self, session: Session, message: Propose) -> None:
        result = await self.run(message.op, message.timeout_ms * 1_000_000)
        if not session.closed:
            session.send(outcome_message(message.request, result))

    def _count(self, key: str, result: Result) -> None:
        kind = outcome_message(0, result).kind
        self.stats[kind] += 1
        self.recent.append((self._wall(), key, kind))
        del self.recent[:-20]

    def info(self) -> dict[str, Any]:
        """The consensus part of ``info()``: voters, quorum, counters, recent outcomes."""
        voters = sorted({s.peer_id for s in self.voter_sessions()} | ({self._node_id()} if self.voter else set()))
        size = self.cluster_size
        return {
            "role": "voter" if self.voter else "observer",
            "cluster_size": size,
            "quorum": None if size is None else quorum_of(size),
            "voters_connected": voters,
            "has_quorum": size is not None and len(voters) >= quorum_of(size),
            "retired_voters": sorted(self.retired),
            "operations": dict(self.stats),
            "recent": [{"at_ns": at, "key": key, "outcome": kind} for at, key, kind in self.recent],
        }
