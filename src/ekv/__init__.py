"""ekv: an embedded, durable, eventually consistent key-value store.

Layout (imports only go downward):

* ``_core``     pure, deterministic rules: versions and LWW, the hybrid clock, keys and shards,
                durations. No I/O.
* ``_storage``  SQLite shard files: schema, group commit, readers, the data directory.
* ``_node``     the running node: subscriptions, GC, info.
* ``_api``      the two facades, :class:`EKV` (threads) and :class:`AsyncEKV` (asyncio).
* ``testing``   public test helpers: a fake clock and GC/inspection hooks.
"""

try:  # the data directory's lock (ekv._storage.datadir) needs POSIX file locks
    import fcntl as _fcntl  # noqa: F401
except ImportError as _exc:
    # A plain ImportError, not an ekv.Error: nothing of ekv could be imported to catch one.
    raise ImportError(
        "ekv needs a POSIX system (Linux or macOS): its data-directory lock uses fcntl, which this platform "
        "does not have. Windows is not supported; use WSL (Windows Subsystem for Linux)."
    ) from _exc

from ekv._api.aio import AsyncEKV
from ekv._api.sync import EKV
from ekv._codec import Codec, JsonCodec, PickleCodec
from ekv._core.clock import SystemClock, WallClock
from ekv._errors import (
    AuthenticationError,
    ChecksumError,
    ClosedError,
    ClusterError,
    CodecError,
    ConfigError,
    ConflictError,
    ConsistencyError,
    ConsistentKeyError,
    CorruptionError,
    DataDirError,
    DecodeError,
    DiskFullError,
    EncodeError,
    Error,
    InstanceNameError,
    InternalError,
    InvalidArgument,
    InvalidArgumentType,
    ListenError,
    LockedError,
    LockError,
    NoQuorumError,
    ProtocolError,
    ShardCountError,
    SQLiteVersionError,
    StaleDataError,
    StorageError,
    SubscriptionClosed,
    SubscriptionOverflow,
    Timeout,
    UnconfirmedError,
    UnknownOptionError,
    ValueTooLargeError,
)
from ekv._info import format_metrics
from ekv._model import Event, Version
from ekv._node.subscriptions import AsyncSubscription, CallbackSubscription, Subscription
from ekv._version import __version__

__all__ = [
    "EKV",
    "AsyncEKV",
    "AsyncSubscription",
    "AuthenticationError",
    "CallbackSubscription",
    "ChecksumError",
    "ClosedError",
    "ClusterError",
    "Codec",
    "CodecError",
    "ConfigError",
    "ConflictError",
    "ConsistencyError",
    "ConsistentKeyError",
    "CorruptionError",
    "DataDirError",
    "DecodeError",
    "DiskFullError",
    "EncodeError",
    "Error",
    "Event",
    "InstanceNameError",
    "InternalError",
    "InvalidArgument",
    "InvalidArgumentType",
    "JsonCodec",
    "ListenError",
    "LockError",
    "LockedError",
    "NoQuorumError",
    "PickleCodec",
    "ProtocolError",
    "SQLiteVersionError",
    "ShardCountError",
    "StaleDataError",
    "StorageError",
    "Subscription",
    "SubscriptionClosed",
    "SubscriptionOverflow",
    "SystemClock",
    "Timeout",
    "UnconfirmedError",
    "UnknownOptionError",
    "ValueTooLargeError",
    "Version",
    "WallClock",
    "__version__",
    "format_metrics",
]

import logging as _logging

_logging.getLogger("ekv").addHandler(_logging.NullHandler())
