"""Many processes, one data directory (SPEC section 12): real processes opening one directory,
writing at once, killed with SIGKILL, taking over from a dead node process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import apsw
import pytest

import ekv
from _linechild import LineChild
from ekv._node.bus import runtime_path
from ekv.testing import wait_until

DEADLINE_S = 60.0

# A writer process: opens the directory, writes, prints one line per acknowledged write.
#   argv: data_dir, tag, count, hot_every, clock_ahead_s, linger
WRITER = textwrap.dedent(
    """
    import sys, time, ekv
    data, tag = sys.argv[1], sys.argv[2]
    count, hot_every, ahead, linger = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6] == "1"

    class Ahead:
        def now_ns(self):
            return time.time_ns() + int(ahead * 1e9)

    kv = ekv.EKV("p", data, shards=4, log=False, clock=Ahead() if ahead else None)
    print("ready", kv.info()["processes"]["role"], flush=True)
    for i in range(count):
        key = f"{tag}/{i}"
        version = kv.put(key, i)
        print("ack", key, version.timestamp_ns, version.origin, flush=True)
        if hot_every and i % hot_every == 0:
            version = kv.put("hot", f"{tag}-{i}")
            print("hot", f"{tag}-{i}", version.timestamp_ns, version.origin, flush=True)
    print("done", flush=True)
    if linger:
        sys.stdin.readline()
    kv.close()
    """
)


def _writer(tmp_path: Path, data: Path, tag: str, count: int, *, hot_every: int = 0, ahead: float = 0.0) -> LineChild:
    script = tmp_path / "writer.py"
    if not script.exists():
        script.write_text(WRITER)
    command = [sys.executable, str(script), str(data), tag, str(count), str(hot_every), str(ahead), "0"]
    return LineChild(command, tmp_path / f"{tag}.stderr", deadline_s=DEADLINE_S)


def _lines(child: LineChild) -> list[list[str]]:
    lines = []
    deadline = time.monotonic() + DEADLINE_S
    while (line := child.readline(deadline)) is not None:
        lines.append(line.split())
    return lines


def _reap(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if it still runs, wait for it, close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(DEADLINE_S)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def _open(data: Path, **options: Any) -> ekv.EKV:
    return ekv.EKV("p", data, shards=4, log=False, **options)


def test_processes_write_one_directory_at_once(tmp_path: Path) -> None:
    """Four processes write their own keys and one shared key at once, while this process holds
    the directory open as the node process: every acknowledged write is there, visible here as
    soon as it was acknowledged, and the shared key holds the write with the highest version."""
    data = tmp_path / "data"
    with _open(data) as kv:
        assert kv.info()["processes"]["role"] == "node"
        children = [_writer(tmp_path, data, f"w{n}", 150, hot_every=5) for n in range(4)]
        acked: dict[str, int] = {}
        hot: list[tuple[int, str, str]] = []
        try:
            for child in children:
                for fields in _lines(child):
                    if fields[0] == "ready":
                        assert fields[1] == "attached"
                    elif fields[0] == "ack":
                        acked[fields[1]] = int(fields[1].split("/")[1])
                        assert kv.get(fields[1]) == acked[fields[1]]  # read-your-writes across processes
                    elif fields[0] == "hot":
                        hot.append((int(fields[2]), fields[3], fields[1]))
                assert child.proc.wait(DEADLINE_S) == 0
        finally:
            for child in children:
                child.close()
        assert len(acked) == 600
        assert kv.scan("w") == acked
        assert kv.get("hot") == max(hot)[2]
        assert kv.lookup("hot")[1] == ekv.Version(max(hot)[0], max(hot)[1])  # type: ignore[index]
        origins = {origin for _, origin, _ in hot}
        assert len(origins) == 4 and kv.info()["origin"] not in origins  # one origin per open


def test_sigkill_of_every_process_mid_write_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with _open(data):
        pass
    children = [_writer(tmp_path, data, f"k{n}", 100_000) for n in range(3)]
    acked: dict[str, int] = {}
    try:
        deadline = time.monotonic() + DEADLINE_S
        for child in children:
            while len([k for k in acked if k.startswith(child.proc.args[3])]) < 200:  # type: ignore[index]
                line = child.readline(deadline)
                assert line is not None, child.diagnostics()
                fields = line.split()
                if fields[0] == "ack":
                    acked[fields[1]] = int(fields[1].split("/")[1])
        for child in children:
            child.proc.send_signal(signal.SIGKILL)
        for child in children:
            child.proc.wait(DEADLINE_S)
            for fields in _lines(child):  # what each printed before it died
                if fields[0] == "ack":
                    acked[fields[1]] = int(fields[1].split("/")[1])
    finally:
        for child in children:
            child.close()
    with _open(data) as kv:
        stored = kv.scan("k")
        assert {key: stored.get(key) for key in acked} == acked


def test_hybrid_clock_order_across_processes_with_a_clock_ahead(tmp_path: Path) -> None:
    """A write made after a process read version V, or after V was written to the same key by a
    process whose clock is a second ahead, gets a version above V (SPEC 3 across processes)."""
    data = tmp_path / "data"
    with _open(data) as kv:
        kv.put("warm", 0)
        started_ns = time.time_ns()
        child = _writer(tmp_path, data, "ahead", 2, ahead=1.0)
        try:
            versions = {f[1]: ekv.Version(int(f[2]), f[3]) for f in _lines(child) if f[0] == "ack"}
            assert child.proc.wait(DEADLINE_S) == 0
        finally:
            child.close()
        assert versions["ahead/0"].timestamp_ns > started_ns + 900_000_000  # its clock was a second ahead
        # the same key: this write comes later, so it must win although this clock is behind
        mine = kv.put("ahead/0", "later")
        assert mine > versions["ahead/0"] and kv.get("ahead/0") == "later"
    with _open(data) as kv:  # a fresh open: only its read of ahead/1 tells it about the clock ahead
        assert kv.get("ahead/1") == 1
        assert kv.put("other", "after the read") > versions["ahead/1"]


def _meta(data: Path, index: int) -> dict[str, Any]:
    conn = apsw.Connection(str(data / f"shard_{index:03d}.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()


def _vv(data: Path, index: int) -> dict[str, int]:
    conn = apsw.Connection(str(data / f"shard_{index:03d}.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return dict(conn.execute("SELECT origin, oseq FROM vv").fetchall())
    finally:
        conn.close()


def test_a_killed_process_origin_is_retired_into_the_version_vector(tmp_path: Path) -> None:
    """A process that dies without closing leaves its origin registered as a writer; the node
    process's GC pass retires it (its counter moves into the stored vector), and a clean close
    retires the closing open's own origin."""
    data = tmp_path / "data"
    with _open(data) as kv:
        child = _writer(tmp_path, data, "gone", 40)
        try:
            acks = [f for f in _lines(child) if f[0] == "ack"]
            assert child.proc.wait(DEADLINE_S) == 0  # exits through close(): retired at once
        finally:
            child.close()
        dead = acks[0][3]
        assert not any(key == f"writer/{dead}" for i in range(4) for key in _meta(data, i))
        assert sum(_vv(data, i).get(dead, 0) for i in range(4)) == 40
        # now one that is SIGKILLed: registered until the GC pass finds it dead
        child = _writer(tmp_path, data, "killed", 1_000_000)
        try:
            deadline = time.monotonic() + DEADLINE_S
            killed = ""
            while not killed:
                line = child.readline(deadline)
                assert line is not None, child.diagnostics()
                if line.startswith("ack"):
                    killed = line.split()[3]
            child.proc.send_signal(signal.SIGKILL)
            child.proc.wait(DEADLINE_S)
            last = {f[1]: f for f in _lines(child) if f[0] == "ack"}
        finally:
            child.close()
        assert any(f"writer/{killed}" in _meta(data, i) for i in range(4))
        kv._node.run_gc()  # type: ignore[union-attr]
        assert not any(f"writer/{killed}" in _meta(data, i) for i in range(4))
        assert all(f"writer/{kv.info()['origin']}" in _meta(data, i) for i in range(4))
        assert sum(_vv(data, i).get(killed, 0) for i in range(4)) >= len(last)


@pytest.mark.parametrize("interval", [0.05, 3600.0], ids=["periodic-check", "waiter-only"])
def test_an_attached_process_takes_over_when_the_node_process_is_killed(tmp_path: Path, interval: float) -> None:
    """With a check every hour, only the election waiter (a thread blocked on the lock) can take
    over in time."""
    data = tmp_path / "data"
    script = textwrap.dedent(
        """
        import sys, ekv
        kv = ekv.EKV("p", sys.argv[1], shards=4, log=False)
        kv.put("from-node", 1)
        print("ready", kv.info()["processes"]["role"], flush=True)
        sys.stdin.readline()
        """
    )
    node = subprocess.Popen(
        [sys.executable, "-c", script, str(data)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert node.stdout is not None
        assert node.stdout.readline().split() == ["ready", "node"]
        with _open(data, takeover_interval=interval, gc_interval=7200) as kv:
            assert kv.info()["processes"]["role"] == "attached"
            assert kv.get("from-node") == 1
            node.send_signal(signal.SIGKILL)
            node.wait(DEADLINE_S)
            started = time.monotonic()
            wait_until(lambda: kv.info()["processes"]["role"] == "node", DEADLINE_S)
            assert time.monotonic() - started < DEADLINE_S
            kv.put("after", 2)
            assert kv.info()["processes"]["opens"][0]["pid"] == os.getpid()
            assert kv._node.run_gc() is not None  # type: ignore[union-attr]
    finally:
        _reap(node)


@pytest.mark.parametrize("option", ["shards", "codec", "name"])
def test_conflicting_options_at_attach_are_config_errors_naming_the_option(tmp_path: Path, option: str) -> None:
    data = tmp_path / "data"
    with _open(data) as kv:
        kv.put("a", 1)
        given: dict[str, Any] = {"shards": 2} if option == "shards" else {"codec": "json"} if option == "codec" else {}
        with pytest.raises(ekv.ConfigError, match=f"{option}="):
            ekv.EKV("other" if option == "name" else "p", data, **({"shards": 4, "log": False} | given))
        assert kv.get("a") == 1 and kv.info()["processes"]["opens"][0]["this"]
        assert len(kv.info()["processes"]["opens"]) == 1


# -- the local bus: events and replication across the processes of one data directory ---------------


class KvChild:
    """A process holding the store open, driven line by line (tests/_kvchild.py)."""

    def __init__(self, tmp_path: Path, data: Path, name: str, **options: Any) -> None:
        options = {"shards": 4, "log": False} | options
        command = [sys.executable, str(Path(__file__).parent / "_kvchild.py"), str(data), json.dumps(options)]
        self.child = LineChild(command, tmp_path / f"{name}.stderr", deadline_s=DEADLINE_S, stdin=subprocess.PIPE)
        self.events: list[tuple[str, ...]] = []
        self.role = self._answer()[1]

    def _answer(self) -> list[str]:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            line = self.child.readline(deadline)
            assert line is not None, self.child.diagnostics()
            fields = line.split()
            if fields[0] == "event":
                self.events.append(tuple(fields[1:]))
            else:
                return fields

    def ask(self, command: str) -> list[str]:
        stdin = self.child.proc.stdin
        assert stdin is not None
        stdin.write((command + "\n").encode())
        stdin.flush()
        return self._answer()

    def poll_events(self) -> list[tuple[str, ...]]:
        self.child._fill(0.05)
        while (line := self.child._pop_line()) is not None:
            fields = line.split()
            if fields[0] == "event":
                self.events.append(tuple(fields[1:]))
        return self.events

    def close(self) -> None:
        self.child.close()


def _until(condition: Any, poke: Any) -> None:
    """Poke (write a fresh key) until ``condition`` holds: a subscription made in one process is
    announced to the others over the bus asynchronously (a few milliseconds)."""
    deadline = time.monotonic() + DEADLINE_S
    n = 0
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        poke(n)
        n += 1
        end = time.monotonic() + 0.2
        while time.monotonic() < end and not condition():
            time.sleep(0.005)


def test_subscriptions_see_the_writes_of_every_process(tmp_path: Path) -> None:
    """Events cross processes: a subscriber in an attached process sees the node process's
    writes, another attached process's writes (relayed by the node process), deletes with the
    deleted value, and expiry; a subscriber in the node process sees an attached process's writes."""
    data = tmp_path / "data"
    with _open(data) as kv:
        watcher = KvChild(tmp_path, data, "watcher")
        writer = KvChild(tmp_path, data, "writer")
        try:
            assert (watcher.role, writer.role) == ("attached", "attached")
            assert watcher.ask("sub room/") == ["ok"]
            _until(lambda: bool(watcher.poll_events()), lambda n: kv.put(f"room/n{n}", "x"))
            kv.put("room/a", "from-node")
            kv.put("other", "not watched")
            writer_seen = lambda: any(e[1].startswith("room/w") for e in watcher.poll_events())  # noqa: E731
            _until(writer_seen, lambda n: writer.ask(f"put room/w{n} from-writer"))
            writer.ask("del room/a")
            kv.put("room/exp", "short", ttl=0.05)
            wait_until(lambda: kv.get("room/exp") is None, DEADLINE_S)
            kv._node.run_gc()  # type: ignore[union-attr]
            wait_until(lambda: ("expired", "room/exp", "short") in watcher.poll_events(), DEADLINE_S)
            events = watcher.poll_events()
            assert ("put", "room/a", "from-node") in events
            assert ("delete", "room/a", "from-node") in events
            assert not any(e[1] == "other" for e in events)
            # and the other way: the node process subscribes to an attached process's writes
            got: list[ekv.Event] = []
            kv.subscribe("mine/", callback=got.extend)
            _until(lambda: bool(got), lambda n: writer.ask(f"put mine/{n} v"))
            writer.ask("del mine/0")
            wait_until(
                lambda: any(e.type == "delete" and e.key == "mine/0" and e.value == "v" for e in got), DEADLINE_S
            )
        finally:
            watcher.close()
            writer.close()


def _link_sockets(data: Path) -> set[Path]:
    """The sockets where the attached opens of ``data`` take events sent to them directly."""
    return set(runtime_path(data, ".links").glob("*.sock"))


def _bus(child: KvChild) -> dict[str, Any]:
    answer = child.ask("bus")
    assert answer[0] == "bus", answer
    figures: dict[str, Any] = json.loads(answer[1])
    return figures


def test_attached_to_attached_events_go_direct_not_through_the_node_process(tmp_path: Path) -> None:
    """An attached writer sends its events straight to the attached process that subscribes (one
    hop): once its link is up, the node process relays none of them, and each arrives once,
    deletes with the deleted value."""
    data = tmp_path / "data"
    with _open(data) as kv:
        watcher = KvChild(tmp_path, data, "watcher")
        writer = KvChild(tmp_path, data, "writer")
        try:
            assert watcher.ask("sub room/") == ["ok"]

            def poke() -> bool:
                writer.ask("put room/warm x")
                return bool(_bus(writer)["direct"])

            wait_until(poke, DEADLINE_S)  # the first events are relayed while the link opens
            direct = _bus(writer)["direct"]  # the watcher is the only subscriber: each event arrives once
            warm = lambda: sum(e[1] == "room/warm" for e in watcher.poll_events())  # noqa: E731
            wait_until(lambda: warm() == direct + kv.info()["processes"]["bus"]["relayed"], DEADLINE_S)
            relayed = kv.info()["processes"]["bus"]["relayed"]
            for i in range(20):
                writer.ask(f"put room/{i} v{i}")
            writer.ask("del room/0")
            wanted = {("put", f"room/{i}", f"v{i}") for i in range(20)} | {("delete", "room/0", "v0")}
            wait_until(lambda: wanted <= set(watcher.poll_events()), DEADLINE_S)
            events = [e for e in watcher.poll_events() if e[1] != "room/warm"]
            assert sorted(events) == sorted(wanted)  # each once
            assert kv.info()["processes"]["bus"]["relayed"] == relayed  # none through the node process
            assert _bus(writer)["direct"] == direct + 21
        finally:
            watcher.close()
            writer.close()


def test_events_are_relayed_when_no_direct_link_opens_and_a_killed_process_socket_is_removed(tmp_path: Path) -> None:
    """No event is lost to a link that cannot be opened (the node process relays them instead),
    and the socket of an attached process killed with SIGKILL is removed."""
    data = tmp_path / "data"
    with _open(data) as kv:
        watcher = KvChild(tmp_path, data, "watcher")
        writer = KvChild(tmp_path, data, "writer")
        try:
            assert watcher.ask("sub room/") == ["ok"]
            assert len(_link_sockets(data)) == 2
            for path in _link_sockets(data):
                path.unlink()  # nobody can connect to the watcher any more
            _until(
                lambda: any(e[1] == "room/warm" for e in watcher.poll_events()), lambda n: writer.ask("put room/warm x")
            )
            for i in range(20):
                writer.ask(f"put room/{i} v{i}")
            wanted = {("put", f"room/{i}", f"v{i}") for i in range(20)}
            wait_until(lambda: wanted <= set(watcher.poll_events()), DEADLINE_S)
            assert sorted(e for e in watcher.poll_events() if e[1] != "room/warm") == sorted(wanted)
            assert _bus(writer)["direct"] == 0
            assert kv.info()["processes"]["bus"]["relayed"] >= 20
            third = KvChild(tmp_path, data, "third")
            try:
                (sock,) = _link_sockets(data)
                third.child.proc.kill()
                wait_until(lambda: not _link_sockets(data), DEADLINE_S)
                assert not sock.exists()
            finally:
                third.close()
        finally:
            watcher.close()
            writer.close()


def test_attached_writes_replicate_and_a_takeover_keeps_the_cluster(tmp_path: Path) -> None:
    """An attached process's writes reach a remote member through the node process; when the node
    process is SIGKILLed, the attached process takes over on the same address, the member
    reconnects, and what was written before, during and after the takeover is all there."""
    from ekv.testing.proxy import free_ports

    (port,) = free_ports(1)
    with ekv.EKV("p", tmp_path / "remote", shards=4, log=False, listen="127.0.0.1:0", cookie="c") as remote:
        options = {"listen": f"127.0.0.1:{port}", "peers": [remote.listen_address], "cookie": "c"}
        node = KvChild(tmp_path, tmp_path / "local", "node", **options)
        try:
            assert node.role == "node"
            with _open(tmp_path / "local", takeover_interval=0.05, **options) as kv:
                assert kv.info()["processes"]["role"] == "attached"
                kv.put("a/before", 1)
                node.ask("put n/1 x")
                wait_until(lambda: remote.get("a/before") == 1 and remote.get("n/1") == "x", DEADLINE_S)
                node.child.kill()
                kv.put("a/during", 2)
                wait_until(lambda: kv.listen_address == f"127.0.0.1:{port}", DEADLINE_S)  # it took over
                assert kv.info()["processes"]["role"] == "node"
                kv.put("a/after", 3)
                wait_until(lambda: (remote.get("a/during"), remote.get("a/after")) == (2, 3), DEADLINE_S)
                wait_until(lambda: any(m.get("connected") for m in remote.info()["members"].values()), DEADLINE_S)
        finally:
            node.close()


# -- fork ----------------------------------------------------------------------------------------------

FORKER = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys, time, ekv
    data, options = sys.argv[1], json.loads(sys.argv[2])
    kv = ekv.EKV("p", data, shards=4, log=False, **options)
    akv = ekv.AsyncEKV("p", data, shards=4, log=False)
    asyncio.run(akv.put("async-parent", 0))  # the async store is open (and its pool started) before fork
    kv.put("parent", 1)
    children = []
    for i in range(3):
        pid = os.fork()
        if pid == 0:
            try:
                kv.put(f"child/{i}", os.getpid())  # the same objects, used in the child: no code change
                assert kv.get("parent") == 1
                role = kv.info()["processes"]["role"]
                async def main():
                    await akv.put(f"achild/{i}", i)
                    return await akv.get("async-parent")
                assert asyncio.run(main()) == 0
                print("child", i, role, flush=True)
                kv.close()
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    print("scan", json.dumps(kv.scan("")), flush=True)
    sys.stdin.readline()  # the test says when (a remote member got the children's writes)
    asyncio.run(akv.close())
    kv.close()
    """
)


@pytest.mark.parametrize("clustered", [False, True], ids=["single", "clustered"])
def test_a_store_opened_before_fork_works_in_the_children(tmp_path: Path, clustered: bool) -> None:
    """gunicorn --preload: a store (EKV and AsyncEKV) opened before fork() works in every child
    without code changes: each attaches to the parent, the node process; with a cluster, the
    children's writes reach a remote member through the parent."""
    script = tmp_path / "forker.py"
    script.write_text(FORKER)
    remote = (
        ekv.EKV("p", tmp_path / "remote", shards=4, log=False, listen="127.0.0.1:0", cookie="c") if clustered else None
    )
    try:
        options: dict[str, Any] = {}
        if remote is not None:
            options = {"listen": "127.0.0.1:0", "peers": [remote.listen_address], "cookie": "c"}
        parent = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "data"), json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert parent.stdout is not None and parent.stdin is not None
            lines = []
            while not (lines and lines[-1].startswith("scan")):
                line = parent.stdout.readline()
                assert line, "the parent died"
                lines.append(line.strip())
            assert sorted(line for line in lines if line.startswith("child")) == [
                f"child {i} attached" for i in range(3)
            ]
            final = json.loads(lines[-1][5:])
            expected = {f"{p}/{i}" for p in ("child", "achild") for i in range(3)}
            assert {k for k in final if k.startswith(("child/", "achild/"))} == expected
            if remote is not None:
                children_there = lambda: all(remote.get(f"child/{i}") is not None for i in range(3))  # noqa: E731
                wait_until(children_there, DEADLINE_S)
            parent.stdin.write("\n")
            parent.stdin.flush()
            assert parent.wait(DEADLINE_S) == 0
        finally:
            _reap(parent)
    finally:
        if remote is not None:
            remote.close()


def test_a_forked_child_whose_parent_died_becomes_the_node_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    script = textwrap.dedent(
        """
        import os, sys, time, ekv
        kv = ekv.EKV("p", sys.argv[1], shards=4, log=False)
        kv.put("parent", 1)
        parent = os.getpid()
        if os.fork() == 0:
            deadline = time.monotonic() + 120
            while os.getppid() == parent and time.monotonic() < deadline:  # until the parent is dead
                time.sleep(0.01)
            kv.put("child", 2)
            print(kv.info()["processes"]["role"], kv.get("parent"), flush=True)
            kv.close()
            os._exit(0)
        print("parent", os.getpid(), flush=True)
        time.sleep(300)  # SIGKILLed by the test
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(data)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().split()[0] == "parent"
    finally:
        parent.kill()
        parent.wait(DEADLINE_S)
    assert parent.stdout is not None  # the child still writes to it
    line = parent.stdout.readline()
    parent.stdout.close()
    assert line.split() == ["node", "1"], line
    with _open(data) as kv:
        assert kv.get("child") == 2


def test_the_node_process_vector_covers_attached_writes(tmp_path: Path) -> None:
    """The node process's replication vector advances with the writes attached processes report
    over the bus (else each pull would tell members they are missing and get them sent back)."""
    quiet = {"cookie": "c", "anti_entropy_interval": 3600}  # no pull brings them back meanwhile
    remote = ekv.EKV("p", tmp_path / "remote", shards=4, log=False, listen="127.0.0.1:0", **quiet)
    with remote, _open(tmp_path / "data", listen="127.0.0.1:0", peers=[remote.listen_address], **quiet) as kv:
        connected = lambda: any(m.get("connected") for m in kv.info()["members"].values())  # noqa: E731
        wait_until(connected, DEADLINE_S)
        child = _writer(tmp_path, tmp_path / "data", "att", 30)
        try:
            acks = [f for f in _lines(child) if f[0] == "ack"]
            assert child.proc.wait(DEADLINE_S) == 0
        finally:
            child.close()
        origin = acks[0][3]
        covered = lambda: sum(shard["vv"].get(origin, 0) for shard in kv.info()["shards"])  # noqa: E731
        wait_until(lambda: covered() == 30, DEADLINE_S)
        wait_until(lambda: len(remote.scan("att/")) == 30, DEADLINE_S)
