"""The package surface and the code-quality gates (ruff, mypy strict) run as tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ekv

ROOT = Path(__file__).resolve().parent.parent


def test_all_lists_the_public_names() -> None:
    public = {name for name in dir(ekv) if not name.startswith("_")} - {"testing"}
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


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run([*_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
