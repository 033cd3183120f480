"""Many processes, one data directory: which write path? A measurement for the process-model
issue (SPEC section 12), comparing the two designs it names before one is chosen.

    PYTHONPATH=src python3 bench/bench_process_model.py                 # 3 s per run
    PYTHONPATH=src python3 bench/bench_process_model.py --seconds 1     # quicker

Every run writes small values (40-byte keys, 100-byte values) with ``durability="normal"`` and
reports per-put latency (p50, p99, max) and the aggregate puts per second:

* ``inproc``: the baseline, ``EKV.put`` in the process that owns the store (today's only model);
* ``uds P``: design (a). One node process owns the store; ``P`` other processes send each put
  over a Unix socket (length-prefixed frames, one blocking server thread per connection calling
  ``EKV.put``) and wait for the reply: one writer, one clock, one group commit;
* ``direct P``: design (b). ``P`` processes write one SQLite file in WAL mode themselves, each put
  one ``BEGIN IMMEDIATE; INSERT ... ON CONFLICT; COMMIT`` on its own connection, contending for
  SQLite's write lock (busy timeout 5 s: SQLite's busy handler sleeps between retries). This is
  the floor of design (b): ekv's real write would add its row checksum, change log and version
  bookkeeping on top;
* ``locked P``: as ``direct P``, with each transaction under an exclusive ``fcntl`` lock on a file
  beside the database: the kernel queues the waiting processes and wakes the next one as soon as
  the lock is released, where SQLite's busy handler sleeps and retries.

Figures vary with the machine's load: compare the rows of one run with each other, not across
runs.
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing as mp
import os
import socket
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import apsw

_VALUE = b"v" * 100
_HEADER = struct.Struct(">HI")


def _key(worker: int, i: int) -> str:
    return f"w{worker:02d}/{i:034d}"


def _summary(name: str, latencies: list[float], seconds: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "run": name,
        "puts_per_s": len(ordered) / seconds if seconds else 0.0,
        "p50_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[int(0.99 * (len(ordered) - 1))] * 1e6,
        "max_us": ordered[-1] * 1e6,
    }


def _timed_loop(put: Any, worker: int, seconds: float) -> tuple[list[float], float]:
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    i = 0
    while True:
        t0 = time.perf_counter()
        if t0 >= deadline:
            break
        put(_key(worker, i), _VALUE)
        latencies.append(time.perf_counter() - t0)
        i += 1
    return latencies, time.perf_counter() - start


def run_inproc(root: Path, seconds: float) -> dict[str, Any]:
    import ekv

    with ekv.EKV("bench", root / "inproc", log=False) as kv:
        latencies, elapsed = _timed_loop(kv.put, 0, seconds)
    return _summary("inproc", latencies, elapsed)


# -- design (a): writes through the node process over a Unix socket ------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _serve(kv: Any, conn: socket.socket) -> None:
    with conn:
        try:
            while True:
                klen, vlen = _HEADER.unpack(_recv_exact(conn, _HEADER.size))
                body = _recv_exact(conn, klen + vlen)
                kv.put(body[:klen].decode(), body[klen:])
                conn.sendall(b"\x00")
        except ConnectionError:
            return


def _uds_client(path: str, worker: int, seconds: float, start: Any, out: Any) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)

    def put(key: str, value: bytes) -> None:
        k = key.encode()
        sock.sendall(_HEADER.pack(len(k), len(value)) + k + value)
        _recv_exact(sock, 1)

    start.wait()
    out.put(_timed_loop(put, worker, seconds))
    sock.close()


def run_uds(root: Path, procs: int, seconds: float) -> dict[str, Any]:
    import ekv

    path = str(root / f"uds-{procs}.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(procs)
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    with ekv.EKV("bench", root / f"uds-{procs}", log=False) as kv:
        clients = [ctx.Process(target=_uds_client, args=(path, w, seconds, start, out)) for w in range(procs)]
        for p in clients:
            p.start()
        for _ in range(procs):
            conn, _ = listener.accept()
            threading.Thread(target=_serve, args=(kv, conn), daemon=True).start()
        start.set()
        results = [out.get() for _ in range(procs)]
        for p in clients:
            p.join()
    listener.close()
    return _summary(f"uds {procs}", [x for lat, _ in results for x in lat], max(e for _, e in results))


# -- design (b): every process writes SQLite itself ------------------------------------------------

_DDL = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB, ts INTEGER) WITHOUT ROWID"
_PUT = "INSERT INTO kv VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value, ts = excluded.ts"


def _connect(path: str) -> apsw.Connection:
    conn = apsw.Connection(path)
    conn.set_busy_timeout(5000)
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    return conn


def _direct_writer(path: str, worker: int, seconds: float, start: Any, out: Any, flock: bool) -> None:
    cur = _connect(path).cursor()
    lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)

    def put(key: str, value: bytes) -> None:
        if flock:  # a kernel lock queues the writers and wakes the next at once
            fcntl.lockf(lock_fd, fcntl.LOCK_EX)
        try:
            cur.execute("BEGIN IMMEDIATE")
            cur.execute(_PUT, (key, value, time.time_ns()))
            cur.execute("COMMIT")
        finally:
            if flock:
                fcntl.lockf(lock_fd, fcntl.LOCK_UN)

    start.wait()
    out.put(_timed_loop(put, worker, seconds))


def run_direct(root: Path, procs: int, seconds: float, flock: bool) -> dict[str, Any]:
    name = f"{'locked' if flock else 'direct'} {procs}"
    path = str(root / f"{name.replace(' ', '-')}.sqlite3")
    _connect(path).cursor().execute(_DDL)
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    writers = [ctx.Process(target=_direct_writer, args=(path, w, seconds, start, out, flock)) for w in range(procs)]
    for p in writers:
        p.start()
    start.set()
    results = [out.get() for _ in range(procs)]
    for p in writers:
        p.join()
    return _summary(name, [x for lat, _ in results for x in lat], max(e for _, e in results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per run (default 3)")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 4], help="process counts (default 1 4)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ekv-procmodel-") as tmp:
        root = Path(tmp)
        rows.append(run_inproc(root, args.seconds))
        for procs in args.procs:
            rows.append(run_uds(root, procs, args.seconds))
            rows.append(run_direct(root, procs, args.seconds, False))
            rows.append(run_direct(root, procs, args.seconds, True))
    base = rows[0]["p50_us"]
    print(f"{'run':<10} {'puts/s':>9} {'p50 us':>8} {'p99 us':>9} {'max us':>10} {'p50/inproc':>11}")
    for row in rows:
        print(
            f"{row['run']:<10} {row['puts_per_s']:>9.0f} {row['p50_us']:>8.1f} {row['p99_us']:>9.1f} "
            f"{row['max_us']:>10.0f} {row['p50_us'] / base:>11.2f}"
        )
    print(f"(pid {os.getpid()}, {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
