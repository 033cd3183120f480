"""Generate docs/api.md, the API reference of ekv, from the code's signatures and docstrings.

    python3 scripts/gen_api_docs.py            # (re)write docs/api.md
    python3 scripts/gen_api_docs.py --check    # exit 1 if docs/api.md is out of date

Standard library only (inspect, ast, typing). It documents every name in ``ekv.__all__`` and in
``ekv.testing.__all__``: functions with their signatures, classes with their constructor,
properties, public attributes and public methods (inherited ones included), and the exception
tree. The output is deterministic: no addresses, no timestamps, no values that depend on the run
or the machine, so ``--check`` can run in CI (tests/test_api_docs.py does).

The repository's ``src/`` is put first on ``sys.path``, so the source tree is documented even
when another copy of ekv is installed; ekv's own dependency (APSW) must be importable.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import enum
import inspect
import re
import sys
import textwrap
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "api.md"
REGENERATE = "python3 scripts/gen_api_docs.py"

# Sections of the page: (title, introduction, names in a meaningful reading order). A public
# name that is in no section is still documented, under "Other names" (sorted).
SECTIONS: list[tuple[str, str, list[str]]] = [
    (
        "Stores",
        "The two facades over one store. They take the same options; `AsyncEKV` adds `workers`.",
        ["EKV", "AsyncEKV"],
    ),
    (
        "Subscriptions",
        "What `subscribe()` returns. Each yields batches (lists) of `ekv.Event`.",
        ["Subscription", "AsyncSubscription", "CallbackSubscription"],
    ),
    ("Values", "The types ekv hands back: the version of a write and a subscription event.", ["Version", "Event"]),
    (
        "Codecs",
        "How values become bytes (`codec=`). Any object with `dumps` and `loads` works.",
        ["Codec", "PickleCodec", "JsonCodec"],
    ),
    ("Clocks", "The wall clock under the hybrid logical clock (`clock=`).", ["WallClock", "SystemClock"]),
    ("Monitoring", "Rendering `EKV.metrics()` for a Prometheus scraper.", ["format_metrics"]),
]

# Aliases that appear (by name) in the signatures; their definitions are printed at the end.
ALIASES = {
    "Seconds": ("ekv._options", "Seconds"),
    "OverflowPolicy": ("ekv._config", "OverflowPolicy"),
    "EventType": ("ekv._model", "EventType"),
}

# Types that are not public names but that public functions return; documented in an appendix.
RETURNED_TYPES = [("ekv._model", "Entry"), ("ekv._storage.store", "GcReport")]

# Classes users receive but never construct: their constructor is not shown.
NOT_CONSTRUCTED = {
    "Subscription": "Returned by `EKV.subscribe()` without `callback`; not created directly.",
    "AsyncSubscription": "Returned by `await AsyncEKV.subscribe()`; not created directly.",
    "CallbackSubscription": "Returned by `EKV.subscribe(..., callback=fn)`; not created directly.",
}

PROTOCOL_DUNDERS = {
    "__enter__": "`with`",
    "__aenter__": "`async with`",
    "__iter__": "iteration (`for`)",
    "__aiter__": "async iteration (`async for`)",
    "__getitem__": "`obj[key]`",
    "__setitem__": "`obj[key] = value`",
    "__delitem__": "`del obj[key]`",
    "__contains__": "`key in obj`",
    "__len__": "`len(obj)`",
}

public_names: set[str] = set()  # filled by render(): ekv.__all__ and ekv.testing.__all__

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


# -- importing -----------------------------------------------------------------------------------


def import_ekv() -> tuple[ModuleType, ModuleType]:
    sys.path.insert(0, str(ROOT / "src"))
    try:
        import ekv
        import ekv.testing
    except ImportError as exc:
        raise SystemExit(
            f"gen_api_docs: cannot import ekv ({exc}). Run it with an interpreter that has ekv's "
            'dependencies, e.g. after python3 -m pip install -e ".[test]".'
        ) from None
    return ekv, ekv.testing


def resolve(module: str, name: str) -> Any:
    return getattr(sys.modules[module] if module in sys.modules else __import__(module, fromlist=[name]), name)


# -- docstrings to Markdown ------------------------------------------------------------------------

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):`(~?)([^`]+)`")
_DOUBLE = re.compile(r"``(.+?)``")
_SECTION = re.compile(r"^(Args|Arguments|Attributes|Raises|Returns|Yields|Example|Examples|Note|Notes):\s*$")


class Linker:
    """Turns references like ``:meth:`ekv.EKV.put``` into links to the documented names."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known  # anchors of the whole page (from a first pass), used for links
        self.anchors: dict[str, str] = {}  # collected by this pass: "EKV.put" -> "ekvput"

    def add(self, qualname: str, heading: str) -> None:
        anchor = github_anchor(heading)
        if anchor in self.anchors.values():
            raise SystemExit(f"gen_api_docs: two headings share the anchor #{anchor}")
        self.anchors[qualname] = anchor

    def link(self, target: str, context: str | None) -> str:
        short = target.removeprefix("~")
        name = short.removeprefix("ekv.")
        candidates = [name]
        if context:
            candidates.insert(0, f"{context}.{name}")
        label = short.rsplit(".", 1)[-1] if target.startswith("~") else short
        for candidate in candidates:
            if candidate in self.known:
                return f"[`{label}`](#{self.known[candidate]})"
        return f"`{label}`"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def inline(text: str, linker: Linker, context: str | None) -> str:
    text = _ROLE.sub(lambda m: "\0" + linker.link(m.group(1) + m.group(2), context) + "\0", text)
    parts = text.split("\0")
    for i in range(0, len(parts), 2):  # outside the links produced above
        parts[i] = _DOUBLE.sub(lambda m: f"`{m.group(1)}`", parts[i])
    return "".join(parts)


def markdown_doc(doc: str | None, linker: Linker, context: str | None) -> str:
    """A docstring (reST/Google style) as Markdown: ``::`` blocks become fenced code, ``Args:``
    style sections become bullet lists, roles and double backquotes become code spans."""
    if not doc:
        return ""
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        section = _SECTION.match(stripped)
        if stripped.endswith("::"):
            lead = stripped[:-2].rstrip()
            if lead:
                out.append(inline(lead + ":", linker, context))
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```python", *textwrap.dedent("\n".join(block)).strip("\n").splitlines(), "```", ""]
            continue
        if section and (i + 1 < len(lines) and lines[i + 1].startswith((" ", "\t"))):
            out += ["", f"**{section.group(1)}:**", ""]
            i += 1
            items: list[str] = []
            base: int | None = None
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                current = lines[i]
                if not current.strip():
                    i += 1
                    continue
                indent = len(current) - len(current.lstrip())
                if base is None:
                    base = indent
                if indent <= base or not items:
                    items.append(current.strip())
                else:
                    items[-1] += " " + current.strip()
                i += 1
            for item in items:
                head, sep, rest = item.partition(": ")
                if sep and len(head) < 60 and "`" not in head:
                    out.append(f"- `{head}`: {inline(rest, linker, context)}")
                else:
                    out.append(f"- {inline(item, linker, context)}")
            out.append("")
            continue
        out.append(inline(line, linker, context) if stripped else "")
        i += 1
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring as plain text (for the error tree)."""
    if not doc:
        return ""
    paragraph = " ".join(inspect.cleandoc(doc).split("\n\n", 1)[0].split())
    sentence = re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]
    sentence = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), sentence)
    return _DOUBLE.sub(lambda m: m.group(1), sentence)


# -- signatures ----------------------------------------------------------------------------------


def annotation_text(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, typing.ForwardRef):
        return annotation.__forward_arg__
    if annotation is type(None):
        return "None"
    return inspect.formatannotation(annotation)


def default_text(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    text = repr(value)
    return _ADDRESS.sub("", text)


def format_signature(name: str, sig: inspect.Signature, prefix: str = "def ") -> str:
    params = list(sig.parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    parts: list[str] = []
    star_done = False
    positional_only = False
    for param in params:
        if param.kind is param.POSITIONAL_ONLY:
            positional_only = True
        elif positional_only:
            parts.append("/")
            positional_only = False
        if param.kind is param.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        text = param.name
        if param.kind is param.VAR_POSITIONAL:
            text = "*" + text
            star_done = True
        elif param.kind is param.VAR_KEYWORD:
            text = "**" + text
        if param.annotation is not param.empty:
            text += f": {annotation_text(param.annotation)}"
            if param.default is not param.empty:
                text += f" = {default_text(param.default)}"
        elif param.default is not param.empty:
            text += f"={default_text(param.default)}"
        parts.append(text)
    if positional_only:
        parts.append("/")
    returns = ""
    if sig.return_annotation is not sig.empty:
        returns = f" -> {annotation_text(sig.return_annotation)}"
    one_line = f"{prefix}{name}({', '.join(parts)}){returns}"
    if len(one_line) <= 100:
        return one_line
    body = "".join(f"    {part},\n" for part in parts)
    return f"{prefix}{name}(\n{body}){returns}"


def constructor_signature(cls: type) -> inspect.Signature:
    """How the class is called: its ``__init__`` without ``self`` and without ``-> None``; a
    ``**options: Unpack[SomeTypedDict]`` is shown as the keyword options it stands for."""
    sig = inspect.signature(cls).replace(return_annotation=inspect.Signature.empty)
    options = unpacked_options(cls)
    if options is None:
        return sig
    kept = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
        for name, annotation, default, _ in options
    ]
    return sig.replace(parameters=[*kept, *extra])


_UNPACK = re.compile(r"Unpack\[(\w+)\]")


def unpacked_options(cls: type) -> list[tuple[str, str, Any, str]] | None:
    """The options of a constructor that takes ``**options: Unpack[SomeTypedDict]``:
    ``(name, annotation, default, docstring)`` in the TypedDict's order, the docstring being the
    string literal under the field, the default from the ``DEFAULTS`` table of its module."""
    init = cls.__dict__.get("__init__")
    if init is None or not inspect.isfunction(init):
        return None
    var_keyword = [p for p in inspect.signature(init).parameters.values() if p.kind is p.VAR_KEYWORD]
    match = _UNPACK.fullmatch(str(var_keyword[0].annotation)) if var_keyword else None
    if match is None:
        return None
    typed_dict = init.__globals__[match.group(1)]
    module = sys.modules[typed_dict.__module__]
    defaults = module.DEFAULTS
    fields: dict[str, tuple[str, str]] = {}
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if not isinstance(node, ast.ClassDef):
            continue
        for index, item in enumerate(node.body):
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                following = node.body[index + 1] if index + 1 < len(node.body) else None
                doc = ""
                if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                    doc = str(following.value.value)
                fields[item.target.id] = (ast.unparse(item.annotation), doc)
    missing = [name for name in typed_dict.__annotations__ if name not in defaults or not fields[name][1]]
    if missing:
        raise SystemExit(f"gen_api_docs: options {missing} of {typed_dict.__name__} have no default or no docstring")
    return [(name, *fields[name][:1], defaults[name], fields[name][1]) for name in typed_dict.__annotations__]


def code(text: str) -> str:
    return f"```python\n{text}\n```"


# -- classes -------------------------------------------------------------------------------------


def own_bases(cls: type) -> list[type]:
    """The classes whose members count as this class's: itself and its ekv-defined bases."""
    return [
        base
        for base in cls.__mro__
        if base.__module__.split(".")[0] == "ekv" and base is not typing.Protocol and base.__name__ != "Generic"
    ]


def instance_attributes(cls: type) -> list[tuple[str, str, str]]:
    """Public attributes assigned in ``__init__`` (``self.x = ...``) of the class and its
    ekv-defined bases: ``(name, annotation, docstring)``, docstring from a string literal that
    follows the assignment."""
    found: dict[str, tuple[str, str, str]] = {}
    for base in own_bases(cls):
        init = base.__dict__.get("__init__")
        if init is None or not inspect.isfunction(init):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for index, node in enumerate(body):
            target: ast.expr | None = None
            annotation = ""
            if isinstance(node, ast.AnnAssign):
                target, annotation = node.target, ast.unparse(node.annotation)
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            if not (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
                and not target.attr.startswith("_")
            ):
                continue
            doc = ""
            following = body[index + 1] if index + 1 < len(body) else None
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                doc = following.value.value
            name = target.attr
            if name in found or isinstance(inspect.getattr_static(cls, name, None), property):
                continue
            found[name] = (name, annotation, doc)
    return sorted(found.values())


def class_members(cls: type) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]], list[str]]:
    """(properties, methods, protocols) in definition order, the class first, then its bases."""
    properties: list[tuple[str, Any]] = []
    methods: list[tuple[str, Any]] = []
    protocols: list[str] = []
    seen: set[str] = set()
    for base in own_bases(cls):
        for name, value in base.__dict__.items():
            if name in seen:
                continue
            seen.add(name)
            if name in PROTOCOL_DUNDERS:
                protocols.append(PROTOCOL_DUNDERS[name])
                continue
            if name.startswith("_"):
                continue
            if isinstance(value, property):
                properties.append((name, value))
            elif isinstance(value, (staticmethod, classmethod)) or inspect.isfunction(value):
                methods.append((name, value))
    order = list(PROTOCOL_DUNDERS.values())
    protocols.sort(key=order.index)
    return properties, methods, protocols


def class_constants(cls: type) -> list[tuple[str, Any]]:
    result = []
    for name, value in cls.__dict__.items():
        if name.startswith("_") or callable(value) or isinstance(value, property):
            continue
        if isinstance(value, (str, int, float, bool, type(None))):
            result.append((name, value))
    return result


def kind_of(cls: type) -> str:
    if getattr(cls, "_is_protocol", False):
        return "protocol"
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return "named tuple"
    if dataclasses.is_dataclass(cls):
        return "frozen dataclass" if cls.__dataclass_params__.frozen else "dataclass"  # type: ignore[attr-defined]
    return "class"


def method_prefix(func: Any) -> str:
    raw = func.__func__ if isinstance(func, (staticmethod, classmethod)) else func
    if inspect.isasyncgenfunction(raw):
        return "async def "  # an async generator: use with async for
    if inspect.iscoroutinefunction(raw):
        return "async def "
    return "def "


class Writer:
    def __init__(self, known: dict[str, str]) -> None:
        self.linker = Linker(known)
        self.parts: list[str] = []

    def emit(self, *blocks: str) -> None:
        for block in blocks:
            if block:
                self.parts.append(block)

    def heading(self, level: int, text: str, qualname: str | None = None) -> None:
        line = f"{'#' * level} {text}"
        if qualname is not None:
            self.linker.add(qualname, text)
        self.parts.append(line)

    def text(self) -> str:
        return "\n\n".join(self.parts).rstrip() + "\n"


def document_function(w: Writer, public: str, qualname: str, func: Callable[..., Any], level: int) -> None:
    w.heading(level, f"`{public}`", qualname)
    overloads = typing.get_overloads(func)
    name = public.rsplit(".", 1)[-1]
    signatures = [format_signature(name, inspect.signature(f), method_prefix(func)) for f in overloads] or [
        format_signature(name, inspect.signature(func), method_prefix(func))
    ]
    w.emit(code("\n".join(signatures)))
    if inspect.isasyncgenfunction(func):
        w.emit("An async generator: use it with `async for`.")
    w.emit(markdown_doc(func.__doc__, w.linker, qualname.rsplit(".", 1)[0] if "." in qualname else None))


def class_doc(cls: type) -> str | None:
    doc = cls.__dict__.get("__doc__")
    return doc if isinstance(doc, str) else None


def document_class(w: Writer, public: str, qualname: str, cls: type, level: int) -> None:
    w.heading(level, f"`{public}`", qualname)
    kind = kind_of(cls)
    bases = [b for b in cls.__bases__ if b.__module__ != "builtins" and b.__name__ in public_names]
    base_text = ", ".join(f"`{b.__name__}`" for b in bases)
    w.emit(f"*{kind}*" + (f", derives from {base_text}" if base_text else ""))
    if kind == "named tuple":
        sig = inspect.Signature(
            [
                inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=ann)
                for name, ann in cls.__annotations__.items()
            ]
        )
        w.emit(code(format_signature(cls.__name__, sig, "")))
    elif cls.__name__ in NOT_CONSTRUCTED:
        w.emit(NOT_CONSTRUCTED[cls.__name__])
    elif kind != "protocol":
        w.emit(code(format_signature(cls.__name__, constructor_signature(cls), "")))
    doc = class_doc(cls)
    w.emit(markdown_doc(doc, w.linker, qualname))
    options = unpacked_options(cls) if kind == "class" else None
    if options:
        lines = []
        for name, annotation, default, option_doc in options:
            described = " ".join(markdown_doc(option_doc, w.linker, qualname).split())
            lines.append(f"- `{name}: {annotation} = {default_text(default)}`: {described}")
        w.emit("**Options** (keyword arguments, every one optional):\n\n" + "\n".join(lines))

    if kind == "named tuple":
        fields = [f"- `{name}: {annotation_text(ann)}`" for name, ann in cls.__annotations__.items()]
        w.emit("**Fields** (compared in this order):\n\n" + "\n".join(fields))
    elif dataclasses.is_dataclass(cls) and "Attributes:" not in (doc or ""):
        fields = [f"- `{f.name}: {annotation_text(f.type)}`" for f in dataclasses.fields(cls)]
        w.emit("**Fields:**\n\n" + "\n".join(fields))

    constants = class_constants(cls)
    if constants:
        w.emit("**Class attributes:**\n\n" + "\n".join(f"- `{n} = {default_text(v)}`" for n, v in constants))

    properties, methods, protocols = class_members(cls)
    attributes = instance_attributes(cls)
    if protocols:
        w.emit("Supports " + ", ".join(protocols) + ".")
    if attributes:
        lines = []
        for name, annotation, doc in attributes:
            label = f"`{name}: {annotation}`" if annotation else f"`{name}`"
            described = " ".join(markdown_doc(doc, w.linker, qualname).split())
            lines.append(f"- {label}" + (f": {described}" if described else ""))
        w.emit("**Attributes:**\n\n" + "\n".join(lines))
    short = cls.__name__
    for name, prop in properties:
        w.heading(level + 1, f"`{short}.{name}`", f"{qualname}.{name}")
        getter = prop.fget
        returns = ""
        if getter is not None:
            ann = inspect.signature(getter).return_annotation
            if ann is not inspect.Signature.empty:
                returns = f": {annotation_text(ann)}"
        w.emit(code(f"{name}{returns}  # property" + ("" if prop.fset else ", read-only")))
        w.emit(markdown_doc(getter.__doc__ if getter else None, w.linker, qualname))
    for name, method in methods:
        raw = method.__func__ if isinstance(method, (staticmethod, classmethod)) else method
        w.heading(level + 1, f"`{short}.{name}`", f"{qualname}.{name}")
        overloads = typing.get_overloads(raw)
        prefix = method_prefix(method)
        if isinstance(method, classmethod):
            prefix = "@classmethod\n" + prefix
        elif isinstance(method, staticmethod):
            prefix = "@staticmethod\n" + prefix
        signatures = [format_signature(name, inspect.signature(f), prefix) for f in overloads] or [
            format_signature(name, inspect.signature(raw), prefix)
        ]
        w.emit(code("\n".join(signatures)))
        if inspect.isasyncgenfunction(raw):
            w.emit("An async generator: iterate it with `async for` (do not `await` it).")
        w.emit(markdown_doc(raw.__doc__, w.linker, qualname))


# -- errors --------------------------------------------------------------------------------------


def error_tree(ekv: ModuleType, names: Iterable[str]) -> tuple[str, list[type]]:
    errors = {name: getattr(ekv, name) for name in names}
    root = ekv.Error
    children: dict[type, list[type]] = {}
    for cls in errors.values():
        if cls is root:
            continue
        parent = next(b for b in cls.__mro__[1:] if b in errors.values())
        children.setdefault(parent, []).append(cls)
    for kids in children.values():
        kids.sort(key=lambda c: c.__name__)

    lines: list[str] = []
    ordered: list[type] = []
    rows: list[tuple[str, str]] = []

    def builtin_bases(cls: type) -> str:
        extra = [b.__name__ for b in cls.__bases__ if b.__module__ == "builtins" and b is not Exception]
        return f" ({', '.join(extra)})" if extra else ""

    def walk(cls: type, prefix: str, last: bool, top: bool) -> None:
        ordered.append(cls)
        label = cls.__name__ + builtin_bases(cls)
        tree = label if top else f"{prefix}{'└── ' if last else '├── '}{label}"
        rows.append((tree, first_sentence(class_doc(cls))))
        kids = children.get(cls, [])
        for i, kid in enumerate(kids):
            walk(kid, "" if top else prefix + ("    " if last else "│   "), i == len(kids) - 1, False)

    walk(root, "", True, True)
    width = max(len(tree) for tree, _ in rows) + 2
    for tree, summary in rows:
        lines.append(f"{tree:<{width}}{summary}".rstrip())
    return "\n".join(lines), ordered


# -- the page ------------------------------------------------------------------------------------


def render() -> str:
    ekv, testing = import_ekv()
    public = list(ekv.__all__)
    public_names.update(public, testing.__all__)
    errors = sorted(n for n in public if isinstance(getattr(ekv, n), type) and issubclass(getattr(ekv, n), ekv.Error))
    placed = {n for _, _, names in SECTIONS for n in names} | set(errors) | {"__version__"}
    missing = [n for _, _, names in SECTIONS for n in names if n not in public]
    if missing:
        raise SystemExit(f"gen_api_docs: SECTIONS names {missing}, which are not in ekv.__all__")
    others = sorted(n for n in public if n not in placed)

    # Two passes: the first collects the anchors, so that the second can link forward too.
    anchors: dict[str, str] = {}
    for _ in range(2):
        w = Writer(anchors)
        build(w, ekv, testing, errors, others)
        anchors = w.linker.anchors
    return w.text()


def build(w: Writer, ekv: ModuleType, testing: ModuleType, errors: list[str], others: list[str]) -> None:
    w.emit(
        "# ekv API reference",
        f"<!-- Generated by scripts/gen_api_docs.py from the signatures and docstrings. Do not edit by hand: "
        f"run `{REGENERATE}` (tests/test_api_docs.py fails when this file is out of date). -->",
        "Every public name of `ekv` (`ekv.__all__`) and of `ekv.testing` (`ekv.testing.__all__`), with its "
        "signature and docstring. For a guided start read [quickstart.md](quickstart.md); for what the "
        "operations guarantee read [semantics.md](semantics.md); the options are explained in the "
        "[README](../README.md#options). Names in signatures that are not defined here (`Seconds`, "
        "`OverflowPolicy`, ...) are listed under [Type aliases](#type-aliases).",
    )
    toc = ["## Contents", ""]
    for title, _, names in SECTIONS:
        toc.append(f"- [{title}](#{github_anchor(title)}): " + ", ".join(f"`{n}`" for n in names))
    toc.append(f"- [Errors](#errors): `Error` and its {len(errors) - 1} subclasses")
    toc.append("- [Other names](#other-names): " + ", ".join(f"`{n}`" for n in [*others, "__version__"]))
    toc.append("- [ekv.testing](#ekvtesting): " + ", ".join(f"`{n}`" for n in sorted(testing.__all__)))
    toc.append("- [Type aliases](#type-aliases) and [other types in signatures](#other-types-in-signatures)")
    w.emit("\n".join(toc))

    for title, intro, names in SECTIONS:
        w.heading(2, title)
        w.emit(intro)
        for name in names:
            document(w, f"ekv.{name}", name, getattr(ekv, name), 3)

    w.heading(2, "Errors")
    tree, ordered = error_tree(ekv, errors)
    w.emit(
        "Every error ekv raises on purpose derives from `ekv.Error`; errors about bad arguments also derive "
        "from the built-in `ValueError` or `TypeError` (shown in parentheses). Siblings are sorted by name.",
        code(tree).replace("```python", "```text", 1),
    )
    for cls in ordered:
        document_error(w, ekv, cls)

    w.heading(2, "Other names")
    for name in others:
        document(w, f"ekv.{name}", name, getattr(ekv, name), 3)
    w.heading(3, "`ekv.__version__`", "__version__")
    w.emit("A `str`: the version of the installed ekv package (the `version` in `pyproject.toml`).")

    w.heading(2, "ekv.testing", "testing")
    w.emit(markdown_doc(testing.__doc__, w.linker, "testing"))
    for name in sorted(testing.__all__):
        document(w, f"ekv.testing.{name}", f"testing.{name}", getattr(testing, name), 3)

    w.heading(2, "Type aliases")
    rows = [f"- `{alias} = {annotation_text(resolve(m, a))}`" for alias, (m, a) in sorted(ALIASES.items())]
    w.emit(
        "Names used in the signatures above, as defined in the source:",
        "\n".join(rows),
        "Annotations are shown as written in the source (the modules use `from __future__ import annotations`).",
    )

    w.heading(2, "Other types in signatures")
    w.emit("Types that are not exported by `ekv` but that public functions return.")
    for module, attr in RETURNED_TYPES:
        cls = resolve(module, attr)
        document(w, f"{module}.{attr}", f"{module}.{attr}", cls, 3)


def document(w: Writer, public: str, qualname: str, obj: Any, level: int) -> None:
    if inspect.isclass(obj):
        document_class(w, public, qualname, obj, level)
    elif callable(obj):
        document_function(w, public, qualname, obj, level)
    else:
        w.heading(level, f"`{public}`", qualname)
        w.emit(f"A `{type(obj).__name__}`.")


def document_error(w: Writer, ekv: ModuleType, cls: type) -> None:
    w.heading(3, f"`ekv.{cls.__name__}`", cls.__name__)
    bases = ", ".join(f"`{b.__name__}`" for b in cls.__bases__)
    w.emit(f"*exception*, derives from {bases}")
    init = cls.__dict__.get("__init__")
    if init is not None and inspect.isfunction(init):
        w.emit(code(format_signature(cls.__name__, constructor_signature(cls), "")))
    w.emit(markdown_doc(class_doc(cls), w.linker, cls.__name__))


# -- main ----------------------------------------------------------------------------------------


def check(path: Path = OUTPUT) -> int:
    """0 if ``path`` holds exactly what :func:`render` produces, else 1 (with a diff on stderr)."""
    expected = render()
    try:
        actual = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        print(f"{path} does not exist; run: {REGENERATE}", file=sys.stderr)
        return 1
    if actual == expected:
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} is up to date")
        return 0
    diff = list(
        difflib.unified_diff(actual.splitlines(), expected.splitlines(), "docs/api.md", "generated", lineterm="", n=1)
    )
    shown = "\n".join(diff[:60]) + ("\n..." if len(diff) > 60 else "")
    print(
        f"{path} is out of date with the docstrings; run: {REGENERATE}\n{shown}",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is out of date")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    text = render()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    with OUTPUT.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
