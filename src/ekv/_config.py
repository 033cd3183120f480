"""Options of an ekv instance, validated once at construction.

Every option given to ``EKV(...)`` / ``AsyncEKV(...)`` lands in a frozen :class:`Config`. Each
field is checked here with a message that names the option, so no bad value reaches the storage
or the background threads. Durations are kept in nanoseconds (``*_ns``).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from ekv._codec import Codec, resolve_codec
from ekv._core.clock import SystemClock, WallClock
from ekv._core.durations import NS_PER_S, duration_ns
from ekv._errors import ConfigError, InvalidArgumentType, UnknownOptionError
from ekv._options import CLUSTER_OPTIONS, DEFAULTS, STORE_OPTIONS

__all__ = ["Config", "Durability", "LogLevel", "OverflowPolicy"]

Durability = Literal["normal", "full"]
LogLevel = Literal["info", "verbose", False]
OverflowPolicy = Literal["error", "drop_oldest", "drop_newest"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")

DEFAULT_SHARDS: int = DEFAULTS["shards"]
DEFAULT_TOMBSTONE_TTL_S: int = DEFAULTS["tombstone_ttl"]
DEFAULT_GC_INTERVAL_S: int = DEFAULTS["gc_interval"]
DEFAULT_MAX_VALUE_SIZE: int = DEFAULTS["max_value_size"]
MAX_VALUE_SIZE_LIMIT = 1_000_000_000 - 65_536  # SQLite's default SQLITE_MAX_LENGTH, minus slack
DEFAULT_SUBSCRIBER_QUEUE: int = DEFAULTS["subscriber_queue"]
OVERFLOW_POLICIES: tuple[str, ...] = ("error", "drop_oldest", "drop_newest")
_MAX_CLOCK_NS = 2**62  # leaves room for timestamp + duration sums inside SQLite's int64


def _seconds(value: object, option: str) -> int:
    try:
        return duration_ns(value, option, error=ConfigError)
    except InvalidArgumentType as exc:
        raise ConfigError(str(exc)) from None


def check_positive_int(value: object, option: str, *, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{option} must be an int, not {type(value).__name__}: {value!r:.80}")
    if value < 1:
        raise ConfigError(f"{option} must be at least 1, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{option} must be at most {maximum}, got {value}")
    return value


def _check_clock(clock: object) -> None:
    """A clock must answer now_ns() with an int of nanoseconds; ask it once here, so a clock that
    returns None, a float or seconds fails at construction instead of inside the first put."""
    now_ns = getattr(clock, "now_ns", None)
    if not callable(now_ns):
        raise ConfigError(f"clock must have a now_ns() method, got {clock!r:.80}")
    try:
        now = now_ns()
    except Exception as exc:
        raise ConfigError(f"clock.now_ns() of {clock!r:.80} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(now, bool) or not isinstance(now, int) or not 0 <= now < _MAX_CLOCK_NS:
        raise ConfigError(
            f"clock.now_ns() must return an int of nanoseconds since the epoch (0 <= n < 2**62), "
            f"but {clock!r:.80} returned {now!r:.80}"
        )


def check_overflow(value: object) -> OverflowPolicy:
    if value not in OVERFLOW_POLICIES:
        raise ConfigError(f"overflow must be one of {', '.join(map(repr, OVERFLOW_POLICIES))}, got {value!r}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterOptions:
    """Validated cluster options (see ``EKV`` for their meaning)."""

    listen: tuple[str, int] | None
    advertise: str | None
    peers: tuple[str, ...]
    discovery: tuple[str, ...]
    discovery_interval_ns: int
    cookie: bytes
    ssl_server: Any
    ssl_client: Any
    heartbeat_interval_ns: int
    heartbeat_timeout_ns: int
    anti_entropy_interval_ns: int
    sync_chunk_entries: int
    sync_chunk_bytes: int
    send_buffer: int
    compression_threshold: int | None
    log_retention_ns: int
    quarantine: bool
    max_frame_size: int
    connect_timeout_ns: int
    reconnect_max_ns: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The validated options of one ekv instance. Build it with :meth:`Config.create`."""

    name: str
    """Instance name; only same-named instances replicate with each other."""
    data_dir: Path
    """Directory holding the shard files; created if missing."""
    shards: int = DEFAULT_SHARDS
    """Number of SQLite shard files; fixed when the data directory is created."""
    tombstone_ttl_ns: int = DEFAULT_TOMBSTONE_TTL_S * NS_PER_S
    """How long tombstones (and expired entries) are kept before they are purged."""
    gc_interval_ns: int = DEFAULT_GC_INTERVAL_S * NS_PER_S
    """Period of the garbage collector (TTL expiry, tombstone purge, change-log truncation)."""
    log: LogLevel = "info"
    """``"info"``: operational messages; ``"verbose"``: per-shard detail; ``False``: silent."""
    durability: Durability = "normal"
    """``"normal"``: survives a process crash; ``"full"``: also survives power loss (fsync)."""
    codec: Codec = field(default_factory=lambda: resolve_codec("pickle"))
    """How values are encoded to bytes."""
    clock: WallClock = field(default_factory=SystemClock)
    """The wall clock (injectable for tests and simulations)."""
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE
    """Largest encoded value accepted, in bytes."""
    subscriber_queue: int = DEFAULT_SUBSCRIBER_QUEUE
    """Default bound, in events, of each subscription's queue."""
    allow_stale_startup: bool = False
    """Trust a data directory older than ``tombstone_ttl`` (whole-cluster restores)."""
    takeover_interval_ns: int = NS_PER_S // 5
    """How often an attached process checks whether the node process is gone (SPEC section 12)."""
    consistent_prefixes: tuple[str, ...] = ()
    """Keys under these prefixes are linearizable-only (SPEC 13)."""
    cluster_size: int | None = None
    """Voters of linearizable operations; None: 1 without a cluster, unset with one."""
    role: str = "voter"
    """``"voter"`` or ``"observer"``."""
    consistent_timeout_ns: int = 5 * NS_PER_S
    """Default timeout of a linearizable operation."""
    cluster: ClusterOptions | None = None
    """Replication options; None for a single embedded node."""

    @property
    def voters(self) -> int | None:
        """The number of voters in effect: ``cluster_size``, or 1 for a node without a cluster
        (None: a cluster that did not set it, which refuses linearizable operations)."""
        if self.cluster_size is None and self.cluster is None:
            return 1
        return self.cluster_size

    @classmethod
    def create(cls, name: object, data_dir: object, **options: Any) -> Config:
        """Validate every option, raising :class:`~ekv.ConfigError` naming the bad one.

        ``options`` are those of :class:`ekv._options.Options`; an absent one takes its value
        from :data:`ekv._options.DEFAULTS`.
        """
        _check_names(options)
        given = {**{key: DEFAULTS[key] for key in STORE_OPTIONS}, **options}
        shards: object = given["shards"]
        tombstone_ttl: object = given["tombstone_ttl"]
        gc_interval: object = given["gc_interval"]
        log: object = given["log"]
        durability: object = given["durability"]
        clock: object = given["clock"]
        max_value_size: object = given["max_value_size"]
        subscriber_queue: object = given["subscriber_queue"]
        allow_stale_startup: object = given["allow_stale_startup"]
        takeover_ns = _seconds(given["takeover_interval"], "takeover_interval")
        cluster = {key: value for key, value in options.items() if key in CLUSTER_OPTIONS}
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(
                "name must be 1-64 characters of letters, digits, '_', '.' or '-', starting with a "
                f"letter or digit; got {name!r:.80}"
            )
        if isinstance(data_dir, (str, os.PathLike)):
            path = Path(os.fsdecode(data_dir))
            if not str(path):
                raise ConfigError("data_dir must not be empty")
        else:
            raise ConfigError(f"data_dir must be a str or a path, not {type(data_dir).__name__}")
        if str(data_dir) == "":
            raise ConfigError("data_dir must not be empty")
        if "\x00" in str(path):
            raise ConfigError(f"data_dir must not contain a NUL character: {str(path)!r:.80}")
        try:
            str(path).encode()
        except UnicodeEncodeError:
            raise ConfigError(f"data_dir {str(path)!r:.80} is not valid UTF-8 (SQLite file names are UTF-8)") from None
        shard_count = check_positive_int(shards, "shards", maximum=1024)
        ttl_ns = _seconds(tombstone_ttl, "tombstone_ttl")
        gc_ns = _seconds(gc_interval, "gc_interval")
        if gc_ns >= ttl_ns:
            raise ConfigError(
                f"gc_interval ({gc_ns / NS_PER_S:g} s) must be shorter than tombstone_ttl "
                f"({ttl_ns / NS_PER_S:g} s); a hundred times shorter is a good rule"
            )
        if log is True:
            log = "info"
        if log not in ("info", "verbose", False) or (log is not False and not isinstance(log, str)):  # 0 == False
            raise ConfigError(f"log must be 'info', 'verbose' or False, got {log!r}")
        if durability not in ("normal", "full"):
            raise ConfigError(f"durability must be 'normal' or 'full', got {durability!r}")
        wall = SystemClock() if clock is None else clock
        _check_clock(wall)
        max_value = check_positive_int(max_value_size, "max_value_size", maximum=MAX_VALUE_SIZE_LIMIT)
        queue = check_positive_int(subscriber_queue, "subscriber_queue")
        if not isinstance(allow_stale_startup, bool):
            raise ConfigError(f"allow_stale_startup must be a bool, got {allow_stale_startup!r}")
        cluster_options = _cluster_options(cluster, ttl_ns=ttl_ns, max_value=max_value)
        prefixes, cluster_size, role = _consistency(given, clustered=cluster_options is not None)
        return cls(
            name=name,
            data_dir=path,
            shards=shard_count,
            tombstone_ttl_ns=ttl_ns,
            gc_interval_ns=gc_ns,
            log=log,
            durability=durability,
            codec=resolve_codec(given["codec"]),
            clock=wall,  # type: ignore[arg-type]
            max_value_size=max_value,
            subscriber_queue=queue,
            allow_stale_startup=allow_stale_startup,
            takeover_interval_ns=takeover_ns,
            consistent_prefixes=prefixes,
            cluster_size=cluster_size,
            role=role,
            consistent_timeout_ns=_seconds(given["consistent_timeout"], "consistent_timeout"),
            cluster=cluster_options,
        )

    def summary(self) -> dict[str, Any]:
        """The options as plain values, for ``info()``."""
        return {
            "shards": self.shards,
            "tombstone_ttl": timedelta(microseconds=self.tombstone_ttl_ns // 1000).total_seconds(),
            "gc_interval": timedelta(microseconds=self.gc_interval_ns // 1000).total_seconds(),
            "durability": self.durability,
            "log": self.log,
            "max_value_size": self.max_value_size,
            "subscriber_queue": self.subscriber_queue,
            "takeover_interval": self.takeover_interval_ns / NS_PER_S,
            "consistent_prefixes": list(self.consistent_prefixes),
            "cluster_size": self.cluster_size,
            "role": self.role,
            "consistent_timeout": self.consistent_timeout_ns / NS_PER_S,
        }


def _consistency(given: dict[str, Any], *, clustered: bool) -> tuple[tuple[str, ...], int | None, str]:
    """``consistent_prefixes``, ``cluster_size`` and ``role``, checked against each other."""
    prefixes = given["consistent_prefixes"]
    if isinstance(prefixes, str) or not isinstance(prefixes, (list, tuple, set, frozenset)):
        raise ConfigError(f"consistent_prefixes must be a list of key prefixes, not {type(prefixes).__name__}")
    checked = []
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix or "\x00" in prefix:
            raise ConfigError(f"consistent_prefixes entries must be non-empty str prefixes, got {prefix!r:.80}")
        checked.append(prefix)
    size = given["cluster_size"]
    if size is not None:
        size = check_positive_int(size, "cluster_size", maximum=64)
        if size > 1 and not clustered:
            raise ConfigError(f"cluster_size={size} needs a cluster: give listen=, peers= or discovery= as well")
    role = given["role"]
    if role not in ("voter", "observer"):
        raise ConfigError(f"role must be 'voter' or 'observer', got {role!r}")
    if role == "observer" and not clustered:
        raise ConfigError("role='observer' needs a cluster: give listen=, peers= or discovery= as well")
    return tuple(sorted(set(checked))), size, role


CLUSTER_DEFAULTS: dict[str, Any] = {key: DEFAULTS[key] for key in CLUSTER_OPTIONS}


def _check_names(options: dict[str, Any]) -> None:
    """A misspelt option is an error naming it (and the option it probably meant), never ignored."""
    for key in options:
        if key not in STORE_OPTIONS and key not in CLUSTER_OPTIONS:
            close = difflib.get_close_matches(key, [*STORE_OPTIONS, *CLUSTER_OPTIONS], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownOptionError(f"unknown option {key!r}{hint}")


def _cookie_bytes(cookie: object) -> bytes:
    """The cookie as the handshake uses it: bytes, a str encoded as UTF-8, or b"" for none."""
    if cookie is None:
        return b""
    if isinstance(cookie, str):
        return cookie.encode()
    if isinstance(cookie, bytes):
        return cookie
    raise ConfigError(f"cookie must be a str or bytes, not {type(cookie).__name__}")


def _cluster_options(given: dict[str, Any], *, ttl_ns: int, max_value: int) -> ClusterOptions | None:
    opts = {**CLUSTER_DEFAULTS, **{k: v for k, v in given.items() if v is not None or k == "listen"}}
    from ekv._core.addresses import format_address, is_loopback, parse_address

    listen = None if opts["listen"] is None else parse_address(opts["listen"], "listen")
    peers = opts["peers"]
    if isinstance(peers, str):
        peers = [peers]
    if not isinstance(peers, (list, tuple)):
        raise ConfigError(f"peers must be a list of 'host:port' strings, not {type(peers).__name__}")
    peer_list = tuple(format_address(*parse_address(p, "peers entry")) for p in peers)
    discovery = opts["discovery"]
    if isinstance(discovery, str):
        discovery = [discovery]
    if not isinstance(discovery, (list, tuple)):
        raise ConfigError("discovery must be a 'dns-name:port' string or a list of them")
    discovery_list = tuple(format_address(*parse_address(d, "discovery")) for d in discovery)
    if listen is None and not peer_list and not discovery_list:
        for key in given:
            if given[key] is not None and key not in ("listen", "peers", "discovery"):
                raise ConfigError(f"{key} is a cluster option: give listen=, peers= or discovery= as well")
        return None
    cookie_bytes = _cookie_bytes(opts["cookie"])
    if listen is not None and not cookie_bytes and not is_loopback(listen[0]):
        raise ConfigError(
            f"listening on {format_address(*listen)} (not loopback) requires a cookie: "
            "pass cookie=... (a long random secret shared by every member)"
        )
    advertise = opts["advertise"]
    if advertise is not None:
        advertise = format_address(*parse_address(advertise, "advertise"))
    import ssl as _ssl

    for key in ("ssl_server", "ssl_client"):
        if opts[key] is not None and not isinstance(opts[key], _ssl.SSLContext):
            raise ConfigError(f"{key} must be an ssl.SSLContext, not {type(opts[key]).__name__}")
    heartbeat = _seconds(opts["heartbeat_interval"], "heartbeat_interval")
    timeout = _seconds(opts["heartbeat_timeout"], "heartbeat_timeout")
    if timeout < 2 * heartbeat:
        raise ConfigError("heartbeat_timeout must be at least twice heartbeat_interval")
    threshold = opts["compression_threshold"]
    if threshold is not False:
        threshold = check_positive_int(threshold, "compression_threshold")
    retention = _seconds(opts["log_retention"], "log_retention")
    if retention > ttl_ns:
        raise ConfigError("log_retention must not exceed tombstone_ttl")
    if not isinstance(opts["quarantine"], bool):
        raise ConfigError("quarantine must be a bool")
    return ClusterOptions(
        listen=listen,
        advertise=advertise,
        peers=peer_list,
        discovery=discovery_list,
        discovery_interval_ns=_seconds(opts["discovery_interval"], "discovery_interval"),
        cookie=cookie_bytes,
        ssl_server=opts["ssl_server"],
        ssl_client=opts["ssl_client"],
        heartbeat_interval_ns=heartbeat,
        heartbeat_timeout_ns=timeout,
        anti_entropy_interval_ns=_seconds(opts["anti_entropy_interval"], "anti_entropy_interval"),
        sync_chunk_entries=check_positive_int(opts["sync_chunk_entries"], "sync_chunk_entries"),
        sync_chunk_bytes=check_positive_int(opts["sync_chunk_bytes"], "sync_chunk_bytes"),
        send_buffer=check_positive_int(opts["send_buffer"], "send_buffer"),
        compression_threshold=None if threshold is False else threshold,
        log_retention_ns=retention,
        quarantine=opts["quarantine"],
        max_frame_size=max_value + (2 << 20),
        connect_timeout_ns=_seconds(opts["connect_timeout"], "connect_timeout"),
        reconnect_max_ns=_seconds(opts["reconnect_max"], "reconnect_max"),
    )
