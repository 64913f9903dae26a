"""The entity-gap memory both appliers share: pure, with a scripted clock and sleep."""

from __future__ import annotations

import consumer.entity_gap as entity_gap_mod
from consumer.entity_gap import EntityGap


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_an_entity_is_recent_for_one_gap_after_its_bulk_call():
    clock = Clock()
    gap = EntityGap(1.0, clock=clock)
    gap.stamp(["a", "b"], 100.0)
    assert gap.recent(["a", "b", "c"], 100.5) == {"a", "b"}
    assert gap.recent(["a", "c"], 101.0) == set()  # exactly a gap later: Knock takes it
    assert len(gap) == 2


def test_without_a_gap_nothing_is_remembered_nor_waited_for():
    clock = Clock()
    gap = EntityGap(0.0, clock=clock, sleep=clock.sleep)
    assert not gap
    gap.stamp(["a"], 100.0)
    gap.wait_out(["a"])
    assert len(gap) == 0 and gap.recent(["a"], 100.0) == set() and clock.slept == []


def test_a_stamp_without_a_time_reads_the_clock():
    clock = Clock()
    gap = EntityGap(1.0, clock=clock)
    gap.stamp(["a"])
    clock.now = 100.9
    assert gap.recent(["a"], clock()) == {"a"}


def test_wait_out_waits_for_the_latest_of_its_keys_then_stamps_them():
    clock = Clock()
    gap = EntityGap(1.0, clock=clock, sleep=clock.sleep)
    gap.stamp(["a"], 99.5)
    gap.stamp(["b"], 99.75)
    gap.wait_out(["a", "b", "new"])
    assert clock.slept == [0.75]
    assert gap.recent(["a", "b", "new"], 100.75) == {"a", "b", "new"}


def test_wait_out_does_not_wait_for_keys_a_gap_old():
    clock = Clock()
    gap = EntityGap(1.0, clock=clock, sleep=clock.sleep)
    gap.stamp(["a"], 98.0)
    gap.wait_out(["a"])
    assert clock.slept == []


def test_a_refused_call_is_forgotten():
    gap = EntityGap(1.0, clock=Clock())
    gap.stamp(["a", "b"], 100.0)
    gap.forget(["a", "zz"])
    assert gap.recent(["a", "b"], 100.0) == {"b"}


def test_past_the_prune_size_entities_a_gap_old_are_forgotten(monkeypatch):
    monkeypatch.setattr(entity_gap_mod, "PRUNE_AT", 3)
    gap = EntityGap(1.0, clock=Clock())
    gap.stamp(["old1", "old2"], 10.0)
    gap.stamp(["new1"], 100.0)
    assert len(gap) == 3
    gap.stamp(["new2"], 100.5)  # four entities: the two a gap old go
    assert len(gap) == 2
    assert gap.recent(["new1", "new2"], 100.9) == {"new1", "new2"}
