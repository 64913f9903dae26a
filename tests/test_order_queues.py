"""The k-way merge both orders share (:mod:`consumer.ordering.queues`), through the smallest
order: one whose partitions never end, so an op's turn comes only when every other partition
of its topic has brought one at or after its time."""

from __future__ import annotations

from typing import Any

import consumer.ordering.queues as queues_mod
from consumer.ops import Identify, Merge, SetTenant
from consumer.ordering.queues import OrderQueues, event_time, users_of

P = [("t", 0), ("t", 1)]


class Merged(OrderQueues):
    """Every op waits its turn among the partitions ``parts``."""

    def __init__(self, parts: list[Any]) -> None:
        self.out: list[str] = []
        self.late = 0
        super().__init__(self.out.append, on_late=self._count_late, clock=lambda: 0.0)
        for tp in parts:
            self._parts.setdefault(tp[0], []).append(tp)

    def _count_late(self) -> None:
        self.late += 1

    def add(self, name: str, tp: Any, t: float, users: tuple[str, ...] = ("u",)) -> None:
        self._note(tp, t)
        if self._late(users, t, tp[0]):
            self._on_late()
        self._queue(name, tp, users, t)

    def step(self) -> None:
        self._release_all(0.0, False)

    def drop(self, tp: Any) -> list[Any]:
        self._parts[tp[0]].remove(tp)
        return self._drop_queues(tp)


def test_an_op_waits_until_every_other_partition_brought_one_at_or_after_its_time():
    m = Merged(P)
    m.add("a1", P[0], 1.0)
    m.add("a2", P[0], 2.0)
    m.step()
    assert m.out == [] and len(m) == 2
    m.add("b2", P[1], 2.0)
    m.step()
    # a1 goes (partition 1 has one waiting); a2 ties with b2: the one read first goes first;
    # then b2, as partition 0 has brought one at its time.
    assert m.out == ["a1", "a2", "b2"] and len(m) == 0


def test_within_a_partition_the_order_read_holds_even_out_of_event_time():
    m = Merged(P)
    m.add("a5", P[0], 5.0)
    m.add("a3", P[0], 3.0)  # older than a5 but behind it in its partition
    m.add("b9", P[1], 9.0)
    m.step()
    assert m.out == ["a5", "a3"]


def test_an_op_older_than_one_its_user_had_handed_on_is_late():
    m = Merged(P)
    m.add("a5", P[0], 5.0)
    m.add("b6", P[1], 6.0)
    m.step()
    assert m.out == ["a5"] and m.late == 0
    m.add("b4", P[1], 4.0)  # u had 5 handed on already
    assert m.late == 1
    m.add("v1", P[1], 1.0, users=("v",))  # another user: not late
    assert m.late == 1


def test_dropping_a_partition_returns_its_items_and_frees_the_others():
    m = Merged(P)
    m.add("a1", P[0], 1.0, users=("a",))
    m.add("b1", P[1], 0.5, users=("a", "b"))
    m.step()
    assert m.out == ["b1"]
    assert m.drop(P[0]) == ["a1"] and len(m) == 0 and not m._touched
    m.add("b2", P[1], 2.0)
    m.step()
    assert m.out == ["b1", "b2"]  # partition 0 is no longer waited for


def test_what_was_handed_on_is_remembered_for_a_bounded_number_of_users(monkeypatch):
    monkeypatch.setattr(queues_mod, "REMEMBERED", 2)
    m = Merged([P[0]])
    for u, t in [("a", 5.0), ("b", 5.0), ("c", 5.0)]:
        m.add(u, P[0], t, users=(u,))
    m.step()
    m.add("a-old", P[0], 1.0, users=("a",))  # a was forgotten: not counted late
    m.add("c-old", P[0], 1.0, users=("c",))
    assert m.late == 1


def test_event_time_and_users_of():
    assert event_time("2024-03-01T00:00:01Z", 5_000, 9.0) == 1709251201.0
    assert event_time("not a time", 5_000, 9.0) == 5.0
    assert event_time(None, None, 9.0) == 9.0
    ops = [Identify("u", {}), Merge("u", "v"), SetTenant("acme", {})]
    assert users_of(ops) == ("u", "u", "v", "tenant/acme")
