"""The cluster's network seam: every connection a :class:`~ekv._cluster.cluster.ClusterNode` opens,
every name it resolves and the listener it serves on go through one :class:`Network` object,
given to the node at construction.

Why a seam: the membership, handshake, session and outbox code is the part of ekv that goes
wrong under partitions and reconnects, and it is only trustworthy if tests run it as it is. With
the network behind an interface (httpcore's network backends are the model), a test gives the
nodes an in-memory network (:mod:`ekv.testing.memnet`) whose links it can cut and heal, and the
real cluster code runs unchanged over it, without sockets. Production passes nothing and gets
:class:`TcpNetwork`: asyncio TCP (TLS when configured) and the process's shared listeners
(:mod:`ekv._cluster.runtime`). There is no global switch: the choice is a constructor argument.

Connections are plain :class:`asyncio.StreamReader` / :class:`asyncio.StreamWriter` pairs, which is
what the handshake and :class:`~ekv._cluster.session.Session` use; an implementation without
sockets builds them over its own :class:`asyncio.Transport`.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Protocol

from ekv._cluster.listener import ListenerHold
from ekv._cluster.runtime import Endpoint, runtime

__all__ = ["Network", "TcpNetwork"]


class Network(Protocol):
    """What the cluster needs of the network (all called on the cluster's event loop)."""

    async def open_connection(
        self, host: str, port: int, *, ssl: Any, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to ``host:port`` (TLS with the ``ssl`` context unless None); raises OSError
        or TimeoutError when that fails within ``timeout`` seconds."""
        ...

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses (IPs) a DNS name stands for (discovery); raises OSError."""
        ...

    async def serve(self, listen: tuple[str, int], endpoint: Endpoint) -> tuple[str, int]:
        """Hand the connections for ``endpoint`` (by its name) arriving at ``listen`` to
        ``endpoint.accept``; returns the address actually listened on (the real port for 0)."""
        ...

    async def unserve(self, address: tuple[str, int], endpoint: Endpoint) -> None:
        """Stop serving ``endpoint`` at ``address`` (returned by :meth:`serve`)."""
        ...


class TcpNetwork:
    """The real network: asyncio TCP/TLS, and the listener the node bound before it opened its data
    directory (``listener``: None when the node does not listen)."""

    def __init__(self, listener: ListenerHold | None = None) -> None:
        self._listener = listener

    async def open_connection(
        self, host: str, port: int, *, ssl: Any, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # (asyncio.timeout, not wait_for: in Python 3.11 a wait_for that times out just as the
        # connection is made drops the connected transport without closing it)
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl, server_hostname=host if ssl else None)
        runtime().track(writer)
        return reader, writer

    async def resolve(self, host: str, port: int) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [str(info[4][0]) for info in infos]

    async def serve(self, listen: tuple[str, int], endpoint: Endpoint) -> tuple[str, int]:
        assert self._listener is not None, "the node binds its listener before opening its data"
        await runtime().attach(self._listener.address, endpoint)
        return self._listener.address

    async def unserve(self, address: tuple[str, int], endpoint: Endpoint) -> None:
        await runtime().unlisten(address, endpoint)
