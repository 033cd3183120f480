"""Durability under SIGKILL with real processes (SPEC section 2, and the last row of section 9:
"process killed at any moment: every acknowledged write present after restart; no corruption").

A child process opens a store and writes as fast as it can (puts of fresh keys, overwrites of a
few hot keys, deletes, puts with a TTL), printing ``ack <key> <op> <timestamp_ns> <origin>`` only
after ``put()``/``delete()`` returned. The parent kills it with SIGKILL after a seeded random
number of acknowledgements and checks, on the files as the kill left them and again through a
reopened store, that

* every shard passes ``PRAGMA integrity_check``;
* every acknowledged write is stored with at least its version (a later write to the same key may
  supersede it); where the stored version *is* the acknowledged one, the stored value (or
  tombstone) is the one that write made;
* versions keep increasing across restarts.

The same data directory is reused for every round, and the next child opens the directory exactly
as the previous one was killed (the parent reopens it through ekv only every other round), so
both "restart after a crash" and "crash after a restart after a crash" are exercised.
"""

from __future__ import annotations

import contextlib
import pickle
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from zlib import crc32

import apsw
import pytest

import ekv
from _linechild import LineChild
from ekv.testing import entries, run_gc

pytestmark = pytest.mark.slow

NAME = "crash"
SHARDS = 4
HOT_KEYS = 16
LINE_DEADLINE_S = 60.0  # generous: only reached when the child is stuck or dead

# The value written under a key is a function of the key alone, so the parent can check the
# bytes of any write it sees acknowledged.
VALUE_FOR = """
def value_for(key):
    return ("v", key, b"x" * (crc32(key.encode()) % 700))
"""


def value_for(key: str) -> tuple[str, str, bytes]:
    return ("v", key, b"x" * (crc32(key.encode()) % 700))


WRITER = (
    r"""
import os, random, sys, threading, traceback
from zlib import crc32
import ekv

data_dir, durability = sys.argv[1], sys.argv[2]
threads, seed, round_no = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
"""
    + VALUE_FOR
    + r"""
out = threading.Lock()

def emit(line):
    with out:
        sys.stdout.write(line)
        sys.stdout.flush()

kv = ekv.EKV("crash", data_dir, shards=4, durability=durability, log=False)
emit(f"ready {os.getpid()}\n")

def worker(tid):
    try:
        rng = random.Random(seed * 100 + tid)
        mine = []
        n = 0
        while True:
            n += 1
            r = rng.random()
            if r < 0.50:
                key, op = f"u/{round_no}/{tid}/{n}", "put"
                version = kv.put(key, value_for(key))
                mine.append(key)
            elif r < 0.65:
                key, op = f"hot/{rng.randrange(16)}", "put"
                version = kv.put(key, value_for(key))
            elif r < 0.80:
                key, op = f"t/{round_no}/{tid}/{n}", "ttl"
                version = kv.put(key, value_for(key), ttl=3600)
                mine.append(key)
            else:
                if mine and rng.random() < 0.7:
                    key = mine.pop(rng.randrange(len(mine)))
                else:
                    key = f"hot/{rng.randrange(16)}"
                op = "del"
                version = kv.delete(key)
            emit(f"ack {key} {op} {version.timestamp_ns} {version.origin}\n")
    except BaseException:
        emit("error " + traceback.format_exc().replace("\n", " | ") + "\n")
        os._exit(3)

for tid in range(threads):
    threading.Thread(target=worker, args=(tid,), daemon=True).start()
threading.Event().wait()
"""
)

GC_WRITER = (
    r"""
import os, random, sys, threading, traceback
from zlib import crc32
import ekv

data_dir, seed, round_no = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
"""
    + VALUE_FOR
    + r"""
out = threading.Lock()

def emit(line):
    with out:
        sys.stdout.write(line)
        sys.stdout.flush()

kv = ekv.EKV("crash", data_dir, shards=4, gc_interval=0.3, log=False)

def on_events(batch):
    expired = sum(1 for event in batch if event.type == "expired")
    if expired:
        emit(f"expired {expired}\n")

kv.subscribe("e/", callback=on_events, max_queue=10_000_000)
emit(f"ready {os.getpid()}\n")
try:
    rng = random.Random(seed)
    n = 0
    while True:
        n += 1
        if rng.random() < 0.9:
            key, op = f"e/{round_no}/{n}", "ttl"
            version = kv.put(key, value_for(key), ttl=0.02)
        else:
            key, op = f"k/{round_no}/{n}", "put"
            version = kv.put(key, value_for(key))
        emit(f"ack {key} {op} {version.timestamp_ns} {version.origin}\n")
except BaseException:
    emit("error " + traceback.format_exc().replace("\n", " | ") + "\n")
    os._exit(3)
"""
)


# -- the child process ---------------------------------------------------------------------------


class Child(LineChild):
    """A writer script run by this interpreter (see :class:`LineChild`)."""

    def __init__(self, script: Path, args: list[str], stderr_path: Path) -> None:
        stderr_path.unlink(missing_ok=True)
        super().__init__([sys.executable, str(script), *args], stderr_path, deadline_s=LINE_DEADLINE_S)


@contextlib.contextmanager
def child(script: Path, args: list[str], stderr_path: Path) -> Iterator[Child]:
    proc = Child(script, args, stderr_path)
    try:
        yield proc
    finally:
        proc.close()


# -- what was acknowledged and what is on disk ----------------------------------------------------


@dataclass
class Acked:
    """The highest acknowledged version of each key, with the operation that made it."""

    latest: dict[str, tuple[ekv.Version, str]] = field(default_factory=dict)
    count: int = 0
    max_version: ekv.Version | None = None

    def add(self, line: str) -> ekv.Version:
        tag, key, op, ts, origin = line.split(" ")
        assert tag == "ack" and op in ("put", "ttl", "del"), line
        version = ekv.Version(int(ts), origin)
        self.count += 1
        current = self.latest.get(key)
        if current is None or version > current[0]:
            self.latest[key] = (version, op)
        if self.max_version is None or version > self.max_version:
            self.max_version = version
        return version


Stored = dict[str, tuple[ekv.Version, "bytes | None"]]


def check_acked(stored: Stored, acked: Acked, where: str) -> None:
    """Every acknowledged write is present with at least its version; an exact version match
    must hold exactly what that write wrote."""
    missing: list[str] = []
    wrong: list[str] = []
    for key, (version, op) in acked.latest.items():
        row = stored.get(key)
        if row is None or row[0] < version:
            missing.append(f"{key} ({op} {version}, stored {row[0] if row else None})")
            continue
        if row[0] == version:
            value = row[1]
            if op == "del":
                if value is not None:
                    wrong.append(f"{key}: acked delete {version} but a value is stored")
            elif op == "put" and (value is None or pickle.loads(value) != value_for(key)):
                wrong.append(f"{key}: acked put {version} but stored {value!r:.60}")
            elif op == "ttl" and value is not None and pickle.loads(value) != value_for(key):
                # a TTL put may already have been turned into a tombstone by GC (same version)
                wrong.append(f"{key}: acked ttl put {version} but stored {value!r:.60}")
    assert not missing, f"{where}: {len(missing)} of {len(acked.latest)} acknowledged writes lost: {missing[:10]}"
    assert not wrong, f"{where}: {len(wrong)} acknowledged writes stored wrongly: {wrong[:10]}"


def shard_files(data_dir: Path) -> list[Path]:
    files = sorted(data_dir.glob("shard_*.db"))
    assert [p.name for p in files] == [f"shard_{i:03d}.db" for i in range(SHARDS)]
    return files


def raw_state(data_dir: Path) -> Stored:
    """Integrity-check every shard and read its rows, read-only, without opening the store (so
    the files stay exactly as the kill left them for the next child)."""
    stored: Stored = {}
    for path in shard_files(data_dir):
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            assert result == ["ok"], f"{path.name}: integrity_check {result[:5]}"
            for key, ts, origin, value in conn.execute("SELECT key, ts, origin, value FROM kv"):
                assert key not in stored, f"{key!r} stored in two shards"
                stored[key] = (ekv.Version(ts, origin), value)
        finally:
            conn.close()
    return stored


def reopened_state(data_dir: Path, durability: str) -> Stored:
    """Reopen the store through ekv and dump it (tombstones included); check reads agree."""
    with ekv.EKV(NAME, data_dir, shards=SHARDS, durability=durability, log=False) as kv:
        before = time.time_ns()
        dump = list(entries(kv))
        stored: Stored = {e.key: (e.version, e.value) for e in dump}
        assert len(stored) == len(dump), "a key is stored twice"
        for e in dump:
            visible = kv.lookup(e.key)
            if e.value is None or (e.expires_at_ns is not None and e.expires_at_ns <= before):
                assert visible is None, e
            elif e.expires_at_ns is None or e.expires_at_ns > time.time_ns() + 60 * 10**9:
                assert visible == (pickle.loads(e.value), e.version), e
    # closing checkpointed the WAL: the files must still be sound
    raw_state(data_dir)
    return stored


def write_script(tmp_path: Path, name: str, text: str) -> Path:
    script = tmp_path / name
    script.write_text(text)
    return script


# -- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threads", "durability", "rounds", "seed"),
    [
        (1, "normal", 6, 1),
        (4, "normal", 4, 2),
        (1, "full", 2, 3),
        (4, "full", 2, 4),
    ],
    ids=["1thread-normal", "4threads-normal", "1thread-full", "4threads-full"],
)
def test_acknowledged_writes_survive_sigkill(
    tmp_path: Path, threads: int, durability: str, rounds: int, seed: int
) -> None:
    rng = random.Random(seed)
    script = write_script(tmp_path, "writer.py", WRITER)
    data_dir = tmp_path / "data"
    acked = Acked()
    origin: str | None = None
    for round_no in range(rounds):
        target = rng.randint(200, 2000)
        floor = acked.max_version
        where = f"seed {seed}, round {round_no} ({threads} threads, durability={durability}, kill after {target} acks)"
        args = [str(data_dir), durability, str(threads), str(seed * 1000 + round_no), str(round_no)]
        with child(script, args, tmp_path / f"stderr-{round_no}.txt") as proc:
            deadline = time.monotonic() + LINE_DEADLINE_S
            first = proc.readline(deadline)
            assert first is not None and first.startswith("ready "), f"{where}: {first!r}{proc.diagnostics()}"
            seen = 0
            while seen < target:
                line = proc.readline(time.monotonic() + LINE_DEADLINE_S)
                assert line is not None and line.startswith("ack "), f"{where}: {line!r}{proc.diagnostics()}"
                version = acked.add(line)
                seen += 1
                # timestamps never go back across a crash and a restart
                assert floor is None or version > floor, f"{where}: {version} not above {floor}"
            proc.kill()
            assert proc.proc.returncode == -signal.SIGKILL, f"{where}{proc.diagnostics()}"
            for line in proc.remaining_lines():
                assert line.startswith("ack "), f"{where}: {line!r}{proc.diagnostics()}"
                acked.add(line)
        # the node id is stable; after each unclean restart new writes carry a new origin
        # (node_id~epoch), so a crash can never make a sequence number be issued twice
        origin = origin or acked.max_version.origin.split("~")[0]  # type: ignore[union-attr]
        assert acked.max_version is not None and acked.max_version.origin.split("~")[0] == origin
        check_acked(raw_state(data_dir), acked, where + ", files as killed")
        if round_no % 2 == 1 or round_no == rounds - 1:
            check_acked(reopened_state(data_dir, durability), acked, where + ", reopened")
    assert acked.count >= rounds * 200


def test_kill_during_gc_pass_then_reopen(tmp_path: Path) -> None:
    """Kill the writer while its GC thread is expiring many TTL keys (the kill follows the first
    batch of "expired" events, while the pass still has batches to go); reopening works, nothing
    acknowledged is lost, and a GC pass on the reopened store finishes the job."""
    rng = random.Random(7)
    script = write_script(tmp_path, "gc_writer.py", GC_WRITER)
    data_dir = tmp_path / "data"
    acked = Acked()
    for round_no in range(2):
        where = f"gc round {round_no}"
        expired_batches_before_kill = rng.randint(1, 3)
        args = [str(data_dir), str(100 + round_no), str(round_no)]
        with child(script, args, tmp_path / f"gc-stderr-{round_no}.txt") as proc:
            first = proc.readline(time.monotonic() + LINE_DEADLINE_S)
            assert first is not None and first.startswith("ready "), f"{where}: {first!r}{proc.diagnostics()}"
            expired = 0
            while expired < expired_batches_before_kill:
                line = proc.readline(time.monotonic() + LINE_DEADLINE_S)
                assert line is not None, f"{where}: the child died{proc.diagnostics()}"
                if line.startswith("expired "):
                    expired += 1
                else:
                    assert line.startswith("ack "), f"{where}: {line!r}{proc.diagnostics()}"
                    acked.add(line)
            proc.kill()
            assert proc.proc.returncode == -signal.SIGKILL
            for line in proc.remaining_lines():
                if line.startswith("ack "):
                    acked.add(line)
        check_acked(raw_state(data_dir), acked, where + ", files as killed")
        with ekv.EKV(NAME, data_dir, shards=SHARDS, gc_interval=0.3, log=False) as kv:
            stored = {e.key: (e.version, e.value) for e in entries(kv)}
            check_acked(stored, acked, where + ", reopened")
            ttl_keys = [k for k, (_, op) in acked.latest.items() if op == "ttl"]
            assert ttl_keys
            assert all(kv.get(k) is None for k in ttl_keys)  # expired, GC'd or not
            run_gc(kv)
            after = {e.key: (e.version, e.value) for e in entries(kv)}
            check_acked(after, acked, where + ", after GC")
            for key in ttl_keys:  # GC turned every expired put into a tombstone of the same version
                assert after[key] == (acked.latest[key][0], None), key
            for key, (version, op) in acked.latest.items():
                if op == "put":
                    assert kv.lookup(key) == (value_for(key), version), key
        raw_state(data_dir)


# -- a kill while the data directory is being created ---------------------------------------------

CREATOR = r"""
import os, signal, sys
import ekv._storage.datadir as datadir_mod
import ekv._storage.shardfile as shard_mod
import ekv

data_dir, point, index = sys.argv[1], sys.argv[2], int(sys.argv[3])

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

initialise = shard_mod.initialise
if point == "before-initialise":  # the shard file exists (WAL mode set), its schema does not
    def hooked(cur, i, identity):
        if i == index:
            die()
        return initialise(cur, i, identity)
    shard_mod.initialise = hooked
elif point == "after-initialise":
    def hooked(cur, i, identity):
        initialise(cur, i, identity)
        if i == index:
            die()
    shard_mod.initialise = hooked
elif point == "before-manifest":  # every shard initialised, ekv.json not written yet
    datadir_mod.DataDir.write_manifest = die
ekv.EKV("crash", data_dir, shards=4, log=False)
print("created", flush=True)
"""

INTERRUPTED_CREATION = [
    pytest.param("after-initialise", 1, id="after-initialising-shard-1"),
    pytest.param("before-manifest", 0, id="before-writing-ekv.json"),
    pytest.param("before-initialise", 0, id="before-initialising-shard-0"),
    pytest.param("before-initialise", 2, id="before-initialising-shard-2"),
]


@pytest.mark.parametrize(("point", "index"), INTERRUPTED_CREATION)
def test_kill_while_creating_the_data_dir(tmp_path: Path, point: str, index: int) -> None:
    """SIGKILL at a precise point of the first open (the child kills itself there): nothing was
    acknowledged yet, and the next open must work, creating the store afresh."""
    script = write_script(tmp_path, "creator.py", CREATOR)
    data_dir = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, str(script), str(data_dir), point, str(index)],
        capture_output=True,
        text=True,
        timeout=LINE_DEADLINE_S,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr)
    assert not (data_dir / "ekv.json").exists()
    with ekv.EKV(NAME, data_dir, shards=SHARDS, log=False) as kv:
        version = kv.put("after", "restart")
    with ekv.EKV(NAME, data_dir, shards=SHARDS, log=False) as kv:
        assert kv.lookup("after") == ("restart", version)
    raw_state(data_dir)
