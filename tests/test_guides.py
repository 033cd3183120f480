"""The framework guides' examples run for real: docs/fastapi.md's app under TestClient and under
uvicorn with two worker processes, docs/celery.md's app in a real Celery worker (prefork, two pool
processes) next to a "web app" process; and the guides show the examples' own code."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import ekv
from ekv.testing import wait_until
from ekv.testing.proxy import free_ports

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GUIDES = {"fastapi.md": "fastapi_app.py", "celery.md": "celery_app.py"}


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py as module ``name`` (the name the worker gives its tasks)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server process group (the parent and the workers it starts), stopped and reaped on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their parent


def python_blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "docs" / page).read_text(), re.S | re.M)


@pytest.mark.parametrize("page", sorted(GUIDES))
def test_the_guides_show_the_examples_code(page: str) -> None:
    """Every Python block of the guide is a verbatim part of the tested example (so the page
    cannot drift from what the tests run); blocks of other code are marked ``text``."""
    example = (EXAMPLES / GUIDES[page]).read_text()
    blocks = python_blocks(page)
    assert blocks, f"docs/{page} has no python block"
    for block in blocks:
        assert block in example, f"this block of docs/{page} is not in examples/{GUIDES[page]}:\n{block}"


# -- FastAPI --------------------------------------------------------------------------------------


def test_fastapi_example_opens_the_store_in_the_lifespan_and_closes_it_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.setenv("EKV_DATA_DIR", str(tmp_path / "kv"))
    example = load_example("fastapi_app")
    with TestClient(example.app) as client:
        kv = example.app.state.kv
        assert isinstance(kv, ekv.AsyncEKV) and not kv.closed
        assert client.put("/items/1", json={"name": "lamp", "price": 12}).status_code == 200
        assert client.get("/items/1").json()["item"] == {"name": "lamp", "price": 12}
        missing = client.get("/items/2")
        assert missing.status_code == 404 and missing.json() == {"detail": "no item '2'"}
        assert client.get("/items").json()["ids"] == ["1"]
        assert client.get("/whoami").json()["role"] == "node"
    assert kv.closed  # the lifespan closed it at shutdown
    with ekv.EKV("web", data_dir=tmp_path / "kv") as again:  # durable: another open reads it
        assert again["item/1"] == {"name": "lamp", "price": 12}


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """One request on a fresh connection (so the kernel hands each to any worker)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_fastapi_example_under_uvicorn_with_two_workers_on_one_data_directory(tmp_path: Path) -> None:
    """Two uvicorn worker processes, one data directory: one is the node process, the other
    attaches, and a write through either is read through the other at once."""
    port = free_ports(1)[0]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "EKV_DATA_DIR": str(tmp_path / "kv")}
    args = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(EXAMPLES)]
    args += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--log-level", "warning"]
    with running(args, env, tmp_path, tmp_path / "uvicorn.log"):
        roles: dict[int, str] = {}

        def both_workers_answered() -> bool:
            with contextlib.suppress(OSError):
                _, body = http("GET", f"{base}/whoami")
                roles[body["pid"]] = body["role"]
            return len(roles) == 2

        wait_until(both_workers_answered, timeout=30, message=f"not two workers: {roles}")
        assert sorted(roles.values()) == ["attached", "node"], roles
        for n in range(1, 4):
            status, put = http("PUT", f"{base}/items/{n}", {"n": n})
            assert status == 200, put
            seen: set[int] = set()

            def read_by_the_other_worker(n: int = n, writer: int = put["pid"], seen: set[int] = seen) -> bool:
                status, body = http("GET", f"{base}/items/{n}")
                assert status == 200, body  # visible in every worker as soon as the put returned
                assert body["item"] == {"n": n}
                seen.add(body["pid"])
                return bool(seen - {writer})

            wait_until(read_by_the_other_worker, timeout=30, message="no request reached the other worker")
        status, listing = http("GET", f"{base}/items")
        assert sorted(listing["ids"]) == ["1", "2", "3"]


# -- Celery ---------------------------------------------------------------------------------------


def test_celery_worker_and_the_web_app_share_one_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real Celery worker (prefork, two pool processes, each opening the store in
    worker_process_init) runs the example's task on what this process (the web app) wrote, and
    this process reads the task's result from the store."""
    monkeypatch.setenv("EKV_DATA_DIR", str(tmp_path / "kv"))
    monkeypatch.setenv("CELERY_BROKER_DIR", str(tmp_path / "broker"))
    args = [sys.executable, "-m", "celery", "-A", "celery_app", "--workdir", str(EXAMPLES), "worker"]
    args += ["--concurrency", "2", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"]
    log = tmp_path / "worker.log"
    example = load_example("celery_app")
    with ekv.EKV("web", data_dir=tmp_path / "kv") as kv, running(args, dict(os.environ), tmp_path, log):
        kv.put_many({"orders/1": {"amount": 3}, "orders/2": {"amount": 4}, "other/1": {"amount": 100}})
        example.summarize.delay("orders/")
        try:
            wait_until(lambda: "report/orders/" in kv, timeout=30)
        except AssertionError:
            pytest.fail(f"no report within 30 s; the worker said:\n{log.read_text()}")
        report = kv["report/orders/"]
        assert report["orders"] == 2 and report["total"] == 7
        opens = {entry["pid"]: entry["role"] for entry in kv.info()["processes"]["opens"]}
        assert opens[report["pid"]] == "attached", opens  # the pool process attached to this node process
        assert opens[os.getpid()] == "node"
        # the pool processes opened the store in worker_process_init, before any task
        wait_until(lambda: len(kv.info()["processes"]["opens"]) == 3, timeout=30, message="not two pool processes")
    example.app.close()
