"""The dispatch (:mod:`consumer.dispatch`): the planner's one door. Ops are numbered as they
are queued, given back in their place, dropped by partition, and a due plan waits while the
stage holds it back. No plan is started here (that is Knock's side: test_loop, test_sink)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from consumer.flow import Sizing
from consumer.ops import Identify
from tests.memory import Broker
from tests.rig import TOPIC, Rig, rig

A, B = (TOPIC, 0), (TOPIC, 1)


class Owed:
    """A stand-in offset carrier: the planner keeps it opaque."""

    def __init__(self, partition: tuple[str, int], offset: int) -> None:
        self.partition, self.offset, self.current = partition, offset, True


@pytest.fixture
def r() -> Iterator[Rig]:
    broker = Broker()
    broker.create(TOPIC, 2)
    made = rig(broker, sink__flush_interval=60.0)  # nothing is due by time in these tests
    yield made
    made.close()


def test_ops_are_numbered_as_they_are_queued(r):
    d = r.dispatch
    d.queue(Identify("a", {"n": 1}), Owed(A, 0))  # type: ignore[arg-type]
    d.queue(Identify("b", {"n": 1}), Owed(B, 0))  # type: ignore[arg-type]
    assert d.queued == 2 and not d.idle
    assert [p.seq for p in r.queued()] == [1, 2]
    assert d.queued == 0 and d.idle


def test_an_op_numbered_by_the_caller_keeps_its_place(r):
    from consumer.plan import Pending

    d = r.dispatch
    first = d.next_seq()
    d.queue(Identify("a", {"n": 2}), Owed(A, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # numbered before the queued one, added after it
        d.add(Pending(first, Identify("a", {"n": 1}), Owed(A, 0)))  # type: ignore[arg-type]


def test_ops_given_back_rejoin_in_their_place(r):
    d = r.dispatch
    for i, user in enumerate("abc"):
        d.queue(Identify(user, {"n": i}), Owed(A, i))  # type: ignore[arg-type]
    first, *rest = r.queued()
    for p in rest:
        d.queue(p.op, p.source)  # later arrivals, numbered after
    d.retry([first], not_before=5.0)
    queued = r.queued()
    assert [p.op.user_id for p in queued] == ["a", "b", "c"]  # type: ignore[union-attr]
    assert queued[0].not_before == 5.0


def test_drop_takes_the_ops_of_the_partitions_that_left(r):
    d = r.dispatch
    d.queue(Identify("a", {}), Owed(A, 0))  # type: ignore[arg-type]
    d.queue(Identify("b", {}), Owed(B, 0))  # type: ignore[arg-type]
    gone = d.drop(lambda p: p.source.partition == A)
    assert [p.op.user_id for p in gone] == ["a"]  # type: ignore[union-attr]
    assert d.queued == 1


def test_a_due_plan_waits_while_the_stage_holds_it_back(r):
    d = r.dispatch
    for i in range(d.sizing.users_per_plan):  # a full plan: due
        d.queue(Identify(f"u{i}", {}), Owed(A, i))  # type: ignore[arg-type]
    asked: list[float] = []
    d.start(wait=lambda now: asked.append(now) or True)
    assert asked and d.queued == d.sizing.users_per_plan and d.in_flight() == 0


def test_a_backfill_sizes_plans_for_held_users(r):
    d = r.dispatch
    knock = r.settings.knock
    assert d.sizing == Sizing.of(knock)
    d.hold()
    assert d.sizing == Sizing.of(knock, held=True)
    assert d.sizing.users_per_plan == knock.bulk_size  # one bulk call: they wait unpacked
