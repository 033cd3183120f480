"""The lock that serialises opens (``ekv._storage.procs.exclusive``): one holder at a time, and,
with ``remove=True``, no file left behind (the runtime directory used to keep one lock file per
data directory ever opened: 71,000 of them on a machine that runs this suite)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import ekv
from ekv._node.bus import runtime_path
from ekv._storage.procs import exclusive

THREADS = 6
ROUNDS = 100


def test_a_removed_lock_file_never_lets_two_holders_in(tmp_path: Path) -> None:
    # flock is per open file description, so threads with their own descriptors exclude each
    # other as processes do. A waiter that locked the file its holder removed must start over on
    # the new file; without that check two threads hold "the" lock through two files at once.
    path = tmp_path / "lock"
    inside: list[int] = []
    overlaps: list[int] = []
    errors: list[BaseException] = []

    def run(me: int) -> None:
        try:
            for _ in range(ROUNDS):
                with exclusive(path, "testing", remove=True):
                    inside.append(me)
                    if len(inside) > 1:
                        overlaps.append(len(inside))
                    time.sleep(0.0002)  # hold it a little, so waiters pile up on the old file
                    inside.remove(me)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert overlaps == []
    assert not path.exists()


def test_opening_and_closing_a_store_leaves_no_lock_file_in_the_runtime_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ekv.EKV("t", data, shards=1, log=False) as kv:
        kv.put("k", 1)
    assert not runtime_path(data, ".open").exists()
