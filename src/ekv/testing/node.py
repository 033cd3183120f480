"""A node process for multi-process tests, driven through JSON lines on stdin/stdout.

    python -m ekv.testing.node --name c --data-dir DIR --listen 127.0.0.1:0 [--peer HOST:PORT]...
                               [--option KEY=JSON]...

It opens an :class:`ekv.EKV` with ``codec="json"``, prints one line
``{"ready": true, "node_id": ..., "listen": ...}``, then answers one JSON line per command:

    {"op": "put", "key": K, "value": V, "ttl": S?}   -> {"ok": true, "version": [ts, origin]}
    {"op": "delete", "key": K}                       -> {"ok": true, "version": [ts, origin]}
    {"op": "get", "key": K}                          -> {"ok": true, "value": V | null}
    {"op": "keys", "prefix": P} / {"op": "scan", "prefix": P}
    {"op": "dump"}     -> every stored entry, tombstones included: [[key, ts, origin, value|null], ...]
    {"op": "members"}  -> {node_id: connected?}
    {"op": "info"}     -> the info() dict (JSON-safe)
    {"op": "metrics"}  -> {"metrics": kv.metrics()}
    {"op": "cluster", "keys": [...]?} -> the cluster's own report (members, membership, broadcast,
                          what info() leaves out), only ``keys`` of it if given
    {"op": "block", "node_ids": [...]}   cut (and refuse) connections to these members
                                         (:func:`ekv.testing._hooks.cut_off`; [] heals)
    {"op": "connect", "address": A}
    {"op": "gc"}
    {"op": "close"}    -> closes the store and exits 0

Errors come back as {"ok": false, "error": "...", "type": "..."}. With ``EKV_TESTING_LOG=INFO``
(or another level) in the environment, ekv's log goes to stderr. Used by
:mod:`ekv.testing.cluster` and :mod:`ekv.testing._internal.chaos`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import ekv
from ekv.testing._hooks import cut_off, node_of, run_gc


def handle(kv: ekv.EKV, command: dict[str, Any]) -> Any:
    op = command["op"]
    if op == "put":
        version = kv.put(command["key"], command["value"], ttl=command.get("ttl"))
        return {"version": list(version)}
    if op == "delete":
        return {"version": list(kv.delete(command["key"]))}
    if op == "get":
        found = kv.lookup(command["key"])
        return {"value": None if found is None else found[0], "version": None if found is None else list(found[1])}
    if op == "keys":
        return {"keys": kv.keys(command.get("prefix", ""))}
    if op == "scan":
        return {"items": kv.scan(command.get("prefix", ""))}
    if op == "dump":
        store = node_of(kv).store
        return {
            "entries": [
                [e.key, e.timestamp_ns, e.origin, None if e.value is None else e.value.decode(), e.expires_at_ns]
                for e in store.entries()
            ]
        }
    if op == "members":
        members = kv.info()["members"]
        return {"members": {k: bool(v.get("connected")) for k, v in members.items() if v.get("node_id")}}
    if op == "info":
        return {"info": kv.info()}
    if op == "metrics":
        return {"metrics": kv.metrics()}
    if op == "cluster":
        cluster = node_of(kv).cluster
        if cluster is None:
            raise ValueError("the store is not clustered")
        own = cluster.info()
        keys = command.get("keys")
        return {"cluster": own if keys is None else {k: own.get(k) for k in keys}}
    if op == "block":
        cut_off(kv, command["node_ids"])
        return {}
    if op == "connect":
        kv.connect(command["address"])
        return {}
    if op == "gc":
        report = run_gc(kv)
        return {"expired": report.expired, "purged": report.purged, "log_truncated": report.log_truncated}
    if op == "clear_quarantine":
        return {"cleared": kv.clear_quarantine(command["node_id"])}
    raise ValueError(f"unknown op {op!r}")


def parser(description: str | None = __doc__) -> argparse.ArgumentParser:
    """The command line of a node process (extended by :mod:`ekv.testing._internal.chaos.member`)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--listen")
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--option", action="append", default=[], help="KEY=JSON, any EKV option")
    return parser


def open_store(args: argparse.Namespace) -> ekv.EKV:
    """Open the store the arguments describe and print the ready line."""
    level = os.environ.get("EKV_TESTING_LOG")
    if level:  # opt-in: a stderr pipe nobody reads must not fill up in ordinary tests
        logging.basicConfig(
            level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    options: dict[str, Any] = {}
    for item in args.option:
        key, _, raw = item.partition("=")
        options[key] = json.loads(raw)
    options.setdefault("codec", "json")
    options.setdefault("log", False)
    kv = ekv.EKV(args.name, args.data_dir, listen=args.listen, peers=args.peer, **options)
    sys.stdout.write(json.dumps({"ready": True, "node_id": kv.node_id, "listen": kv.listen_address}) + "\n")
    sys.stdout.flush()
    return kv


def serve(kv: ekv.EKV, answer: Callable[[ekv.EKV, dict[str, Any]], Any] = handle) -> None:
    """Answer commands on stdin until ``close`` (or the end of stdin), then close the store."""
    out = sys.stdout
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            command = json.loads(line)
            if command.get("op") == "close":
                break
            try:
                reply = {"ok": True, **answer(kv, command)}
            except Exception as exc:
                reply = {"ok": False, "error": str(exc), "type": type(exc).__name__}
            out.write(json.dumps(reply, default=str) + "\n")
            out.flush()
    finally:
        kv.close()
    out.write(json.dumps({"ok": True, "closed": True}) + "\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    serve(open_store(parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
