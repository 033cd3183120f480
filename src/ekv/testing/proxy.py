"""A loopback fault proxy: the network between node processes on 127.0.0.1, without root.

One proxy port per node stands in front of its real listener, and every node advertises its
proxy port (ekv's ``advertise`` option) and is given the other nodes' proxy ports as peers, so
every member-to-member connection passes through the proxy of the node it was dialed to. The
proxy reads the dialer's first frame (ekv's ``Hello``, a JSON control message carrying its node
id) to learn which two nodes a connection joins; clients of the node's client protocol connect
to the real port and are never cut.

A cut between two nodes makes the proxy *hold* the bytes of their existing connections (the
peers see a silent connection, as when a network drops packets, and give up after their
heartbeat timeout) and close new ones at once (as a refused connection). Healing lets held bytes
flow again. Everything runs on one asyncio loop in a daemon thread of the harness.

Datagrams (SWIM membership, on each node's listen ``host:port`` over UDP) are relayed too: the
proxy port is also a UDP port, and a datagram arriving there from node *a*'s real port is sent
on to the real port of the node behind it *from a's proxy port*, so the receiver sees the sender
at its advertised address (where SWIM answers it). Across a cut datagrams are dropped, as a
network drops them; datagrams from any other port are dropped as well (nothing else speaks UDP
to a node). Without this relay the nodes' SWIM would never hear each other: they advertise the
proxy ports.

Used by the chaos harness's loopback network and by ``ekv demo``: a partition made here is a
real network fault, ekv's code is not told about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FaultProxy", "free_ports"]

_HEAD = struct.Struct(">IB")
_HELLO = 1
_MAX_HELLO = 64 * 1024
_POLL_S = 0.02
_LOWEST = 10000  # free_ports' lowest choice (below: ports well-known services are set up on)


class FaultProxy:
    """Proxies ``127.0.0.1:listen_port[i] -> 127.0.0.1:upstream_port[i]`` for every node ``i``.

    ``index_of(node_id)`` maps a node id read from a Hello to its node index (or None for a
    stranger, which is not cut). It is asked again at every check, so a connection made before
    the harness learned the dialer's node id is still cut once it knows it."""

    def __init__(self, index_of: Callable[[str], int | None]) -> None:
        self._index_of = index_of
        self._blocked: set[tuple[int, int]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ekv-fault-proxy", daemon=True)
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._datagrams: list[asyncio.DatagramTransport] = []  # one per node, on its proxy port
        self._upstream: dict[int, int] = {}  # a node's real port -> its index
        self.ports: list[int] = []
        self.relayed = {"datagrams": 0, "cut": 0, "stranger": 0}
        """Datagrams relayed, dropped across a cut, dropped from a port that is no node's."""
        self._thread.start()

    # -- control (any thread) ------------------------------------------------------------------

    def start(self, upstream_ports: list[int]) -> list[int]:
        """Listen in front of each upstream port; return the proxy ports (same order)."""
        future = asyncio.run_coroutine_threadsafe(self._start(upstream_ports), self._loop)
        self.ports = future.result(30)
        return self.ports

    def cut(self, blocked: dict[int, set[int]]) -> None:
        """Node ``i`` cannot reach any node in ``blocked[i]``; a cut works in both directions."""
        pairs = {(min(a, b), max(a, b)) for a, others in blocked.items() for b in others}
        self._blocked = pairs  # one assignment: the loop thread sees the old or the new set

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            for transport in self._datagrams:
                transport.close()
            for writer in list(self._writers):
                writer.close()

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    # -- the loop --------------------------------------------------------------------------------

    def _is_cut(self, source: str | None, b: int) -> bool:
        if not self._blocked or source is None:
            return False
        a = self._index_of(source)
        return a is not None and (min(a, b), max(a, b)) in self._blocked

    async def _start(self, upstream_ports: list[int]) -> list[int]:
        ports = []
        self._upstream = {port: index for index, port in enumerate(upstream_ports)}
        for index, upstream in enumerate(upstream_ports):
            for attempt in range(20):  # the TCP port's number may be taken for UDP: take another
                server = await asyncio.start_server(
                    functools.partial(self._handle, dest=index, port=upstream), "127.0.0.1", 0
                )
                port = server.sockets[0].getsockname()[1]
                try:
                    transport, _ = await self._loop.create_datagram_endpoint(
                        functools.partial(_Relay, self, index, upstream), local_addr=("127.0.0.1", port)
                    )
                except OSError:
                    server.close()
                    if attempt == 19:
                        raise
                    continue
                break
            self._servers.append(server)
            self._datagrams.append(transport)
            ports.append(port)
        return ports

    def _relay(self, data: bytes, source_port: int, dest: int, dest_port: int) -> None:
        source = self._upstream.get(source_port)
        if source is None or source >= len(self._datagrams):
            self.relayed["stranger"] += 1
        elif (min(source, dest), max(source, dest)) in self._blocked:
            self.relayed["cut"] += 1
        else:
            self.relayed["datagrams"] += 1
            self._datagrams[source].sendto(data, ("127.0.0.1", dest_port))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dest: int, port: int) -> None:
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            first, source = await self._read_hello(reader)
            if self._is_cut(source, dest):
                return  # refused: closed at once
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            self._writers.add(up_writer)
            up_writer.write(first)
            await asyncio.gather(
                self._pump(reader, up_writer, source, dest), self._pump(up_reader, writer, source, dest)
            )
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    with contextlib.suppress(Exception):
                        w.close()

    async def _read_hello(self, reader: asyncio.StreamReader) -> tuple[bytes, str | None]:
        """The dialer's first frame, and the node id its Hello names (None if it is no
        member's Hello, e.g. a client or garbage: passed through, never cut)."""
        head = await reader.readexactly(_HEAD.size)
        length, kind = _HEAD.unpack(head)
        if kind != _HELLO or not 1 <= length <= _MAX_HELLO:
            return head, None
        body = await reader.readexactly(length - 1)
        try:
            node_id = json.loads(body).get("node_id")
        except (ValueError, AttributeError):
            return head + body, None
        return head + body, node_id if isinstance(node_id, str) else None

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str | None, dest: int
    ) -> None:
        try:
            while data := await reader.read(65536):
                while self._is_cut(source, dest):
                    await asyncio.sleep(_POLL_S)  # hold the bytes: a silent link
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1 for both TCP and UDP (held open together so they are
    distinct), below the kernel's ephemeral range where it can be read: the ports are bound
    later, by node processes started one after the other, and a port of that range can meanwhile
    be handed to an outgoing connection (24 nodes dialing each other through the proxy took one
    in two runs out of three: "address already in use" at the start of a chaos run)."""
    socks: list[socket.socket] = []
    low = _ephemeral_low()
    candidates = random.sample(range(_LOWEST, low), low - _LOWEST) if low > _LOWEST + count else []
    try:
        for port in [*candidates, *[0] * count]:  # 0: any port (where the range is unknown)
            if len(socks) == 2 * count:
                break
            tcp, udp = socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", tcp.getsockname()[1]))
            except OSError:
                tcp.close()
                udp.close()
                continue
            socks += [tcp, udp]
        return [s.getsockname()[1] for s in socks[::2]]
    finally:
        for sock in socks:
            sock.close()


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux), or 0 if unknown."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


class _Relay(asyncio.DatagramProtocol):
    """The UDP side of one node's proxy port: hands every datagram to :meth:`FaultProxy._relay`."""

    def __init__(self, proxy: FaultProxy, dest: int, dest_port: int) -> None:
        self._proxy = proxy
        self._dest = dest
        self._dest_port = dest_port

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._proxy._relay(data, addr[1], self._dest, self._dest_port)

    def error_received(self, exc: Exception) -> None:
        pass  # a node not running (ICMP port unreachable): the datagram is lost, as on a network
