"""Shared fixtures: a fresh data directory per test, stores that are always closed, a fake
clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ekv
from ekv.testing import FakeClock


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_kv(data_dir: Path) -> Iterator[Callable[..., ekv.EKV]]:
    """Open stores on ``data_dir`` (or another dir) and close every one after the test."""
    opened: list[ekv.EKV] = []

    def _open(name: str = "test", path: Path | None = None, **options: Any) -> ekv.EKV:
        options.setdefault("log", False)
        options.setdefault("shards", 4)
        kv = ekv.EKV(name, path or data_dir, **options)
        opened.append(kv)
        return kv

    yield _open
    for kv in opened:
        kv.close()


@pytest.fixture
def kv(open_kv: Callable[..., ekv.EKV]) -> ekv.EKV:
    return open_kv()


@pytest.fixture
def fkv(open_kv: Callable[..., ekv.EKV], clock: FakeClock) -> ekv.EKV:
    """A store on a fake clock."""
    return open_kv(clock=clock)
