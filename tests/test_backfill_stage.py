"""The backfill stage (:mod:`consumer.backfill`), verb by verb on the in-memory edge: users fold
and go once, what does not fold goes per event, the commit never passes a held user, reading
focuses on one partition, and a lost partition or a rewind stops the backfill."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumer.backfill import BackfillStage
from consumer.backfill.held import HeldHandle
from consumer.freshness import Freshness
from consumer.handles import EventHandle
from consumer.ops import Identify, Merge
from tests.memory import Broker
from tests.rig import TOPIC, Rig, counted, identify, produce, rig

A, B = (TOPIC, 0), (TOPIC, 1)

Build = Callable[..., tuple[Rig, BackfillStage]]


@pytest.fixture
def build() -> Iterator[Build]:
    made: list[tuple[Rig, BackfillStage]] = []

    def make(*partitions: list[dict[str, Any]], **over: Any) -> tuple[Rig, BackfillStage]:
        broker = Broker()
        broker.create(TOPIC, len(partitions))
        for p, events in enumerate(partitions):
            produce(broker, p, *events)
        r = rig(broker, **{"sink__lateness": 0, **over})
        r.dispatch.hold()  # as the loop does when it picks a backfill
        ends = broker.ends()
        stage = BackfillStage(
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
        made.append((r, stage))
        return r, stage

    yield make
    for r, stage in made:
        stage.close()
        r.close()


def test_a_users_events_fold_into_one_update_that_commits_once_applied(build):
    r, stage = build([identify("a", n=1, x=1), identify("b", n=1), identify("a", n=2)])
    stage.submit(r.fetched())
    assert r.dispatch.queued == 0  # held, not queued as read
    stage.feed()  # read to the end: the held users go
    queued = r.queued()
    assert [(p.op.user_id, p.op.props) for p in queued] == [  # type: ignore[union-attr]
        ("a", {"n": 2, "x": 1}),
        ("b", {"n": 1}),
    ]
    handles = [p.source for p in queued]
    assert all(isinstance(h, HeldHandle) for h in handles)
    assert [h.events for h in handles] == [2, 1]
    assert stage.committable() == {A: 0}  # a's first event is owed
    handles[1].release()
    assert stage.committable() == {A: 0}
    handles[0].release()
    assert stage.committable() == {A: 3}
    stage.mark_committed({A: 3})
    assert stage.committable() == {}
    assert counted(r.metrics, "identify", "queued") == 3


def test_a_held_users_update_is_stamped_for_the_freshness_metrics(build):
    r, stage = build([identify("a", n=1), identify("a", n=2)])
    records = r.fetched()
    stage.submit(records)
    stage.feed()
    (p,) = r.queued()
    assert p.source.seen > 0 and p.source.kafka_ms == records[0].timestamp
    registry = CollectorRegistry()
    Freshness(registry).applied([p], p.source.seen + 1.0)
    assert registry.get_sample_value("knock_sink_consume_to_apply_seconds_count") == 1


def test_what_does_not_fold_goes_per_event_in_order_after_the_users_held_state(build):
    alias = {"type": "alias", "previousId": "old", "userId": "a"}
    r, stage = build([identify("a", n=1), alias, identify("a", n=2)])
    stage.submit(r.fetched())
    queued = r.queued()
    # a's held state is ejected at the barrier, then the merge and a's later event per event.
    assert [type(p.op) for p in queued] == [Identify, Merge, Identify]
    assert isinstance(queued[0].source, HeldHandle)
    assert [type(p.source) for p in queued[1:]] == [EventHandle, EventHandle]
    assert [p.lane for p in queued[1:]] == [A, A]
    for p in queued:
        p.source.release()
    assert stage.committable() == {A: 3}


def test_a_poison_record_is_parked_and_the_commit_waits_for_the_broker(build):
    r, stage = build([identify("a", n=1)])
    r.broker.produce(TOPIC, 0, b"{not json", b"k")
    stage.submit(r.fetched())
    stage.feed()
    (held,) = r.queued()
    held.source.release()
    assert stage.committable() == {A: 1}  # the poison's offset is owed until confirmed
    r.dlq.pump()
    assert stage.committable() == {A: 2}
    assert counted(r.metrics, "invalid", "dead_lettered") == 1


def test_reading_ahead_reads_the_partition_with_fewest_events_left_first(build):
    r, stage = build(
        [identify(f"u{i}", n=i) for i in range(6)],
        [identify(f"v{i}", n=i) for i in range(2)],
    )
    r.fetched(0)  # joins the group
    stage.feed()
    assert r.fetch.holds(A) and not r.fetch.holds(B)  # partition 1 first: fewer left
    fetched = r.fetched()
    assert {rec.partition for rec in fetched} == {1}
    stage.submit(fetched)
    stage.feed()
    # Partition 1 is read to its end: its users may go while partition 0 is read.
    assert not r.fetch.holds(A) and r.fetch.holds(B)
    assert sorted(p.op.user_id for p in r.queued()) == ["v0", "v1"]  # type: ignore[union-attr]
    assert stage.holds_back(r.clock()) is True  # fewer than a full plan of them
    stage.submit(r.fetched())
    stage.feed()
    assert not stage.holds_back(r.clock())  # read to the end: plans go as usual
    assert not r.fetch.holds(A) and not r.fetch.holds(B)


def test_a_partition_that_leaves_stops_the_backfill(build):
    r, stage = build([identify("a", n=1)], [identify("b", n=1)])
    stage.submit(r.fetched())
    assert stage.forget({B}) is True
    assert stage.committable() == {}  # nothing held is vouched for any more
    assert stage.forget({A}) is False  # already stopped
    assert stage.forget(set()) is False


def test_a_rewind_stops_the_backfill_and_drops_what_was_queued(build):
    alias = {"type": "alias", "previousId": "old", "userId": "a"}
    r, stage = build([identify("a", n=1), alias])
    stage.submit(r.fetched())
    assert r.dispatch.queued == 2
    stage.submit([r.broker.partitions[A][0]])  # the consumer went back
    assert r.stop.is_set() and r.dispatch.queued == 0 and not r.tracker.owns(A)
    assert stage.committable() == {}


def test_a_stopped_loop_ends_a_wait_for_the_registry(build):
    r, stage = build([identify("a", n=1)])
    r.registry.down = True
    r.stop.set()  # the wait returns at once: the record was not read
    stage.submit(r.fetched())
    assert r.dispatch.queued == 0 and stage.committable() == {}


class PastMarker:
    """The in-memory source with a transaction marker after each partition's last record: once
    that record is delivered, the position is one past the marker, as librdkafka's is."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def positions(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        ends = self._source._broker.ends()
        return {
            tp: at + 1 if at == ends[tp] else at for tp, at in self._source.positions(tps).items()
        }


@pytest.mark.parametrize("stopping", [False, True])
def test_a_partition_read_past_its_final_marker_is_finished_and_commits_its_end(stopping):
    broker = Broker()
    broker.create(TOPIC, 2)
    produce(broker, 0, identify("a", n=1), identify("b", n=1))
    produce(broker, 1, identify("c", n=1))
    r = rig(broker, sink__lateness=0)
    r.dispatch.hold()
    ends = {tp: end + 1 for tp, end in broker.ends().items()}  # each ends past its marker
    stage = BackfillStage(
        ends,
        dict.fromkeys(ends, 0),
        settings=r.settings,
        ingest=r.ingest,
        dispatch=r.dispatch,
        source=PastMarker(r.source),
        fetch=r.fetch,
        tracker=r.tracker,
        dlq=r.dlq,
        metrics=r.metrics,
        stop=r.stop,
        clock=r.clock,
    )
    try:
        stage.submit(r.fetched())
        assert stage.holds_users()
        if stopping:  # the position may then be past records never taken in: not taken
            r.stop.set()
        stage.feed()
        queued = r.queued()
        if stopping:
            # Not finished by position: nobody sent yet, nothing committable past a held user.
            assert queued == [] and stage.holds_users()
            assert stage.committable() == {A: 0, B: 0}
            return
        # Finished by position, not by a second without a record: its users go at once.
        assert sorted(p.op.user_id for p in queued) == ["a", "b", "c"]  # type: ignore[union-attr]
        assert not stage.holds_users()
        for p in queued:
            p.source.release()
        assert stage.committable() == {A: 3, B: 2}  # the end offsets, past the markers
    finally:
        stage.close()
        r.close()
