"""The planner's ordering of action ops (tests/test_plan.py style): each action is a barrier
for what it touches, so per-user (and per-object) order holds across levels."""

from __future__ import annotations

from typing import Any

from consumer.ops import Audience, Delete, Identify, Op, SetObject, SetTenant, Subscribe, Trigger
from consumer.plan import Pending, Plan, Planner


def p(seq: int, op: Op) -> Pending:
    return Pending(seq, op, ("t", 0, seq), lane=0)


def plan_of(*ops: Op, **kw: Any) -> Plan:
    pl = Planner()
    for i, op in enumerate(ops, 1):
        pl.add(p(i, op))
    return pl.cut(0.0, **kw)


def view(plan: Plan) -> list[list[tuple[str, list[int]]]]:
    out = []
    for level in plan.levels:
        steps = [("I:" + e.user_id, [q.seq for q in e.items]) for e in level.identifies]
        steps += [(type(a.pending.op).__name__, [a.pending.seq]) for a in level.actions]
        out.append(steps)
    return out


def trig(user: str, key: str = "w", actor: str | None = None) -> Trigger:
    return Trigger(key, user, {}, {}, actor, None, f"k-{user}-{key}")


def test_delete_sits_between_the_updates_around_it() -> None:
    plan = plan_of(Identify("u", {"a": 1}), Delete("u"), Identify("u", {"a": 2}), Identify("v", {}))
    assert view(plan) == [[("I:u", [1]), ("I:v", [4])], [("Delete", [2])], [("I:u", [3])]]


def test_identifies_never_fold_across_an_action() -> None:
    plan = plan_of(Identify("u", {"a": 1}), trig("u"), Identify("u", {"b": 2}))
    assert view(plan) == [[("I:u", [1])], [("Trigger", [2])], [("I:u", [3])]]


def test_object_before_subscription_and_users_apart() -> None:
    plan = plan_of(
        Identify("u", {}),
        SetObject("accounts", "acme", {}),
        Subscribe("accounts", "acme", "u", {}),
        SetTenant("acme", {}),
        Audience("vip", "v", True, {}),
        trig("v"),
    )
    assert view(plan) == [
        [("I:u", [1]), ("SetObject", [2]), ("SetTenant", [4]), ("Audience", [5])],
        [("Subscribe", [3]), ("Trigger", [6])],
    ]
    assert plan.users() == {"u", "v", "object/accounts/acme", "tenant/acme"}


def test_a_held_action_holds_its_users_and_busy_users_hold_actions() -> None:
    pl = Planner()
    pl.add(p(1, trig("u", actor="a")))
    pl.add(p(2, Identify("a", {"x": 1})))
    pl.add(p(3, Identify("b", {})))
    plan = pl.cut(0.0, busy={"u"})
    assert view(plan) == [[("I:b", [3])]]
    assert [q.seq for q in pl._queue] == [1, 2]
    assert view(pl.cut(0.0)) == [[("Trigger", [1])], [("I:a", [2])]]


def test_max_levels_holds_an_action_for_the_next_cut() -> None:
    pl = Planner()
    for i, op in enumerate([Identify("u", {}), Delete("u")], 1):
        pl.add(p(i, op))
    assert view(pl.cut(0.0, max_levels=1)) == [[("I:u", [1])]]
    assert view(pl.cut(0.0, max_levels=1)) == [[("Delete", [2])]]


def test_random_streams_keep_every_users_order_across_levels_and_cuts() -> None:
    """Identify, delete, trigger, audience and merge ops on a few users, cut with random
    budgets: a level touches each user once, and each user's ops come out in seq order."""
    import random

    from consumer.ops import Merge

    rng = random.Random(7)
    users = ["a", "b", "c", "d"]
    for _ in range(200):
        pl = Planner()
        ops: list[Op] = []
        for _ in range(rng.randint(1, 25)):
            u = rng.choice(users)
            kind = rng.random()
            if kind < 0.4:
                ops.append(Identify(u, {"n": rng.randint(0, 3)}))
            elif kind < 0.55:
                ops.append(Delete(u))
            elif kind < 0.7:
                ops.append(trig(u, actor=rng.choice([None, *users])))
            elif kind < 0.8:
                ops.append(Audience("k", u, rng.random() < 0.5, {}))
            elif kind < 0.9:
                ops.append(SetObject("o", u, {}))
            else:
                other = rng.choice([x for x in users if x != u])
                ops.append(Merge(u, other))
        for i, op in enumerate(ops, 1):
            pl.add(p(i, op))
        seen: dict[str, list[tuple[int, int, int]]] = {}
        cut_no = 0
        while len(pl):
            plan = pl.cut(0.0, max_users=rng.randint(1, 4), max_levels=rng.randint(1, 3))
            assert plan, "a cut with pending ops and no busy users plans something"
            for lv, level in enumerate(plan.levels):
                steps = [(e.user_id, [q.seq for q in e.items]) for e in level.identifies]
                steps += [
                    (u, [m.pending.seq])
                    for m in level.merges
                    for u in (m.pending.op.user_id, m.pending.op.from_user_id)
                ]  # type: ignore[union-attr]
                steps += [(u, [a.pending.seq]) for a in level.actions for u in _keys(a.pending.op)]
                touched = [user for user, _ in steps]
                assert len(touched) == len(set(touched)), "a level touches each user once"
                for user, seqs in steps:
                    seen.setdefault(user, []).extend((cut_no, lv, s) for s in seqs)
            cut_no += 1
        for user, marks in seen.items():
            assert [s for _, _, s in marks] == sorted(s for _, _, s in marks), (user, marks)


def _keys(op: Op) -> tuple[str, ...]:
    from consumer.ops import entities

    return entities(op)
