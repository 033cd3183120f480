"""The linearizability checker for consistent operations: valid histories (hand-made and generated
from a simulated atomic register) pass, and each kind of fault is caught with its kind."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from ekv.testing._internal.checker import History
from ekv.testing._internal.checker.linear import check_linearizable, summary

Record = dict[str, Any]


def op(process: int, f: str, t0: int, t1: int | None, kind: str = "ok", key: str = "k", **fields: Any) -> list[Record]:
    """An invoke at ``t0`` and a completion of type ``kind`` at ``t1`` (none if ``t1`` is None).
    Fields go on the invoke for what the client sends, on the completion for what it got back."""
    invoke_fields = {k: v for k, v in fields.items() if k in ("cond", "ttl_s") or (k == "value" and f == "cwrite")}
    if f == "release":
        invoke_fields["token"] = fields["token"]
    done_fields = {k: v for k, v in fields.items() if k not in invoke_fields}
    records = [{"process": process, "node": "n1", "type": "invoke", "f": f, "key": key, "time": t0, **invoke_fields}]
    if t1 is not None:
        records.append({"process": process, "node": "n1", "type": kind, "f": f, "key": key, "time": t1, **done_fields})
    return records


def history(*ops: list[Record]) -> list[Record]:
    records = [record for pair in ops for record in pair]
    return sorted(records, key=lambda r: (r["time"], r["type"] != "invoke"))


def kinds(records: list[Record]) -> list[str]:
    return sorted({v.kind for v in check_linearizable(records)})


# -- valid histories -------------------------------------------------------------------------------


def test_sequential_history_passes() -> None:
    records = history(
        op(1, "cread", 0, 1, value=None, version=None),
        op(1, "cwrite", 2, 3, value="a", cond="absent", version=10),
        op(2, "cread", 4, 5, value="a", version=10),
        op(2, "cwrite", 6, 7, value="b", cond=10, version=20),
        op(1, "cwrite", 8, 9, "fail", value="c", cond=10, error="conflict", current=["b", 20]),
        op(1, "cwrite", 10, 11, "fail", value="d", cond="absent", error="no_quorum"),
        op(1, "cwrite", 12, 13, value=None, cond=20, version=30),
        op(2, "cread", 14, 15, value=None, version=None),
        op(2, "cwrite", 16, 17, "fail", value="e", cond=20, error="conflict", current=None),
        op(2, "cwrite", 18, 19, value="e", cond="absent", version=40),
    )
    assert check_linearizable(records) == []
    assert check_linearizable(History.from_records(records)) == []


def test_concurrent_writes_may_take_effect_in_either_order() -> None:
    # w1 is invoked first but takes effect last: the read after both sees w1's value
    records = history(
        op(1, "cwrite", 0, 100, value="w1", cond="any", version=20),
        op(2, "cwrite", 10, 50, value="w2", cond="any", version=10),
        op(3, "cread", 20, 30, value="w2", version=10),
        op(3, "cread", 110, 120, value="w1", version=20),
        op(4, "cread", 5, 105, value=None, version=None),
    )
    assert check_linearizable(records) == []


def test_unknown_outcomes_that_did_and_did_not_take_effect() -> None:
    records = history(
        op(1, "cwrite", 0, 1, value="a", cond="any", version=10),
        op(2, "cwrite", 2, None, value="lost", cond="any"),  # never seen: did not take effect
        op(3, "cwrite", 3, 4, "info", value="late", cond=10),  # seen later: took effect
        op(4, "cread", 5, 6, value="a", version=10),
        op(4, "cread", 7, 8, value="late", version=15),
        op(5, "cwrite", 9, 10, "info", value=None, cond=15),  # a delete of unknown outcome, then seen
        op(4, "cread", 11, 12, value=None, version=None),
        op(1, "cwrite", 13, 14, value="b", cond="absent", version=30),
        op(4, "cread", 15, 16, value="b", version=30),
    )
    assert check_linearizable(records) == []


def test_other_operations_and_records_are_ignored() -> None:
    records = history(
        op(1, "cwrite", 0, 1, value="a", cond="any", version=10),
        op(2, "put", 0, 1, value="x", version=[5, "o"]),
        op(2, "get", 2, 3, value="nonsense", version=[1, "o"]),
    )
    records.append({"record": "nemesis", "time": 2, "action": "partition"})
    assert check_linearizable(records) == []


def test_locks_pass() -> None:
    records = history(
        op(1, "acquire", 0, 10, ttl_s=1, token=1),
        op(2, "acquire", 5, 30, ttl_s=1, token=2),  # waited for the release
        op(1, "release", 20, 25, token=1),
        op(2, "release", 40, None, token=2),  # unknown outcome: may have let go at once
        op(3, "acquire", 45, 50, ttl_s=1, token=3),
        op(3, "release", 60, 70, "fail", token=3, error="no_quorum"),
        op(1, "acquire", 61, 2_000_000_000, ttl_s=1, token=4),  # after token 3's hold expired
    )
    assert check_linearizable(records) == []


# -- violations ------------------------------------------------------------------------------------


def test_stale_read_after_a_completed_write() -> None:
    records = history(
        op(1, "cwrite", 0, 1, value="a", cond="any", version=10),
        op(1, "cwrite", 2, 3, value="b", cond="any", version=20),
        op(2, "cread", 4, 5, value="a", version=10),
    )
    violations = check_linearizable(records)
    assert [v.kind for v in violations] == ["not_linearizable"]
    assert "value='a'" in violations[0].message
    assert "NOT linearizable" in summary(violations)


def test_lost_update() -> None:
    records = history(
        op(1, "cwrite", 0, 1, value="a", cond="absent", version=10),
        op(2, "cwrite", 2, 5, value="b", cond=10, version=20),
        op(3, "cwrite", 3, 6, value="c", cond=10, version=30),
    )
    assert kinds(records) == ["not_linearizable"]


def test_read_of_a_write_that_failed_with_conflict() -> None:
    records = history(
        op(1, "cwrite", 0, 1, value="a", cond="any", version=10),
        op(2, "cwrite", 2, 5, "fail", value="b", cond="absent", error="conflict", current=["a", 10]),
        op(3, "cread", 3, 6, value="b", version=20),
    )
    assert kinds(records) == ["phantom"]


def test_write_whose_version_does_not_exceed_the_one_it_replaced() -> None:
    sequential = history(
        op(1, "cwrite", 0, 1, value="a", cond="any", version=10),
        op(1, "cwrite", 2, 3, value="b", cond="any", version=10),
    )
    assert kinds(sequential) == ["not_linearizable", "version_order"]
    # concurrent: only the search can tell (the read orders them)
    concurrent = history(
        op(1, "cwrite", 0, 10, value="a", cond="any", version=10),
        op(2, "cwrite", 1, 10, value="b", cond=10, version=5),
        op(3, "cread", 11, 12, value="b", version=5),
    )
    assert kinds(concurrent) == ["not_linearizable"]


def test_conflict_with_a_wrong_current() -> None:
    wrong_value = history(
        op(1, "cwrite", 0, 1, value="a", cond="any", version=10),
        op(2, "cwrite", 2, 3, "fail", value="b", cond="absent", error="conflict", current=None),
    )
    assert kinds(wrong_value) == ["not_linearizable"]
    wrong_version = history(
        op(1, "cwrite", 0, 1, value="a", cond="any", version=10),
        op(2, "cwrite", 2, 3, "fail", value="b", cond=7, error="conflict", current=["a", 11]),
    )
    assert kinds(wrong_version) == ["value_versions"]
    condition_held = history(
        op(1, "cwrite", 0, 1, value="a", cond="any", version=10),
        op(2, "cwrite", 2, 3, "fail", value="b", cond=10, error="conflict", current=["a", 10]),
    )
    assert kinds(condition_held) == ["not_linearizable"]


def test_overlapping_lock_holders() -> None:
    records = history(
        op(1, "acquire", 0, 10, ttl_s=30, token=1),
        op(2, "acquire", 5, 15, ttl_s=30, token=2),
        op(1, "release", 20, 25, token=1),
    )
    violations = check_linearizable(records)
    assert [v.kind for v in violations] == ["overlap"]
    assert [o.token for o in violations[0].ops] == [1, 1, 2]
    # a failed release holds until the ttl: acquiring before that overlaps too
    failed = history(
        op(1, "acquire", 0, 10, ttl_s=30, token=1),
        op(1, "release", 20, 25, "fail", token=1, error="no_quorum"),
        op(2, "acquire", 21, 30, ttl_s=30, token=2),
    )
    assert kinds(failed) == ["overlap"]


def test_tokens_that_do_not_increase() -> None:
    records = history(
        op(1, "acquire", 0, 10, ttl_s=1, token=5),
        op(1, "release", 11, 12, token=5),
        op(2, "acquire", 13, 20, ttl_s=1, token=3),
    )
    # token 3's holder then looks like it overlapped token 5's: both are reported
    assert kinds(records) == ["overlap", "token_order"]
    duplicate = history(
        op(1, "acquire", 0, 10, ttl_s=1, token=5),
        op(1, "release", 11, 12, token=5),
        op(2, "acquire", 13, 20, ttl_s=1, token=5),
    )
    assert kinds(duplicate) == ["token_order"]


# -- generated histories ---------------------------------------------------------------------------


class Register:
    """An atomic register that runs operations at chosen instants and records what clients saw."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.value: str | None = None
        self.version = 0
        self.known: dict[int, int | None] = {}  # process -> the version it last saw

    def read(self, p: int) -> tuple[str, Record]:
        version = None if self.value is None else self.version
        self.known[p] = version
        return "ok", {"value": self.value, "version": version}

    def write(self, p: int, n: int) -> tuple[str, Record, Record]:
        rng = self.rng
        value = None if rng.random() < 0.1 else f"p{p}-{n}"
        known = self.known.get(p)
        cond = rng.choice(["any", "absent"] + ([known] * 3 if known is not None else []))
        sent = {"value": value, "cond": cond}
        if rng.random() < 0.05:
            return "fail", sent, {"error": "no_quorum"}
        if rng.random() < 0.05:
            return "info", sent, {}  # never took effect
        live = self.value is not None
        # as ekv (condition_holds): if_version needs a live value at that version
        if (cond == "absent" and live) or (isinstance(cond, int) and (not live or cond != self.version)):
            current = [self.value, self.version] if live else None
            self.known[p] = self.version if live else None
            return "fail", sent, {"error": "conflict", "current": current}
        self.value, self.version = value, self.version + rng.randint(1, 5)
        if rng.random() < 0.08:
            return "info", sent, {}  # took effect, the client does not know
        self.known[p] = self.version
        return "ok", sent, {"version": self.version}


def generate(seed: int, n_ops: int, processes: int) -> list[Record]:
    """A valid history: each operation takes effect at a random instant inside its interval."""
    rng = random.Random(seed)
    planned = []  # (instant, invoke, complete, process, number)
    clock = dict.fromkeys(range(processes), 0)
    for n in range(n_ops):
        p = rng.randrange(processes)
        invoke = clock[p] + rng.randint(1, 20)
        instant = invoke + rng.randint(0, 40)
        complete = instant + rng.randint(0, 40)
        clock[p] = complete
        planned.append((instant * 1000 + n, invoke, complete, p, n))
    register = Register(rng)
    records: list[Record] = []
    for _, invoke, complete, p, n in sorted(planned):
        base = {"process": p, "node": "n1", "key": "k"}
        if rng.random() < 0.4:
            kind, sent, got = "cread", {}, None
            outcome, got = register.read(p)
        else:
            kind = "cwrite"
            outcome, sent, got = register.write(p, n)
        records.append({**base, "type": "invoke", "f": kind, "time": invoke, **sent})
        records.append({**base, "type": outcome, "f": kind, "time": complete, **got})
    return sorted(records, key=lambda r: (r["time"], r["type"] != "invoke"))


def make_stale(records: list[Record]) -> bool:
    """Turn one read into a stale one: it returns a write that was overwritten, in real time,
    before the read was invoked. False if the history has no such triple."""
    ops, open_ = [], {}
    for r in records:
        if r["type"] == "invoke":
            open_[r["process"]] = r
        else:
            ops.append((open_.pop(r["process"]), r))
    writes = [(i, c) for i, c in ops if i["f"] == "cwrite" and c["type"] == "ok" and i["value"] is not None]
    reads = [c for i, c in ops if i["f"] == "cread" and c["type"] == "ok"]
    for old_i, old_c in writes:
        for new_i, new_c in writes:
            if new_i["time"] <= old_c["time"]:
                continue
            for read in reads:
                read_invoke = next(i for i, c in ops if c is read)
                if read_invoke["time"] > new_c["time"] and read["value"] != old_i["value"]:
                    read["value"], read["version"] = old_i["value"], old_c["version"]
                    return True
    return False


def test_generated_histories_pass_and_a_stale_read_in_them_fails() -> None:
    mutated = 0
    for seed in range(20):
        records = generate(seed, 150, processes=6)
        assert check_linearizable(records) == [], f"seed {seed}"
        if make_stale(records):
            mutated += 1
            assert check_linearizable(records), f"seed {seed}: a stale read went unnoticed"
    assert mutated >= 15


def test_a_long_history_with_many_processes_passes() -> None:
    records = generate(7, 2000, processes=16)
    assert check_linearizable(records) == []


def test_command_line(tmp_path: Path) -> None:
    good = history(
        op(1, "cwrite", 0, 1, value="a", cond="any", version=10), op(2, "cread", 2, 3, value="a", version=10)
    )
    bad = history(
        op(1, "cwrite", 0, 1, value="a", cond="any", version=10), op(2, "cread", 2, 3, value=None, version=None)
    )
    codes = []
    for name, records in (("good", good), ("bad", bad)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-m", "ekv.testing._internal.checker.linear", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        codes.append(result.returncode)
    assert codes == [0, 1], result.stderr
    assert "not_linearizable" in result.stdout


def test_a_search_over_budget_is_reported_not_passed() -> None:
    records = generate(3, 50, processes=4)
    assert [v.kind for v in check_linearizable(records, max_steps=3)] == ["search_budget"]


def test_if_version_of_a_delete_conflicts_as_ekv_does() -> None:
    """``if_version`` needs a live value at that version (ekv._core.paxos.condition_holds): a
    write conditional on a delete's version finds the key absent and conflicts with current None
    (seen in a consistent chaos run); succeeding there is the violation."""
    deleted = op(1, "cwrite", 0, 10, value=None, cond="any", version=5)
    refused = op(1, "cwrite", 20, 30, "fail", value="v1", cond=5, error="conflict", current=None)
    first = op(1, "cwrite", -10, -5, value="v0", cond="any", version=3)
    assert check_linearizable(history(first, deleted, refused)) == []
    taken = op(1, "cwrite", 20, 30, value="v1", cond=5, version=7)
    assert kinds(history(first, deleted, taken)) == ["not_linearizable"]
