"""The linearizable operations of SPEC 13, as the facades offer them: arguments, codec, outcomes.

``put(..., if_absent= | if_version= | consistent=)``, ``delete(..., if_version= | consistent=)``,
``get``/``lookup(..., consistent=True)``, ``update(key, fn)`` and ``lock(key)`` all come down to
one primitive, an :class:`ekv._core.paxos.Op` (a key, a condition, a new value or none) run by
an :class:`Engine` (:mod:`ekv._node.consensus`: one transaction where this directory is the only
voter, CASPaxos among the voters otherwise). This module turns the caller's arguments into an op
and the engine's outcome into a return value or one of the errors of SPEC 13; it is written once
for both facades (AsyncEKV runs the same calls in its thread pool).

``update`` and ``lock`` are loops over the primitive, so that no callable ever crosses a process
or a node: ``update`` reads the local committed value, applies ``fn`` and writes it back under
``if_version`` (a conflict hands back the current value, and ``fn`` runs again on it); ``lock``
is ``if_absent`` with a ttl, its fencing token the version's timestamp of the acquiring write
(timestamps of a consistent key's chosen records rise forever, see :mod:`ekv._core.paxos`).
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ekv._core.durations import NS_PER_S, duration_ns
from ekv._core.keys import check_key
from ekv._core.paxos import ABSENT, ANY, READ, Committed, Conflict, NoQuorum, Op, Outcome, Read, Record
from ekv._errors import (
    ConfigError,
    ConflictError,
    ConsistentKeyError,
    InvalidArgument,
    InvalidArgumentType,
    LockError,
    NoQuorumError,
    UnconfirmedError,
)
from ekv._model import Version

if TYPE_CHECKING:
    from ekv._values import Values

__all__ = ["Engine", "Linear", "Lock"]


class Engine(Protocol):
    """Runs one op to its outcome (:class:`ekv._node.consensus.Consensus`)."""

    def run(self, op: Op, timeout_ns: int) -> Outcome:
        """Run ``op``, giving up after ``timeout_ns`` (NoQuorum, or Unconfirmed once an accept
        of it went out)."""


class Linear:
    """The linearizable operations of one store (thread-safe)."""

    def __init__(self, values: Values, engine: Engine | None, prefixes: tuple[str, ...], timeout_ns: int) -> None:
        self.values = values
        self.engine = engine
        self.prefixes = prefixes
        self.timeout_ns = timeout_ns

    # -- the primitive ---------------------------------------------------------------------------

    def _run(self, op: Op, timeout: object) -> Outcome:
        if not (self.prefixes and op.key.startswith(self.prefixes)):
            raise ConsistentKeyError(
                f"key {op.key!r:.80} is not under consistent_prefixes {list(self.prefixes)!r}: linearizable "
                "operations (if_absent, if_version, consistent, update, lock) are only for the keys of the "
                "prefixes declared with the consistent_prefixes option"
            )
        engine = self.engine
        if engine is None:
            raise ConfigError(
                "linearizable operations on a clustered node need cluster_size: pass cluster_size=N (the number "
                "of voting members, the same on every member)"
            )
        timeout_ns = self.timeout_ns if timeout is None else duration_ns(timeout, "timeout")
        outcome = engine.run(op, timeout_ns)
        if isinstance(outcome, Committed | Read):
            return outcome
        if isinstance(outcome, Conflict):
            current = self._current(op.key, outcome.record)
            raise ConflictError(_conflict_message(op, current), current)
        if isinstance(outcome, NoQuorum):
            raise NoQuorumError(
                f"no quorum of voters answered within {timeout_ns / NS_PER_S:g} s for key {op.key!r:.80}; "
                "nothing was applied"
            )
        raise UnconfirmedError(
            f"the operation on key {op.key!r:.80} may or may not have been applied (its accept went out and no "
            "quorum confirmed it in time); a consistent read tells"
        )

    def _current(self, key: str, record: Record | None) -> tuple[Any, Version] | None:
        if record is None or not record.live(self.values._now()):
            return None
        assert record.value is not None
        return self.values.decode(record.value, key), Version(record.ts, record.origin)

    # -- the operations ----------------------------------------------------------------------------

    def put(
        self, key: str, value: Any, ttl: object, if_absent: bool, if_version: object, consistent: bool, timeout: object
    ) -> Version:
        """``put`` with one of ``if_absent``, ``if_version``, ``consistent``."""
        cond = _condition(if_absent, if_version, consistent, "put")
        check_key(key)
        expires_at = None if ttl is None else self.values._now() + duration_ns(ttl, "ttl")
        outcome = self._run(Op(key, cond, self.values.encode(key, value), expires_at), timeout)
        assert isinstance(outcome, Committed)
        return Version(outcome.record.ts, outcome.record.origin)

    def delete(self, key: str, if_version: object, consistent: bool, timeout: object) -> Version:
        """``delete`` with ``if_version`` or ``consistent``."""
        cond = _condition(False, if_version, consistent, "delete")
        check_key(key)
        outcome = self._run(Op(key, cond, None, None), timeout)
        assert isinstance(outcome, Committed)
        return Version(outcome.record.ts, outcome.record.origin)

    def lookup(self, key: str, timeout: object) -> tuple[Any, Version] | None:
        """A linearizable read: ``(value, version)`` or None."""
        check_key(key)
        outcome = self._run(Op(key, READ, None, None), timeout)
        assert isinstance(outcome, Read)
        return self._current(key, outcome.record)

    def update(
        self, key: str, fn: Callable[[Any], Any], ttl: object, retries: int, timeout: object
    ) -> tuple[Any, Version]:
        """Apply ``fn`` to the current value (None if absent) and write the result, retrying on
        conflicts (up to ``retries`` times) with the value the conflict reports."""
        if not callable(fn):
            raise InvalidArgumentType(f"update needs a function of the current value, not {type(fn).__name__}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidArgument(f"retries must be an int >= 0, got {retries!r}")
        check_key(key)
        current = self.values.lookup(key)
        for attempt in range(retries + 1):
            new = fn(None if current is None else current[0])
            try:
                if current is None:
                    version = self.put(key, new, ttl, True, None, False, timeout)
                else:
                    version = self.put(key, new, ttl, False, current[1], False, timeout)
                return new, version
            except ConflictError as exc:
                if attempt == retries:
                    raise
                current = exc.current  # type: ignore[assignment]
                if attempt:  # the first retry at once, with the value that won; then out of step
                    time.sleep(random.uniform(0, min(0.02, 0.0005 * 2**attempt)))
                    current = self.values.lookup(key)  # what won while we slept
        raise AssertionError("unreachable")

    def lock(self, key: str, ttl: object, timeout: object) -> Lock:
        """Acquire the lock ``key`` (see :class:`Lock`)."""
        check_key(key)
        ttl_ns = duration_ns(ttl, "ttl")
        wait_ns = self.timeout_ns if timeout is None else duration_ns(timeout, "timeout")
        owner = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        deadline = time.monotonic_ns() + wait_ns
        pause = 0.002
        no_quorum: NoQuorumError | None = None
        while True:
            left = max(deadline - time.monotonic_ns(), 1_000_000)
            try:
                version = self.put(key, owner, ttl_ns / NS_PER_S, True, None, False, left / NS_PER_S)
                return Lock(self, key, owner, version, ttl_ns)
            except UnconfirmedError:
                pass  # it may be ours: the next attempt's conflict says
            except NoQuorumError as exc:
                no_quorum = exc  # not held by another: the voters did not answer
            except ConflictError as exc:
                no_quorum = None
                current = exc.current
                if current is not None and current[0] == owner and isinstance(current[1], Version):
                    return Lock(self, key, owner, current[1], ttl_ns)
            if time.monotonic_ns() >= deadline:
                if no_quorum is not None:
                    raise no_quorum
                raise LockError(f"lock {key!r:.80} was not acquired within {wait_ns / NS_PER_S:g} s (held by another)")
            time.sleep(min(pause, max(deadline - time.monotonic_ns(), 0) / NS_PER_S))
            pause = min(pause * 2, 0.1)


class Lock:
    """A held lock (``with kv.lock(key, ttl=30) as lock:``), released on exit.

    ``token`` is the fencing token: an int that strictly increases with every acquisition of
    this key, across the cluster and forever; pass it to what the lock protects and have it
    refuse smaller tokens than it has seen. The lock is the key's value until ``ttl`` runs out or
    it is released; :meth:`renew` extends it (keeping the token)."""

    def __init__(self, linear: Linear, key: str, owner: dict[str, Any], version: Version, ttl_ns: int) -> None:
        self._linear = linear
        self.key = key
        self.owner = owner
        self.version = version
        """The version of the lock's current write (it changes with each renewal)."""
        self.token = version.timestamp_ns
        self.ttl_ns = ttl_ns
        self.released = False

    def renew(self, ttl: object = None) -> None:
        """Extend the lock by ``ttl`` seconds from now (default: the ttl it was taken with).
        :class:`~ekv.LockError` if it was lost (it expired and another took it, or it was
        released)."""
        ttl_ns = self.ttl_ns if ttl is None else duration_ns(ttl, "ttl")
        if self.released:
            raise LockError(f"lock {self.key!r:.80} was released")
        try:
            self.version = self._linear.put(self.key, self.owner, ttl_ns / NS_PER_S, False, self.version, False, None)
        except ConflictError:
            raise LockError(f"lock {self.key!r:.80} was lost: its ttl ran out and it was taken or cleared") from None

    def release(self) -> bool:
        """Release the lock; False if it had already been lost (nothing to release)."""
        if self.released:
            return False
        self.released = True
        try:
            self._linear.delete(self.key, self.version, False, None)
        except ConflictError:
            return False
        return True

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<ekv.Lock {self.key!r} token={self.token} ({state})>"


def _condition(if_absent: bool, if_version: object, consistent: bool, what: str) -> str | int:
    given = [
        name
        for name, on in (("if_absent", if_absent), ("if_version", if_version is not None), ("consistent", consistent))
        if on
    ]
    if len(given) > 1:
        raise InvalidArgument(f"{what} takes one of if_absent, if_version and consistent, not {' and '.join(given)}")
    if if_absent:
        return ABSENT
    if if_version is not None:
        if isinstance(if_version, Version):
            return if_version.timestamp_ns
        if isinstance(if_version, tuple) and len(if_version) == 2 and isinstance(if_version[0], int):
            return int(if_version[0])
        if isinstance(if_version, int) and not isinstance(if_version, bool):
            return if_version
        raise InvalidArgumentType(f"if_version must be an ekv.Version (from lookup or a write), not {if_version!r:.80}")
    return ANY


def _conflict_message(op: Op, current: tuple[Any, Version] | None) -> str:
    found = "absent" if current is None else f"at version {current[1].timestamp_ns}"
    if op.cond == ABSENT:
        return f"key {op.key!r:.80} exists ({found}); if_absent: nothing was written"
    return f"key {op.key!r:.80} is {found}, not at version {op.cond}: nothing was written"
