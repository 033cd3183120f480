"""``log=False`` silences every ekv logger for the instance's whole life; ``log="info"`` keeps the
messages (issue 10). Module loggers (``ekv.storage``, ``ekv.subscriptions``, ``ekv.net``) used to
log whatever the instance's option said."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ekv
from ekv.testing import FakeClock, node_of, run_gc, wait_until

FAST = {
    "heartbeat_interval": 0.1,
    "heartbeat_timeout": 1.0,
    "anti_entropy_interval": 0.3,
    "reconnect_max": 0.3,
    "shards": 2,
}


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., ekv.EKV]]:
    opened: list[ekv.EKV] = []

    def _make(**options: Any) -> ekv.EKV:
        kv = ekv.EKV("lg", tmp_path / f"n{len(opened)}", **{**FAST, "listen": "127.0.0.1:0", **options})
        opened.append(kv)
        return kv

    yield _make
    for kv in opened:
        kv.close()


def _ekv_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.name == "ekv" or r.name.startswith("ekv.")]


def _connected(kv: ekv.EKV) -> bool:
    return any(m.get("connected") for m in kv.info()["members"].values())


def _life_of_a_pair(make: Callable[..., ekv.EKV], log: object) -> None:
    """Open a pair, write (also from a subscription that overflows), expire and collect, refuse a
    wrong cookie, lose a member, close."""
    clock = FakeClock()
    a = make(log=log, cookie="right", clock=clock)
    b = make(log=log, cookie="right", clock=clock, peers=[a.listen_address])
    wait_until(lambda: _connected(a) and _connected(b))
    a.subscribe("k/", max_queue=1)
    for i in range(5):
        a.put(f"k/{i}", i, ttl=1)
    b.put("x", 1)
    wait_until(lambda: b.get("k/4") == 4 and a.get("x") == 1)
    assert a.metrics()["ekv_subscription_overflows_total"] == 1
    clock.advance(10)
    run_gc(a)
    run_gc(b)
    wrong = make(log=log, cookie="wrong", peers=[a.listen_address])
    wait_until(lambda: bool(node_of(a).cluster and node_of(a).cluster.refused))  # type: ignore[union-attr]
    wrong.close()
    b.close()
    wait_until(lambda: not _connected(a))
    a.close()


def test_log_false_emits_no_ekv_record_at_all(make: Callable[..., ekv.EKV], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: every logger's records are captured
    _life_of_a_pair(make, False)
    assert _ekv_records(caplog) == []


def test_log_info_keeps_the_messages(make: Callable[..., ekv.EKV], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _life_of_a_pair(make, "info")
    text = "\n".join(_ekv_records(caplog))
    assert "ekv.subscriptions: ekv[lg] subscriber" in text and "overflowed" in text
    assert "refused a connection" in text
    assert "closed" in text
