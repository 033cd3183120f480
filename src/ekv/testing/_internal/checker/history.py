"""The history format: what a harness records, how it is read and written, and its parsed,
validated form (operations paired and rows decoded) that the checks work on. The format itself
is documented once, in the package docstring (:mod:`ekv.testing._internal.checker`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

FUNCTIONS = ("put", "delete", "get")
TYPES = ("invoke", "ok", "fail", "info")
NS = 1_000_000_000
"""Harness times are in ns."""

JSON = Any
State = dict[str, list[JSON]]


class HistoryError(ValueError):
    """The history is malformed (a completion without an invoke, an ``ok`` write without a
    version, ...). The message names the record."""


class Version(NamedTuple):
    """``(timestamp_ns, origin)``, ordered as a tuple, like :class:`ekv.Version`."""

    timestamp_ns: int
    origin: str


# -- the history as recorded -----------------------------------------------------------------------


@dataclass
class History:
    """A recorded run, as written to and read from JSON lines. See the module docstring."""

    operations: list[dict[str, JSON]] = field(default_factory=list)
    """Operation records (invoke and completion) in the order they were recorded."""
    final: dict[str, State] = field(default_factory=dict)
    """node -> key -> ``[timestamp_ns, origin, value_or_null, ...]`` after the final heal."""
    nemesis: list[dict[str, JSON]] = field(default_factory=list)
    """``{"time", "action", "detail"}`` events."""
    restarts: list[dict[str, JSON]] = field(default_factory=list)
    """``{"node", "kill_time", "state"}``: a node's local state right after a restart."""
    converged_after_s: float | None = None
    meta: dict[str, JSON] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, JSON]]) -> History:
        """Build a history from JSON-lines records (each with an optional ``record`` kind)."""
        history = cls()
        for number, record in enumerate(records, 1):
            kind = record.get("record", "op")
            body = {k: v for k, v in record.items() if k != "record"}
            if kind == "op":
                history.operations.append(body)
            elif kind == "nemesis":
                history.nemesis.append(body)
            elif kind == "final":
                if not isinstance(body.get("state"), dict) or "node" not in body:
                    raise HistoryError(f"record {number}: a final record needs a node and a state object")
                if str(body["node"]) in history.final:
                    raise HistoryError(f"record {number}: a second final record for node {body['node']!r}")
                history.final[str(body["node"])] = dict(body["state"])
            elif kind == "restart":
                history.restarts.append(body)
            elif kind == "meta":
                if "converged_after_s" in body:
                    value = body.pop("converged_after_s")
                    history.converged_after_s = None if value is None else float(value)
                history.meta.update(body)
            else:
                raise HistoryError(f"record {number}: unknown record kind {kind!r}")
        return history

    def to_records(self) -> list[dict[str, JSON]]:
        """The JSON-lines records of this history (the inverse of :meth:`from_records`)."""
        records: list[dict[str, JSON]] = []
        if self.meta or self.converged_after_s is not None:
            records.append({"record": "meta", **self.meta, "converged_after_s": self.converged_after_s})
        records += [{"record": "op", **op} for op in self.operations]
        records += [{"record": "nemesis", **event} for event in self.nemesis]
        records += [{"record": "restart", **restart} for restart in self.restarts]
        records += [{"record": "final", "node": node, "state": state} for node, state in self.final.items()]
        return records

    @classmethod
    def from_dict(cls, data: Mapping[str, JSON]) -> History:
        """Build a history from one JSON document with the fields of this class."""
        converged = data.get("converged_after_s")
        return cls(
            operations=list(data.get("operations", [])),
            final={str(node): dict(state) for node, state in data.get("final", {}).items()},
            nemesis=list(data.get("nemesis", [])),
            restarts=list(data.get("restarts", [])),
            converged_after_s=None if converged is None else float(converged),
            meta=dict(data.get("meta", {})),
        )

    def to_dict(self) -> dict[str, JSON]:
        return {
            "operations": self.operations,
            "final": self.final,
            "nemesis": self.nemesis,
            "restarts": self.restarts,
            "converged_after_s": self.converged_after_s,
            "meta": self.meta,
        }


def load_jsonl(path: str | Path) -> History:
    """Read a history written as JSON lines (blank lines are skipped)."""
    records = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise HistoryError(f"{path}:{number}: not JSON: {exc}") from None
    return History.from_records(records)


def dump_jsonl(history: History, path: str | Path) -> None:
    """Write a history as JSON lines, one record per line."""
    with open(path, "w", encoding="utf-8") as file:
        for record in history.to_records():
            file.write(json.dumps(record, separators=(",", ":")) + "\n")


# -- parsed form ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Operation:
    """One operation: an invoke paired with its completion (``type`` is the outcome)."""

    index: int
    process: int | str
    node: str
    f: str
    key: str
    type: str
    value: JSON
    vid: str | None
    """The canonical JSON of the value (``None`` for deletes and reads of nothing)."""
    version: Version | None
    invoke_time: int
    complete_time: int | None
    """``None`` if the operation never completed (it counts as ``info``)."""
    error: JSON = None
    ttl: JSON = None
    """The put's ``ttl`` as recorded (``None``: no expiry)."""
    proc: str | None = None
    """The process of the node that served it, in histories of nodes made of several processes."""

    @property
    def ok(self) -> bool:
        return self.type == "ok"

    @property
    def is_write(self) -> bool:
        return self.f != "get"

    @property
    def end_time(self) -> int:
        return self.invoke_time if self.complete_time is None else self.complete_time

    def to_dict(self) -> dict[str, JSON]:
        return {
            "index": self.index,
            "process": self.process,
            "node": self.node,
            "f": self.f,
            "key": self.key,
            "type": self.type,
            "value": self.value,
            "version": None if self.version is None else list(self.version),
            "invoke_time": self.invoke_time,
            "complete_time": self.complete_time,
            "error": self.error,
            "ttl": self.ttl,
            **({} if self.proc is None else {"proc": self.proc}),
        }


class Row(NamedTuple):
    """One key's entry in a node's dump."""

    version: Version
    value: JSON
    vid: str | None
    """Canonical JSON of the value; ``None`` for a tombstone."""
    ident: str
    """Canonical JSON of the whole row, extra fields included (for convergence)."""


@dataclass(slots=True)
class Restart:
    """A restart record, parsed: the node's local state right after a restart."""

    node: str
    kill_time: int
    state: dict[str, Row]


def parse_restart(number: int, record: Mapping[str, JSON]) -> Restart:
    where = f"restart record {number}"
    missing = {"node", "kill_time", "state"} - set(record)
    if missing:
        raise HistoryError(f"{where}: missing {sorted(missing)}")
    return Restart(str(record["node"]), int(record["kill_time"]), parse_state(record["state"], where))


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _canonical(value: JSON) -> str:
    """The canonical JSON text of a value: how values are compared."""
    return _ENCODER.encode(value)


def _version(raw: JSON, where: str) -> Version | None:
    if raw is None:
        return None
    if not isinstance(raw, list | tuple) or len(raw) != 2 or not isinstance(raw[0], int):
        raise HistoryError(f"{where}: a version is [timestamp_ns, origin], got {raw!r}")
    return Version(int(raw[0]), str(raw[1]))


def parse_state(raw: Mapping[str, JSON], where: str) -> dict[str, Row]:
    """A node's dump (key -> ``[timestamp_ns, origin, value, ...]``) as rows; ``where`` names
    the dump in errors."""
    rows = {}
    for key, row in raw.items():
        if not isinstance(row, list | tuple) or len(row) < 3:
            raise HistoryError(f"{where}, key {key!r}: a row is [timestamp_ns, origin, value, ...], got {row!r}")
        version = _version(list(row[:2]), f"{where}, key {key!r}")
        assert version is not None
        value = row[2]
        rows[key] = Row(version, value, None if value is None else _canonical(value), _canonical(list(row)))
    return rows


def _make_operation(invoke: Mapping[str, JSON], done: Mapping[str, JSON] | None, number: int) -> Operation:
    f = invoke.get("f")
    if f not in FUNCTIONS:
        raise HistoryError(f"operation record {number}: f must be one of {FUNCTIONS}, got {f!r}")
    key = invoke.get("key")
    if not isinstance(key, str):
        raise HistoryError(f"operation record {number}: key must be a string, got {key!r}")
    node = invoke.get("node", done.get("node") if done else None)
    if not isinstance(node, str):
        raise HistoryError(f"operation record {number}: node must be a string, got {node!r}")
    if done is not None and (done.get("f", f) != f or done.get("key", key) != key):
        raise HistoryError(f"operation record {number}: the completion of {f} {key!r} names another operation")
    outcome = "info" if done is None else str(done["type"])
    version = None if done is None else _version(done.get("version"), f"operation record {number}")
    value: JSON = None
    if f == "put":
        value = invoke.get("value", done.get("value") if done else None)
        if value is None:
            raise HistoryError(f"operation record {number}: a put must write a (unique) non-null value")
    elif f == "get" and outcome == "ok":
        assert done is not None
        value = done.get("value")
    if outcome == "ok" and f != "get" and version is None:
        raise HistoryError(f"operation record {number}: an ok {f} must carry the version it was given")
    if outcome != "ok":
        version = None
    return Operation(
        index=0,
        process=invoke["process"],
        node=node,
        f=f,
        key=key,
        type=outcome,
        value=value,
        vid=None if value is None else _canonical(value),
        version=version,
        invoke_time=int(invoke["time"]),
        complete_time=None if done is None else int(done["time"]),
        error=None if done is None else done.get("error"),
        ttl=invoke.get("ttl") if f == "put" else None,
        proc=None if invoke.get("proc") is None else str(invoke["proc"]),
    )


def pair_operations(records: Sequence[Mapping[str, JSON]]) -> list[Operation]:
    """Pair each invoke with its process's next completion; sort by invoke time."""
    pending: dict[int | str, tuple[int, Mapping[str, JSON]]] = {}
    ops: list[Operation] = []
    for number, record in enumerate(records, 1):
        kind = record.get("type")
        if kind not in TYPES:
            raise HistoryError(f"operation record {number}: type must be one of {TYPES}, got {kind!r}")
        process = record.get("process")
        if not isinstance(process, int | str):
            raise HistoryError(f"operation record {number}: process must be an int or a string")
        if not isinstance(record.get("time"), int | float):
            raise HistoryError(f"operation record {number}: time must be a number (harness ns)")
        if kind == "invoke":
            if process in pending:
                raise HistoryError(f"operation record {number}: process {process!r} invoked while busy")
            pending[process] = (number, record)
            continue
        opened = pending.pop(process, None)
        if opened is None:
            raise HistoryError(f"operation record {number}: {kind} of process {process!r} without an invoke")
        ops.append(_make_operation(opened[1], record, opened[0]))
    for number, invoke in pending.values():
        ops.append(_make_operation(invoke, None, number))
    ops.sort(key=lambda op: op.invoke_time)
    for index, op in enumerate(ops):
        op.index = index
    return ops
