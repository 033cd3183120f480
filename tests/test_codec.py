"""The codec of a store: recorded in its data directory, checked on open, between members and by
the command line; and the JSON codec refusing values it would not give back unchanged."""

from __future__ import annotations

import json
import logging
import os
import pickle
import struct
import subprocess
import sys
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ekv
from ekv._cli import main
from ekv._cluster import auth, wire
from ekv._cluster.messages import PROTOCOL_VERSION, Hello
from ekv._storage.store import ShardedStore
from ekv._values import Values
from ekv.testing import entries, wait_until

FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 1.0, "anti_entropy_interval": 0.3, "reconnect_max": 0.3}


def manifest(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / "ekv.json").read_text())
    return data


def files(path: Path) -> dict[str, bytes]:
    """Every file of a closed data directory and its bytes (LOCK aside: opening takes it)."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file() and p.name != "LOCK"}


class Upper:
    """A custom codec with a declared name."""

    name = "upper-v1"

    def dumps(self, value: str) -> bytes:
        return value.upper().encode()

    def loads(self, data: bytes) -> str:
        return data.decode()


class Nameless:
    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


# -- recorded at creation, checked at open ---------------------------------------------------------


def test_the_codec_is_recorded_and_another_is_refused_writing_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with ekv.EKV("s", path, shards=2, codec="json", log=False) as kv:
        kv.put("a", {"x": [1, 2]})
    assert manifest(path)["codec"] == "json"
    before = files(path)
    for wrong in ("pickle", Upper()):
        with pytest.raises(ekv.ConfigError) as info:
            ekv.EKV("s", path, shards=2, codec=wrong, log=False)
        message = str(info.value)
        assert "'json'" in message and "codec=" in message, message
        assert ("'pickle'" if wrong == "pickle" else "'upper-v1'") in message, message
        assert files(path) == before
    with pytest.raises(ekv.ConfigError, match="json"):
        ekv.EKV("s", path, shards=2, log=False)  # the default, pickle, is just another codec
    with ekv.EKV("s", path, shards=2, codec="json", log=False) as kv:
        assert kv.get("a") == {"x": [1, 2]}
        assert kv.info()["codec"] == "json"


def test_the_async_facade_checks_the_codec_too(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "s"
    ekv.EKV("s", path, shards=2, codec="json", log=False).close()

    async def main_() -> None:
        with pytest.raises(ekv.ConfigError, match="'json'"):
            await ekv.AsyncEKV("s", path, shards=2, log=False).open()

    asyncio.run(main_())


def test_a_manifest_without_a_codec_counts_as_pickle(tmp_path: Path) -> None:
    path = tmp_path / "old"
    with ekv.EKV("old", path, shards=2, log=False) as kv:
        kv.put("a", (1, "tuple"))
    data = manifest(path)
    assert data.pop("codec") == "pickle"
    (path / "ekv.json").write_text(json.dumps(data))  # as an older ekv wrote it
    with pytest.raises(ekv.ConfigError, match="older ekv") as info:
        ekv.EKV("old", path, shards=2, codec="json", log=False)
    assert "'pickle'" in str(info.value) and "'json'" in str(info.value)
    with ekv.EKV("old", path, shards=2, log=False) as kv:
        assert kv.get("a") == (1, "tuple")


def test_a_custom_codec_is_recorded_by_its_name(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with ekv.EKV("s", path, shards=2, codec=Upper(), log=False) as kv:
        kv.put("a", "hello")
    assert manifest(path)["codec"] == "upper-v1"

    class SameName:  # another object, the same declared name: the same encoding
        name = "upper-v1"
        dumps = Upper.dumps
        loads = Upper.loads

    with ekv.EKV("s", path, shards=2, codec=SameName(), log=False) as kv:
        assert kv.get("a") == "HELLO"
    with pytest.raises(ekv.ConfigError, match="upper-v1"):
        ekv.EKV("s", path, shards=2, codec=Nameless(), log=False)


def test_a_nameless_custom_codec_is_recorded_by_its_class(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with ekv.EKV("s", path, shards=2, codec=Nameless(), log=False) as kv:
        kv.put("a", 1)
        assert kv.info()["codec"] == f"{__name__}.Nameless"
    assert manifest(path)["codec"] == f"{__name__}.Nameless"
    with ekv.EKV("s", path, shards=2, codec=Nameless(), log=False) as kv:
        assert kv.get("a") == 1


@pytest.mark.parametrize("name", ["", " padded ", 5, b"bytes", "new\nline"])
def test_an_unusable_codec_name_is_a_config_error(tmp_path: Path, name: object) -> None:
    class Named(Nameless):
        pass

    Named.name = name  # type: ignore[attr-defined]
    with pytest.raises(ekv.ConfigError, match="name"):
        ekv.EKV("s", tmp_path / "s", codec=Named(), log=False)
    assert not (tmp_path / "s").exists()


def test_a_decode_error_names_the_key(tmp_path: Path) -> None:
    class Fussy(Nameless):
        name = "fussy"

        def loads(self, data: bytes) -> Any:
            value = pickle.loads(data)
            if value == "bad":
                raise ValueError("cannot stand it")
            return value

    with ekv.EKV("s", tmp_path / "s", shards=2, codec=Fussy(), log=False) as kv:
        for i in range(20):
            kv.put(f"k/{i:02d}", i)
        kv.put("k/13", "bad")
        with pytest.raises(ekv.DecodeError, match="'k/13'"):
            kv.scan("")
        with pytest.raises(ekv.DecodeError, match="'k/13'"):
            kv.get("k/13")
        assert kv.get("k/12") == 12


# -- between members -------------------------------------------------------------------------------


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., ekv.EKV]]:
    opened: list[ekv.EKV] = []

    def _make(**options: Any) -> ekv.EKV:
        options = {**FAST, "listen": "127.0.0.1:0", "shards": 2, "log": "info", **options}
        kv = ekv.EKV("c", tmp_path / f"n{len(opened)}", **options)
        opened.append(kv)
        return kv

    yield _make
    for kv in opened:
        kv.close()


def test_a_member_with_another_codec_is_refused_and_logged(
    make: Callable[..., ekv.EKV], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ekv"):
        a = make(codec="json")
        a.put("k", "from a")
        b = make(codec="pickle", peers=[a.listen_address])
        b.put("j", "from b")
        wait_until(lambda: any(m["last_error"] for m in b.info()["members"].values()))
        wait_until(lambda: "codec" in caplog.text)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "codec" in r.getMessage()]
    assert any("'json'" in w and "'pickle'" in w for w in warnings), warnings
    errors = [m["last_error"] for m in b.info()["members"].values()]
    assert any("codec" in (e or "") for e in errors), errors
    assert a.get("j") is None and b.get("k") is None
    # the same codec replicates as usual
    c = make(codec="json", peers=[a.listen_address])
    wait_until(lambda: c.get("k") == "from a")


def frame(body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, 1) + body  # 1: Hello


def _hello(**extra: Any) -> Hello:
    return Hello(
        **{
            **dict(
                versions=(PROTOCOL_VERSION,),
                features=("zlib",),
                instance="c",
                node_id="n1",
                shards=2,
                nonce=auth.new_nonce(),
                wall_ns=5,
            ),
            **extra,
        }
    )


def test_hello_carries_the_codec_and_one_without_it_is_still_read() -> None:
    hello = _hello(codec="json")
    assert wire.decode(wire.encode(hello), max_frame_size=1 << 16) == hello
    obj = json.loads(wire.encode(hello)[5:])
    del obj["codec"]  # what an older ekv sends
    body = json.dumps(obj).encode()
    assert wire.decode(frame(body), max_frame_size=1 << 16) == _hello(nonce=hello.nonce)
    obj["codec"] = 7
    body = json.dumps(obj).encode()
    with pytest.raises(ekv.ProtocolError, match="codec"):
        wire.decode(frame(body), max_frame_size=1 << 16)


def test_a_member_that_does_not_announce_its_codec_is_not_refused() -> None:
    from ekv._cluster.session import Refused, check_peer_hello

    mine = _hello(codec="json")
    older = Hello((PROTOCOL_VERSION,), ("zlib",), "c", "n2", 2, auth.new_nonce())
    check_peer_hello(mine, older)  # an older ekv does not say: nothing to compare
    check_peer_hello(mine, Hello((PROTOCOL_VERSION,), ("zlib",), "c", "n2", 2, auth.new_nonce(), codec="json"))
    with pytest.raises(Refused, match=r"'pickle'.*'json'"):
        check_peer_hello(mine, Hello((PROTOCOL_VERSION,), ("zlib",), "c", "n2", 2, auth.new_nonce(), codec="pickle"))


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


# -- the command line reads the codec from the directory -----------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_offline_commands_use_the_recorded_codec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s"
    with ekv.EKV("app", d, shards=2, codec="json", log=False) as kv:
        kv.put("user/1", {"name": "Alice"})
    code, out, err = run(capsys, "get", "--data-dir", str(d), "user/1")
    assert (code, err) == (0, "") and json.loads(out) == {"name": "Alice"}
    assert run(capsys, "put", "--data-dir", str(d), "user/2", '{"name": "Bob"}')[0] == 0
    code, out, _ = run(capsys, "scan", "--data-dir", str(d))
    assert json.loads(out) == {"user/1": {"name": "Alice"}, "user/2": {"name": "Bob"}}
    assert run(capsys, "delete", "--data-dir", str(d), "user/1")[0] == 0
    code, out, err = run(capsys, "get", "--data-dir", str(d), "user/2", "--codec", "json")
    assert code == 0 and json.loads(out) == {"name": "Bob"}
    before = files(d)
    for command in ("get", "put", "delete"):
        argv = [command, "--data-dir", str(d), "user/2", *(["1"] if command == "put" else []), "--codec", "pickle"]
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and "'json'" in err and "'pickle'" in err, err
        assert err.count("\n") == 1
    assert files(d) == before
    with ekv.EKV("app", d, shards=2, codec="json", log=False) as kv:
        assert kv.scan("") == {"user/2": {"name": "Bob"}}


def test_put_creates_a_store_with_the_codec_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s"
    assert run(capsys, "put", "--data-dir", str(d), "--codec", "json", "k", "[1, 2]")[0] == 0
    assert manifest(d)["codec"] == "json"
    with ekv.EKV("ekv", d, codec="json", log=False) as kv:
        assert kv.get("k") == [1, 2]
    d2 = tmp_path / "default"
    assert run(capsys, "put", "--data-dir", str(d2), "k", "1")[0] == 0
    assert manifest(d2)["codec"] == "pickle"


def test_offline_commands_on_a_custom_codec_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s"
    with ekv.EKV("app", d, shards=2, codec=Upper(), log=False) as kv:
        kv.put("a", "x")
    code, out, _ = run(capsys, "keys", "--data-dir", str(d))
    assert (code, out) == (0, "a\n")
    for argv in (["get", "--data-dir", str(d), "a"], ["put", "--data-dir", str(d), "a", '"y"']):
        code, out, err = run(capsys, *argv)
        assert code == 2 and "upper-v1" in err and err.count("\n") == 1, err
    store = ShardedStore.open_readonly(d)
    try:
        with pytest.raises(ekv.DecodeError, match="upper-v1"):
            Values(store).lookup("a")
    finally:
        store.close()


def test_serve_records_and_checks_its_codec(tmp_path: Path) -> None:
    env = dict(os.environ, EKV_COOKIE="c00kie")
    d = str(tmp_path / "n")
    base = [
        sys.executable,
        "-m",
        "ekv",
        "serve",
        "--data-dir",
        d,
        "--name",
        "svc",
        "--shards",
        "2",
        "--log",
        "quiet",
        "--listen",
        "127.0.0.1:0",
    ]
    proc = subprocess.Popen(
        [*base, "--codec", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "ekv serve" in line, line + (proc.stderr.read() if proc.stderr else "")
        proc.terminate()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert manifest(Path(d))["codec"] == "json"
    refused = subprocess.run([*base, "--codec", "pickle"], capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 2 and "'json'" in refused.stderr and "'pickle'" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    both = subprocess.run(
        [*base, "--codec", "json", "--option", 'codec="json"'], capture_output=True, text=True, timeout=120, env=env
    )
    assert both.returncode == 2 and "codec" in both.stderr
