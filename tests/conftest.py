"""Shared fixtures: a fresh data directory per test, stores that are always closed, a fake
clock. And how the suite runs in parallel (pytest-xdist, ``-n auto`` in pyproject's addopts).

Tests share nothing that would make them collide across workers: each has its own tmp_path,
listens on port 0 of 127.0.0.1, names its network namespaces after its process id and mounts
its tmpfs under its tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import ekv
from ekv.testing import FakeClock

# The suite must pass on a loaded machine (CI may run beside other work): Hypothesis's per-example
# deadline and its "input generation is slow" check measure the machine, not ekv. Speed is
# measured by the benchmarks in bench/.
settings.register_profile("ekv", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ekv")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """One worker per CPU, plus one for each of the two 2-minute chaos runs: they mostly wait
    (for their fault schedule, for nodes to converge), so without their own workers CPUs would
    idle for those two minutes."""
    return len(os.sched_getaffinity(0)) + 2


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        help="also run the soak tier: the tests marked soak (more seeds, examples and minutes of the "
        "randomised tests; docs/reliability.md)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``--soak``, leave out the tests marked ``soak``: more repetitions of code paths
    the default run already covers, which would push CI past its time budget.

    Then the longest tests first (stable otherwise), so that in a parallel run (``--dist
    loadgroup``: one test at a time, in this order) they start at once on separate workers
    instead of one ending the run late."""
    if not config.getoption("soak"):
        soak = [item for item in items if item.get_closest_marker("soak") is not None]
        if soak:
            config.hook.pytest_deselected(items=soak)
            items[:] = [item for item in items if item.get_closest_marker("soak") is None]
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


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
