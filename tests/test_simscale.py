"""Issue 15's scale scenario (ekv.testing._internal.simscale): the cluster simulator's real nodes
through a join, fault-free writes (the broadcast's cost per write), a partition of two halves with
writes on both sides, the heal (the time to converge) and an idle spell (anti-entropy's cost)."""

from __future__ import annotations

import pytest

from ekv.testing._internal.simscale import main, run_scale


@pytest.mark.soak
def test_seventeen_nodes_in_large_mode_cost_about_n_minus_1_frames_per_write_and_converge_after_a_heal() -> None:
    """Just above the threshold of large mode (16): the tree carries every write, so the
    steady phase costs about N-1 Gossip plus lazy announcements. The halves (8 and 9) fall below
    the threshold during the partition and reconnect as a mesh. About 10 s of wall time."""
    f = run_scale(17, 1, join_s=3, steady_s=2, partition_s=10, idle_s=1)
    assert f.problems == []
    assert f.steady_kinds["Gossip"] >= 0.9 * 16 * f.steady_writes  # (not direct sends to a handful)
    assert f.per_write_over_bound <= 2.0, f.steady_kinds  # (measured 1.56-1.60 with seeds 1-2)
    assert f.converged_ms <= 10_000
    assert f.sessions_mean <= 10


@pytest.mark.long
@pytest.mark.parametrize("seed", [0, 1])
def test_one_hundred_nodes_in_ci_under_the_bound_and_converged_soon_after_a_heal(seed: int) -> None:
    """Issue 15's 100-node runs in CI, shortened to about 30 s of CPU each: 3 s to join, 2 s of
    fault-free writes (at most 2 (N-1) frames per write: measured 1.89 (N-1) with seeds 0 and 1),
    a 4 s partition of two halves with writes on both sides, and the heal (converged within
    10 s: measured 1.5 s). The full scenario is the soak test below."""
    f = run_scale(100, seed, join_s=3, steady_s=2, partition_s=4, idle_s=0)
    assert f.problems == []
    assert f.per_write_over_bound <= 2.0, f.steady_kinds
    assert f.steady_kinds["Gossip"] >= 0.95 * 99 * f.steady_writes
    assert f.converged_ms <= 10_000
    assert f.sessions_mean <= 12


@pytest.mark.soak
def test_one_hundred_nodes_converge_within_ten_seconds_of_a_partitions_heal() -> None:
    """Issue 15's targets at 100 nodes: at most 2 (N-1) frames per write while writes flow, and
    converged within 10 s of virtual time after a partition of two halves heals (docs/scale.md).
    A few minutes of wall time."""
    f = run_scale(100, 0)
    assert f.problems == []
    assert f.per_write_over_bound <= 2.0, f.steady_kinds
    assert f.converged_ms <= 10_000
    assert f.sessions_mean <= 12


def test_the_script_prints_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "4", "--seeds", "1", "--partition", "1", "--steady", "1"]) == 0
    out = capsys.readouterr().out
    assert "| 4 | 0 |" in out and "converged after the heal" in out
