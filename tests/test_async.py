"""The asyncio facade: same operations as coroutines, async subscriptions, no blocking."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

import ekv
from ekv._options import AsyncOptions, Options


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_basic_operations(data_dir: Path) -> None:
    async def main() -> None:
        async with ekv.AsyncEKV("a", data_dir, log=False, shards=2) as kv:
            version = await kv.put("user/1", {"name": "Alice"})
            assert await kv.get("user/1") == {"name": "Alice"}
            assert await kv.lookup("user/1") == ({"name": "Alice"}, version)
            await kv.put("user/2", 2, ttl=60)
            assert await kv.scan("user/") == {"user/1": {"name": "Alice"}, "user/2": 2}
            assert await kv.keys("user/") == ["user/1", "user/2"]
            assert [k async for k, _ in kv.iter("user/")] == ["user/1", "user/2"]
            assert [k async for k in kv.iter_keys("")] == ["user/1", "user/2"]
            assert await kv.delete("user/1") > version
            assert await kv.get("user/1", "dflt") == "dflt"
            info = await kv.info()
            assert info["keys"] == 1
            assert kv.node_id == info["node_id"]
        assert kv.closed
        with pytest.raises(ekv.ClosedError):
            await kv.get("user/2")

    run(main())


def test_iter_many_pages(data_dir: Path) -> None:
    async def main() -> None:
        async with ekv.AsyncEKV("a", data_dir, log=False, shards=3) as kv:
            for i in range(1200):
                await kv.put(f"k/{i:05d}", i)
            got = [v async for _, v in kv.iter("k/")]
            assert got == list(range(1200))

    run(main())


def test_subscription_async_iteration(data_dir: Path) -> None:
    async def main() -> None:
        async with ekv.AsyncEKV("a", data_dir, log=False) as kv:
            sub = await kv.subscribe("room/")
            await kv.put("room/1", "x")
            await kv.delete("room/1")
            seen = []
            async for batch in sub:
                seen.extend((e.type, e.key, e.value) for e in batch)
                if len(seen) >= 2:
                    break
            assert seen == [("put", "room/1", "x"), ("delete", "room/1", "x")]
            with pytest.raises(TimeoutError):
                await sub.get(timeout=0.01)
            await kv.unsubscribe("room/")
            assert sub.closed
            assert [b async for b in sub] == []

    run(main())


def test_subscription_wakes_waiting_consumer_from_another_thread(data_dir: Path) -> None:
    async def main() -> None:
        async with ekv.AsyncEKV("a", data_dir, log=False) as kv:
            sub = await kv.subscribe("")
            waiter = asyncio.ensure_future(sub.get(timeout=30))
            await asyncio.sleep(0)
            await kv.put("k", 1)  # committed on a pool thread
            batch = await waiter
            assert [(e.type, e.key) for e in batch] == [("put", "k")]
            sub.close()

    run(main())


def test_closing_the_store_ends_async_iteration(data_dir: Path) -> None:
    async def main() -> None:
        kv = ekv.AsyncEKV("a", data_dir, log=False)
        await kv.open()
        sub = await kv.subscribe("")

        async def consume() -> list[object]:
            return [b async for b in sub]

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0)
        await kv.close()
        assert await asyncio.wait_for(task, 30) == []

    run(main())


def test_open_happens_on_first_use_and_errors_propagate(data_dir: Path, tmp_path: Path) -> None:
    async def main() -> None:
        kv = ekv.AsyncEKV("a", data_dir, log=False)
        assert "not opened" in repr(kv)
        await kv.put("a", 1)  # opens on first use
        with pytest.raises(ekv.InvalidArgumentType):
            await kv.put(1, 2)  # type: ignore[arg-type]
        with pytest.raises(ekv.ConfigError, match="shards=2"):
            await ekv.AsyncEKV("a", data_dir, shards=2, log=False).open()
        await kv.close()
        await kv.close()

    run(main())


def test_config_errors_raise_at_construction(data_dir: Path) -> None:
    with pytest.raises(ekv.ConfigError):
        ekv.AsyncEKV("a", data_dir, shards=0)


def test_facades_expose_the_same_operations() -> None:
    names = [
        "put",
        "get",
        "delete",
        "lookup",
        "scan",
        "keys",
        "iter",
        "iter_keys",
        "subscribe",
        "unsubscribe",
        "info",
        "close",
    ]
    for name in names:
        sync_fn = getattr(ekv.EKV, name)
        async_fn = getattr(ekv.AsyncEKV, name)
        assert inspect.iscoroutinefunction(async_fn) or inspect.isasyncgenfunction(async_fn), name
        sync_params = list(inspect.signature(sync_fn).parameters)
        async_params = list(inspect.signature(async_fn).parameters)
        if name == "subscribe":
            sync_params.remove("callback")
        assert sync_params == async_params, name
    assert list(inspect.signature(ekv.EKV.__init__).parameters) == ["self", "name", "data_dir", "options"]
    assert list(inspect.signature(ekv.AsyncEKV.__init__).parameters) == ["self", "name", "data_dir", "options"]
    assert set(AsyncOptions.__annotations__) - set(Options.__annotations__) == {"workers"}
