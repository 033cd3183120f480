"""A second process with a Django cache on ekv, clustered with the test's (tests/test_django_cache.py).

    python tests/_django_peer.py DATA_DIR PEER_ADDRESS

Opens its cache through Django's CacheHandler (LOCATION DATA_DIR, listening on a free port of
127.0.0.1, dialling PEER_ADDRESS), waits for the key "greeting" to arrive by replication, sets
"reply" to the greeting with " back" appended, prints "replied", and keeps the node up (so the
reply can replicate) until its standard input closes.
"""

from __future__ import annotations

import sys
import time

from django.core.cache import CacheHandler


def main(data_dir: str, peer: str) -> int:
    options = {"name": "site", "shards": 2, "log": False, "listen": "127.0.0.1:0", "peers": [peer]}
    options |= {"heartbeat_interval": 0.1, "heartbeat_timeout": 1.0, "anti_entropy_interval": 0.5}
    caches = CacheHandler(
        {"default": {"BACKEND": "ekv.contrib.django.EKVCache", "LOCATION": data_dir, "OPTIONS": options}}
    )
    cache = caches["default"]
    deadline = time.monotonic() + 60
    while (greeting := cache.get("greeting")) is None:
        if time.monotonic() > deadline:
            print("no greeting within 60 s", flush=True)
            return 1
        time.sleep(0.05)
    cache.set("reply", greeting + " back")
    print("replied", flush=True)
    sys.stdin.read()
    caches.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
