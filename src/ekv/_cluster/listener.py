"""Binding a node's listening socket before its data directory is opened."""

from __future__ import annotations

import errno
import os

from ekv._cluster.runtime import NameTaken, runtime
from ekv._config import Config
from ekv._core.addresses import format_address
from ekv._errors import ListenError

__all__ = ["ListenerHold"]


_LISTEN_HINTS = {
    errno.EADDRINUSE: "another process (or another ekv node) uses it; stop that or choose another port",
    errno.EADDRNOTAVAIL: "the host is not an address of this machine",
    errno.EACCES: "ports below 1024 need privileges",
}


class ListenerHold:
    """The listening socket of a node, bound before its data directory is opened.

    A port in use is the most common reason a node cannot start; binding first means that failure
    creates no data directory and leaves an existing one untouched (not even marked as opened).
    The node's :class:`ClusterNode` serves on the socket; :meth:`release` then drops this hold
    (the listener lives on while the node serves on it, and closes otherwise).
    """

    def __init__(self, config: Config) -> None:
        options = config.cluster
        assert options is not None and options.listen is not None
        host, port = options.listen
        self._runtime = runtime()
        self._runtime.acquire()
        try:
            self.address = self._runtime.run(
                self._runtime.bind(host, port, config.name, ssl=options.ssl_server), timeout=60
            )
        except OSError as exc:
            self._runtime.release()
            if isinstance(exc, NameTaken) or exc.errno is None:
                reason = str(exc.strerror or exc)
            else:
                reason = os.strerror(exc.errno).lower()  # asyncio's own text repeats the address
            where = format_address(host, port)
            hint = _LISTEN_HINTS.get(exc.errno or 0) if not isinstance(exc, NameTaken) else None
            raise ListenError(
                f"cannot listen on {where}: {reason}" + (f" ({hint})" if hint else ""),
                address=where,
                reason=reason,
                errno=exc.errno,
            ) from None
        except BaseException:
            self._runtime.release()
            raise
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            if self._runtime.running:
                self._runtime.run(self._runtime.unbind(self.address), timeout=30)
        finally:
            self._runtime.release()
