"""docs/architecture.md stays true to the code: its layer map names exactly the modules under
src/ekv, and its code map names only modules, functions and tests that exist.

Other changes add, move and rename modules all the time; these tests say exactly which name is
missing from the doc or no longer in the code, so whoever merges can fix the doc in a minute.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "ekv"
DOC_PATH = ROOT / "docs" / "architecture.md"
DOC = DOC_PATH.read_text(encoding="utf-8")

DESCRIPTION_COLUMN = 20
"""A line of the layer map indented at least this far continues the previous line's description."""

_PY_NAME = re.compile(r"(?<![\w./])([\w/]+\.py)\b")
_BACKTICKED = re.compile(r"`([^`]+)`")
_QUALIFIED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)?$")
_CLASS_ATTRIBUTE = re.compile(r"(?<![\w.])([A-Z][A-Za-z0-9]+)\.([A-Za-z_]\w*)")


def section(heading: str) -> str:
    """The text of the ``## heading`` section, up to the next ``## `` heading."""
    parts = re.split(rf"^## {re.escape(heading)}\n", DOC, maxsplit=1, flags=re.M)
    assert len(parts) == 2, f"{DOC_PATH.name} has no '## {heading}' section"
    return re.split(r"^## ", parts[1], maxsplit=1, flags=re.M)[0]


def fenced_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)


def modules_on_disk() -> set[str]:
    return {path.relative_to(SRC).as_posix() for path in SRC.rglob("*.py") if "__pycache__" not in path.parts}


def _join(package: str, name: str) -> str:
    return f"{package}/{name}" if package else name


def modules_in_layer_map(block: str) -> dict[str, str]:
    """Module path (relative to src/ekv) -> the line of the map that names it.

    The map's rules: a line's first word is a package (``_cluster``, ``testing/``; it stands for
    the package's ``__init__.py``) or a module (``wire.py``) inside the package of the nearest
    less indented package line; the top line is ``ekv`` itself. A ``.py`` name in a description
    is a module of the package the line is in (``src/ekv/...`` names a path from the top)."""
    named: dict[str, str] = {}
    packages: list[tuple[int, str]] = []  # (indent, package path), innermost last
    context: str | None = None
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent >= DESCRIPTION_COLUMN:
            assert context is not None, f"a continuation line before any entry: {line.strip()!r}"
            description = line
        else:
            first, _, description = line.strip().partition(" ")
            while packages and packages[-1][0] >= indent:
                packages.pop()
            parent = packages[-1][1] if packages else None
            if first.endswith(".py"):
                assert parent is not None, f"a module outside any package: {line.strip()!r}"
                named.setdefault(_join(parent, first), line.strip())
                context = parent
            else:
                package = "" if parent is None else _join(parent, first.rstrip("/"))
                named.setdefault(_join(package, "__init__.py"), line.strip())
                packages.append((indent, package))
                context = package
        for name in _PY_NAME.findall(description):
            path = name.removeprefix("src/ekv/") if name.startswith("src/ekv/") else _join(context or "", name)
            named.setdefault(path, line.strip())
    return named


def test_the_layer_map_names_every_module_and_only_modules_that_exist() -> None:
    blocks = fenced_blocks(section("Layers"))
    assert blocks, "the '## Layers' section of docs/architecture.md has no fenced block (the layer map)"
    named = modules_in_layer_map(blocks[0])
    on_disk = modules_on_disk()
    missing = sorted(on_disk - set(named))
    extra = sorted(set(named) - on_disk)
    problems = []
    for path in missing:
        package, _, module = path.rpartition("/")
        problems.append(
            f"src/ekv/{path} is not in the layer map: add a line '{module}  <what it is for>' "
            f"under '{package or 'ekv (public)'}'"
            + (" (or the package's own line, for __init__.py)" if module == "__init__.py" else "")
        )
    for path in extra:
        problems.append(f"the layer map names src/ekv/{path}, which does not exist (line: {named[path]!r})")
    assert not problems, "docs/architecture.md, '## Layers':\n  " + "\n  ".join(problems)


# -- the code map ------------------------------------------------------------------------------------


@functools.cache
def defined_names(path: Path) -> dict[str, set[str] | None]:
    """Names defined at the top of a module: a class maps to its attributes (methods, class
    variables, ``self.x`` assignments), anything else to None."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: dict[str, set[str] | None] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names[node.name] = None
        elif isinstance(node, ast.ClassDef):
            names[node.name] = class_attributes(node)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        names[leaf.id] = None
    return names


def class_attributes(node: ast.ClassDef) -> set[str]:
    attributes: set[str] = set()
    for item in node.body:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            attributes.add(item.name)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            attributes.add(item.target.id)
        elif isinstance(item, ast.Assign):
            attributes.update(t.id for t in item.targets if isinstance(t, ast.Name))
    for sub in ast.walk(node):
        if (
            isinstance(sub, ast.Attribute)
            and isinstance(sub.ctx, ast.Store)
            and isinstance(sub.value, ast.Name)
            and sub.value.id in ("self", "cls")
        ):
            attributes.add(sub.attr)
    return attributes


def lookup_problem(path: Path, name: str) -> str | None:
    """Why ``name`` (``function`` or ``Class.attribute``) is not defined in ``path``, or None."""
    head, _, attribute = name.partition(".")
    names = defined_names(path)
    if head not in names:
        return f"{name}: {head!r} is not defined in {path.relative_to(ROOT)}"
    if attribute:
        attributes = names[head]
        if attributes is None:
            return f"{name}: {head!r} in {path.relative_to(ROOT)} is not a class"
        if attribute not in attributes:
            return f"{name}: class {head} in {path.relative_to(ROOT)} has no {attribute!r}"
    return None


def code_map_rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in section("Code map").splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"a code map row needs three cells (symptom, read, run): {line!r}"
        rows.append((cells[0], cells[1], cells[2]))
    return rows[1:]  # without the header


def cell_problems(symptom: str, cell: str, base: Path, what: str) -> list[str]:
    """Check one cell: backticked ``path.py`` names a file under ``base``, and each backticked
    name after it must be defined in that file."""
    problems = []
    current: Path | None = None
    for token in _BACKTICKED.findall(cell):
        if token.endswith(".py"):
            current = base / token
            if not current.is_file():
                problems.append(f"{symptom!r}: {what} {current.relative_to(ROOT)} does not exist")
                current = None
            continue
        if current is None:
            problems.append(f"{symptom!r}: `{token}` does not follow an existing `file.py` in its cell")
            continue
        if not _QUALIFIED.match(token):
            problems.append(f"{symptom!r}: `{token}` is neither a file nor a name (`function`, `Class.method`)")
            continue
        problem = lookup_problem(current, token)
        if problem is not None:
            problems.append(f"{symptom!r}: {problem}")
    return problems


def test_the_code_map_names_modules_functions_and_tests_that_exist() -> None:
    rows = code_map_rows()
    assert len(rows) >= 20, f"the code map has only {len(rows)} rows"
    problems = []
    for symptom, read, run in rows:
        if not _BACKTICKED.search(read) or not _BACKTICKED.search(run):
            problems.append(f"{symptom!r}: a row needs a module to read and a test to run")
        problems += cell_problems(symptom, read, SRC, "module")
        problems += cell_problems(symptom, run, ROOT, "test file")
    assert not problems, "docs/architecture.md, '## Code map' table:\n  " + "\n  ".join(problems)


@functools.cache
def classes_in_src() -> dict[str, set[str]]:
    """Every class defined at the top of a module under src/ekv -> its attributes (merged when
    two modules define a class of the same name)."""
    classes: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        for name, attributes in defined_names(path).items():
            if attributes is not None:
                classes.setdefault(name, set()).update(attributes)
    return classes


def test_the_sequence_diagrams_name_modules_and_methods_that_exist() -> None:
    blocks = fenced_blocks(section("Code map"))
    assert len(blocks) >= 3, "the code map should draw the threads, the live path and an anti-entropy pull"
    on_disk = modules_on_disk()
    classes = classes_in_src()
    problems = []
    for block in blocks:
        for line in block.splitlines():
            for name in _PY_NAME.findall(line):
                if name not in on_disk:
                    problems.append(f"src/ekv/{name} does not exist (line {line.strip()!r})")
            for cls, attribute in _CLASS_ATTRIBUTE.findall(line):
                if cls not in classes:
                    problems.append(f"{cls}.{attribute}: no class {cls} in src/ekv (line {line.strip()!r})")
                elif attribute not in classes[cls]:
                    problems.append(f"{cls}.{attribute}: class {cls} has no {attribute!r} (line {line.strip()!r})")
    assert not problems, "docs/architecture.md, '## Code map' diagrams:\n  " + "\n  ".join(problems)


def test_the_checks_catch_a_missing_module_and_a_wrong_name(tmp_path: Path) -> None:
    """The parser is not vacuous: a module left out of the map, a module that does not exist,
    and a method that does not exist are each reported."""
    block = fenced_blocks(section("Layers"))[0]
    named = modules_in_layer_map(block)
    assert "_cluster/wire.py" in named and "_cli.py" in named and "__main__.py" in named
    assert "testing/_internal/checker/run.py" in named and "_api/sync.py" in named and "__init__.py" in named
    without_wire = modules_in_layer_map(block.replace("    wire.py ", "    wyre.py "))
    assert "_cluster/wire.py" not in without_wire and "_cluster/wyre.py" in without_wire
    assert lookup_problem(SRC / "_cluster" / "session.py", "Session.send_frame") is None
    assert lookup_problem(SRC / "_cluster" / "session.py", "Session.no_such_method") is not None
    assert lookup_problem(SRC / "_cluster" / "wire.py", "encode") is None
    assert cell_problems("s", "`_cluster/nowhere.py` `x`", SRC, "module")
