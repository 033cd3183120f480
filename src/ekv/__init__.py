"""ekv: an embedded, durable, eventually consistent key-value store.

Layout (imports only go downward):

* ``_core``     pure, deterministic rules: versions and LWW, the hybrid clock, keys and shards,
                durations. No I/O.
* ``_storage``  SQLite shard files: schema, group commit, readers, the data directory.
* ``_node``     the running node: subscriptions, GC, info.
* ``_api``      the two facades, :class:`EKV` (threads) and :class:`AsyncEKV` (asyncio).
* ``testing``   public test helpers: a fake clock and GC/inspection hooks.
"""

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
    ProtocolError,
    ShardCountError,
    SQLiteVersionError,
    StaleDataError,
    StorageError,
    SubscriptionClosed,
    SubscriptionOverflow,
    Timeout,
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
    "LockedError",
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
    "ValueTooLargeError",
    "Version",
    "WallClock",
    "__version__",
    "format_metrics",
]

import logging as _logging

_logging.getLogger("ekv").addHandler(_logging.NullHandler())
