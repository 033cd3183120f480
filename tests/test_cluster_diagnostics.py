"""What a node and the command-line client say when the cluster is misconfigured: members with
different cookies, and ``--node`` aimed at something that is not an ekv node. Real nodes, real
sockets; the messages must name the cause, and a node that keeps failing must neither go quiet
nor flood the log."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ekv
from ekv._cli import main
from ekv._cluster.client import Client
from ekv._info import format_info
from ekv.testing import wait_until

FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 1.0, "reconnect_max": 0.2, "shards": 2}


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., ekv.EKV]]:
    opened: list[ekv.EKV] = []

    def _make(**options: Any) -> ekv.EKV:
        kv = ekv.EKV("c", tmp_path / f"n{len(opened)}", **{**FAST, "listen": "127.0.0.1:0", **options})
        opened.append(kv)
        return kv

    yield _make
    for kv in opened:
        kv.close()


def _member(kv: ekv.EKV, address: str) -> dict[str, Any]:
    return next(m for m in kv.info()["members"].values() if m.get("address") == address)


def test_a_cookie_mismatch_is_a_warning_on_both_sides_once_and_shown_in_info(
    make: Callable[..., ekv.EKV], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ekv")
    a = make(cookie="right")
    address = a.listen_address
    assert address is not None
    b = make(cookie="wrong", peers=[address])
    # let b retry a few times: the warnings must not repeat with every attempt
    wait_until(lambda: _member(b, address)["attempts"] >= 5, 60)

    member = _member(b, address)
    assert member["state"] == "auth failed" and not member["connected"]
    assert "authentication failed: cookie mismatch" in member["last_error"]
    refused = a.info()["refused"]
    assert [item["node_id"] for item in refused.values()] == [b.node_id]
    item = next(iter(refused.values()))
    assert "authentication failed: cookie mismatch" in item["reason"] and item["count"] >= 3
    assert "REFUSED" in format_info(a.info())

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    dialer = [m for m in warnings if m.startswith("ekv[c] cannot join") and "cookie mismatch" in m]
    listener = [m for m in warnings if m.startswith("ekv[c] refused a connection") and "cookie mismatch" in m]
    assert len(dialer) == 1 and len(listener) == 1, warnings
    for message in dialer + listener:
        assert "cookie mismatch" in message and "EKV_COOKIE" in message and "--cookie-file" in message
    assert address in dialer[0] and b.node_id in listener[0]


def test_a_cookie_mismatch_in_both_directions_marks_the_member_on_both_sides(make: Callable[..., ekv.EKV]) -> None:
    a = make(cookie="one")
    b = make(cookie="two", peers=[a.listen_address])
    a.connect(b.listen_address)  # type: ignore[arg-type]
    for kv, other in ((a, b), (b, a)):
        address = other.listen_address
        assert address is not None
        wait_until(lambda kv=kv, address=address: _member(kv, address)["state"] == "auth failed", 60)
        assert "cookie mismatch" in _member(kv, address)["last_error"]


# -- --node aimed at something else -----------------------------------------------------------------


@pytest.fixture
def http_server() -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(30)


@pytest.fixture
def garbage_server() -> Iterator[str]:
    """Answers every connection with bytes that are no ekv frame, then closes it."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"\xde\xad\xbe\xef" * 16)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    address = listener.getsockname()
    try:
        yield f"127.0.0.1:{address[1]}"
    finally:
        stop.set()
        socket.create_connection(address, timeout=5).close()  # wakes the accept() (close() would not)
        thread.join(30)
        listener.close()


def test_the_client_says_an_http_port_is_not_an_ekv_node(http_server: str) -> None:
    with pytest.raises(ekv.ProtocolError) as caught:
        Client(http_server, timeout=30).connect()
    message = str(caught.value)
    assert f"{http_server} does not speak the ekv protocol (it answered like an HTTP server)" == message


def test_the_client_says_garbage_is_not_ekv(garbage_server: str) -> None:
    with pytest.raises(ekv.ProtocolError, match=f"{garbage_server} does not speak the ekv protocol") as caught:
        Client(garbage_server, timeout=30).connect()
    assert "declared" not in str(caught.value)


def test_ekv_get_node_on_an_http_port_is_one_clear_line(
    http_server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EKV_COOKIE", "x")
    assert main(["get", "--node", http_server, "k"]) == 2
    err = capsys.readouterr().err
    assert err == f"ekv: error: {http_server} does not speak the ekv protocol (it answered like an HTTP server)\n"


def test_ekv_get_node_with_the_wrong_cookie_names_the_cookie(
    make: Callable[..., ekv.EKV], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make(cookie="right", log=False)
    monkeypatch.setenv("EKV_COOKIE", "wrong")
    assert main(["get", "--node", a.listen_address, "k"]) == 2  # type: ignore[list-item]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cookie mismatch" in err and "EKV_COOKIE" in err and "--cookie-file" in err
    monkeypatch.setenv("EKV_COOKIE", "right")
    assert main(["get", "--node", a.listen_address, "k"]) == 1  # type: ignore[list-item]


def test_a_member_address_that_is_not_ekv_is_named_in_info(make: Callable[..., ekv.EKV], garbage_server: str) -> None:
    b = make(cookie="c", peers=[garbage_server], log=False)
    wait_until(lambda: "does not speak the ekv protocol" in (_member(b, garbage_server)["last_error"] or ""), 60)
