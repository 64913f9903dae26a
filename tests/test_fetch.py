"""The fetch control (:mod:`consumer.fetch`): each stage holds partitions back under its own
reason, and the consumer is paused exactly where some reason holds."""

from __future__ import annotations

from consumer.fetch import FetchControl
from consumer.flow import Backpressure
from consumer.records import Partition

A, B, C = ("t", 0), ("t", 1), ("t", 2)


class Consumer:
    """Records what the fetch control tells the consumer, and what is paused there."""

    def __init__(self) -> None:
        self.paused: set[Partition] = set()
        self.calls: list[tuple[str, list[Partition]]] = []

    def pause_partitions(self, tps: list[Partition]) -> None:
        self.calls.append(("pause", tps))
        self.paused.update(tps)

    def resume_partitions(self, tps: list[Partition]) -> None:
        self.calls.append(("resume", tps))
        self.paused.difference_update(tps)


def control(*assigned: Partition) -> tuple[FetchControl, Consumer]:
    consumer = Consumer()
    fetch = FetchControl(consumer)  # type: ignore[arg-type]
    fetch.assigned(list(assigned))
    return fetch, consumer


def test_a_partition_fetches_again_only_once_every_reason_let_it_go():
    fetch, consumer = control(A, B)
    fetch.hold("registry", [A])
    fetch.hold("order", [A])
    fetch.release("order", [A])
    assert consumer.paused == {A} and fetch.holds(A)
    fetch.release("registry", [A])
    assert consumer.paused == set() and not fetch.holds(A)


def test_a_whole_resume_does_not_undo_a_partitions_own_hold():
    # A partition waiting for the registry stays paused when backpressure lets go.
    fetch, consumer = control(A, B, C)
    fetch.hold("registry", [B])
    fetch.hold_all("backpressure")
    assert consumer.paused == {A, B, C} and fetch.paused
    fetch.release_all("backpressure")
    assert consumer.paused == {B} and not fetch.paused


def test_saying_a_hold_again_tells_the_consumer_nothing():
    # The event-time order says its pause at every turn while a partition is ahead.
    fetch, consumer = control(A, B)
    for _ in range(3):
        fetch.hold("order", [A])
    fetch.hold_all("drain")
    fetch.hold_all("drain")
    assert consumer.calls == [("pause", [A]), ("pause", [B])]


def test_focus_keeps_only_the_partitions_it_reads_and_new_ones_wait_their_turn():
    fetch, consumer = control(A, B)
    fetch.only("focus", {A})
    assert consumer.paused == {B}
    fetch.assigned([C])  # assigned while focused: it waits
    assert consumer.paused == {B, C}
    fetch.only("focus", set())  # a pause of its own
    assert consumer.paused == {A, B, C} and not fetch.paused
    fetch.only("focus", None)
    assert consumer.paused == set()


def test_backpressure_and_a_drain_are_two_reasons():
    fetch, consumer = control(A)
    fetch.hold_all("drain")
    fetch.release_all("backpressure")  # never held: nothing to let go
    assert consumer.paused == {A}


def test_a_partition_that_leaves_takes_its_holds_with_it():
    # librdkafka forgets the pause of an unassigned partition: assigned again, it fetches.
    fetch, consumer = control(A, B)
    fetch.hold("registry", [A])
    fetch.unassigned([A])
    consumer.paused.discard(A)  # as librdkafka does on unassign
    fetch.assigned([A])
    assert not fetch.holds(A) and consumer.paused == set()
    assert consumer.calls == [("pause", [A])]  # nothing to resume: it was never paused again


def test_holds_said_before_the_consumer_exists_apply_once_it_is_bound():
    fetch = FetchControl()
    fetch.hold_all("drain")
    consumer = Consumer()
    fetch.bind(consumer)  # type: ignore[arg-type]
    fetch.assigned([A])
    assert consumer.paused == {A}


def test_backpressure_speaks_to_one_reason():
    fetch, consumer = control(A, B)
    fetch.hold("registry", [A])
    bp = Backpressure(10)
    switch = fetch.whole("backpressure")
    bp.update(10, switch)
    assert switch.paused and consumer.paused == {A, B}
    bp.update(5, switch)
    assert not switch.paused and consumer.paused == {A}
