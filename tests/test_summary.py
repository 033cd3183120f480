"""The pure parts of summary anti-entropy (src/ekv/_cluster/summary.py): the partners' rotation
and the version-vector digests. The probes themselves: tests/test_replicator_port.py."""

from __future__ import annotations

import random

from ekv._cluster.summary import BACK_QUEUE, Rotation, differing, digest


def test_each_pass_of_the_rotation_visits_every_member_once_in_a_new_order() -> None:
    members = [f"m{i}" for i in range(10)]
    rotation = Rotation(random.Random(1))
    passes = [[rotation.next(members) for _ in members] for _ in range(4)]
    for visited in passes:
        assert sorted(visited) == members
    assert len({tuple(p) for p in passes}) > 1  # shuffled anew, not a fixed order


def test_the_rotation_skips_members_gone_and_adds_new_ones_at_the_next_pass() -> None:
    rotation = Rotation(random.Random(2))
    first = rotation.next(["a", "b", "c"])
    assert first is not None
    rest = {"a", "b", "c"} - {first}
    gone = sorted(rest)[0]
    now = (rest - {gone}) | {"d"}
    second = rotation.next(now)
    assert second in rest - {gone}  # "d" waits for the next pass; the one gone is skipped
    third = rotation.next(now)
    assert third in now
    assert rotation.next([]) is None


def test_the_same_seed_gives_the_same_partners() -> None:
    members = [f"m{i}" for i in range(7)]
    a, b = Rotation(random.Random(3)), Rotation(random.Random(3))
    assert [a.next(members) for _ in range(20)] == [b.next(members) for _ in range(20)]


def test_members_back_get_extra_rounds_one_a_second_bounded_until_one_is_in_sync() -> None:
    """After a heal (large mode): the members SWIM sees back wait for extra rounds, at most
    BACK_QUEUE of them, one per gap; those no longer eligible are skipped; a partner of an extra
    round found with the same data ends the others (a regular round's partner does not)."""
    s = 1_000_000_000
    rotation = Rotation(random.Random(4))
    for member in ["a", "b", "c", "d", "e", "f"]:
        rotation.back(member)
    live = ["b", "c", "d", "e", "f"]
    assert rotation.next_back(live, 0, s) == "b"  # ("a" is gone; "e" and "f" did not fit)
    assert rotation.next_back(live, s // 2, s) is None  # (one a second)
    rotation.in_sync("x")  # a regular round's partner: nothing changes
    assert rotation.next_back(live, s, s) == "c"
    rotation.in_sync("c")
    assert rotation.next_back(live, 3 * s, s) is None
    rotation.back("f")
    assert rotation.next_back(live, 4 * s, s) == "f"
    assert BACK_QUEUE == 4


def test_digests_are_equal_exactly_for_equal_vectors() -> None:
    vv = {"a1": 3, "b1": 7}
    assert digest(vv) == digest({"b1": 7, "a1": 3}) == digest({"a1": 3, "b1": 7, "c1": 0})
    assert len(digest(vv)) == 8
    assert digest(vv) != digest({"a1": 3, "b1": 8})
    assert digest(vv) != digest({"a1": 3})
    assert digest({"a": 13}) != digest({"a1": 3})  # the origin's end is marked
    assert digest({}) == digest({"x": 0})
    assert differing([digest(vv), digest({})], [digest(vv), digest({"a1": 1})]) == (1,)
