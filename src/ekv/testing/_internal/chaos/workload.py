"""Clients of one node during a chaos run: a process of client threads that records every
operation as history records (see :mod:`ekv.testing._internal.checker` for the format).

    python -m ekv.testing._internal.chaos.workload --address 10.77.0.1:7000 --node n0 --out n0.jsonl \\
        --threads 3 --keys 30 --seed 7 --until-ns N [--cookie C] [--timeout 2] [--rate 40]

Each thread is a client pinned to the node, with its own connection (ekv's client protocol,
what ``ekv put --node`` uses), running put / delete / get on a small shared key space so that
writes contend. Every put writes a unique value (``"<process>-<n>"``), so a value names its
write. An operation is recorded twice: ``invoke`` before it is sent, then ``ok``, ``fail``
(definitely not applied: the connection could not even be opened) or ``info`` (unknown: the
request may have been applied, e.g. a timeout while the node was paused or a connection cut
mid-request). After an ``info`` the thread continues as a new process (a fresh id), as the
checker expects. Times are ``time.monotonic_ns()``, one clock for every process on the machine,
never skewed by the nemesis. Runs in the node's network namespace when there is one.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from typing import IO, Any

from ekv._cluster.client import Client
from ekv._errors import ClusterError

__all__ = ["main"]


class _Recorder:
    """Appends records to the output file, one line each, flushed (the file is read after the
    run; a crash of this process loses nothing recorded)."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._out.write(line)
            self._out.flush()


def _client_thread(args: argparse.Namespace, index: int, recorder: _Recorder) -> None:
    rng = random.Random(f"{args.seed}/{args.node}/{index}")
    generation = 0
    process = f"{args.node}.{index}.{generation}"
    written = 0
    client: Client | None = None
    pause = 1.0 / args.rate if args.rate > 0 else 0.0
    keys = [f"k{i:03}" for i in range(args.keys)]
    while time.monotonic_ns() < args.until_ns:
        roll = rng.random()
        f = "get" if roll < 0.5 else "put" if roll < 0.9 else "delete"
        key = rng.choice(keys)
        record: dict[str, Any] = {"process": process, "node": args.node, "f": f, "key": key}
        if f == "put":
            written += 1
            record["value"] = f"{process}-{written}"
        recorder.write({**record, "type": "invoke", "time": time.monotonic_ns()})
        outcome: dict[str, Any]
        if client is None:
            try:
                client = Client(args.address, cookie=args.cookie, instance=args.instance, timeout=args.timeout)
                client.connect()
            except (ClusterError, OSError) as exc:
                client = None
                recorder.write({**record, "type": "fail", "error": str(exc)[:200], "time": time.monotonic_ns()})
                _sleep_until(min(args.until_ns, time.monotonic_ns() + 200_000_000))
                continue
        try:
            if f == "put":
                reply = client.call("put", key=key, value=record["value"])
                outcome = {"type": "ok", "version": reply["version"]}
            elif f == "delete":
                reply = client.call("delete", key=key)
                outcome = {"type": "ok", "version": reply["version"]}
            else:
                reply = client.call("get", key=key)
                outcome = {"type": "ok", "value": None}
                if reply is not None:
                    outcome = {"type": "ok", "value": reply["value"], "version": reply["version"]}
        except (ClusterError, OSError) as exc:
            client.close()
            client = None
            outcome = {"type": "info" if f != "get" else "fail", "error": str(exc)[:200]}
            if f != "get":
                generation += 1
                process = f"{args.node}.{index}.{generation}"
        recorder.write({**record, **outcome, "time": time.monotonic_ns()})
        if pause:
            time.sleep(rng.uniform(0, 2 * pause))  # pacing of the workload, not a wait for a condition
    if client is not None:
        client.close()


def _sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True)
    parser.add_argument("--node", required=True, help="the node's name in the history")
    parser.add_argument("--out", required=True)
    parser.add_argument("--instance", default="c")
    parser.add_argument("--cookie", default="")
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--keys", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--until-ns", type=int, required=True, help="stop at this time.monotonic_ns()")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=40.0, help="operations per second per thread (about)")
    args = parser.parse_args(argv)
    with open(args.out, "a") as out:
        recorder = _Recorder(out)
        threads = [
            threading.Thread(target=_client_thread, args=(args, i, recorder), daemon=True) for i in range(args.threads)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
