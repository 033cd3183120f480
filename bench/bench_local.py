"""Single-node benchmark: ekv against the raw SQLite floor and the stores a Python user would
pick instead, measured side by side in one run and reported as ratios.

    python3 -m pip install -e ".[bench]" && python3 bench/bench_local.py            # full run
    python3 bench/bench_local.py --quick                                             # smaller, faster

Rows:

* floor: raw APSW (and stdlib sqlite3) running exactly the SQL one ekv read needs (point select +
  unpickle) and one ekv write needs (the LWW upsert, whose change-log row is inserted by a trigger
  in the same transaction; the value is pickled outside the timed region, so the floor is pure
  SQL), with ekv's settings (WAL, synchronous=NORMAL, checkpoints out of the commit path);
* ekv: get, put of new keys, put overwriting, delete, put_many (100 new keys a call; the ratio
  to single puts of new keys is printed), put from 8 threads, prefix scan/keys of 1,000 keys,
  RSS while iterating a large store; AsyncEKV get and put (overwrite) beside EKV's of the same
  run, with the ratio and its 1.5x target;
* peers: diskcache ``Cache``, ``sqlitedict`` (autocommit, so a write is durable when it returns),
  and Redis through redis-py on loopback (an in-memory server started here; skipped with a note if
  ``redis-server`` is missing and cannot be installed with apt-get).

These 2-vCPU machines fall into a slow mode on back-to-back repetitions (kernel writeback), so each
repetition is preceded by ``os.sync()`` and a short pause, and every figure is the median of the
repetitions (at least 5). Latencies are per operation (``perf_counter_ns`` around each call);
ops/s is operations divided by the summed latencies, the same rule for every row.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import pickle
import platform
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw

import ekv
import ekv.testing
from ekv._model import Entry
from ekv._storage import schema
from ekv._storage.sqlite import WRITER_AUTOCHECKPOINT_PAGES

# The Elixir original (release 0.1.5), built and measured on this machine kind the same way
# (figures from the issue that commissioned this benchmark).
ELIXIR = {
    "get": {"ops_s": 120_500, "p50_us": 7.5},
    "put_new": {"ops_s": 15_500},
    "put_overwrite": {"ops_s": 19_750},
    "delete": {"ops_s": 16_700},
    "scan_1000_ms": 1.45,
    "keys_1000_ms": 0.68,
}

VALUE = {"name": "Alice", "role": "admin", "n": 0}


PUT_MANY_BATCH = 100
"""Items per ``put_many`` call in the put_many row."""


def settle() -> None:
    gc.collect()
    os.sync()
    time.sleep(0.3)


def measure(fn: Callable[[Any], Any], args: list[Any]) -> dict[str, float]:
    """Call ``fn(arg)`` for every arg, timing each call; return ops/s and percentiles."""
    lat = [0] * len(args)
    clock = time.perf_counter_ns
    for i, arg in enumerate(args):
        t0 = clock()
        fn(arg)
        lat[i] = clock() - t0
    lat.sort()
    n = len(lat)
    return {
        "ops_s": n / (sum(lat) / 1e9),
        "p50_us": lat[n // 2] / 1e3,
        "p99_us": lat[min(n - 1, (n * 99) // 100)] / 1e3,
    }


def measure_pair(
    fa: Callable[[Any], Any], fb: Callable[[Any], Any], args: list[Any]
) -> tuple[dict[str, float], dict[str, float]]:
    """:func:`measure` of ``fa`` and ``fb`` with their calls alternating (``fa(arg)``, ``fb(arg)``
    for every arg): a ratio of the two is not moved by a load swing on a shared machine that a
    block of one and then a block of the other would see on one side only."""
    lat_a, lat_b = [0] * len(args), [0] * len(args)
    clock = time.perf_counter_ns
    for i, arg in enumerate(args):
        t0 = clock()
        fa(arg)
        t1 = clock()
        fb(arg)
        t2 = clock()
        lat_a[i], lat_b[i] = t1 - t0, t2 - t1
    return _figures(lat_a), _figures(lat_b)


def _figures(lat: list[int]) -> dict[str, float]:
    lat.sort()
    n = len(lat)
    return {
        "ops_s": n / (sum(lat) / 1e9),
        "p50_us": lat[n // 2] / 1e3,
        "p99_us": lat[min(n - 1, (n * 99) // 100)] / 1e3,
    }


def median_of(reps: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in reps) for k in reps[0]}


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- floors -----------------------------------------------------------------------------------


class RawApsw:
    """The SQL of one ekv write and one ekv read, on a raw APSW connection."""

    def __init__(self, path: str) -> None:
        self.conn = apsw.Connection(path)
        self.conn.execute("PRAGMA journal_mode=WAL").fetchall()
        self.conn.execute("PRAGMA synchronous=NORMAL").fetchall()
        # ekv's writer settings: checkpoints run on a background thread, not in the commit
        self.conn.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}").fetchall()
        self.conn.execute(schema.DDL)
        self.cur = self.conn.cursor()
        self.seq = 0

    def write(self, item: tuple[str, bytes]) -> None:
        key, blob = item
        self.seq += 1
        # ekv's write: one LWW upsert; the change-log row is appended by the schema's trigger,
        # in the same (autocommit) transaction.
        self.cur.execute(schema.UPSERT, (key, time.time_ns(), "node", self.seq, None, None, blob, 0))

    def read(self, key: str) -> Any:
        row = self.cur.execute(schema.GET, (key,)).get
        return pickle.loads(row[0])

    def close(self) -> None:
        self.conn.close()


class RawSqlite3:
    """The same SQL through the standard library's sqlite3 (the system SQLite library)."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}")
        self.conn.executescript(schema.DDL)
        self.seq = 0

    def write(self, item: tuple[str, bytes]) -> None:
        key, blob = item
        self.seq += 1
        self.conn.execute(schema.UPSERT, (key, time.time_ns(), "node", self.seq, None, None, blob, 0))

    def read(self, key: str) -> Any:
        row = self.conn.execute(schema.GET, (key,)).fetchone()
        return pickle.loads(row[0])

    def close(self) -> None:
        self.conn.close()


class RawShards:
    """``count`` raw APSW files with one lock each, keys routed like ekv's shards."""

    def __init__(self, path: Path, count: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.shards = [RawApsw(str(path / f"raw_{i}.db")) for i in range(count)]
        self.locks = [threading.Lock() for _ in range(count)]

    def write(self, item: tuple[str, bytes]) -> None:
        index = zlib.crc32(item[0].encode()) % len(self.shards)
        with self.locks[index]:
            self.shards[index].write(item)

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


SCAN_TARGET = 1.2
"""Issue 13: a prefix scan within this factor of :class:`RawScan` (the raw APSW floor)."""
RAW_RANGE = (
    "SELECT key, value FROM kv WHERE key >= ? AND key < ? AND value IS NOT NULL "
    "AND (expires_at IS NULL OR expires_at > ?) ORDER BY key"
)


class RawScan:
    """The floor of a prefix scan: the same rows in raw APSW files routed like ekv's shards, read
    with one range query per shard, merged (sorted) and unpickled into a dict; no checksums."""

    def __init__(self, path: Path, count: int, items: list[tuple[str, bytes]]) -> None:
        self.shards = RawShards(path, count)
        for item in items:
            self.shards.write(item)
        self.cursors = [shard.conn.cursor() for shard in self.shards.shards]

    def scan(self, prefix: str) -> dict[str, Any]:
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        now = time.time_ns()
        rows: list[Any] = []
        for cur in self.cursors:
            rows += cur.execute(RAW_RANGE, (prefix, upper, now)).fetchall()
        rows.sort()
        keys, values = zip(*rows, strict=True)
        return dict(zip(keys, map(pickle.loads, values), strict=True))

    def close(self) -> None:
        self.shards.close()


# -- Redis --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_redis_server() -> str | None:
    """Path to redis-server, installing the Debian package if needed; None if impossible."""
    found = shutil.which("redis-server")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    return shutil.which("redis-server")


@contextlib.contextmanager
def redis_client() -> Iterator[Any]:
    try:
        import redis
    except ImportError:
        yield None, "redis-py not installed (pip install -e '.[bench]')"
        return
    server = ensure_redis_server()
    if server is None:
        yield None, "redis-server not available and could not be installed"
        return
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    yield None, "redis-server did not start"
                    return
                time.sleep(0.05)
        yield client, None
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.ops
    reps = args.reps
    root = Path(tempfile.mkdtemp(prefix="ekv-bench-"))
    rnd = random.Random(42)
    results: dict[str, Any] = {"rows": {}, "notes": []}
    rows = results["rows"]
    blob = pickle.dumps(VALUE, protocol=5)

    def keys_for(rep: int, tag: str) -> list[str]:
        keys = [f"{tag}/{rep}/{i:08d}" for i in range(n)]
        rnd.shuffle(keys)
        return keys

    try:
        # --- writes: floors, ekv, peers; a fresh directory for every repetition ----------
        write_rows: dict[str, list[dict[str, float]]] = {}

        def rep_write(name: str, make: Callable[[Path], Any], op: Callable[[Any, list[str]], dict[str, float]]) -> None:
            out = write_rows.setdefault(name, [])
            for rep in range(reps):
                d = root / f"{name}-{rep}"
                d.mkdir()
                target = make(d)
                settle()
                try:
                    out.append(op(target, keys_for(rep, "w")))
                finally:
                    target.close()
                shutil.rmtree(d, ignore_errors=True)

        rep_write(
            "floor_apsw_write",
            lambda d: RawApsw(str(d / "raw.db")),
            lambda t, keys: measure(t.write, [(k, blob) for k in keys]),
        )
        rep_write(
            "floor_sqlite3_write",
            lambda d: RawSqlite3(str(d / "raw.db")),
            lambda t, keys: measure(t.write, [(k, blob) for k in keys]),
        )

        def ekv_store(d: Path, **kw: Any) -> ekv.EKV:
            return ekv.EKV("bench", d, log=False, gc_interval=3600, **kw)

        rep_write("ekv_put_new", ekv_store, lambda kv, keys: measure(lambda k: kv.put(k, VALUE), keys))

        def overwrite(kv: ekv.EKV, keys: list[str]) -> dict[str, float]:
            for k in keys:
                kv.put(k, VALUE)
            settle()
            return measure(lambda k: kv.put(k, VALUE), keys)

        rep_write("ekv_put_overwrite", ekv_store, overwrite)

        def delete(kv: ekv.EKV, keys: list[str]) -> dict[str, float]:
            for k in keys:
                kv.put(k, VALUE)
            settle()
            return measure(kv.delete, keys)

        rep_write("ekv_delete", ekv_store, delete)

        # put_many: the same new keys in batches of PUT_MANY_BATCH (each shard's part of a batch
        # is one transaction); ops/s counts keys, latencies are per put_many call.
        def put_many(kv: ekv.EKV, keys: list[str]) -> dict[str, float]:
            batches = [{k: VALUE for k in keys[i : i + PUT_MANY_BATCH]} for i in range(0, len(keys), PUT_MANY_BATCH)]
            m = measure(kv.put_many, batches)
            m["ops_s"] *= len(keys) / len(batches)
            return m

        rep_write(f"ekv_put_many_{PUT_MANY_BATCH}", ekv_store, put_many)

        # Threads: 1 vs 8 writer threads, interleaved repetition by repetition so both see the
        # same machine state. The raw APSW pair (8 shard files, one lock each, keys routed by
        # crc32 like ekv) shows the ceiling the GIL leaves for this pattern on this machine.
        def wall(put: Callable[[str], Any], keys: list[str], threads: int) -> dict[str, float]:
            parts = [keys[i::threads] for i in range(threads)]
            barrier = threading.Barrier(threads + 1, timeout=600)  # bounded: an error, not a hang

            def worker(part: list[str]) -> None:
                barrier.wait()
                for k in part:
                    put(k)

            pool = [threading.Thread(target=worker, args=(p,)) for p in parts]
            for t in pool:
                t.start()
            settle()
            barrier.wait()
            t0 = time.perf_counter()
            for t in pool:
                t.join(600)
                if t.is_alive():
                    raise RuntimeError(f"a writer thread of {threads} did not finish its puts within 600 s")
            return {"ops_s": len(keys) / (time.perf_counter() - t0)}

        thread_rows: dict[str, list[dict[str, float]]] = {}
        for rep in range(reps):
            for threads in (1, 8):
                d = root / f"threads-{rep}-{threads}"
                with ekv_store(d) as kv:
                    thread_rows.setdefault(f"ekv_put_{threads}_threads", []).append(
                        wall(lambda k, kv=kv: kv.put(k, VALUE), keys_for(rep, "t"), threads)
                    )
                raw_shards = RawShards(d / "raw", 8)
                thread_rows.setdefault(f"floor_apsw_write_{threads}_threads", []).append(
                    wall(lambda k, r=raw_shards: r.write((k, blob)), keys_for(rep, "t"), threads)
                )
                raw_shards.close()
                shutil.rmtree(d, ignore_errors=True)
        for name, reps_out in thread_rows.items():
            rows[name] = median_of(reps_out)

        if args.peers:
            import diskcache

            rep_write(
                "diskcache_set",
                lambda d: diskcache.Cache(str(d)),
                lambda c, keys: measure(lambda k: c.set(k, VALUE), keys),
            )
            try:
                from sqlitedict import SqliteDict

                rep_write(
                    "sqlitedict_set",
                    lambda d: SqliteDict(str(d / "sd.db"), autocommit=True),
                    lambda s, keys: measure(lambda k: s.__setitem__(k, VALUE), keys[: max(1, n // 4)]),
                )
            except ImportError:
                results["notes"].append("sqlitedict not installed: row skipped")

        for name, reps_out in write_rows.items():
            rows[name] = median_of(reps_out)

        # --- reads: one seeded store per system, repeated read passes ---------------------
        read_keys = [f"r/{i:08d}" for i in range(n)]
        order = read_keys[:]
        rnd.shuffle(order)
        read_rows: dict[str, list[dict[str, float]]] = {}

        def rep_read(name: str, fn: Callable[[str], Any]) -> None:
            out = read_rows.setdefault(name, [])
            for _ in range(reps):
                settle()
                out.append(measure(fn, order))

        raw = RawApsw(str(root / "read-raw.db"))
        for k in read_keys:
            raw.write((k, blob))
        rep_read("floor_apsw_read", raw.read)
        raw.close()
        raw3 = RawSqlite3(str(root / "read-raw3.db"))
        for k in read_keys:
            raw3.write((k, blob))
        rep_read("floor_sqlite3_read", raw3.read)
        raw3.close()

        with ekv_store(root / "read-ekv") as kv:
            for k in read_keys:
                kv.put(k, VALUE)
            rep_read("ekv_get", kv.get)

            # prefix scans: 10 prefixes of 1,000 keys each
            for p in range(10):
                for i in range(1000):
                    kv.put(f"scan/{p}/{i:05d}", VALUE)
            prefixes = [f"scan/{p}/" for p in range(10)] * 20
            assert len(kv.scan("scan/3/")) == 1000
            raw_scan = RawScan(
                root / "scan-raw",
                len(kv.info()["shards"]),
                [(f"scan/{p}/{i:05d}", blob) for p in range(10) for i in range(1000)],
            )
            assert raw_scan.scan("scan/3/") == kv.scan("scan/3/")
            for _ in range(reps):  # interleaved call by call: the floor and ekv see the same machine state
                floor_rep, ekv_rep = measure_pair(raw_scan.scan, kv.scan, prefixes)
                read_rows.setdefault("floor_apsw_scan_1000", []).append(floor_rep)
                read_rows.setdefault("ekv_scan_1000", []).append(ekv_rep)
            raw_scan.close()
            read_rows["ekv_keys_1000"] = [measure(kv.keys, prefixes) for _ in range(reps)]

        if args.peers:
            read_peers(root, read_keys, rep_read, rows, keys_for, results["notes"], reps)

        for name, reps_out in read_rows.items():
            rows[name] = median_of(reps_out)

        rows.update(aio_vs_sync(root, n, reps))

        # --- memory while iterating a large store -----------------------------------------
        if args.iterate:
            rows["ekv_iter_memory"] = iterate_memory(root / "big", args.iterate)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


# -- AsyncEKV against EKV ------------------------------------------------------------------------

AIO_TARGET = 1.5
"""AsyncEKV get and put cost at most this many times EKV's (issue 13)."""


def aio_vs_sync(root: Path, n: int, reps: int) -> dict[str, dict[str, float]]:
    """EKV get/put and AsyncEKV get/put (awaited one by one on a running loop), on the same
    keys, repetition by repetition in one run, so that the ratio compares like with like. Put
    overwrites existing keys (the common case of a cache); latency is per awaited call."""
    import asyncio

    keys = [f"a/{i:08d}" for i in range(n)]
    out: dict[str, list[dict[str, float]]] = {}

    async def timed(fn: Callable[[str], Any]) -> dict[str, float]:
        lat = [0] * len(keys)
        clock = time.perf_counter_ns
        for i, key in enumerate(keys):
            t0 = clock()
            await fn(key)
            lat[i] = clock() - t0
        lat.sort()
        return {"ops_s": n / (sum(lat) / 1e9), "p50_us": lat[n // 2] / 1e3, "p99_us": lat[(n * 99) // 100] / 1e3}

    async def async_side(d: Path) -> tuple[dict[str, float], dict[str, float]]:
        async with ekv.AsyncEKV("bench", d, log=False, gc_interval=3600) as akv:
            await akv.get(keys[0])  # the loop thread's readers, as a warm EKV has them
            settle()
            put = await timed(lambda k: akv.put(k, VALUE))
            settle()
            return put, await timed(akv.get)

    for rep in range(reps):
        d = root / f"aio-{rep}"
        with ekv.EKV("bench", d, log=False, gc_interval=3600) as kv:
            for k in keys:
                kv.put(k, VALUE)
            settle()
            out.setdefault("ekv_put_overwrite_same_run", []).append(measure(lambda k: kv.put(k, VALUE), keys))
            settle()
            out.setdefault("ekv_get_same_run", []).append(measure(kv.get, keys))
        put, get = asyncio.run(async_side(d))
        out.setdefault("aio_put", []).append(put)
        out.setdefault("aio_get", []).append(get)
        shutil.rmtree(d, ignore_errors=True)
    return {name: median_of(r) for name, r in out.items()}


def aio_report(r: dict[str, Any]) -> list[str]:
    """The AsyncEKV rows: ops/s and p50 beside EKV's of the same run, the ratio and the target."""
    lines = []
    pairs = (("get", "ekv_get_same_run", "aio_get"), ("put", "ekv_put_overwrite_same_run", "aio_put"))
    for op, sync_key, aio_key in pairs:
        if aio_key not in r:
            continue
        s, a = r[sync_key], r[aio_key]
        mean, p50 = s["ops_s"] / a["ops_s"], a["p50_us"] / s["p50_us"]
        verdict = "holds" if max(mean, p50) <= AIO_TARGET else "MISSED"
        lines.append(
            f"AsyncEKV {op}: {a['ops_s']:,.0f} ops/s (p50 {a['p50_us']:.1f} µs) vs EKV {op} {s['ops_s']:,.0f} ops/s "
            f"(p50 {s['p50_us']:.1f} µs) in the same run: {mean:.2f}x the mean time per call, {p50:.2f}x the p50 "
            f"(target <= {AIO_TARGET}x: {verdict})"
        )
    return lines


def read_peers(
    root: Path,
    read_keys: list[str],
    rep_read: Callable[[str, Callable[[str], Any]], None],
    rows: dict[str, Any],
    keys_for: Callable[[int, str], list[str]],
    notes: list[str],
    reps: int,
) -> None:
    """The peers' read rows (and Redis's write row, measured once its server is up)."""
    import diskcache

    cache = diskcache.Cache(str(root / "read-dc"))
    for k in read_keys:
        cache.set(k, VALUE)
    rep_read("diskcache_get", cache.get)
    cache.close()
    try:
        from sqlitedict import SqliteDict

        sd = SqliteDict(str(root / "read-sd.db"), autocommit=False)
        for k in read_keys:
            sd[k] = VALUE
        sd.commit()
        rep_read("sqlitedict_get", sd.__getitem__)
        sd.close()
    except ImportError:
        pass

    with redis_client() as (client, why):
        if client is None:
            notes.append(f"Redis row skipped: {why}")
        else:
            payload = pickle.dumps(VALUE, protocol=5)
            write_rows_r = []
            for rep in range(reps):
                settle()
                write_rows_r.append(measure(lambda k: client.set(k, payload), keys_for(rep, "w")))
            rows["redis_set"] = median_of(write_rows_r)
            for k in read_keys:
                client.set(k, payload)
            rep_read("redis_get", lambda k: pickle.loads(client.get(k)))


def iterate_memory(path: Path, count: int) -> dict[str, float]:
    """Load ``count`` keys (through the replication apply path, in big batches), then iterate
    them all and report the RSS growth seen while iterating."""
    with ekv.EKV("bench", path, log=False, gc_interval=3600) as kv:
        store = ekv.testing.node_of(kv).store
        blob = pickle.dumps(VALUE, protocol=5)
        ts = time.time_ns()
        batch = []
        for i in range(count):
            batch.append(Entry(f"big/{i:09d}", ts + i, "loader", i + 1, None, blob))
            if len(batch) == 5000:
                store.apply(batch)
                batch = []
        if batch:
            store.apply(batch)
        settle()
        before = rss_mb()
        peak = before
        t0 = time.perf_counter()
        seen = 0
        for _key, _value in kv.iter("big/"):
            seen += 1
            if seen % 20_000 == 0:
                peak = max(peak, rss_mb())
        elapsed = time.perf_counter() - t0
        assert seen == count, (seen, count)
        return {"keys": count, "rss_before_mb": before, "rss_growth_mb": peak - before, "keys_per_s": count / elapsed}


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    r = results["rows"]
    lines = [
        f"ekv {ekv.__version__}, SQLite {apsw.sqlite_lib_version()} (APSW), system SQLite {sqlite3.sqlite_version}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; {args.ops:,} ops per repetition, "
        f"median of {args.reps} repetitions",
        "",
        "| operation | ops/s | p50 µs | p99 µs | time vs floor | speed vs diskcache | speed vs Elixir ekv 0.1.5 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(label: str, key: str, floor: str | None, peer: str | None, elixir: float | None) -> None:
        if key not in r:
            return
        m = r[key]
        cells = [
            label,
            f"{m['ops_s']:,.0f}",
            f"{m.get('p50_us', float('nan')):.1f}",
            f"{m.get('p99_us', float('nan')):.1f}",
        ]
        # cost relative to the floor: mean time per operation divided by the floor's (1.00x = the floor)
        cells.append(f"{r[floor]['ops_s'] / m['ops_s']:.2f}x" if floor and floor in r else "-")
        cells.append(f"{m['ops_s'] / r[peer]['ops_s']:.2f}x" if peer and peer in r else "-")
        cells.append(f"{m['ops_s'] / elixir:.2f}x" if elixir else "-")
        lines.append("| " + " | ".join(cells) + " |")

    row("raw APSW read (floor)", "floor_apsw_read", None, "diskcache_get", None)
    row("raw sqlite3 read", "floor_sqlite3_read", "floor_apsw_read", "diskcache_get", None)
    row("**ekv get**", "ekv_get", "floor_apsw_read", "diskcache_get", ELIXIR["get"]["ops_s"])
    row("diskcache get", "diskcache_get", "floor_apsw_read", None, None)
    row("sqlitedict get", "sqlitedict_get", "floor_apsw_read", "diskcache_get", None)
    row("Redis get (redis-py, loopback)", "redis_get", "floor_apsw_read", "diskcache_get", None)
    row("raw APSW write (floor)", "floor_apsw_write", None, "diskcache_set", None)
    row("raw sqlite3 write", "floor_sqlite3_write", "floor_apsw_write", "diskcache_set", None)
    row("**ekv put, new keys**", "ekv_put_new", "floor_apsw_write", "diskcache_set", ELIXIR["put_new"]["ops_s"])
    row(
        "**ekv put, overwrite**",
        "ekv_put_overwrite",
        "floor_apsw_write",
        "diskcache_set",
        ELIXIR["put_overwrite"]["ops_s"],
    )
    row("**ekv delete**", "ekv_delete", "floor_apsw_write", "diskcache_set", ELIXIR["delete"]["ops_s"])
    row(
        f"**ekv put_many, {PUT_MANY_BATCH} new keys a call** (per key)",
        f"ekv_put_many_{PUT_MANY_BATCH}",
        "floor_apsw_write",
        "diskcache_set",
        None,
    )
    row("diskcache set", "diskcache_set", "floor_apsw_write", None, None)
    row("sqlitedict set (autocommit)", "sqlitedict_set", "floor_apsw_write", "diskcache_set", None)
    row("Redis set (redis-py, loopback)", "redis_set", "floor_apsw_write", "diskcache_set", None)
    lines.append("")
    many = f"ekv_put_many_{PUT_MANY_BATCH}"
    if many in r and "ekv_put_new" in r:
        lines.append(
            f"ekv put_many ({PUT_MANY_BATCH} new keys a call): {r[many]['ops_s']:,.0f} keys/s vs "
            f"{r['ekv_put_new']['ops_s']:,.0f} single puts/s of new keys in the same run: "
            f"{r[many]['ops_s'] / r['ekv_put_new']['ops_s']:.1f}x"
        )
    if "ekv_put_8_threads" in r:
        one = r["ekv_put_1_threads"]["ops_s"]
        eight = r["ekv_put_8_threads"]["ops_s"]
        raw_one = r["floor_apsw_write_1_threads"]["ops_s"]
        raw_eight = r["floor_apsw_write_8_threads"]["ops_s"]
        lines.append(
            f"ekv put from 8 threads: {eight:,.0f} ops/s aggregate vs {one:,.0f} ops/s from 1 thread "
            f"(wall clock, interleaved repetitions): {eight / one:.2f}x; raw APSW on 8 files with a lock each: "
            f"{raw_eight:,.0f} vs {raw_one:,.0f} ({raw_eight / raw_one:.2f}x, the GIL's ceiling for this pattern)"
        )
    if "ekv_scan_1000" in r:
        s = r["ekv_scan_1000"]["p50_us"] / 1e3
        k = r["ekv_keys_1000"]["p50_us"] / 1e3
        lines.append(
            f"prefix scan of 1,000 keys: scan {s:.2f} ms (Elixir 0.1.5: {ELIXIR['scan_1000_ms']} ms), "
            f"keys {k:.2f} ms (Elixir: {ELIXIR['keys_1000_ms']} ms), p50"
        )
        if "floor_apsw_scan_1000" in r:
            f = r["floor_apsw_scan_1000"]
            lines.append(
                f"prefix scan floor (raw APSW, one range query per shard, merged, unpickled): "
                f"{f['p50_us'] / 1e3:.2f} ms p50; ekv scan / floor: {f['ops_s'] / r['ekv_scan_1000']['ops_s']:.2f}x "
                f"mean time, {r['ekv_scan_1000']['p50_us'] / f['p50_us']:.2f}x p50 (target <= {SCAN_TARGET}x; "
                "calls interleaved)"
            )
    if "ekv_iter_memory" in r:
        m = r["ekv_iter_memory"]
        lines.append(
            f"iterating {m['keys']:,.0f} keys: RSS grew {m['rss_growth_mb']:.1f} MB "
            f"(from {m['rss_before_mb']:.0f} MB), {m['keys_per_s']:,.0f} keys/s"
        )
    lines.extend(aio_report(r))
    for note in results["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=20_000, help="operations per repetition (default 20,000)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions; the median is reported (default 5)")
    parser.add_argument(
        "--iterate",
        type=int,
        default=1_000_000,
        help="keys for the iteration-memory row (0 to skip; default 1,000,000)",
    )
    parser.add_argument("--quick", action="store_true", help="2,000 ops, 3 repetitions, 100,000-key iteration")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument(
        "--no-peers",
        dest="peers",
        action="store_false",
        help="ekv and the raw SQLite floors only: skip diskcache, sqlitedict and Redis (bench/compare.py)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.ops, args.reps, args.iterate = 2_000, 3, 100_000
    results = run(args)
    text = report(results, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
