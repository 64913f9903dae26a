"""The stage contract (:mod:`consumer.stage`), written once and run against every stage, as
Arroyo's ``test_all.py`` runs one suite against all its strategies: the live intake, a
backfill, and the placeholder before the loop picks one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from consumer.backfill import BackfillStage
from consumer.intake import Intake
from consumer.stage import NotStarted, Stage
from tests.memory import Broker
from tests.rig import TOPIC, Rig, identify, produce, rig

A = (TOPIC, 0)
EVENTS = [identify("a", n=1), identify("b", n=1), identify("a", n=2)]


def live(r: Rig) -> Stage:
    return Intake(
        r.settings,
        ingest=r.ingest,
        dispatch=r.dispatch,
        tracker=r.tracker,
        dlq=r.dlq,
        fetch=r.fetch,
        metrics=r.metrics,
        clock=r.clock,
        positions=r.source.positions,
    )


def backfill(r: Rig) -> Stage:
    r.dispatch.hold()
    ends = r.broker.ends()
    return BackfillStage(
        ends,
        dict.fromkeys(ends, 0),
        settings=r.settings,
        ingest=r.ingest,
        dispatch=r.dispatch,
        source=r.source,
        fetch=r.fetch,
        tracker=r.tracker,
        dlq=r.dlq,
        metrics=r.metrics,
        stop=r.stop,
        clock=r.clock,
    )


@pytest.fixture(params=[live, backfill], ids=["live", "backfill"])
def stage(request: Any) -> Iterator[tuple[Rig, Stage]]:
    make: Callable[[Rig], Stage] = request.param
    broker = Broker()
    broker.create(TOPIC, 1)
    produce(broker, 0, *EVENTS)
    r = rig(broker, sink__lateness=0)
    made = make(r)
    yield r, made
    made.close()
    r.close()


def turn(r: Rig, stage: Stage) -> None:
    stage.poll()
    stage.submit(r.fetched())
    stage.feed()


def test_nothing_unapplied_is_committable(stage):
    r, s = stage
    turn(r, s)
    queued = r.queued()
    assert queued
    assert all(position <= 0 for position in s.committable().values())
    for p in queued[:-1]:
        p.source.release()
    assert all(position <= 2 for position in s.committable().values())
    queued[-1].source.release()
    assert s.committable() == {A: 3}
    s.mark_committed({A: 3})
    assert s.committable() == {}  # a position is offered until Kafka accepted it, not after


def test_every_op_carries_its_offsets_stamped_and_the_events_it_stands_for(stage):
    r, s = stage
    turn(r, s)
    queued = r.queued()
    assert all(p.source.partition == A and p.source.current for p in queued)
    assert all(p.source.seen > 0 and p.source.kafka_ms for p in queued)
    # Each event counted once as applied, however it was folded (one carrier, several ops).
    carriers = {id(p.source): p.source for p in queued}
    assert sum(h.events for h in carriers.values()) == len(EVENTS)


def test_an_empty_batch_and_an_idle_turn_change_nothing(stage):
    r, s = stage
    s.submit([])
    s.feed()
    s.poll()
    assert r.dispatch.queued == 0 and s.committable() == {}
    assert s.fatal is None


def test_holds_back_changes_nothing_and_flush_and_close_may_be_said_twice(stage):
    r, s = stage
    turn(r, s)
    before = r.dispatch.queued
    s.holds_back(r.clock())
    s.holds_back(r.clock())
    assert r.dispatch.queued == before
    s.flush()
    s.flush()
    s.close()
    s.close()


def test_forgetting_a_partition_not_read_here_stops_nothing_live(stage):
    r, s = stage
    turn(r, s)
    stops = s.forget({(TOPIC, 9)})
    assert stops is isinstance(s, BackfillStage)  # a backfill cannot split what it holds


def test_before_the_loop_picks_a_stage_there_is_nothing_to_commit_or_forget():
    s = NotStarted()
    assert s.committable() == {} and s.forget({A}) is False and s.fatal is None
    with pytest.raises(RuntimeError):
        s.submit([])
