"""Bad input and failure behaviour on a single node: the rows of SPEC section 9 that do not need
a cluster (the "process killed at any moment" row is covered by test_crash.py).

Every test checks two things: the specific error (type, and a message naming what is wrong), and
that the failure changed nothing: no entry and no change-log row written, no file on disk
modified.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pickle
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pytest

import ekv
from ekv._core.keys import MAX_KEY_BYTES
from ekv._storage.sqlite import check_sqlite_version, version_is_safe
from ekv.testing import entries, wait_until

DEADLINE_S = 30.0  # generous upper bound for anything we poll for; never a fixed sleep

Snapshot = dict[str, Any]


def snapshot(kv: ekv.EKV) -> Snapshot:
    """What a write would change: every stored entry (tombstones too) and the change-log size."""
    info = kv.info()
    return {
        "entries": sorted((e.key, e.version, e.expires_at_ns, e.value) for e in entries(kv)),
        "log": [shard["log"]["entries"] for shard in info["shards"]],
        "seq": [shard["local_seq"] for shard in info["shards"]],
    }


def files_of(directory: Path) -> dict[str, tuple[int, int, str]]:
    """name -> (size, mtime_ns, sha256) of every file under ``directory``."""
    listing = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            st = path.stat()
            listing[str(path.relative_to(directory))] = (
                st.st_size,
                st.st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return listing


def assert_unchanged(before: dict[str, tuple[int, int, str]], after: dict[str, tuple[int, int, str]]) -> None:
    """Same names, sizes, mtimes and contents. The LOCK file is exempt from the mtime check only:
    taking the lock rewrites the owner's pid into it (same bytes), which is how a later
    LockedError can name the owner."""
    assert sorted(after) == sorted(before)
    for name, (size, mtime, digest) in before.items():
        if name == "LOCK":
            assert (after[name][0], after[name][2]) == (size, digest), name
        else:
            assert after[name] == (size, mtime, digest), name


def make_store(path: Path, keys: int = 40, **options: Any) -> dict[str, Any]:
    """Create a closed store holding ``keys`` keys spread over every shard; return its contents."""
    options.setdefault("shards", 4)
    contents = {f"key/{i}": {"n": i} for i in range(keys)}
    with ekv.EKV("store", path, log=False, **options) as kv:
        for key, value in contents.items():
            kv.put(key, value)
        kv.delete("gone")
    return contents


# -- keys ----------------------------------------------------------------------------------------

BAD_KEYS = [
    pytest.param(1, TypeError, id="int"),
    pytest.param(b"user/1", TypeError, id="bytes"),
    pytest.param(None, TypeError, id="None"),
    pytest.param(("a",), TypeError, id="tuple"),
    pytest.param(1.5, TypeError, id="float"),
    pytest.param("", ValueError, id="empty"),
    pytest.param("a\x00b", ValueError, id="nul-inside"),
    pytest.param("\x00", ValueError, id="nul-only"),
    pytest.param("user/\x00", ValueError, id="nul-last"),
    pytest.param("\ud800x", ValueError, id="lone-surrogate"),
    pytest.param("k" * (MAX_KEY_BYTES + 1), ValueError, id="too-long"),
]

KEY_CALLS = [
    pytest.param(lambda kv, key: kv.put(key, "v"), id="put"),
    pytest.param(lambda kv, key: kv.put(key, "v", ttl=10), id="put-ttl"),
    pytest.param(lambda kv, key: kv.delete(key), id="delete"),
    pytest.param(lambda kv, key: kv.get(key), id="get"),
    pytest.param(lambda kv, key: kv.get(key, "default"), id="get-default"),
    pytest.param(lambda kv, key: kv.lookup(key), id="lookup"),
]


@pytest.mark.parametrize("call", KEY_CALLS)
@pytest.mark.parametrize(("key", "error"), BAD_KEYS)
def test_bad_key_is_refused_naming_the_key(
    kv: ekv.EKV, call: Callable[[ekv.EKV, Any], Any], key: Any, error: type[Exception]
) -> None:
    kv.put("existing", 1)
    before = snapshot(kv)
    with pytest.raises(error) as info:
        call(kv, key)
    exc = info.value
    assert isinstance(exc, ekv.InvalidArgumentType if error is TypeError else ekv.InvalidArgument)
    message = str(exc)
    assert "key" in message
    if key == "":
        assert "empty" in message
    elif isinstance(key, str):
        assert repr(key[:30])[:-1] in message  # the key itself, as repr (maybe shortened)
    else:
        assert type(key).__name__ in message and repr(key) in message
    assert snapshot(kv) == before


def test_bad_keys_leave_nothing_on_disk(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv()
    for key in [1, b"x", None, "", "a\x00", "\udfff"]:
        with pytest.raises((TypeError, ValueError)):
            kv.put(key, "v")
        with pytest.raises((TypeError, ValueError)):
            kv.delete(key)
    kv.close()
    kv = open_kv()
    assert list(entries(kv)) == []
    assert all(shard["log"]["entries"] == 0 for shard in kv.info()["shards"])


def test_bad_key_is_reported_before_the_value_is_encoded(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(codec="json")
    with pytest.raises(TypeError, match="key"):
        kv.put(7, {1, 2})


# -- values the codec cannot encode --------------------------------------------------------------


class Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError("refusing to be pickled")


UNENCODABLE = [
    pytest.param("pickle", lambda: 1, Exception, id="pickle-lambda"),
    pytest.param("pickle", threading.Lock(), TypeError, id="pickle-lock"),
    pytest.param("pickle", Unpicklable(), RuntimeError, id="pickle-reduce-raises"),
    pytest.param("pickle", {"nested": [1, (lambda: 2)]}, Exception, id="pickle-nested-lambda"),
    pytest.param("json", {1, 2}, TypeError, id="json-set"),
    pytest.param("json", {"a": object()}, TypeError, id="json-object"),
    pytest.param("json", b"bytes", TypeError, id="json-bytes"),
    pytest.param("json", float("nan"), ValueError, id="json-nan"),
    pytest.param("json", {(1, 2): "tuple key"}, TypeError, id="json-tuple-key"),
]


@pytest.mark.parametrize(("codec", "value", "cause"), UNENCODABLE)
def test_unencodable_value_raises_encode_error_with_cause(
    open_kv: Callable[..., ekv.EKV], codec: str, value: Any, cause: type[Exception]
) -> None:
    kv = open_kv(codec=codec)
    kv.put("user/1", "old")
    before = snapshot(kv)
    for key in ("user/1", "user/2"):  # an overwrite and a fresh key
        with pytest.raises(ekv.EncodeError) as info:
            kv.put(key, value)
        assert isinstance(info.value, ekv.CodecError) and isinstance(info.value, ekv.Error)
        assert isinstance(info.value.__cause__, cause), repr(info.value.__cause__)
        assert key in str(info.value)
        with pytest.raises(ekv.EncodeError):
            kv.put(key, value, ttl=5)
    assert snapshot(kv) == before
    assert kv.get("user/1") == "old"
    assert kv.get("user/2") is None


def test_custom_codec_errors_are_wrapped(open_kv: Callable[..., ekv.EKV]) -> None:
    class Picky:
        def dumps(self, value: Any) -> bytes:
            if value == "bad":
                raise LookupError("no such thing")
            if value == "str":
                return "not bytes"  # type: ignore[return-value]
            return pickle.dumps(value)

        def loads(self, data: bytes) -> Any:
            return pickle.loads(data)

    kv = open_kv(codec=Picky())
    kv.put("a", "good")
    before = snapshot(kv)
    with pytest.raises(ekv.EncodeError) as info:
        kv.put("a", "bad")
    assert isinstance(info.value.__cause__, LookupError)
    with pytest.raises(ekv.EncodeError, match=r"not bytes"):
        kv.put("a", "str")
    assert snapshot(kv) == before
    assert kv.get("a") == "good"


def test_encode_error_leaves_nothing_after_reopen(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(codec="json")
    with pytest.raises(ekv.EncodeError):
        kv.put("a", {1})
    kv.close()
    kv = open_kv(codec="json")
    assert list(entries(kv)) == []


# -- ttl -----------------------------------------------------------------------------------------

BAD_TTL_VALUES = [
    pytest.param(0, id="zero"),
    pytest.param(0.0, id="zero-float"),
    pytest.param(-1, id="negative"),
    pytest.param(-0.001, id="negative-float"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param(float("-inf"), id="-inf"),
    pytest.param(timedelta(0), id="timedelta-zero"),
    pytest.param(timedelta(seconds=-5), id="timedelta-negative"),
    pytest.param(1e-12, id="below-one-ns"),
    pytest.param(1e300, id="absurdly-large"),
    pytest.param(10**30, id="huge-int"),
    pytest.param(timedelta.max, id="timedelta-max"),
]

BAD_TTL_TYPES = [
    pytest.param("10", id="str"),
    pytest.param("", id="empty-str"),
    pytest.param(True, id="True"),
    pytest.param(False, id="False"),
    pytest.param(b"1", id="bytes"),
    pytest.param([1], id="list"),
    pytest.param(Decimal("1.5"), id="Decimal"),
    pytest.param(complex(1, 0), id="complex"),
]


def _check_ttl_refused(kv: ekv.EKV, ttl: Any, errors: tuple[type[Exception], ...]) -> None:
    kv.put("a", "old")
    before = snapshot(kv)
    for key in ("a", "b"):
        with pytest.raises(errors) as info:
            kv.put(key, "new", ttl=ttl)
        assert isinstance(info.value, ekv.Error)
        assert "ttl" in str(info.value)
    assert snapshot(kv) == before
    assert kv.lookup("a") is not None and kv.get("a") == "old"
    assert kv.get("b") is None


@pytest.mark.parametrize("ttl", BAD_TTL_VALUES)
def test_bad_ttl_value_raises_value_error(kv: ekv.EKV, ttl: Any) -> None:
    _check_ttl_refused(kv, ttl, (ValueError,))


@pytest.mark.parametrize("ttl", BAD_TTL_TYPES)
def test_bad_ttl_type_raises_type_or_value_error(kv: ekv.EKV, ttl: Any) -> None:
    # SPEC section 9 says ValueError; ekv raises InvalidArgumentType (a TypeError) for a ttl of
    # the wrong type, which the brief accepts. Both are ekv errors.
    _check_ttl_refused(kv, ttl, (TypeError, ValueError))


def test_smallest_valid_ttls_are_accepted(kv: ekv.EKV) -> None:
    kv.put("a", 1, ttl=1e-9 * 2)  # two nanoseconds: valid, expires at once
    kv.put("b", 1, ttl=timedelta(microseconds=1))
    kv.put("c", 1, ttl=3600)
    assert kv.get("c") == 1
    assert {e.key for e in entries(kv)} == {"a", "b", "c"}


# -- value size ----------------------------------------------------------------------------------


class Raw:
    """A codec that stores bytes as they are, so sizes are exact."""

    def dumps(self, value: bytes) -> bytes:
        return value

    def loads(self, data: bytes) -> bytes:
        return data


def test_value_larger_than_max_value_size_is_refused(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(codec=Raw(), max_value_size=1000)
    kv.put("exact", b"x" * 1000)  # the maximum itself is accepted
    assert kv.get("exact") == b"x" * 1000
    before = snapshot(kv)
    for key in ("exact", "new"):
        with pytest.raises(ekv.ValueTooLargeError) as info:
            kv.put(key, b"y" * 1001)
        assert isinstance(info.value, ValueError)
        message = str(info.value)
        assert key in message and "1001" in message and "1000" in message and "max_value_size" in message
        with pytest.raises(ekv.ValueTooLargeError):
            kv.put(key, b"y" * 1001, ttl=10)
    assert snapshot(kv) == before
    kv.close()
    kv = open_kv(codec=Raw(), max_value_size=1000)
    assert kv.get("exact") == b"x" * 1000
    assert kv.get("new") is None


def test_value_size_counts_the_encoded_value(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(max_value_size=100)  # pickle adds a header: 95 raw bytes do not fit
    with pytest.raises(ekv.ValueTooLargeError):
        kv.put("a", b"z" * 95)
    assert list(entries(kv)) == []


# -- closed store --------------------------------------------------------------------------------


def test_subscription_get_after_close_raises_an_ekv_error(kv: ekv.EKV) -> None:
    sub = kv.subscribe("room/")
    kv.put("room/1", "hello")
    kv.close()
    # events committed before the close are still delivered, then the subscription says closed
    batch = sub.get(timeout=DEADLINE_S)
    assert [(e.type, e.key, e.value) for e in batch] == [("put", "room/1", "hello")]
    for timeout in (0, 0.01, None):
        with pytest.raises(ekv.ClosedError) as info:
            sub.get(timeout=timeout)
        assert isinstance(info.value, ekv.SubscriptionClosed)
    assert list(sub) == []  # iteration ends
    sub.close()  # idempotent
    with pytest.raises(ekv.ClosedError):
        sub.get(timeout=0)


def test_subscription_closed_explicitly_raises_closed(kv: ekv.EKV) -> None:
    sub = kv.subscribe("a/")
    sub.close()
    with pytest.raises(ekv.SubscriptionClosed):
        sub.get(timeout=0)
    kv.unsubscribe("a/")


def test_blocked_subscription_get_wakes_up_when_the_store_closes(kv: ekv.EKV) -> None:
    subs = [kv.subscribe("x/"), kv.subscribe("")]
    outcomes: list[object] = []
    started = threading.Barrier(len(subs) + 1)

    def consume(sub: ekv.Subscription) -> None:
        started.wait()
        try:
            while True:
                sub.get()  # no timeout: only the close can end this
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=consume, args=(sub,)) for sub in subs]
    for thread in threads:
        thread.start()
    started.wait()
    kv.put("x/1", 1)
    kv.close()
    for thread in threads:
        thread.join(DEADLINE_S)
        assert not thread.is_alive(), "Subscription.get() hangs after the store was closed"
    assert len(outcomes) == len(subs)
    assert all(isinstance(exc, ekv.ClosedError) for exc in outcomes), outcomes


def test_lazy_iterator_continued_after_close_raises_closed(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv(shards=2)
    for i in range(3000):  # several pages per shard
        kv.put(f"k/{i:05d}", i)
    items = kv.iter("k/")
    keys = kv.iter_keys("")
    assert next(items) == ("k/00000", 0)
    assert next(keys) == "k/00000"
    kv.close()
    with pytest.raises(ekv.ClosedError):
        for _ in items:
            pass
    with pytest.raises(ekv.ClosedError):
        for _ in keys:
            pass


def test_callback_subscription_after_close(kv: ekv.EKV) -> None:
    seen: list[ekv.Event] = []
    done = threading.Event()

    def callback(batch: list[ekv.Event]) -> None:
        seen.extend(batch)
        done.set()

    kv.subscribe("c/", callback=callback)
    kv.put("c/1", 1)
    assert done.wait(DEADLINE_S)
    kv.close()
    with pytest.raises(ekv.ClosedError):
        kv.subscribe("c/", callback=callback)
    assert [e.key for e in seen] == ["c/1"]


CONCURRENT_OPS: list[Callable[[ekv.EKV, int], Any]] = [
    lambda kv, i: kv.put(f"w/{i % 200}", i),
    lambda kv, i: kv.put(f"t/{i % 200}", i, ttl=60),
    lambda kv, i: kv.delete(f"w/{i % 200}"),
    lambda kv, i: kv.get(f"w/{i % 200}"),
    lambda kv, i: kv.lookup(f"t/{i % 200}"),
    lambda kv, i: kv.scan("w/"),
    lambda kv, i: kv.keys(""),
    lambda kv, i: sum(1 for _ in kv.iter("")),
    lambda kv, i: kv.subscribe(f"s/{i}").close(),
    lambda kv, i: kv.info(),
]


def _close_under_load(kv: ekv.EKV) -> tuple[list[threading.Thread], dict[int, str]]:
    """Start a thread per kind of call (plus a blocked subscriber), close the store once every
    thread has made progress; return the threads and how each one ended."""
    progress = [0] * (len(CONCURRENT_OPS) + 1)
    outcomes: dict[int, str] = {}
    sub = kv.subscribe("w/", max_queue=10**7)

    def run(slot: int, step: Callable[[int], Any]) -> None:
        i = 0
        try:
            while True:
                step(i)
                i += 1
                progress[slot] += 1
        except ekv.ClosedError:
            outcomes[slot] = "closed"
        except BaseException:
            outcomes[slot] = traceback.format_exc()

    steps: list[Callable[[int], Any]] = [lambda i, op=op: op(kv, i) for op in CONCURRENT_OPS]
    steps.append(lambda i: sub.get())
    threads = [threading.Thread(target=run, args=(slot, step)) for slot, step in enumerate(steps)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + DEADLINE_S
    while min(progress) < 3 and time.monotonic() < deadline and not outcomes:
        time.sleep(0.001)  # polling for progress, not waiting for a result
    assert min(progress) >= 3, (progress, outcomes)
    kv.close()
    for thread in threads:
        thread.join(DEADLINE_S)
    return threads, outcomes


def test_close_while_other_threads_write_and_read(open_kv: Callable[..., ekv.EKV], tmp_path: Path) -> None:
    """Threads looping on every kind of call while another thread closes the store: each of them
    ends with ClosedError (never an AttributeError, an APSW error or another exception), and none
    hangs."""
    for attempt in range(6):
        kv = open_kv(path=tmp_path / f"store{attempt}")
        threads, outcomes = _close_under_load(kv)
        assert not [t for t in threads if t.is_alive()], f"attempt {attempt}: a thread hangs after close()"
        failures = {slot: text for slot, text in outcomes.items() if text != "closed"}
        assert not failures, f"attempt {attempt}: " + "\n".join(failures.values())
        assert len(outcomes) == len(threads)


def test_concurrent_close_calls(open_kv: Callable[..., ekv.EKV]) -> None:
    kv = open_kv()
    kv.put("a", 1)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def close() -> None:
        barrier.wait()
        try:
            kv.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=close) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert kv.closed
    assert open_kv().get("a") == 1  # the directory was released


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda kv: list(kv.iter_keys("")), id="iter_keys"),
        pytest.param(lambda kv: kv.put("a", 1, ttl=5), id="put-ttl"),
        pytest.param(lambda kv: kv.get("a", "default"), id="get-default"),
        pytest.param(lambda kv: kv.subscribe("a/", callback=print), id="subscribe-callback"),
        pytest.param(lambda kv: kv.subscribe("a/", "b/"), id="subscribe-many"),
        pytest.param(lambda kv: kv.put("a", {1}), id="put-unencodable"),
    ],
)
def test_more_calls_on_a_closed_store(kv: ekv.EKV, call: Callable[[ekv.EKV], Any]) -> None:
    kv.close()
    with pytest.raises(ekv.ClosedError):
        call(kv)


class _GatedCodec:
    """Pickle, but ``dumps`` of the value "gate" waits until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def dumps(self, value: Any) -> bytes:
        if value == "gate":
            self.entered.set()
            assert self.gate.wait(DEADLINE_S)
        return pickle.dumps(value)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


def test_put_that_is_encoding_while_the_store_closes_raises_closed(open_kv: Callable[..., ekv.EKV]) -> None:
    codec = _GatedCodec()
    kv = open_kv(codec=codec)
    outcome: list[BaseException | None] = []

    def writer() -> None:
        try:
            kv.put("k", "gate")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert codec.entered.wait(DEADLINE_S)
        kv.close()
    finally:
        codec.gate.set()
        thread.join(DEADLINE_S)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert outcome[0] is None or isinstance(outcome[0], ekv.ClosedError), repr(outcome[0])


# -- data_dir not usable -------------------------------------------------------------------------


def test_data_dir_that_is_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "not-a-dir"
    path.write_bytes(b"precious")
    before = files_of(tmp_path)
    with pytest.raises(ekv.DataDirError) as info:
        ekv.EKV("x", path, log=False)
    assert isinstance(info.value, ekv.StorageError)
    assert str(path) in str(info.value)
    assert files_of(tmp_path) == before


def test_data_dir_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"precious")
    before = files_of(tmp_path)
    for path in (blocker / "data", blocker / "deeper" / "data"):
        with pytest.raises(ekv.DataDirError) as info:
            ekv.EKV("x", path, log=False)
        assert str(path) in str(info.value)
    assert files_of(tmp_path) == before


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="running as root: chmod cannot make a directory unwritable for root (see the read-only mount test)",
)
def test_data_dir_without_write_permission(tmp_path: Path) -> None:
    path = tmp_path / "data"
    make_store(path)
    before = files_of(path)
    path.chmod(0o500)
    try:
        with pytest.raises(ekv.DataDirError, match="not writable"):
            ekv.EKV("store", path, shards=4, log=False)
        with pytest.raises(ekv.DataDirError):
            ekv.EKV("store", path / "sub", shards=4, log=False)
    finally:
        path.chmod(0o700)
    assert files_of(path) == before


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """Mount a small tmpfs (root only); skip the test if that is not possible here."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (mount -t tmpfs)")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount/umount not available")
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


def remount(mountpoint: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mountpoint)], check=True, capture_output=True)


def test_data_dir_on_a_read_only_file_system(tmp_path: Path) -> None:
    """Root ignores permission bits, but not a read-only mount."""
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        path = mnt / "data"
        contents = make_store(path)
        before = files_of(path)
        remount(mnt, "ro")
        try:
            with pytest.raises(ekv.DataDirError) as info:
                ekv.EKV("store", path, shards=4, log=False)
            assert str(path) in str(info.value)
            with pytest.raises(ekv.DataDirError):
                ekv.EKV("store", mnt / "new", shards=4, log=False)
        finally:
            remount(mnt, "rw")
        assert files_of(path) == before
        with ekv.EKV("store", path, shards=4, log=False) as kv:
            assert kv.scan("key/") == dict(sorted(contents.items()))


def test_disk_full(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * 256 * 1024)
        path = mnt / "data"
        acked: dict[str, bytes] = {}
        with ekv.EKV("full", path, shards=2, codec=Raw(), log=False) as kv:
            kv.put("small", b"s")
            acked["small"] = b"s"
            failed: str | None = None
            for i in range(10_000):
                key = f"k/{i:05d}"
                value = os.urandom(4000)
                try:
                    kv.put(key, value)
                except ekv.DiskFullError as exc:
                    failed = key
                    assert isinstance(exc, ekv.StorageError)
                    assert "disk full" in str(exc)
                    break
                acked[key] = value
            assert failed is not None, "the 1 MiB file system never filled up"
            assert len(acked) > 10
            # the failed write is absent, nothing else was lost, reads still work
            assert kv.get(failed) is None
            assert kv.lookup(failed) is None
            assert failed not in {e.key for e in entries(kv)}
            assert kv.scan("") == dict(sorted(acked.items()))
            # still full: the same write fails again, cleanly
            with pytest.raises(ekv.DiskFullError):
                kv.put(failed, os.urandom(4000))
            assert kv.get(failed) is None
            # a small delete may or may not fit; either way the store stays consistent
            try:
                kv.delete("small")
            except ekv.DiskFullError:
                assert kv.get("small") == b"s"
            else:
                assert kv.get("small") is None
            # space comes back: writes work again
            filler.unlink()
            version = kv.put(failed, b"after")
            acked[failed] = b"after"
            assert kv.lookup(failed) == (b"after", version)
            kv.delete("small")
            del acked["small"]
            assert kv.scan("") == dict(sorted(acked.items()))
        with ekv.EKV("full", path, shards=2, codec=Raw(), log=False) as kv:
            assert kv.scan("") == dict(sorted(acked.items()))
        for shard in sorted(path.glob("shard_*.db")):
            conn = apsw.Connection(str(shard), flags=apsw.SQLITE_OPEN_READONLY)
            try:
                assert [r[0] for r in conn.execute("PRAGMA integrity_check")] == ["ok"]
            finally:
                conn.close()


def test_disk_full_with_concurrent_writers(tmp_path: Path) -> None:
    """Several threads fill the disk at once (their writes share group commits): every write that
    raised DiskFullError is absent, every acknowledged one is present."""
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * 128 * 1024)
        path = mnt / "data"
        acked: dict[str, bytes] = {}
        failed: dict[int, str] = {}
        other: list[str] = []
        with ekv.EKV("full", path, shards=2, codec=Raw(), log=False) as kv:

            def fill(tid: int) -> None:
                try:
                    for i in range(10_000):
                        key, value = f"t{tid}/{i:05d}", os.urandom(3000)
                        try:
                            kv.put(key, value)
                        except ekv.DiskFullError:
                            failed[tid] = key
                            return
                        acked[key] = value
                except BaseException:
                    other.append(traceback.format_exc())

            threads = [threading.Thread(target=fill, args=(tid,)) for tid in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(DEADLINE_S)
            assert not any(t.is_alive() for t in threads)
            assert other == []
            assert len(failed) == 4, "every writer should have hit the full disk"
            stored = {e.key: e.value for e in entries(kv)}
            assert stored == acked
            filler.unlink()
            kv.put("after", b"ok")
        with ekv.EKV("full", path, shards=2, codec=Raw(), log=False) as kv:
            assert kv.get("after") == b"ok"
            assert kv.scan("t") == dict(sorted(acked.items()))
            assert all(kv.get(key) is None for key in failed.values())


def test_disk_full_at_open(tmp_path: Path) -> None:
    """A store closed while the disk is full (its close could not record a clean shutdown, nor
    checkpoint) reopens on the still-full disk: reads work, writes fail with DiskFullError and
    succeed, in the same open store, once space is freed. Nothing is lost."""
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * 256 * 1024)
        path = mnt / "data"
        acked: dict[str, bytes] = {}
        with ekv.EKV("full", path, shards=2, codec=Raw(), log=False) as kv:
            with pytest.raises(ekv.DiskFullError):
                for i in range(10_000):
                    value = os.urandom(4000)
                    kv.put(f"k/{i:05d}", value)
                    acked[f"k/{i:05d}"] = value
            assert len(acked) > 10
            while True:  # fill what is left to the last page
                try:
                    (mnt / f"crumb{len(list(mnt.iterdir()))}").write_bytes(b"\0" * 1024)
                except OSError:
                    break
        # (closing could not checkpoint the WAL: no space; ekv logs that and closes anyway)
        with ekv.EKV("full", path, shards=2, codec=Raw(), log=False) as kv:
            assert kv.scan("") == dict(sorted(acked.items()))
            assert kv.get("k/00000") == acked["k/00000"]
            with pytest.raises(ekv.DiskFullError):
                kv.put("more", b"no room")
            assert kv.get("more") is None
            filler.unlink()
            kv.put("more", b"room again")
            assert kv.get("more") == b"room again"
        with ekv.EKV("full", path, shards=2, codec=Raw(), log=False) as kv:
            assert kv.get("more") == b"room again"
            assert len(kv.keys("k/")) == len(acked)


# -- corrupt or foreign files --------------------------------------------------------------------


def test_shard_overwritten_with_garbage(tmp_path: Path) -> None:
    path = tmp_path / "data"
    make_store(path)
    shard = path / "shard_002.db"
    garbage = bytes((i * 7919 + 13) % 251 for i in range(shard.stat().st_size))
    shard.write_bytes(garbage)
    for _ in range(2):  # a second attempt sees the same
        with pytest.raises(ekv.CorruptionError) as info:
            ekv.EKV("store", path, shards=4, log=False)
        assert str(shard) in str(info.value)
        assert shard.read_bytes() == garbage
    assert sorted(p.name for p in path.glob("shard_002*")) == ["shard_002.db"]


def test_shard_with_a_garbage_header(tmp_path: Path) -> None:
    path = tmp_path / "data"
    make_store(path)
    shard = path / "shard_001.db"
    data = bytearray(shard.read_bytes())
    data[:100] = b"\xa5" * 100
    shard.write_bytes(bytes(data))
    with pytest.raises(ekv.CorruptionError) as info:
        ekv.EKV("store", path, shards=4, log=False)
    assert str(shard) in str(info.value)
    assert shard.read_bytes() == bytes(data)


def _foreign_database(path: Path) -> bytes:
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.executemany("INSERT INTO invoices (total) VALUES (?)", [(i * 1.5,) for i in range(100)])
        conn.commit()
    finally:
        conn.close()
    return path.read_bytes()


FOREIGN_SHARDS = [
    pytest.param(_foreign_database, id="foreign-sqlite-db"),
    pytest.param(lambda p: (p.write_bytes(b""), b"")[1], id="empty-file"),
]


@pytest.mark.parametrize("make", FOREIGN_SHARDS)
def test_foreign_shard_file_is_refused_naming_it(tmp_path: Path, make: Callable[[Path], bytes]) -> None:
    path = tmp_path / "data"
    make_store(path)
    shard = path / "shard_002.db"
    make(shard)
    with pytest.raises(ekv.CorruptionError) as info:
        ekv.EKV("store", path, shards=4, log=False)
    assert str(shard) in str(info.value)


@pytest.mark.parametrize("make", FOREIGN_SHARDS)
def test_foreign_shard_file_is_left_unchanged(tmp_path: Path, make: Callable[[Path], bytes]) -> None:
    path = tmp_path / "data"
    make_store(path)
    shard = path / "shard_002.db"
    original = make(shard)
    with pytest.raises(ekv.CorruptionError):
        ekv.EKV("store", path, shards=4, log=False)
    assert shard.read_bytes() == original


@pytest.mark.parametrize("pages_before", [0, 7])
def test_a_hot_journal_only_excuses_a_file_it_rolls_back_to_nothing(tmp_path: Path, pages_before: int) -> None:
    """Without a manifest, a shard file whose hot rollback journal says the database was empty
    before the interrupted transaction is a torn first commit (a power cut during creation) and
    is replaced; a journal of a database that had pages never excuses foreign data."""
    path = tmp_path / "data"
    path.mkdir()
    shard = path / "shard_000.db"
    original = _foreign_database(shard)
    header = bytes.fromhex("d9d505f920a163d7") + (1).to_bytes(4, "big") + (42).to_bytes(4, "big")
    header += pages_before.to_bytes(4, "big") + (512).to_bytes(4, "big") + (4096).to_bytes(4, "big")
    (path / "shard_000.db-journal").write_bytes(header.ljust(512, b"\0"))
    if pages_before == 0:
        with ekv.EKV("store", path, shards=2, log=False) as kv:
            assert kv.keys() == []
    else:
        with pytest.raises(ekv.CorruptionError, match="refusing to overwrite"):
            ekv.EKV("store", path, shards=2, log=False)
        assert shard.read_bytes() == original


@pytest.mark.parametrize("mistake", ["swapped", "from-another-store"])
def test_shard_file_of_another_store_or_index(tmp_path: Path, mistake: str) -> None:
    """Shard files moved between shards or data directories are refused, not merged."""
    path = tmp_path / "data"
    make_store(path)
    if mistake == "swapped":
        a, b = path / "shard_000.db", path / "shard_001.db"
        data_a, data_b = a.read_bytes(), b.read_bytes()
        a.write_bytes(data_b)
        b.write_bytes(data_a)
    else:
        other = tmp_path / "other"
        make_store(other, keys=5)
        shutil.copyfile(other / "shard_000.db", path / "shard_000.db")
    victim = path / "shard_000.db"
    original = victim.read_bytes()
    with pytest.raises(ekv.CorruptionError) as info:
        ekv.EKV("store", path, shards=4, log=False)
    assert str(victim) in str(info.value)
    assert victim.read_bytes() == original


def test_foreign_database_alone_without_manifest(tmp_path: Path) -> None:
    """A directory holding someone else's "shard_000.db" and no ekv.json is not taken over."""
    path = tmp_path / "data"
    path.mkdir()
    original = _foreign_database(path / "shard_000.db")
    with pytest.raises(ekv.CorruptionError) as info:
        ekv.EKV("store", path, shards=1, log=False)
    assert "shard_000.db" in str(info.value)
    assert (path / "shard_000.db").read_bytes() == original
    assert not (path / "ekv.json").exists()


GARBAGE_MANIFESTS = [
    pytest.param(b"\x00\xff garbage {", id="binary-garbage"),
    pytest.param(b"", id="empty"),
    pytest.param(b"[]", id="json-list"),
    pytest.param(b'{"name": "store"}', id="missing-fields"),
    pytest.param(
        b'{"format": 1, "name": "store", "shards": "4", "node_id": "ab", "created_at_ns": 1}', id="str-shards"
    ),
    pytest.param(b'{"format": 1, "name": "store", "shards": 0, "node_id": "ab", "created_at_ns": 1}', id="zero-shards"),
    pytest.param(b'{"format": 1, "name": "store", "shards": 4, "node_id": "", "created_at_ns": 1}', id="no-node-id"),
    pytest.param(b'{"format": 2, "name": "store", "shards": 4, "node_id": "ab", "created_at_ns": 1}', id="format-2"),
]


@pytest.mark.parametrize("manifest", GARBAGE_MANIFESTS)
def test_garbage_manifest(tmp_path: Path, manifest: bytes) -> None:
    path = tmp_path / "data"
    make_store(path)
    (path / "ekv.json").write_bytes(manifest)
    before = files_of(path)
    with pytest.raises(ekv.CorruptionError) as info:
        ekv.EKV("store", path, shards=4, log=False)
    assert str(path / "ekv.json") in str(info.value)
    assert_unchanged(before, files_of(path))


def test_shard_files_without_manifest(tmp_path: Path) -> None:
    path = tmp_path / "data"
    make_store(path)
    (path / "ekv.json").unlink()
    shards = {p.name: p.read_bytes() for p in path.glob("shard_*.db")}
    assert len(shards) == 4
    with pytest.raises(ekv.CorruptionError) as info:
        ekv.EKV("store", path, shards=4, log=False)
    message = str(info.value)
    assert "ekv.json" in message and "shard_0" in message
    assert {p.name: p.read_bytes() for p in path.glob("shard_*.db")} == shards  # nothing overwritten
    assert not (path / "ekv.json").exists()


def test_missing_shard_file(tmp_path: Path) -> None:
    path = tmp_path / "data"
    make_store(path)
    (path / "shard_003.db").unlink()
    before = files_of(path)
    with pytest.raises(ekv.CorruptionError) as info:
        ekv.EKV("store", path, shards=4, log=False)
    assert str(path / "shard_003.db") in str(info.value)
    assert_unchanged(before, files_of(path))  # in particular, not recreated empty


@pytest.mark.parametrize("shards", [1, 3, 5, 8])
def test_shard_count_differs(tmp_path: Path, shards: int) -> None:
    path = tmp_path / "data"
    contents = make_store(path, shards=4)
    before = files_of(path)
    with pytest.raises(ekv.ShardCountError) as info:
        ekv.EKV("store", path, shards=shards, log=False)
    assert isinstance(info.value, ekv.StorageError)
    assert "shards=4" in str(info.value) and f"shards={shards}" in str(info.value)
    assert_unchanged(before, files_of(path))
    with ekv.EKV("store", path, shards=4, log=False) as kv:  # the right count still opens it
        assert kv.scan("key/") == dict(sorted(contents.items()))


def test_instance_name_differs(tmp_path: Path) -> None:
    path = tmp_path / "data"
    make_store(path)
    before = files_of(path)
    with pytest.raises(ekv.InstanceNameError) as info:
        ekv.EKV("another", path, shards=4, log=False)
    assert "'store'" in str(info.value) and "'another'" in str(info.value)
    assert_unchanged(before, files_of(path))


# -- a data dir that is already open -------------------------------------------------------------

OWNER = r"""
import os, sys
import ekv

kv = ekv.EKV("store", sys.argv[1], shards=4, log=False)
print("ready", os.getpid(), flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "put":
        version = kv.put(args[0], args[1])
        print("ok", version.timestamp_ns, flush=True)
    elif cmd == "get":
        print("value", kv.get(args[0]), flush=True)
    elif cmd == "close":
        kv.close()
        print("closed", flush=True)
        break
"""


class Owner:
    """A child process that holds a store open and obeys one-line commands."""

    def __init__(self, script: Path, data_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid

    def readline(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE_S)
        assert ready, "the owner process did not answer"
        line = self.proc.stdout.readline()
        assert line, f"the owner process died: {self.stderr()}"
        return line.strip()

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.readline()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def owner_process(tmp_path: Path, data_dir: Path) -> Iterator[Owner]:
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = Owner(script, data_dir)
    try:
        assert owner.readline() == f"ready {owner.pid}"
        yield owner
    finally:
        owner.close()


def test_a_second_process_attaches_and_conflicting_options_are_config_errors(tmp_path: Path) -> None:
    """SPEC 12: another process opens the same data directory (it attaches); options that
    conflict with the directory are a ConfigError naming the option, and change nothing."""
    path = tmp_path / "data"
    with owner_process(tmp_path, path) as owner:
        assert owner.ask("put before 1").startswith("ok ")
        with ekv.EKV("store", path, shards=4, log=False) as kv:
            assert kv.get("before") == "1"
            assert kv.info()["processes"]["role"] == "attached"
            assert kv.info()["processes"]["node_process"]["pid"] == owner.pid
            kv.put("mine", "2")
            assert owner.ask("get mine") == "value 2"
        for options, named in (({"shards": 2}, "shards=2"), ({"codec": "json"}, "codec='json'")):
            with pytest.raises(ekv.ConfigError, match=re.escape(named)):
                ekv.EKV("store", path, log=False, **({"shards": 4} | options))  # type: ignore[arg-type]
        with pytest.raises(ekv.ConfigError, match="name='other-name'"):
            ekv.EKV("other-name", path, shards=4, log=False)
        # the owner is unaffected: it can still write and read
        assert owner.ask("put after 2").startswith("ok ")
        assert owner.ask("get before") == "value 1"
        assert owner.ask("close") == "closed"
        owner.proc.wait(DEADLINE_S)
        assert owner.proc.returncode == 0, owner.stderr()
        with ekv.EKV("store", path, shards=4, log=False) as kv:
            assert kv.get("before") == "1" and kv.get("after") == "2"


def test_an_exclusive_holder_gets_locked_error_naming_it(tmp_path: Path) -> None:
    """An ekv older than 0.3 locks LOCK exclusively: a new open is refused naming it (and the
    old ekv is refused by any open of this one, which holds LOCK shared)."""
    path = tmp_path / "data"
    with ekv.EKV("store", path, shards=4, log=False) as kv:
        kv.put("a", 1)
    fd = os.open(path / "LOCK", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, f"{os.getpid()} somehost\n".encode(), 0)
        with pytest.raises(ekv.LockedError) as info:
            ekv.EKV("store", path, shards=4, log=False)
        assert info.value.owner_pid == os.getpid() and "somehost" in str(info.value)
    finally:
        os.close(fd)
    with ekv.EKV("store", path, shards=4, log=False) as kv:
        fd = os.open(path / "LOCK", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        assert kv.get("a") == 1


def test_the_data_survives_the_node_process_being_killed(tmp_path: Path) -> None:
    path = tmp_path / "data"
    with owner_process(tmp_path, path) as owner:
        assert owner.ask("put k v").startswith("ok ")
        os.kill(owner.pid, signal.SIGKILL)
        owner.proc.wait(DEADLINE_S)
        with ekv.EKV("store", path, shards=4, log=False) as kv:
            assert kv.info()["processes"]["role"] == "node"
            assert kv.get("k") == "v"
            kv.put("k", "mine")
        with ekv.EKV("store", path, shards=4, log=False) as kv:
            assert kv.get("k") == "mine"


def test_second_ekv_object_in_the_same_process(open_kv: Callable[..., ekv.EKV]) -> None:
    """SPEC 12: one process may open a data directory any number of times."""
    first = open_kv()
    first.put("a", 1)
    for options in ({"shards": 2}, {"codec": "json"}):
        with pytest.raises(ekv.ConfigError):
            open_kv(**options)
    second = open_kv()
    assert second.get("a") == 1
    second.put("b", 2)
    assert first.scan("") == {"a": 1, "b": 2}
    assert (first.info()["processes"]["role"], second.info()["processes"]["role"]) == ("node", "attached")
    first.close()
    assert second.scan("") == {"a": 1, "b": 2}
    wait_until(lambda: second.info()["processes"]["role"] == "node", DEADLINE_S)
    second.close()
    third = open_kv()
    assert third.scan("") == {"a": 1, "b": 2}


# -- SQLite version ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "safe"),
    [
        ("3.51.2", False),
        ("3.51.3", True),
        ("3.51.4", True),
        ("3.52.0", True),
        ("3.54.1", True),
        ("4.0.0", True),
        ("3.50.7", True),
        ("3.50.8", True),
        ("3.50.6", False),
        ("3.50.0", False),
        ("3.44.6", True),
        ("3.44.7", True),
        ("3.44.5", False),
        ("3.45.0", False),
        ("3.40.1", False),
        ("3.7.0", False),
    ],
)
def test_sqlite_version_is_safe(version: str, safe: bool) -> None:
    assert version_is_safe(version) is safe


@pytest.mark.parametrize("version", ["3.40.1", "3.51.2", "3.50.6", "3.44.5"])
def test_check_sqlite_version_refuses_buggy_versions(version: str) -> None:
    with pytest.raises(ekv.SQLiteVersionError) as info:
        check_sqlite_version(version)
    assert isinstance(info.value, ekv.StorageError)
    assert version in str(info.value) and "3.51.3" in str(info.value)


def test_check_sqlite_version_accepts_the_bundled_library() -> None:
    check_sqlite_version()  # the SQLite that APSW bundles here is safe
    check_sqlite_version("3.51.3")
    assert version_is_safe(apsw.sqlite_lib_version())


# -- disk full on one member of a cluster ------------------------------------------------------------


def test_disk_full_on_one_member_of_a_cluster(tmp_path: Path) -> None:
    """Node C of three keeps its data directory on a small tmpfs. Once it is full, writes to C fail
    with DiskFullError, and the writes C receives by replication cannot be stored either: neither
    may crash or corrupt it, and nothing acknowledged (by C or by the others) is lost. When the
    file system is enlarged, C accepts writes again and catches up with what it missed."""
    import json

    from ekv._backup import check
    from ekv.testing.cluster import ProcCluster

    def value_of(dump: dict[str, tuple[Any, ...]], key: str) -> tuple[int, str, Any]:
        ts, origin, raw = dump[key][:3]
        return ts, origin, None if raw is None else json.loads(raw)

    with tmpfs(tmp_path / "mnt", "2m") as mnt, ProcCluster(tmp_path / "nodes", nodes=0) as cluster:
        a, b = cluster.add(), cluster.add()
        c = cluster.add(start=False)
        c.data_dir = mnt / "c"
        c.start()
        cluster.wait_connected()
        acked: dict[str, tuple[int, str, Any]] = {}

        # 1. fill C's file system with writes to C, until one fails with DiskFullError
        failed: str | None = None
        for i in range(5_000):
            key, value = f"c/{i:05d}", os.urandom(1500).hex()
            try:
                ts, origin = c.put(key, value)
            except RuntimeError as exc:  # NodeProcess reports the node's error type and message
                assert ": DiskFullError: " in str(exc) and "disk full" in str(exc), exc
                failed = key
                break
            acked[key] = (ts, origin, value)
        assert failed is not None, "the 2 MiB file system never filled up"
        assert len(acked) > 10

        # 2. writes to A while C is full: acknowledged by A, replicated to B, not storable on C
        from_a: dict[str, tuple[int, str, Any]] = {}
        for i in range(100):
            key, value = f"a/{i:03d}", os.urandom(1500).hex()
            ts, origin = a.put(key, value)
            from_a[key] = (ts, origin, value)
        cluster.wait_converged(timeout=DEADLINE_S, nodes=[a, b])
        with pytest.raises(RuntimeError, match="DiskFullError"):
            c.put(failed, "still full")
        assert c.running, "C died of a full disk"
        dump = c.dump()
        assert failed not in dump
        for key, stored in acked.items():
            assert value_of(dump, key) == stored, key  # C lost nothing it acknowledged
        not_stored = sum(1 for key in from_a if key not in dump)
        assert not_stored, "C had room for A's writes: the disk was not full"
        print(f"\nC: {len(acked)} writes acknowledged before {failed} failed; {not_stored} of A's 100 not stored")
        for node in (a, b):
            dump = node.dump()
            assert all(value_of(dump, key) == stored for key, stored in {**acked, **from_a}.items()), node

        # 3. space comes back: C accepts writes again and catches up with A's writes
        remount(mnt, "size=64m")
        ts, origin = c.put(failed, "after")
        acked[failed] = (ts, origin, "after")
        cluster.wait_converged(timeout=DEADLINE_S)
        for node in (a, b, c):
            dump = node.dump()
            assert all(value_of(dump, key) == stored for key, stored in {**acked, **from_a}.items()), node

        # 4. and it shuts down and reopens cleanly, with everything
        c.stop()
        assert check(c.data_dir)[0] == []
        c.start()
        cluster.wait_converged(timeout=DEADLINE_S)
        dump = c.dump()
        assert all(value_of(dump, key) == stored for key, stored in {**acked, **from_a}.items())
