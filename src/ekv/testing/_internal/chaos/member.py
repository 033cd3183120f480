"""One process of a node group (``RunOptions.processes``): a node process of :mod:`ekv.testing.node`
whose clients live inside it.

    python -m ekv.testing._internal.chaos.member --name chaos --data-dir DIR --listen A [--peer B]...
        [--option KEY=JSON]...

It opens the store like every process of its group (same directory, same options: one of them
is elected node process, the others attach) and answers :mod:`ekv.testing.node`'s commands, plus
one of its own that starts the clients:

    {"op": "workload", "node": "n0", "proc": "n0p1", "life": 2, "out": PATH, "threads": 3,
     "keys": 30, "seed": 7, "rate": 20, "until_ns": N,
     "consistent": {"threads": 2, "rate": 10, "lock_ttl": S}}   # optional: consistent runs


The clients are threads calling the store directly (an attached process serves its own reads
and writes: that is the process model being tested), recording the history format of
:mod:`.workload`: ``invoke`` then ``ok``, ``fail`` (a get that raised) or ``info`` (a write that
raised: it may have been applied). When the nemesis SIGKILLs this process, the operations in
flight never complete: the checker counts them as ``info``. Each record names the group as its
``node`` (what the durability, causal and session checks are about) and this process slot as
``proc`` (the node-clock check is per process: each process has its own hybrid clock). Process
ids are ``proc.life.thread.generation``, unique across restarts of the slot. With ``consistent``
(consistent runs), threads of :func:`.consistent.client` run linearizable operations as well.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from typing import Any

import ekv
from ekv.testing import node as node_program
from ekv.testing._internal.chaos import consistent
from ekv.testing._internal.chaos.workload import _Recorder

__all__ = ["main"]


def _call(kv: ekv.EKV, f: str, key: str, value: str | None) -> dict[str, Any]:
    if f == "put":
        return {"type": "ok", "version": list(kv.put(key, value))}
    if f == "delete":
        return {"type": "ok", "version": list(kv.delete(key))}
    found = kv.lookup(key)
    if found is None:
        return {"type": "ok", "value": None}
    return {"type": "ok", "value": found[0], "version": list(found[1])}


def _client(kv: ekv.EKV, spec: dict[str, Any], index: int, recorder: _Recorder) -> None:
    rng = random.Random(f"{spec['seed']}/{spec['proc']}/{spec['life']}/{index}")
    generation = 0
    process = f"{spec['proc']}.{spec['life']}.{index}.{generation}"
    written = 0
    pause = 1.0 / spec["rate"] if spec["rate"] > 0 else 0.0
    keys = [f"k{i:03}" for i in range(spec["keys"])]
    base = {"node": spec["node"], "proc": spec["proc"]}
    while time.monotonic_ns() < spec["until_ns"]:
        roll = rng.random()
        f = "get" if roll < 0.5 else "put" if roll < 0.9 else "delete"
        record: dict[str, Any] = {"process": process, **base, "f": f, "key": rng.choice(keys)}
        if f == "put":
            written += 1
            record["value"] = f"{process}-{written}"
        recorder.write({**record, "type": "invoke", "time": time.monotonic_ns()})
        try:
            outcome = _call(kv, f, record["key"], record.get("value"))
        except ekv.Error as exc:
            outcome = {"type": "info" if f != "get" else "fail", "error": f"{type(exc).__name__}: {exc}"[:200]}
            if f != "get":
                generation += 1
                process = f"{spec['proc']}.{spec['life']}.{index}.{generation}"
        recorder.write({**record, **outcome, "time": time.monotonic_ns()})
        if pause:
            time.sleep(rng.uniform(0, 2 * pause))  # pacing of the workload, not a wait for a condition


def _answer(kv: ekv.EKV, command: dict[str, Any]) -> Any:
    if command["op"] != "workload":
        return node_program.handle(kv, command)
    spec = {k: v for k, v in command.items() if k != "op"}
    recorder = _Recorder(open(spec["out"], "a"))  # noqa: SIM115 - open until the process ends
    for index in range(spec["threads"]):
        threading.Thread(target=_client, args=(kv, spec, index, recorder), daemon=True).start()
    for index in range((spec.get("consistent") or {}).get("threads", 0)):
        threading.Thread(target=consistent.client, args=(kv, spec, index, recorder), daemon=True).start()
    return {}


def main(argv: list[str] | None = None) -> int:
    args = node_program.parser(__doc__).parse_args(argv)
    node_program.serve(node_program.open_store(args), _answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
