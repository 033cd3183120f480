"""A Jepsen-style chaos harness for ekv: real node processes, clients that record a history, a
seeded nemesis (partitions of every shape, kill -9 and restart, SIGSTOP pauses, wall-clock skew
and bumps, packet loss) and the offline checker's verdict.

    python -m ekv.testing._internal.chaos --nodes 5 --minutes 10 --seed 7

Modules: :mod:`.nemesis` (the seeded fault schedule, pure), :mod:`.net` (network namespaces or
loopback), :mod:`.skew` (per-process wall-clock shim), :mod:`.workload` (a node's clients),
:mod:`.runner` (one run, end to end). See docs/reliability.md for what it found.
"""

from ekv.testing._internal.chaos.nemesis import KINDS, Event, schedule
from ekv.testing._internal.chaos.runner import RunOptions, RunResult, run

__all__ = ["KINDS", "Event", "RunOptions", "RunResult", "run", "schedule"]
