"""A child process holding an ekv store open and obeying one-line commands on stdin (the tests of
many processes on one data directory drive it). argv: data_dir, JSON options.

Commands: ``put KEY VALUE [TTL]``, ``del KEY``, ``get KEY``, ``sub PREFIX`` (events are then
printed as ``event TYPE KEY VALUE``), ``role``, ``bus`` (this open's bus figures, JSON), ``close``.
Each answers one line."""

from __future__ import annotations

import json
import sys
import threading

import ekv


def main() -> None:
    options = json.loads(sys.argv[2])
    kv = ekv.EKV(options.pop("name", "p"), sys.argv[1], **options)
    lock = threading.Lock()

    def say(*words: object) -> None:
        with lock:
            print(*words, flush=True)

    say("ready", kv.info()["processes"]["role"])
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "put":
            version = kv.put(args[0], args[1], ttl=float(args[2]) if len(args) > 2 else None)
            say("ok", version.timestamp_ns, version.origin)
        elif cmd == "del":
            kv.delete(args[0])
            say("ok")
        elif cmd == "get":
            say("value", kv.get(args[0]))
        elif cmd == "sub":
            kv.subscribe(args[0], callback=lambda events: [say("event", e.type, e.key, e.value) for e in events])
            say("ok")
        elif cmd == "role":
            say("role", kv.info()["processes"]["role"])
        elif cmd == "bus":
            say("bus", json.dumps(kv.info()["processes"]["bus"], separators=(",", ":")))
        elif cmd == "close":
            kv.close()
            say("closed")
            return


if __name__ == "__main__":
    main()
