"""The README's promises: its commands, options and operations exist and its quickstart runs."""

from __future__ import annotations

import ast
import contextlib
import io
import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import ekv
from ekv import _options
from ekv._options import DEFAULTS, AsyncOptions, Options

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
    sync_params = {"name", "data_dir", *Options.__annotations__}
    async_params = {"name", "data_dir", *AsyncOptions.__annotations__}
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


def readme_error_tree() -> dict[str, tuple[str | None, set[str]]]:
    """The README's error tree: name -> (its parent in the tree, the built-in bases in parentheses)."""
    tree = README.split("## Errors", 1)[1].split("```", 2)[1]
    found: dict[str, tuple[str | None, set[str]]] = {}
    stack: list[str] = []
    for line in tree.splitlines():
        match = re.match(r"^((?:│   | {4})*)(├── |└── )?([A-Z][A-Za-z]+)(?: \(([^)]*)\))?", line)
        if match is None:
            continue
        depth = len(match[1]) // 4 + (1 if match[2] else 0)
        del stack[depth:]
        builtins = {b.strip() for b in (match[4] or "").split(",") if b.strip()}
        found[match[3]] = (stack[-1] if stack else None, builtins)
        stack.append(match[3])
    return found


def test_the_readme_lists_every_error_class_where_it_sits() -> None:
    """The README's tree names exactly ekv's exception classes, each under its real base class
    and with its built-in bases (ValueError, TypeError, TimeoutError)."""
    from ekv import _errors

    classes = {
        name: cls
        for name, cls in vars(_errors).items()
        if isinstance(cls, type) and issubclass(cls, ekv.Error) and cls.__module__ == _errors.__name__
    }
    tree = readme_error_tree()
    missing, unknown = sorted(set(classes) - set(tree)), sorted(set(tree) - set(classes))
    assert not missing and not unknown, f"missing from the README: {missing}, not ekv errors: {unknown}"
    for name, (parent, builtins) in tree.items():
        cls = classes[name]
        assert getattr(ekv, name) is cls, f"{name} is not exported as ekv.{name}"
        also = {base for base in builtins if base in classes}  # a second ekv base, in parentheses
        bases = [base.__name__ for base in cls.__bases__ if issubclass(base, ekv.Error)]
        assert bases[:1] == ([parent] if parent else []), f"{name} derives from {bases}, the README says {parent}"
        assert set(bases[1:]) == also, f"{name} derives from {bases}, the README says {parent} and {sorted(also)}"
        others = {base.__name__ for base in cls.__bases__ if not issubclass(base, ekv.Error)} - {"Exception"}
        assert others == builtins - also, (
            f"{name} also derives from {sorted(others)}, the README says {sorted(builtins)}"
        )


def test_quickstart_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "after a restart" in result.stdout
    assert "expired" not in result.stderr


# -- every `ekv ...` command the docs show is one the parser accepts ----------------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"sh", "bash", "shell", "console"}
COMMAND = re.compile(r"^(?:[A-Z_]+=\S*\s+)*(?:ekv|python3? -m ekv)(?=\s|$)")
REFERENCE = re.compile(COMMAND.pattern + r"(?:$|\s+(?:-|[a-z][a-z-]*(?:\s|$)))")
"""An ``ekv`` that a command word or option follows (not prose such as "ekv (public)")."""


def doc_commands() -> list[tuple[str, str, bool]]:
    """``(where, command, complete)`` for every ``ekv`` command line in the docs: lines of shell
    code blocks (``complete``: they must run as shown) and inline code spans or lines of other
    blocks that start with ``ekv`` followed by a command word (references, which may leave out
    required arguments, as in "`ekv get --data-dir` refuses ...")."""
    found: list[tuple[str, str, bool]] = []
    for path in DOCS:
        lang: str | None = None
        for number, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            if line.startswith("```"):
                lang = None if lang is not None else line[3:].strip()
                continue
            if lang is not None:
                if lang in ("python", "py", "json", "toml", "text"):
                    continue
                for part in re.split(r"&&|;", line):
                    part = part.strip().removeprefix("$ ")
                    complete = lang in SHELL_BLOCKS
                    if (COMMAND if complete else REFERENCE).match(part):
                        found.append((where, part, complete))
            else:
                spans = re.findall(r"`([^`\n]+)`", line)
                found.extend((where, span, False) for span in spans if REFERENCE.match(span))
    return found


def check_command(parser: Any, command: str, complete: bool) -> str | None:
    """Why ``command`` does not match the parser's grammar, or None. Synopsis notation
    (``[--opt X]``, ``(A | B)``, ``...``) and placeholders are allowed in references: each
    option must exist for its subcommand (with a valid choice when one is given), and there must
    not be more positional words than the subcommand takes."""
    words = shlex.split(COMMAND.sub("ekv", command), comments=True)[1:]
    if complete:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                parser.parse_args(words)
            except SystemExit as exc:
                if exc.code:
                    return err.getvalue().strip().splitlines()[-1]
        return None
    words = [w for w in (w.strip("[]()") for w in words) if w and w not in ("|", "...")]
    words = [w.removesuffix("...").strip("[]()") for w in words]
    if not words:
        return None
    if words[0].startswith("-"):
        return None if words[0] in parser._option_string_actions else f"no option {words[0]}"
    commands = parser._subparsers._group_actions[0].choices
    if words[0] not in commands:
        return f"no command {words[0]!r}"
    sub = commands[words[0]]
    positionals = [a for a in sub._actions if not a.option_strings]
    extra: list[str] = []
    rest = iter(words[1:])
    for word in rest:
        if not word.startswith("-"):
            extra.append(word)
            continue
        name, eq, value = word.partition("=")
        action = sub._option_string_actions.get(name)
        if action is None:
            return f"no option {name} for 'ekv {words[0]}'"
        if action.nargs == 0:
            continue
        if not eq:
            value = next(rest, "...")
        if action.choices and value != "..." and not set(value.split("|")) <= set(action.choices):
            return f"{name} {value}: not one of {sorted(action.choices)}"
    if len(extra) > len(positionals):
        return f"'ekv {words[0]}' takes {len(positionals)} positional argument(s), the docs give {extra}"
    return None


def test_the_docs_show_only_commands_the_parser_accepts() -> None:
    from ekv._cli import _parser

    parser = _parser()
    found = doc_commands()
    assert len([c for c in found if c[2]]) >= 7 and len(found) > 30  # the extraction works
    wrong = [
        f"{where}: `{command}`: {why}"
        for where, command, complete in found
        if (why := check_command(parser, command, complete))
    ]
    assert not wrong, "\n".join(wrong)


def test_the_docs_command_check_catches_mistakes() -> None:
    from ekv._cli import _parser

    parser = _parser()
    assert check_command(parser, "ekv check <data_dir>", False)
    assert check_command(parser, "ekv check /some/dir", True)
    assert check_command(parser, "ekv get --data-dir d --ttl 1 k", True)
    assert check_command(parser, "ekv serve --durability sometimes", False)
    assert check_command(parser, "ekv chek", False)
    assert check_command(parser, "ekv put --node", False) is None
    assert check_command(parser, "ekv serve --durability normal|full [--peer HOST:PORT]...", False) is None
    assert check_command(parser, "EKV_COOKIE=x ekv get --node h:1 k  # a comment", True) is None


_UNITS = {"s": 1, "day": 86_400, "days": 86_400, "KiB": 1024, "MiB": 1024 * 1024}
_MEANS_NONE = {"system clock", "listen address"}  # what a None default stands for, in words


def parse_default(text: str) -> Any:
    """A default as the docs write it ("7 days", "256 MiB", "10,000", `"info"`, `()`, "system
    clock") as the value in ekv._options.DEFAULTS (durations in seconds, sizes in bytes)."""
    text = text.strip().strip("`").strip()
    if text in _MEANS_NONE:
        return None
    match = re.fullmatch(r"([\d,.]+)(?: (s|days?|KiB|MiB))?", text)
    if match:
        number = float(match.group(1).replace(",", ""))
        return number * _UNITS[match.group(2)] if match.group(2) else number
    return ast.literal_eval(text)


def test_the_readme_options_table_matches_the_defaults_table() -> None:
    """The README's options table lists exactly the options (and name, data_dir), each with the
    default of ekv._options.DEFAULTS, the one table of defaults."""
    documented: dict[str, Any] = {}
    for row in table_after("## Options"):
        names = [part.strip().strip("`") for part in row[0].split("/")]
        defaults = row[1].split(" / ") if " / " in row[1] else [row[1]] * len(names)  # "a / b" or one for both
        assert len(defaults) == len(names), row
        for name, default in zip(names, defaults, strict=True):
            assert name not in documented, f"{name} is in the README's options table twice"
            documented[name] = default if name in ("name", "data_dir") else parse_default(default)
    assert documented.pop("name") == "required" and documented.pop("data_dir") == "required"
    assert set(documented) == set(AsyncOptions.__annotations__)
    for name, default in documented.items():
        expected = DEFAULTS[name]
        assert default == expected and isinstance(default, bool) == isinstance(expected, bool), (
            f"README says {name} defaults to {default!r}, ekv._options.DEFAULTS says {expected!r}"
        )


def test_every_option_docstring_states_the_default_of_the_table() -> None:
    """Each option's docstring (what an IDE shows) ends with "Default X." and X is its default in
    ekv._options.DEFAULTS, so the docstrings cannot drift from the table either."""
    tree = ast.parse(Path(_options.__file__).read_text(encoding="utf-8"))
    docs: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item, following in itertools.pairwise(node.body):
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    assert isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant), item.target.id
                    docs[item.target.id] = " ".join(str(following.value.value).split())
    assert set(docs) == set(AsyncOptions.__annotations__) == set(DEFAULTS)
    for name, doc in docs.items():
        match = re.search(r".*Default (.+?)(?::[^.]*)?\.$", doc)  # the last "Default"
        assert match, f"the docstring of option {name} does not end with 'Default ...': {doc!r}"
        stated, expected = parse_default(match.group(1)), DEFAULTS[name]
        assert stated == expected and isinstance(stated, bool) == isinstance(expected, bool), (
            f"the docstring of {name} says its default is {stated!r}, ekv._options.DEFAULTS says {expected!r}"
        )
