"""The ``ekv`` command line (also ``python -m ekv``).

    ekv --version
    ekv demo [--yes]
    ekv serve  --data-dir DIR --name NAME [--listen HOST:PORT] [--peer HOST:PORT]... [--shards N] [--codec C]
    ekv put    --data-dir DIR KEY JSON [--ttl SECONDS]     (or --node HOST:PORT)
    ekv get    --data-dir DIR KEY
    ekv delete --data-dir DIR KEY
    ekv scan   --data-dir DIR [PREFIX]
    ekv keys   --data-dir DIR [PREFIX]
    ekv info   --data-dir DIR [--json]
    ekv backup --data-dir DIR DEST
    ekv check  --data-dir DIR

User errors print one line on stderr and exit non-zero; they never show a traceback. The cookie
for ``serve`` and ``--node`` comes from the ``EKV_COOKIE`` environment variable or
``--cookie-file``, never from the command line (where every user of the machine could read it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ekv._codec import BUILTIN_CODECS
from ekv._errors import AuthenticationError, Error, LockedError
from ekv._storage.datadir import LEGACY_CODEC
from ekv._usererror import UserError
from ekv._version import __version__

__all__ = ["main", "main_console"]

EXIT_OK, EXIT_ABSENT, EXIT_ERROR, EXIT_USAGE = 0, 1, 2, 64


# -- argument parsing ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ekv",
        description="ekv: an embedded, durable, eventually consistent key-value store.",
        epilog="Run 'ekv COMMAND --help' for a command's options. Docs: README.md, docs/.",
    )
    parser.add_argument("--version", action="version", version=f"ekv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "demo", help="start a local three-node cluster and show replication, a partition and its healing"
    )
    p.add_argument("--yes", "-y", action="store_true", help="run unattended (the default when stdin is not a terminal)")
    p.add_argument("--keep", action="store_true", help="keep the demo's data directories")
    p.set_defaults(run=_cmd_demo)

    _add_serve(sub)
    _add_data_commands(sub)

    p = sub.add_parser("backup", help="copy every shard online and consistently into DEST")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("dest", type=Path, metavar="DEST", help="a new (or empty) directory; it opens as a data dir")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(run=_cmd_backup)

    p = sub.add_parser("check", help="verify every shard (integrity, schema, identity); changes nothing")
    p.add_argument("--data-dir", type=Path, required=True)
    p.set_defaults(run=_cmd_check)
    return parser


def _target(p: argparse.ArgumentParser, *, create: bool = False) -> None:
    """The options of a command that works on one store: offline (--data-dir) or through a
    running node (--node), which argparse makes exclusive."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path, help="work on this data directory (offline)")
    where.add_argument("--node", metavar="HOST:PORT", help="talk to a running node instead")
    if create:
        p.add_argument("--name", default="ekv", help="instance name when creating a store (default: ekv)")
    p.add_argument(
        "--codec",
        choices=BUILTIN_CODECS,
        help="how values are encoded: an existing store's recorded codec is used (giving another is an error); "
        "a store being created gets this one (default: pickle)",
    )
    p.add_argument("--cookie-file", type=Path, help="file holding the cookie (default: $EKV_COOKIE)")


def _add_serve(sub: Any) -> None:
    """``ekv serve``: the one long-running command, with the node's own options."""
    p = sub.add_parser("serve", help="run a node until SIGTERM or Ctrl-C")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--name", required=True, help="instance name")
    p.add_argument("--listen", metavar="HOST:PORT", help="accept members here (port 0: any free port)")
    p.add_argument("--peer", metavar="HOST:PORT", action="append", default=[], help="a member to join (repeatable)")
    p.add_argument("--discovery", metavar="NAME:PORT", action="append", default=[], help="DNS name of the members")
    p.add_argument("--advertise", metavar="HOST:PORT", help="the address members should dial")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--cookie-file", type=Path, help="file holding the cookie (default: $EKV_COOKIE)")
    p.add_argument("--durability", choices=("normal", "full"), default="normal")
    p.add_argument(
        "--codec",
        choices=BUILTIN_CODECS,
        help="how values are encoded (default: the codec recorded in DIR, else pickle); every member needs the same",
    )
    p.add_argument("--log", choices=("info", "verbose", "quiet"), default="info", help="log level on stderr")
    p.add_argument("--allow-stale-startup", action="store_true", help="trust a data dir older than tombstone_ttl")
    p.add_argument(
        "--option",
        metavar="KEY=JSON",
        action="append",
        default=[],
        help="any other EKV option, e.g. --option tombstone_ttl=86400",
    )
    p.set_defaults(run=_cmd_serve)


def _add_data_commands(sub: Any) -> None:
    """The commands that read or write keys (or show info) of one store, offline or online."""
    p = sub.add_parser("put", help="store a JSON value under KEY")
    _target(p, create=True)
    p.add_argument("key")
    p.add_argument("value", metavar="JSON", help="the value, as JSON (quote it for the shell)")
    p.add_argument("--ttl", type=float, metavar="SECONDS", help="expire after SECONDS (may be fractional)")
    p.set_defaults(run=_cmd_put)

    p = sub.add_parser("get", help="print KEY's value as JSON (exit 1, nothing printed, if absent)")
    _target(p)
    p.add_argument("key")
    p.set_defaults(run=_cmd_get)

    p = sub.add_parser("delete", help="delete KEY")
    _target(p, create=True)
    p.add_argument("key")
    p.set_defaults(run=_cmd_delete)

    p = sub.add_parser("scan", help="print the keys under PREFIX and their values as one JSON object")
    _target(p)
    p.add_argument("prefix", nargs="?", default="")
    p.set_defaults(run=_cmd_scan)

    p = sub.add_parser("keys", help="print the keys under PREFIX, one per line")
    _target(p)
    p.add_argument("prefix", nargs="?", default="")
    p.set_defaults(run=_cmd_keys)

    p = sub.add_parser("info", help="show the node's identity, members and per-shard state")
    _target(p)
    p.add_argument("--json", action="store_true", help="print the info() dict as JSON")
    p.set_defaults(run=_cmd_info)

    p = sub.add_parser(
        "replace-voter",
        help="retire a stopped voter for good and re-read every consistent key through the other voters, "
        "so that a new (empty) voter may take its place (docs/operators.md)",
    )
    p.add_argument("node_id", help="the node id of the voter being replaced (it must be stopped)")
    p.add_argument("--node", metavar="HOST:PORT", required=True, help="a live voter of the cluster")
    p.add_argument("--cookie-file", type=Path, help="file holding the cookie (default: $EKV_COOKIE)")
    p.set_defaults(run=_cmd_replace_voter)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 absent key, 2 error, 64 usage)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, message already printed)
        return EXIT_USAGE if exc.code not in (0, None) else EXIT_OK
    try:
        result: int = args.run(args)
        return result
    except UserError as exc:
        return _fail(str(exc))
    except LockedError as exc:
        return _fail(f"{exc}; to use a running node, pass --node HOST:PORT instead of --data-dir")
    except AuthenticationError as exc:
        return _fail(f"{exc}; give the cluster's cookie in EKV_COOKIE or --cookie-file")
    except Error as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def main_console() -> None:
    """The ``ekv`` console script."""
    sys.exit(main())


def _fail(message: str) -> int:
    print(f"ekv: error: {message}", file=sys.stderr)
    return EXIT_ERROR


# -- helpers ------------------------------------------------------------------------------------


def _cookie(path: Path | None) -> bytes:
    if path is not None:
        try:
            return path.read_bytes().strip()
        except OSError as exc:
            raise UserError(f"cannot read the cookie file {str(path)!r}: {exc.strerror or exc}") from None
    return os.environ.get("EKV_COOKIE", "").encode()


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UserError(f"the value is not valid JSON ({exc}); quote strings: '\"text\"'") from None


def _dump(value: Any, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    out.write(json.dumps(value, ensure_ascii=False, default=repr) + "\n")


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / "ekv.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {str(path / 'ekv.json')!r}: {exc}") from None
    return data if isinstance(data, dict) else None


def _open_readonly(args: argparse.Namespace) -> Any:
    from ekv._storage.store import ShardedStore

    path: Path = args.data_dir
    if not path.exists() or _manifest(path) is None:
        raise UserError(f"there is no ekv store in {str(path)!r}")
    return ShardedStore.open_readonly(path, codec=args.codec)


def _values(store: Any) -> Any:
    """The argument and codec layer over a read-only store (the same checks, codec and errors as
    a running node's)."""
    from ekv._values import Values

    return Values(store)


def _open_writable(args: argparse.Namespace, *, create: bool) -> Any:
    import ekv

    path: Path = args.data_dir
    manifest = _manifest(path) if path.exists() else None
    if manifest is None and not create:
        raise UserError(f"there is no ekv store in {str(path)!r}")
    name = manifest["name"] if manifest else args.name
    shards = manifest["shards"] if manifest else 8
    return ekv.EKV(name, path, shards=shards, codec=_codec_for(path, manifest, args.codec), log=False)


def _codec_for(path: Path, manifest: dict[str, Any] | None, given: str | None) -> str:
    """The codec to open ``path`` with: ``given`` (``--codec``; the store checks it against the
    recorded one), else the recorded one, else the default for a new store."""
    if given is not None:
        return given
    if manifest is None:
        return "pickle"
    recorded = manifest.get("codec", LEGACY_CODEC)
    if recorded not in BUILTIN_CODECS:
        raise UserError(
            f"{str(path)!r} holds values encoded with the custom codec {recorded!r}, which the command line "
            "does not have; use the application that wrote them, or --node HOST:PORT against a node running it"
        )
    return str(recorded)


def _client(args: argparse.Namespace) -> Any:
    from ekv._cluster.client import Client

    client = Client(args.node, cookie=_cookie(args.cookie_file))
    client.connect()
    return client


def _with_target(
    args: argparse.Namespace,
    offline: Callable[[Any], int],
    online: Callable[[Any], int],
    *,
    write: bool = False,
    create: bool = False,
) -> int:
    if args.node:
        client = _client(args)
        try:
            return online(client)
        finally:
            client.close()
    store = _open_writable(args, create=create) if write else _open_readonly(args)
    try:
        return offline(store)
    finally:
        store.close()


# -- commands -------------------------------------------------------------------------------------


def _cmd_put(args: argparse.Namespace) -> int:
    value = _json_arg(args.value)
    if args.ttl is not None and not args.ttl > 0:
        raise UserError(f"--ttl must be a positive number of seconds, not {args.ttl}")

    def offline(kv: Any) -> int:
        kv.put(args.key, value, ttl=args.ttl)
        return EXIT_OK

    def online(client: Any) -> int:
        client.call("put", key=args.key, value=value, ttl=args.ttl)
        return EXIT_OK

    return _with_target(args, offline, online, write=True, create=True)


def _cmd_delete(args: argparse.Namespace) -> int:
    def offline(kv: Any) -> int:
        kv.delete(args.key)
        return EXIT_OK

    def online(client: Any) -> int:
        client.call("delete", key=args.key)
        return EXIT_OK

    return _with_target(args, offline, online, write=True)


def _cmd_get(args: argparse.Namespace) -> int:
    def show(found: Any, value: Any) -> int:
        if not found:
            return EXIT_ABSENT
        _dump(value)
        return EXIT_OK

    def offline(store: Any) -> int:
        found = _values(store).lookup(args.key)
        return show(found is not None, found[0] if found else None)

    def online(client: Any) -> int:
        found = client.call("get", key=args.key)
        return show(found is not None, found["value"] if found else None)

    return _with_target(args, offline, online)


def _cmd_scan(args: argparse.Namespace) -> int:
    def offline(store: Any) -> int:
        _dump(_values(store).scan(args.prefix))
        return EXIT_OK

    def online(client: Any) -> int:
        _dump(client.call("scan", prefix=args.prefix)["items"])
        return EXIT_OK

    return _with_target(args, offline, online)


def _cmd_keys(args: argparse.Namespace) -> int:
    def show(keys: list[str]) -> int:
        for key in keys:
            sys.stdout.write(key + "\n")
        return EXIT_OK

    return _with_target(
        args,
        lambda store: show(list(_values(store).iter_keys(args.prefix))),
        lambda client: show(client.call("keys", prefix=args.prefix)["keys"]),
    )


def _cmd_info(args: argparse.Namespace) -> int:
    from ekv._info import format_info, offline_info

    def show(info: dict[str, Any]) -> int:
        if args.json:
            _dump(info)
        else:
            sys.stdout.write(format_info(info))
        return EXIT_OK

    return _with_target(args, lambda store: show(offline_info(store)), lambda client: show(client.call("info")))


def _cmd_replace_voter(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        report = client.call("replace_voter", node_id=args.node_id)
    finally:
        client.close()
    print(
        f"voter {report['retired']} retired; {report['keys_reread']} consistent keys re-read through the other "
        "voters: the new voter may start now"
    )
    return EXIT_OK


def _cmd_backup(args: argparse.Namespace) -> int:
    from ekv._backup import backup

    progress = None if args.quiet or not sys.stderr.isatty() else _progress_bar
    report = backup(args.data_dir, args.dest, progress=progress)
    if progress is not None:
        sys.stderr.write("\n")
    print(
        f"backed up {report['shards']} shards ({report['bytes']:,} bytes) of {str(args.data_dir)!r} "
        f"to {str(args.dest)!r}"
    )
    return EXIT_OK


def _progress_bar(done: int, total: int) -> None:
    width = 40
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} pages")
    sys.stderr.flush()


def _cmd_check(args: argparse.Namespace) -> int:
    from ekv._backup import check

    problems, notes = check(args.data_dir)
    for note in notes:
        print(note)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if problems:
        print(f"{len(problems)} problem(s) found in {str(args.data_dir)!r}")
        return EXIT_ERROR
    print(f"{str(args.data_dir)!r} is healthy")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    import ekv

    options: dict[str, Any] = {}
    for item in args.option:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"--option {item!r}: expected KEY=JSON")
        options[key] = _json_arg(raw)
    if args.codec is not None and "codec" in options:
        raise UserError("give the codec once: --codec or --option codec=..., not both")
    if "codec" not in options:
        options["codec"] = _codec_for(
            args.data_dir, _manifest(args.data_dir) if args.data_dir.exists() else None, args.codec
        )
    level = {"info": logging.INFO, "verbose": logging.DEBUG, "quiet": logging.WARNING}[args.log]
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cookie = _cookie(args.cookie_file)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        kv = ekv.EKV(
            args.name,
            args.data_dir,
            shards=args.shards,
            listen=args.listen,
            peers=args.peer,
            discovery=args.discovery,
            advertise=args.advertise,
            cookie=cookie or None,
            durability=args.durability,
            allow_stale_startup=args.allow_stale_startup,
            log="verbose" if args.log == "verbose" else "info",
            **options,
        )
    except TypeError as exc:
        raise UserError(f"invalid --option: {exc}") from None
    try:
        print(
            f"ekv serve: instance {kv.name!r}, node {kv.node_id}, data {str(args.data_dir)!r}, "
            f"listening on {kv.listen_address or '(not listening)'}",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        kv.close()
    print("ekv serve: stopped", flush=True)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from ekv._demo import run_demo

    interactive = sys.stdin.isatty() and not args.yes
    return run_demo(interactive=interactive, keep=args.keep)
