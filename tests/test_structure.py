"""The shape of the source tree, checked from its AST: no import cycles, no module over 700 lines,
no function over 80 lines (issue 10, "The house").

Why these are tests rather than review comments: a cycle makes import order matter (a module
half-initialised when the other reads a name from it) and usually means two modules are one
concept split badly or one concept spread over two; long modules and functions are where a
reader loses the thread. A test keeps them from creeping back one commit at a time.

What counts as an import (a *runtime* import, an edge of the graph): a module-level ``import`` or
``from ... import`` not under ``if TYPE_CHECKING:``, and any import inside a function (it runs
when the function does). An import of ``a.b.c`` is an edge to ``a.b.c`` only: the parent packages
it initialises on the way are not edges, otherwise every module would be in a cycle with
``ekv/__init__.py``, which imports the API. ``from pkg import name`` is an edge to the submodule
``pkg.name`` when there is one, else to ``pkg``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "ekv"

MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80

# (module, qualified function name) -> why it is longer than MAX_FUNCTION_LINES. Keep empty
# unless splitting is worse than the length.
FUNCTION_EXEMPTIONS: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that runs: all but those in the body of ``if TYPE_CHECKING:``
    (their ``else:`` branch runs, so it is kept)."""

    def visit(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from visit(child)
            return
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    yield from visit(tree)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the ekv modules it imports at runtime."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(name, is_package, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each as one cycle
    through some of its modules, so a failure names a path to follow."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_one_cycle(graph, set(component)) for component in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A cycle through the component's first module (breadth-first, so a shortest one)."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - a component has one


def _functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + child.name, child
                yield from visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")
            else:
                yield from visit(child, prefix)

    yield from visit(tree, "")


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    """The check itself: a graph with a cycle is reported, with the path."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_type_checking_imports_are_not_edges() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import ekv._errors\n"
        "if TYPE_CHECKING:\n    import ekv._model\n"
        "def f():\n    from ekv import _config\n"
    )
    names = [ast.unparse(node) for node in _runtime_imports(tree)]
    assert names == ["from typing import TYPE_CHECKING", "import ekv._errors", "from ekv import _config"]


def test_the_graph_sees_relative_and_function_imports() -> None:
    graph = import_graph()
    assert "ekv._storage.shard" in graph["ekv._storage.store"]
    assert "ekv._errors" in graph["ekv._storage.shard"]


# -- the replicator reaches storage only through its port ---------------------------------------

PORT_CONSUMERS = ("ekv._cluster.replicator", "ekv._cluster.port")


def _imported_modules(name: str) -> set[str]:
    """Every module ``name`` imports, also under ``if TYPE_CHECKING:`` (a type is a dependency
    too), relative imports resolved."""
    path = _modules()[name]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, path.name == "__init__.py", node)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_the_replicator_imports_nothing_from_storage() -> None:
    """The replicator talks to storage through :class:`ekv._cluster.port.ReplicationStore` only,
    so that it can be tested against an in-memory fake and storage can change under it."""
    for name in PORT_CONSUMERS:
        storage = sorted(m for m in _imported_modules(name) if m == "ekv._storage" or m.startswith("ekv._storage."))
        assert not storage, f"{name} imports {storage}: go through ekv._cluster.port.ReplicationStore"


def test_the_storage_import_finder_finds_storage_imports() -> None:
    """The check itself: cluster.py builds the real port, so it imports from ekv._storage."""
    assert "ekv._storage.replication" in _imported_modules("ekv._cluster.cluster")


def test_no_module_over_700_lines() -> None:
    too_long = {
        name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_no_function_over_80_lines() -> None:
    too_long: dict[str, int] = {}
    for name, path in _modules().items():
        for qualname, node in _functions(ast.parse(path.read_text(), str(path))):
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES and (name, qualname) not in FUNCTION_EXEMPTIONS:
                too_long[f"{name}:{qualname}"] = lines
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"


# -- SQL lives in _storage/schema.py ------------------------------------------------------------

SQL_HOME = "_storage/schema.py"
SQL_KEYWORDS = ("SELECT ", "INSERT ", "DELETE FROM", "UPDATE ", "CREATE ", "PRAGMA ")
TRANSACTION_WORDS = {"BEGIN", "BEGIN IMMEDIATE", "COMMIT", "ROLLBACK"}
# (module, keyword) -> why that SQL stays outside schema.py.
SQL_EXEMPTIONS: dict[tuple[str, str], str] = {
    ("_storage/sqlite.py", "PRAGMA "): "connection settings (synchronous, query_only, WAL, checkpoint sizes) belong "
    "to the SQLite seam, not to the shard's schema; so does the synchronous switch of transaction()",
}
TRANSACTION_HOME = "_storage/sqlite.py"
"""The only module that runs BEGIN/COMMIT/ROLLBACK (``transaction()`` and its helpers); the
single-statement fast path's ``BEGIN; upsert`` and its COMMIT are SQL text in schema.py."""


def _string_literals(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, text) of every string literal that is not a docstring; an f-string's literal parts
    are joined with a placeholder, so "SELECT {cols} FROM" is still seen."""
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    inside_fstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            inside_fstrings.update(id(value) for value in node.values)
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            yield node.lineno, str(text)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and id(node) not in inside_fstrings
        ):
            yield node.lineno, node.value


def sql_outside_its_home() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == SQL_HOME or rel.startswith("testing/"):
            continue
        for line, text in sorted(_string_literals(ast.parse(path.read_text(), str(path)))):
            for keyword in SQL_KEYWORDS:
                if keyword in text and (rel, keyword) not in SQL_EXEMPTIONS:
                    found.append(f"src/ekv/{rel}:{line}: {keyword.strip()} in {text.strip()[:60]!r}")
            if text.strip().upper() in TRANSACTION_WORDS and rel != TRANSACTION_HOME:
                found.append(f"src/ekv/{rel}:{line}: a hand-rolled {text.strip()!r} (use sqlite.transaction)")
    return found


def test_sql_lives_in_schema() -> None:
    """schema.py says it holds every SQL statement ekv runs: keep it true, so that a reader
    finds every query (and every index it needs) in one place. Transactions go through
    ``_storage/sqlite.py`` ``transaction()``, whose docstring names the two deliberate exceptions."""
    found = sql_outside_its_home()
    assert not found, "SQL outside src/ekv/_storage/schema.py:\n" + "\n".join(found)


def test_the_sql_finder_finds_sql() -> None:
    tree = ast.parse('"""SELECT in a docstring is prose."""\nx = f"SELECT {c} FROM kv"\ny = "DELETE FROM t"\n')
    assert [text for _, text in _string_literals(tree) if any(k in text for k in SQL_KEYWORDS)] == [
        "SELECT {} FROM kv",
        "DELETE FROM t",
    ]
