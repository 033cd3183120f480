"""ekv.contrib.django.EKVCache (SPEC 14): Django's own cache-backend tests run against it, the
documented settings work, aliases share one store per LOCATION, fork, and two processes on two
data directories clustered over loopback share a cache.

Django's tests are not in its wheel: the sdist of the pinned release (the test extra pins Django)
is fetched once with pip into the pytest cache and its tests/cache/ package extracted."""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import subprocess
import sys
import tarfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ekv
from ekv.testing import wait_until

django = pytest.importorskip("django", reason="Django is not installed (pip install -e '.[test]')")

from django.core.cache import CacheHandler  # noqa: E402

from ekv.contrib.django import EKVCache, PickleEncodeError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "django.md"
BACKEND = "ekv.contrib.django.EKVCache"
PIP_OPTIONS = ["--no-binary", ":all:", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "-q"]
"""The sdist only; its metadata is prepared with the installed setuptools (no build environment)."""


def _settings(location: Path, **options: Any) -> dict[str, Any]:
    return {"BACKEND": BACKEND, "LOCATION": location, "OPTIONS": {"shards": 2, "log": False, **options}}


@pytest.fixture
def caches(tmp_path: Path) -> Iterator[CacheHandler]:
    """Two aliases on one LOCATION (closed after the test: KEEP_OPEN False)."""
    handler = CacheHandler(
        {
            "default": _settings(tmp_path / "cache", KEEP_OPEN=False),
            "other": {**_settings(tmp_path / "cache", KEEP_OPEN=False), "KEY_PREFIX": "other"},
        }
    )
    yield handler
    handler.close_all()


# -- Django's own test suite -------------------------------------------------------------------


def _django_tests(cache_dir: Path) -> Path:
    """The ``tests`` directory of Django's sdist for the installed release (with ``cache/``)."""
    version = django.__version__
    tests = cache_dir / f"django-{version}" / "tests"
    with open(cache_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download when several test processes need it
        if (tests / "cache" / "tests.py").exists():
            return tests
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", *PIP_OPTIONS, "-d", str(cache_dir), f"django=={version}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        sdists = [p for p in cache_dir.glob("*.tar.gz") if p.name.lower() == f"django-{version}.tar.gz"]
        if done.returncode != 0 or not sdists:
            pytest.skip(f"cannot download Django {version}'s sdist (offline?): {done.stderr.strip()[-500:]}")
        with tarfile.open(sdists[0]) as tar:
            top = tar.getmembers()[0].name.split("/", 1)[0]
            members = [m for m in tar.getmembers() if m.name.startswith(f"{top}/tests/cache/")]
            tar.extractall(cache_dir / "unpacked", members=members, filter="data")
        (cache_dir / "unpacked" / top).rename(cache_dir / f"django-{version}")
        return tests


@pytest.fixture(scope="session")
def django_tests(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(pytestconfig, "cache", None)
    cache_dir = cache.mkdir("django-sdist") if cache is not None else tmp_path_factory.mktemp("django-sdist")
    return _django_tests(Path(cache_dir))


def test_djangos_cache_backend_tests_pass(django_tests: Path, tmp_path: Path) -> None:
    """Django's BaseCacheTests (its tests/cache/tests.py) against EKVCache, in their own process;
    every excluded test is skipped with its reason and named in docs/django.md."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_django_suite.py"), str(django_tests), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    report = done.stdout[-6000:]
    assert not summary["failures"] and not summary["errors"], report
    assert summary["run"] >= 50, report  # the suite was found
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from _django_suite import EXCLUDED
    finally:
        sys.path.remove(str(ROOT / "tests"))
    assert summary["skipped"] == EXCLUDED, report
    excluded_section = DOC.read_text().split("## Django's tests", 1)[1]
    for name in EXCLUDED:
        assert f"`{name}`" in excluded_section, f"docs/django.md does not name the excluded {name}"


# -- the documented settings -------------------------------------------------------------------


def test_the_documented_settings_work(tmp_path: Path) -> None:
    snippet = DOC.read_text().split("```python", 1)[1].split("```", 1)[0]
    settings_py = tmp_path / "mysite" / "mysite" / "settings.py"
    settings_py.parent.mkdir(parents=True)
    settings_py.write_text(snippet)
    namespace: dict[str, Any] = {"__file__": str(settings_py)}
    exec(compile(snippet, str(settings_py), "exec"), namespace)
    handler = CacheHandler(namespace["CACHES"])
    cache, sessions = handler["default"], handler["sessions"]
    cache.set("greeting", "hello")
    assert cache.get("greeting") == "hello"
    assert sessions.get("greeting") is None  # another KEY_PREFIX
    store = cache.store
    assert sessions.store is store  # one store for the LOCATION
    assert store.data_dir == tmp_path / "mysite" / "var" / "cache"
    handler.close_all()  # as Django after each request
    assert not store.closed  # KEEP_OPEN (the default): open until the process exits
    store.close()  # (this test closes it itself)


# -- sharing a LOCATION ------------------------------------------------------------------------


def test_aliases_share_one_store_and_the_last_close_closes_it(caches: CacheHandler) -> None:
    default, other = caches["default"], caches["other"]
    default.set("k", 1)
    other.set("k", 2)  # KEY_PREFIX keeps them apart
    store = default.store
    assert other.store is store
    assert (default.get("k"), other.get("k")) == (1, 2)
    default.close()
    assert not store.closed  # "other" still holds it
    other.close()
    assert store.closed
    assert default.get("k") == 1  # the next operation opens it again
    assert default.store is not store


def test_keep_open_keeps_the_store_open_after_the_last_close(tmp_path: Path) -> None:
    cache = EKVCache(tmp_path / "cache", _settings(tmp_path / "cache"))
    cache.set("k", 1)
    store = cache.store
    cache.close()  # Django does this after every request
    try:
        assert not store.closed
        assert cache.get("k") == 1 and cache.store is store
    finally:
        store.close()


def test_aliases_of_one_location_must_agree_on_options(tmp_path: Path) -> None:
    first = EKVCache(tmp_path / "c", _settings(tmp_path / "c", KEEP_OPEN=False))
    second = EKVCache(tmp_path / "c", _settings(tmp_path / "c", KEEP_OPEN=False, shards=4))
    first.set("k", 1)
    try:
        with pytest.raises(ekv.ConfigError, match="differing: shards"):
            second.get("k")
    finally:
        first.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"MAX_ENTRIES": 100}, "does not cull"),
        ({"CULL_FREQUENCY": 2}, "does not cull"),
        ({"KEEPOPEN": True}, "unknown EKVCache OPTIONS KEEPOPEN"),
    ],
)
def test_bad_options_are_refused_before_anything_is_opened(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ekv.ConfigError, match=message):
        EKVCache(tmp_path / "c", {"OPTIONS": options})
    assert not (tmp_path / "c").exists()


def test_unpicklable_values_raise_a_pickling_error_that_is_an_ekv_error(caches: CacheHandler) -> None:
    with pytest.raises(PickleEncodeError) as raised:
        caches["default"].set("k", threading.Lock())
    assert isinstance(raised.value, ekv.EncodeError)


def test_incr_and_add_are_atomic_within_one_process(caches: CacheHandler) -> None:
    """Threads of one process (each with its own cache object, as Django gives each thread)
    incrementing one counter lose no increment, and exactly one add of a key wins."""
    caches["default"].set("n", 0)
    wins: list[bool] = []

    def work() -> None:
        handler = CacheHandler({"default": caches.settings["default"]})
        cache = handler["default"]
        for _ in range(50):
            cache.incr("n")
        wins.append(cache.add("once", threading.get_ident()))
        handler.close_all()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert caches["default"].get("n") == 200
    assert sorted(wins) == [False, False, False, True]


def test_touch_and_zero_timeouts(caches: CacheHandler) -> None:
    cache = caches["default"]
    cache.set("k", "v", timeout=None)
    assert cache.touch("k", timeout=0) is True and cache.get("k") is None  # 0 = expire now
    cache.set("k", "v", timeout=0)
    assert cache.has_key("k") is False
    assert cache.add("k", "v", timeout=0) is True and cache.get("k") is None
    assert cache.touch("absent") is False


# -- processes ---------------------------------------------------------------------------------

FORK_CHILD = textwrap.dedent(
    """
    import os, sys
    from ekv.contrib.django import EKVCache
    location = sys.argv[1]
    params = {"OPTIONS": {"shards": 2, "log": False, "KEEP_OPEN": False}}
    cache = EKVCache(location, params)
    cache.set("k", "from the parent")
    parent_store = cache.store
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        os.read(go_read, 1)  # the parent has released the directory
        value = cache.get("k")  # opens the store anew in the child
        ok = value == "from the parent" and cache.store is not parent_store
        cache.set("k", "from the child")
        cache.close()
        os._exit(0 if ok else 3)
    os.close(go_read)
    cache.close()  # KEEP_OPEN False: closes the parent's store, releasing the directory
    os.write(go_write, b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert cache.get("k") == "from the child"
    cache.close()
    print("ok")
    """
)


def test_a_forked_child_opens_the_store_again(tmp_path: Path) -> None:
    """A cache object the child inherited does not use the parent's store (its connections and
    threads are the parent's): the child opens the directory itself."""
    done = subprocess.run(
        [sys.executable, "-c", FORK_CHILD, str(tmp_path / "cache")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


def test_two_processes_on_two_data_directories_share_a_cache_over_loopback(tmp_path: Path) -> None:
    options = {"listen": "127.0.0.1:0", "heartbeat_interval": 0.1, "heartbeat_timeout": 1.0}
    options |= {"anti_entropy_interval": 0.5, "name": "site"}
    cache = EKVCache(tmp_path / "a", _settings(tmp_path / "a", KEEP_OPEN=False, **options))
    peer = None
    try:
        address = cache.store.listen_address
        assert address is not None
        peer = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "_django_peer.py"), str(tmp_path / "b"), address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        cache.set("greeting", "hello from a")
        wait_until(lambda: cache.get("reply") is not None, timeout=60, message="no reply from the other process")
        assert cache.get("reply") == "hello from a back"
    finally:
        cache.close()
        if peer is not None:
            with contextlib.suppress(OSError):
                peer.stdin.close()  # type: ignore[union-attr]
            try:
                peer.wait(30)
            finally:
                if peer.poll() is None:
                    peer.kill()
                    peer.wait()
                    peer.stdout.close()  # type: ignore[union-attr]
                    peer.stderr.close()  # type: ignore[union-attr]
    assert peer.returncode == 0, peer.stdout.read() + peer.stderr.read()  # type: ignore[union-attr]
    peer.stdout.close()  # type: ignore[union-attr]
    peer.stderr.close()  # type: ignore[union-attr]


def test_the_core_imports_without_django() -> None:
    code = "import sys; sys.modules['django'] = None; import ekv, ekv.contrib; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
    assert re.search(r"^django = \[", (ROOT / "pyproject.toml").read_text(), re.M)


DJANGO_INCR_CHILD = """
import json, sys
from pathlib import Path
import django
from django.conf import settings
settings.configure()
from ekv.contrib.django import EKVCache
location, options = sys.argv[1], json.loads(sys.argv[2])
cache = EKVCache(location, {"OPTIONS": options})
for _ in range(50):
    cache.incr("counter/n")
print(json.dumps(cache.add("counter/once", sys.argv[3])), flush=True)
cache.close()
"""


def test_incr_and_add_under_consistent_prefixes_are_atomic_across_processes(tmp_path: Path) -> None:
    """With the keys' prefix (Django's key, ``:1:`` by default, included) declared in
    consistent_prefixes, incr is a linearizable update and add an if_absent put: processes
    sharing the directory lose no increment, and exactly one add wins."""
    options = {"shards": 2, "log": False, "KEEP_OPEN": False, "consistent_prefixes": [":1:counter/"]}
    cache = EKVCache(tmp_path / "cache", {"OPTIONS": options})
    try:
        cache.set("counter/n", 0)
        cache.set("plain", 1)
        children = [
            subprocess.Popen(
                [sys.executable, "-c", DJANGO_INCR_CHILD, str(tmp_path / "cache"), json.dumps(options), str(i)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(3)
        ]
        outputs = [child.communicate(timeout=120) for child in children]
        assert all(child.returncode == 0 for child in children), outputs
        assert sorted(json.loads(out) for out, _ in outputs) == [False, False, True]
        assert cache.get("counter/n") == 150
        with pytest.raises(ValueError, match="not found"):
            cache.incr("counter/absent")
        assert cache.touch("counter/n", timeout=30) and cache.get("counter/n") == 150
        assert cache.delete("counter/once") and cache.get("counter/once") is None
        cache.clear()  # leaves the consistent keys alone
        assert cache.get("plain") is None and cache.get("counter/n") == 150
    finally:
        cache.close()
