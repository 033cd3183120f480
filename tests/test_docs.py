"""The README's promises: its commands, options and operations exist and its quickstart runs."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import ekv

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def table_after(heading: str) -> list[list[str]]:
    section = README.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header


def test_readme_starts_with_the_two_commands() -> None:
    commands = re.findall(r"^python3 .*$", README.split("```sh", 1)[1].split("```", 1)[0], re.M)
    assert len(commands) == 2
    assert "ekv demo" in commands[0]
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1].split("#")[0].strip() in ci


def test_every_documented_option_exists() -> None:
    sync_params = set(inspect.signature(ekv.EKV.__init__).parameters)
    async_params = set(inspect.signature(ekv.AsyncEKV.__init__).parameters)
    documented = set()
    for row in table_after("## Options"):
        documented.update(part.strip().strip("`") for part in row[0].split("/"))
    assert documented
    for option in documented:
        assert option in async_params, option
        assert option in sync_params or option == "workers", option
    assert sync_params - {"self"} <= documented


def test_every_documented_operation_exists() -> None:
    documented = [row[0].strip("`").split("(")[0] for row in table_after("## API")]
    assert "put" in documented and "subscribe" in documented
    for name in documented:
        assert callable(getattr(ekv.EKV, name)), name
        assert callable(getattr(ekv.AsyncEKV, name)), name


def test_documented_errors_exist() -> None:
    tree = README.split("## Errors", 1)[1].split("```", 2)[1]
    names = re.findall(r"(?:├──|└──|^)\s*([A-Z][A-Za-z]+)\b", tree, re.M)
    assert len(names) > 15
    for name in names:
        assert issubclass(getattr(ekv, name), ekv.Error), name


def test_quickstart_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "after a restart" in result.stdout
    assert "expired" not in result.stderr
