"""The app that tests/test_servers.py serves with gunicorn and uvicorn: the same code in every
worker, as a user would write it. The store opens at import (so with gunicorn ``--preload`` it
opens in the master, before fork), from environment variables:

- ``EKV_TEST_DATA``: the data directory every worker opens;
- ``EKV_TEST_OPTIONS``: optional JSON object of further options (listen, peers, cookie...).

``wsgi`` (gunicorn sync workers) opens an EKV, ``asgi`` (uvicorn, gunicorn's uvicorn worker) an
AsyncEKV; each is created when the server first looks it up, which is import time for both
servers. Endpoints: ``PUT /k/<key>`` (the body, as text, is the value), ``GET /k/<key>`` (the
value, or 404), ``GET /who`` (JSON: this pid, its role, the node process's pid). An exception
answers 500 with its traceback, so that a failing test shows what the worker saw."""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import ekv

NAME = "srv"
SHARDS = 2


def _options() -> dict[str, Any]:
    options: dict[str, Any] = json.loads(os.environ.get("EKV_TEST_OPTIONS") or "{}")
    return options


def _who(processes: dict[str, Any]) -> bytes:
    """``node`` is None between a node process's exit and another's takeover; ``opens``: how many
    opens of the directory are alive (one per worker when all have started)."""
    node = processes["node_process"]
    return json.dumps(
        {"pid": os.getpid(), "role": processes["role"], "node": node and node["pid"], "opens": len(processes["opens"])}
    ).encode()


# -- WSGI ----------------------------------------------------------------------------------------


def _make_wsgi() -> Callable[..., Iterable[bytes]]:
    kv = ekv.EKV(NAME, os.environ["EKV_TEST_DATA"], shards=SHARDS, log=False, **_options())

    def handle(method: str, path: str, body: bytes) -> tuple[str, bytes]:
        if path == "/who":
            return "200 OK", _who(kv.info()["processes"])
        if path.startswith("/k/"):
            key = path[3:]
            if method == "PUT":
                kv.put(key, body.decode())
                return "200 OK", b"ok"
            value = kv.get(key)
            return ("404 Not Found", b"") if value is None else ("200 OK", value.encode())
        return "404 Not Found", b""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            status, payload = handle(environ["REQUEST_METHOD"], environ["PATH_INFO"], body)
        except Exception:
            status, payload = "500 Internal Server Error", traceback.format_exc().encode()
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(payload)))])
        return [payload]

    return app


# -- ASGI ----------------------------------------------------------------------------------------

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _make_asgi() -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    kv = ekv.AsyncEKV(NAME, os.environ["EKV_TEST_DATA"], shards=SHARDS, log=False, **_options())

    async def handle(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if path == "/who":
            return 200, _who((await kv.info())["processes"])
        if path.startswith("/k/"):
            key = path[3:]
            if method == "PUT":
                await kv.put(key, body.decode())
                return 200, b"ok"
            value = await kv.get(key)
            return (404, b"") if value is None else (200, value.encode())
        return 404, b""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            status, payload = await handle(scope["method"], scope["path"], body)
        except Exception:
            status, payload = 500, traceback.format_exc().encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


_made: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """``wsgi`` and ``asgi`` are made on first lookup (the server's import of the app), so a
    worker opens only the store its server needs."""
    makers = {"wsgi": _make_wsgi, "asgi": _make_asgi}
    if name not in makers:
        raise AttributeError(name)
    if name not in _made:
        _made[name] = makers[name]()
    return _made[name]
