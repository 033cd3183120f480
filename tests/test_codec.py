"""The JSON codec refuses values it would not give back unchanged (and the codec of a store:
see the tests that follow it in later sections)."""

from __future__ import annotations

import json
import time
from collections import OrderedDict, namedtuple
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ekv
from ekv.testing import entries

# -- the JSON codec refuses what it would change ---------------------------------------------------

Point = namedtuple("Point", "x y")

NOT_ROUND_TRIP = [
    pytest.param({1: "a"}, "the value: the dict key 1 (int)", id="int-key"),
    pytest.param({1: "a", "1": "b"}, "dict key 1", id="colliding-keys"),
    pytest.param({None: 1}, "dict key None", id="none-key"),
    pytest.param({True: 1}, "dict key True", id="bool-key"),
    pytest.param({1.5: 1}, "dict key 1.5", id="float-key"),
    pytest.param((1, 2), "the value: a tuple", id="tuple"),
    pytest.param({"a": [1, {"b": (3,)}]}, "the value['a'][1]['b']: a tuple", id="nested-tuple"),
    pytest.param([{"ok": 1}, {"x": {2: 3}}], "the value[1]['x']: the dict key 2", id="nested-key"),
    pytest.param({"p": Point(1, 2)}, "the value['p']: a Point", id="namedtuple"),
]


@pytest.mark.parametrize(("value", "where"), NOT_ROUND_TRIP)
def test_json_refuses_values_it_would_change(tmp_path: Path, value: Any, where: str) -> None:
    with ekv.EKV("s", tmp_path / "s", shards=2, codec="json", log=False) as kv:
        kv.put("k", "old")
        with pytest.raises(ekv.EncodeError) as info:
            kv.put("k", value)
        assert where in str(info.value) and "'k'" in str(info.value), str(info.value)
        assert isinstance(info.value.__cause__, TypeError)
        with pytest.raises(ekv.EncodeError):
            kv.put("fresh", value, ttl=60)
        assert kv.get("k") == "old" and kv.get("fresh") is None
        assert [e.key for e in entries(kv)] == ["k"]


ROUND_TRIP = [
    {"name": "Alice", "tags": ["a", "b"], "n": 1.5, "none": None, "yes": True, "big": 2**70},
    [1, [2, [3, {"deep": [{}]}]]],
    "text",
    "",
    0,
    -0.0,
    None,
    [],
    {},
    OrderedDict([("b", 1), ("a", [OrderedDict(c=2)])]),
]


@pytest.mark.parametrize("value", ROUND_TRIP)
def test_json_gives_back_what_it_accepts(tmp_path: Path, value: Any) -> None:
    with ekv.EKV("s", tmp_path / "s", shards=2, codec="json", log=False) as kv:
        kv.put("k", value)
        assert kv.get("k") == value


def test_json_round_trip_check_costs_little() -> None:
    """The check runs on every put; it must stay a small fraction of the encoding itself (measured
    on this machine: about 1.2x-1.5x json.dumps alone, far below one SQLite commit)."""
    codec = ekv.JsonCodec()
    value = {
        "user": {"id": 1, "tags": ["a", "b", "c"], "p": {"x": 1.5, "y": None}},
        "items": [{"k": i} for i in range(50)],
    }

    def best(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(500):
                fn()
            times.append(time.perf_counter() - start)
        return min(times)

    plain = best(lambda: json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())
    checked = best(lambda: codec.dumps(value))
    assert checked < 4 * plain, (checked, plain)  # generous: a loaded machine is noisy
