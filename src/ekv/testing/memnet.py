"""An in-memory network for running real cluster nodes without sockets.

:class:`MemoryNetwork` connects the :class:`~ekv._cluster.cluster.ClusterNode` objects of one
process through in-memory links: each node gets the view of one host (:meth:`MemoryNetwork.host`),
a :class:`~ekv._cluster.network.Network` it is constructed with, and everything above the socket
runs as in production: membership, dialing and backoff, gossip, discovery, the handshake and its
cookie proof, sessions and heartbeats, the outbox and the replicator.

The streams are real :class:`asyncio.StreamReader` / :class:`asyncio.StreamWriter` objects over an
in-memory :class:`asyncio.Transport`: bytes written on one end are delivered, in order, to the
other end on the next turn of the event loop (a TCP connection with no loss and no delay). A link
between two hosts can be cut (:meth:`MemoryNetwork.cut`): its connections are reset and new ones
refused until it heals (:meth:`MemoryNetwork.heal`), which is how a real partition looks to ekv.
A host's connections can also be reset without cutting anything (:meth:`MemoryNetwork.reset_host`:
its process crashed).

A ``shaper`` given to the network stands between the two ends of every connection, like a proxy:
it decides when each piece of the byte stream arrives, if at all (the deterministic simulator,
:mod:`ekv.testing.sim`, delays, drops, duplicates and reorders whole frames with it).

Datagrams (:meth:`HostNetwork.open_datagram`, the membership channel) go the same ways: one
sent across a cut link, or arriving while it is cut, is lost; by default it arrives on the next
loop turn, and a ``datagram_shaper`` (the same kind of callable as ``shaper``, made once per
direction between two hosts) decides when each datagram arrives, if at all, and how many times:
each piece it returns is delivered as one datagram (loss, delay, duplication and reordering).

Every method runs on the event loop the nodes use (for ClusterNode: the process's network thread);
:meth:`cut`, :meth:`heal` and :meth:`partition` may also be called from another thread, and then
wait until the loop has carried them out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ekv._cluster.runtime import DatagramReceiver, Endpoint, route_connection, route_datagram

if TYPE_CHECKING:
    from ekv._cluster.network import DatagramChannel, Network

__all__ = ["HostNetwork", "LinkShaper", "MemoryNetwork"]

_LINK_CUT = "link cut by ekv.testing.memnet"


class LinkShaper(Protocol):
    """Shapes the traffic of every connection (see the module docstring)."""

    def __call__(self, source: str, destination: str) -> Callable[[bytes], Iterable[tuple[float, bytes]]]:
        """Called for each direction of a new connection, from host ``source`` to host
        ``destination``; returns what that direction does with the bytes written to it: for each
        write, the pieces to deliver and the loop time at which each arrives (pieces due at the
        same time arrive in the order given; a piece due at or before the current time arrives on
        the next loop turn)."""
        ...


class _End(asyncio.Transport):
    """One end of an in-memory connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hosts: frozenset[str], local: tuple[str, int]) -> None:
        super().__init__()
        self._loop = loop
        self.hosts = hosts
        """The two hosts of the link (one host when it connects to itself)."""
        self._extra: dict[str, Any] = {"sockname": local}
        self.protocol: asyncio.BaseProtocol | None = None
        self.peer: _End | None = None
        self._closing = False
        self._lost = False
        self.on_lost: Callable[[_End], object] | None = None
        self.shape: Callable[[bytes], Iterable[tuple[float, bytes]]] | None = None
        self._last_delivery = 0.0
        """Loop time of the latest delivery this end scheduled: a close reaches the peer after it,
        as TCP's FIN follows the data sent before it."""

    # -- asyncio.Transport ---------------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def is_reading(self) -> bool:
        return not self._lost

    def pause_reading(self) -> None:
        pass  # the reader's buffer may grow past its limit: tests move little data

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0  # delivered on the next loop turn, nothing waits in a send buffer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self.peer is None:
            return
        if self.shape is None:
            self._loop.call_soon(self.peer._deliver, bytes(data))
            return
        for when, piece in self.shape(bytes(data)):
            self._last_delivery = max(self._last_delivery, when)
            self._loop.call_at(when, self.peer._deliver, piece)

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.call_soon(self._lose, None)  # after the writes already scheduled
        if self.peer is not None:
            if self._last_delivery > self._loop.time():  # (a shaped link: after its last frame arrives)
                self._loop.call_at(self._last_delivery, self.peer._lose, None)
            else:
                self._loop.call_soon(self.peer._lose, None)

    def abort(self) -> None:
        self.close()

    # -- the network's side ------------------------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        if not self._lost and isinstance(self.protocol, asyncio.Protocol):
            self.protocol.data_received(data)

    def _lose(self, exc: Exception | None) -> None:
        self._closing = True
        if self._lost:
            return
        self._lost = True
        if self.on_lost is not None:
            self.on_lost(self)
        if self.protocol is not None:
            self.protocol.connection_lost(exc)

    def reset(self) -> None:
        """The link was cut: both ends see a connection reset at once."""
        for end in (self, self.peer):
            if end is not None:
                end._lose(ConnectionResetError(_LINK_CUT))


def _stream(
    loop: asyncio.AbstractEventLoop, end: _End, remote: tuple[str, int]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    end._extra["peername"] = remote
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    end.protocol = protocol
    protocol.connection_made(end)
    return reader, asyncio.StreamWriter(end, protocol, reader, loop)


class MemoryNetwork:
    """Hosts, listeners, DNS names and links, all in memory (see the module docstring)."""

    def __init__(self, shaper: LinkShaper | None = None, *, datagram_shaper: LinkShaper | None = None) -> None:
        self._shaper = shaper
        self._datagram_shaper = datagram_shaper
        self._shapes: dict[tuple[str, str], Callable[[bytes], Iterable[tuple[float, bytes]]]] = {}
        self._datagram_sockets: dict[tuple[str, int], dict[str, DatagramReceiver]] = {}
        self.datagrams = 0
        """Datagrams sent so far (lost ones included)."""
        self._servers: dict[tuple[str, int], dict[str, Endpoint]] = {}
        self._names: dict[str, list[str]] = {}
        self._cut: set[frozenset[str]] = set()
        self._ends: dict[_End, None] = {}
        """Open connection ends, in the order they were made (iterated: a set's order would vary)."""
        self._ports = itertools.count(40000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting: set[asyncio.Task[None]] = set()
        self.connections = 0
        """Connections opened so far (refused ones not counted)."""

    def host(self, host: str) -> HostNetwork:
        """The network as seen from ``host`` (give it to the ClusterNode listening there)."""
        return HostNetwork(self, host)

    def add_name(self, name: str, hosts: Iterable[str]) -> None:
        """Make the DNS name ``name`` resolve to ``hosts`` (for ``discovery=``)."""
        self._names[name] = list(hosts)

    # -- links ---------------------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        """Cut the link between hosts ``a`` and ``b``: their connections are reset, new ones refused."""
        self._on_loop(lambda: self._cut_now(frozenset((a, b))))

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Heal the link between ``a`` and ``b`` (every link when both are None)."""
        self._on_loop(lambda: self._cut.clear() if a is None else self._cut.discard(frozenset((a, b))))

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between hosts of different groups (and heal the links inside a group)."""
        sets = [set(group) for group in groups]

        def apply() -> None:
            for i, group in enumerate(sets):
                for host in group:
                    for peer in group:
                        self._cut.discard(frozenset((host, peer)))
                    for other in sets[i + 1 :]:
                        for peer in other:
                            self._cut_now(frozenset((host, peer)))

        self._on_loop(apply)

    def reset_host(self, host: str) -> None:
        """Reset every connection of ``host`` (its process died); new ones are accepted."""

        def apply() -> None:
            for end in [end for end in self._ends if host in end.hosts]:
                self._ends.pop(end, None)
                end.reset()

        self._on_loop(apply)

    def is_cut(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self._cut

    def _cut_now(self, pair: frozenset[str]) -> None:
        self._cut.add(pair)
        for end in [end for end in self._ends if end.hosts == pair]:
            self._ends.pop(end, None)
            end.reset()

    def _on_loop(self, fn: Callable[[], object]) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            fn()  # no connection yet: nothing runs concurrently
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn()
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                fn()
                done.set_result(None)
            except BaseException as exc:  # handed to the waiting thread
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        done.result(30)

    # -- what HostNetwork does (on the loop) ---------------------------------------------------------

    async def _connect(self, source: str, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        self._loop = loop
        await asyncio.sleep(0)  # a connection is never made synchronously
        pair = frozenset((source, host))
        endpoints = self._servers.get((host, port))
        if pair in self._cut:
            raise ConnectionRefusedError(f"[memnet] {source} cannot reach {host}: {_LINK_CUT}")
        if endpoints is None:
            raise ConnectionRefusedError(f"[memnet] connection refused by {host}:{port}")
        local = (source, next(self._ports))
        client, server = _End(loop, pair, local), _End(loop, pair, (host, port))
        client.peer, server.peer = server, client
        self._ends[client] = self._ends[server] = None
        client.on_lost = server.on_lost = self._forget
        if self._shaper is not None:
            client.shape, server.shape = self._shaper(source, host), self._shaper(host, source)
        self.connections += 1
        server_streams = _stream(loop, server, local)
        task = loop.create_task(route_connection(endpoints, *server_streams))
        self._accepting.add(task)  # (the loop keeps only a weak reference to a task)
        task.add_done_callback(self._accepting.discard)
        return _stream(loop, client, (host, port))

    def _forget(self, end: _End) -> None:
        self._ends.pop(end, None)

    def _serve(self, listen: tuple[str, int], endpoint: Endpoint) -> tuple[str, int]:
        host, port = listen
        if port == 0:
            port = next(self._ports)
        endpoints = self._servers.setdefault((host, port), {})
        if endpoint.name in endpoints:
            raise OSError(f"[memnet] an instance named {endpoint.name!r} already listens on {host}:{port}")
        endpoints[endpoint.name] = endpoint
        return host, port

    def _open_datagram(self, address: tuple[str, int], name: str, receive: DatagramReceiver) -> _Channel:
        host, port = address
        if port == 0:
            port = next(self._ports)
        receivers = self._datagram_sockets.setdefault((host, port), {})
        if name in receivers:
            raise OSError(f"[memnet] an instance named {name!r} already receives datagrams on {host}:{port}")
        receivers[name] = receive
        return _Channel(self, (host, port), name)

    def _close_datagram(self, address: tuple[str, int], name: str) -> None:
        receivers = self._datagram_sockets.get(address)
        if receivers is not None:
            receivers.pop(name, None)
            if not receivers:
                del self._datagram_sockets[address]

    def _send_datagram(self, source: tuple[str, int], data: bytes, to: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.datagrams += 1
        pair = (source[0], to[0])
        if frozenset(pair) in self._cut:
            return
        if self._datagram_shaper is None:
            loop.call_soon(self._deliver_datagram, source, bytes(data), to)
            return
        shape = self._shapes.get(pair)
        if shape is None:
            shape = self._shapes[pair] = self._datagram_shaper(*pair)
        for when, piece in shape(bytes(data)):
            loop.call_at(when, self._deliver_datagram, source, piece, to)

    def _deliver_datagram(self, source: tuple[str, int], data: bytes, to: tuple[str, int]) -> None:
        receivers = self._datagram_sockets.get(to)
        if receivers and frozenset((source[0], to[0])) not in self._cut:
            route_datagram(receivers, data, source)

    def _unserve(self, address: tuple[str, int], endpoint: Endpoint) -> None:
        endpoints = self._servers.get(address)
        if endpoints is not None and endpoints.get(endpoint.name) is endpoint:
            del endpoints[endpoint.name]
            if not endpoints:
                del self._servers[address]


class HostNetwork:
    """A :class:`~ekv._cluster.network.Network`: the :class:`MemoryNetwork` seen from one host."""

    def __init__(self, network: MemoryNetwork, host: str) -> None:
        self.network = network
        self.name = host

    async def open_connection(
        self, host: str, port: int, *, ssl: Any, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if ssl is not None:
            raise ValueError("the in-memory network has no TLS")
        return await self.network._connect(self.name, host, port)

    async def resolve(self, host: str, port: int) -> list[str]:
        await asyncio.sleep(0)
        found = self.network._names.get(host)
        if not found:
            raise OSError(f"[memnet] unknown name {host!r}")
        return list(found)

    async def serve(self, listen: tuple[str, int], endpoint: Endpoint) -> tuple[str, int]:
        self.network._loop = asyncio.get_running_loop()
        return self.network._serve((self._host(listen[0]), listen[1]), endpoint)

    async def unserve(self, address: tuple[str, int], endpoint: Endpoint) -> None:
        self.network._unserve(address, endpoint)

    async def open_datagram(self, listen: tuple[str, int], name: str, receive: DatagramReceiver) -> DatagramChannel:
        self.network._loop = asyncio.get_running_loop()
        return self.network._open_datagram((self._host(listen[0]), listen[1]), name, receive)

    def _host(self, host: str) -> str:
        """The host an address to listen on means: this one's for a wildcard (a host has one
        address here, so "every interface" is that one)."""
        return self.name if host in ("", "0.0.0.0", "::") else host


class _Channel:
    """A :class:`~ekv._cluster.network.DatagramChannel` of the in-memory network."""

    def __init__(self, network: MemoryNetwork, address: tuple[str, int], name: str) -> None:
        self._network = network
        self.address = address
        self._name = name
        self._closed = False

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        if not self._closed:
            self._network._send_datagram(self.address, data, to)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._network._close_datagram(self.address, self._name)


if TYPE_CHECKING:

    def _is_a_network(host: HostNetwork) -> Network:
        return host  # mypy checks that HostNetwork implements the Network protocol

    def _is_a_channel(channel: _Channel) -> DatagramChannel:
        return channel
