"""What the tests of the two generated files share (docs/api.md from scripts/gen_api_docs.py,
AsyncEKV's forwarding methods from scripts/gen_facades.py): loading a script as a module, and
checking that its output is up to date."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_script(script: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(script.stem, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_up_to_date(script: Path, output: str) -> None:
    """``script --check`` exits 0: ``output`` (a path, for the message) matches what it generates."""
    result = subprocess.run(
        [sys.executable, str(script), "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (
        f"{output} is out of date: run python3 scripts/{script.name}\n" + result.stdout + result.stderr
    )
