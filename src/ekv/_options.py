"""The constructor options of ``EKV`` and ``AsyncEKV``, defined once.

:class:`Options` is what both facades accept as keyword arguments (``**options: Unpack[Options]``),
so a type checker and an IDE see every option with its type, and a misspelt one is flagged before
the code runs. :data:`DEFAULTS` is the one table of their defaults: ``Config.create`` fills in from
it, the API reference shows it and the README's options table is checked against it
(tests/test_options.py). Each option's docstring below is its documentation (docs/api.md).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal, TypedDict

from ekv._core.clock import WallClock

__all__ = ["CLUSTER_OPTIONS", "DEFAULTS", "STORE_OPTIONS", "AsyncOptions", "Options", "Seconds"]

Seconds = float | int | timedelta


class Options(TypedDict, total=False):
    """The keyword options of :class:`ekv.EKV` and :class:`ekv.AsyncEKV` (every one optional).

    Durations are seconds (``int`` or ``float``) or a ``timedelta``; sizes are bytes. The
    cluster options (from ``listen`` on) mean something only with ``listen``, ``peers`` or
    ``discovery``; given alone, they are a :class:`~ekv.ConfigError`.
    """

    shards: int
    """Number of SQLite files (1-1024); fixed when ``data_dir`` is created. Default 8."""
    tombstone_ttl: Seconds
    """How long deletes (and expired keys) are remembered before they are purged. Default 7 days."""
    gc_interval: Seconds
    """Period of expiry, tombstone purge and change-log truncation; shorter than ``tombstone_ttl``.
    Default 300 s."""
    log: Literal["info", "verbose", False]
    """``"info"``, ``"verbose"`` or ``False``; messages go to the logger ``"ekv"``. Default ``"info"``."""
    durability: Literal["normal", "full"]
    """``"normal"`` survives a process crash; ``"full"`` also a power cut (fsync). Default ``"normal"``."""
    codec: Any
    """``"pickle"``, ``"json"`` or an object with ``dumps``/``loads`` (and a ``name``); recorded in
    ``data_dir``, which then only opens with the same codec. Default ``"pickle"``."""
    clock: WallClock | None
    """A wall clock with ``now_ns()`` (tests and simulations inject one). Default None: the system
    clock."""
    max_value_size: int
    """Largest encoded value, in bytes. Default 256 MiB."""
    subscriber_queue: int
    """Default bound, in events, of a subscription's queue. Default 10,000."""
    allow_stale_startup: bool
    """Trust a data directory older than ``tombstone_ttl`` (whole-cluster restores). Default False."""
    takeover_interval: Seconds
    """How often a process attached to a data directory checks whether the node process is gone
    (and takes over if so). Default 0.2 s."""
    consistent_prefixes: Sequence[str]
    """Key prefixes whose keys are linearizable-only (``if_absent``, ``if_version``,
    ``consistent``, ``update``, ``lock``); identical on every member. Default (): none."""
    cluster_size: int | None
    """The number of voters of linearizable operations (quorum ``cluster_size // 2 + 1``).
    Default None: 1 for a node without peers; a clustered node must set it to use them."""
    role: Literal["voter", "observer"]
    """``"observer"``: stores, replicates and reads, but does not vote; sends linearizable
    operations to a voter. Default ``"voter"``."""
    consistent_timeout: Seconds
    """Default ``timeout`` of a linearizable operation. Default 5 s."""
    listen: str | None
    """``"host:port"`` to accept members on (port 0 picks a free one); not loopback requires
    ``cookie``. Default None: no listener."""
    peers: Sequence[str]
    """Member addresses (``"host:port"``) to dial; one is enough to join the mesh. Default ()."""
    cookie: str | bytes | None
    """The cluster secret; both ends prove they know it, it never crosses the wire. Default None."""
    discovery: str | Sequence[str]
    """DNS ``"name:port"`` (or a list of them) resolved every ``discovery_interval``. Default ()."""
    advertise: str | None
    """The ``"host:port"`` other members should dial. Default None: the listen address."""
    ssl_server: ssl.SSLContext | None
    """TLS context for accepted member connections. Default None: plain TCP."""
    ssl_client: ssl.SSLContext | None
    """TLS context for dialled member connections. Default None: plain TCP."""
    heartbeat_interval: Seconds | None
    """Ping period on every member connection. Default 1 s."""
    heartbeat_timeout: Seconds | None
    """A member silent this long is declared down; at least twice ``heartbeat_interval``. Default 5 s."""
    anti_entropy_interval: Seconds | None
    """How often each member is asked for what this node lacks (from 9 nodes on: one member per round,
    by a summary first). Default 30 s."""
    discovery_interval: Seconds | None
    """How often ``discovery`` names are resolved again. Default 30 s."""
    sync_chunk_entries: int | None
    """Most entries in one sync message. Default 500."""
    sync_chunk_bytes: int | None
    """Most bytes in one sync message. Default 1 MiB."""
    send_buffer: int | None
    """Bytes queued for one member before it is disconnected as too slow. Default 64 MiB."""
    compression_threshold: int | Literal[False] | None
    """Values at least this many bytes are zlib-compressed on the wire; ``False`` disables.
    Default 256 KiB."""
    log_retention: Seconds | None
    """How long the change log is kept for a member that stopped reporting; at most
    ``tombstone_ttl``. Default 1 day."""
    quarantine: bool | None
    """Refuse to sync with a member unreachable longer than ``tombstone_ttl``. Default True."""
    connect_timeout: Seconds | None
    """Timeout of one dial to a member. Default 5 s."""
    reconnect_max: Seconds | None
    """Longest pause between reconnection attempts. Default 2 s."""


class AsyncOptions(Options, total=False):
    """The options of :class:`ekv.AsyncEKV`: those of :class:`Options` and ``workers``."""

    workers: int
    """Threads that run the storage calls (1-256). Default 4."""


DEFAULTS: dict[str, Any] = {
    "shards": 8,
    "tombstone_ttl": 7 * 24 * 3600,
    "gc_interval": 300,
    "log": "info",
    "durability": "normal",
    "codec": "pickle",
    "clock": None,
    "max_value_size": 256 * 1024 * 1024,
    "subscriber_queue": 10_000,
    "allow_stale_startup": False,
    "takeover_interval": 0.2,
    "consistent_prefixes": (),
    "cluster_size": None,
    "role": "voter",
    "consistent_timeout": 5.0,
    "listen": None,
    "peers": (),
    "cookie": None,
    "discovery": (),
    "advertise": None,
    "ssl_server": None,
    "ssl_client": None,
    "heartbeat_interval": 1.0,
    "heartbeat_timeout": 5.0,
    "anti_entropy_interval": 30,
    "discovery_interval": 30,
    "sync_chunk_entries": 500,
    "sync_chunk_bytes": 1 << 20,
    "send_buffer": 64 << 20,
    "compression_threshold": 256 * 1024,
    "log_retention": 86_400,
    "quarantine": True,
    "connect_timeout": 5.0,
    "reconnect_max": 2.0,
    "workers": 4,
}
"""The default of every option (durations in seconds, sizes in bytes); ``workers`` is AsyncEKV's."""

CLUSTER_OPTIONS: tuple[str, ...] = tuple(Options.__annotations__)[tuple(Options.__annotations__).index("listen") :]
"""The replication options: ``listen`` and every option after it in :class:`Options`."""
STORE_OPTIONS: tuple[str, ...] = tuple(name for name in Options.__annotations__ if name not in CLUSTER_OPTIONS)
"""The options of the store itself, given to every instance."""
