"""Tests for :mod:`consumer.plan`: exact plans for small scenarios, then randomised equivalence
with applying every op alone, against a model of Knock in both merge modes."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import pytest

from consumer.ops import Identify, Merge, Op
from consumer.plan import RIDER, Entry, Level, MergeStep, Pending, Plan, Planner
from tests.model import deep_merge

# --- helpers ------------------------------------------------------------------------------------


def ident(seq: int, user: str, props: dict[str, Any] | None = None, **kw: Any) -> Pending:
    return Pending(seq, Identify(user, {**(props or {}), **kw}), ("t", 0, seq))


def merge(seq: int, into: str, from_: str) -> Pending:
    return Pending(seq, Merge(into, from_), ("t", 0, seq))


def planner(*ps: Pending) -> Planner:
    pl = Planner()
    for p in ps:
        pl.add(p)
    return pl


Step = tuple[Any, ...]


def view(plan: Plan) -> list[list[Step]]:
    """A plan as plain data: per level, ("I", user, props, seqs) then ("M", into, from, seq)."""
    out: list[list[Step]] = []
    for level in plan.levels:
        steps: list[Step] = [
            ("I", e.user_id, e.props, [p.seq for p in e.items]) for e in level.identifies
        ]
        for m in level.merges:
            assert isinstance(m.pending.op, Merge)
            steps.append(("M", m.pending.op.user_id, m.pending.op.from_user_id, m.pending.seq))
        out.append(steps)
    return out


def queued(pl: Planner) -> list[int]:
    """Seqs still pending, in queue order (read without changing anything)."""
    return [p.seq for p in pl._queue]


def pendings(plan: Plan) -> list[Pending]:
    """Every pending in the plan, level by level."""
    out: list[Pending] = []
    for level in plan.levels:
        for entry in level.identifies:
            out += entry.items
        out += [step.pending for step in level.merges]
    return out


def counts(plan: Plan) -> tuple[int, int, int]:
    """(coalesced identify entries, merges, pendings) of a plan."""
    entries = sum(len(level.identifies) for level in plan.levels)
    merges = sum(len(level.merges) for level in plan.levels)
    return entries, merges, len(pendings(plan))


def next_ready(pl: Planner, now: float) -> float | None:
    """When a cut would next take something: ``now`` if it would now, the earliest future time
    otherwise, ``None`` if nothing is pending (the caller's timer in the randomised runs). An op
    is sendable once it and every earlier op of its users are: a held op's own not_before may
    have passed while a barrier still holds it."""
    ready_at: dict[str, float] = {}
    earliest: float | None = None
    for p in pl._queue:
        users = (p.op.user_id,) if isinstance(p.op, Identify) else (p.op.user_id, p.op.from_user_id)
        t = max(p.not_before, *(ready_at.get(u, p.not_before) for u in users))
        for u in users:
            ready_at[u] = t
        if earliest is None or t < earliest:
            earliest = t
    return None if earliest is None else max(earliest, now)


# --- basics ---------------------------------------------------------------------------------------


def test_empty_cut() -> None:
    plan = Planner().cut(0.0)
    assert plan.levels == []
    assert not plan
    assert counts(plan) == (0, 0, 0)


def test_single_identify_shares_the_ops_props() -> None:
    p = ident(1, "u", name="A")
    plan = planner(p).cut(0.0)
    assert view(plan) == [[("I", "u", {"name": "A"}, [1])]]
    entry = plan.levels[0].identifies[0]
    assert entry.items[0] is p
    assert isinstance(p.op, Identify)
    assert entry.props is p.op.props  # no copy unless folded


def test_cut_takes_ops_out_of_the_queue() -> None:
    pl = planner(ident(1, "u", a=1), ident(2, "v", a=1))
    assert len(pl) == 2
    pl.cut(0.0)
    assert len(pl) == 0
    assert not pl.cut(0.0)


def test_add_requires_increasing_seq() -> None:
    pl = planner(ident(5, "u"))
    with pytest.raises(ValueError, match="added after"):
        pl.add(ident(5, "v"))
    with pytest.raises(ValueError):
        pl.add(ident(4, "v"))
    pl.cut(0.0)
    with pytest.raises(ValueError):  # still checked once the queue is empty
        pl.add(ident(3, "v"))
    pl.add(ident(6, "v"))


# --- coalescing ---------------------------------------------------------------------------------


def test_many_updates_of_one_user_coalesce_into_one_entry() -> None:
    ps = [ident(i, "u", {"n": i, f"k{i}": i}) for i in range(1, 51)]
    plan = planner(*ps).cut(0.0)
    expected_props = {"n": 50, **{f"k{i}": i for i in range(1, 51)}}
    assert view(plan) == [[("I", "u", expected_props, list(range(1, 51)))]]
    assert plan.levels[0].identifies[0].items == ps  # the same objects, in order
    assert counts(plan) == (1, 0, 50)


def test_interleaved_users_coalesce_per_user_in_one_level() -> None:
    plan = planner(
        ident(1, "u", a=1), ident(2, "v", a=2), ident(3, "u", b=3), ident(4, "v", a=4)
    ).cut(0.0)
    assert view(plan) == [[("I", "u", {"a": 1, "b": 3}, [1, 3]), ("I", "v", {"a": 4}, [2, 4])]]


def test_folding_never_mutates_the_callers_props() -> None:
    ps = [ident(1, "u", a=1), ident(2, "u", b=2), ident(3, "u", a=3)]
    before = [copy.deepcopy(p.op.props) for p in ps if isinstance(p.op, Identify)]
    plan = planner(*ps).cut(0.0)
    after = [p.op.props for p in ps if isinstance(p.op, Identify)]
    assert after == before
    entry = plan.levels[0].identifies[0]
    assert entry.props == {"a": 3, "b": 2}
    assert all(entry.props is not props for props in after)


def test_later_scalar_wins_and_none_overwrites() -> None:
    plan = planner(ident(1, "u", a=1, b="x"), ident(2, "u", a=None), ident(3, "u", b=None)).cut(0)
    assert view(plan) == [[("I", "u", {"a": None, "b": None}, [1, 2, 3])]]


def test_none_then_value_folds() -> None:
    plan = planner(ident(1, "u", a=None), ident(2, "u", a="back")).cut(0)
    assert view(plan) == [[("I", "u", {"a": "back"}, [1, 2])]]


def test_nested_dict_on_both_sides_splits() -> None:
    plan = planner(
        ident(1, "u", address={"city": "Paris"}), ident(2, "u", address={"zip": "75001"})
    ).cut(0)
    assert view(plan) == [
        [("I", "u", {"address": {"city": "Paris"}}, [1])],
        [("I", "u", {"address": {"zip": "75001"}}, [2])],
    ]


def test_scalar_then_dict_splits() -> None:
    # Deep-merge: a previous object at this key (from before the plan) would survive under B
    # alone; A's scalar in between wipes it. Folding would keep it: not exact.
    plan = planner(ident(1, "u", a=1), ident(2, "u", a={"x": 1})).cut(0)
    assert view(plan) == [[("I", "u", {"a": 1}, [1])], [("I", "u", {"a": {"x": 1}}, [2])]]


def test_none_then_dict_splits() -> None:
    plan = planner(ident(1, "u", a=None), ident(2, "u", a={"x": 1})).cut(0)
    assert len(plan.levels) == 2


def test_dict_then_scalar_folds() -> None:
    plan = planner(ident(1, "u", a={"x": 1}), ident(2, "u", a=2)).cut(0)
    assert view(plan) == [[("I", "u", {"a": 2}, [1, 2])]]


def test_dict_then_none_folds() -> None:
    plan = planner(ident(1, "u", a={"x": 1}), ident(2, "u", a=None)).cut(0)
    assert view(plan) == [[("I", "u", {"a": None}, [1, 2])]]


def test_dict_then_list_folds() -> None:
    plan = planner(ident(1, "u", a={"x": 1}), ident(2, "u", a=[1, 2])).cut(0)
    assert view(plan) == [[("I", "u", {"a": [1, 2]}, [1, 2])]]


def test_list_then_list_folds() -> None:
    plan = planner(ident(1, "u", a=[1]), ident(2, "u", a=[2])).cut(0)
    assert view(plan) == [[("I", "u", {"a": [2]}, [1, 2])]]


def test_dict_at_a_new_key_folds() -> None:
    plan = planner(ident(1, "u", name="n"), ident(2, "u", address={"city": "Oslo"})).cut(0)
    assert view(plan) == [[("I", "u", {"name": "n", "address": {"city": "Oslo"}}, [1, 2])]]


def test_after_a_split_later_updates_fold_into_the_newest_entry() -> None:
    plan = planner(
        ident(1, "u", a={"x": 1}),
        ident(2, "u", a={"y": 2}),
        ident(3, "u", name="n"),
        ident(4, "u", b={"z": 3}),
    ).cut(0)
    assert view(plan) == [
        [("I", "u", {"a": {"x": 1}}, [1])],
        [("I", "u", {"a": {"y": 2}, "name": "n", "b": {"z": 3}}, [2, 3, 4])],
    ]


def test_conflict_is_checked_against_everything_already_folded() -> None:
    # C's object at "a" conflicts with A's even though B, folded in between, did not touch "a".
    plan = planner(ident(1, "u", a={"x": 1}), ident(2, "u", b=2), ident(3, "u", a={"y": 1})).cut(0)
    assert view(plan) == [
        [("I", "u", {"a": {"x": 1}, "b": 2}, [1, 2])],
        [("I", "u", {"a": {"y": 1}}, [3])],
    ]


def test_split_of_one_user_does_not_push_other_users() -> None:
    plan = planner(
        ident(1, "u", a={"x": 1}), ident(2, "u", a={"y": 1}), ident(3, "v", a={"x": 1})
    ).cut(0)
    assert view(plan) == [
        [("I", "u", {"a": {"x": 1}}, [1]), ("I", "v", {"a": {"x": 1}}, [3])],
        [("I", "u", {"a": {"y": 1}}, [2])],
    ]


def test_split_entry_shares_its_ops_props_until_folded() -> None:
    a, b = ident(1, "u", a={"x": 1}), ident(2, "u", a={"y": 1})
    plan = planner(a, b).cut(0)
    assert isinstance(b.op, Identify)
    assert plan.levels[1].identifies[0].props is b.op.props


def test_empty_props_fold() -> None:
    plan = planner(ident(1, "u", a=1), ident(2, "u")).cut(0)
    assert view(plan) == [[("I", "u", {"a": 1}, [1, 2])]]


# --- merges -------------------------------------------------------------------------------------


def test_merge_orders_the_users_around_it() -> None:
    plan = planner(
        ident(1, "v", a=1),
        ident(2, "u", b=2),
        merge(3, "u", "v"),
        ident(4, "u", c=3),
        ident(5, "v", d=4),
    ).cut(0)
    assert view(plan) == [
        [("I", "v", {"a": 1}, [1]), ("I", "u", {"b": 2}, [2])],
        [("M", "u", "v", 3)],
        [("I", "u", {"c": 3}, [4]), ("I", "v", {"d": 4}, [5])],
    ]


def test_merge_with_no_earlier_op_goes_first() -> None:
    plan = planner(merge(1, "u", "v"), ident(2, "w", a=1)).cut(0)
    assert view(plan) == [[("I", "w", {"a": 1}, [2]), ("M", "u", "v", 1)]]


def test_merge_after_only_one_users_op() -> None:
    plan = planner(ident(1, "v", a=1), merge(2, "u", "v"), ident(3, "u", a=2)).cut(0)
    assert view(plan) == [
        [("I", "v", {"a": 1}, [1])],
        [("M", "u", "v", 2)],
        [("I", "u", {"a": 2}, [3])],
    ]


def test_identify_after_merge_does_not_fold_into_entry_before_it() -> None:
    plan = planner(ident(1, "u", a=1), merge(2, "u", "v"), ident(3, "u", b=2)).cut(0)
    assert view(plan) == [
        [("I", "u", {"a": 1}, [1])],
        [("M", "u", "v", 2)],
        [("I", "u", {"b": 2}, [3])],
    ]


def test_identifies_after_a_merge_fold_together() -> None:
    plan = planner(merge(1, "u", "v"), ident(2, "u", a=1), ident(3, "u", b=2)).cut(0)
    assert view(plan) == [[("M", "u", "v", 1)], [("I", "u", {"a": 1, "b": 2}, [2, 3])]]


def test_disjoint_merges_share_a_level() -> None:
    plan = planner(merge(1, "a", "b"), merge(2, "c", "d")).cut(0)
    assert view(plan) == [[("M", "a", "b", 1), ("M", "c", "d", 2)]]


def test_chained_merges_are_sequential() -> None:
    plan = planner(merge(1, "a", "b"), merge(2, "b", "c"), merge(3, "c", "d"), merge(4, "x", "a"))
    assert view(plan.cut(0)) == [
        [("M", "a", "b", 1)],
        [("M", "b", "c", 2), ("M", "x", "a", 4)],
        [("M", "c", "d", 3)],
    ]


def test_repeated_merge_of_same_pair_is_sequential() -> None:
    plan = planner(merge(1, "a", "b"), merge(2, "a", "b")).cut(0)
    assert view(plan) == [[("M", "a", "b", 1)], [("M", "a", "b", 2)]]


def test_merge_level_follows_the_higher_of_its_users() -> None:
    plan = planner(
        ident(1, "u", a={"x": 1}),
        ident(2, "u", a={"y": 1}),  # u now at level 1
        ident(3, "v", a=1),  # v at level 0
        merge(4, "v", "u"),
        ident(5, "v", b=1),
    ).cut(0)
    assert [[s[0] for s in level] for level in view(plan)] == [["I", "I"], ["I"], ["M"], ["I"]]
    assert view(plan)[2] == [("M", "v", "u", 4)]


def test_new_users_after_merges_start_at_level_zero() -> None:
    plan = planner(ident(1, "u"), merge(2, "u", "v"), ident(3, "w", a=1)).cut(0)
    assert view(plan)[0] == [("I", "u", {}, [1]), ("I", "w", {"a": 1}, [3])]


# --- barrier ------------------------------------------------------------------------------------


def test_future_op_holds_its_users_later_ops_and_merges() -> None:
    held = ident(2, "u", a=2)
    held.not_before = 10.0
    pl = planner(
        ident(1, "u", a=1),  # before the held op: goes
        held,
        ident(3, "u", a=3),  # same user, after: held
        ident(4, "w", a=4),  # other user: goes
        merge(5, "v", "u"),  # touches u: held, and now holds v
        ident(6, "v", a=6),  # held through the merge
        ident(7, "x", a=7),  # unrelated: goes
        ident(8, "w", b=8),  # unrelated: goes, folded
    )
    plan = pl.cut(5.0)
    assert view(plan) == [
        [("I", "u", {"a": 1}, [1]), ("I", "w", {"a": 4, "b": 8}, [4, 8]), ("I", "x", {"a": 7}, [7])]
    ]
    assert queued(pl) == [2, 3, 5, 6]
    assert next_ready(pl, 5.0) == 10.0
    assert not pl.cut(9.99)
    plan = pl.cut(10.0)
    assert view(plan) == [
        [("I", "u", {"a": 3}, [2, 3])],
        [("M", "v", "u", 5)],
        [("I", "v", {"a": 6}, [6])],
    ]
    assert len(pl) == 0


def test_held_merge_holds_the_other_user_but_not_earlier_ops_of_it() -> None:
    m = merge(2, "u", "v")
    m.not_before = 1.0
    pl = planner(ident(1, "v", a=1), m, ident(3, "v", b=1), ident(4, "u", c=1))
    assert view(pl.cut(0.0)) == [[("I", "v", {"a": 1}, [1])]]
    assert queued(pl) == [2, 3, 4]


def test_not_before_equal_to_now_is_ready() -> None:
    p = ident(1, "u")
    p.not_before = 3.0
    assert planner(p).cut(3.0)


def test_held_user_is_not_released_by_a_later_ready_op() -> None:
    a, b = ident(1, "u", a=1), ident(2, "u", a=2)
    a.not_before = 5.0
    pl = planner(a, b)
    assert not pl.cut(0.0)
    assert queued(pl) == [1, 2]


# --- retry --------------------------------------------------------------------------------------


def test_retry_reinserts_at_seq_position_and_sets_not_before() -> None:
    pl = planner(*(ident(i, "u" if i % 2 else "v", n=i) for i in range(1, 7)))
    plan = pl.cut(0.0)
    items = pendings(plan)
    u_items = [p for p in items if isinstance(p.op, Identify) and p.op.user_id == "u"]
    assert [p.seq for p in u_items] == [1, 3, 5]
    pl.add(ident(7, "u", n=7))
    pl.add(ident(8, "w", n=8))
    pl.retry(u_items, not_before=4.0)
    assert queued(pl) == [1, 3, 5, 7, 8]
    assert all(p.not_before == 4.0 and p.attempts == 0 for p in u_items)  # attempts: caller's
    # Before the retry time, u (and its new op 7) wait; w goes.
    assert view(pl.cut(1.0)) == [[("I", "w", {"n": 8}, [8])]]
    assert view(pl.cut(4.0)) == [[("I", "u", {"n": 7}, [1, 3, 5, 7])]]


def test_retry_items_may_interleave_and_arrive_unsorted() -> None:
    pl = planner(*(ident(i, f"u{i % 3}", n=i) for i in range(10)))
    plan = pl.cut(0.0)
    items = pendings(plan)
    pl.add(ident(10, "z"))
    back = [p for p in items if p.seq in (7, 2, 5, 0)]
    pl.retry(back, 0.0)
    assert queued(pl) == [0, 2, 5, 7, 10]
    more = [p for p in items if p.seq in (8, 1)]
    pl.retry(more, 0.0)
    assert queued(pl) == [0, 1, 2, 5, 7, 8, 10]


def test_retry_of_an_already_pending_op_raises_and_changes_nothing() -> None:
    p, q = ident(1, "u"), ident(2, "v")
    pl = planner(p, q)
    with pytest.raises(ValueError, match="already pending"):
        pl.retry([p], 9.0)
    assert queued(pl) == [1, 2]
    assert p.not_before == 0.0


def test_retry_same_item_twice_raises() -> None:
    pl = Planner()
    p = ident(1, "u")
    with pytest.raises(ValueError):
        pl.retry([p, p], 0.0)
    assert len(pl) == 0


def test_retry_keeps_later_add_check() -> None:
    pl = planner(ident(5, "u"))
    items = pendings(pl.cut(0))
    pl.retry(items, 0.0)
    with pytest.raises(ValueError):
        pl.add(ident(5, "u"))


def test_retried_op_re_coalesces_with_the_same_users_later_ops() -> None:
    pl = planner(ident(1, "u", a=1), ident(2, "u", b=2))
    items = pendings(pl.cut(0))
    pl.add(ident(3, "u", a=3))
    pl.retry(items, 1.0)
    plan = pl.cut(1.0)
    assert view(plan) == [[("I", "u", {"a": 3, "b": 2}, [1, 2, 3])]]


# --- drop ---------------------------------------------------------------------------------------


def test_drop_returns_matching_in_seq_order_and_keeps_the_rest() -> None:
    pl = Planner()
    for i in range(8):
        pl.add(Pending(i, Identify(f"u{i}", {}), ("t", i % 2, i)))
    dropped = pl.drop(lambda p: p.source[1] == 1)  # type: ignore[index]
    assert [p.seq for p in dropped] == [1, 3, 5, 7]
    assert queued(pl) == [0, 2, 4, 6]
    assert pl.drop(lambda p: False) == []
    assert len(pl) == 4


def test_drop_then_cut_plans_only_the_rest() -> None:
    pl = planner(ident(1, "u", a=1), ident(2, "u", b=2), ident(3, "v", a=1))
    pl.drop(lambda p: p.seq == 2)
    assert view(pl.cut(0)) == [[("I", "u", {"a": 1}, [1]), ("I", "v", {"a": 1}, [3])]]


# --- max_users ----------------------------------------------------------------------------------


def test_max_users_stops_at_the_first_op_of_one_user_too_many() -> None:
    pl = planner(
        ident(1, "a", n=1),
        ident(2, "b", n=2),
        ident(3, "a", m=3),  # a is already in: taken
        ident(4, "c", n=4),  # third user: the walk stops here
        ident(5, "a", k=5),  # stays, even though a is in the plan
    )
    plan = pl.cut(0, max_users=2)
    assert view(plan) == [[("I", "a", {"n": 1, "m": 3}, [1, 3]), ("I", "b", {"n": 2}, [2])]]
    assert queued(pl) == [4, 5]
    assert view(pl.cut(0, max_users=2)) == [[("I", "c", {"n": 4}, [4]), ("I", "a", {"k": 5}, [5])]]


def test_max_users_counts_both_users_of_a_merge() -> None:
    pl = planner(ident(1, "a"), merge(2, "b", "c"), ident(3, "b"))
    assert view(pl.cut(0, max_users=2)) == [[("I", "a", {}, [1])]]
    assert queued(pl) == [2, 3]


def test_max_users_merge_with_one_new_user_fits() -> None:
    pl = planner(ident(1, "a"), merge(2, "a", "b"))
    assert counts(pl.cut(0, max_users=2))[1] == 1


def test_max_users_one_still_takes_a_leading_merge() -> None:
    pl = planner(merge(1, "a", "b"), ident(2, "a"), ident(3, "c"))
    plan = pl.cut(0, max_users=1)
    assert view(plan) == [[("M", "a", "b", 1)], [("I", "a", {}, [2])]]
    assert queued(pl) == [3]


def test_max_users_ignores_held_users() -> None:
    held = ident(1, "a")
    held.not_before = 9.0
    pl = planner(held, ident(2, "b"), ident(3, "c"), ident(4, "d"))
    plan = pl.cut(0, max_users=2)
    assert [e.user_id for e in plan.levels[0].identifies] == ["b", "c"]
    assert queued(pl) == [1, 4]


def test_max_users_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Planner().cut(0, max_users=0)


def test_max_users_none_is_unbounded() -> None:
    pl = planner(*(ident(i, f"u{i}") for i in range(500)))
    assert counts(pl.cut(0))[0] == 500


# --- Plan helpers -------------------------------------------------------------------------------


def test_plan_counts_and_pendings_order() -> None:
    ps = [ident(1, "u", a=1), ident(2, "u", b=1), merge(3, "u", "v"), ident(4, "v")]
    plan = planner(*ps).cut(0)
    assert counts(plan) == (2, 1, 4)
    assert pendings(plan) == ps
    assert bool(plan)


def test_plan_has_no_empty_levels() -> None:
    plan = planner(ident(1, "u"), merge(2, "u", "v"), ident(3, "u"), ident(4, "w")).cut(0)
    assert all(level.identifies or level.merges for level in plan.levels)


def test_value_types() -> None:
    p = ident(1, "u")
    assert MergeStep(p).pending is p
    assert Level() == Level([], [])
    assert Entry("u", {}, [p]).items == [p]


# --- a model of Knock, for the randomised equivalence -------------------------------------------

Store = dict[str, dict[str, Any]]
Apply = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


#: Knock's upsert: nested objects merge key by key, anything else (``None`` too) replaces.
deep_apply: Apply = deep_merge


def shallow_apply(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    """Older accounts: every top-level key replaces, objects included."""
    return {**dst, **copy.deepcopy(src)}


def apply_op(store: Store, op: Op, upsert: Apply) -> None:
    if isinstance(op, Identify):
        store[op.user_id] = upsert(store.get(op.user_id, {}), op.props)
    else:
        # The primary's values win over the from-user's; the from-user is gone.
        from_props = store.pop(op.from_user_id, {})
        if op.user_id != op.from_user_id:
            store[op.user_id] = upsert(from_props, store.get(op.user_id, {}))
        else:
            store[op.user_id] = from_props


def test_model_deep_and_shallow_differ_on_nested_objects() -> None:
    # Sanity of the reference: the split rule matters only because these differ.
    s = {"a": {"x": 1, "y": 1}}
    assert deep_apply(s, {"a": {"y": 2}}) == {"a": {"x": 1, "y": 2}}
    assert shallow_apply(s, {"a": {"y": 2}}) == {"a": {"y": 2}}
    assert deep_apply(s, {"a": None}) == {"a": None}
    assert deep_apply({"a": 1}, {"a": {"z": None}}) == {"a": {"z": None}}
    assert s == {"a": {"x": 1, "y": 1}}


def test_model_merge() -> None:
    store: Store = {"u": {"a": 1, "o": {"x": 1}}, "v": {"a": 2, "b": 2, "o": {"y": 2}}}
    apply_op(store, Merge("u", "v"), deep_apply)
    assert store == {"u": {"a": 1, "b": 2, "o": {"x": 1, "y": 2}}}


def test_model_catches_a_naive_fold() -> None:
    # Folding two nested updates would be wrong under deep merge: the rule is not vacuous.
    start: Store = {"u": {"a": {"old": 1}}}
    seq_store, folded = copy.deepcopy(start), copy.deepcopy(start)
    for props in ({"a": {"x": 1}}, {"a": {"y": 1}}):
        apply_op(seq_store, Identify("u", props), deep_apply)
    apply_op(folded, Identify("u", {"a": {"y": 1}}), deep_apply)
    assert seq_store != folded


# --- randomised equivalence -----------------------------------------------------------------------

USERS = ["a", "b", "c", "d", "e"]
KEYS = ["name", "email", "obj", "meta", "tags"]
NESTED_KEYS = ["x", "y", "z"]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if r < 0.35 and depth < 2:
        return {k: random_value(rng, depth + 1) for k in rng.sample(NESTED_KEYS, rng.randint(0, 2))}
    if r < 0.5:
        return None
    if r < 0.6:
        return [rng.randint(0, 3)]
    return rng.randint(0, 9)


def random_ops(rng: random.Random, n: int) -> list[Op]:
    users = USERS[: rng.randint(1, len(USERS))]
    ops: list[Op] = []
    for _ in range(n):
        if rng.random() < 0.15 and len(users) > 1:
            u, v = rng.sample(users, 2)
            ops.append(Merge(u, v))
        else:
            keys = rng.sample(KEYS, rng.randint(0, 3))
            ops.append(Identify(rng.choice(users), {k: random_value(rng) for k in keys}))
    return ops


def sequential(ops: list[Op], upsert: Apply, start: Store) -> Store:
    store = copy.deepcopy(start)
    for op in ops:
        apply_op(store, op, upsert)
    return store


def check_level_is_disjoint(level: Level) -> None:
    seen: set[str] = set()
    for entry in level.identifies:
        assert entry.user_id not in seen
        seen.add(entry.user_id)
        for p in entry.items:
            assert isinstance(p.op, Identify) and p.op.user_id == entry.user_id
    for step in level.merges:
        assert isinstance(step.pending.op, Merge)
        users = {step.pending.op.user_id, step.pending.op.from_user_id}
        assert not users & seen
        seen |= users


class Stats:
    identifies = 0
    entries = 0
    multi_level_plans = 0
    retried = 0
    held_cuts = 0
    riders = 0
    unchanged = 0


def run_planned(
    rng: random.Random,
    ops: list[Op],
    upsert: Apply,
    start: Store,
    fail_rate: float,
    nested: str = "either",
    detect: bool = False,
) -> Store:
    """Feed ops to a planner in bursts and apply its plans as the sink would: levels in order,
    steps within a level in any order, failures (and steps after them on the same users) given
    back with a delay. With ``detect``, the cut asks a perfect change detector (the model's
    state as applied so far) which ops change nothing, as the sink's asks what Knock confirmed:
    asked at the wrong moment (an earlier op of the user not applied yet), it skips a change."""
    store = copy.deepcopy(start)

    def unchanged(p: Pending) -> bool:
        op = p.op
        assert isinstance(op, Identify) and op.props is not RIDER and op.props
        have = store.get(op.user_id)
        return have is not None and upsert(copy.deepcopy(have), op.props) == have

    pl = Planner(nested=nested)  # type: ignore[arg-type]
    # Lanes: some ops fold on add (riders), some do not, and lanes do not fold into each other.
    pendings = [Pending(i, op, ("t", 0, i), rng.choice([None, 0, 1])) for i, op in enumerate(ops)]
    for p in pendings:
        if rng.random() < 0.05:
            p.not_before = rng.choice([1.0, 3.0])
    now, fed = 0.0, 0
    for _ in range(10_000):
        if fed == len(pendings) and len(pl) == 0:
            break
        burst = rng.randint(0, 12)
        for p in pendings[fed : fed + burst]:
            pl.add(p)
        fed = min(fed + burst, len(pendings))
        plan = pl.cut(
            now,
            max_users=rng.choice([None, None, 1, 2, 3]),
            max_levels=rng.choice([None, None, 1, 2]),
            unchanged=unchanged if detect else None,
        )
        Stats.unchanged += len(plan.unchanged)
        if len(pl):
            Stats.held_cuts += 1
        Stats.multi_level_plans += len(plan.levels) > 1
        failed_users: set[str] = set()
        back: list[Pending] = []
        for level in plan.levels:
            check_level_is_disjoint(level)
            steps: list[Entry | MergeStep] = [*level.identifies, *level.merges]
            rng.shuffle(steps)
            for step in steps:
                if isinstance(step, Entry):
                    items, users = step.items, {step.user_id}
                else:
                    op = step.pending.op
                    assert isinstance(op, Merge)
                    items, users = [step.pending], {op.user_id, op.from_user_id}
                if users & failed_users:
                    back += items  # skipped: an earlier step on this user did not apply
                    failed_users |= users
                elif rng.random() < fail_rate:
                    for p in items:
                        p.attempts += 1
                    back += items
                    failed_users |= users
                else:
                    if isinstance(step, Entry):
                        Stats.identifies += len(step.items)
                        Stats.entries += 1
                        Stats.riders += sum(p.op.props is RIDER for p in step.items)  # type: ignore[union-attr]
                        store[step.user_id] = upsert(store.get(step.user_id, {}), step.props)
                    else:
                        apply_op(store, step.pending.op, upsert)
        if back:
            Stats.retried += len(back)
            pl.retry(back, now + rng.choice([0.0, 0.5, 2.0]))
        ready = next_ready(pl, now)
        now += rng.choice([0.0, 0.5])
        if ready is not None and rng.random() < 0.5:
            now = max(now, ready)  # the caller's timer fired
    else:
        pytest.fail("planner never drained")
    return store


def random_start() -> Store:
    return {u: {"obj": {"x": 0, "y": 0}, "meta": {"z": {"x": 1}}, "name": u} for u in USERS[:3]}


@pytest.mark.parametrize("upsert", [deep_apply, shallow_apply], ids=["deep", "shallow"])
@pytest.mark.parametrize("fail_rate", [0.0, 0.2])
def test_planned_equals_sequential(upsert: Apply, fail_rate: float) -> None:
    for seed in range(400):
        rng = random.Random(seed)
        ops = random_ops(rng, rng.randint(1, 60))
        before = copy.deepcopy(ops)
        start = random_start()
        expected = sequential(ops, upsert, start)
        got = run_planned(rng, ops, upsert, start, fail_rate)
        assert got == expected, f"seed {seed}"
        assert ops == before, "planning mutated an op"


@pytest.mark.parametrize("upsert", [deep_apply, shallow_apply], ids=["deep", "shallow"])
@pytest.mark.parametrize("fail_rate", [0.0, 0.2])
def test_planned_with_change_detection_equals_sequential(upsert: Apply, fail_rate: float) -> None:
    Stats.unchanged = 0
    for seed in range(400):
        rng = random.Random(seed)
        ops = random_ops(rng, rng.randint(1, 60))
        # Repeats: some identifies again, as product streams carry a user's traits each time.
        ops += [op for op in ops if isinstance(op, Identify) and rng.random() < 0.5]
        start = random_start()
        expected = sequential(ops, upsert, start)
        assert run_planned(rng, ops, upsert, start, fail_rate, detect=True) == expected, seed
    assert Stats.unchanged > 50  # not vacuous: many ops were resolved without a call


def test_randomised_runs_exercise_the_interesting_paths() -> None:
    # Guard against a vacuous property test: coalescing, splitting into levels, barriers and
    # retries must all have happened.
    Stats.identifies = Stats.entries = Stats.multi_level_plans = 0
    Stats.retried = Stats.held_cuts = Stats.riders = 0
    for seed in range(100):
        rng = random.Random(seed)
        ops = random_ops(rng, 40)
        run_planned(rng, ops, deep_apply, random_start(), 0.2)
    assert Stats.entries < Stats.identifies * 0.8
    assert Stats.multi_level_plans > 50
    assert Stats.retried > 50
    assert Stats.held_cuts > 50
    assert Stats.riders > 50


@pytest.mark.parametrize("upsert", [deep_apply, shallow_apply], ids=["deep", "shallow"])
def test_single_cut_equals_sequential(upsert: Apply) -> None:
    # The plainest form: everything in one cut, levels applied in order, steps in reverse.
    for seed in range(1000):
        rng = random.Random(seed)
        ops = random_ops(rng, rng.randint(1, 40))
        start = random_start()
        pl = Planner()
        for i, op in enumerate(ops):
            pl.add(Pending(i, op, None))
        plan = pl.cut(0.0)
        assert len(pl) == 0
        assert sorted(p.seq for p in pendings(plan)) == list(range(len(ops)))
        store = copy.deepcopy(start)
        for level in plan.levels:
            check_level_is_disjoint(level)
            steps: list[Entry | MergeStep] = [*level.identifies, *level.merges]
            for step in reversed(steps):
                if isinstance(step, Entry):
                    store[step.user_id] = upsert(store.get(step.user_id, {}), step.props)
                else:
                    apply_op(store, step.pending.op, upsert)
        assert store == sequential(ops, upsert, start), f"seed {seed}"


def test_cut_is_linear_enough() -> None:
    # Not a benchmark: catches an accidental quadratic walk (100k ops must plan well under a
    # second or two on any machine).
    import time

    pl = Planner()
    for i in range(100_000):
        op: Op = Identify(f"u{i % 5000}", {"n": i}) if i % 50 else Merge(f"u{i % 5000}", f"v{i}")
        pl.add(Pending(i, op, None))
    t0 = time.perf_counter()
    plan = pl.cut(0.0)
    assert time.perf_counter() - t0 < 5.0
    assert counts(plan)[2] == 100_000


# --- nested="deep": folding objects under Knock's documented deep merge ----------------------


def deep_planner(*ps: Pending) -> Planner:
    pl = Planner(nested="deep")
    for p in ps:
        pl.add(p)
    return pl


def test_deep_mode_folds_objects_under_one_key_into_one_entry() -> None:
    pl = deep_planner(
        ident(1, "u", o={"a": 1, "n": {"x": 1}}), ident(2, "u", o={"b": 2, "n": {"y": 2}})
    )
    assert view(pl.cut(0)) == [[("I", "u", {"o": {"a": 1, "b": 2, "n": {"x": 1, "y": 2}}}, [1, 2])]]


@pytest.mark.parametrize("first", [1, None, [1], "s"])
def test_deep_mode_still_splits_a_non_object_then_an_object(first: Any) -> None:
    pl = deep_planner(ident(1, "u", o=first), ident(2, "u", o={"b": 2}))
    assert view(pl.cut(0)) == [[("I", "u", {"o": first}, [1])], [("I", "u", {"o": {"b": 2}}, [2])]]


def test_deep_mode_splits_on_a_nested_non_object_then_object() -> None:
    pl = deep_planner(ident(1, "u", o={"n": 5}), ident(2, "u", o={"n": {"y": 1}}))
    assert len(pl.cut(0).levels) == 2


def test_deep_mode_never_mutates_the_callers_nested_dicts() -> None:
    a, b = {"o": {"n": {"x": 1}}}, {"o": {"n": {"y": 2}}}
    before = copy.deepcopy((a, b))
    pl = deep_planner(Pending(1, Identify("u", a), None), Pending(2, Identify("u", b), None))
    pl.cut(0)
    assert (a, b) == before


def test_unknown_nested_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        Planner(nested="sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize("fail_rate", [0.0, 0.2])
def test_deep_mode_planned_equals_sequential_under_deep_merge(fail_rate: float) -> None:
    for seed in range(400):
        rng = random.Random(seed)
        ops = random_ops(rng, rng.randint(1, 60))
        start = random_start()
        expected = sequential(ops, deep_apply, start)
        assert run_planned(rng, ops, deep_apply, start, fail_rate, nested="deep") == expected, seed


def test_deep_mode_folds_more_than_either_mode() -> None:
    # Otherwise the deep mode would be pointless: on the random streams it must need fewer entries.
    counts = {}
    for nested in ("either", "deep"):
        Stats.entries = 0
        for seed in range(100):
            rng = random.Random(seed)
            run_planned(rng, random_ops(rng, 40), deep_apply, random_start(), 0.0, nested=nested)
        counts[nested] = Stats.entries
    assert counts["deep"] < counts["either"]


# --- busy users: plans side by side ----------------------------------------------------------


def test_busy_users_are_held_with_their_merges_and_other_users_go() -> None:
    pl = planner(
        ident(1, "a", x=1),
        ident(2, "b", x=1),
        merge(3, "c", "a"),
        ident(4, "c", y=1),
        ident(5, "d", z=1),
    )
    plan = pl.cut(0, busy={"a"})
    assert view(plan) == [[("I", "b", {"x": 1}, [2]), ("I", "d", {"z": 1}, [5])]]
    assert queued(pl) == [1, 3, 4]
    assert plan.users() == {"b", "d"}


def test_a_second_cut_with_the_first_plans_users_busy_is_disjoint_from_it() -> None:
    pl = planner(*(ident(i, f"u{i % 5}", n=i) for i in range(20)))
    first = pl.cut(0, max_users=3)
    pl.add(ident(20, "u0", n=20))
    second = pl.cut(0, busy=first.users())
    assert first.users() == {"u0", "u1", "u2"}
    assert second.users() == {"u3", "u4"}
    assert not first.users() & second.users()


def test_plan_users_include_both_sides_of_a_merge() -> None:
    assert planner(merge(1, "a", "b"), ident(2, "c")).cut(0).users() == {"a", "b", "c"}


def _apply_plan(
    rng: random.Random, plan: Plan, store: Store, upsert: Apply, fail_rate: float
) -> list[Pending]:
    """Apply one plan as the sink does; return what is given back (failed, and skipped after)."""
    failed: set[str] = set()
    back: list[Pending] = []
    for level in plan.levels:
        steps: list[Entry | MergeStep] = [*level.identifies, *level.merges]
        rng.shuffle(steps)
        for step in steps:
            if isinstance(step, Entry):
                items, users = step.items, {step.user_id}
            else:
                op = step.pending.op
                assert isinstance(op, Merge)
                items, users = [step.pending], {op.user_id, op.from_user_id}
            if users & failed or rng.random() < fail_rate:
                back += items
                failed |= users
            elif isinstance(step, Entry):
                store[step.user_id] = upsert(store.get(step.user_id, {}), step.props)
            else:
                apply_op(store, step.pending.op, upsert)
    return back


@pytest.mark.parametrize("nested", ["either", "deep"])
def test_two_plans_in_flight_with_busy_users_equal_sequential(nested: str) -> None:
    for seed in range(300):
        rng = random.Random(seed)
        ops = random_ops(rng, rng.randint(1, 60))
        start = random_start()
        expected = sequential(ops, deep_apply, start)
        store = copy.deepcopy(start)
        pl = Planner(nested=nested)  # type: ignore[arg-type]
        pendings = [Pending(i, op, None, rng.choice([None, 0, 1])) for i, op in enumerate(ops)]
        fed, now = 0, 0.0
        for _ in range(10_000):
            if fed == len(pendings) and len(pl) == 0:
                break
            for p in pendings[fed : fed + rng.randint(0, 10)]:
                pl.add(p)
                fed += 1
            first = pl.cut(now, max_users=rng.choice([None, 1, 2, 3]))
            for p in pendings[fed : fed + rng.randint(0, 5)]:  # more arrive meanwhile
                pl.add(p)
                fed += 1
            second = pl.cut(now, max_users=rng.choice([None, 2]), busy=first.users())
            assert not first.users() & second.users()
            plans = [first, second]
            rng.shuffle(plans)  # disjoint: either may finish first
            for plan in plans:
                back = _apply_plan(rng, plan, store, deep_apply, 0.2)
                if back:
                    pl.retry(back, now)
            now += 1.0
        else:
            pytest.fail("never drained")
        assert store == expected, f"seed {seed}"


# --- max_levels: one paced bulk call per plan ------------------------------------------------


def test_max_levels_holds_what_would_open_a_deeper_level() -> None:
    pl = planner(
        ident(1, "u", o={"a": 1}),
        ident(2, "v", x=1),
        ident(3, "u", o={"b": 2}),
        merge(4, "v", "w"),
        ident(5, "w", y=1),
        ident(6, "z", k=1),
    )
    plan = pl.cut(0, max_levels=1)
    assert view(plan) == [
        [("I", "u", {"o": {"a": 1}}, [1]), ("I", "v", {"x": 1}, [2]), ("I", "z", {"k": 1}, [6])]
    ]
    assert queued(pl) == [3, 4, 5]
    assert view(pl.cut(0, max_levels=1)) == [[("I", "u", {"o": {"b": 2}}, [3]), ("M", "v", "w", 4)]]
    assert view(pl.cut(0, max_levels=1)) == [[("I", "w", {"y": 1}, [5])]]


def test_max_levels_still_folds_into_the_first_level() -> None:
    pl = planner(ident(1, "u", a=1), ident(2, "u", b=2))
    assert view(pl.cut(0, max_levels=1)) == [[("I", "u", {"a": 1, "b": 2}, [1, 2])]]


def test_max_levels_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Planner().cut(0, max_levels=0)


# --- folding on add: riders ----------------------------------------------------------------------


def laned(seq: int, user: str, lane: object = 0, **kw: Any) -> Pending:
    return Pending(seq, Identify(user, kw), ("t", lane, seq), lane)


def test_an_identify_folds_on_add_into_its_users_open_identify_of_the_same_lane() -> None:
    first, second = laned(1, "u", a=1, b=1), laned(3, "u", b=2)
    original = first.op.props  # type: ignore[union-attr]
    pl = planner(first, laned(2, "v", x=1), second)
    assert first.op.props == {"a": 1, "b": 2}  # type: ignore[union-attr]
    assert second.op.props is RIDER  # type: ignore[union-attr]
    assert original == {"a": 1, "b": 1}, "the consumed op's own dict is copied, not changed"
    assert view(pl.cut(0)) == [[("I", "u", {"a": 1, "b": 2}, [1, 3]), ("I", "v", {"x": 1}, [2])]]


def test_no_fold_on_add_across_lanes_without_a_lane_or_across_a_merge() -> None:
    pl = planner(
        laned(1, "u", lane=0, a=1),
        laned(2, "u", lane=1, a=2),
        ident(3, "v", a=1),
        ident(4, "v", a=2),
        laned(5, "w", a=1),
        merge(6, "w", "z"),
        laned(7, "w", a=2),
    )
    assert [p.op.props is RIDER for p in pl._queue if isinstance(p.op, Identify)] == [False] * 6


def test_no_fold_on_add_where_a_cut_would_not_fold() -> None:
    pl = planner(laned(1, "u", o={"a": 1}), laned(2, "u", o={"b": 2}))  # nested, mode "either"
    assert view(pl.cut(0)) == [
        [("I", "u", {"o": {"a": 1}}, [1])],
        [("I", "u", {"o": {"b": 2}}, [2])],
    ]


def test_riders_go_with_their_host_past_the_user_budget() -> None:
    pl = planner(laned(1, "u", a=1), laned(2, "v", a=1), laned(3, "u", a=2), laned(4, "w", a=1))
    plan = pl.cut(0, max_users=1)
    assert view(plan) == [[("I", "u", {"a": 2}, [1, 3])]]
    assert queued(pl) == [2, 4]


def test_nothing_folds_into_an_op_that_was_cut_or_given_back() -> None:
    pl = planner(laned(1, "u", a=1))
    plan = pl.cut(0)
    pl.add(laned(2, "u", a=2))  # the first is in flight: its dict must not change
    assert view(plan) == [[("I", "u", {"a": 1}, [1])]]
    second = pl.cut(0)
    pl.retry(pendings(second), not_before=1.0)
    pl.add(laned(3, "u", a=3))  # the given-back op may be retried alone: no rider on it
    assert [p.op.props for p in pl._queue] == [{"a": 2}, {"a": 3}]  # type: ignore[union-attr]
    assert view(pl.cut(0)) == []
    assert view(pl.cut(1.0)) == [[("I", "u", {"a": 3}, [2, 3])]]


def test_a_dropped_host_takes_its_riders_and_the_next_op_starts_afresh() -> None:
    pl = planner(laned(1, "u", a=1), laned(2, "u", a=2))
    assert len(pl.drop(lambda p: p.lane == 0)) == 2
    pl.add(laned(3, "u", a=3))  # same lane: it must not ride on the dropped host
    assert pl._queue[0].op.props == {"a": 3}  # type: ignore[union-attr]


# --- change detection in the cut -----------------------------------------------------------------


def test_unchanged_ops_cost_nothing_of_the_user_budget() -> None:
    pl = planner(*(ident(i, u, a=1) for i, u in enumerate("abcde", 1)))
    asked: list[int] = []

    def same(p: Pending) -> bool:
        asked.append(p.seq)
        return p.op.user_id in "abc"  # type: ignore[union-attr]

    plan = pl.cut(0.0, max_users=2, unchanged=same)
    assert [p.seq for p in plan.unchanged] == [1, 2, 3]
    assert view(plan) == [[("I", "d", {"a": 1}, [4]), ("I", "e", {"a": 1}, [5])]]
    assert asked == [1, 2, 3, 4, 5] and queued(pl) == []
    assert plan  # a plan of unchanged ops only is still one to resolve
    assert Planner().cut(0.0, unchanged=same).unchanged == []


def test_only_a_users_first_op_with_nothing_before_it_is_asked() -> None:
    # u: held in flight; v: an op before the same one; w: riders of a host that changed
    # nothing, then a change.
    pl = Planner()
    for p in (
        ident(1, "u", a=1),
        ident(2, "v", a=1),
        ident(3, "v", a=1),
        laned(4, "w", lane=0, a=1),
        laned(5, "w", lane=0, b=1),
        merge(6, "x", "y"),
        ident(7, "w", c=2),  # no lane: not a rider of 4
    ):
        pl.add(p)
    asked: list[int] = []

    def same(p: Pending) -> bool:
        asked.append(p.seq)
        return p.seq in (3, 4)

    plan = pl.cut(0.0, busy={"u"}, unchanged=same)
    assert [p.seq for p in plan.unchanged] == [4, 5]  # 5 rides on 4
    assert asked == [2, 4, 7]  # 3 comes after v's planned op 2; u is in flight
    assert queued(pl) == [1]
    assert view(plan)[0][:2] == [("I", "v", {"a": 1}, [2, 3]), ("I", "w", {"c": 2}, [7])]


def test_nothing_folds_into_an_op_resolved_as_unchanged() -> None:
    pl = planner(laned(1, "w", lane=0, a=1))
    plan = pl.cut(0.0, unchanged=lambda p: True)
    assert [p.seq for p in plan.unchanged] == [1]
    pl.add(laned(2, "w", lane=0, a=2))  # would have been a rider of 1
    nxt = pl.cut(0.0, unchanged=lambda p: False)
    assert view(nxt) == [[("I", "w", {"a": 2}, [2])]] and nxt.unchanged == []


def test_riders_of_an_unchanged_host_go_with_it_past_the_budget() -> None:
    pl = Planner()
    for p in (
        laned(1, "a", lane=0, x=1),
        laned(2, "b", lane=0, x=1),
        laned(3, "c", lane=0, x=1),
        laned(4, "a", lane=0, y=1),  # rider of 1 (sent)
        laned(5, "b", lane=0, y=1),  # rider of 2 (unchanged)
    ):
        pl.add(p)
    plan = pl.cut(0.0, max_users=1, unchanged=lambda p: p.op.user_id == "b")  # type: ignore[union-attr]
    assert view(plan) == [[("I", "a", {"x": 1, "y": 1}, [1, 4])]]
    assert [p.seq for p in plan.unchanged] == [2, 5]
    assert queued(pl) == [3]


def test_a_held_lane_keeps_its_ops_and_holds_their_users_in_every_lane() -> None:
    # Lane 1 catches up: its ops stay queued, folded; a later op of one of its users on another
    # lane stays too (it must not overtake), while lane 0's other users go out.
    pl = planner(
        laned(1, "u", lane=1, a=1),
        laned(2, "v", lane=0, a=1),
        laned(3, "u", lane=1, a=2),
        laned(4, "u", lane=0, a=3),
        Pending(5, Merge("w", "x"), ("t", 1, 5), 1),
        laned(6, "w", lane=0, a=1),
    )
    assert pl.queued_in([0]) == 3 and pl.queued_in([1]) == 3
    assert view(pl.cut(0, lanes=frozenset({1}))) == [[("I", "v", {"a": 1}, [2])]]
    assert queued(pl) == [1, 3, 4, 5, 6]
    assert pl.queued_in([0]) == 2 and pl.queued_in([1]) == 3
    assert view(pl.cut(0)) == [
        [("I", "u", {"a": 3}, [1, 3, 4]), ("M", "w", "x", 5)],  # 3 rode on 1; 4 folds in
        [("I", "w", {"a": 1}, [6])],
    ]


def test_ops_queued_per_lane_follow_cuts_retries_and_drops() -> None:
    pl = planner(laned(1, "u", lane=0, a=1), laned(2, "v", lane=1, a=1), laned(3, "w", lane=1))
    plan = pl.cut(0, max_users=1)
    assert pl.queued_in([0, 1]) == 2
    pl.retry(pendings(plan), not_before=5)
    assert pl.queued_in([0]) == 1 and pl.queued_in([1]) == 2
    pl.drop(lambda p: p.lane == 1)
    assert pl.queued_in([0, 1]) == 1 and len(pl) == 1
