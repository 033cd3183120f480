"""EKV as a ``collections.abc.MutableMapping`` (SPEC 14): CPython's own mapping-protocol tests, and
what they do not cover: KeyError on deleted and expired keys, ``len`` and ``count``, prefixes,
``clear``, and AsyncEKV's async forms."""

from __future__ import annotations

import asyncio
import collections.abc
import shutil
import tempfile
import unittest
from collections.abc import Callable
from pathlib import Path

import pytest

import ekv
from ekv.testing import FakeClock, partition, wait_until

try:
    from test import mapping_tests
except ImportError:  # some distributions ship Python without its test package
    mapping_tests = None  # type: ignore[assignment]


if mapping_tests is not None:

    class TestCPythonMappingProtocol(mapping_tests.BasicTestMappingProtocol):
        """CPython's ``Lib/test/mapping_tests.py`` ``BasicTestMappingProtocol``, run on fresh stores
        (a temporary directory each, every store closed when the test ends)."""

        def setUp(self) -> None:
            self._dir = Path(tempfile.mkdtemp(prefix="ekv-mapping-"))
            self._stores: list[ekv.EKV] = []
            self.addCleanup(shutil.rmtree, self._dir, True)
            self.addCleanup(self._close_all)

        def _close_all(self) -> None:
            for store in self._stores:
                store.close()

        def type2test(self) -> ekv.EKV:  # type: ignore[override]
            store = ekv.EKV("m", self._dir / str(len(self._stores)), log=False, shards=2)
            self._stores.append(store)
            return store

else:

    @unittest.skip("CPython's test.mapping_tests is not installed (the python3 'test' package is missing)")
    class TestCPythonMappingProtocol(unittest.TestCase):  # type: ignore[no-redef]
        def test_missing(self) -> None: ...


def test_is_a_mutable_mapping(kv: ekv.EKV) -> None:
    assert isinstance(kv, collections.abc.MutableMapping)
    assert not isinstance(ekv.AsyncEKV, collections.abc.MutableMapping)


def test_keyerror_on_absent_deleted_and_expired(fkv: ekv.EKV, clock: FakeClock) -> None:
    with pytest.raises(KeyError):
        fkv["absent"]
    with pytest.raises(KeyError):
        del fkv["absent"]
    assert "absent" not in fkv
    fkv["gone"] = 1
    fkv.delete("gone")
    with pytest.raises(KeyError):
        fkv["gone"]
    with pytest.raises(KeyError):
        del fkv["gone"]
    fkv.put("soon", {"v": 1}, ttl=10)
    assert fkv["soon"] == {"v": 1} and "soon" in fkv
    clock.advance(11)
    with pytest.raises(KeyError):
        fkv["soon"]
    with pytest.raises(KeyError):
        del fkv["soon"]
    assert "soon" not in fkv and not fkv.contains("soon")
    assert fkv.get("soon", "dflt") == "dflt"


def test_del_writes_a_tombstone_only_for_a_visible_key(kv: ekv.EKV) -> None:
    kv["a"] = 1
    del kv["a"]
    assert "a" not in kv
    entries_before = kv.info()["tombstones"]
    with pytest.raises(KeyError):
        del kv["a"]
    assert kv.info()["tombstones"] == entries_before


def test_len_and_count_after_deletes_and_expiry(fkv: ekv.EKV, clock: FakeClock) -> None:
    assert len(fkv) == 0 and fkv.count() == 0 and not fkv
    for i in range(10):
        fkv[f"user/{i}"] = i
    fkv.put("tmp/1", 1, ttl=5)
    fkv.put("tmp/2", 2)
    assert len(fkv) == 12 and fkv
    assert fkv.count("user/") == 10 and fkv.count("tmp/") == 2 and fkv.count("nope/") == 0
    del fkv["user/3"]
    fkv.delete("user/4")
    assert len(fkv) == 10 and fkv.count("user/") == 8
    clock.advance(6)
    assert len(fkv) == 9 and fkv.count("tmp/") == 1
    assert len(fkv) == len(list(fkv)) == len(fkv.keys())


def test_count_prefix_edge_cases(kv: ekv.EKV) -> None:
    top = "\U0010ffff"
    kv[top] = 1
    kv[top + "x"] = 2
    kv["a"] = 3
    assert kv.count(top) == 2 and kv.count("") == 3
    with pytest.raises(TypeError):
        kv.count(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        kv.count("a\x00")


def test_iteration_and_prefix_forms(kv: ekv.EKV) -> None:
    kv.update({"b/2": 2, "a/1": 1, "b/1": [1]})
    assert list(kv) == ["a/1", "b/1", "b/2"]
    assert kv.keys() == ["a/1", "b/1", "b/2"]
    assert kv.keys("b/") == ["b/1", "b/2"]  # still a list, as before
    assert kv.values("b/") == [[1], 2]
    assert kv.items("b/") == [("b/1", [1]), ("b/2", 2)]
    assert kv.items() == list(kv.scan().items())
    assert dict(kv) == {"a/1": 1, "b/1": [1], "b/2": 2}


def test_dict_methods(kv: ekv.EKV) -> None:
    assert kv.setdefault("k", 1) == 1
    assert kv.setdefault("k", 2) == 1
    assert kv.pop("k") == 1 and "k" not in kv
    assert kv.pop("k", None) is None
    with pytest.raises(KeyError):
        kv.pop("k")
    kv["only"] = "x"
    assert kv.popitem() == ("only", "x")
    with pytest.raises(KeyError):
        kv.popitem()
    with pytest.raises(TypeError):
        kv.pop("k", 1, 2)
    assert 1 not in kv  # a key that cannot be stored is not in the store, as with dict


def test_clear_deletes_every_key_and_replicates_as_tombstones(kv: ekv.EKV) -> None:
    for i in range(20):
        kv[f"k{i}"] = i
    version = kv.put("last", 0)
    kv.clear()
    assert len(kv) == 0 and list(kv) == []
    assert kv.info()["tombstones"] == 21
    assert kv.put("after", 1) > version
    assert list(kv) == ["after"]


def test_equality_and_identity(open_kv: Callable[..., ekv.EKV], tmp_path: Path) -> None:
    a = open_kv("a", tmp_path / "a")
    b = open_kv("b", tmp_path / "b")
    assert a == b and a == {}
    a["x"] = 1
    assert a != b and a == {"x": 1}
    b["x"] = 1
    assert a == b and a is not b
    a.close()
    assert a == a  # identity needs no read, even closed
    with pytest.raises(TypeError):
        hash(b)


def test_bad_input_writes_nothing(kv: ekv.EKV) -> None:
    with pytest.raises(TypeError):
        kv[1] = "x"  # type: ignore[index]
    with pytest.raises(ValueError):
        kv[""] = "x"
    with pytest.raises(TypeError):
        kv[1]  # type: ignore[index]
    assert len(kv) == 0


def test_async_forms(data_dir: Path) -> None:
    async def main() -> None:
        async with ekv.AsyncEKV("a", data_dir, log=False, shards=2) as kv:
            assert await kv.count() == 0
            await kv.put("b/1", 1)
            await kv.put("b/2", 2)
            await kv.put("c", 3)
            assert await kv.count() == 3 and await kv.count("b/") == 2
            assert await kv.contains("c") and not await kv.contains("nope")
            assert [key async for key in kv] == ["b/1", "b/2", "c"]
            assert await kv.keys("b/") == ["b/1", "b/2"]
            assert await kv.values("b/") == [1, 2]
            assert await kv.items() == [("b/1", 1), ("b/2", 2), ("c", 3)]
            assert await kv.setdefault("d", 4) == 4 and await kv.setdefault("d", 5) == 4
            await kv.update({"e": 5}, f=6)
            assert await kv.pop("e") == 5 and await kv.pop("e", None) is None
            with pytest.raises(KeyError):
                await kv.pop("e")
            assert await kv.popitem() == ("b/1", 1)
            await kv.clear()
            assert await kv.count() == 0 and [key async for key in kv] == []
            with pytest.raises(KeyError):
                await kv.popitem()

    asyncio.run(main())


def test_partition_tells_equal_stores_apart(open_kv: Callable[..., ekv.EKV], tmp_path: Path) -> None:
    """Two replicas with the same items are ``==`` (dict equality); ekv.testing.partition must
    still cut them apart (it compared by ``in``, i.e. by equality, before the mapping protocol)."""
    fast = {
        "listen": "127.0.0.1:0",
        "shards": 2,
        "heartbeat_interval": 0.1,
        "heartbeat_timeout": 1.0,
        "reconnect_max": 0.3,
    }
    a = open_kv("c", tmp_path / "a", **fast)
    b = open_kv("c", tmp_path / "b", **fast)
    b.connect(a.listen_address)  # type: ignore[arg-type]

    def connected(kv: ekv.EKV) -> bool:
        return any(m.get("connected") for m in kv.info()["members"].values())

    wait_until(lambda: connected(a) and connected(b))
    assert a == b  # both empty
    partition([a], [b])
    wait_until(lambda: not connected(a) and not connected(b), message="equal stores were not partitioned")
    partition([a, b])
