"""The backfill's progress: its ETA from what the metrics say (pure, no clock but the one given)."""

from __future__ import annotations

import pytest

from consumer.metrics import Metrics
from consumer.progress import RATE_MIN, SendRate, snapshot


def backfill_metrics(
    *, target: int, committed: int, consumed: int, sent: int, held: int
) -> Metrics:
    m = Metrics()
    m.target.labels("t", "0").set(target)
    m.committed.labels("t", "0").set(committed)
    m.consumed.inc(consumed)
    m.users_sent.inc(sent)
    m.held_states.labels("memory").set(held)
    return m


def test_the_eta_counts_held_users_not_only_those_sent():
    # Read ahead: 100,000 of 200,000 events read, 10,000 users held, none sent yet. Users per
    # event so far: 0.1, so 20,000 users left for 200,000 events, at 1,000 a second.
    m = backfill_metrics(target=200_000, committed=0, consumed=100_000, sent=0, held=10_000)
    snap = snapshot(m, 0.0, bulk_per_second=1000.0, now=5.0)
    assert snap.eta == pytest.approx(20.0)


def test_the_eta_follows_the_rate_users_are_sent_at_not_the_budget():
    m = backfill_metrics(
        target=200_000, committed=100_000, consumed=200_000, sent=2_000, held=18_000
    )
    promised = snapshot(m, 0.0, bulk_per_second=1000.0, now=60.0)
    got = snapshot(m, 0.0, bulk_per_second=1000.0, send_rate=10.0, now=60.0)
    # 100,000 events left at 0.1 users an event: 10 s at the budget, 1,000 s at what it gets.
    assert promised.eta == pytest.approx(10.0)
    assert got.eta == pytest.approx(1000.0)
    assert snapshot(m, 0.0, bulk_per_second=1000.0, send_rate=0.0, now=60.0).eta is None


def test_the_send_rate_is_measured_over_the_recent_window_once_there_is_enough():
    rate = SendRate()
    assert rate.add(0.0, 0) is None  # nothing sent yet: nothing measured
    assert rate.add(1.0, 100) is None
    assert rate.add(1.0 + RATE_MIN / 2, 150) is None  # too short a time
    assert rate.add(1.0 + RATE_MIN, 200) == pytest.approx(100 / RATE_MIN)
    # Long after: only the last window counts (stalled at 200 since).
    for t in range(20, 200, 5):
        last = rate.add(float(t), 200)
    assert last == 0.0
