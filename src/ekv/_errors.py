"""The exception hierarchy of ekv.

Every error ekv raises on purpose derives from :class:`ekv.Error`, so one ``except ekv.Error``
catches them all. Errors caused by bad arguments also derive from the built-in ``ValueError`` or
``TypeError`` so that generic code that expects those keeps working::

    Error
    ├── InvalidArgument (ValueError)        bad key, ttl, prefix, option value ...
    │   ├── ConfigError                     an option given to EKV(...) is invalid (or another codec)
    │   │   └── UnknownOptionError (TypeError)  an option EKV(...) does not have (a misspelling)
    │   ├── ValueTooLargeError              encoded value above the documented maximum
    │   └── ConsistentKeyError              a plain write to a consistent key, or a linearizable
    │                                       operation on a key that is not one
    ├── InvalidArgumentType (TypeError,     an argument of the wrong type
    │                        ValueError)
    ├── CodecError
    │   ├── EncodeError                     the codec could not encode a value (nothing written)
    │   └── DecodeError                     a stored value could not be decoded
    ├── ClosedError                         the store (or its subscription) was closed
    │   └── SubscriptionClosed              the subscription was closed (unsubscribe, close)
    │       └── SubscriptionOverflow        the subscriber fell too far behind; events were lost
    ├── Timeout (TimeoutError)              Subscription.get(timeout=...) saw no event in time
    ├── StorageError                        SQLite or the file system failed
    │   ├── DataDirError                    data_dir missing, not a directory, not writable
    │   ├── DiskFullError                   no space left; the write was not applied
    │   ├── CorruptionError                 a corrupt or foreign file in data_dir (named)
    │   │   └── ChecksumError               a stored value failed its checksum (bit rot)
    │   ├── ShardCountError                 shards= differs from what data_dir was created with
    │   ├── InstanceNameError               name= differs from what data_dir was created with
    │   ├── LockedError                     another process (or EKV object) has data_dir open
    │   ├── SQLiteVersionError              the SQLite library has a known corruption bug
    │   └── StaleDataError                  reserved (stale data is moved aside, not raised)
    ├── ConsistencyError                    a linearizable operation did not succeed (SPEC 13)
    │   ├── ConflictError                   its condition did not hold: definitely not applied
    │   ├── NoQuorumError                   too few voters in time: definitely not applied
    │   ├── UnconfirmedError                may or may not have been applied
    │   └── LockError                       a lock was not acquired in time, or was lost
    ├── ClusterError                        the cluster layer
    │   ├── ListenError (OSError)           the listen address cannot be bound (in use, not local)
    │   ├── ProtocolError                   a peer sent bytes that are not valid ekv protocol
    │   └── AuthenticationError             a peer failed the cookie challenge (or we did)
    └── InternalError                       a broken invariant: a bug in ekv, please report it

Operating errors (disk full, locked directory, closed store) are typed so callers can handle them;
programmer errors (wrong types, bad values) raise early and write nothing.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ChecksumError",
    "ClosedError",
    "ClusterError",
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
    "InstanceNameError",
    "InternalError",
    "InvalidArgument",
    "InvalidArgumentType",
    "ListenError",
    "LockError",
    "LockedError",
    "NoQuorumError",
    "ProtocolError",
    "SQLiteVersionError",
    "ShardCountError",
    "StaleDataError",
    "StorageError",
    "SubscriptionClosed",
    "SubscriptionOverflow",
    "Timeout",
    "UnconfirmedError",
    "UnknownOptionError",
    "ValueTooLargeError",
]


class Error(Exception):
    """Base class of every error raised by ekv."""


class InvalidArgument(Error, ValueError):
    """An argument has the right type but an invalid value (empty key, ttl <= 0, ...)."""


class ConfigError(InvalidArgument):
    """An option passed to ``EKV(...)`` / ``AsyncEKV(...)`` is invalid, or ``codec=`` is not the
    codec recorded in ``data_dir`` when it was created (nothing is written then either)."""


class UnknownOptionError(ConfigError, TypeError):
    """A keyword option that ``EKV(...)`` / ``AsyncEKV(...)`` does not have (a misspelling); the
    message names it and the option it probably meant.

    It is a ``TypeError`` too, which is what Python raises for an unexpected keyword argument."""


class ValueTooLargeError(InvalidArgument):
    """The encoded value is larger than ``max_value_size``; nothing was written."""


class InvalidArgumentType(Error, TypeError, ValueError):
    """An argument has the wrong type (a key that is not a ``str``, a ttl that is a string, ...).

    It is a ``TypeError`` and also a ``ValueError``, so code that treats every bad input as a
    ``ValueError`` keeps working."""


class CodecError(Error):
    """Base class for value encoding and decoding failures."""


class EncodeError(CodecError):
    """The codec could not encode the value; nothing was written. ``__cause__`` holds the
    codec's own exception."""


class DecodeError(CodecError):
    """A stored value could not be decoded by the configured codec; the message names its key."""


class ClosedError(Error):
    """The store was closed; only ``close()`` may still be called."""


class SubscriptionClosed(ClosedError):
    """The subscription was closed (``sub.close()``, ``unsubscribe`` or closing the store)."""


class SubscriptionOverflow(SubscriptionClosed):
    """The subscriber's bounded queue overflowed with ``overflow="error"``.

    The events that were already queued were delivered first; the events after the overflow
    point were not. Re-subscribe and re-read the state (``scan``) to recover.
    """


class Timeout(Error, TimeoutError):
    """No event arrived within the timeout given to ``Subscription.get``."""


class StorageError(Error):
    """SQLite or the file system failed. The write that raised it was not applied."""


class DataDirError(StorageError):
    """``data_dir`` is missing, is not a directory or cannot be written."""


class DiskFullError(StorageError):
    """The disk is full. The write was not applied; the store stays consistent and writes work
    again once space is freed."""


class CorruptionError(StorageError):
    """A file in ``data_dir`` is corrupt or is not an ekv file. The message names the file;
    ekv never overwrites such a file."""


class ChecksumError(CorruptionError):
    """The stored version of a key failed its checksum: the disk changed bytes under SQLite
    (which keeps no checksums of its own). ekv refuses to serve it. In a cluster the node asks
    its members for the key again and the error stops once a copy arrives; writing or deleting
    the key replaces the damaged version at once.

    Attributes:
        key: the key whose stored version is damaged.
    """

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class ShardCountError(StorageError, ConfigError):
    """``shards=`` differs from the shard count recorded in ``data_dir``. The shard count of a
    data directory is fixed when it is created. Also a :class:`ConfigError`: a process attaching
    to a data directory with options that conflict with it (SPEC section 12)."""


class InstanceNameError(StorageError, ConfigError):
    """``name=`` differs from the instance name recorded in ``data_dir`` (also a
    :class:`ConfigError`, like :class:`ShardCountError`)."""


class LockedError(StorageError):
    """``data_dir`` is held exclusively: by an older ekv (which allowed one open per directory),
    or while stale files are being moved aside. Any number of opens of this ekv share a
    data directory (SPEC section 12).

    Attributes:
        owner_pid: the pid recorded by the owner, or ``None`` if it could not be read.
    """

    def __init__(self, message: str, owner_pid: int | None = None) -> None:
        super().__init__(message)
        self.owner_pid = owner_pid


class SQLiteVersionError(StorageError):
    """The SQLite library in use has a known data-corruption bug (the WAL-reset race fixed in
    3.51.3); ekv refuses to run on it."""


class StaleDataError(StorageError):
    """Reserved for stale data directories. ekv does not raise it today: a clustered data
    directory last active longer ago than ``tombstone_ttl`` is moved aside and rebuilt instead
    (see the operators guide), because refusing to start helps nobody at 3 a.m."""


class ConsistentKeyError(InvalidArgument):
    """Raised before anything is written: a plain ``put``/``delete`` (or batch, ``touch``, mapping
    write) on a key under ``consistent_prefixes``, which only linearizable operations may
    write; or a linearizable operation on a key that is not under them. No key is ever
    written both ways (SPEC 13)."""


class ConsistencyError(Error):
    """Base class of the outcomes of a linearizable operation other than success."""


class ConflictError(ConsistencyError):
    """The operation's condition did not hold (``if_absent``, ``if_version``, a lock held by
    another): it was definitely not applied.

    Attributes:
        current: the key's current ``(value, Version)`` as the operation found it, or None if
            the key is absent (never written, deleted or expired).
    """

    def __init__(self, message: str, current: tuple[object, object] | None = None) -> None:
        super().__init__(message)
        self.current = current


class NoQuorumError(ConsistencyError):
    """Not enough voters answered within the operation's ``timeout``: definitely not applied."""


class UnconfirmedError(ConsistencyError):
    """The operation may or may not have been applied (its accept went out and the answers did
    not come back in time). A later consistent read (``get(key, consistent=True)``) tells."""


class LockError(ConsistencyError):
    """A lock was not acquired within ``timeout``, or a renewal found it held by another (the
    ``ttl`` ran out first)."""


class ClusterError(Error):
    """Base class for errors of the cluster layer (transport, membership, replication)."""


class ListenError(ClusterError, OSError):
    """The node cannot listen on its ``listen`` address: the port is in use, the host is not an
    address of this machine, or the name does not resolve. Raised by ``EKV(...)`` before anything
    is created or changed on disk. It is also an ``OSError`` (what was raised before), with the
    system's ``errno``.

    Attributes:
        address: the ``"host:port"`` that could not be bound.
        reason: why, as the operating system put it (e.g. ``"address already in use"``).
    """

    def __init__(self, message: str, address: str = "", reason: str = "", errno: int | None = None) -> None:
        super().__init__(message)
        self.address = address
        self.reason = reason
        self.errno = errno


class ProtocolError(ClusterError):
    """A peer sent bytes that are not valid ekv protocol (garbage, an oversized or truncated
    frame, an unknown version or message). The connection is closed; no data changes."""


class AuthenticationError(ClusterError):
    """A peer did not prove it knows the cluster cookie (or proved a different one)."""


class InternalError(Error):
    """A broken internal invariant: a bug in ekv. Please report it with the traceback."""
