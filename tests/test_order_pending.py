"""The live intake's side of the window (:mod:`consumer.ordering.pending`): pendings numbered
as they leave, repeated merges skipped, merges relating both users."""

from __future__ import annotations

import itertools
from typing import Any

from consumer.config import load_settings
from consumer.keying import KeyWatch
from consumer.metrics import Metrics, total
from consumer.ops import Identify, Merge
from consumer.ordering.pending import PendingOrder
from consumer.plan import Pending

A, B = ("t", 0), ("t", 1)


class Handle:
    """What the order reads of a tracker handle."""

    def __init__(self, tp: Any, offset: int, event_ts: str | None = None) -> None:
        self.partition, self.offset = tp, offset
        self.event_ts, self.kafka_ms, self.seen = event_ts, None, 0.0
        self.released = False

    def release(self) -> None:
        self.released = True


class Intake:
    def __init__(self, **sink: Any) -> None:
        self.planned: list[Pending] = []
        self.keys = KeyWatch(clock=lambda: 0.0)
        self.metrics = Metrics()
        seq = itertools.count(1)
        self.order = PendingOrder(
            load_settings(environ={}, overrides={f"sink.{k}": v for k, v in sink.items()}),
            add=self.planned.append,
            next_seq=lambda: next(seq),
            keys=self.keys,
            metrics=self.metrics,
            pause=lambda tps: None,
            resume=lambda tps: None,
            may_resume=lambda tp: True,
            clock=lambda: 0.0,
        )

    def add(self, op: Any, tp: Any, offset: int, ts: str | None = None) -> Handle:
        h = Handle(tp, offset, ts)
        self.keys.seen(op.user_id, tp)  # as the intake does, before the order
        self.order.add(Pending(0, op, h, tp))
        return h


def test_ops_of_users_on_one_partition_go_on_numbered_in_consume_order():
    intake = Intake()
    intake.add(Identify("a", {}), A, 0)
    intake.add(Identify("b", {}), B, 0)
    assert [(p.seq, p.op.user_id) for p in intake.planned] == [(1, "a"), (2, "b")]


def test_a_split_users_ops_are_numbered_as_they_leave_in_event_time_order():
    intake = Intake()
    intake.keys.seen("s", A)
    intake.keys.seen("s", B)  # s is split
    intake.add(Identify("s", {"n": 2}), A, 0, "2024-03-01T00:00:02Z")
    intake.add(Identify("s", {"n": 1}), B, 0, "2024-03-01T00:00:01Z")
    assert intake.planned == []
    intake.order.step()
    assert [(p.seq, p.op.props["n"]) for p in intake.planned] == [(1, 1)]  # 2 waits for B
    intake.order.step(flush=True)
    assert [(p.seq, p.op.props["n"]) for p in intake.planned] == [(1, 1), (2, 2)]


def test_a_merge_repeating_a_message_id_from_elsewhere_is_skipped_and_counted():
    intake = Intake()
    intake.add(Merge("a", "b", message_id="m1"), A, 0)
    repeat = intake.add(Merge("a", "b", message_id="m1"), B, 0)
    assert len(intake.planned) == 1 and repeat.released
    assert total(intake.metrics.duplicate_merges) == 1
    assert intake.keys.split("b", "t") is False and intake.keys.split("a", "t") is True


def test_with_merge_ids_off_every_merge_goes_on():
    intake = Intake(merge_ids=0)
    intake.add(Merge("a", "b", message_id="m1"), A, 0)
    intake.add(Merge("a", "b", message_id="m1"), B, 0)
    intake.order.step(flush=True)  # a is split by now: its second merge waited
    assert len(intake.planned) == 2 and not intake.order.repeats(Identify("a", {}), A, 0)
