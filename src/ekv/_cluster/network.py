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

Datagrams (:meth:`Network.open_datagram`) are the membership protocol's channel
(:mod:`ekv._cluster.gossip`): unreliable, unordered, at most one small message each, on the same
``host:port`` as the listener (UDP beside TCP), so one address names both. The seam moves bytes
only; authenticating them is the envelope's job (:mod:`ekv._cluster.datagram`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from typing import Any, Protocol

from ekv._cluster.listener import ListenerHold
from ekv._cluster.runtime import DatagramReceiver, DatagramSocket, Endpoint, runtime

__all__ = ["DatagramChannel", "Network", "TcpNetwork", "UdpChannel"]

_RESOLVED_FOR_S = 30.0
"""How long a resolved host name is used for datagrams before it is looked up again."""


class DatagramChannel(Protocol):
    """One instance's datagram endpoint (from :meth:`Network.open_datagram`; used on the loop)."""

    address: tuple[str, int]
    """The address it is bound to (the real port when 0 was asked for)."""

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        """Send one datagram, best effort: never raises for a lost or undeliverable one."""
        ...

    def close(self) -> None:
        """Stop receiving (and sending); idempotent."""
        ...


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

    async def open_datagram(self, listen: tuple[str, int], name: str, receive: DatagramReceiver) -> DatagramChannel:
        """Bind a datagram endpoint for instance ``name`` at ``listen`` (the listener's address,
        or port 0 for a free one): ``receive(data, source)`` is called on the loop for each datagram
        arriving for it. Raises OSError if it cannot be bound."""
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

    async def open_datagram(self, listen: tuple[str, int], name: str, receive: DatagramReceiver) -> DatagramChannel:
        sock = await runtime().open_datagram(listen, name, receive)
        return UdpChannel(sock, name)


class UdpChannel:
    """A :class:`DatagramChannel` over the process's UDP socket for an address (shared by the
    instances on it, like the listener). Host names are resolved in the background: a datagram to
    a name not resolved yet is dropped (membership retries every period)."""

    def __init__(self, sock: DatagramSocket, name: str) -> None:
        self._sock = sock
        self._name = name
        self.address = sock.address
        self._closed = False
        self._resolved: dict[str, tuple[str, float]] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self.unresolved = 0
        """Datagrams dropped because their host name was not resolved (yet)."""

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        transport = self._sock.transport
        if self._closed or transport is None or transport.is_closing():
            return
        host = self._ip(to[0])
        if host is None:
            self.unresolved += 1
            return
        with contextlib.suppress(OSError):  # (unreachable, no route: lost, as datagrams are)
            transport.sendto(data, (host, to[1]))

    def _ip(self, host: str) -> str | None:
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
        found = self._resolved.get(host)
        if found is not None and time.monotonic() - found[1] < _RESOLVED_FOR_S:
            return found[0]
        if host not in self._resolving:
            task = asyncio.get_running_loop().create_task(self._resolve(host))
            self._resolving[host] = task
        return found[0] if found is not None else None

    async def _resolve(self, host: str) -> None:
        transport = self._sock.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        family = sock.family if sock is not None else socket.AF_INET
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, family=family, type=socket.SOCK_DGRAM)
            if infos:
                self._resolved[host] = (str(infos[0][4][0]), time.monotonic())
        except OSError:
            pass
        finally:
            self._resolving.pop(host, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._resolving.values():
            task.cancel()
        runtime().close_datagram(self._sock, self._name)
