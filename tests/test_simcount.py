"""The split of the cluster simulator's "messages per write" (src/ekv/testing/_internal/simcount.py,
issue 15): the figures in docs/scale.md are only as honest as this count."""

from __future__ import annotations

from collections import Counter

import pytest

from ekv.testing._internal.simcount import _KINDS, GROUPS, count


@pytest.mark.soak  # (19-30 s of wall time on the loaded 2-core machine: over CI's budget)
def test_the_split_accounts_for_every_message_the_simulator_counts() -> None:
    """20 nodes (the broadcast tree is active from 16) for 2 s: every frame the simulator counts in
    its total is named, each name is in exactly one group, and the tree's frames are there."""
    writes, messages, rows = count(900, 20, seconds=2, timeline=True)
    total: Counter[str] = Counter()
    for _, _, kinds in rows:
        total.update(kinds)
    assert writes > 0
    assert total.total() == messages
    assert set(total) <= set(_KINDS.values()), total  # no "frame c/k": a kind the split does not know
    grouped = [kind for kinds in GROUPS.values() for kind in kinds]
    assert sorted(grouped) == sorted(_KINDS.values())
    assert total["Gossip"] > 0 and total["IHave"] > 0, total
