"""Serving command-line clients (``ekv ... --node``) on the cluster port.

A client runs the member handshake with the ``"client"`` feature; its session then carries only
Request/Reply (and heartbeats): it never takes part in replication or gossip. Commands run on a
worker thread of the network loop, because storage calls may block.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Protocol

from ekv._cluster.messages import Hello, Message, Reply, Request
from ekv._cluster.session import Session
from ekv._cluster.wire import FrameDecoder
from ekv._config import Config
from ekv._storage.store import ShardedStore
from ekv._values import Values

__all__ = ["ClientHost", "ClientOwner", "client_op", "serve_client"]


class ClientHost(Protocol):
    """What serving a client needs of the cluster (:class:`ekv._cluster.cluster.ClusterNode`,
    which imports this module to serve clients: a protocol rather than an import back)."""

    store: ShardedStore
    config: Config
    node_info: Callable[[], dict[str, Any]] | None
    clients: set[Session]

    def replace_voter(self, node_id: str, timeout_ns: int) -> dict[str, Any]: ...

    def make_session(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        theirs: Hello,
        features: frozenset[str],
        decoder: FrameDecoder,
        pending: list[Message],
        *,
        dialer: bool,
        address: str | None,
        owner: Any = None,
        min_heartbeat_timeout_s: float = 0.0,
    ) -> Session: ...


def client_op(cluster: ClientHost, op: str, args: dict[str, Any]) -> Any:
    """Run one client command (on a worker thread: it may block on SQLite). Arguments and values go
    through the same :class:`~ekv._values.Values` layer as the facades' (the same checks, codec
    and errors)."""
    values = Values(cluster.store)
    if op == "get":
        found = values.lookup(args["key"])
        return None if found is None else {"value": found[0], "version": list(found[1])}
    if op == "put":
        return {"version": list(values.put(args["key"], args["value"], args.get("ttl")))}
    if op == "delete":
        return {"version": list(values.delete(args["key"]))}
    if op == "scan":
        return {"items": values.scan(args.get("prefix", ""))}
    if op == "keys":
        return {"keys": values.keys(args.get("prefix", ""))}
    if op == "info":
        if cluster.node_info is None:
            raise RuntimeError("info is not available")
        return cluster.node_info()
    if op == "replace_voter":
        return cluster.replace_voter(str(args["node_id"]), cluster.config.consistent_timeout_ns)
    raise ValueError(f"unknown command {op!r}")


class ClientOwner:
    """Serves the Requests of one client session."""

    def __init__(self, cluster: ClientHost) -> None:
        self.cluster = cluster

    def session_message(self, session: Session, message: Message) -> None:
        if isinstance(message, Request):
            asyncio.get_running_loop().create_task(self._handle(session, message))

    async def _handle(self, session: Session, request: Request) -> None:
        try:
            args = json.loads(request.args) if request.args else {}
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(None, client_op, self.cluster, request.op, args)
            reply = Reply(request.request_id, True, json.dumps(result, default=repr))
        except Exception as exc:
            reply = Reply(request.request_id, False, "null", f"{type(exc).__name__}: {exc}")
        session.send(reply)

    def session_skew(self, session: Session, skew_ns: int) -> None:
        pass

    def session_closed(self, session: Session, reason: str) -> None:
        self.cluster.clients.discard(session)


def serve_client(
    cluster: ClientHost,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    theirs: Hello,
    features: frozenset[str],
    decoder: FrameDecoder,
    pending: list[Message],
) -> None:
    """Serve a command-line client's session: Request/Reply only, never replication or gossip."""
    session = cluster.make_session(
        reader,
        writer,
        theirs,
        features,
        decoder,
        pending,
        dialer=False,
        address=None,
        owner=ClientOwner(cluster),
        min_heartbeat_timeout_s=30.0,
    )
    cluster.clients.add(session)
    session.start()
