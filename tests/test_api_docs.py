"""docs/api.md is generated from the docstrings (scripts/gen_api_docs.py) and must stay in step
with them: a changed docstring or signature without a regenerated file fails here."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import ekv
import ekv.testing
from _generated import assert_up_to_date, load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_api_docs.py"
API = ROOT / "docs" / "api.md"


def load_generator() -> ModuleType:
    return load_script(SCRIPT)


def test_api_md_is_up_to_date() -> None:
    assert_up_to_date(SCRIPT, "docs/api.md")


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    generator = load_generator()
    stale = tmp_path / "api.md"
    stale.write_text(API.read_text(encoding="utf-8").replace("Idempotent.", "Idempotent!", 1), encoding="utf-8")
    assert generator.check(stale) == 1
    assert generator.check(tmp_path / "missing.md") == 1


def test_output_is_deterministic() -> None:
    generator = load_generator()
    first = generator.render()
    assert first == generator.render()
    assert not re.search(r" at 0x[0-9a-f]+", first)


def test_every_public_name_is_documented() -> None:
    text = API.read_text(encoding="utf-8")
    headings = set(re.findall(r"^#{2,4} `([^`]+)`$", text, re.M))
    for name in ekv.__all__:
        assert f"ekv.{name}" in headings, name
    for name in ekv.testing.__all__:
        assert f"ekv.testing.{name}" in headings, name


def test_public_methods_are_documented() -> None:
    text = API.read_text(encoding="utf-8")
    for cls in (ekv.EKV, ekv.AsyncEKV, ekv.Subscription, ekv.AsyncSubscription):
        for name in dir(cls):
            if not name.startswith("_"):
                assert f"#### `{cls.__name__}.{name}`" in text, f"{cls.__name__}.{name}"
