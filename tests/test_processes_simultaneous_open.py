"""Processes that open one clustered data directory at the same moment (SPEC section 12), as
workers started together do (gunicorn without ``--preload``, a group restarted after a crash):
found by the chaos harness's group mode, which starts a node's processes at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from _linechild import LineChild
from ekv.testing.proxy import free_ports

DEADLINE_S = 60.0
PROCESSES = 4
ROUNDS = 3

OPENER = textwrap.dedent(
    """
    import sys, ekv
    data, port = sys.argv[1], sys.argv[2]
    print("ready", flush=True)
    sys.stdin.readline()  # everyone opens at once
    try:
        kv = ekv.EKV("p", data, shards=2, log=False, listen=f"127.0.0.1:{port}", cookie="c")
    except ekv.Error as exc:
        print("error", type(exc).__name__, str(exc).replace(chr(10), " "), flush=True)
        sys.exit(0)
    print("opened", kv.info()["processes"]["role"], flush=True)
    sys.stdin.readline()
    kv.close()
    """
)


def _round(tmp_path: Path, data: Path, port: int) -> list[str]:
    script = tmp_path / "opener.py"
    script.write_text(OPENER)
    children = [
        LineChild(
            [sys.executable, str(script), str(data), str(port)],
            tmp_path / f"opener-{i}.stderr",
            deadline_s=DEADLINE_S,
            stdin=subprocess.PIPE,
        )
        for i in range(PROCESSES)
    ]
    try:
        for child in children:
            assert child.readline(time.monotonic() + DEADLINE_S) == "ready", child.diagnostics()
        for child in children:
            assert child.proc.stdin is not None
            child.proc.stdin.write(b"go\n")
            child.proc.stdin.flush()
        outcomes = [child.readline(time.monotonic() + DEADLINE_S) or "" for child in children]
        for child in children:
            assert child.proc.stdin is not None
            child.proc.stdin.close()  # the survivors close
        for child in children:
            child.proc.wait(DEADLINE_S)
        return outcomes
    finally:
        for child in children:
            child.close()


def test_processes_opening_a_clustered_directory_at_once_all_open(tmp_path: Path) -> None:
    """Four processes open a fresh directory with the same listen address at the same moment,
    three rounds: every one opens (one node process, the others attached), none gets an error."""
    (port,) = free_ports(1)
    for number in range(ROUNDS):
        outcomes = _round(tmp_path, tmp_path / f"data-{number}", port)
        errors = [o for o in outcomes if not o.startswith("opened ")]
        assert not errors, f"round {number}: {errors}"
        assert sorted(o.split()[1] for o in outcomes) == ["attached"] * (PROCESSES - 1) + ["node"]
