"""A one-minute tour of ekv on a single node: put/get/delete, TTL, prefix scans,
subscriptions and durability across a restart. Run: python examples/quickstart.py"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import ekv


def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="ekv-quickstart-")) / "my_kv"
    print(f"ekv {ekv.__version__}: data in {data_dir}\n")

    with ekv.EKV("my_kv", data_dir=data_dir) as kv:
        version = kv.put("user/1", {"name": "Alice", "role": "admin"})
        print(f"put user/1                      -> version {version}")
        print(f"get user/1                      -> {kv.get('user/1')}")
        kv.put("user/2", {"name": "Bob"})
        print(f"scan 'user/'                    -> {kv.scan('user/')}")
        print(f"keys ''                         -> {kv.keys('')}")

        sub = kv.subscribe("room/")
        kv.put("room/1", {"title": "Python"})
        kv.delete("room/1")
        for _ in range(2):
            for event in sub.get(timeout=5):
                print(f"event                           -> {event.type} {event.key} {event.value}")
        sub.close()

        kv.put("session/abc", "token", ttl=0.2)
        print(f"get session/abc (ttl 0.2 s)     -> {kv.get('session/abc')!r}")
        time.sleep(0.3)
        print(f"get session/abc after 0.3 s     -> {kv.get('session/abc')!r}")
        kv.delete("user/2")

    with ekv.EKV("my_kv", data_dir=data_dir) as kv:
        print(f"\nafter a restart, scan 'user/'   -> {kv.scan('user/')}")
        info = kv.info()
        print(
            f"node {info['node_id']}: {info['keys']} keys, {info['tombstones']} tombstones, "
            f"{info['options']['shards']} shards"
        )


if __name__ == "__main__":
    main()
