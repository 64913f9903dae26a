"""Tests for :mod:`consumer.tracker`: script-style scenarios, errors, ownership, randomised."""

from __future__ import annotations

import random

import pytest

from consumer.records import Partition
from consumer.tracker import Handle, OffsetTracker, PartitionTracker

TP = ("events", 0)
TP1 = ("events", 1)
OTHER = ("other", 0)


class Script:
    """One-line steps over a :class:`PartitionTracker`, each checking the position after it."""

    def __init__(self) -> None:
        self.t = PartitionTracker()

    def track(self, *offsets: int) -> Script:
        for o in offsets:
            self.t.track(o)
        return self

    def resolve(self, offset: int, expect: int | None) -> Script:
        self.t.resolve(offset)
        assert self.t.committable() == expect, f"after resolving {offset}"
        return self

    def committable(self, expect: int | None) -> Script:
        assert self.t.committable() == expect
        return self

    def pending(self, expect: int) -> Script:
        assert self.t.pending() == expect
        return self


# --- PartitionTracker scenarios ---------------------------------------------------------------


def test_fresh_tracker_has_nothing_committable() -> None:
    Script().committable(None).pending(0)


def test_tracked_but_unresolved_is_not_committable() -> None:
    Script().track(0, 1, 2).committable(None).pending(3)


def test_in_order() -> None:
    s = Script().track(0, 1, 2, 3)
    s.resolve(0, 1)
    s.resolve(1, 2)
    s.resolve(2, 3)
    s.resolve(3, 4)
    s.pending(0)


def test_reverse_order_commits_only_at_the_end() -> None:
    (
        Script()
        .track(0, 1, 2, 3)
        .resolve(3, None)
        .resolve(2, None)
        .resolve(1, None)
        .pending(1)
        .resolve(0, 4)
        .pending(0)
    )


def test_out_of_order() -> None:
    (
        Script()
        .track(10, 11, 12, 13, 14, 15)
        .resolve(12, None)
        .resolve(10, 11)
        .resolve(14, 11)
        .resolve(11, 13)
        .resolve(15, 13)
        .resolve(13, 16)
    )


def test_first_offset_not_zero() -> None:
    Script().track(1000).resolve(1000, 1001)


def test_gaps_are_not_waited_for() -> None:
    # Compaction or transaction markers leave holes: only tracked offsets matter.
    (
        Script()
        .track(5, 9, 20, 21, 100)
        .resolve(9, None)
        .resolve(5, 10)
        .resolve(21, 10)
        .resolve(20, 22)
        .resolve(100, 101)
    )


def test_position_holds_while_head_unresolved_and_tracking_continues() -> None:
    t = Script().track(0, 1).resolve(1, None)
    t.track(2, 3).resolve(2, None).resolve(3, None).pending(1)
    t.resolve(0, 4).pending(0)


def test_position_survives_drain_and_further_tracking() -> None:
    t = Script().track(0, 1).resolve(0, 1).resolve(1, 2)
    t.track(7).committable(2).pending(1)
    t.resolve(7, 8)


def test_interleaved_track_and_resolve() -> None:
    t = Script()
    for o in range(100):
        t.track(o)
        t.resolve(o, o + 1)
    t.pending(0)


def test_pending_counts_resolved_but_blocked_as_not_pending() -> None:
    Script().track(0, 1, 2).resolve(2, None).pending(2).resolve(1, None).pending(1)


# --- PartitionTracker errors ------------------------------------------------------------------


def test_track_repeated_offset_raises() -> None:
    t = PartitionTracker()
    t.track(3)
    with pytest.raises(ValueError, match="tracked after"):
        t.track(3)


def test_track_lower_offset_raises() -> None:
    t = PartitionTracker()
    t.track(3)
    with pytest.raises(ValueError):
        t.track(2)


def test_track_lower_offset_raises_even_after_everything_resolved() -> None:
    t = PartitionTracker()
    t.track(3)
    t.resolve(3)
    with pytest.raises(ValueError):
        t.track(3)
    with pytest.raises(ValueError):
        t.track(0)
    assert t.committable() == 4


def test_failed_track_changes_nothing() -> None:
    t = PartitionTracker()
    t.track(3)
    with pytest.raises(ValueError):
        t.track(1)
    assert t.pending() == 1
    t.resolve(3)
    assert t.committable() == 4


def test_resolve_untracked_raises() -> None:
    t = PartitionTracker()
    with pytest.raises(ValueError, match="not tracked"):
        t.resolve(0)
    t.track(0)
    t.track(2)
    with pytest.raises(ValueError):
        t.resolve(1)  # a gap, never tracked
    with pytest.raises(ValueError):
        t.resolve(3)


def test_resolve_twice_raises_while_blocked() -> None:
    t = PartitionTracker()
    t.track(0)
    t.track(1)
    t.resolve(1)
    with pytest.raises(ValueError, match="already resolved"):
        t.resolve(1)
    assert t.pending() == 1


def test_resolve_twice_raises_after_commit_moved_past() -> None:
    t = PartitionTracker()
    t.track(0)
    t.resolve(0)
    with pytest.raises(ValueError):
        t.resolve(0)
    assert t.committable() == 1


def test_failed_resolve_changes_nothing() -> None:
    t = Script().track(0, 1, 2).resolve(1, None)
    with pytest.raises(ValueError):
        t.t.resolve(5)
    t.pending(2).resolve(0, 2).resolve(2, 3)


# --- OffsetTracker and its handles -------------------------------------------------------------


class Owned:
    """An :class:`OffsetTracker` whose handles the test keeps by position, so that scenarios
    read ``track(TP, 0)`` / ``resolve(TP, 0)``."""

    def __init__(self, *tps: Partition) -> None:
        self.t = OffsetTracker()
        self.t.add(tps)
        self.handles: dict[tuple[Partition, int], Handle] = {}

    def track(self, tp: Partition, offset: int) -> Handle:
        handle = self.t.track(tp, offset)
        self.handles[(tp, offset)] = handle
        return handle

    def resolve(self, tp: Partition, offset: int) -> bool:
        return self.handles[(tp, offset)].release()

    def __getattr__(self, name: str) -> object:
        return getattr(self.t, name)


def owned(*tps: Partition) -> Owned:
    return Owned(*tps)


def test_partitions_are_independent() -> None:
    t = owned(TP, TP1, OTHER)
    for o in (0, 1, 2):
        t.track(TP, o)
        t.track(TP1, o + 50)
    t.track(OTHER, 7)
    t.resolve(TP, 1)
    t.resolve(TP1, 50)
    assert t.committable() == {TP1: 51}
    t.resolve(TP, 0)
    t.resolve(OTHER, 7)
    assert t.committable() == {TP: 2, TP1: 51, OTHER: 8}
    assert t.pending() == 3


def test_committable_empty_when_nothing_resolved() -> None:
    t = owned(TP)
    t.track(TP, 0)
    assert t.committable() == {}


def test_committable_reports_only_advanced_partitions() -> None:
    t = owned(TP, TP1)
    for o in range(4):
        t.track(TP, o)
        t.track(TP1, o)
    t.resolve(TP, 0)
    t.resolve(TP1, 0)
    positions = t.committable()
    assert positions == {TP: 1, TP1: 1}
    t.mark_committed(positions)
    assert t.committable() == {}
    t.resolve(TP, 1)
    assert t.committable() == {TP: 2}
    t.resolve(TP1, 2)  # blocked behind 1: no advance
    assert t.committable() == {TP: 2}
    t.mark_committed({TP: 2})
    assert t.committable() == {}


def test_committable_is_repeated_until_marked() -> None:
    # A failed commit must be retried: nothing is forgotten until mark_committed.
    t = owned(TP)
    t.track(TP, 0)
    t.resolve(TP, 0)
    assert t.committable() == {TP: 1}
    assert t.committable() == {TP: 1}


def test_mark_committed_with_stale_position_keeps_reporting_newer() -> None:
    t = owned(TP)
    for o in range(3):
        t.track(TP, o)
    t.resolve(TP, 0)
    first = t.committable()
    t.resolve(TP, 1)
    t.mark_committed(first)  # the commit of {TP: 1} finished after 1 was resolved
    assert t.committable() == {TP: 2}


def test_mark_committed_ignores_unowned() -> None:
    t = owned(TP)
    t.mark_committed({TP1: 5})
    assert not t.owns(TP1)
    t.add([TP1])
    t.track(TP1, 4)
    t.resolve(TP1, 4)
    assert t.committable() == {TP1: 5}  # the stale mark did not leak into the new ownership


def test_track_on_unowned_partition_raises() -> None:
    t = OffsetTracker()
    with pytest.raises(KeyError, match="not owned"):
        t.track(TP, 0)


def test_track_errors_propagate() -> None:
    t = owned(TP)
    t.track(TP, 5)
    with pytest.raises(ValueError):
        t.track(TP, 5)


def test_a_handle_released_more_often_than_held_raises() -> None:
    t = owned(TP)
    handle = t.track(TP, 0)
    assert handle.release() is True
    with pytest.raises(ValueError, match="more often than held"):
        handle.release()


def test_each_hold_needs_its_release_before_the_offset_resolves() -> None:
    t = owned(TP)
    handle = t.track(TP, 0)
    handle.hold()
    handle.hold()
    assert handle.release() is False and handle.release() is False
    assert t.committable() == {}
    assert handle.release() is True
    assert t.committable() == {TP: 1}


def test_drop_then_late_release_is_ignored() -> None:
    t = owned(TP, TP1)
    for o in range(3):
        t.track(TP, o)
        t.track(TP1, o)
    t.resolve(TP, 0)
    t.drop([TP])
    assert t.resolve(TP, 1) is False
    assert t.resolve(TP, 2) is False
    assert not t.handles[(TP, 1)].current
    assert t.committable() == {}
    assert t.pending() == 3
    assert not t.owns(TP)


def test_drop_unknown_partition_is_harmless() -> None:
    t = owned(TP)
    t.drop([OTHER])
    assert t.owns(TP)


def test_reassigned_partition_starts_fresh() -> None:
    t = owned(TP)
    t.track(TP, 0)
    t.track(TP, 1)
    t.resolve(TP, 0)
    t.mark_committed(t.committable())
    t.drop([TP])
    t.add([TP])
    assert t.pending() == 0
    assert t.committable() == {}
    # The new owner may be handed lower offsets again (re-read from the last commit).
    t.track(TP, 1)
    assert t.resolve(TP, 1) is True
    assert t.committable() == {TP: 2}


def test_reassigned_partition_reports_same_position_again() -> None:
    # After a re-assign the committed mark is forgotten: committing the same position twice is
    # harmless, skipping it is not.
    t = owned(TP)
    t.track(TP, 0)
    t.resolve(TP, 0)
    t.mark_committed({TP: 1})
    t.drop([TP])
    t.add([TP])
    t.track(TP, 0)
    t.resolve(TP, 0)
    assert t.committable() == {TP: 1}


def test_add_is_idempotent_for_owned_partition() -> None:
    t = owned(TP)
    t.track(TP, 0)
    t.add([TP, TP1])
    assert t.pending() == 1
    assert t.owns(TP1)


def test_nothing_owned_has_nothing_pending() -> None:
    assert OffsetTracker().pending() == 0


def test_drop_accepts_any_iterable() -> None:
    t = owned(TP, TP1)
    t.drop(tp for tp in (TP, TP1))
    assert not t.owns(TP) and not t.owns(TP1)


def test_a_handle_names_its_partition_and_offset() -> None:
    handle = owned(TP).track(TP, 7)
    assert (handle.partition, handle.offset, handle.current) == (TP, 7, True)


def test_a_dead_letter_is_claimed_once_and_never_for_a_retired_generation() -> None:
    t = owned(TP)
    first, second = t.track(TP, 0), t.track(TP, 1)
    assert first.claim_dead_letter() is True
    assert first.claim_dead_letter() is False
    t.restart(TP)
    assert second.claim_dead_letter() is False


# --- randomised -------------------------------------------------------------------------------


def brute_force_position(tracked: list[int], resolved: set[int]) -> int | None:
    position = None
    for o in tracked:
        if o not in resolved:
            break
        position = o + 1
    return position


@pytest.mark.parametrize("seed", range(3))
def test_random_resolution_order_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    offsets: list[int] = []
    o = rng.randrange(1000)
    for _ in range(10_000):
        offsets.append(o)
        o += rng.choice((1, 1, 1, 2, 5))  # mostly dense, with gaps
    t = PartitionTracker()
    for o in offsets:
        t.track(o)
    order = offsets[:]
    rng.shuffle(order)
    resolved: set[int] = set()
    # Brute force is O(n) per step; advance its scan incrementally to keep the test fast while
    # still checking every step against a from-scratch definition.
    head = 0
    for step, o in enumerate(order, 1):
        t.resolve(o)
        resolved.add(o)
        while head < len(offsets) and offsets[head] in resolved:
            head += 1
        expected = offsets[head - 1] + 1 if head else None
        assert t.committable() == expected
        assert t.pending() == len(offsets) - step
        if step % 1000 == 0:
            assert t.committable() == brute_force_position(offsets, resolved)
    assert t.committable() == offsets[-1] + 1


@pytest.mark.parametrize("seed", range(3))
def test_random_interleaving_of_track_resolve_and_commit(seed: int) -> None:
    # Never commits an unresolved offset, whatever the interleaving, across partitions.
    rng = random.Random(seed)
    tps = [("t", p) for p in range(3)]
    t = owned(*tps)
    tracked: dict[Partition, list[int]] = {tp: [] for tp in tps}
    resolved: dict[Partition, set[int]] = {tp: set() for tp in tps}
    unresolved: list[tuple[Partition, int]] = []
    next_offset = dict.fromkeys(tps, 0)
    committed: dict[Partition, int] = {}
    for _ in range(5000):
        action = rng.random()
        if action < 0.5:
            tp = rng.choice(tps)
            t.track(tp, next_offset[tp])
            tracked[tp].append(next_offset[tp])
            unresolved.append((tp, next_offset[tp]))
            next_offset[tp] += rng.choice((1, 1, 3))
        elif action < 0.9 and unresolved:
            tp, o = unresolved.pop(rng.randrange(len(unresolved)))
            assert t.resolve(tp, o) is True
            resolved[tp].add(o)
        else:
            positions = t.committable()
            for tp, position in positions.items():
                assert position != committed.get(tp)
                # Everything below the position that was tracked is resolved.
                assert all(o in resolved[tp] for o in tracked[tp] if o < position)
                assert position == brute_force_position(tracked[tp], resolved[tp])
            t.mark_committed(positions)
            committed.update(positions)
        assert t.pending() == len(unresolved)


def test_random_small_full_brute_force_every_step() -> None:
    rng = random.Random(42)
    offsets = sorted(rng.sample(range(3000), 1000))
    t = PartitionTracker()
    for o in offsets:
        t.track(o)
    resolved: set[int] = set()
    for o in rng.sample(offsets, len(offsets)):
        t.resolve(o)
        resolved.add(o)
        assert t.committable() == brute_force_position(offsets, resolved)


# --- generations: results from before a drop/add or a restart never count -------------------


def test_a_result_from_before_a_revoke_and_reassign_is_ignored() -> None:
    t = OffsetTracker()
    t.add([TP])
    old = t.track(TP, 0)
    t.drop([TP])
    t.add([TP])
    new = t.track(TP, 0)  # the same offset number, read again after the reassignment
    assert not old.current and new.current
    assert old.release() is False  # the late result must not resolve the new read
    assert t.committable() == {}
    assert new.release() is True
    assert t.committable() == {TP: 1}


def test_restart_after_a_rewind_starts_a_new_generation() -> None:
    t = OffsetTracker()
    t.add([TP])
    old = t.track(TP, 339)
    assert not t.accepts(TP, 0)
    t.restart(TP)
    assert t.accepts(TP, 0)
    new = t.track(TP, 0)
    assert old.release() is False
    assert t.pending() == 1
    assert new.release() is True
    assert t.committable() == {TP: 1}
