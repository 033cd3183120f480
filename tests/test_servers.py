"""The real servers (SPEC section 12, issue 11): gunicorn and uvicorn run tests/_server_app.py
with four workers on one data directory, the way a user deploys ekv, while HTTP clients write and
read back through whichever worker answers.

- Workers recycle mid-run (``--max-requests``), with and without gunicorn ``--preload`` (the store
  opened in the master before fork): no HTTP error, every read sees its own write (made a moment
  before by another worker, most likely), every key there afterwards.
- The node process (a worker) is SIGKILLed again and again while clients write; the servers
  restart workers, another worker takes over on the same listen address, and a remote member ends
  with every acknowledged write.

Each server runs in a session of its own, so that cleanup reaches every worker it started, also
when a test fails."""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

import ekv
from _linechild import LineChild
from _server_app import NAME, SHARDS
from ekv._node.bus import runtime_path
from ekv.testing import wait_until
from ekv.testing.proxy import free_ports

pytest.importorskip("gunicorn")
pytest.importorskip("uvicorn")
pytest.importorskip("uvicorn_worker")

DEADLINE_S = 60.0
TESTS = Path(__file__).parent
WORKERS = 4
CLIENTS = 4

# name -> command line after the interpreter (the address and recycling options are added)
SERVERS: dict[str, list[str]] = {
    "uvicorn": ["-m", "uvicorn", "_server_app:asgi", "--app-dir", str(TESTS), "--workers", str(WORKERS)],
    "gunicorn-sync": ["-m", "gunicorn", "--chdir", str(TESTS), "-w", str(WORKERS), "_server_app:wsgi"],
    "gunicorn-sync-preload": [
        "-m",
        "gunicorn",
        "--chdir",
        str(TESTS),
        "-w",
        str(WORKERS),
        "--preload",
        "_server_app:wsgi",
    ],
    "gunicorn-uvicorn": [
        *("-m", "gunicorn", "--chdir", str(TESTS), "-w", str(WORKERS)),
        *("-k", "uvicorn_worker.UvicornWorker", "_server_app:asgi"),
    ],
    "gunicorn-uvicorn-preload": [
        *("-m", "gunicorn", "--chdir", str(TESTS), "-w", str(WORKERS), "--preload"),
        *("-k", "uvicorn_worker.UvicornWorker", "_server_app:asgi"),
    ],
}


class Server:
    """One server (master and workers) in a session of its own, its output in a file."""

    def __init__(self, tmp_path: Path, kind: str, data: Path, *, recycle: bool, options: dict[str, Any]) -> None:
        (self.port,) = free_ports(1)
        self.retries = 0
        command = [sys.executable, *SERVERS[kind]]
        if kind == "uvicorn":
            command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
            if recycle:
                command += ["--limit-max-requests", "25", "--limit-max-requests-jitter", "8"]
        else:
            command += ["-b", f"127.0.0.1:{self.port}", "--log-level", "warning", "--graceful-timeout", "10"]
            if recycle:
                command += ["--max-requests", "25", "--max-requests-jitter", "8"]
        env = {**os.environ, "EKV_TEST_DATA": str(data), "EKV_TEST_OPTIONS": json.dumps(options)}
        self.log_path = tmp_path / f"{kind}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, start_new_session=True
        )

    def diagnostics(self) -> str:
        self._log.flush()
        output = self.log_path.read_text(errors="replace")[-4000:]
        return f"\n--- server exit code {self.proc.poll()}, output ---\n{output}"

    def request(self, method: str, path: str, body: bytes | None = None, *, retry: bool = False) -> tuple[int, bytes]:
        """One request on a new connection (so the next may reach another worker).

        With ``retry``, a request whose connection was closed before any answer is sent again on
        a new one, up to 3 times, as a proxy would: uvicorn closes the connections it accepted
        but had not read yet when a worker leaves at ``--limit-max-requests`` (its own behaviour,
        seen with no ekv call involved). Only the methods of this app, which are idempotent."""
        for attempt in range(4 if retry else 1):
            try:
                return self._request(method, path, body)
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                if attempt == 3 or not retry:
                    raise
                self.retries += 1
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers={"Connection": "close"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def who(self) -> dict[str, Any] | None:
        try:
            status, body = self.request("GET", "/who")
        except (OSError, http.client.HTTPException):
            return None
        return json.loads(body) if status == 200 else None

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"the server exited{self.diagnostics()}"
            return self.who() is not None

        wait_until(ready, DEADLINE_S, interval=0.05, message=f"the server never answered{self.diagnostics()}")

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL to whatever of its session is left."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    self.proc.wait(30)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # workers that outlived the master, if any
            if self.proc.poll() is None:
                self.proc.wait(DEADLINE_S)
            self._log.close()


@contextmanager
def _serve(
    tmp_path: Path, kind: str, data: Path, *, recycle: bool, options: dict[str, Any] | None = None
) -> Iterator[Server]:
    server = Server(tmp_path, kind, data, recycle=recycle, options=options or {})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


class Clients:
    """``CLIENTS`` threads running ``work(client, n)`` for n = 0, 1, ... until ``count`` or stop()."""

    def __init__(self, work: Callable[[int, int], None], count: int | None = None) -> None:
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._work, self._count = work, count
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(CLIENTS)]
        for thread in self.threads:
            thread.start()

    def _run(self, client: int) -> None:
        n = 0
        while not self._stop.is_set() and (self._count is None or n < self._count):
            try:
                self._work(client, n)
            except Exception as exc:  # collected, reported by the test
                self.errors.append(f"client {client} #{n}: {exc!r}")
            n += 1

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(DEADLINE_S)
            assert not thread.is_alive(), "a client thread is stuck"


def _open(data: Path) -> ekv.EKV:
    return ekv.EKV(NAME, data, shards=SHARDS, log=False)


@pytest.mark.parametrize("kind", list(SERVERS))
def test_workers_read_their_writes_through_other_workers_while_they_recycle(tmp_path: Path, kind: str) -> None:
    """Four clients each PUT a unique key, then GET it on a new connection (most likely served by
    another worker): every answer 200, every read its own write, and the workers recycle
    (``--max-requests``) during the run; afterwards every key is in the directory."""
    data = tmp_path / "data"
    per_client = 25
    pids: set[int] = set()
    nodes: set[int | None] = set()

    def work(client: int, n: int) -> None:
        key, value = f"c{client}/{n}", f"v{client}-{n}-{'x' * n}"
        status, body = server.request("PUT", f"/k/{key}", value.encode(), retry=True)
        assert status == 200, (status, body.decode(errors="replace"))
        status, body = server.request("GET", f"/k/{key}", retry=True)
        assert (status, body.decode(errors="replace")) == (200, value), f"read of {key}"
        if n % 5 == 0:
            status, body = server.request("GET", "/who", retry=True)
            assert status == 200, (status, body.decode(errors="replace"))
            who = json.loads(body)
            pids.add(who["pid"])
            nodes.add(who["node"])

    with _serve(tmp_path, kind, data, recycle=True) as server:
        clients = Clients(work, per_client)
        clients.join()
        assert not clients.errors, "\n".join(clients.errors[:10]) + server.diagnostics()
        assert len(pids) >= 2, f"every answer came from one worker: {pids}"
        if kind == "gunicorn-sync-preload":  # the EKV opened in the master (AsyncEKV opens on first use)
            assert nodes == {server.proc.pid}, f"the master is not the node process: {nodes}"
        else:
            assert server.proc.pid not in nodes
        if "uvicorn" not in kind:
            assert server.retries == 0, "gunicorn's sync workers finish what they accepted before recycling"
    expected = {f"c{c}/{n}": f"v{c}-{n}-{'x' * n}" for c in range(CLIENTS) for n in range(per_client)}
    with _open(data) as kv:
        assert kv.scan("c") == expected


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn-sync"])
def test_sigkill_of_the_node_process_worker_loses_no_acknowledged_write(tmp_path: Path, kind: str) -> None:
    """The app is clustered to a remote member (here, listening on port 0). Four times, the
    worker that is the node process is SIGKILLed while clients write; another worker takes over
    on the app's listen address, the server starts a new worker, and the clients go on. The
    remote member ends with every write that was acknowledged (a request cut by the kill was not,
    and is left out)."""
    (listen,) = free_ports(1)
    acked: dict[str, str] = {}
    server_errors: list[str] = []

    def work(client: int, n: int) -> None:
        key, value = f"c{client}/{n}", f"v{client}-{n}"
        try:
            status, body = server.request("PUT", f"/k/{key}", value.encode())
        except (OSError, http.client.HTTPException):
            return  # the worker died with the connection: not acknowledged
        if status == 200:
            acked[key] = value
        else:
            server_errors.append(f"PUT {key}: {status} {body.decode(errors='replace')}")

    with ekv.EKV(NAME, tmp_path / "remote", shards=SHARDS, log=False, listen="127.0.0.1:0", cookie="c") as remote:
        options = {"listen": f"127.0.0.1:{listen}", "peers": [remote.listen_address], "cookie": "c"}
        with _serve(tmp_path, kind, tmp_path / "data", recycle=False, options=options) as server:
            clients = Clients(work)
            try:
                killed: set[int] = set()
                for _ in range(4):
                    node = _node_pid(server, killed)
                    assert node != server.proc.pid, "the server's master is the node process"
                    before = len(acked)
                    os.kill(node, signal.SIGKILL)
                    killed.add(node)
                    _node_pid(server, killed)  # another worker took over
                    wait_until(lambda: len(acked) > before + 20, DEADLINE_S, message="the clients stalled")  # noqa: B023
                    assert not server_errors, "\n".join(server_errors[:10]) + server.diagnostics()
            finally:
                clients.stop()
            assert not server_errors, "\n".join(server_errors[:10]) + server.diagnostics()
            assert not clients.errors, "\n".join(clients.errors[:10])

            def remote_has_all() -> bool:
                stored = remote.scan("c")
                return all(stored.get(key) == value for key, value in acked.items())

            try:
                wait_until(remote_has_all, DEADLINE_S, interval=0.1)
            except AssertionError:
                raise AssertionError(_missing(remote, acked)) from None
        assert len(acked) > 80


def _node_pid(server: Server, killed: set[int]) -> int:
    """The node process's pid as a worker reports it, once it is none of ``killed`` (and alive)."""
    found: list[int] = []

    def reported() -> bool:
        assert server.proc.poll() is None, f"the server exited{server.diagnostics()}"
        who = server.who()
        if who is None or who["node"] is None or who["node"] in killed:
            return False
        found.append(who["node"])
        return True

    wait_until(reported, DEADLINE_S, interval=0.02, message=f"no new node process{server.diagnostics()}")
    return found[-1]


def _missing(remote: ekv.EKV, acked: dict[str, str]) -> str:
    stored = remote.scan("c")
    missing = sorted(key for key, value in acked.items() if stored.get(key) != value)
    return f"the remote member lacks {len(missing)} of {len(acked)} acknowledged writes: {missing[:20]}"


# -- found by the SIGKILL test above: reproductions of their own --------------------------------------

# They tell when an open is past its "is a node process alive?" check by its open file of the
# directory's opening lock, in /proc/<pid>/fd.
needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")

NODE_CHILD = (
    "import sys, time, ekv; kv = ekv.EKV('p', sys.argv[1], shards=2, log=False, listen=sys.argv[2]); "
    "print('ready', kv.info()['processes']['role'], flush=True); time.sleep(300)"
)


def _holds_open(pid: int, path: Path) -> int:
    """How many descriptors process ``pid`` has open on ``path`` (they come and go meanwhile)."""
    target = str(path.resolve())
    count = 0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                count += os.readlink(fd) == target
    return count


@needs_proc
def test_an_open_that_wins_the_election_after_the_node_process_died_mid_open_listens(tmp_path: Path) -> None:
    """The window made wide and deterministic: this test holds the directory's opening lock (as a
    process in the middle of its own open does) while another open starts, passes the "is a node
    process alive?" check (yes: the child) and waits for the lock; then the node process is
    SIGKILLed and the lock released. The waiting open becomes the node process: it must listen on
    its ``listen`` address like any node process (seen in the servers: a worker started by
    uvicorn while the node worker was SIGKILLed answered 500 to every request)."""
    data = tmp_path / "data"
    (port,) = free_ports(1)
    listen = f"127.0.0.1:{port}"
    node = LineChild([sys.executable, "-c", NODE_CHILD, str(data), listen], tmp_path / "node.stderr")
    try:
        assert node.readline(time.monotonic() + DEADLINE_S) == "ready node", node.diagnostics()
        opening = data / "procs" / ".opening"
        fd = os.open(opening, os.O_RDWR | os.O_CLOEXEC)
        outcome: list[object] = []
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)

            def open_store() -> None:
                try:
                    outcome.append(ekv.EKV("p", data, shards=2, log=False, listen=listen))
                except BaseException as exc:  # reported below
                    outcome.append(exc)

            opener = threading.Thread(target=open_store, daemon=True)
            opener.start()

            def waiting_for_the_lock() -> bool:  # it opened the lock file: past the liveness check
                return _holds_open(os.getpid(), opening) >= 2

            wait_until(waiting_for_the_lock, DEADLINE_S)
            node.kill()
        finally:
            os.close(fd)  # releases the lock
        opener.join(DEADLINE_S)
        assert outcome, "the open is stuck"
        kv = outcome[0]
        assert isinstance(kv, ekv.EKV), f"the open failed: {kv!r}"
        with kv:
            assert kv.info()["processes"]["role"] == "node"
            assert kv.listen_address == listen
    finally:
        node.close()


OPENER_CHILD = """
import sys, ekv
try:
    kv = ekv.EKV('srv', sys.argv[1], shards=2, log=False, listen=sys.argv[2])
except ekv.Error as exc:
    print('failed', type(exc).__name__, flush=True)
else:
    print('opened', kv.info()['processes']['role'], kv.listen_address, flush=True)
    sys.stdin.readline()
"""


@needs_proc
def test_processes_opening_at_once_with_one_listen_address_all_open(tmp_path: Path) -> None:
    """The window made wide and deterministic: this test holds the lock that serialises becoming
    the node process (as a process in the middle of its open does) while two processes start
    their opens with the same ``listen``; both must open (one node process, listening, and one
    attached), none may fail (before the lock, both bound the address and the second failed)."""
    data = tmp_path / "data"
    with _open(data):
        pass
    (port,) = free_ports(1)
    listen = f"127.0.0.1:{port}"
    opening = runtime_path(data, ".open")
    fd = os.open(opening, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    children: list[LineChild] = []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            command = [sys.executable, "-c", OPENER_CHILD, str(data), listen]
            first = LineChild(command, tmp_path / "first.stderr", stdin=subprocess.PIPE)
            children.append(first)

            def waiting_for_the_lock(child: LineChild) -> bool:  # it opened the lock file
                return _holds_open(child.proc.pid, opening) >= 1

            wait_until(lambda: waiting_for_the_lock(first), DEADLINE_S)
            second = LineChild(command, tmp_path / "second.stderr", stdin=subprocess.PIPE)
            children.append(second)
            wait_until(lambda: second.proc.poll() is not None or waiting_for_the_lock(second), DEADLINE_S)
        finally:
            os.close(fd)  # releases the lock
        lines = sorted(str(child.readline(time.monotonic() + DEADLINE_S)) for child in children)
        assert lines == ["opened attached None", f"opened node {listen}"], lines  # only the node process listens
    finally:
        for child in children:
            child.close()
