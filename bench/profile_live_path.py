"""Where the time of a replicated put goes: per-hop timestamps along the live path.

    PYTHONPATH=src python3 bench/profile_live_path.py [PUTS]              # standard asyncio loop
    EKV_EVENT_LOOP=uvloop PYTHONPATH=src python3 bench/profile_live_path.py
    SPY=4 PYTHONPATH=src python3 bench/profile_live_path.py               # also py-spy both processes

Node A (this process) puts PUTS keys, one every millisecond; node B (a child process) has a
subscriber on them. Both processes wrap a few functions of the live path (a profiling tool's
monkeypatches: never in the library) to record ``time.monotonic_ns()``, one clock for every
process of the machine, at each hop:

A.put (the caller) -> A.on_local_writes (after the commit; wakes the network thread) ->
A.drain (Driver._drain_outbox on A's network thread: encode, socket write) -> B.feed (B's network
thread has read the frame: FrameDecoder.feed) -> B.on_live (Replicator._on_live: the apply, its
commit) with B.publish inside it (Shard._publish: the events to the subscriber queue) -> B.event
(the consumer thread has the batch).

Each hop of each put is matched to the first event of the next hop at or after it (a drain may
carry several puts), and the table gives p50/p90/p99 per hop and for the whole path. The wrappers
cost a few µs each. ``SPY=SECONDS`` also runs ``py-spy record`` (raw stacks) on both processes
for that long, into ``spy_A.txt`` / ``spy_B.txt`` in the current directory.
"""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ekv
import ekv.testing
from ekv._cluster import driver, replicator, wire
from ekv._cluster.messages import Live
from ekv._storage import shard as shardmod

now = time.monotonic_ns
H: dict[str, list[int]] = {}
FAST = {"heartbeat_interval": 0.5, "heartbeat_timeout": 5.0, "anti_entropy_interval": 2.0, "reconnect_max": 0.5}
CHAIN = ["A.on_local_writes", "A.drain", "B.feed", "B.on_live", "B.publish"]


def wrap(cls: Any, meth: str, name: str, keep: Any = None) -> None:
    original = getattr(cls, meth)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        t = now()
        result = original(self, *args, **kwargs)
        if keep is None or keep(result):
            H.setdefault(name + ".in", []).append(t)
            H.setdefault(name + ".out", []).append(now())
        return result

    setattr(cls, meth, wrapper)


def child(data_dir: str, peer: str, count: int) -> None:
    wrap(wire.FrameDecoder, "feed", "B.feed", keep=lambda msgs: any(isinstance(m, Live) for m in msgs))
    wrap(replicator.Replicator, "_on_live", "B.on_live")
    wrap(shardmod.Shard, "_publish", "B.publish")
    kv = ekv.EKV("bench", data_dir, listen="127.0.0.1:0", log=False, codec="pickle", **FAST)
    sub = kv.subscribe("h/", max_queue=1_000_000)
    kv.connect(peer)
    got: list[int] = []
    for batch in sub:
        t = now()
        got += [t] * len(batch)
        if len(got) >= count:
            break
    H["B.event"] = got
    print(json.dumps(H), flush=True)
    kv.close()


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    return " ".join(f"{values[min(len(values) - 1, int(len(values) * q))]:7.1f}" for q in (0.5, 0.9, 0.99))


def main(count: int) -> None:
    wrap(driver.Driver, "on_local_writes", "A.on_local_writes")
    wrap(driver.Driver, "_drain_outbox", "A.drain")
    root = Path(tempfile.mkdtemp(prefix="ekv-profile-"))
    warm = 50
    a = ekv.EKV("bench", root / "a", listen="127.0.0.1:0", log=False, codec="pickle", **FAST)
    cmd = [sys.executable, __file__, "--child", str(root / "b"), str(a.listen_address), str(count + warm)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    ekv.testing.wait_until(lambda: any(m.get("connected") for m in a.info()["members"].values()), 60)
    time.sleep(1)  # (a profiling tool: let the first sync finish)
    spies = []
    if os.environ.get("SPY"):
        for pid, tag in ((os.getpid(), "A"), (proc.pid, "B")):
            spy = ["py-spy", "record", "-p", str(pid), "-r", "2000", "-t", "-f", "raw", "-o", f"spy_{tag}.txt"]
            spies.append(subprocess.Popen([*spy, "-d", os.environ["SPY"]], stdout=subprocess.DEVNULL))
        time.sleep(1)
    for values in H.values():
        values.clear()
    sent = []
    for i in range(count + warm):
        sent.append(now())
        a.put(f"h/{i:06d}", {"id": i, "name": f"user_{i:05d}", "plan": "pro"})
        time.sleep(0.001)
    assert proc.stdout is not None
    H.update(json.JSONDecoder().raw_decode(proc.stdout.readline())[0])
    proc.wait()
    for spy in spies:
        spy.wait()
    a.close()
    rows = []
    for i in range(warm, count + warm):
        t = sent[i]
        row = [("A.put", t)]
        for name in CHAIN:
            ins, outs = H[name + ".in"], H[name + ".out"]
            j = bisect.bisect_left(ins, t)
            if j >= len(ins):
                break
            row += [(name + ".in", ins[j]), (name + ".out", outs[j])]
            t = ins[j]
        else:
            row.append(("B.event", H["B.event"][i]))
            rows.append(row)
    names = [name for name, _ in rows[0]]
    print(f"{len(rows)} puts; event loop {os.environ.get('EKV_EVENT_LOOP') or 'asyncio'}; µs: p50 p90 p99")
    for k in range(len(names) - 1):
        print(f"{names[k] + ' -> ' + names[k + 1]:50s}", percentiles([(r[k + 1][1] - r[k][1]) / 1e3 for r in rows]))
    print(f"{'put on A -> event on B':50s}", percentiles([(r[-1][1] - r[0][1]) / 1e3 for r in rows]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
