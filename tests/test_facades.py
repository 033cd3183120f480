"""AsyncEKV's forwarding methods are generated from EKV's (scripts/gen_facades.py), so an
operation is written once: a changed or new EKV method without a regenerated aio.py fails here."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType

import ekv
from _generated import assert_up_to_date, load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_facades.py"


DECORATORS = {"memoize", "lock"}  # they return a decorator or an (async) context manager, not a coroutine
"""Methods that return a decorator, applied when a function is defined: plain methods on both
facades (AsyncEKV's decorates ``async def`` functions and awaits the store in them)."""


def load_generator() -> ModuleType:
    return load_script(SCRIPT)


def test_aio_py_is_up_to_date() -> None:
    assert_up_to_date(SCRIPT, "src/ekv/_api/aio.py")


def test_a_new_sync_method_appears_in_the_async_facade() -> None:
    generator = load_generator()
    source = generator.SOURCE.read_text()
    target = generator.TARGET.read_text()
    assert generator.render(source, target) == target
    added = source.replace(
        "    # -- reads ---",
        "    def put_all(self, items: dict[str, Any]) -> list[Version]:\n"
        '        """Store every item."""\n'
        "        return self._values.put_all(items)\n\n"
        "    def ping(self) -> None:\n"
        '        """Ping the node."""\n'
        "        self._node_checked.ping()\n\n"
        "    # -- reads ---",
        1,
    )
    rendered = generator.render(added, target)
    assert rendered != target
    assert (
        "    async def put_all(self, items: dict[str, Any]) -> list[Version]:\n"
        '        """See :meth:`ekv.EKV.put_all`."""\n'
        "        node = self._node\n"
        "        if node is None or node.closed:\n"
        "            node = await self._ensure()\n"
        "        return await self._call(node.values.put_all, items)\n"
    ) in rendered
    assert "        await self._call(node.ping)\n" in rendered


def test_both_facades_have_the_same_operations_and_parameters() -> None:
    def public(cls: type) -> dict[str, object]:
        return {name: value for name, value in vars(cls).items() if callable(value) and not name.startswith("_")}

    sync, aio = public(ekv.EKV), public(ekv.AsyncEKV)
    assert set(sync) == set(aio) - {"open"}
    for name, method in sync.items():
        params = [p for p in inspect.signature(method).parameters if p != "callback"]  # type: ignore[arg-type]
        other = aio[name]
        assert params == list(inspect.signature(other).parameters), name  # type: ignore[arg-type]
        if name in DECORATORS:
            continue
        assert inspect.iscoroutinefunction(other) or inspect.isasyncgenfunction(other), name
