"""Where a backfill starts and ends, and whether it got there (:mod:`consumer.backfill.targets`),
on the in-memory edge."""

from __future__ import annotations

from consumer.backfill.targets import reached, read_targets
from tests.memory import Broker, MemoryEdge, MemorySource

TOPIC = "events"
A, B, C = (TOPIC, 0), (TOPIC, 1), (TOPIC, 2)


def source(broker: Broker) -> MemorySource:
    src = MemoryEdge(broker, [TOPIC]).source(
        on_assign=lambda tps: None,
        on_revoke=lambda tps: None,
        on_lost=lambda tps: None,
        from_beginning=False,
    )
    src.consume(0, 0)  # joins: every partition assigned, positioned at the group's commit
    return src


def broker_of(*sizes: int) -> Broker:
    broker = Broker()
    broker.create(TOPIC, len(sizes))
    for p, n in enumerate(sizes):
        for i in range(n):
            broker.produce(TOPIC, p, {"type": "identify", "userId": f"u{i}"})
    return broker


def test_targets_run_from_the_commit_to_the_end_and_skip_partitions_with_nothing_left():
    broker = broker_of(5, 3, 0)
    broker.commits = {A: 2, B: 3}
    ends, starts = read_targets(source(broker), [TOPIC], from_beginning=False)
    assert ends == {A: 5} and starts == {A: 2}  # B is read to its end, C is empty


def test_from_the_beginning_ignores_the_commit():
    broker = broker_of(5, 3)
    broker.commits = {A: 2, B: 3}
    ends, starts = read_targets(source(broker), [TOPIC], from_beginning=True)
    assert ends == {A: 5, B: 3} and starts == {A: 0, B: 0}


def test_the_end_is_reached_once_every_target_is_committed():
    broker = broker_of(5, 3)
    src = source(broker)
    busy = [True]
    assert not reached({A: 5, B: 3}, {A: 5}, src, lambda: busy[0])
    assert reached({A: 5, B: 3}, {A: 5, B: 3}, src, lambda: busy[0])


def test_a_target_never_delivered_is_reached_by_position_once_nothing_is_owed():
    # A transactional topic ends in a commit marker: read past it, nothing left to apply.
    broker = broker_of(5)
    broker.commits = {A: 6}  # where the consumer starts: past the marker at offset 5
    src = source(broker)
    asked: list[int] = []

    def busy() -> bool:
        asked.append(1)
        return False

    assert reached({A: 6}, {A: 5}, src, busy) and asked
    assert not reached({A: 6}, {A: 5}, src, lambda: True)  # events still owed
    assert not reached({A: 7}, {A: 5}, src, busy)  # not read that far


def test_held_users_still_to_send_keep_a_backfill_read_to_its_end_from_ending():
    # A backfill read past its last marker before it sent anyone: nothing tracked is pending,
    # but its held users are not applied yet.
    broker = broker_of(5)
    broker.commits = {A: 6}
    src = source(broker)
    held = [True]
    assert not reached({A: 6}, {A: 5}, src, lambda: False, held=lambda: held[0])
    held[0] = False
    assert reached({A: 6}, {A: 5}, src, lambda: False, held=lambda: held[0])
