"""Merges repeating a ``messageId`` (:mod:`consumer.ordering.repeats`)."""

from __future__ import annotations

from consumer.ordering.repeats import RecentIds

A, B = ("t", 0), ("t", 1)


def test_the_same_id_elsewhere_is_a_repeat_and_at_the_same_position_a_reread():
    ids = RecentIds(10)
    assert not ids.duplicate("m1", A, 5)
    assert ids.duplicate("m1", B, 7)
    assert ids.duplicate("m1", A, 6)
    assert not ids.duplicate("m1", A, 5)  # the first one read again (a rewind)


def test_only_the_last_ids_are_remembered_and_a_repeat_counts_as_recent():
    ids = RecentIds(2)
    assert not ids.duplicate("m1", A, 1)
    assert not ids.duplicate("m2", A, 2)
    assert ids.duplicate("m1", B, 1)  # m1 is now the most recent
    assert not ids.duplicate("m3", A, 3)  # m2 goes
    assert ids.duplicate("m1", B, 2)
    assert not ids.duplicate("m2", B, 9)


def test_without_an_id_or_a_memory_nothing_repeats():
    assert not RecentIds(10).duplicate(None, A, 1)
    off = RecentIds(0)
    assert not off.duplicate("m1", A, 1) and not off.duplicate("m1", B, 1)


def test_only_a_merge_can_repeat_and_each_repeat_is_counted():
    from consumer.ops import Identify, Merge

    counted: list[int] = []
    ids = RecentIds(10, lambda: counted.append(1))
    merge = Merge(user_id="b", from_user_id="a", message_id="m1")
    assert not ids.repeats(merge, A, 1)  # first seen: remembered
    assert ids.repeats(merge, A, 2)  # same id elsewhere: a repeat, counted
    assert not ids.repeats(merge, A, 1)  # the same event read again goes on
    assert not ids.repeats(Identify("a", {}), A, 3)
    assert counted == [1]
