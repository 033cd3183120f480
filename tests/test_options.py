"""Every constructor option of EKV and AsyncEKV is validated at construction: a wrong type or
value raises ekv.ConfigError naming the option, and nothing is created on disk."""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import ssl
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import ekv
from ekv import _options

NAN, INF = math.nan, math.inf

COUNTS = [True, False, 0, -1, 2.5, "8", NAN, INF, None, [4]]
"""Wrong for any option that is a positive int (bool is an int to Python, not to ekv)."""
DURATIONS = [True, False, 0, 0.0, -1, -0.5, "8", NAN, INF, -INF, timedelta(0), timedelta(seconds=-1), [1], 10**30]
"""Wrong for any duration (a positive number of seconds or a timedelta)."""
CLUSTER_DURATIONS = [d for d in DURATIONS if d is not None]

BAD: dict[str, list[Any]] = {
    "name": ["", "-dash-first", "has space", "x" * 65, 5, True, None, b"bytes", "é"],
    "data_dir": ["", 5, True, None, b"/tmp/bytes", "/tmp/nul\x00byte", "/tmp/\udcff"],
    "shards": [*COUNTS, 1025],
    "tombstone_ttl": DURATIONS,
    "gc_interval": DURATIONS,
    "takeover_interval": DURATIONS,
    "log": ["debug", "INFO", 0, 0.0, 1, None, "", ["info"]],
    "durability": ["fsync", "", True, 1, None],
    "codec": ["msgpack", "", 1, True, object(), ekv.JsonCodec],
    "clock": [1, "system", True, object()],
    "max_value_size": [*COUNTS, 10**12],
    "subscriber_queue": COUNTS,
    "allow_stale_startup": [1, 0, "yes", None, NAN],
    "consistent_prefixes": ["c/", 1, [""], [1], ["a\x00b"], None],
    "cluster_size": [True, 0, -1, 2.5, "3", 65, 3],  # 3: more than one voter needs a cluster
    "role": ["leader", "", None, 1, "observer"],  # an observer needs a cluster
    "consistent_timeout": DURATIONS,
    # cluster options (the others need listen=, peers= or discovery= to mean anything)
    "listen": [1, True, "noport", "127.0.0.1:99999", "127.0.0.1:-1", "127.0.0.1:x", "::1:80", ""],
    "peers": [1, True, ["noport"], [1], [None], {"a:1"}, ["127.0.0.1:70000"]],
    "discovery": [1, True, ["noport"], [1], {"a:1"}],
    "cookie": [1, True, [1], 2.5],
    "advertise": [1, True, "noport", ""],
    "ssl_server": [1, True, "ctx", object()],
    "ssl_client": [1, True, "ctx", object()],
    "heartbeat_interval": CLUSTER_DURATIONS,
    "heartbeat_timeout": CLUSTER_DURATIONS,
    "anti_entropy_interval": CLUSTER_DURATIONS,
    "discovery_interval": CLUSTER_DURATIONS,
    "sync_chunk_entries": [c for c in COUNTS if c is not None],
    "sync_chunk_bytes": [c for c in COUNTS if c is not None],
    "send_buffer": [c for c in COUNTS if c is not None],
    "compression_threshold": [True, 0, -1, 2.5, "8", NAN, INF, [4]],
    "log_retention": CLUSTER_DURATIONS,
    "quarantine": [1, 0, "yes", NAN],
    "connect_timeout": CLUSTER_DURATIONS,
    "reconnect_max": CLUSTER_DURATIONS,
    "workers": [*COUNTS, 10**6],  # AsyncEKV only
}


class _Clock:
    def __init__(self, value: Any) -> None:
        self.value = value

    def now_ns(self) -> Any:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


BAD["clock"] += [_Clock(None), _Clock(1.5e18), _Clock(True), _Clock("1"), _Clock(-1), _Clock(2**63), _Clock(OSError())]

CLUSTER = {
    "cookie",
    "advertise",
    "ssl_server",
    "ssl_client",
    "heartbeat_interval",
    "heartbeat_timeout",
    "anti_entropy_interval",
    "discovery_interval",
    "sync_chunk_entries",
    "sync_chunk_bytes",
    "send_buffer",
    "compression_threshold",
    "log_retention",
    "quarantine",
    "connect_timeout",
    "reconnect_max",
}

FACADES: list[Callable[..., Any]] = [ekv.EKV, ekv.AsyncEKV]


def facade_options(facade: Callable[..., Any]) -> set[str]:
    """The options a facade takes: its named parameters and the keys of its ``**options`` TypedDict."""
    parameters = inspect.signature(facade).parameters
    names = {name for name, p in parameters.items() if p.kind is not p.VAR_KEYWORD}
    for parameter in parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            match = re.fullmatch(r"Unpack\[(\w+)\]", str(parameter.annotation))
            assert match, parameter.annotation
            names |= set(getattr(_options, match.group(1)).__annotations__)
    return names


def test_the_table_covers_every_option() -> None:
    for facade in FACADES:
        expected = set(BAD) - ({"workers"} if facade is ekv.EKV else set())
        assert facade_options(facade) == expected, facade
    assert set(_options.DEFAULTS) == set(_options.AsyncOptions.__annotations__)


@pytest.mark.parametrize("facade", FACADES)
def test_a_misspelt_option_is_a_config_error_and_a_type_error_naming_it(
    facade: Callable[..., Any], tmp_path: Path
) -> None:
    data_dir = tmp_path / "store"
    for misspelt, meant in [("shard", "shards"), ("tombstone_tll", "tombstone_ttl"), ("colour", None)]:
        with pytest.raises(ekv.ConfigError) as info:
            facade("ok", data_dir, log=False, **{misspelt: 1})
        assert isinstance(info.value, TypeError)  # what Python raises for an unexpected keyword
        assert repr(misspelt) in str(info.value), str(info.value)
        if meant:
            assert f"did you mean {meant!r}" in str(info.value), str(info.value)
    assert not data_dir.exists()


def _cases() -> list[Any]:
    cases = []
    for option, values in BAD.items():
        for facade in FACADES:
            if option == "workers" and facade is ekv.EKV:
                continue
            for index, value in enumerate(values):
                cases.append(pytest.param(facade, option, value, id=f"{facade.__name__}-{option}-{index}"))
    return cases


@pytest.mark.parametrize(("facade", "option", "value"), _cases())
def test_a_bad_option_is_a_config_error_naming_it(
    facade: Callable[..., Any], option: str, value: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "store"
    args: dict[str, Any] = {"name": "ok", "data_dir": data_dir, "log": False}
    if option in CLUSTER:
        args["listen"] = "127.0.0.1:0"
    args[option] = value
    with pytest.raises(ekv.ConfigError) as info:
        facade(**args)
    words = {option, option.replace("_", " ")} | ({"peer"} if option == "peers" else set())
    assert any(word in str(info.value) for word in words), str(info.value)
    assert not data_dir.exists()


def test_good_options_are_accepted(tmp_path: Path) -> None:
    context = ssl.create_default_context()
    options: dict[str, Any] = {
        "shards": 3,
        "tombstone_ttl": timedelta(days=1),
        "gc_interval": 60.5,
        "log": True,
        "durability": "full",
        "codec": ekv.JsonCodec(),
        "max_value_size": 1000,
        "subscriber_queue": 5,
        "allow_stale_startup": True,
        "listen": "127.0.0.1:0",
        "cookie": b"secret",
        "ssl_server": None,
        "ssl_client": context,
        "heartbeat_interval": 0.5,
        "heartbeat_timeout": timedelta(seconds=2),
        "compression_threshold": False,
        "quarantine": False,
    }
    with ekv.EKV("ok", tmp_path / "a", **{**options, "log": False}) as kv:
        assert kv.info()["options"]["shards"] == 3
    asyncio.run(ekv.AsyncEKV("ok", tmp_path / "b", workers=1, **options).close())
