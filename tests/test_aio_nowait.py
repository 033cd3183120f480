"""AsyncEKV runs a point operation that cannot wait on the event loop (issue 13) and everything
that can wait in its thread pool (SPEC 1: nothing blocks the loop for more than a few ms).

Where an operation ran is observed through a codec that records the thread of each ``dumps`` and
``loads`` call, and, for a write that must wait for a lock, through the loop staying free while
a real lock (SQLite's write lock of another connection, a shard's group-commit mutex held by an
exclusive job) is held."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import ekv
from ekv._storage.sqlite import BUSY_TIMEOUT_MS
from ekv.testing import wait_until


class ThreadCodec:
    """Pickle, recording the thread of every call: ``("dumps" | "loads", thread ident)``."""

    name = "pickle"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def dumps(self, value: Any) -> bytes:
        self.calls.append(("dumps", threading.get_ident()))
        return pickle.dumps(value, protocol=5)

    def loads(self, blob: bytes) -> Any:
        self.calls.append(("loads", threading.get_ident()))
        return pickle.loads(blob)

    def threads(self) -> list[int]:
        threads = [ident for _, ident in self.calls]
        self.calls.clear()
        return threads


HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def node_shard_path(kv: ekv.AsyncEKV) -> str:
    assert kv._node is not None
    return str(kv._node.store.datadir.shard_path(0))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_point_operations_run_on_the_loop_with_the_same_results(data_dir: Path) -> None:
    codec = ThreadCodec()

    async def main() -> None:
        loop_thread = threading.get_ident()
        async with ekv.AsyncEKV("a", data_dir, log=False, shards=2, codec=codec, max_value_size=1000) as kv:
            assert await kv.get("absent", "dflt") == "dflt"  # the first read opens this thread's readers
            version = await kv.put("user/1", {"name": "Alice"})
            assert await kv.get("user/1") == {"name": "Alice"}
            assert await kv.lookup("user/1") == ({"name": "Alice"}, version)
            assert await kv.contains("user/1") is True
            assert await kv.contains("user/2") is False
            assert await kv.lookup("user/2") is None
            assert await kv.get("user/2") is None
            assert codec.threads() == [loop_thread] * 3  # put's dumps, get's and lookup's loads
            gone = await kv.delete("user/1")
            assert gone > version
            assert await kv.get("user/1", 0) == 0
            assert await kv.put("t", 1, ttl=60) > gone
            assert 0 < await kv.ttl("t") <= 60
            # Errors are those of EKV, raised on the loop, and nothing is written.
            with pytest.raises(ekv.InvalidArgumentType):
                await kv.put(1, 2)  # type: ignore[arg-type]
            with pytest.raises(ekv.InvalidArgumentType):
                await kv.get(None)  # type: ignore[arg-type]
            with pytest.raises(ekv.ValueTooLargeError):
                await kv.put("big", "x" * 900 + "y" * 200)
            with pytest.raises(ekv.EncodeError):
                await kv.put("lambda", lambda: 1)
            assert await kv.keys("") == ["t"]
        with ekv.EKV("a", data_dir, log=False, shards=2, codec=codec) as sync:
            assert sync.get("t") == 1 and "user/1" not in sync
        with pytest.raises(ekv.ClosedError):
            await kv.get("t")
        with pytest.raises(ekv.ClosedError):
            await kv.put("t", 2)

    run(main())


def test_durability_full_writes_and_long_values_stay_off_the_loop(data_dir: Path) -> None:
    codec = ThreadCodec()

    async def main() -> None:
        loop_thread = threading.get_ident()
        async with ekv.AsyncEKV("a", data_dir, log=False, shards=2, codec=codec, durability="full") as kv:
            await kv.get("warm")  # this thread's readers
            codec.calls.clear()
            await kv.put("k", 1)  # an fsync per commit: in the pool, encoding included
            await kv.delete("k")
            assert loop_thread not in codec.threads()
            await kv.get("k")  # a read does not fsync: on the loop
            await kv.put("long", b"x" * (100 << 10))  # long to encode and write
            assert loop_thread not in codec.threads()
            await kv.put("nested", [b"x" * (100 << 10)])  # short to look at, long once encoded
            codec.calls.clear()
            assert len((await kv.get("nested"))[0]) == 100 << 10  # long to read: in the pool
            assert (await kv.lookup("long"))[0] == b"x" * (100 << 10)
            assert await kv.contains("long")
            assert loop_thread not in codec.threads()

    run(main())


def test_a_put_waiting_for_another_process_lock_does_not_block_the_loop(data_dir: Path) -> None:
    async def main() -> None:
        async with ekv.AsyncEKV("a", data_dir, log=False, shards=1) as kv:
            await kv.put("k", 0)  # the shard is armed: a later put may commit on the loop
            # Another process holds SQLite's write lock of the shard, as its commits do.
            with subprocess.Popen(
                [sys.executable, "-c", HOLD_WRITE_LOCK, node_shard_path(kv)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            ) as holder:
                try:
                    assert holder.stdout is not None and holder.stdin is not None
                    assert holder.stdout.readline() == "locked\n"
                    put = asyncio.ensure_future(kv.put("k", 1))
                    started = time.monotonic()
                    await asyncio.sleep(0)  # the put's first step runs: it must hand over, not wait here
                    # Waiting here would take SQLite's busy timeout (then fall back to the pool):
                    # half of it bounds a first step that did not wait, on however busy a machine.
                    assert time.monotonic() - started < BUSY_TIMEOUT_MS / 2000
                    assert not put.done()
                    holder.stdin.write("release\n")
                    holder.stdin.flush()
                    version = await put
                finally:
                    holder.kill()
            assert await kv.lookup("k") == (1, version)

    run(main())


def test_a_put_to_a_shard_busy_in_this_process_does_not_block_the_loop(data_dir: Path) -> None:
    async def main() -> None:
        async with ekv.AsyncEKV("a", data_dir, log=False, shards=1) as kv:
            await kv.put("k", 0)
            node = kv._node
            assert node is not None
            shard = node.store.shards[0]
            release = threading.Event()
            # An exclusive job holds the shard's group commit, as a long put_many or GC pass does.
            job = threading.Thread(target=shard.run_exclusive, args=(lambda cur: release.wait(60),))
            job.start()
            try:
                wait_until(lambda: shard._committer._mutex.locked(), message="the exclusive job did not start")
                put = asyncio.ensure_future(kv.put("k", 1))
                delete = asyncio.ensure_future(kv.delete("other"))
                await asyncio.sleep(0)  # their first steps run: they must hand over, not wait here
                assert not put.done() and not delete.done()
            finally:
                release.set()
                job.join(60)
            await put
            await delete
            assert await kv.get("k") == 1

    run(main())
