"""The live stage (:mod:`consumer.intake`), verb by verb on the in-memory edge: what reaches the
dispatch, what the commit may pass, what waits for the registry and how a rewind starts a
partition afresh."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from consumer.handles import EventHandle
from consumer.intake import Intake
from consumer.ops import Identify
from consumer.plan import RIDER
from consumer.stalls import REGISTRY_BACKOFF
from tests.memory import Broker
from tests.rig import TOPIC, Rig, counted, identify, produce, rig

A, B = (TOPIC, 0), (TOPIC, 1)


@pytest.fixture
def stage() -> Iterator[tuple[Rig, Intake]]:
    broker = Broker()
    broker.create(TOPIC, 2)
    r = rig(broker)
    intake = Intake(
        r.settings,
        ingest=r.ingest,
        dispatch=r.dispatch,
        tracker=r.tracker,
        dlq=r.dlq,
        fetch=r.fetch,
        metrics=r.metrics,
        clock=r.clock,
    )
    yield r, intake
    r.close()


def test_each_op_reaches_the_dispatch_stamped_and_commits_once_released(stage):
    r, intake = stage
    produce(r.broker, 0, identify("a", n=1), identify("b", n=2))
    records = r.fetched()
    intake.submit(records)
    intake.feed()
    queued = r.queued()
    assert [(p.op.user_id, p.lane) for p in queued] == [("a", A), ("b", A)]  # type: ignore[union-attr]
    handles = [p.source for p in queued]
    assert all(isinstance(h, EventHandle) and h.seen > 0 for h in handles)
    assert [h.kafka_ms for h in handles] == [rec.timestamp for rec in records]
    assert intake.committable() == {}  # nothing applied yet
    handles[1].release()
    assert intake.committable() == {}  # offset 0 still owed
    handles[0].release()
    assert intake.committable() == {A: 2}
    intake.mark_committed({A: 2})
    assert intake.committable() == {}
    assert counted(r.metrics, "identify", "queued") == 2


def test_an_event_with_nothing_to_send_commits_at_once(stage):
    r, intake = stage
    produce(r.broker, 1, {"type": "page", "userId": "a", "name": "home"})
    intake.submit(r.fetched())
    assert r.queued() == []
    assert intake.committable() == {B: 1}


def test_a_poison_record_is_parked_and_commits_once_the_broker_confirms(stage):
    r, intake = stage
    r.broker.produce(TOPIC, 0, b"{not json", b"k")
    intake.submit(r.fetched())
    assert [d.headers["knock-sink.error.kind"] for d in r.broker.dead] == ["undecodable"]
    assert intake.committable() == {}  # written, not confirmed
    r.dlq.pump()
    assert intake.committable() == {A: 1}
    assert counted(r.metrics, "invalid", "dead_lettered") == 1


def test_a_partition_waits_for_the_registry_and_its_later_records_queue_behind(stage):
    r, intake = stage
    produce(r.broker, 0, identify("a", n=1))
    produce(r.broker, 1, identify("b", n=1))
    r.registry.down = True
    intake.submit(r.fetched(1))  # partition 0's record: stalled
    assert r.fetch.holds(A) and not r.fetch.holds(B)
    produce(r.broker, 0, identify("a", n=2))
    r.registry.down = False
    intake.submit(r.fetched())
    # Partition 0 is paused: only partition 1's record was fetched, and went through.
    assert [p.op.user_id for p in r.queued()] == ["b"]  # type: ignore[union-attr]
    intake.poll()  # the backoff has not elapsed
    assert r.fetch.holds(A)
    r.clock.now += REGISTRY_BACKOFF.cap  # past any first delay, jitter included
    intake.poll()
    assert not r.fetch.holds(A)
    intake.submit(r.fetched())  # the later record, fetched now that the partition resumed
    queued = r.queued()
    assert [p.source.offset for p in queued] == [0, 1]  # in the partition's order
    assert queued[0].op.props == {"n": 2}  # type: ignore[union-attr]  # the second folded in


def test_a_whole_resume_does_not_let_a_stalled_partition_fetch(stage):
    r, intake = stage
    produce(r.broker, 0, identify("a", n=1), identify("a", n=2))
    r.registry.down = True
    intake.submit(r.fetched(1))
    backpressure = r.fetch.whole("backpressure")
    backpressure.pause()
    backpressure.resume()
    assert r.fetched() == []  # partition 0 still waits for the registry
    assert r.fetch.holds(A) and not r.fetch.holds(B)


def test_a_rewound_partition_starts_afresh(stage):
    r, intake = stage
    produce(r.broker, 0, identify("a", n=1), identify("a", n=2))
    intake.submit(r.fetched())
    assert r.dispatch.queued == 2
    # The consumer goes back to offset 0 (a reset): what was queued of it goes.
    intake.submit([r.broker.partitions[A][0]])
    queued = r.queued()
    assert [p.source.offset for p in queued] == [0]
    queued[0].source.release()
    assert intake.committable() == {A: 1}


def test_a_stalled_partition_that_rewinds_is_read_afresh(stage):
    r, intake = stage
    produce(r.broker, 0, identify("a", n=1))
    r.registry.down = True
    intake.submit(r.fetched())
    assert r.fetch.holds(A)
    r.registry.down = False
    intake.submit([r.broker.partitions[A][0]])  # the consumer went back to offset 0
    assert not r.fetch.holds(A)
    assert [p.source.offset for p in r.queued()] == [0]


def test_forgetting_a_partition_never_stops_a_live_run(stage):
    _, intake = stage
    assert intake.forget({A}) is False
    assert intake.holds_back(0.0) is False


def test_a_users_identifies_of_one_partition_fold_as_they_are_queued(stage):
    r, intake = stage
    produce(r.broker, 0, *(identify("a", n=i, **{f"k{i}": i}) for i in range(5)))
    intake.submit(r.fetched())
    queued = r.queued()
    assert [p.seq for p in queued] == sorted(p.seq for p in queued)
    assert all(isinstance(p.op, Identify) for p in queued)
    host, *riders = (p.op for p in queued)
    assert host.props == {"n": 4, "k0": 0, "k1": 1, "k2": 2, "k3": 3, "k4": 4}  # type: ignore[union-attr]
    assert all(op.props is RIDER for op in riders)  # type: ignore[union-attr]


def test_the_commit_passes_offsets_never_delivered_once_the_position_is_past_them():
    # A transactional topic: offset 2 is a commit marker, 3 and 4 an aborted transaction,
    # none delivered. The consumer's position (taken after each batch) vouches for them.
    broker = Broker()
    broker.create(TOPIC, 2)
    r = rig(broker)
    at: dict[tuple[str, int], int] = {}
    intake = Intake(
        r.settings,
        ingest=r.ingest,
        dispatch=r.dispatch,
        tracker=r.tracker,
        dlq=r.dlq,
        fetch=r.fetch,
        metrics=r.metrics,
        clock=r.clock,
        positions=lambda tps: {tp: at[tp] for tp in tps if tp in at},
    )
    try:
        produce(r.broker, 0, identify("a", n=1), identify("b", n=2))
        records = r.fetched()
        at[A] = 3  # past the marker after the last record
        intake.submit(records)
        handles = [p.source for p in r.queued()]
        assert intake.committable() == {}  # nothing applied: the position vouches for nothing
        handles[0].release()
        assert intake.committable() == {A: 1}  # never past the first unresolved offset
        handles[1].release()
        assert intake.committable() == {A: 3}
        intake.mark_committed({A: 3})
        at[A] = 5  # the aborted records: an empty batch still takes the position
        intake.submit([])
        assert intake.committable() == {A: 5}
        at[A] = 4  # a position behind what was taken never takes the commit back
        intake.submit([])
        assert intake.committable() == {A: 5}
    finally:
        r.close()
