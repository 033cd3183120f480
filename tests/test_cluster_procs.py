"""Clusters of real ekv node processes on 127.0.0.1 (:mod:`ekv.testing.cluster`): the original's
distributed scenario catalogue (upstream ``test/distributed_test.exs``, reference section 11) as
it applies to ekv, with the faults only separate processes can have: SIGKILL, SIGSTOP/SIGCONT,
a deleted data directory, restarts. (In-process clusters: test_cluster.py.)

Every check is made against a :class:`Model` of the acknowledged writes: after the cluster
converges, every node must hold, for every key written, exactly the highest version that put or
delete returned for it, with that write's value (None for a delete). That is "no acknowledged
write lost unless superseded by a higher version", "deterministic last-writer-wins" and "no
resurrection of deleted keys" in one assertion. Nothing sleeps to let things happen: every wait
polls for its consequence with a generous deadline.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from ekv.testing.cluster import NodeProcess, ProcCluster

Version = tuple[int, str]

DEADLINE_S = 60.0


class Model:
    """The state every node must converge to: per key, the highest acknowledged version and the
    value written with it (None for a delete)."""

    def __init__(self) -> None:
        self.expected: dict[str, tuple[Version, Any]] = {}

    def record(self, key: str, version: Version, value: Any) -> Version:
        current = self.expected.get(key)
        if current is None or version > current[0]:
            self.expected[key] = (version, value)
        return version

    def put(self, node: NodeProcess, key: str, value: Any) -> Version:
        return self.record(key, node.put(key, value), value)

    def delete(self, node: NodeProcess, key: str) -> Version:
        return self.record(key, node.delete(key), None)

    def expire(self, key: str) -> None:
        """The key's TTL ran out and GC ran: a tombstone that keeps the put's version."""
        version, _value = self.expected[key]
        self.expected[key] = (version, None)

    def winner(self, key: str) -> tuple[Version, Any]:
        return self.expected[key]

    def live_keys(self) -> list[str]:
        return sorted(key for key, (_version, value) in self.expected.items() if value is not None)

    def check(self, nodes: list[NodeProcess]) -> None:
        """Every node holds exactly the winning version of every key written."""
        problems: list[str] = []
        for node in nodes:
            dump = node.dump()
            for key, (version, value) in sorted(self.expected.items()):
                row = dump.get(key)
                if row is None:
                    problems.append(f"{node.name}: {key} missing (expected {version} {value!r})")
                    continue
                held = (row[0], row[1])
                held_value = None if row[2] is None else json.loads(row[2])
                if held != version or held_value != value:
                    problems.append(f"{node.name}: {key} holds {held} {held_value!r}, expected {version} {value!r}")
        assert not problems, "\n".join(problems[:20]) + (f"\n... {len(problems)} in all" if len(problems) > 20 else "")


class Writer(threading.Thread):
    """Writes ``prefix + n`` (or one fixed key) on one node as fast as it can until stopped or
    the node dies, keeping every acknowledged version. The main thread must not use this node
    while the writer runs (a NodeProcess is one command pipe)."""

    def __init__(self, node: NodeProcess, prefix: str, *, key: str | None = None, count: int | None = None) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.prefix = prefix
        self.key = key
        self.count = count
        self.acked: list[tuple[str, Version, Any]] = []
        self.error: BaseException | None = None
        self.go = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        self.go.wait(DEADLINE_S)
        i = 0
        while not self._stop_event.is_set() and (self.count is None or i < self.count):
            key = self.key or f"{self.prefix}{i:06d}"
            value = f"{self.prefix}{i}"
            try:
                version = self.node.put(key, value)
            except Exception as exc:  # the node was killed under us: the write is not acknowledged
                self.error = exc
                return
            self.acked.append((key, version, value))
            i += 1

    def finish(self) -> None:
        """Stop (an unbounded writer) or wait for the last of ``count`` writes."""
        if self.count is None:
            self._stop_event.set()
        self.join(DEADLINE_S)
        assert not self.is_alive(), "writer thread did not stop"

    def into(self, model: Model) -> None:
        for key, version, value in self.acked:
            model.record(key, version, value)


def connected(node: NodeProcess, other: NodeProcess) -> bool:
    return bool(node.members().get(other.node_id or ""))


def wait_apart(cluster: ProcCluster, *pairs: tuple[NodeProcess, NodeProcess]) -> None:
    cluster.wait(
        lambda: not any(connected(x, y) or connected(y, x) for x, y in pairs),
        DEADLINE_S,
        "a partition did not take effect",
    )


def settle(cluster: ProcCluster, model: Model, nodes: list[NodeProcess] | None = None) -> None:
    """Wait for a full mesh and identical dumps, then check the model on every node."""
    cluster.wait_connected(DEADLINE_S)
    cluster.wait_converged(DEADLINE_S, nodes)
    model.check(nodes or cluster.running())


def info(node: NodeProcess) -> dict[str, Any]:
    result: dict[str, Any] = node.call("info")["info"]
    return result


def log_entries(node: NodeProcess) -> int:
    return sum(int(shard["log"]["entries"]) for shard in info(node)["shards"])


def wait_full_sync_to(cluster: ProcCluster, node: NodeProcess, *senders: NodeProcess, more_than: int = 0) -> int:
    """Wait until ``senders`` have served ``node`` more than ``more_than`` full syncs; the count."""
    cluster.wait(
        lambda: full_syncs_to(node, *senders) > more_than,
        DEADLINE_S,
        f"{node.name} was not served a full sync by {[s.name for s in senders]}",
    )
    return full_syncs_to(node, *senders)


def gc_until_truncated(cluster: ProcCluster, *nodes: NodeProcess) -> None:
    """Run GC on each node until its change log is empty (what it holds, every member it still
    counts has reported covering: only a matter of the next anti-entropy report or of
    ``log_retention`` running out for a member that is away)."""
    for node in nodes:
        cluster.wait(
            lambda node=node: node.call("gc") is not None and log_entries(node) == 0,
            DEADLINE_S,
            f"{node.name}'s change log was never truncated",
        )


def completed_pulls(node: NodeProcess) -> int:
    """Pull syncs (anti-entropy rounds included) ``node`` completed from its connected members
    since it started."""
    total = 0
    for member in info(node)["members"].values():
        syncs = (member.get("replication") or {}).get("syncs_in", {})
        total += int(syncs.get("delta", 0)) + int(syncs.get("full", 0))
    return total


def full_syncs_to(node: NodeProcess, *senders: NodeProcess) -> int:
    """How many full syncs ``senders`` served to ``node`` since they started (counted across
    sessions: the session that served it may since have been replaced, e.g. by the connection
    the other side dialed at the same time; a sender not connected to ``node`` right now counts 0)."""
    total = 0
    for sender in senders:
        member = info(sender)["members"].get(node.node_id or "", {})
        replication = member.get("replication") or {}
        total += int(replication.get("syncs_out", {}).get("full", 0))
    return total


# -- joining, restarting, rebuilding ---------------------------------------------------------------


def test_late_joiner_gets_everything_deletes_included(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=2) as cluster:
        a, b = cluster.nodes
        for i in range(200):
            model.put(a if i % 2 else b, f"k/{i:03d}", {"i": i})
        cluster.wait_converged(DEADLINE_S)  # so each delete is causally after the put it deletes
        for i in range(0, 200, 4):
            model.delete(b if i % 8 else a, f"k/{i:03d}")
        late = cluster.add()
        settle(cluster, model)
        dump = late.dump()
        tombstones = [key for key, row in dump.items() if row[2] is None]
        assert len(tombstones) == 50, "the joiner did not receive the tombstones"
        assert late.get("k/000") is None and late.get("k/001") == {"i": 1}
        assert late.call("keys", prefix="k/")["keys"] == [f"k/{i:03d}" for i in range(200) if i % 4]


def test_restart_after_a_clean_stop_keeps_data_and_catches_up(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        a, b, c = cluster.nodes
        for i in range(100):
            model.put(c, f"c/{i}", i)
            model.put(a, f"a/{i}", i)
        model.delete(c, "a/0")
        settle(cluster, model)
        before = c.dump()
        old_id = c.node_id
        c.stop()
        cluster.wait(lambda: not connected(a, c) and not connected(b, c), DEADLINE_S)
        for i in range(50):  # missed while away
            model.put(b, f"b/{i}", i)
        model.delete(a, "c/1")
        model.put(a, "c/2", "overwritten while c was away")
        c.start()
        assert c.node_id == old_id, "node identity must be stable across restarts"
        held = c.dump()
        lost = [key for key, row in before.items() if key not in held or held[key][:2] < row[:2]]
        assert not lost, f"lost across a clean restart: {lost[:10]}"
        settle(cluster, model)


def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """SIGKILL in the middle of a stream of writes on the victim itself: every write it
    acknowledged is in its data directory when it comes back, then the cluster converges."""
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        a, _b, c = cluster.nodes
        model.put(a, "before", 1)
        cluster.wait_converged(DEADLINE_S)
        writer = Writer(c, "victim/")
        writer.start()
        writer.go.set()
        cluster.wait(lambda: len(writer.acked) >= 300, DEADLINE_S, "the writer made no progress")
        c.kill()
        writer.join(DEADLINE_S)  # its next put fails on the dead node and ends the thread
        assert not writer.is_alive() and writer.error is not None, "the writer should have seen its node die"
        acked = list(writer.acked)
        c.start()
        held = c.dump()
        missing = [key for key, version, _v in acked if key not in held or held[key][:2] != version]
        assert not missing, f"{len(missing)} acknowledged writes lost by kill -9, e.g. {missing[:5]}"
        writer.into(model)
        # the clock resumes above everything written before the kill (no repeated version)
        key = acked[-1][0]
        assert model.put(c, key, "after the restart") > max(version for _k, version, _v in acked)
        model.put(c, "after", 2)
        settle(cluster, model)
        print(f"\n  kill -9 after {len(acked)} acknowledged writes: all present after restart")


def test_empty_storage_node_resyncs_under_a_new_identity(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        a, b, c = cluster.nodes
        for i in range(150):
            model.put((a, b, c)[i % 3], f"k/{i}", i)
        for i in range(0, 150, 5):
            model.delete((c, a, b)[i % 3], f"k/{i}")
        settle(cluster, model)
        # Everyone holds everything, so the logs can go: the rebuilt node can only be served by
        # full sync (its version vector is empty, the logs no longer start at the beginning).
        gc_until_truncated(cluster, a, b)
        old_id = c.node_id
        c.stop()
        shutil.rmtree(c.data_dir)
        model.put(a, "k/while-gone", "x")
        model.delete(b, "k/1")
        c.start()
        assert c.node_id != old_id, "an empty data directory must come back under a new identity"
        settle(cluster, model)
        wait_full_sync_to(cluster, c, a, b)  # its new identity had no sessions before: any full sync counts
        members = a.members()
        assert members.get(c.node_id) is True and not members.get(old_id or "")
        model.put(c, "from-new-c", 1)  # the new identity replicates like any member
        settle(cluster, model)


# -- partitions ----------------------------------------------------------------------------------


def test_partition_both_sides_write_disjoint_and_same_keys(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        a, b, c = cluster.nodes
        model.put(a, "shared", "before")
        model.put(a, "shared2", "before")
        settle(cluster, model)
        cluster.partition([a, b], [c])
        wait_apart(cluster, (a, c), (b, c))
        for i in range(50):  # disjoint keys on both sides, across all shards
            model.put(a if i % 2 else b, f"ab/{i}", i)
            model.put(c, f"c/{i}", i)
        model.put(a, "shared", "side ab, first")
        model.put(c, "shared", "side c")
        model.put(b, "shared", "side ab, last")
        model.put(c, "shared2", "side c, first")
        model.put(a, "shared2", "side ab")
        model.put(c, "shared2", "side c, last")
        cluster.heal()
        settle(cluster, model)
        assert a.get("ab/1") == 1 and c.get("ab/2") == 2 and a.get("c/3") == 3
        for key in ("shared", "shared2"):
            version, value = model.winner(key)
            assert c.call("get", key=key)["version"] == list(version)
            assert b.get(key) == value
        scanned = b.call("scan", prefix="")["items"]  # prefix scan is the union of both sides
        assert len([k for k in scanned if k.startswith(("ab/", "c/"))]) == 100


def test_delete_versus_put_across_a_partition_in_both_orders(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        a, b, c = cluster.nodes
        for key in ("put-then-delete", "delete-then-put", "delete-then-recreate"):
            model.put(b, key, "original")
        settle(cluster, model)
        cluster.partition([a, b], [c])
        wait_apart(cluster, (a, c), (b, c))
        put_first = model.put(a, "put-then-delete", "ab wrote")
        delete_last = model.delete(c, "put-then-delete")
        delete_first = model.delete(c, "delete-then-put")
        put_last = model.put(a, "delete-then-put", "ab wrote")
        model.delete(a, "delete-then-recreate")
        model.put(a, "delete-then-recreate", "recreated")
        model.put(c, "delete-then-recreate", "c overwrote")
        cluster.heal()
        settle(cluster, model)
        # The higher version wins, whichever side and kind: check the outcome follows it.
        assert (a.get("put-then-delete") is None) == (delete_last > put_first)
        assert (c.get("delete-then-put") == "ab wrote") == (put_last > delete_first)
        # No resurrection later either: further anti-entropy rounds change nothing.
        before = [n.dump() for n in cluster.nodes]
        pulls = [completed_pulls(n) for n in cluster.nodes]
        cluster.wait(lambda: all(completed_pulls(n) > p for n, p in zip(cluster.nodes, pulls, strict=True)), DEADLINE_S)
        assert [n.dump() for n in cluster.nodes] == before
        model.check(cluster.nodes)


def test_three_way_split_writes_everywhere_then_heals(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        nodes = cluster.nodes
        a, b, c = nodes
        for i in range(30):
            model.put(a, f"old/{i}", i)
        settle(cluster, model)
        cluster.partition([a], [b], [c])
        wait_apart(cluster, (a, b), (b, c), (a, c))
        for n, node in enumerate(nodes):
            for i in range(30):
                model.put(node, f"{node.name}/{i}", i)
            model.put(node, "everyone", node.name)
            model.delete(node, f"old/{n}")
            model.put(node, f"old/{n + 10}", f"{node.name} overwrote")
        model.delete(b, "everyone")
        cluster.heal()
        settle(cluster, model)
        assert c.call("keys", prefix="")["keys"] == model.live_keys()


def test_double_partition_cycle(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        a, b, c = cluster.nodes
        model.put(a, "k", 0)
        settle(cluster, model)
        cluster.partition([a, b], [c])
        wait_apart(cluster, (a, c), (b, c))
        model.put(a, "k", "first split, ab")
        model.put(c, "k", "first split, c")
        for i in range(20):
            model.put(b, f"one/{i}", i)
            model.put(c, f"one/{i + 20}", i)
        cluster.heal()
        settle(cluster, model)
        cluster.partition([a], [b, c])
        wait_apart(cluster, (a, b), (a, c))
        model.put(b, "k", "second split, bc")
        model.delete(a, "k")
        for i in range(20):
            model.put(a, f"two/{i}", i)
            model.delete(c, f"one/{i}")
        cluster.heal()
        settle(cluster, model)


def test_writes_made_while_the_partition_heals(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        a, b, c = cluster.nodes
        model.put(a, "race", "before")
        settle(cluster, model)
        cluster.partition([a, b], [c])
        wait_apart(cluster, (a, c), (b, c))
        for i in range(40):
            model.put(a, f"split/{i}", i)
            model.put(c, f"split/{i + 40}", i)
        model.put(c, "race", "during the split")
        cluster.heal()
        # reconnection and the pull syncs run while these land
        for i in range(100):
            model.put((a, b, c)[i % 3], f"heal/{i}", i)
            if i % 10 == 0:
                model.put((c, a, b)[i % 3], "race", f"heal {i}")
                model.delete((b, c, a)[i % 3], f"split/{i}")
        settle(cluster, model)


def test_tombstones_survive_gc_during_a_partition(tmp_path: Path) -> None:
    """GC (expiry, purge, change-log truncation) runs on both sides while they are apart, for
    less than tombstone_ttl: the deletes still win after the heal, even though the change logs
    are gone and the heal can only use full syncs (which must carry the tombstones)."""
    model = Model()
    with ProcCluster(tmp_path, nodes=3, log_retention=1) as cluster:
        a, b, c = cluster.nodes
        for i in range(40):
            model.put(a, f"k/{i}", i)
        settle(cluster, model)
        before = (full_syncs_to(c, a, b), full_syncs_to(a, c) + full_syncs_to(b, c))
        cluster.partition([a, b], [c])
        wait_apart(cluster, (a, c), (b, c))
        for i in range(20):
            model.delete(a if i % 2 else b, f"k/{i}")  # c still holds the old values
        for i in range(20):
            model.put(c, f"c/{i}", i)
        gc_until_truncated(cluster, a, b, c)  # c's report to a/b (and theirs to c) ages out
        for node in cluster.nodes:
            assert node.call("gc")["purged"] == 0, "a tombstone younger than tombstone_ttl was purged"
        assert a.get("k/0") is None and c.get("k/0") == 0
        cluster.heal()
        settle(cluster, model)
        assert all(n.get(f"k/{i}") is None for n in cluster.nodes for i in range(20)), "a delete was undone"
        wait_full_sync_to(cluster, c, a, b, more_than=before[0])
        cluster.wait(lambda: full_syncs_to(a, c) + full_syncs_to(b, c) > before[1], DEADLINE_S, "no full sync from c")


def test_change_log_truncation_forces_a_full_sync(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=3, log_retention=1) as cluster:
        a, b, c = cluster.nodes
        for i in range(100):
            model.put(a, f"k/{i}", i)
        settle(cluster, model)
        before = full_syncs_to(c, a, b)
        c.stop()
        for i in range(100, 200):
            model.put(a if i % 2 else b, f"k/{i}", i)
        for i in range(0, 100, 10):
            model.delete(b, f"k/{i}")
        cluster.wait_converged(DEADLINE_S, [a, b])
        # c's last report is older than log_retention: nothing holds the log back for it
        gc_until_truncated(cluster, a, b)
        c.start()
        settle(cluster, model)
        full = wait_full_sync_to(cluster, c, a, b, more_than=before) - before
        print(f"\n  full syncs served to the returning node: {full}")


def test_ttl_expiry_during_a_partition_keeps_the_newer_put(tmp_path: Path) -> None:
    """Expiry converges without races: a put that supersedes an expiring value survives on every
    node, and the expired value travels as a tombstone (also to a late joiner)."""
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        a, b, c = cluster.nodes
        for key in ("superseded", "expires", "extended"):
            model.record(key, a.put(key, "short-lived", ttl=1.0), "short-lived")
        settle(cluster, model)
        cluster.partition([a, b], [c])
        wait_apart(cluster, (a, c), (b, c))
        model.put(c, "superseded", "newer, no ttl")
        model.record("extended", c.put("extended", "newer, longer ttl", ttl=600), "newer, longer ttl")
        # the TTL running out is the point: poll for it, then expire it for good on every node
        cluster.wait(lambda: all(n.get("expires") is None for n in cluster.nodes), DEADLINE_S)
        assert a.get("superseded") is None and c.get("superseded") == "newer, no ttl"
        for node in cluster.nodes:
            node.call("gc")
        model.expire("expires")
        cluster.heal()
        settle(cluster, model)
        assert a.get("superseded") == "newer, no ttl" and b.get("extended") == "newer, longer ttl"
        cluster.add()
        settle(cluster, model)


def test_rapid_partition_flaps(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        nodes = cluster.nodes
        model.put(nodes[0], "flap", "start")
        settle(cluster, model)
        for cycle in range(5):
            alone = nodes[cycle % 3]
            rest = [n for n in nodes if n is not alone]
            cluster.partition(rest, [alone])
            for n, node in enumerate(nodes):
                model.put(node, f"cycle{cycle}/{node.name}", cycle)
                model.put(node, "flap", f"{cycle}:{node.name}")
                if cycle:
                    model.delete(node, f"cycle{cycle - 1}/{nodes[(n + 1) % 3].name}")
            cluster.heal()
            for node in nodes:
                model.put(node, f"healed{cycle}/{node.name}", cycle)
        settle(cluster, model)


def test_concurrent_deletes_on_both_sides(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        a, b, c = cluster.nodes
        for i in range(30):
            model.put(b, f"k/{i}", i)
        settle(cluster, model)
        cluster.partition([a, b], [c])
        wait_apart(cluster, (a, c), (b, c))
        for i in range(10):  # the same keys deleted on both sides
            model.delete(a, f"k/{i}")
            model.delete(c, f"k/{i}")
        for i in range(10, 20):  # one side each
            model.delete(a if i % 2 else c, f"k/{i}")
        model.delete(a, "never-existed")
        model.delete(c, "never-existed")
        cluster.heal()
        settle(cluster, model)
        assert c.call("keys", prefix="k/")["keys"] == sorted(f"k/{i}" for i in range(20, 30))


def test_put_delete_interleaving_across_nodes(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        nodes = cluster.nodes
        cluster.wait_connected(DEADLINE_S)
        for i in range(90):  # no waiting between operations: they race replication
            node = nodes[i % 3]
            key = f"k/{i % 4}"
            if i % 3 == 1:
                model.delete(node, key)
            else:
                model.put(node, key, i)
        settle(cluster, model)
        for key in model.expected:
            assert nodes[1].get(key) == model.winner(key)[1]


def test_three_way_conflict_on_one_key(tmp_path: Path) -> None:
    """Three nodes write the same key concurrently (one thread each): everyone ends with the
    highest version acknowledged anywhere."""
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        cluster.wait_connected(DEADLINE_S)
        writers = [Writer(node, node.name, key="contested", count=150) for node in cluster.nodes]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.go.set()
        for writer in writers:
            writer.finish()
            assert writer.error is None and len(writer.acked) == 150
            writer.into(model)
        settle(cluster, model)
        versions = [v for w in writers for _k, v, _x in w.acked]
        assert len(set(versions)) == len(versions), "two writes got the same version"


# -- sync under load and size ----------------------------------------------------------------------


def test_writes_during_an_active_sync(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=2, sync_chunk_entries=50) as cluster:
        a, b = cluster.nodes
        for i in range(3000):
            model.put(a, f"bulk/{i:05d}", "x" * 100)
        late = cluster.add()
        have = len(late.dump())
        for i in range(300):  # while the late node is being filled, everyone keeps writing
            model.put(a, f"during/a/{i}", i)
            model.put(b, f"during/b/{i}", i)
            model.put(late, f"during/late/{i}", i)
            if i % 30 == 0:
                model.delete(b, f"bulk/{i:05d}")
                model.put(late, f"bulk/{i + 1:05d}", "late overwrote")
        settle(cluster, model)
        print(f"\n  the late node held {have} of 3000 entries when the concurrent writes began")


def test_5000_key_full_sync_to_a_late_joiner(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=1) as cluster:
        (a,) = cluster.nodes
        for i in range(5000):
            model.put(a, f"k/{i:05d}", {"i": i, "pad": "v" * 64})
        gc_until_truncated(cluster, a)  # alone, it truncates everything: the joiner needs a full sync
        started = time.monotonic()
        late = cluster.add()
        ready = time.monotonic()
        cluster.wait_converged(120)
        done = time.monotonic()
        model.check([late])
        wait_full_sync_to(cluster, late, a)
        sync_s, total_s = done - ready, done - started
        print(
            f"\n  5000-key full sync: {sync_s:.2f} s after the joiner was up ({5000 / sync_s:.0f} keys/s), "
            f"{total_s:.2f} s including its start ({5000 / total_s:.0f} keys/s)"
        )


def test_purged_tombstones_do_not_reach_a_late_joiner(tmp_path: Path) -> None:
    with ProcCluster(tmp_path, nodes=2, tombstone_ttl=1, gc_interval=0.5, log_retention=1) as cluster:
        a, b = cluster.nodes
        for i in range(60):
            (a, b)[i % 2].put(f"k/{i:02d}", i)
        cluster.wait_converged(DEADLINE_S)
        for i in range(0, 60, 3):
            (b, a)[i % 2].delete(f"k/{i:02d}")
        cluster.wait_converged(DEADLINE_S)
        live = sorted(f"k/{i:02d}" for i in range(60) if i % 3)
        # tombstone_ttl is the point here: wait for the purge (GC also runs on its own)
        cluster.wait(
            lambda: all(n.call("gc") is not None and info(n)["tombstones"] == 0 for n in (a, b)),
            DEADLINE_S,
            "the tombstones were never purged",
        )
        late = cluster.add()
        cluster.wait_converged(DEADLINE_S)
        assert sorted(late.dump()) == live, "the joiner got more than the live keys"
        assert all(n.call("keys", prefix="k/")["keys"] == live for n in cluster.nodes)


def test_duplicate_connects_keep_one_session_per_member(tmp_path: Path) -> None:
    """Connecting again to a member, by the same address or another name for it, neither
    duplicates sessions nor delivers a write twice."""
    with ProcCluster(tmp_path, nodes=3) as cluster:
        a, b, c = cluster.nodes
        cluster.wait_connected(DEADLINE_S)
        for node in cluster.nodes:
            for other in cluster.nodes:
                if other is not node:
                    assert other.address is not None
                    node.call("connect", address=other.address)
                    node.call("connect", address="localhost:" + other.address.rsplit(":", 1)[1])

        def settled() -> bool:
            for node in cluster.nodes:
                members = info(node)["members"]
                if len(members) != 2 or not all(m.get("connected") for m in members.values()):
                    return False
            return True

        cluster.wait(settled, DEADLINE_S, "duplicate connections did not settle to one session per member")
        before = {n.name: info(n)["replication"]["live_received"] for n in cluster.nodes}
        for i in range(100):
            a.put(f"a/{i}", i)
            b.put(f"b/{i}", i)
        cluster.wait_converged(DEADLINE_S)
        received = {n.name: info(n)["replication"]["live_received"] - before[n.name] for n in cluster.nodes}
        assert received[a.name] <= 100 and received[b.name] <= 100 and received[c.name] <= 200, received
        assert len(c.dump()) == 200


# -- faults only processes have: SIGSTOP, kill -9 under load ------------------------------------------


def test_sigstopped_node_is_declared_down_then_resynced(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        a, b, c = cluster.nodes
        model.put(c, "from-c", 1)
        settle(cluster, model)
        c.pause()
        paused_at = time.monotonic()
        cluster.wait(
            lambda: not connected(a, c) and not connected(b, c),
            DEADLINE_S,
            "the paused node was never declared down",
        )
        detected = time.monotonic() - paused_at
        timeout = cluster.options["heartbeat_timeout"]
        # not before it was silent for heartbeat_timeout (with a margin: its last ping predates
        # the pause by up to a heartbeat_interval, more on a loaded machine)
        assert detected >= timeout / 2, f"declared down after {detected:.2f} s only"
        assert connected(a, b), "the healthy pair lost each other"
        for i in range(100):  # the others keep accepting writes, without waiting for c
            model.put(a if i % 2 else b, f"while-paused/{i}", i)
        model.delete(b, "from-c")
        cluster.wait_converged(DEADLINE_S, [a, b])
        c.resume()
        settle(cluster, model)
        print(f"\n  paused node declared down after {detected:.2f} s (heartbeat_timeout {timeout} s)")


def test_kill_9_during_heavy_writes_on_another_node(tmp_path: Path) -> None:
    model = Model()
    with ProcCluster(tmp_path, nodes=3) as cluster:
        a, b, c = cluster.nodes
        cluster.wait_connected(DEADLINE_S)
        writer = Writer(a, "heavy/")
        writer.start()
        writer.go.set()
        cluster.wait(lambda: len(writer.acked) >= 500, DEADLINE_S, "the writer made no progress")
        b.kill()
        killed_at = len(writer.acked)
        model.put(c, "during-the-outage", 1)
        cluster.wait(lambda: len(writer.acked) >= killed_at + 500, DEADLINE_S)
        b.start()  # b now catches up (pull syncs from a and c) while a keeps writing ...
        b.kill()  # ... and dies again, most likely in the middle of it (the outcome must not depend on it)
        b.start()
        restarted_at = len(writer.acked)
        cluster.wait(lambda: len(writer.acked) >= restarted_at + 500, DEADLINE_S)
        writer.finish()
        assert writer.error is None, f"the writer on a healthy node failed: {writer.error}"
        writer.into(model)
        settle(cluster, model)
        print(f"\n  {len(writer.acked)} writes on a; b killed after {killed_at}, twice, back after {restarted_at}")


def test_a_member_too_slow_to_keep_up_is_dropped_then_resynced(tmp_path: Path) -> None:
    """Backpressure: a SIGSTOPped member cannot drain its connection; once more than
    send_buffer bytes are queued for it, the writer side drops it instead of growing memory, and
    it is resynced when it comes back."""
    with ProcCluster(tmp_path, nodes=2, send_buffer=256 * 1024, heartbeat_timeout=60.0) as cluster:
        a, b = cluster.nodes
        cluster.wait_connected()
        b.pause()
        value = "x" * 4096
        deadline = time.monotonic() + 60
        dropped = False
        i = 0
        while time.monotonic() < deadline and not dropped:
            for _ in range(200):
                a.put(f"flood/{i:06d}", value)
                i += 1
            member = a.call("info")["info"]["members"].get(b.node_id, {})
            reason = (member.get("last_disconnect") or {}).get("reason", "")
            dropped = "too slow" in reason
        assert dropped, "the slow member was never dropped"
        b.resume()
        cluster.wait_connected()
        cluster.wait_converged()
        assert len(b.call("keys", prefix="flood/")["keys"]) == i


def test_live_writes_that_queued_up_are_applied_in_one_transaction(tmp_path: Path) -> None:
    """A receiver that falls behind applies the Live messages it finds in one read together (one
    transaction per shard, see ekv._cluster.messages.merge_live), instead of one commit per
    message, which kept a slow receiver behind. The receiver (in this process) has its network
    thread held while the writer process commits 20 puts one by one; once the frames are all in
    its socket, it is let go: its subscriber sees the 20 events in one batch (one commit) and the
    order and data are those of the writes."""
    import fcntl
    import termios

    import ekv
    from ekv._cluster import wire
    from ekv._cluster.messages import Live
    from ekv._core.keys import shard_of
    from ekv.testing import node_of, wait_until

    quiet = {"heartbeat_interval": 30.0, "heartbeat_timeout": 120.0, "anti_entropy_interval": 600.0}
    with ProcCluster(tmp_path / "procs", nodes=1, shards=2, codec="json", **quiet) as cluster:
        (writer,) = cluster.nodes
        options: dict[str, Any] = {"shards": 2, "log": False, "codec": "json", **quiet}
        with ekv.EKV("c", tmp_path / "b", listen="127.0.0.1:0", peers=[writer.address], **options) as b:
            wait_until(lambda: any(m.get("connected") for m in b.info()["members"].values()))
            keys = [k for k in (f"q/{i}" for i in range(200)) if shard_of(k.encode(), 2) == 0][:20]
            sub = b.subscribe("q/")
            cluster_b = node_of(b).cluster
            assert cluster_b is not None
            session = cluster_b.sessions[writer.node_id]
            fd = session.writer.get_extra_info("socket").fileno()
            gate = threading.Event()
            held = threading.Event()

            def hold() -> None:
                held.set()
                gate.wait(120)

            cluster_b._loop.call_soon_threadsafe(hold)  # the network thread waits at the gate
            try:
                assert held.wait(30)
                for i, key in enumerate(keys):
                    writer.put(key, i)

                def queued_entries() -> int:
                    size = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
                    with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as peek:  # (a dup: reads nothing)
                        data = peek.recv(size, socket.MSG_PEEK) if size else b""
                    lives = [m for m in wire.FrameDecoder(1 << 24).feed(data) if isinstance(m, Live)]
                    return sum(len(m.entries) for m in lives) if len(lives) > 1 else 0

                wait_until(lambda: queued_entries() == len(keys), message="the 20 Live frames did not all arrive")
            finally:
                gate.set()
            batches = []
            while sum(len(batch) for batch in batches) < len(keys):
                batches.append(sub.get(timeout=60))
            assert [(e.key, e.value) for batch in batches for e in batch] == [(k, i) for i, k in enumerate(keys)]
            assert len(batches) == 1, [len(batch) for batch in batches]
