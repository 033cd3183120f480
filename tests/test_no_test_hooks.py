"""Production code carries no test hooks: partitions and the negative controls' switches live in
``ekv.testing``, which wraps ekv from outside (see ``ekv.testing._hooks`` and
``ekv.testing.proxy``). A grep over ``src/ekv`` without ``src/ekv/testing``."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "ekv"

FORBIDDEN = {
    r"\bset_blocked\b": "the old partition switch of ClusterNode",
    r"\b_blocked\b": "the old partition state of ClusterNode",
    r"""["']block["']""": "the old `block` client command",
    r"\banti_entropy\s*[:=]": "the old anti-entropy switch of ReplicationSettings (the interval is an option)",
    r"\bsettings\.anti_entropy\b": "the old anti-entropy switch of ReplicationSettings",
    r"EKV_FAULTS|EKV_TESTING|ekv\.testing\.(_internal|faults|chaos|checker|powercut)": "a test-only hook",
    r"test partition": "a test-only code path",
}


def production_files() -> list[Path]:
    files = [p for p in SRC.rglob("*.py") if "testing" not in p.relative_to(SRC).parts]
    assert len(files) > 30, files  # the walk found the package
    return files


def test_production_code_has_no_test_hooks() -> None:
    found = []
    for path in production_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in FORBIDDEN.items():
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(SRC)}:{number}: {what}: {line.strip()}")
    assert not found, "\n".join(found)


def test_only_the_demo_uses_ekv_testing() -> None:
    """The demo makes its partition with ekv.testing's fault proxy; nothing else in ekv may lean
    on the testing package."""
    users = sorted(
        str(path.relative_to(SRC))
        for path in production_files()
        if re.search(r"^\s*(from|import) ekv\.testing", path.read_text(), re.MULTILINE)
    )
    assert users == ["_demo.py"]
