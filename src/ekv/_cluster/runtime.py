"""The process-wide network runtime: one asyncio loop on a background thread, and the listeners.

Every clustered ekv instance of a process shares one event loop thread ("ekv-net"), started with
the first instance and stopped with the last. Instances that listen on the same address share one
listening socket: an incoming connection names its instance in its Hello and is handed to the
instance of that name, so several named instances replicate side by side, each only with
same-named instances elsewhere.

The loop thread is a daemon thread. Once the interpreter is finalising it is frozen for good, so
nothing may wait for it then: :meth:`Runtime.running` says whether it can still run, and a node
closed that late (by ``__del__``, after the exit hook of :mod:`ekv._node.node`) skips the network
goodbye instead of waiting for timeouts.

The loop is asyncio's standard one unless ``EKV_EVENT_LOOP=uvloop`` is set in the environment
(with the ``ekv[uvloop]`` extra installed): uvloop runs the loop's own work per message (socket
readiness, the transport's read and write, waking the loop from a writer thread) in C, which
takes about 60-90 µs off the receiving side of a replicated put on this 2-core machine (measured
in docs/architecture.md, "Performance notes"). The choice is process-wide, like the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import importlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from ekv._cluster.datagram import peek_instance
from ekv._errors import ConfigError
from ekv._log import any_instance_logs

__all__ = [
    "EVENT_LOOP_ENV",
    "DatagramReceiver",
    "DatagramSocket",
    "Endpoint",
    "NameTaken",
    "Runtime",
    "new_event_loop",
    "route_connection",
    "route_datagram",
    "runtime",
]

EVENT_LOOP_ENV = "EKV_EVENT_LOOP"
"""The environment variable that picks the network loop: ``asyncio`` (default) or ``uvloop``."""


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the kind :data:`EVENT_LOOP_ENV` asks for; a clear error if it names an unknown
    kind or uvloop is not installed (raised before the node opens its data directory: a listening
    node binds, and so starts the loop, first)."""
    choice = os.environ.get(EVENT_LOOP_ENV, "").strip().lower() or "asyncio"
    if choice == "asyncio":
        return asyncio.new_event_loop()
    if choice != "uvloop":
        raise ConfigError(f"{EVENT_LOOP_ENV} must be 'asyncio' or 'uvloop', not {choice!r}")
    try:
        uvloop = importlib.import_module("uvloop")  # (an optional extra: not imported statically)
    except ImportError:
        raise ConfigError(
            f"{EVENT_LOOP_ENV}=uvloop, but uvloop is not installed; install it with: pip install 'ekv[uvloop]'"
        ) from None
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


_log = logging.getLogger("ekv.net")  # shared by every instance: gated by any_instance_logs()

T = TypeVar("T")


class Endpoint(Protocol):
    """An instance that accepts connections on a shared listener."""

    name: str

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: Any) -> None: ...


class NameTaken(OSError):
    """An instance of this name already listens on the address (in this process)."""


DatagramReceiver = Callable[[bytes, tuple[str, int]], None]
"""Called on the loop with each datagram for an instance and the address it came from."""


class DatagramSocket(asyncio.DatagramProtocol):
    """A UDP socket of this process, shared like a listener by the instances bound to its address:
    each datagram goes to the instance its envelope names (:func:`route_datagram`)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.receivers: dict[str, DatagramReceiver] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        route_datagram(self.receivers, data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass  # (an ICMP "port unreachable" for an earlier send: the member is down, SWIM finds out)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Listener:
    def __init__(self, address: tuple[str, int]) -> None:
        self.server: asyncio.Server | None = None
        self.address = address
        self.endpoints: dict[str, Endpoint] = {}
        self.holds = 0
        """Nodes that bound it and have not attached yet (see Runtime.bind)."""


class Runtime:
    """The loop thread and the listeners of this process. Use :func:`runtime`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listeners: dict[tuple[str, int], _Listener] = {}
        self._connections: weakref.WeakSet[asyncio.StreamWriter] = weakref.WeakSet()
        """Every connection accepted or dialed on the loop: closed by :meth:`_drain` if still open."""
        self._datagrams: dict[tuple[str, int], DatagramSocket] = {}
        """The UDP sockets (membership), by the address they are bound to; closed by :meth:`_drain`."""
        self._servers: weakref.WeakSet[asyncio.AbstractServer] = weakref.WeakSet()
        """Other servers on the loop (the local bus's Unix sockets): only for a forked child to close."""

    # -- lifecycle ---------------------------------------------------------------------------

    def acquire(self) -> asyncio.AbstractEventLoop:
        """Start the loop thread if needed and count one more user."""
        with self._lock:
            if self._loop is None:
                loop = new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()
                    self._drain(loop)

                thread = threading.Thread(target=run, name="ekv-net", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            self._users += 1
            return self._loop

    def release(self) -> None:
        """Count one user less; stop the loop thread after the last one."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._loop is None:
                return
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if sys.is_finalizing():
            return  # the loop thread is frozen: it can neither stop nor be joined
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(30)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Finish the loop after it stopped: stop accepting, let connections already accepted reach
        their handlers, cancel every task (again for tasks started by a cancelled one), then close
        every connection still open and let the transports release their sockets.

        Why this much: a task cancelled before its first step never runs its ``except`` or
        ``finally``, so a connection accepted in the loop's last turn (or a session started then)
        would otherwise be garbage-collected unclosed, long after, in whatever code runs then
        (a ResourceWarning; the socket held open until the collector runs)."""
        for listener in list(self._listeners.values()):
            if listener.server is not None:
                listener.server.close()
        for sock in list(self._datagrams.values()):
            sock.close()
        self._datagrams.clear()
        loop.set_exception_handler(_quiet_during_drain)
        quiet = 0
        for _ in range(50):  # (accepting takes a few turns: accept, transport, then the handler task)
            before = asyncio.all_tasks(loop)
            loop.run_until_complete(asyncio.sleep(0))
            quiet = quiet + 1 if asyncio.all_tasks(loop) <= before else 0
            if quiet >= 3:
                break
        open_connections = list(self._connections)  # (kept alive here so none is collected unclosed)
        for _ in range(5):
            pending = asyncio.all_tasks(loop)
            if not pending:
                break
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        for writer in open_connections + list(self._connections):
            with contextlib.suppress(Exception):
                writer.close()
        loop.run_until_complete(asyncio.sleep(0))  # (a closed transport closes its socket one turn later)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def track(self, writer: asyncio.StreamWriter) -> None:
        """Close ``writer`` when the loop stops, if nothing closed it before (see :meth:`_drain`),
        and its socket in a child made by ``fork()``."""
        self._connections.add(writer)

    def track_server(self, server: asyncio.AbstractServer) -> None:
        """Close ``server``'s sockets in a child made by ``fork()`` (its owner closes it here)."""
        self._servers.add(server)

    @property
    def running(self) -> bool:
        """Whether the loop thread exists and can still run work (not during interpreter
        finalisation, when daemon threads are frozen)."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not sys.is_finalizing()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        assert loop is not None, "the ekv network runtime is not running"
        return loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop thread and wait for its result (never call from that thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule ``fn(*args)`` on the loop thread (from any thread)."""
        self.loop.call_soon_threadsafe(fn, *args)

    # -- listeners (called on the loop thread) -------------------------------------------------
    #
    # A node binds its listener before it opens its data directory (a port in use must not leave
    # a new directory behind or mark an existing one as opened), so binding and serving are two
    # steps: bind() holds the listener, attach() registers the instance on it, and the listener
    # closes when nothing holds it and no instance is attached.

    async def bind(self, host: str, port: int, name: str, ssl: Any = None) -> tuple[str, int]:
        """Hold a listener for (host, port), creating it if needed; returns the bound address
        (the real port when ``port`` is 0). Raises OSError if the address cannot be bound or an
        instance named ``name`` already listens there. Undo with :meth:`unbind`."""
        listener = self._listeners.get((host, port)) if port else None
        if listener is None:
            listener = _Listener((host, port))
            bound_listener = listener

            def accepted(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Coroutine[Any, Any, None]:
                self.track(w)  # (now: the handler's task may be cancelled before it runs)
                return self._accept(bound_listener, r, w)

            server = await asyncio.start_server(accepted, host or None, port, ssl=ssl, reuse_address=True)
            listener.server = server
            listener.address = (host, int(server.sockets[0].getsockname()[1]))
            self._listeners[listener.address] = listener
        elif name in listener.endpoints:
            raise NameTaken(errno.EADDRINUSE, f"an ekv instance named {name!r} already listens there")
        listener.holds += 1
        return listener.address

    async def unbind(self, address: tuple[str, int]) -> None:
        """Drop one hold taken by :meth:`bind`."""
        listener = self._listeners.get(address)
        if listener is not None:
            listener.holds -= 1
            await self._close_if_unused(listener)

    async def attach(self, address: tuple[str, int], endpoint: Endpoint) -> None:
        """Serve ``endpoint`` on the listener held at ``address`` (see :meth:`bind`). The
        instance holds the listener until :meth:`unlisten`."""
        listener = self._listeners[address]
        if endpoint.name in listener.endpoints:
            raise NameTaken(errno.EADDRINUSE, f"an ekv instance named {endpoint.name!r} already listens there")
        listener.endpoints[endpoint.name] = endpoint

    async def unlisten(self, address: tuple[str, int], endpoint: Endpoint) -> None:
        listener = self._listeners.get(address)
        if listener is None:
            return
        if listener.endpoints.get(endpoint.name) is endpoint:
            del listener.endpoints[endpoint.name]
        await self._close_if_unused(listener)

    async def _close_if_unused(self, listener: _Listener) -> None:
        if listener.endpoints or listener.holds > 0:
            return
        if self._listeners.get(listener.address) is listener:
            del self._listeners[listener.address]
        server = listener.server
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    # -- datagram sockets (called on the loop thread) ------------------------------------------

    async def open_datagram(self, address: tuple[str, int], name: str, receive: DatagramReceiver) -> DatagramSocket:
        """Receive the datagrams for instance ``name`` arriving at ``address`` (UDP, bound on
        first use; port 0 picks a free one); raises OSError if it cannot be bound or an instance of
        that name already receives there. Undo with :meth:`close_datagram`."""
        host, port = address
        sock = self._datagrams.get(address) if port else None
        if sock is None:
            bound = DatagramSocket(address)
            # ("" means every interface: UDP binds one family, IPv4's; "localhost" its IPv4 address)
            local = {"": "0.0.0.0", "localhost": "127.0.0.1"}.get(host, host)
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: bound, local_addr=(local, port)
            )
            bound.transport = transport
            bound.address = (host, int(transport.get_extra_info("sockname")[1]))
            self._datagrams[bound.address] = sock = bound
        elif name in sock.receivers:
            raise NameTaken(errno.EADDRINUSE, f"an ekv instance named {name!r} already receives datagrams there")
        sock.receivers[name] = receive
        return sock

    def close_datagram(self, sock: DatagramSocket, name: str) -> None:
        """Stop receiving for ``name``; the socket closes with its last instance."""
        sock.receivers.pop(name, None)
        if not sock.receivers:
            if self._datagrams.get(sock.address) is sock:
                del self._datagrams[sock.address]
            sock.close()

    async def _accept(self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await route_connection(listener.endpoints, reader, writer)


async def route_connection(
    endpoints: dict[str, Endpoint], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Hand an incoming connection to the instance its Hello names (among ``endpoints``, by name).
    Also used by networks without sockets (:mod:`ekv.testing.memnet`)."""
    from ekv._cluster.session import read_hello_for_routing

    try:

        def lookup(name: str) -> Endpoint | None:
            found = endpoints.get(name)
            if found is None and name == "*" and len(endpoints) == 1:
                found = next(iter(endpoints.values()))  # a client that does not name one
            return found

        routed = await read_hello_for_routing(reader, writer, lookup)
        if routed is None:
            return
        endpoint, first = routed
        await endpoint.accept(reader, writer, first)
    except Exception:  # one bad connection must never take the listener down
        if any_instance_logs():  # belongs to no instance yet: quiet unless one has logging on
            _log.debug("ekv: incoming connection failed", exc_info=True)
        writer.close()
    except asyncio.CancelledError:  # the loop stops (the last node closed) during a handshake
        writer.close()
        raise


def route_datagram(receivers: dict[str, DatagramReceiver], data: bytes, source: tuple[str, int]) -> None:
    """Hand a datagram to the instance its envelope names; one naming no instance here goes to
    every instance, whose check drops and counts it. Also used by :mod:`ekv.testing.memnet`."""
    receiver = receivers.get(peek_instance(data) or "")
    for receive in [receiver] if receiver is not None else list(receivers.values()):
        try:
            receive(data, source)
        except Exception:  # one bad datagram must never take the socket down
            if any_instance_logs():
                _log.debug("ekv: incoming datagram failed", exc_info=True)


def _quiet_during_drain(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler while it is drained: a cancelled connection handler makes
    asyncio's stream callback raise CancelledError (Python 3.11); :meth:`Runtime._drain` closes
    those connections itself. Anything else is reported as usual."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


_RUNTIME = Runtime()


def _after_fork_in_child() -> None:
    # The loop thread does not exist in a child made by fork(): start afresh (a node reopened
    # there starts a new one). The parent's sockets are closed in the child (the descriptors
    # only, not the connections, which stay the parent's): a child that outlives its parent must
    # not keep its port bound, nor keep its connections open, which would hide the parent's death
    # from the other end (the node process's bus counted a SIGKILLed process as connected for as
    # long as its forked child lived, and kept queueing its events).
    global _RUNTIME
    old, _RUNTIME = _RUNTIME, Runtime()
    sockets: list[Any] = []
    for listener in old._listeners.values():
        sockets.extend(listener.server.sockets if listener.server is not None else ())
    for server in list(old._servers):
        sockets.extend(getattr(server, "sockets", ()))  # (asyncio.Server; AbstractServer does not say)
    for transport in [d.transport for d in old._datagrams.values()] + [w.transport for w in list(old._connections)]:
        sockets.append(transport.get_extra_info("socket") if transport is not None else None)
    # Not os.close(): the parent's socket objects still name their descriptors, and the garbage
    # collector closes them again later, by then perhaps the number of a file the child opened.
    # /dev/null put in their place releases the sockets and keeps the numbers taken until then.
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for sock in sockets:
            with contextlib.suppress(OSError, AttributeError):
                if sock is not None and sock.fileno() >= 0:
                    os.dup2(null, sock.fileno(), inheritable=False)
    finally:
        os.close(null)
    old._listeners = {}
    old._datagrams = {}
    old._connections = weakref.WeakSet()
    old._servers = weakref.WeakSet()
    old._loop = old._thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def runtime() -> Runtime:
    """The process's network runtime."""
    return _RUNTIME
