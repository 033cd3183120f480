"""Generate AsyncEKV's forwarding methods from EKV's, so an operation is written once.

    python3 scripts/gen_facades.py            # (re)write the generated part of src/ekv/_api/aio.py
    python3 scripts/gen_facades.py --check    # exit 1 if it is out of date

:class:`ekv.EKV` (``src/ekv/_api/sync.py``) is the source: its signatures, type hints and
docstrings are written by hand. Every method of it whose body (after the docstring) is one call
forwarded to the value layer or to the node,

* ``return self._values.NAME(ARGS)``          (storage: runs in AsyncEKV's thread pool; for
  NAME in :data:`NOWAIT`, on the event loop when it can finish without waiting),
* ``[return] self._node_checked.NAME(ARGS)``  (the node: in the thread pool, unless NAME is in
  :data:`INLINE`),

becomes the same ``async def`` in AsyncEKV, between the markers of ``src/ekv/_api/aio.py``,
documented as "See :meth:`ekv.EKV.NAME`.". Methods that differ by more than where they run are
written by hand on each side: opening and closing, properties, a method returning an
``Iterator`` (an async iterator on the other side) and an overloaded one (``subscribe``). Standard library only
(ast); the output is deterministic, so ``--check`` runs in the tests (tests/test_api_docs.py).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "ekv" / "_api" / "sync.py"
TARGET = ROOT / "src" / "ekv" / "_api" / "aio.py"
REGENERATE = "python3 scripts/gen_facades.py"
BEGIN = "    # -- generated from EKV by scripts/gen_facades.py: do not edit by hand ---------------------\n"
END = "    # -- end of the generated methods ------------------------------------------------------------\n"

INLINE = frozenset({"connect", "unsubscribe"})
"""Node methods AsyncEKV runs on the event loop rather than in its thread pool: they only touch
memory (the subscription registry, the cluster's dial list), never SQLite."""


NOWAIT = frozenset({"get", "lookup", "contains", "put", "delete"})
"""Value-layer methods AsyncEKV first tries on the event loop, through ``Values.NAME_nowait``
(same arguments): a point read or a commit that needs no waiting takes microseconds, less than
a hop to the thread pool and back (about 100 µs). What may wait comes back as an
``ekv._values.Pending``, which runs in the pool (see ``AsyncEKV._finish``)."""


def _forwarded(method: ast.FunctionDef) -> tuple[str, ast.Call, bool] | None:
    """``(target, call, returns)`` if ``method`` only forwards one call; target is "values" or
    "node"."""
    body = method.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if len(body) != 1 or method.decorator_list:
        return None
    stmt = body[0]
    if not isinstance(stmt, ast.Return | ast.Expr) or not isinstance(stmt.value, ast.Call):
        return None
    call = stmt.value
    func = call.func
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute)):
        return None
    owner = func.value
    if not (isinstance(owner.value, ast.Name) and owner.value.id == "self"):
        return None
    if owner.attr == "_values":
        return "values", call, isinstance(stmt, ast.Return)
    if owner.attr == "_node_checked":
        return "node", call, isinstance(stmt, ast.Return)
    return None


def _signature(source: str, method: ast.FunctionDef) -> str:
    """The ``def`` line(s) of ``method`` as written, up to and including the colon, without a
    ``# type: ignore[...]`` comment: EKV's ``keys``/``values``/``items`` override Mapping's with a
    prefix, which AsyncEKV (not a Mapping) does not."""
    lines = source.splitlines(keepends=True)
    first = method.lineno - 1
    body_line = method.body[0].lineno - 1
    return re.sub(r"  # type: ignore\[[^\]]*\]", "", "".join(lines[first:body_line]))


def generate(source: str) -> str:
    """The generated methods (the text between the markers) for EKV's ``source``."""
    tree = ast.parse(source)
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "EKV")
    out: list[str] = []
    names = [node.name for node in cls.body if isinstance(node, ast.FunctionDef)]
    for method in cls.body:
        if not isinstance(method, ast.FunctionDef) or method.name.startswith("_") or names.count(method.name) > 1:
            continue  # private, or overloaded (subscribe): written by hand on each side
        if method.returns is not None and ast.unparse(method.returns).startswith("Iterator"):
            continue  # an iterator becomes an async iterator: written by hand on each side
        if method.returns is not None and ast.unparse(method.returns) == "Lock":
            continue  # a lock becomes an async context manager: written by hand on each side
        found = _forwarded(method)
        if found is None:
            continue
        target, call, returns = found
        assert isinstance(call.func, ast.Attribute)
        name = call.func.attr
        args = "".join(", " + ast.unparse(arg) for arg in call.args)
        args += "".join(f", {kw.arg}={ast.unparse(kw.value)}" for kw in call.keywords)
        signature = _signature(source, method).replace("    def ", "    async def ", 1)
        ret = "return " if returns else ""
        if target == "node" and name in INLINE:
            line = f"{ret}node.{name}({args[2:]})"
        elif target == "values" and name in NOWAIT and returns:
            line = (
                f"result = node.values.{name}_nowait({args[2:]})\n"
                "        if isinstance(result, Pending):\n"
                "            return await self._finish(result)\n"
                "        return result"
            )
        else:
            fn = f"node.values.{name}" if target == "values" else f"node.{name}"
            line = f"{ret}await self._call({fn}{args})"
        out.append(
            f"{signature}"
            f'        """See :meth:`ekv.EKV.{method.name}`."""\n'
            f"        node = self._node\n"
            f"        if node is None or node.closed:\n"
            f"            node = await self._ensure()\n"
            f"        {line}\n"
        )
    return "\n".join(out)


def render(source: str, target: str) -> str:
    """``target`` (aio.py) with its generated part replaced by what ``source`` gives."""
    start = target.index(BEGIN) + len(BEGIN)
    end = target.index(END)
    return target[:start] + "\n" + generate(source) + "\n" + target[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the generated methods are out of date")
    args = parser.parse_args(argv)
    current = TARGET.read_text()
    wanted = render(SOURCE.read_text(), current)
    if args.check:
        if wanted != current:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
