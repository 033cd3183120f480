"""Power cuts, simulated with :mod:`ekv.testing._internal.powercut`: writer processes run under a VFS that
keeps every un-fsynced SQLite write in process memory, so SIGKILL loses exactly what a power cut
at that instant would lose (the worst case: the kernel wrote nothing back on its own).

* ``durability="full"``: at least 20 cuts of a multi-threaded writer, at random moments (while
  writing, during open and crash recovery, during a clean close), the same data directory reused
  every time. After every cut: ``ekv check`` finds no problem, every acknowledged write is stored
  with at least its version, nothing that survived an earlier cut went back, no write appears that
  was never made. Zero acknowledged writes lost.
* ``durability="normal"``: the same loop. The simulator must make it lose writes (otherwise it
  simulates nothing), and what it loses must be a *tail*: per shard, the acknowledged writes lost
  in one cut all come after (in the shard's commit order) every acknowledged write that was kept.
  Then a three-node cluster: the node whose tail was lost gets it back from its peers.

The per-cut figures are printed (``pytest -s``) and quoted in docs/reliability.md.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import pytest

import ekv
from _linechild import LineChild
from ekv._backup import check
from ekv._core.keys import shard_of
from ekv._storage.store import ShardedStore
from ekv.testing._internal import powercut
from ekv.testing.cluster import ProcCluster

pytestmark = pytest.mark.slow

NAME = "powercut"
SHARDS = 4
THREADS = 4
KEYS = 40  # per thread: many overwrites, so "or a later version of the key" is exercised
DEADLINE_S = 60.0  # generous: only reached when a child is stuck or dead
SYNC_CUT_FALLBACK = 5000

Version = tuple[int, str]


# -- the writer process --------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    key: str
    n: int
    version: Version

    @property
    def thread(self) -> int:
        return int(self.key[1 : self.key.index("/")])


@dataclass
class Life:
    """One run of the writer, from its start to the cut."""

    plan: tuple[str, float]
    start: int
    acks: list[Ack] = field(default_factory=list)
    origin: str | None = None
    ready: bool = False
    closing: bool = False
    closed: bool = False


class Writer(LineChild):
    """``python -m ekv.testing._internal.powercut writer`` read line by line, with deadlines."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        command = [sys.executable, "-m", "ekv.testing._internal.powercut", "writer", *args]
        super().__init__(command, stderr_path, deadline_s=DEADLINE_S)

    def cut(self) -> None:
        """The power cut: SIGKILL under the VFS. Keeps whatever the writer printed before."""
        self.kill()


def run_life(data_dir: Path, durability: str, life: Life, seed: int, extra: list[str]) -> Life:
    """Start the writer, cut the power as ``life.plan`` says, collect what it acknowledged.

    Plans: ``("open", s)`` cuts ``s`` seconds after the writer announced it is opening the store
    (so during open and crash recovery); ``("acks", n)`` after the n-th acknowledgement;
    ``("close", s)`` lets it write ``KEYS`` acknowledgements, close the store cleanly, and cuts
    ``s`` seconds into the close (or after it); ``("sync", n)``: the writer's VFS cuts the power
    itself in the middle of its n-th fsync (half the pending blocks written), or the parent cuts
    after SYNC_CUT_FALLBACK acknowledgements if it has not by then."""
    kind, arg = life.plan
    args = ["--data-dir", str(data_dir), "--name", NAME, "--durability", durability, "--shards", str(SHARDS)]
    args += ["--threads", str(THREADS), "--keys", str(KEYS), "--start", str(life.start), "--seed", str(seed)]
    if kind == "close":
        args += ["--close-after", str(KEYS)]
    if kind == "sync":
        args += ["--cut-at-sync", str(int(arg))]
    writer = Writer(args + extra, data_dir.parent / "writer.stderr")
    try:
        for line in writer.lines():
            tag, _, rest = line.partition(" ")
            if tag == "error":
                raise AssertionError(f"the writer failed: {rest}{writer.diagnostics()}")
            if tag == "opening" and kind == "open":
                time.sleep(arg)  # the cut lands at a seeded random moment of the open: the point of the test
                break
            if tag == "ready":
                life.ready = True
                life.origin = rest.split()[1]
            elif tag == "ack":
                key, n, ts, origin = rest.split()
                life.acks.append(Ack(key, int(n), (int(ts), origin)))
                if len(life.acks) >= (arg if kind == "acks" else SYNC_CUT_FALLBACK):
                    break
            elif tag == "closing":
                life.closing = True
                time.sleep(arg)  # a seeded random moment of the clean close
                break
        writer.cut()
        for line in writer.lines():  # printed before the cut, read after it: acknowledged too
            tag, _, rest = line.partition(" ")
            if tag == "ready":
                life.ready = True
                life.origin = rest.split()[1]
            elif tag == "ack":
                key, n, ts, origin = rest.split()
                life.acks.append(Ack(key, int(n), (int(ts), origin)))
            elif tag == "closing":
                life.closing = True
            elif tag == "closed":
                life.closed = True
            elif tag == "error":
                raise AssertionError(f"the writer failed: {rest}{writer.diagnostics()}")
        if kind == "acks" and not life.ready:
            raise AssertionError(f"the writer never opened the store{writer.diagnostics()}")
    finally:
        writer.close()
    return life


# -- what is on disk after a cut ------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    version: Version
    n: int


def stored_state(data_dir: Path) -> dict[str, Row] | None:
    """After a cut: drop the WAL index (as a reboot does), run ``ekv check`` and read every row,
    read-only (the next writer finds the files exactly as the cut left them). ``None`` when the
    cut came before the store was first created."""
    powercut.after_cut(data_dir)
    if not (data_dir / "ekv.json").exists():
        return None
    problems, _notes = check(data_dir)
    assert problems == [], problems
    store = ShardedStore.open_readonly(data_dir, codec="json")
    try:
        rows = {}
        for entry in store.entries():
            assert entry.value is not None, f"{entry.key}: the writer never deletes"
            rows[entry.key] = Row(entry.version, json.loads(entry.value)["n"])
        return rows
    finally:
        store.close()


@dataclass
class Report:
    """Figures of one cut."""

    plan: tuple[str, float]
    acked: int
    lost: int
    shards_with_loss: int
    ready: bool
    closed: bool
    tail_ms: float = 0.0
    """Time from the first lost acknowledged write to the last acknowledged one."""
    run_ms: float = 0.0
    """Time from the first to the last acknowledged write of the run."""


@dataclass
class History:
    durable: dict[str, Row] = field(default_factory=dict)
    """The state found after the previous cut: nothing in it may go back."""
    best: dict[str, Ack] = field(default_factory=dict)
    """Per key, the highest acknowledged write that a cut has not lost (for ``full``: all)."""
    origins: list[str] = field(default_factory=list)
    retired: set[str] = field(default_factory=set)
    reports: list[Report] = field(default_factory=list)


def check_cut(data_dir: Path, history: History, life: Life) -> Report:
    """Every check after one cut; returns its figures. ``lost`` counts this life's acknowledged
    writes whose key is stored below their version."""
    rows = stored_state(data_dir)
    if rows is None:
        assert not life.acks and not history.durable, "the manifest disappeared"
        report = Report(life.plan, 0, 0, 0, life.ready, life.closed)
        history.reports.append(report)
        return report
    # 1. nothing that was there after the previous cut went back
    for key, row in history.durable.items():
        assert key in rows and rows[key].version >= row.version, f"{key}: {row} went back to {rows.get(key)}"
    # 2. this life's acknowledged writes: kept (the key is stored with at least that version) or lost
    lost = [a for a in life.acks if a.key not in rows or rows[a.key].version < a.version]
    kept = [a for a in life.acks if a.key in rows and rows[a.key].version >= a.version]
    for ack in kept:
        if rows[ack.key].version == ack.version:
            assert rows[ack.key].n == ack.n, f"{ack}: stored {rows[ack.key]}"
    # 3. the loss is a tail: per shard, in commit order (= timestamp order within one origin)
    shards_with_loss = 0
    for shard in range(SHARDS):
        kept_ts = [a.version[0] for a in kept if shard_of(a.key.encode(), SHARDS) == shard]
        lost_ts = [a.version[0] for a in lost if shard_of(a.key.encode(), SHARDS) == shard]
        if lost_ts:
            shards_with_loss += 1
        if kept_ts and lost_ts:
            assert max(kept_ts) < min(lost_ts), f"shard {shard}: a kept write follows a lost one"
    # 4. no write appears that was never made: a stored value of this life that was not
    #    acknowledged is the one write its thread had in flight at the cut
    last_acked: dict[int, int] = {}
    for ack in life.acks:
        last_acked[ack.thread] = max(last_acked.get(ack.thread, life.start), ack.n)
    for key, row in rows.items():
        if row.n > life.start:
            thread = int(key[1 : key.index("/")])
            acked_here = {a.n for a in life.acks if a.key == key}
            assert row.n in acked_here or row.n == last_acked.get(thread, life.start) + 1, f"{key}: phantom {row}"
        else:
            previous = history.durable.get(key)
            assert previous is not None and previous == row, f"{key}: {row} was never written (was {previous})"
    # 5. every acknowledged write not lost now is still there (for full: every acknowledged write)
    for ack in kept:
        if ack.key not in history.best or history.best[ack.key].version < ack.version:
            history.best[ack.key] = ack
    for key, ack in history.best.items():
        assert rows[key].version >= ack.version, f"{ack} lost after an earlier cut had kept it"
    # 6. a life that wrote and was cut (not closed cleanly) retires its origin: no later life may
    #    issue writes under it (a crash never reuses sequence numbers). A cut during the close
    #    may land before or after the clean-shutdown marker became durable: either is fine.
    if life.acks:
        assert life.origin is not None
        assert {a.version[1] for a in life.acks} == {life.origin}
        assert life.origin not in history.retired, f"origin {life.origin} reused after a power cut"
        if not life.closing:
            history.retired.add(life.origin)
        history.origins.append(life.origin)
    history.durable = rows
    report = Report(life.plan, len(life.acks), len(lost), shards_with_loss, life.ready, life.closed)
    if life.acks:
        last = max(a.version[0] for a in life.acks)
        report.run_ms = (last - min(a.version[0] for a in life.acks)) / 1e6
        if lost:
            report.tail_ms = (last - min(a.version[0] for a in lost)) / 1e6
    history.reports.append(report)
    return report


def plans(rng: random.Random, cuts: int, syncs: tuple[int, int]) -> list[tuple[str, float]]:
    """Seeded cut moments. The first run creates the store (a cut during the very first creation
    is test_cut_during_the_first_creation_of_a_data_dir); then, in random order: three cuts during
    open (crash recovery: two in the middle of one of its first four fsyncs, which always come
    before the store is open, since each shard commits its open marker with FULL, and one at a
    random moment), two during or just after a clean close, four in the middle of a later fsync
    (the n-th, n drawn from ``syncs``), the rest after a random number of writes."""
    result: list[tuple[str, float]] = [("sync", rng.randint(1, 4)) for _ in range(2)]
    result += [("open", rng.choice([0.0, 0.002, 0.005]))]
    result += [("close", rng.uniform(0.0, 0.01)) for _ in range(2)]
    result += [("sync", rng.randint(*syncs)) for _ in range(4)]
    result += [("acks", rng.randint(1, 2500)) for _ in range(cuts - 1 - len(result))]
    rng.shuffle(result)
    return [("acks", 1500), *result]


def summary(history: History) -> str:
    acked = sum(r.acked for r in history.reports)
    lost = sum(r.lost for r in history.reports)
    before_ready = sum(1 for r in history.reports if not r.ready)
    lines = [
        f"{len(history.reports)} cuts ({before_ready} before the store was open, "
        f"{sum(1 for r in history.reports if r.plan[0] == 'close')} during or after a clean close), "
        f"{acked} acknowledged writes, {lost} lost",
        "  cut  plan            acked   lost  shards  tail ms  run ms",
    ]
    for index, r in enumerate(history.reports):
        kind, arg = r.plan
        plan = f"{kind} {int(arg)}" if kind in ("acks", "sync") else f"{kind} {arg:.4f} s"
        lines.append(
            f"  {index:3d}  {plan:14s} {r.acked:6d} {r.lost:6d} {r.shards_with_loss:7d}"
            f" {r.tail_ms:8.1f} {r.run_ms:7.1f}"
        )
    return "\n".join(lines)


# -- the simulator itself --------------------------------------------------------------------------


def test_image_matches_a_model_of_page_cache_and_disk(tmp_path: Path) -> None:
    """The VFS's file image against two byte arrays: what the process sees and what the disk
    holds. Writes and truncations reach the disk only at sync."""
    path = tmp_path / "f"
    path.write_bytes(b"")
    flags = apsw.SQLITE_OPEN_MAIN_DB | apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    base = apsw.VFSFile("unix", str(path), [flags, 0])
    try:
        image = powercut._Image(0, (0, 0))
        seen, disk = bytearray(), bytearray()
        rng = random.Random(7)
        for _step in range(3000):
            op = rng.random()
            if op < 0.55:
                offset, data = rng.randrange(40_000), rng.randbytes(rng.randrange(1, 9000))
                image.write(base, data, offset)
                if offset > len(seen):
                    seen += bytes(offset - len(seen))
                seen[offset : offset + len(data)] = data
            elif op < 0.7:
                size = rng.randrange(45_000)
                image.truncate(size)
                seen = seen[:size] + bytes(max(0, size - len(seen)))
            elif op < 0.8:
                image.sync(base)
                disk = bytearray(seen)
            else:
                offset, amount = rng.randrange(50_000), rng.randrange(1, 10_000)
                assert image.read(base, amount, offset) == bytes(seen[offset : offset + amount])
            assert image.size == len(seen)
            assert path.read_bytes() == bytes(disk)
    finally:
        base.xClose()


def test_cut_during_the_first_creation_of_a_data_dir(tmp_path: Path) -> None:
    """A power cut at any moment of the very first open of an empty data directory: the next open
    must succeed (nothing was acknowledged, so an empty store is correct). A cut inside the fsync
    of a shard's first commit leaves a torn file next to a hot journal that rolls it back to
    nothing; that file is an interrupted creation, not foreign data."""
    refused = []
    for n in range(1, 13):  # every fsync of the creation of the first shards, one cut each
        data_dir = tmp_path / f"data{n}"
        life = run_life(data_dir, "full", Life(("sync", n), start=0), seed=n, extra=[])
        assert not life.acks
        powercut.after_cut(data_dir)
        try:
            with ekv.EKV(NAME, data_dir, shards=SHARDS, codec="json", log=False) as kv:
                assert kv.keys() == []
        except ekv.CorruptionError as exc:
            refused.append(f"cut in sync {n}: {exc}")
    assert refused == []


# -- durability="full" ------------------------------------------------------------------------------


def test_full_durability_loses_nothing_across_power_cuts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    rng = random.Random(20261125)
    history = History()
    for index, plan in enumerate(plans(rng, 26, syncs=(8, 800))):
        extra = ["--pad", str(rng.choice([100, 3000]))]
        if rng.random() < 0.5:
            extra += ["--checkpoint-every", "0.02"]  # checkpoints (and WAL resets) mid-run too
        life = run_life(data_dir, "full", Life(plan, start=index * 10**6), seed=index, extra=extra)
        report = check_cut(data_dir, history, life)
        assert report.lost == 0, f"cut {index} {plan}: {report.lost} of {report.acked} acknowledged writes lost"
    acked = sum(r.acked for r in history.reports)
    print(f"\nfull: {summary(history)}")
    assert len(history.reports) >= 20
    assert acked >= 10_000
    assert sum(1 for r in history.reports if not r.ready) >= 2, "the cuts during open/recovery did not land there"
    # and the store opens cleanly afterwards, with everything acknowledged
    with ekv.EKV(NAME, data_dir, shards=SHARDS, durability="full", codec="json", log=False) as kv:
        for key, ack in history.best.items():
            found = kv.lookup(key)
            assert found is not None and tuple(found[1]) >= ack.version
    assert check(data_dir)[0] == []


# -- durability="normal" ----------------------------------------------------------------------------


def test_normal_durability_loses_only_a_tail(tmp_path: Path) -> None:
    """With ``synchronous=NORMAL`` a commit is not fsynced; the WAL is synced when a checkpoint
    runs (ekv's checkpointer at 32 MiB of WAL; here also every 20 ms in half of the runs, to put
    syncs in the middle of a run) and when the store opens (the clean-shutdown marker is
    committed with FULL). So a cut loses the acknowledged writes of each shard since its last
    WAL sync: a tail of that shard's commit order, never anything before it."""
    data_dir = tmp_path / "data"
    rng = random.Random(1125)
    history = History()
    for index, plan in enumerate(plans(rng, 16, syncs=(8, 40))):
        extra = ["--pad", str(rng.choice([100, 3000]))]
        if index % 2 == 0 or plan[0] == "sync":
            extra += ["--checkpoint-every", "0.02"]
        life = run_life(data_dir, "normal", Life(plan, start=index * 10**6), seed=index, extra=extra)
        check_cut(data_dir, history, life)
    print(f"\nnormal: {summary(history)}")
    assert sum(1 for r in history.reports if not r.ready) >= 2, "the cuts during open/recovery did not land there"
    lost = sum(r.lost for r in history.reports)
    assert lost > 0, "durability=normal lost nothing: the simulator does not simulate power cuts"
    partial = [r for r in history.reports if 0 < r.lost < r.acked]
    assert partial, "no cut kept some writes of a run and lost others: the tail property was not exercised"
    assert sum(r.lost for r in history.reports if r.closed) == 0, "a clean close lost writes"
    # the store opens cleanly and consistently: what the cut left, under a new origin
    with ekv.EKV(NAME, data_dir, shards=SHARDS, codec="json", log=False) as kv:
        reopened = {}
        for key in kv.keys():  # noqa: SIM118 - EKV.keys(), not a dict
            found = kv.lookup(key)
            assert found is not None
            reopened[key] = Row((found[1].timestamp_ns, found[1].origin), found[0]["n"])
        assert reopened == history.durable
        version = kv.put("after", {"n": 0})
        assert version.origin not in history.origins
    assert check(data_dir)[0] == []


def test_normal_durability_cluster_recovers_the_lost_tail_from_peers(tmp_path: Path) -> None:
    """Three nodes; node A (durability normal, under the simulator) takes writes, B and C get them
    by replication; A is power-cut, which loses its tail locally; A restarts and gets every
    acknowledged write back from B and C. Twice."""
    with ProcCluster(tmp_path, nodes=0) as cluster:
        a = cluster.add(start=False)
        a.prefix = powercut.node_prefix()
        a.start()
        b, c = cluster.add(), cluster.add()
        cluster.wait_connected()
        acked: dict[str, tuple[Version, int]] = {}
        every: list[tuple[str, Version]] = []
        origins: list[str] = []
        lost_locally: list[int] = []
        for round_no in range(2):
            for i in range(300):
                key = f"k/{i % 70}"
                version = a.put(key, {"n": round_no * 1000 + i, "pad": "x" * (i % 200)})
                acked[key] = (version, round_no * 1000 + i)
                every.append((key, version))
            origins.append(acked["k/0"][0][1])
            cluster.wait_converged(timeout=DEADLINE_S)  # B and C have every write
            a.kill()  # the power cut
            rows = stored_state(a.data_dir)
            assert rows is not None
            lost = [k for k, version in every[-300:] if k not in rows or rows[k].version < version]
            lost_locally.append(len(lost))
            assert lost, "the cut lost nothing locally: the simulator does not simulate power cuts"
            a.start()
            cluster.wait_converged(timeout=DEADLINE_S)
            dump = a.dump()
            for key, (version, n) in acked.items():
                assert (dump[key][0], dump[key][1]) == version and dump[key][2] is not None, key
                assert json.loads(dump[key][2])["n"] == n, key
            assert dump == b.dump() == c.dump()
        # A writes under a new origin after each cut, and its writes still replicate
        version = a.put("after", {"n": -1})
        assert version[1] not in origins and version[1].startswith(str(a.node_id))
        cluster.wait_converged(timeout=DEADLINE_S)
        assert b.get("after") == {"n": -1}
        print(f"\ncluster, durability normal: 600 writes acknowledged by A, lost locally per cut {lost_locally}")
