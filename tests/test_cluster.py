"""Clusters of real ekv nodes over TCP on 127.0.0.1, inside this process: replication, sync,
membership, partitions, security. (Separate processes, kill -9 and SIGSTOP: test_cluster_procs.py)"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ekv
from ekv._cluster import auth, wire
from ekv._cluster.messages import PROTOCOL_VERSION, Hello
from ekv.testing import entries, node_of, partition, run_gc, wait_until
from ekv.testing._hooks import cut_off

FAST = {
    "heartbeat_interval": 0.1,
    "heartbeat_timeout": 1.0,
    "anti_entropy_interval": 0.3,
    "reconnect_max": 0.3,
    "log": False,
}


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., ekv.EKV]]:
    opened: list[ekv.EKV] = []
    counter = [0]

    def _make(name: str = "c", **options: Any) -> ekv.EKV:
        counter[0] += 1
        options = {**FAST, "listen": "127.0.0.1:0", "shards": 2, **options}
        kv = ekv.EKV(name, tmp_path / f"n{counter[0]}", **options)
        opened.append(kv)
        return kv

    yield _make
    for kv in opened:
        kv.close()


def state(kv: ekv.EKV) -> dict[str, tuple[int, str, bytes | None]]:
    return {e.key: (e.timestamp_ns, e.origin, e.value) for e in entries(kv)}


def converged(*nodes: ekv.EKV) -> bool:
    first = state(nodes[0])
    return all(state(n) == first for n in nodes[1:])


def connected(kv: ekv.EKV, count: int) -> bool:
    members = kv.info()["members"]
    return sum(1 for m in members.values() if m.get("connected")) >= count


def test_two_nodes_replicate_puts_deletes_and_ttl(make: Callable[..., ekv.EKV]) -> None:
    a = make()
    b = make(peers=[a.listen_address])
    wait_until(lambda: connected(a, 1) and connected(b, 1))
    version = a.put("user/1", {"name": "Alice"})
    wait_until(lambda: b.lookup("user/1") == ({"name": "Alice"}, version))
    b.delete("user/1")
    wait_until(lambda: a.get("user/1") is None)
    a.put("s", "token", ttl=60)
    wait_until(lambda: b.get("s") == "token")
    assert b.lookup("s") == a.lookup("s")
    wait_until(lambda: converged(a, b))


def test_remote_writes_fire_events_and_losers_do_not(make: Callable[..., ekv.EKV]) -> None:
    a = make()
    b = make(peers=[a.listen_address])
    wait_until(lambda: connected(b, 1))
    sub = b.subscribe("room/")
    a.put("room/1", "x")
    a.delete("room/1")
    events: list[ekv.Event] = []
    wait_until(lambda: events.extend(sub.get(timeout=5)) or len(events) >= 2)
    assert [(e.type, e.key, e.value) for e in events] == [("put", "room/1", "x"), ("delete", "room/1", "x")]


def test_late_joiner_gets_everything_by_sync(make: Callable[..., ekv.EKV]) -> None:
    a = make()
    for i in range(1200):
        a.put(f"k/{i:04d}", i)
    for i in range(0, 1200, 3):
        a.delete(f"k/{i:04d}")
    run_gc(a)  # a node without members truncates its log: the joiner must get a full sync
    b = make(peers=[a.listen_address], sync_chunk_entries=100)
    wait_until(lambda: converged(a, b), timeout=60)
    assert len(b.keys("k/")) == 800


def test_joining_through_one_member_reaches_the_mesh(make: Callable[..., ekv.EKV]) -> None:
    a = make()
    b = make(peers=[a.listen_address])
    c = make(peers=[b.listen_address])
    wait_until(lambda: all(connected(n, 2) for n in (a, b, c)), message="gossip did not complete the mesh")
    c.put("from-c", 1)
    wait_until(lambda: a.get("from-c") == 1)


def test_connect_at_run_time(make: Callable[..., ekv.EKV]) -> None:
    a = make()
    b = make()
    b.connect(a.listen_address)  # type: ignore[arg-type]
    wait_until(lambda: connected(a, 1))
    b.put("x", 1)
    wait_until(lambda: a.get("x") == 1)


def test_named_instances_share_a_listener_and_stay_apart(make: Callable[..., ekv.EKV]) -> None:
    us_a = make("us")
    port = us_a.listen_address.rsplit(":", 1)[1]  # type: ignore[union-attr]
    eu_a = make("eu", listen=f"127.0.0.1:{port}")  # same socket, another instance
    us_b = make("us", peers=[f"127.0.0.1:{port}"])
    eu_b = make("eu", peers=[f"127.0.0.1:{port}"])
    wait_until(lambda: connected(us_b, 1) and connected(eu_b, 1))
    us_a.put("k", "us")
    eu_a.put("k", "eu")
    wait_until(lambda: us_b.get("k") == "us" and eu_b.get("k") == "eu")
    assert us_a.info()["members"].keys() == {node_of(us_b).node_id}


def test_partition_both_sides_write_and_heal_converges(make: Callable[..., ekv.EKV]) -> None:
    a, b, c = make(), make(), make()
    b.connect(a.listen_address)  # type: ignore[arg-type]
    c.connect(a.listen_address)  # type: ignore[arg-type]
    wait_until(lambda: all(connected(n, 2) for n in (a, b, c)))
    a.put("shared", "before")
    wait_until(lambda: converged(a, b, c))
    partition([a, b], [c])
    wait_until(lambda: not connected(c, 1))
    a.put("shared", "side-ab")
    b.delete("gone")
    c.put("only-c", 1)
    winner = c.put("shared", "side-c")  # the later write wins everywhere after the heal
    c.put("gone", "c thinks it lives")
    partition([a, b, c])
    wait_until(lambda: converged(a, b, c), timeout=60)
    assert a.lookup("shared") == ("side-c", winner)
    assert a.get("only-c") == 1
    assert b.get("gone") == "c thinks it lives"


def test_non_transitive_partition_relays_through_the_middle(make: Callable[..., ekv.EKV]) -> None:
    a, b, c = make(), make(), make()
    b.connect(a.listen_address)  # type: ignore[arg-type]
    c.connect(b.listen_address)  # type: ignore[arg-type]
    wait_until(lambda: all(connected(n, 2) for n in (a, b, c)))
    cut_off(a, {node_of(c).node_id})
    cut_off(c, {node_of(a).node_id})
    wait_until(lambda: not any(m.get("connected") for m in [a.info()["members"].get(node_of(c).node_id, {})]))
    version = a.put("relay", "via b")
    wait_until(lambda: c.lookup("relay") == ("via b", version), timeout=10, message="C did not get A's write via B")


def test_anti_entropy_heals_a_connected_member_that_missed_a_message(make: Callable[..., ekv.EKV]) -> None:
    a = make()
    b = make(peers=[a.listen_address])
    wait_until(lambda: connected(a, 1) and connected(b, 1))
    cluster = node_of(a).cluster
    assert cluster is not None and cluster.replicator is not None
    rep = cluster.replicator
    original = rep._send
    dropped = []

    def drop_live(peer_id: str, message: Any) -> None:
        if type(message).__name__ == "Live":
            dropped.append(message)
            return  # the message is lost, the connection stays up
        original(peer_id, message)

    rep._send = drop_live
    a.put("missed", 1)
    wait_until(lambda: dropped)
    rep._send = original
    wait_until(lambda: b.get("missed") == 1, timeout=10, message="anti-entropy did not repair the lost write")
    assert connected(b, 1)


def test_writes_during_an_active_sync_are_kept(make: Callable[..., ekv.EKV]) -> None:
    a = make()
    for i in range(3000):
        a.put(f"bulk/{i:05d}", "x" * 100)
    b = make(peers=[a.listen_address], sync_chunk_entries=50)
    for i in range(300):
        a.put(f"during/{i}", i)
        b.put(f"b-during/{i}", i)
    wait_until(lambda: converged(a, b), timeout=60)


def test_tombstones_purged_and_log_truncation_force_full_sync(make: Callable[..., ekv.EKV]) -> None:
    a = make(log_retention=1, tombstone_ttl=3600, gc_interval=600)
    for i in range(100):
        a.put(f"k{i}", i)
    run_gc(a)
    b = make(peers=[a.listen_address])
    wait_until(lambda: converged(a, b))
    syncs = a.info()["members"][node_of(b).node_id]["replication"]["syncs_out"]
    assert syncs["full"] >= 1


def test_sync_counters_survive_a_new_session(make: Callable[..., ekv.EKV]) -> None:
    """A member's sync counts (info and the ``ekv_syncs_*_total`` metrics) cover every session
    since this node started: a reconnect, or the duplicate connection of two members dialing
    each other at once replacing the first, does not reset them to zero."""
    a = make(log_retention=1, tombstone_ttl=3600, gc_interval=600)
    for i in range(100):
        a.put(f"k{i}", i)
    run_gc(a)  # alone: the log is truncated, so b's first sync is a full one
    b = make(peers=[a.listen_address])
    wait_until(lambda: converged(a, b))
    b_id = node_of(b).node_id

    def replication() -> dict[str, Any]:
        result: dict[str, Any] = a.info()["members"][b_id].get("replication") or {}
        return result

    wait_until(lambda: replication().get("syncs_out", {}).get("full", 0) >= 1)
    first_session = replication()["connected_at_ns"]
    partition([a], [b])
    wait_until(lambda: not connected(a, 1) and not connected(b, 1))
    partition([a, b])
    wait_until(lambda: replication().get("connected_at_ns", first_session) != first_session, timeout=60)
    assert replication()["syncs_out"]["full"] >= 1
    assert a.metrics()[f'ekv_syncs_sent_total{{peer="{b_id}",kind="full"}}'] >= 1
    assert b.metrics()[f'ekv_syncs_received_total{{peer="{node_of(a).node_id}",kind="full"}}'] >= 1


# -- security: every refusal is logged, the node keeps serving, no data changes ---------------------


def _port(kv: ekv.EKV) -> int:
    return int(kv.listen_address.rsplit(":", 1)[1])  # type: ignore[union-attr]


def test_wrong_cookie_and_missing_cookie_are_refused(make: Callable[..., ekv.EKV]) -> None:
    a = make(cookie="right")
    a.put("k", "a")
    wrong = make(cookie="wrong", peers=[a.listen_address])
    none = make(peers=[a.listen_address])
    right = make(cookie="right", peers=[a.listen_address])
    wait_until(lambda: right.get("k") == "a")
    wrong.put("evil", 1)
    none.put("evil", 2)
    assert not connected(wrong, 1) and not connected(none, 1)
    assert a.get("evil") is None
    errors = {m["address"]: m["last_error"] for m in wrong.info()["members"].values()}
    assert any("authentication" in (e or "") or "cookie" in (e or "") for e in errors.values()), errors


def test_other_shard_count_and_other_instance_are_refused(make: Callable[..., ekv.EKV]) -> None:
    a = make()
    other_shards = make(shards=3, peers=[a.listen_address])
    other_name = make("other", peers=[a.listen_address])
    wait_until(lambda: any(m["last_error"] for m in other_shards.info()["members"].values()))
    wait_until(lambda: any(m["last_error"] for m in other_name.info()["members"].values()))
    assert not connected(a, 1)
    errors = [m["last_error"] for m in other_shards.info()["members"].values()]
    assert any("shards" in e for e in errors), errors


def raw_exchange(port: int, payload: bytes, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        if not read:
            return b""
        sock.settimeout(5)
        chunks = []
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def hello(instance: str = "c", *, versions: tuple[int, ...] = (PROTOCOL_VERSION,), shards: int = 2) -> Hello:
    return Hello(versions, ("zlib",), instance, "attacker0000000", shards, auth.new_nonce())


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
        pytest.param(b"\x00" * 64, id="zero-length-frames"),
        pytest.param(struct.pack(">I", 1 << 30) + b"\x01", id="oversized-frame"),
        pytest.param(wire.encode(hello())[:-5], id="truncated-frame"),
        pytest.param(wire.encode(hello(versions=(99,))), id="unknown-version"),
        pytest.param(wire.encode(hello(shards=5)), id="other-shard-count"),
        pytest.param(wire.encode(hello("nope")), id="unknown-instance"),
        pytest.param(wire.encode(hello()) + wire.encode(ekv._cluster.messages.Auth(b"\x00" * 32)), id="bad-proof"),
        pytest.param(bytes(range(256)) * 8, id="garbage"),
    ],
)
def test_hostile_bytes_close_the_connection_and_change_nothing(
    make: Callable[..., ekv.EKV], payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    a = make(cookie="secret", log="info")
    a.put("k", "v")
    before = state(a)
    raw_exchange(_port(a), payload)
    assert state(a) == before
    # the node keeps serving: a legitimate member still joins
    b = make(cookie="secret", peers=[a.listen_address])
    wait_until(lambda: b.get("k") == "v")


def test_refusals_are_logged(make: Callable[..., ekv.EKV], caplog: pytest.LogCaptureFixture) -> None:
    a = make(cookie="secret", log="info")
    with caplog.at_level(logging.INFO, logger="ekv"):
        raw_exchange(_port(a), wire.encode(hello(shards=5)))
        wait_until(lambda: "refused" in caplog.text)
    assert "shards" in caplog.text


def test_non_loopback_listener_requires_a_cookie(tmp_path: Path) -> None:
    with pytest.raises(ekv.ConfigError, match="cookie"):
        ekv.EKV("c", tmp_path, listen="0.0.0.0:0")


def test_cluster_options_without_listen_or_peers_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(ekv.ConfigError, match="cluster option"):
        ekv.EKV("c", tmp_path, cookie="x")


def test_connect_on_a_single_node_store_is_a_clear_error(tmp_path: Path) -> None:
    with ekv.EKV("c", tmp_path, log=False) as kv, pytest.raises(ekv.ClusterError):
        kv.connect("127.0.0.1:1")


def test_async_facade_in_a_cluster(make: Callable[..., ekv.EKV], tmp_path: Path) -> None:
    a = make()

    async def main() -> None:
        async with ekv.AsyncEKV("c", tmp_path / "async", shards=2, peers=[a.listen_address], **FAST) as b:
            await b.put("from-async", 1)
            for _ in range(2000):
                if a.get("from-async") == 1:
                    break
                await asyncio.sleep(0.01)
            assert a.get("from-async") == 1

    asyncio.run(main())


# -- TLS, compression, discovery, clock skew ---------------------------------------------------------


def test_tls_with_cookie(make: Callable[..., ekv.EKV]) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    a = make(cookie="s", ssl_server=server, ssl_client=client)
    b = make(cookie="s", ssl_server=server, ssl_client=client, peers=[a.listen_address])
    wait_until(lambda: connected(a, 1) and connected(b, 1))
    a.put("secret", "over tls")
    wait_until(lambda: b.get("secret") == "over tls")
    # a client that does not trust the CA cannot join
    untrusting = make(cookie="s", ssl_client=ssl.create_default_context(), peers=[a.listen_address])
    wait_until(lambda: any(m["last_error"] for m in untrusting.info()["members"].values()))
    assert untrusting.get("secret") is None


def test_large_values_are_compressed_on_the_wire(make: Callable[..., ekv.EKV]) -> None:
    a = make(compression_threshold=1024)
    b = make(peers=[a.listen_address], compression_threshold=1024)
    wait_until(lambda: connected(a, 1) and connected(b, 1))
    before = a.info()["members"][node_of(b).node_id]["bytes_out"]
    value = "abc" * 400_000  # 1.2 MB, very compressible
    a.put("big", value)
    wait_until(lambda: b.get("big") == value)
    sent = a.info()["members"][node_of(b).node_id]["bytes_out"] - before
    assert sent < 200_000, sent


def test_dns_discovery(make: Callable[..., ekv.EKV]) -> None:
    a = make()
    port = a.listen_address.rsplit(":", 1)[1]  # type: ignore[union-attr]
    b = make(discovery=f"localhost:{port}", discovery_interval=0.2)
    wait_until(lambda: connected(a, 1) and connected(b, 1))
    a.put("found", 1)
    wait_until(lambda: b.get("found") == 1)


class _AheadClock:
    def now_ns(self) -> int:
        import time

        return time.time_ns() + 5_000_000_000


def test_clock_skew_is_logged_and_shown_but_versions_still_apply(
    make: Callable[..., ekv.EKV], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ekv"):
        a = make(log="info", clock=_AheadClock())
        b = make(log="info", peers=[a.listen_address])
        wait_until(lambda: connected(a, 1) and connected(b, 1))
        wait_until(lambda: "clock skew" in caplog.text)
    skew = b.info()["clock"]["skew_ns"][node_of(a).node_id]
    assert skew is not None and skew > 4_000_000_000
    ahead = a.put("k", "from the future")
    wait_until(lambda: b.get("k") == "from the future")
    # a write on b after seeing a's value wins over it, whatever the skew (hybrid clock)
    assert b.put("k", "later") > ahead
    wait_until(lambda: a.get("k") == "later")


def test_metrics_in_a_cluster(make: Callable[..., ekv.EKV]) -> None:
    a = make()
    b = make(peers=[a.listen_address])
    wait_until(lambda: connected(a, 1) and connected(b, 1))
    for i in range(20):
        a.put(f"k{i}", i)
    wait_until(lambda: b.get("k19") == 19)
    peer = node_of(b).node_id
    wait_until(lambda: a.metrics()[f'ekv_replication_lag_writes{{peer="{peer}"}}'] == 0)
    m = a.metrics()
    assert m["ekv_members_connected"] == 1
    assert m["ekv_replication_live_sent_total"] >= 20
    assert f'ekv_syncs_sent_total{{peer="{peer}",kind="delta"}}' in m
    assert f'ekv_send_queue_bytes{{peer="{peer}"}}' in m
    assert b.metrics()["ekv_replication_live_applied_total"] >= 20
    assert "ekv_members_connected 1" in ekv.format_metrics(m)


def test_a_node_whose_data_went_back_in_time_neither_diverges_nor_reuses_sequence_numbers(
    tmp_path: Path,
) -> None:
    """What a power cut with durability="normal" (or restoring raw files) does: the node comes
    back without its last writes, which its members already hold. It must get them back and its
    new writes must not be mistaken for them (every open writes under a new origin)."""
    import shutil

    opts = {**FAST, "shards": 2}
    a = ekv.EKV("c", tmp_path / "a", listen="127.0.0.1:0", **opts)
    b = ekv.EKV("c", tmp_path / "b", listen="127.0.0.1:0", peers=[a.listen_address], **opts)
    try:
        wait_until(lambda: connected(a, 1) and connected(b, 1))
        a.put("k1", 1)
        wait_until(lambda: b.get("k1") == 1)
        snapshot = tmp_path / "a-snapshot"
        shutil.copytree(tmp_path / "a", snapshot, ignore=shutil.ignore_patterns("LOCK"))  # an unclean copy
        lost = a.put("k2", 2)  # will be lost by a, but b has it
        wait_until(lambda: b.get("k2") == 2)
        address = a.listen_address
        a.close()
        shutil.rmtree(tmp_path / "a")
        shutil.copytree(snapshot, tmp_path / "a")
        a = ekv.EKV("c", tmp_path / "a", listen=address, **opts)
        assert a.info()["origin"].startswith(f"{a.node_id}~") and a.info()["origin"] != lost.origin
        new = a.put("k3", 3)
        assert new.origin != lost.origin and new > lost
        wait_until(
            lambda: a.get("k2") == 2 and b.get("k3") == 3,
            timeout=30,
            message="the lost write did not come back, or the new one did not replicate",
        )
        wait_until(lambda: converged(a, b))
    finally:
        a.close()
        b.close()


_LOOP_CHILD = """
import sys, tempfile
from pathlib import Path
import ekv
from ekv.testing import node_of, wait_until
root = Path(tempfile.mkdtemp())
try:
    a = ekv.EKV("c", root / "a", listen="127.0.0.1:0", log=False)
except ekv.ConfigError as exc:
    print("ConfigError:", exc, "| created:", (root / "a").exists())
    sys.exit(0)
b = ekv.EKV("c", root / "b", listen="127.0.0.1:0", peers=[a.listen_address], log=False)
sub = b.subscribe("k")
a.put("k", 1)
assert [e.value for e in sub.get(timeout=60)] == [1]
print(type(node_of(a).cluster._loop).__module__.split(".")[0])
b.close(); a.close()
"""


def _run_loop_child(value: str | None) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "EKV_EVENT_LOOP"}
    if value is not None:
        env["EKV_EVENT_LOOP"] = value
    proc = subprocess.run([sys.executable, "-c", _LOOP_CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_event_loop_is_asyncio_unless_uvloop_is_asked_for_and_a_bad_choice_is_a_clear_error() -> None:
    """EKV_EVENT_LOOP picks the network loop (process-wide, hence a child process per case): the
    standard loop by default; an unknown name is a ConfigError before the data directory exists."""
    assert _run_loop_child(None) == "asyncio"
    assert _run_loop_child("nonsense") == (
        "ConfigError: EKV_EVENT_LOOP must be 'asyncio' or 'uvloop', not 'nonsense' | created: False"
    )


def test_replication_runs_on_uvloop_when_asked() -> None:
    pytest.importorskip("uvloop")
    assert _run_loop_child("uvloop") == "uvloop"
