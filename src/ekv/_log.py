"""Logging that belongs to one instance and honours its ``log`` option.

Every message ekv logs about an open store goes through that store's :class:`NodeLog`: the node,
its storage (shards, readers, GC, checkpoints), its subscriptions and its cluster. So
``log=False`` silences every ekv logger for that instance, whatever the process-wide logging
configuration, and each message carries the instance name. The logger names stay what they
were (``ekv``, ``ekv.storage``, ``ekv.subscriptions``), so handlers and filters on them still
work.

Messages that belong to no instance (the process-wide network loop, shared by every clustered
instance: a connection that failed before it was routed to one) are logged only while some
open instance has logging on (:func:`any_instance_logs`): an application that turned logging
off everywhere hears nothing from ekv.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["NodeLog", "any_instance_logs", "instance_logging"]

_lock = threading.Lock()
_logging_instances = 0


def instance_logging(on: bool, delta: int) -> None:
    """Count an instance with logging on that opens (``delta`` 1) or closes (-1)."""
    global _logging_instances
    if on:
        with _lock:
            _logging_instances += delta


def any_instance_logs() -> bool:
    """Whether some open instance has logging on (the gate of process-wide messages)."""
    return _logging_instances > 0


class NodeLog:
    """Logging honouring the ``log`` option, with the instance name in every message.

    ``log=False`` silences everything; ``"info"`` emits operational messages and problems;
    ``"verbose"`` adds per-shard detail at DEBUG level. Nothing is logged on the hot path.
    """

    def __init__(self, name: str, level: object, logger: str = "ekv") -> None:
        self._name = name
        self._level = level
        self._prefix = f"ekv[{name}] "
        self._on = level is not False
        self._verbose = level == "verbose"
        self._logger = logging.getLogger(logger)

    @property
    def on(self) -> bool:
        return self._on

    def child(self, logger: str) -> NodeLog:
        """The same instance's log on another ekv logger (``ekv.storage``, ...)."""
        return NodeLog(self._name, self._level, logger)

    def info(self, msg: str, *args: object) -> None:
        if self._on:
            self._logger.info(self._prefix + msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        if self._on:
            self._logger.warning(self._prefix + msg, *args)

    def error(self, msg: str, *args: object, exc_info: bool = False) -> None:
        if self._on:
            self._logger.error(self._prefix + msg, *args, exc_info=exc_info)

    def verbose(self, msg: str, *args: object) -> None:
        if self._verbose:
            self._logger.debug(self._prefix + msg, *args)
