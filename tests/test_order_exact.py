"""A backfill's exact order (:mod:`consumer.ordering.exact`): partitions read to their end,
partitions far ahead paused and resumed, and the judgement of a topic keyed by user."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from consumer.ordering.exact import ExactOrder

P = [("t", 0), ("t", 1)]


class Fetch:
    """The loop's pause and resume, recorded."""

    def __init__(self, may_resume: bool = True) -> None:
        self.paused: list[list[Any]] = []
        self.resumed: list[list[Any]] = []
        self.may = may_resume

    def order(self, out: list[str], **kw: Any) -> ExactOrder:
        return ExactOrder(
            out.append,
            ends={P[0]: 100, P[1]: 100},
            pause=self.paused.append,
            resume=self.resumed.append,
            may_resume=lambda tp: self.may,
            clock=lambda: 0.0,
            **kw,
        )


def add(order: ExactOrder, name: str, tp: Any, off: int, t: float) -> None:
    order.add(name, tp, off, (name[0],), lambda: t)


def test_a_partition_far_ahead_is_paused_while_it_holds_and_resumed_at_half_its_share():
    fetch = Fetch()
    out: list[str] = []
    order = fetch.order(out, limit=4)  # a share of 2 ops a partition
    for i in range(3):
        add(order, f"a{i}", P[0], i, float(i))
    order.step()
    order.step()
    assert fetch.paused == [[P[0]], [P[0]]]  # said again: a whole pause resumes everything
    add(order, "b9", P[1], 0, 9.0)
    order.step()
    assert out == ["a0", "a1", "a2"] and fetch.resumed == [[P[0]]]
    assert len(order) == 1  # b9 waits: partition 0 is not read to its end


def test_a_partition_another_stage_holds_is_not_resumed():
    fetch = Fetch(may_resume=False)
    out: list[str] = []
    order = fetch.order(out, limit=2)
    for i in range(2):
        add(order, f"a{i}", P[0], i, float(i))
    order.step()
    add(order, "b9", P[1], 0, 9.0)
    order.step()
    assert fetch.paused == [[P[0]]] and fetch.resumed == [] and out == ["a0", "a1"]


def test_a_partition_read_to_its_end_by_position_holds_nothing_back():
    positions = {P[1]: 0}
    out: list[str] = []
    order = ExactOrder(
        out.append,
        ends={P[0]: 100, P[1]: 5},
        positions=lambda tps: {tp: positions.get(tp, 0) for tp in tps},
        clock=lambda: 0.0,
    )
    add(order, "a1", P[0], 0, 1.0)
    order.step()
    assert out == []
    positions[P[1]] = 5  # its last records had no op
    order.step()
    assert out == ["a1"]


def test_flush_does_not_break_the_order():
    out: list[str] = []
    order = ExactOrder(out.append, ends={P[0]: 9, P[1]: 9}, clock=lambda: 0.0)
    add(order, "a1", P[0], 0, 1.0)
    order.step(flush=True)
    assert out == [] and len(order) == 1


def test_once_the_topic_is_keyed_what_waited_goes_on_and_paused_partitions_resume(monkeypatch):
    monkeypatch.setattr("consumer.ordering.exact.KEYED_AFTER", 1)
    fetch = Fetch()
    out: list[str] = []
    order = fetch.order(out, limit=2)
    for i in range(2):
        add(order, f"a{i}", P[0], i, float(i))
    order.step()
    assert fetch.paused == [[P[0]]]
    assert order.as_read(P[1], 0, ("b",), b"b")
    assert out == ["a0", "a1"] and order.keyed("t")
    order.step()
    assert fetch.resumed == [[P[0]]]


def test_a_keyed_topic_warns_once_about_a_record_keyed_otherwise(monkeypatch, caplog):
    monkeypatch.setattr("consumer.ordering.exact.KEYED_AFTER", 1)
    order = ExactOrder(lambda item: None, ends={P[0]: 9}, clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="knock_sink.ordering"):
        assert order.as_read(P[0], 0, ("a",), b"a")
        assert order.as_read(P[0], 1, ("b",), b"someone-else")  # keyed stays keyed
        assert order.as_read(P[0], 2, ("c",), None)
    assert len(caplog.records) == 1 and "t[0]@1" in caplog.records[0].getMessage()


@pytest.mark.parametrize("users", [("tenant/x",), ("object/c/o",)])
def test_records_that_touch_no_user_are_not_judged(monkeypatch, users):
    monkeypatch.setattr("consumer.ordering.exact.KEYED_AFTER", 1)
    order = ExactOrder(lambda item: None, ends={P[0]: 9}, clock=lambda: 0.0)
    assert not order.as_read(P[0], 0, users, None)
    assert order.as_read(P[0], 1, ("a",), b"a")


def test_dropped_partitions_give_back_their_items_and_are_no_longer_paused():
    fetch = Fetch()
    out: list[str] = []
    order = fetch.order(out, limit=2)
    for i in range(2):
        add(order, f"a{i}", P[0], i, float(i))
    order.step()
    assert order.drop([P[0]]) == ["a0", "a1"] and len(order) == 0
    order.step()
    assert fetch.resumed == []  # forgotten, not resumed: it is no longer this sink's
