"""The messages of the ekv wire protocol, version 1.

Every message is a frozen dataclass; :mod:`ekv._cluster.wire` turns them into bytes and back.
Values inside entries are opaque bytes (the codec's output): nothing received from the network is
ever unpickled here.

Connection set-up (both sides, in this order)::

    -> Hello   (protocol versions, features, instance name, node id, shard count, nonce)
    <- Hello
    -> Auth    (HMAC of both nonces and both identities with the cookie)
    <- Auth
    ... then any of the session messages, in both directions.

A client (``ekv ... --node``) does the same handshake with the ``"client"`` feature in its Hello;
its session then carries only Request / Reply (and heartbeats), never replication.

A side that refuses the other (wrong instance, shard count, codec, version, cookie) sends ``Reject``
with a reason and closes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ekv._core import plumtree
from ekv._core.paxos import Ballot, Op, Record
from ekv._core.paxos import Promise as PaxosPromise
from ekv._model import Entry

__all__ = [
    "PAXOS",
    "PROTOCOL_VERSION",
    "Accept",
    "Accepted",
    "Auth",
    "Bye",
    "Duplicate",
    "Hello",
    "Live",
    "Members",
    "Message",
    "Outcome",
    "Ping",
    "Pong",
    "Prepare",
    "Promise",
    "Propose",
    "Reject",
    "Retired",
    "Reply",
    "Request",
    "SyncChunk",
    "SyncDone",
    "SyncRequest",
    "Summary",
    "SummaryDiff",
    "TreeMessage",
    "VersionVector",
    "merge_live",
]

PROTOCOL_VERSION = 1
"""The highest protocol version this ekv speaks; Hello advertises every version it accepts."""

VersionVector = dict[str, int]
"""Per-origin replication progress of one shard: origin -> highest oseq such that every write of
that origin with a lower or equal oseq is covered (applied, or superseded by a higher version)."""


@dataclass(frozen=True, slots=True)
class Hello:
    versions: tuple[int, ...]
    features: tuple[str, ...]
    instance: str
    node_id: str
    shards: int
    nonce: bytes
    listen: str | None = None
    """The address this node accepts connections on, for the other members to dial."""
    wall_ns: int = 0
    origin: str = ""
    """The origin of this process's writes (``node_id~incarnation``): two live processes with
    one node id (copies of one data directory) differ here. Empty from ekv 0.1."""
    codec: str | None = None
    """The name of the codec this node's values are encoded with; members must agree. ``None``
    (also what an absent field decodes to: older ekv versions do not send it) is not checked.
    Not part of the Auth transcript, which older versions compute without it."""
    consistent_prefixes: tuple[str, ...] = ()
    """SPEC 13: the keys that are linearizable-only; members must agree exactly."""
    cluster_size: int | None = None
    """SPEC 13: the number of voters; members must agree (None: not set)."""
    role: str = "voter"
    """``"voter"`` or ``"observer"`` (stores and replicates, does not vote)."""
    retired: tuple[str, ...] = ()
    """SPEC 13: node ids of voters replaced with the documented procedure; members refuse them."""


@dataclass(frozen=True, slots=True)
class Auth:
    mac: bytes


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str


@dataclass(frozen=True, slots=True)
class Bye:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Sent to a member whose node id another live member already uses (a copy of its data
    directory runs elsewhere): the receiver takes a new node id. Only sent when both sides
    negotiated the ``"identity"`` feature."""

    origin: str
    """The origin of the other process that has this node id."""
    address: str
    """Where that other process connected from (for the warning)."""


@dataclass(frozen=True, slots=True)
class Ping:
    wall_ns: int


@dataclass(frozen=True, slots=True)
class Pong:
    echo_wall_ns: int
    wall_ns: int


@dataclass(frozen=True, slots=True)
class Members:
    """Members this node knows: (node_id, listen address) pairs. Gossip that lets one connection
    reach the whole mesh."""

    members: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """ "Send me what I lack in ``shard``": the requester's version vector."""

    shard: int
    sync_id: int
    vv: VersionVector = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SyncChunk:
    """Part ``seq`` (0, 1, 2, ...) of a sync. The receiver applies it at once (each entry
    LWW-checked); only a complete, in-order sequence lets it merge the final vector."""

    shard: int
    sync_id: int
    seq: int
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class SyncDone:
    """The terminal message of a sync, also when it sent nothing. ``vv`` is the sender's version
    vector at the snapshot the sync was read from; the receiver merges it into its own."""

    shard: int
    sync_id: int
    vv: VersionVector
    kind: str
    """"delta" or "full"."""
    chunks: int
    """How many SyncChunk messages preceded this one."""
    entries: int


@dataclass(frozen=True, slots=True)
class Summary:
    """An anti-entropy probe (large clusters, ``"summary"`` feature): a digest of the sender's
    version vector of every shard, in shard order (:func:`ekv._cluster.summary.digest`), so that a
    round with nothing to repair costs this message and its answer."""

    probe: int
    digests: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class SummaryDiff:
    """The answer to :class:`Summary` ``probe``: the shards (ascending) whose digests differ;
    both sides then pull just those with :class:`SyncRequest`."""

    probe: int
    shards: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TreeMessage:
    """A message of the broadcast tree (:mod:`ekv._cluster.broadcast`, ``"plumtree"`` feature):
    a Gossip's payload is an encoded :class:`Live` frame, relayed unchanged from its origin."""

    message: plumtree.Message


@dataclass(frozen=True, slots=True)
class Live:
    """Writes made by the sender (its own origin), in oseq order, sent as they commit."""

    shard: int
    entries: tuple[Entry, ...]


def merge_live(messages: list[Message]) -> list[Message]:
    """``messages`` (decoded from one read, in order) with each run of consecutive :class:`Live`
    messages merged into one Live per shard, so the receiver applies a run in one transaction per
    shard instead of one per message.

    Why: a receiver that falls behind finds many Live frames in one read (each commit of the
    sender is a message), and a transaction costs far more than a row (its page writes); applying
    what queued up together lets it catch up, where one commit per message kept it behind.
    Nothing changes but the grouping: entries keep their order within each shard (where order
    matters: version vectors advance per shard), shards are independent of each other, and every
    other message keeps its place relative to the Live messages around it."""
    if len(messages) < 2:
        return messages
    out: list[Message] = []
    run: dict[int, list[Entry]] = {}
    lives = 0
    for message in messages:
        if type(message) is Live:
            run.setdefault(message.shard, []).extend(message.entries)
            lives += 1
            continue
        if run:
            out += [Live(shard, tuple(entries)) for shard, entries in run.items()]
            run = {}
        out.append(message)
    if lives < 2:
        return messages  # nothing to merge
    out += [Live(shard, tuple(entries)) for shard, entries in run.items()]
    return out


@dataclass(frozen=True, slots=True)
class Request:
    """A command from a client (the ``ekv`` command line with ``--node``) on a client session.
    ``args`` is a JSON object encoded as text (values in it are the user's JSON)."""

    request_id: int
    op: str
    args: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a Request: ``result`` is JSON text when ``ok``, else ``error`` says why."""

    request_id: int
    ok: bool
    result: str = "null"
    error: str = ""


@dataclass(frozen=True, slots=True)
class Prepare:
    """CASPaxos phase 1 for ``key`` (see :mod:`ekv._core.paxos`); answered by a Promise."""

    request: int
    key: str
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Promise:
    """A voter's answer to a Prepare: ``promise`` is :class:`ekv._core.paxos.Promise`."""

    request: int
    promise: PaxosPromise


@dataclass(frozen=True, slots=True)
class Accept:
    """CASPaxos phase 2: accept ``record`` (None: "absent") under ``ballot``."""

    request: int
    key: str
    ballot: Ballot
    record: Record | None


@dataclass(frozen=True, slots=True)
class Accepted:
    """A voter's answer to an Accept; refused (``ok`` False): ``promised`` is what it promised."""

    request: int
    ok: bool
    promised: Ballot


@dataclass(frozen=True, slots=True)
class Propose:
    """An observer asks a voter to run a linearizable operation for it; answered by Outcome."""

    request: int
    op: Op
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a Propose ended: ``kind`` is committed, read, conflict, unconfirmed or no_quorum;
    ``record`` the state (committed, read, conflict)."""

    request: int
    kind: str
    record: Record | None


@dataclass(frozen=True, slots=True)
class Retired:
    """Voters replaced with the documented procedure (the sender just retired one): members
    remember them and refuse them from now on. Only sent where ``"paxos"`` was negotiated."""

    node_ids: tuple[str, ...]


PAXOS = (Prepare, Promise, Accept, Accepted, Propose, Outcome, Retired)
"""The messages of linearizable operations (:mod:`ekv._cluster.consensus`)."""

Message = (
    Hello
    | Auth
    | Reject
    | Bye
    | Duplicate
    | Ping
    | Pong
    | Members
    | SyncRequest
    | SyncChunk
    | SyncDone
    | Summary
    | SummaryDiff
    | TreeMessage
    | Live
    | Request
    | Reply
    | Prepare
    | Promise
    | Accept
    | Accepted
    | Propose
    | Outcome
    | Retired
)
