"""A live sink's window (:mod:`consumer.ordering.window`): what waits, and the two bounds of
the wait."""

from __future__ import annotations

from typing import Any

from consumer.ordering.window import WindowOrder

P = [("t", 0), ("t", 1)]


def window(out: list[str], now: list[float], split: set[str], **kw: Any) -> WindowOrder:
    return WindowOrder(
        out.append, split=lambda u, topic: u in split, clock=lambda: now[0], lateness=5.0, **kw
    )


def test_an_op_of_a_split_user_waits_at_most_lateness_seconds_after_it_was_read():
    now = [100.0]
    out: list[str] = []
    order = window(out, now, {"s"})
    order.add("s0", P[1], 0, ("s",), lambda: 0.5)
    order.step()
    assert out == ["s0"]  # the only partition seen so far
    assert not order.as_read(P[0], 0, ("s",), None)
    order.add("s1", P[0], 0, ("s",), lambda: 1.0)  # partition 1 may bring one before 1
    now[0] = 104.9
    order.step()
    assert out == ["s0"]
    now[0] = 105.0
    order.step()
    assert out == ["s0", "s1"]


def test_an_op_of_a_split_user_goes_on_once_its_topic_read_an_event_lateness_newer():
    now = [100.0]
    out: list[str] = []
    order = window(out, now, {"s"})
    order.add("s0", P[1], 0, ("s",), lambda: 0.5)
    order.step()
    order.add("s1", P[0], 0, ("s",), lambda: 1.0)
    order.add("s6", P[0], 1, ("s",), lambda: 6.0)
    order.step()
    # s1 is 5 s older than the newest event of its topic; s6 waits for partition 1.
    assert out == ["s0", "s1"] and len(order) == 1


def test_once_a_topic_has_a_split_user_every_op_of_it_is_timed():
    now = [100.0]
    out: list[str] = []
    order = window(out, now, {"s"})
    assert order.as_read(P[0], 0, ("k",), None)
    order.add("s1", P[0], 1, ("s",), lambda: 1.0)
    assert not order.as_read(P[0], 2, ("k",), None)  # the topic is now known unkeyed
    order.add("k2", P[0], 2, ("k",), lambda: 2.0)
    assert out == ["k2"]  # nothing of k waits, so it goes on (its time is now known)


def test_without_lateness_nothing_waits():
    out: list[str] = []
    order = WindowOrder(out.append, lateness=0.0, split=lambda u, t: True, clock=lambda: 0.0)
    assert order.as_read(P[0], 0, ("s",), None)
    order.add("s1", P[0], 0, ("s",), lambda: 1.0)
    assert out == ["s1"] and not order.keyed("t") and not order.exact


def test_flush_hands_on_everything_and_later_ops_go_on_as_read():
    now = [100.0]
    out: list[str] = []
    order = window(out, now, {"s"})
    order.add("s2", P[0], 0, ("s",), lambda: 2.0)
    order.add("s1", P[1], 0, ("s",), lambda: 1.0)
    order.step(flush=True)
    assert out == ["s1", "s2"]
    assert order.as_read(P[0], 1, ("s",), None)


def test_a_dropped_partition_is_no_longer_waited_for():
    now = [100.0]
    out: list[str] = []
    order = window(out, now, {"s"})
    order.add("s1", P[1], 0, ("s",), lambda: 1.0)
    order.add("s2", P[0], 0, ("s",), lambda: 2.0)
    order.step()
    assert out == ["s1"]  # s2 waits for partition 1, which may bring something before 2
    assert order.drop([P[1]]) == []
    order.step()
    assert out == ["s1", "s2"]
