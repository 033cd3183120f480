"""The life of a store inside a real process: the interpreter exiting without ``close()``,
``fork()``, and an address to listen on that is taken. Every test runs real processes, real
sockets and real files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import apsw
import pytest

import ekv
from ekv.testing import wait_until

DEADLINE_S = 30.0


def python(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True, timeout=timeout
    )


def clean_shutdown_flags(data_dir: Path) -> list[object]:
    """The ``clean_shutdown`` meta value of every shard, read without opening the store."""
    flags = []
    for path in sorted(data_dir.glob("shard_*.db")):
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'clean_shutdown'").fetchone()
        finally:
            conn.close()
        flags.append(None if row is None else row[0])
    return flags


# -- exiting without close() ----------------------------------------------------------------------


def test_a_clustered_store_left_open_exits_promptly_and_cleanly(tmp_path: Path) -> None:
    """The close run at interpreter exit must not wait for the network thread, which no longer
    runs by the time objects are finalised (this took 30-60 s), and must still mark every shard
    cleanly shut down."""
    data = tmp_path / "n"
    script = """
        import sys, ekv
        kv = ekv.EKV("t", sys.argv[1], shards=3, listen="127.0.0.1:0", cookie="c00kie")
        kv.put("k", "v")
        print(kv.listen_address, flush=True)
    """
    started = time.monotonic()
    result = python(script, str(data))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 15, f"exit took {elapsed:.1f} s"
    assert clean_shutdown_flags(data) == [1, 1, 1]
    with ekv.EKV("t", data, shards=3, log=False) as kv:
        assert kv.get("k") == "v"


def test_two_stores_left_open_one_clustered_exit_cleanly(tmp_path: Path) -> None:
    script = """
        import sys, ekv
        a = ekv.EKV("a", sys.argv[1], shards=2, listen="127.0.0.1:0", cookie="c")
        b = ekv.EKV("b", sys.argv[2], shards=2, peers=[a.listen_address], cookie="c")
        a.put("k", 1)
        b.put("j", 2)
    """
    started = time.monotonic()
    result = python(script, str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    assert clean_shutdown_flags(tmp_path / "a") == [1, 1]
    assert clean_shutdown_flags(tmp_path / "b") == [1, 1]


def test_a_clustered_store_opened_after_the_exit_hook_still_exits_promptly(tmp_path: Path) -> None:
    """A store opened by an atexit handler that runs after ekv's own hook is closed by its
    ``__del__`` while the interpreter finalises: the network thread is frozen by then, so the
    close must not wait for it, and the shards are still closed cleanly."""
    script = """
        import atexit, sys

        def late_open():
            import ekv
            global kv
            kv = ekv.EKV("t", sys.argv[1], shards=2, listen="127.0.0.1:0", cookie="c")
            kv.put("k", "v")

        atexit.register(late_open)  # registered before ekv's hook, so it runs after it
        import ekv
    """
    started = time.monotonic()
    result = python(script, str(tmp_path / "n"))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    assert clean_shutdown_flags(tmp_path / "n") == [1, 1]


# -- fork() -----------------------------------------------------------------------------------------


def _reap(parent: subprocess.Popen[str], child: int) -> None:
    """Kill a test's forking parent process and its forked child, whatever state they are in."""
    if parent.poll() is None:
        parent.kill()
        parent.wait(DEADLINE_S)
    if parent.stdout is not None:
        parent.stdout.close()
    if child and _alive(child):
        os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "clustered"])
def test_a_forked_child_does_not_keep_the_parents_lock(tmp_path: Path, cluster: bool) -> None:
    """A child that outlives its SIGKILLed parent must not keep the parent's registration or
    election alive (a restarted service would attach to a dead node process), and while the parent
    lives they must still hold: the child closes its inherited descriptors without unlocking them."""
    data = tmp_path / "n"
    script = """
        import os, sys, time, ekv
        options = {"listen": "127.0.0.1:0", "cookie": "c"} if sys.argv[2] == "1" else {}
        kv = ekv.EKV("t", sys.argv[1], shards=2, log=False, **options)
        kv.put("k", "v")
        pid = os.fork()
        if pid == 0:
            print(os.getpid(), flush=True)  # the fork hooks have run in the child
            time.sleep(300)  # parked until the test kills it; bounded, so a failed cleanup cannot leak it
            os._exit(0)
        time.sleep(300)  # parked until the test SIGKILLs it (the test polls, it never waits on this)
    """
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(data), "1" if cluster else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        with ekv.EKV("t", data, shards=2, log=False) as kv:  # the parent is the node process: attach
            processes = kv.info()["processes"]
            assert processes["role"] == "attached" and processes["node_process"]["pid"] == parent.pid
            assert [o["pid"] for o in processes["opens"]] == [parent.pid, os.getpid()]
        parent.send_signal(signal.SIGKILL)
        parent.wait(DEADLINE_S)
        assert _alive(child)
        with ekv.EKV("t", data, shards=2, log=False) as kv:  # the child keeps nothing of the parent's alive
            assert kv.get("k") == "v"
            processes = kv.info()["processes"]
            assert processes["role"] == "node" and [o["pid"] for o in processes["opens"]] == [os.getpid()]
        assert _alive(child)
    finally:
        _reap(parent, child)


def test_a_forked_child_does_not_keep_its_dead_parents_bus_connection_open(tmp_path: Path) -> None:
    """An attached process forks (its child uses the store) and is SIGKILLed: the node process
    must see its connection close. The child used to keep its copy of the parent's socket open,
    so the node process counted the dead process as connected, and queued its events, for as long
    as the child lived."""
    data = tmp_path / "n"
    script = """
        import os, sys, time, ekv
        kv = ekv.EKV("t", sys.argv[1], shards=2, log=False)
        kv.subscribe("")  # events for this process: the node process sends them on its connection
        kv.put("parent", 1)
        pid = os.fork()
        if pid == 0:
            kv.put("child", 2)  # the child's own connection
            print(os.getpid(), flush=True)
            time.sleep(300)  # parked until the test kills it
            os._exit(0)
        time.sleep(300)  # parked until the test SIGKILLs it
    """
    with ekv.EKV("t", data, shards=2, log=False) as kv:  # the node process
        parent = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), str(data)], stdout=subprocess.PIPE, text=True
        )
        child = 0
        try:
            assert parent.stdout is not None
            child = int(parent.stdout.readline())
            wait_until(lambda: kv.info()["processes"]["bus"]["connected"] == 2, DEADLINE_S)
            parent.send_signal(signal.SIGKILL)
            parent.wait(DEADLINE_S)
            assert _alive(child)
            wait_until(lambda: kv.info()["processes"]["bus"]["connected"] == 1, DEADLINE_S)
        finally:
            _reap(parent, child)


@pytest.mark.parametrize("role", ["node", "attached"])
def test_a_forked_child_reopens_and_collects_the_parents_sockets_without_closing_its_own_files(
    tmp_path: Path, role: str
) -> None:
    """The child drops its copies of the parent's sockets, and keeps working through reopening
    and garbage collection. (Why /dev/null takes their place rather than os.close: the parent's
    socket objects still name those numbers and would close them if collected, by then perhaps
    the child's own shard files. Today they stay referenced by the inherited store, so this test
    passes with os.close too; it guards the child's files should that change.)"""
    data = tmp_path / "n"
    script = """
        import gc, os, sys, ekv
        options = {"listen": "127.0.0.1:0", "cookie": "c"}
        holder = ekv.EKV("t", sys.argv[1], shards=4, log=False, **options) if sys.argv[2] == "attached" else None
        kv = ekv.EKV("t", sys.argv[1], shards=4, log=False, **options)
        kv.subscribe("")
        kv.put("before", 0)
        pid = os.fork()
        if pid == 0:
            try:
                for n in range(200):
                    kv.put(f"k{n}", n)  # revives the store in the child (new files, new sockets)
                    if n % 50 == 0:
                        gc.collect()  # the parent's old objects go, closing what they name
                assert [kv.get(f"k{n}") for n in range(200)] == list(range(200))
                kv.close()
            except BaseException as exc:
                print("child failed:", repr(exc), flush=True)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        kv.close()
        if holder is not None:
            holder.close()
        sys.exit(os.waitstatus_to_exitcode(status))
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(data), role],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S * 2,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- an address to listen on that is taken ------------------------------------------------------------


def _taken_port() -> socket.socket:
    """A socket listening on a free port of 127.0.0.1, which ekv then cannot bind."""
    return socket.create_server(("127.0.0.1", 0))


def test_listening_on_a_taken_port_is_an_ekv_error_and_creates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "new" / "n"
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ekv.ListenError) as caught:
            ekv.EKV("t", data, shards=2, listen=f"127.0.0.1:{port}", cookie="c", log=False)
    error = caught.value
    assert isinstance(error, ekv.ClusterError) and isinstance(error, OSError)  # `except OSError` still works
    assert error.address == f"127.0.0.1:{port}"
    assert f"127.0.0.1:{port}" in str(error) and "in use" in str(error)
    assert not (tmp_path / "new").exists()


def test_listening_on_a_taken_port_leaves_an_existing_store_untouched(tmp_path: Path) -> None:
    data = tmp_path / "n"
    with ekv.EKV("t", data, shards=2, log=False) as kv:
        kv.put("k", "v")
        node_id = kv.node_id
    before = {p.relative_to(data): p.read_bytes() for p in data.rglob("*") if p.is_file()}
    with _taken_port() as taken, pytest.raises(ekv.ListenError):
        ekv.EKV("t", data, shards=2, listen=f"127.0.0.1:{taken.getsockname()[1]}", cookie="c", log=False)
    assert {p.relative_to(data): p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
    with ekv.EKV("t", data, shards=2, log=False) as kv:
        assert (kv.get("k"), kv.node_id) == ("v", node_id)


def test_a_failed_listen_releases_the_network_runtime(tmp_path: Path) -> None:
    with _taken_port() as taken, pytest.raises(ekv.ListenError):
        port = taken.getsockname()[1]
        ekv.EKV("t", tmp_path / "a", listen=f"127.0.0.1:{port}", cookie="c", log=False)
    # the port is free again: a node binds it, and another joins through it
    with ekv.EKV("t", tmp_path / "b", shards=2, listen=f"127.0.0.1:{port}", cookie="c", log=False) as b:
        b.put("k", 1)
        with ekv.EKV("t", tmp_path / "c", shards=2, peers=[f"127.0.0.1:{port}"], cookie="c", log=False) as c:
            wait_until(lambda: c.get("k") == 1, DEADLINE_S)


def test_serve_on_a_taken_port_prints_one_line_and_creates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "n"
    env = dict(os.environ, EKV_COOKIE="c00kie")
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        address = f"127.0.0.1:{port}"
        result = subprocess.run(
            [sys.executable, "-m", "ekv", "serve", "--data-dir", str(data), "--name", "svc", "--listen", address],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ekv: error: "), result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert not data.exists()


def test_a_second_instance_of_the_same_name_on_a_shared_port_creates_nothing(tmp_path: Path) -> None:
    with ekv.EKV("t", tmp_path / "a", shards=2, listen="127.0.0.1:0", cookie="c", log=False) as a:
        with pytest.raises(ekv.ListenError, match="already listens"):
            ekv.EKV("t", tmp_path / "b", shards=2, listen=a.listen_address, cookie="c", log=False)
        assert not (tmp_path / "b").exists()
        with ekv.EKV("other", tmp_path / "c", shards=2, listen=a.listen_address, cookie="c", log=False) as c:
            assert c.listen_address == a.listen_address


_HANDSHAKE_CHILD = textwrap.dedent(
    """
    import asyncio, gc, socket, sys, tempfile
    import ekv
    from ekv._cluster.runtime import runtime
    from ekv.testing import wait_until

    async def handshakes():
        return [t for t in asyncio.all_tasks() if "Runtime._accept" in repr(t.get_coro())]

    kv = ekv.EKV("h", tempfile.mkdtemp(), listen="127.0.0.1:0", log=False)
    host, port = kv.listen_address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))  # says nothing: its handshake waits
    try:
        wait_until(lambda: runtime().run(handshakes()), timeout=60)
        kv.close()  # the last node: the network loop stops and cancels what is pending
        gc.collect()
    finally:
        sock.close()
    print("done")
    """
)


def test_a_connection_still_in_its_handshake_is_closed_when_the_network_loop_stops() -> None:
    """The last node's close stops the network loop, which cancels an incoming connection's
    handshake; the connection must be closed then, not left to the garbage collector (CI saw
    "unclosed transport" ResourceWarnings from a voter refused over and over while its test
    ended). A process of its own: the loop stops only when no other node of the process runs."""
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-c", _HANDSHAKE_CHILD], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr
    assert "unclosed" not in proc.stderr, proc.stderr


_ACCEPTED_CHILD = textwrap.dedent(
    """
    import gc, socket, warnings
    from ekv._cluster.runtime import Runtime
    from ekv.testing import wait_until

    leaked = 0
    for _ in range(5):
        rt = Runtime()
        rt.acquire()
        address = rt.run(rt.bind("127.0.0.1", 0, "x"))
        socks = [socket.create_connection(address) for _ in range(5)]  # silent: each waits for a Hello
        wait_until(lambda: len(rt._connections) == 5, timeout=60)
        rt.run(rt.unbind(address))
        rt.release()  # the loop stops with the five handshakes pending
        for sock in socks:
            sock.close()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        leaked += sum(issubclass(w.category, ResourceWarning) for w in caught)
    print("leaked", leaked)
    """
)


def test_connections_accepted_when_the_network_loop_stops_are_closed_with_it() -> None:
    """Five silent connections per round, five rounds: every accepted connection is closed by the
    time the loop thread ends. Before, the handshake's cancellation closed the transport but the
    loop was closed before the transport released its socket (and a handler task cancelled before
    its first step closed nothing), so the garbage collector found them later, in whatever test
    ran then: 4 of 25 here, and the refused-voter test's failures in CI."""
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-c", _ACCEPTED_CHILD], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    assert "leaked 0" in proc.stdout, proc.stdout + proc.stderr
