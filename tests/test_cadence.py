"""When the loop cuts a plan (consumer.cadence): pure logic, no clock."""

from __future__ import annotations

from consumer.cadence import Cadence


def test_paced_cut_waits_for_the_bulk_limiter_then_goes_at_once() -> None:
    c = Cadence(flush_interval=0.5, paced=True)
    kw = {"pending": 10, "full_at": 1060, "last_cut": 100.0}
    # The interval has passed, but the bulk call could not leave: cutting would freeze the plan.
    assert not c.due(100.6, bulk_ready_in=0.4, **kw)
    assert c.due(101.0, bulk_ready_in=0.0, **kw)


def test_flush_interval_is_the_least_time_between_cuts() -> None:
    c = Cadence(flush_interval=2.0, paced=True)
    kw = {"pending": 10, "full_at": 1060, "last_cut": 100.0}
    assert not c.due(101.5, bulk_ready_in=0.0, **kw)
    assert c.due(102.0, bulk_ready_in=0.0, **kw)


def test_a_full_plan_is_cut_at_once_once_its_bulk_call_could_leave() -> None:
    c = Cadence(flush_interval=5.0, paced=True)
    kw = {"pending": 1060, "full_at": 1060, "last_cut": 100.0}
    # Pending ops include those of users in flight: cut early, it would carry fewer users.
    assert not c.due(100.1, bulk_ready_in=0.9, **kw)
    assert c.due(100.1, bulk_ready_in=0.0, **kw)
    assert Cadence(flush_interval=5.0, paced=False).due(100.1, bulk_ready_in=0.9, **kw)


def test_unpaced_cut_ignores_the_limiter() -> None:
    c = Cadence(flush_interval=0.5, paced=False)
    kw = {"pending": 10, "full_at": 8000, "last_cut": 100.0}
    assert not c.due(100.4, bulk_ready_in=0.0, **kw)
    assert c.due(100.5, bulk_ready_in=3.0, **kw)
