"""Which thread should run remote applies? A measurement for docs/architecture.md ("Which thread
runs remote applies").

    PYTHONPATH=src python3 bench/bench_apply_thread.py              # 5 s per mode
    PYTHONPATH=src python3 bench/bench_apply_thread.py --seconds 2  # quicker

A node applies replicated writes through ``ReplicationStore.apply`` (``ShardedStore.apply_shard``),
which waits for the shard's group-commit writer. Today that wait happens on the asyncio loop
thread that every clustered instance of the process shares. This script puts one shard under
local write load (``--writers`` threads putting as fast as they can, ``durability="full"``: an
fsync per commit group) and, on an asyncio loop, applies remote writes to the same shard at
``--rate`` per second, in two modes:

* ``inline``: the apply runs on the loop thread (today's design);
* ``offload``: the apply runs on a one-thread executor (``loop.run_in_executor``; one thread per
  shard keeps the per-shard apply order), the loop awaits it.

It prints, per mode: the apply latency (submit until durable: what replication latency adds on
the receiving side), the loop's stall (how late a 1 ms timer fires: what every other session,
heartbeat and instance on that loop waits), and the local writers' throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ekv._config import Config
from ekv._core.clock import HybridClock, SystemClock
from ekv._model import Entry
from ekv._storage.store import ShardedStore


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def _measure(mode: str, store: ShardedStore, seconds: float, rate: float, start_oseq: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(1, thread_name_prefix="apply") if mode == "offload" else None
    stalls: list[float] = []
    done = False

    async def heartbeat() -> None:
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            stalls.append(max(0.0, time.perf_counter() - t - 0.001))

    beat = loop.create_task(heartbeat())
    latencies: list[float] = []
    oseq = start_oseq
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        oseq += 1
        entry = Entry(f"remote{oseq % 1000}", time.time_ns(), "remote-origin", oseq, None, b"r" * 100)
        t = time.perf_counter()
        if executor is not None:
            await loop.run_in_executor(executor, store.apply_shard, 0, [entry], {"remote-origin": oseq})
        else:
            store.apply_shard(0, [entry], {"remote-origin": oseq})
        latencies.append(time.perf_counter() - t)
        await asyncio.sleep(1 / rate)
    done = True
    await beat
    if executor is not None:
        executor.shutdown()
    return {"latencies": latencies, "stalls": stalls, "oseq": oseq}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per mode (default 5)")
    parser.add_argument("--rate", type=float, default=200.0, help="remote applies per second (default 200)")
    parser.add_argument("--writers", type=int, default=2, help="local writer threads (default 2)")
    parser.add_argument("--durability", choices=("normal", "full"), default="full")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both modes (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Config.create("bench", Path(tmp) / "d", shards=1, log=False, durability=args.durability)
        store = ShardedStore.open(config, HybridClock(SystemClock()), new_node_id="b" * 16)
        stop = threading.Event()
        puts = [0] * args.writers

        failed: list[BaseException] = []

        def writer(i: int) -> None:
            try:
                write_until_stopped(i)
            except BaseException as exc:  # reported by main: a dead writer would measure no load
                failed.append(exc)
                raise

        def write_until_stopped(i: int) -> None:
            n = 0
            while not stop.is_set():
                key = f"local{i}-{n % 1000}"
                store.write(key, key.encode(), b"l" * 100, None)
                n += 1
                puts[i] = n

        threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(args.writers)]
        for thread in threads:
            thread.start()
        results: dict[str, dict[str, list[float]]] = {
            m: {"lat": [], "stall": [], "tput": []} for m in ("inline", "offload")
        }
        oseq = 0
        try:
            for _ in range(args.rounds):
                for mode in ("inline", "offload"):
                    before, t0 = sum(puts), time.perf_counter()
                    out = asyncio.run(_measure(mode, store, args.seconds, args.rate, oseq))
                    oseq = out["oseq"]
                    results[mode]["lat"] += out["latencies"]
                    results[mode]["stall"] += out["stalls"]
                    results[mode]["tput"].append((sum(puts) - before) / (time.perf_counter() - t0))
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            store.close()
    if failed:
        raise SystemExit(f"a local writer thread failed, so the figures mean nothing: {failed[0]!r}")
    print(
        f"durability={args.durability} writers={args.writers} rate={args.rate}/s seconds={args.seconds}x{args.rounds}"
    )
    heads = ("apply p50", "apply p99", "stall p50", "stall p99", "stall max")
    print(f"{'mode':8} " + " ".join(f"{h:>10}" for h in heads) + f" {'local puts/s':>13}")
    for mode, r in results.items():
        print(
            f"{mode:8} {_pct(r['lat'], 0.5):8.2f}ms {_pct(r['lat'], 0.99):8.2f}ms {_pct(r['stall'], 0.5):8.2f}ms "
            f"{_pct(r['stall'], 0.99):8.2f}ms {max(r['stall'], default=0) * 1000:8.2f}ms "
            f"{statistics.mean(r['tput']):13.0f}"
        )


if __name__ == "__main__":
    main()
