"""The package surface and the code-quality gates (ruff, mypy strict) run as tests."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import ekv

ROOT = Path(__file__).resolve().parent.parent


def test_all_lists_the_public_names() -> None:
    public = {name for name in dir(ekv) if not name.startswith("_")} - {"testing", "contrib"}  # subpackages
    assert set(ekv.__all__) | {"__version__"} >= public
    for name in ekv.__all__:
        assert hasattr(ekv, name), name


def test_errors_form_one_hierarchy() -> None:
    errors = [getattr(ekv, name) for name in ekv.__all__ if isinstance(getattr(ekv, name), type)]
    for cls in errors:
        if issubclass(cls, Exception):
            assert issubclass(cls, ekv.Error), cls
    assert issubclass(ekv.InvalidArgument, ValueError)
    assert issubclass(ekv.InvalidArgumentType, TypeError)
    assert issubclass(ekv.Timeout, TimeoutError)


def test_py_typed_is_shipped() -> None:
    assert (Path(ekv.__file__).parent / "py.typed").exists()


def test_logger_has_a_null_handler() -> None:
    import logging

    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("ekv").handlers)


def _tool(name: str) -> list[str]:
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed; install the test extras: pip install -e '.[test]'")
    return [exe]


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [*_tool("ruff"), "check", "src", "tests", "bench", "examples"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    """The code is formatted as ``ruff format`` would (a drifted file went unnoticed once)."""
    paths = ["src", "tests", "bench", "examples", "scripts"]
    result = subprocess.run([*_tool("ruff"), "format", "--check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run([*_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_on_a_platform_without_fcntl_says_so() -> None:
    """Windows has no fcntl (the data directory's lock): ``import ekv`` fails with an ImportError
    that says which platforms work, not with a bare "No module named 'fcntl'" from deep inside."""
    code = "import sys; sys.modules['fcntl'] = None; import ekv"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ekv needs a POSIX system (Linux or macOS)"), done.stderr
    assert "Windows is not supported" in last and "WSL" in last


# -- the source distribution ----------------------------------------------------------------------

SDIST_DIRS = (".ci", "bench", "docs", "examples", "scripts", "tests")
"""Everything the tests read besides the package: the sdist's tests must run from it."""
NOT_SHIPPED = shutil.ignore_patterns(
    ".git", "__pycache__", "*.py[cod]", "*.egg-info", ".venv", "build", "dist", ".*_cache", ".hypothesis", "results"
)


@pytest.mark.packaging
def test_the_sdist_holds_the_docs_scripts_and_tests_and_they_run_from_it(tmp_path: Path) -> None:
    if int(metadata.version("setuptools").split(".")[0]) < 77:
        pytest.fail("setuptools>=77 is needed to build the sdist; install the test extras: pip install -e '.[test]'")
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=NOT_SHIPPED)
    build = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path / "dist")], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sdist = tmp_path / "dist" / done.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        top = f"ekv-{ekv.__version__}"
        shipped = {name.removeprefix(top + "/") for name in tar.getnames()}
        tar.extractall(tmp_path / "unpacked", filter="data")
        pkg_info = email.message_from_bytes(tar.extractfile(f"{top}/PKG-INFO").read())  # type: ignore[union-attr]
    wanted = {"README.md", "LICENSE", "pyproject.toml", "src/ekv/py.typed"} | {
        path.relative_to(project).as_posix()
        for folder in SDIST_DIRS
        for path in (project / folder).rglob("*")
        if path.is_file()
    }
    assert not wanted - shipped, f"missing from the sdist: {sorted(wanted - shipped)}"
    urls = {value.split(",", 1)[0] for value in pkg_info.get_all("Project-URL") or []}
    assert urls == {"Homepage", "Documentation", "Source", "Issues", "Changelog"}, urls
    assert "Operating System :: POSIX :: Linux" in (pkg_info.get_all("Classifier") or [])
    # its own tests run from the unpacked sdist (these read the docs, scripts/ and examples/)
    unpacked = tmp_path / "unpacked" / top
    tests = [
        "tests/test_docs.py",
        "tests/test_api_docs.py",
        "tests/test_cli.py::test_documented_grammar_matches_the_parser",
    ]
    # a plain serial run: without the outer run's addopts (-n) and PYTEST_XDIST_WORKER & co.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    plain = ["-o", "addopts=", "-p", "no:cacheprovider", "-p", "no:benchmark"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plain, *tests],
        cwd=unpacked,
        env={**env, "PYTHONPATH": str(unpacked / "src")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


# -- the wheel ------------------------------------------------------------------------------------


@pytest.mark.long
@pytest.mark.packaging
def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_quickstart(tmp_path: Path) -> None:
    """``python -m build`` makes an sdist and, from it, a wheel; the wheel installs into a fresh
    venv (no system site-packages: apsw comes from the package index, pip's cache keeps it fast)
    and the quickstart runs there on the installed package, outside the source tree."""
    if int(metadata.version("setuptools").split(".")[0]) < 77:
        pytest.fail("setuptools>=77 is needed to build; install the test extras: pip install -e '.[test]'")
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=NOT_SHIPPED)
    dist = tmp_path / "dist"
    # no build isolation: the test extra's setuptools builds (an isolated build env would
    # download it again on every run)
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(project)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    version = ekv.__version__
    wheel = dist / f"ekv-{version}-py3-none-any.whl"
    assert {path.name for path in dist.iterdir()} == {wheel.name, f"ekv-{version}.tar.gz"}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"ekv/__init__.py", "ekv/py.typed", f"ekv-{version}.dist-info/entry_points.txt"} <= names
    assert not any(name.startswith(("tests/", "docs/", "examples/")) for name in names), "the wheel holds the package"

    venv = tmp_path / "venv"
    # without pip of its own (ensurepip takes longer than the rest): this interpreter's pip
    # installs into it (``pip --python``)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # the outer run's PYTHONPATH (a checkout's src/) and pytest variables stay out of the venv
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"} and not k.startswith("PYTEST_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--disable-pip-version-check",
            str(wheel),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"  # not the source tree: `import ekv` finds only the installed one
    elsewhere.mkdir()
    shutil.copy(ROOT / "examples" / "quickstart.py", elsewhere)
    where = subprocess.run(
        [str(python), "-c", "import ekv, apsw; print(ekv.__file__); print(apsw.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).is_relative_to(venv), f"imported from outside the venv: {path}"
    done = subprocess.run(
        [str(python), "quickstart.py"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"ekv {version}" in done.stdout and "after a restart" in done.stdout
    cli = subprocess.run(
        [str(venv / "bin" / "ekv"), "--version"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60
    )
    assert cli.returncode == 0 and version in cli.stdout + cli.stderr, cli.stdout + cli.stderr
