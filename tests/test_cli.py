"""The ``ekv`` command line: every command through main(argv), and as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import ekv
from ekv._cli import _parser, main
from ekv._cluster.client import Client
from ekv.testing import wait_until


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- offline commands on a data directory -----------------------------------------------------------


def test_put_get_delete_scan_keys_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "store")
    assert run(capsys, "put", "--data-dir", d, "user/1", '{"name": "Alice", "n": 1.5}')[0] == 0
    assert run(capsys, "put", "--data-dir", d, "user/2", '"bob"', "--ttl", "3600")[0] == 0
    code, out, err = run(capsys, "get", "--data-dir", d, "user/1")
    assert (code, json.loads(out), err) == (0, {"name": "Alice", "n": 1.5}, "")
    code, out, _ = run(capsys, "scan", "--data-dir", d, "user/")
    assert json.loads(out) == {"user/1": {"name": "Alice", "n": 1.5}, "user/2": "bob"}
    code, out, _ = run(capsys, "keys", "--data-dir", d)
    assert out.splitlines() == ["user/1", "user/2"]
    assert run(capsys, "delete", "--data-dir", d, "user/1")[0] == 0
    code, out, err = run(capsys, "get", "--data-dir", d, "user/1")
    assert (code, out) == (1, "")
    # the store is a normal ekv store named by --name (default "ekv")
    with ekv.EKV("ekv", d, log=False) as kv:
        assert kv.get("user/2") == "bob"


def test_put_creates_a_store_named_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "s")
    assert run(capsys, "put", "--data-dir", d, "--name", "orders", "k", "1")[0] == 0
    assert json.loads((Path(d) / "ekv.json").read_text())["name"] == "orders"
    code, out, _ = run(capsys, "get", "--data-dir", d, "k")
    assert (code, out.strip()) == (0, "1")


def test_read_commands_report_a_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in (
        ["get", "--data-dir", str(tmp_path), "k"],
        ["scan", "--data-dir", str(tmp_path)],
        ["keys", "--data-dir", str(tmp_path)],
        ["info", "--data-dir", str(tmp_path)],
        ["delete", "--data-dir", str(tmp_path), "k"],
    ):
        code, out, err = run(capsys, *command)
        assert code == 2 and out == "" and "no ekv store" in err and "Traceback" not in err
        assert err.count("\n") == 1


def test_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "s")
    code, _, err = run(capsys, "put", "--data-dir", d, "k", "{not json")
    assert code == 2 and "not valid JSON" in err and err.count("\n") == 1
    code, _, err = run(capsys, "put", "--data-dir", d, "k", "1", "--ttl", "-1")
    assert code == 2 and "--ttl" in err
    code, _out, err = run(capsys, "put", "--data-dir", d, "", "1")
    assert code == 2 and "empty" in err
    code, _, err = run(capsys, "frobnicate")
    assert code == 64


def test_offline_reads_do_not_refresh_last_active_at(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s"
    run(capsys, "put", "--data-dir", str(d), "k", "1")
    before = {p.name: p.read_bytes() for p in d.glob("shard_*.db")}
    for command in ("get", "scan", "keys", "info"):
        args = [command, "--data-dir", str(d)] + (["k"] if command == "get" else [])
        assert run(capsys, *args)[0] == 0
    after = {p.name: p.read_bytes() for p in d.glob("shard_*.db")}
    assert before == after  # reading changed nothing (a stale directory stays stale)


def test_offline_commands_attach_to_a_running_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SPEC 12: the CLI's data-directory commands work while a service holds the directory."""
    with ekv.EKV("ekv", tmp_path, log=False) as kv:
        kv.put("k", 1)
        code, out, _err = run(capsys, "get", "--data-dir", str(tmp_path), "k")
        assert code == 0 and out.strip() == "1"
        code, _out, _err = run(capsys, "put", "--data-dir", str(tmp_path), "from-cli", "2")
        assert code == 0 and kv.get("from-cli") == 2
        code, out, _ = run(capsys, "info", "--data-dir", str(tmp_path), "--json")
        info = json.loads(out)
        assert code == 0 and info["running"] is True and info["node_process"]["pid"] == os.getpid()
        code, out, _ = run(capsys, "info", "--data-dir", str(tmp_path))
        assert f"node process pid {os.getpid()}" in out


def test_info_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "s")
    run(capsys, "put", "--data-dir", d, "a", "1")
    run(capsys, "delete", "--data-dir", d, "b")
    code, out, _ = run(capsys, "info", "--data-dir", d, "--json")
    info = json.loads(out)
    assert code == 0 and info["keys"] == 1 and info["tombstones"] == 1 and info["running"] is False
    code, out, _ = run(capsys, "info", "--data-dir", d)
    assert "instance     ekv" in out and "shard" in out


def ekv_node_id(path: Path) -> str:
    return str(json.loads((path / "ekv.json").read_text())["node_id"])


# -- backup, check ----------------------------------------------------------------------------------


def test_backup_while_running_and_restore_by_opening(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    with ekv.EKV("app", src, log=False, shards=3) as kv:
        for i in range(500):
            kv.put(f"k{i}", i)
        kv.delete("k7")
        code, out, err = run(capsys, "backup", "--data-dir", str(src), str(dest))
        assert code == 0 and "backed up 3 shards" in out
        kv.put("after-backup", 1)
    with ekv.EKV("app", dest, log=False, shards=3) as copy:
        assert copy.node_id != ekv_node_id(src)  # a restored backup is a new member
        assert copy.get("k499") == 499 and copy.get("k7") is None and copy.get("after-backup") is None
        assert len(copy.keys()) == 499
    assert run(capsys, "check", "--data-dir", str(dest))[0] == 0
    code, _, err = run(capsys, "backup", "--data-dir", str(src), str(dest))
    assert code == 2 and "not empty" in err


def test_check_reports_problems_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s"
    run(capsys, "put", "--data-dir", str(d), "k", "1")
    code, out, _ = run(capsys, "check", "--data-dir", str(d))
    assert code == 0 and "healthy" in out
    shard = d / "shard_001.db"
    data = bytearray(shard.read_bytes())
    data[4096:8192] = b"\xa5" * 4096  # damage a whole page
    shard.write_bytes(bytes(data))
    before = shard.read_bytes()
    code, out, _ = run(capsys, "check", "--data-dir", str(d))
    assert code == 2 and "PROBLEM" in out and "shard_001.db" in out
    assert shard.read_bytes() == before
    (d / "shard_002.db").unlink()
    code, out, _ = run(capsys, "check", "--data-dir", str(d))
    assert "shard_002.db: missing" in out
    code, out, _ = run(capsys, "check", "--data-dir", str(tmp_path / "nothing"))
    assert code == 2


# -- against a running node ---------------------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ekv.EKV]:
    monkeypatch.setenv("EKV_COOKIE", "sesame")
    with ekv.EKV("live", tmp_path / "live", listen="127.0.0.1:0", cookie="sesame", log=False, codec="json") as kv:
        yield kv


def test_commands_against_a_running_node(node: ekv.EKV, capsys: pytest.CaptureFixture[str]) -> None:
    addr = node.listen_address
    assert addr is not None
    assert run(capsys, "put", "--node", addr, "a/1", '{"x": [1, 2]}', "--ttl", "0.5e3")[0] == 0
    assert node.get("a/1") == {"x": [1, 2]}
    code, out, _ = run(capsys, "get", "--node", addr, "a/1")
    assert (code, json.loads(out)) == (0, {"x": [1, 2]})
    assert run(capsys, "get", "--node", addr, "missing")[:2] == (1, "")
    node.put("a/2", "two")
    assert json.loads(run(capsys, "scan", "--node", addr, "a/")[1]) == {"a/1": {"x": [1, 2]}, "a/2": "two"}
    assert run(capsys, "keys", "--node", addr, "a/")[1].splitlines() == ["a/1", "a/2"]
    assert run(capsys, "delete", "--node", addr, "a/2")[0] == 0
    assert node.get("a/2") is None
    code, out, _ = run(capsys, "info", "--node", addr, "--json")
    assert code == 0 and json.loads(out)["node_id"] == node.node_id
    assert "instance     live" in run(capsys, "info", "--node", addr)[1]


def test_wrong_cookie_and_unreachable_node(
    node: ekv.EKV, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    addr = node.listen_address
    assert addr is not None
    monkeypatch.setenv("EKV_COOKIE", "wrong")
    code, _, err = run(capsys, "get", "--node", addr, "k")
    assert code == 2 and ("refused" in err or "authentication" in err) and err.count("\n") == 1
    cookie = tmp_path / "cookie"
    cookie.write_text("sesame\n")
    assert run(capsys, "get", "--node", addr, "k", "--cookie-file", str(cookie))[0] == 1
    code, _, err = run(capsys, "get", "--node", "127.0.0.1:1", "k")
    assert code == 2 and "cannot connect" in err


def test_a_client_cannot_partition_a_node(tmp_path: Path, node: ekv.EKV) -> None:
    """The client protocol has no test hook: anyone with the cookie used to be able to send
    ``block`` and cut a node off from its members. It is now an unknown command, and the
    members stay connected."""
    with ekv.EKV(
        "live", tmp_path / "peer", cookie="sesame", log=False, codec="json", peers=[node.listen_address]
    ) as peer:

        def connected() -> bool:
            return bool(node.info()["members"].get(peer.node_id, {}).get("connected"))

        wait_until(connected, timeout=30, message="the peer did not connect")
        client = Client(node.listen_address or "", cookie=b"sesame")
        client.connect()
        try:
            with pytest.raises(ekv.ClusterError, match="unknown command 'block'"):
                client.call("block", node_ids=[peer.node_id])
            assert client.call("get", key="k") is None  # the client session is still served
        finally:
            client.close()
        peer.put("after", 1)
        wait_until(lambda: node.get("after") == 1, timeout=30, message="the members were cut apart")
        assert connected()


# -- help, parity with the documentation --------------------------------------------------------


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    expected = {"demo", "serve", "put", "get", "delete", "scan", "keys", "info", "backup", "check", "replace-voter"}
    assert set(commands) == expected
    for command in commands:
        assert main([command, "--help"]) == 0
        assert "usage: ekv " + command in capsys.readouterr().out
    assert main(["--help"]) == 0


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"ekv {ekv.__version__}\n", "")
    done = subprocess.run([sys.executable, "-m", "ekv", "--version"], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"ekv {ekv.__version__}\n", "")


def test_documented_grammar_matches_the_parser() -> None:
    spec = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    parser = _parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command, sub in commands.items():
        assert f"ekv {command}" in spec, command
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in spec, f"{command} {option} is not documented in docs/cli.md"


# -- real processes -----------------------------------------------------------------------------------


def ekv_cmd(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ekv", *args], capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]


def test_python_dash_m_ekv(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    assert ekv_cmd("put", "--data-dir", d, "k", '"v"').returncode == 0
    result = ekv_cmd("get", "--data-dir", d, "k")
    assert (result.returncode, result.stdout.strip()) == (0, '"v"')
    result = ekv_cmd("get", "--data-dir", d, "nope")
    assert (result.returncode, result.stdout) == (1, "")


def test_serve_runs_a_node_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = dict(os.environ, EKV_COOKIE="c00kie")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ekv",
            "serve",
            "--data-dir",
            str(tmp_path / "n"),
            "--name",
            "svc",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--log",
            "info",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        address = line.rsplit("listening on ", 1)[1].strip()
        put = ekv_cmd("put", "--node", address, "k", "42", env=env)
        assert put.returncode == 0, put.stderr
        assert ekv_cmd("get", "--node", address, "k", env=env).stdout.strip() == "42"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        stderr = proc.stderr.read() if proc.stderr else ""
        assert "closed" in stderr  # logging on stderr, including the clean shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    with ekv.EKV("svc", tmp_path / "n", shards=2, log=False) as kv:
        assert kv.get("k") == 42


def test_serve_never_takes_the_cookie_from_argv() -> None:
    parser = _parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    assert not any(o == "--cookie" for a in serve._actions for o in a.option_strings)


def test_demo_runs_unattended(tmp_path: Path) -> None:
    result = ekv_cmd("demo", stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in (
        "full mesh",
        "1. replication",
        "has it after",
        "2. partition",
        "isolated",
        "3. heal",
        "converged",
        "wins on every node",
        "all stopped and removed",
    ):
        assert expected in out, expected
    # every node process was stopped and its temporary directory removed
    tmp = Path(out.split("(data in ", 1)[1].split("/n1)", 1)[0])
    wait_until(lambda: not tmp.exists(), timeout=30)
