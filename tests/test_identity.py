"""Copies of one data directory running at once (a VM snapshot, a container image with baked
data, a backup restored on a second machine): no acknowledged write of either copy is lost, the
cluster converges, and the duplicate node id is reported and resolved (docs/semantics.md,
"Node identity")."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ekv
from ekv._cluster.identity import Verdict, on_copy_of_us, on_second_session
from ekv.testing import entries, wait_until

FAST = {
    "heartbeat_interval": 0.1,
    "heartbeat_timeout": 1.0,
    "anti_entropy_interval": 0.3,
    "reconnect_max": 0.3,
    "shards": 2,
}


@pytest.fixture
def opened() -> Iterator[list[ekv.EKV]]:
    stores: list[ekv.EKV] = []
    yield stores
    for kv in stores:
        kv.close()


def _open(opened: list[ekv.EKV], path: Path, **options: Any) -> ekv.EKV:
    kv = ekv.EKV("c", path, **{**FAST, "listen": "127.0.0.1:0", **options})
    opened.append(kv)
    return kv


def _state(kv: ekv.EKV) -> dict[str, tuple[int, str, bytes | None]]:
    return {e.key: (e.timestamp_ns, e.origin, e.value) for e in entries(kv)}


def _converged(*nodes: ekv.EKV) -> bool:
    first = _state(nodes[0])
    return all(_state(n) == first for n in nodes[1:])


def _cloned_pair(tmp_path: Path, opened: list[ekv.EKV], **options: Any) -> tuple[ekv.EKV, ekv.EKV, ekv.EKV]:
    """A third node, then two nodes started from byte copies of one cleanly closed directory."""
    original = tmp_path / "x1"
    with ekv.EKV("c", original, shards=2, log=False) as kv:
        for i in range(5):
            kv.put(f"baked/{i}", i)
    shutil.copytree(original, tmp_path / "x2")
    third = _open(opened, tmp_path / "c", **options)
    first = _open(opened, original, peers=[third.listen_address], **options)
    second = _open(opened, tmp_path / "x2", peers=[third.listen_address], **options)
    # a byte copy: one identity (until the cluster notices, which may already have happened)
    baked = json.loads((tmp_path / "x2" / "ekv.json").read_text())
    shared = baked["node_id"] if not baked.get("former_ids") else baked["former_ids"][0]
    for kv, path in ((first, original), (second, tmp_path / "x2")):
        assert shared in (kv.node_id, *_former_ids(path))
    return third, first, second


def _former_ids(path: Path) -> list[str]:
    return list(json.loads((path / "ekv.json").read_text()).get("former_ids", []))


def test_both_copies_of_a_cloned_directory_keep_every_write_and_converge(
    tmp_path: Path, opened: list[ekv.EKV], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ekv")
    third, first, second = _cloned_pair(tmp_path, opened, log="info")
    cloned_id = json.loads((tmp_path / "x1" / "ekv.json").read_text())["node_id"]
    acked: dict[str, tuple[ekv.Version, object]] = {}
    versions: set[ekv.Version] = set()

    def write(kv: ekv.EKV, key: str, value: object) -> None:
        version = kv.put(key, value)
        assert version not in versions  # the copies never issue one version twice
        versions.add(version)
        if key not in acked or version > acked[key][0]:
            acked[key] = (version, value)

    for i in range(50):  # written on both copies, as in the report: same keys and own keys
        write(first, f"both/{i}", f"first {i}")
        write(second, f"both/{i}", f"second {i}")
        write(first, f"first/{i}", i)
        write(second, f"second/{i}", i)

    wait_until(
        lambda: first.node_id != second.node_id,
        timeout=60,
        message="the duplicate node id was never resolved",
    )
    assert cloned_id in (first.node_id, second.node_id)  # one copy keeps it
    wait_until(
        lambda: _converged(third, first, second) and len(_state(third)) == 155,
        timeout=60,
        message="the copies and the third node did not converge",
    )
    for kv in (third, first, second):
        for key, (version, value) in acked.items():
            assert kv.lookup(key) == (value, version), (key, kv.node_id)
        for i in range(5):
            assert kv.get(f"baked/{i}") == i
    warnings = [r.getMessage() for r in caplog.records if "DUPLICATE NODE ID" in r.getMessage()]
    assert warnings, "the duplicate identity was not logged at WARNING"
    assert any(w.count("127.0.0.1:") >= 2 for w in warnings), warnings  # both addresses named
    # the re-identified copy remembers its old id, and keeps it across a restart
    renamed = first if first.node_id != cloned_id else second
    new_id = renamed.node_id
    path = tmp_path / ("x1" if renamed is first else "x2")
    opened[:] = [kv for kv in opened if kv is not renamed]  # by identity: converged stores are ==
    renamed.close()
    with ekv.EKV("c", path, shards=2, log=False) as again:
        assert again.node_id == new_id
        assert again.get("both/0") == acked["both/0"][1]


def test_two_copies_that_meet_directly_resolve_their_identity(tmp_path: Path, opened: list[ekv.EKV]) -> None:
    """No third node: the copies dial each other (each names the other as a peer)."""
    original = tmp_path / "x1"
    with ekv.EKV("c", original, shards=2, log=False) as kv:
        kv.put("baked", 1)
    shutil.copytree(original, tmp_path / "x2")
    first = _open(opened, original, log=False)
    second = _open(opened, tmp_path / "x2", peers=[first.listen_address], log=False)
    first.put("a", 1)
    second.put("b", 2)
    wait_until(lambda: first.node_id != second.node_id, timeout=60, message="the copies kept one node id")
    wait_until(lambda: first.get("b") == 2 and second.get("a") == 1 and _converged(first, second), timeout=60)


def test_a_restarted_member_replaces_its_silent_old_session() -> None:
    assert on_second_session("x~1", "x~2", silent_for_s=10.0, heartbeat_interval_s=1.0) is Verdict.REPLACE
    assert on_second_session("x~1", "x~2", silent_for_s=0.5, heartbeat_interval_s=1.0) is Verdict.TELL_NEWCOMER
    assert on_second_session("x~1", "x~1", silent_for_s=0.5, heartbeat_interval_s=1.0) is Verdict.KEEP
    assert on_second_session("", "x~2", silent_for_s=0.5, heartbeat_interval_s=1.0) is Verdict.KEEP  # ekv 0.1
    assert on_copy_of_us("x~b", "x~a") is Verdict.REIDENTIFY_SELF
    assert on_copy_of_us("x~a", "x~b") is Verdict.DROP
    assert on_copy_of_us("x~a", "") is Verdict.KEEP


def test_every_open_writes_under_a_fresh_origin(tmp_path: Path) -> None:
    origins = set()
    for _ in range(3):
        with ekv.EKV("c", tmp_path / "d", shards=2, log=False) as kv:
            version = kv.put("k", 1)
            assert version.node_id == kv.node_id
            assert kv.info()["origin"] == version.origin
            origins.add(version.origin)
    assert len(origins) == 3


def test_a_copy_never_reissues_a_version_or_dot(tmp_path: Path) -> None:
    """Two copies started from one file state, each on the same wall clock, write the same key:
    their versions differ (the origin), and so do their dots."""
    original = tmp_path / "x1"
    with ekv.EKV("c", original, shards=1, log=False) as kv:
        kv.put("k", 0)
    shutil.copytree(original, tmp_path / "x2")
    with ekv.EKV("c", original, shards=1, log=False) as a, ekv.EKV("c", tmp_path / "x2", shards=1, log=False) as b:
        va, vb = a.put("k", "a"), b.put("k", "b")
        assert va != vb and va.origin != vb.origin
        (ea,) = [e for e in entries(a) if e.key == "k"]
        (eb,) = [e for e in entries(b) if e.key == "k"]
        assert (ea.origin, ea.oseq) != (eb.origin, eb.oseq)


def test_hello_carries_the_origin_and_an_old_hello_without_it_still_decodes() -> None:
    import json

    from ekv._cluster import wire
    from ekv._cluster.messages import Duplicate, Hello

    hello = Hello((1,), wire.FEATURES, "c", "n1", 2, b"\x01" * 16, None, 5, origin="n1~abcd")
    (decoded,) = wire.FrameDecoder(1 << 16).feed(wire.encode(hello))
    assert decoded == hello
    body = json.loads(wire.encode(hello)[5:])
    del body["origin"]  # as ekv 0.1 sends it
    raw = json.dumps(body).encode()
    (old,) = wire.FrameDecoder(1 << 16).feed(len(raw + b"x").to_bytes(4, "big") + b"\x01" + raw)
    assert old.origin == ""
    message = Duplicate("n1~ef01", "10.0.0.2:4370")
    assert wire.FrameDecoder(1 << 16).feed(wire.encode(message)) == [message]


def test_the_cookie_proof_covers_the_origin() -> None:
    from ekv._cluster import auth, wire
    from ekv._cluster.messages import Hello
    from ekv._errors import AuthenticationError

    a = Hello((1,), wire.FEATURES, "c", "n1", 2, auth.new_nonce(), None, 5, origin="n1~0001")
    b = Hello((1,), wire.FEATURES, "c", "n2", 2, auth.new_nonce(), None, 5, origin="n2~0001")
    proof = auth.proof("k", mine=a, theirs=b)
    auth.verify("k", proof, mine=b, theirs=a)
    from dataclasses import replace

    with pytest.raises(AuthenticationError):  # a man in the middle changed the origin
        auth.verify("k", proof, mine=b, theirs=replace(a, origin="n1~0002"))
    with pytest.raises(AuthenticationError):  # a reflected Hello: our node id and our origin
        auth.verify("k", auth.proof("k", mine=b, theirs=b), mine=b, theirs=b)
