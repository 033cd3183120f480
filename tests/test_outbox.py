"""The outbox's wake-up rule (src/ekv/_cluster/outbox.py): the network thread is woken by the write
that finds it idle; while writes pour in it drains on its own timer and writers do not wake it."""

from __future__ import annotations

from ekv._cluster.outbox import BUSY, RATE_DRAINS, RATE_WINDOW_S, Outbox
from ekv._model import Entry


def _entry(i: int) -> list[Entry]:
    return [Entry(f"k/{i}", i, "o", i, None, b"v")]


def _wakeups(outbox: Outbox, puts: int, gap_s: float) -> int:
    """One writer: a put, then (if it woke the loop) a drain ``gap_s`` later; the wake-ups."""
    wakeups, now, scheduled = 0, 0.0, False
    for i in range(puts):
        if outbox.put(0, _entry(i)):
            wakeups += 1
            scheduled = True
        now += gap_s
        if scheduled:  # the woken (or timed) drain
            _, scheduled = outbox.take(stopping=False, now_s=now)
    return wakeups


def test_a_writer_putting_back_to_back_stops_waking_the_network_thread() -> None:
    """One put per drain, faster than RATE_DRAINS drains per RATE_WINDOW_S: after the first few,
    the outbox stays scheduled (the driver drains on its 2 ms timer) and puts wake nothing.
    Before, only BUSY commits queued at one drain did that, which one sequential writer never
    reaches: every put paid a wake-up and the GIL hand-offs it causes."""
    outbox = Outbox()
    assert _wakeups(outbox, 100, RATE_WINDOW_S / (2 * RATE_DRAINS)) <= RATE_DRAINS


def test_spaced_writes_wake_the_network_thread_at_once() -> None:
    """Puts that each wait for something (a reply, a round trip) keep the immediate wake-up, so
    replication latency is not traded away: one wake-up per put."""
    outbox = Outbox()
    assert _wakeups(outbox, 50, RATE_WINDOW_S) == 50


def test_many_commits_at_one_drain_still_mean_busy_and_stopping_never_does() -> None:
    outbox = Outbox()
    for i in range(BUSY):
        outbox.put(0, _entry(i))
    assert outbox.take(stopping=False)[1]
    for i in range(BUSY):
        outbox.put(0, _entry(i))
    assert not outbox.take(stopping=True)[1]
