"""Topics written in Kafka transactions (``repartition``'s output, Kafka Streams, Flink, any
exactly-once producer), read with ``read_committed`` on the real broker.

Each commit or abort writes a marker that takes an offset and is never delivered, and the
records of an aborted transaction are never delivered either. The consumer's position is past
both; "one past the last record delivered" never is. So every read path must take the position
as what was read: a backfill ends with its commits at the end offsets (the high watermarks),
exact against the independent model, and ``run`` commits there too."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from consumer.sink import Sink
from tests.conftest import wait_for
from tests.model import actual_state, expected_state


def transactional_producer(bootstrap: str) -> Producer:
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex}"})
    p.init_transactions(30)
    return p


def produce_in_transactions(
    bootstrap: str,
    topic: str,
    events: list[dict[str, Any]],
    *,
    size: int,
    abort_every: int,
    partitions: int,
) -> list[dict[str, Any]]:
    """``events`` keyed by user, ``size`` to a transaction, every ``abort_every``-th aborted;
    returns the events committed, in order."""
    p = transactional_producer(bootstrap)
    kept: list[dict[str, Any]] = []
    for k, at in enumerate(range(0, len(events), size)):
        chunk = events[at : at + size]
        p.begin_transaction()
        for e in chunk:
            user = e["userId"]
            p.produce(
                topic, orjson.dumps(e), key=user.encode(), partition=hash_part(user, partitions)
            )
        if k % abort_every == abort_every - 1:
            # Delivered first: an abort racing the partitions' registration with the
            # coordinator can fail with INVALID_TXN_STATE (confluentinc/librdkafka#4849).
            assert p.flush(30) == 0
            p.abort_transaction(30)
        else:
            p.commit_transaction(30)
            kept += chunk
    return kept


def hash_part(user: str, partitions: int) -> int:
    # A stable user -> partition map of our own (the test does not depend on Kafka's hash).
    return sum(user.encode()) % partitions


def keyed_events(n: int, users: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        e: dict[str, Any] = {
            "type": "identify",
            "userId": f"u{i % users}",
            "messageId": f"m{i}",
            "traits": {"last": i, f"k{i % 5}": i, "prefs": {f"p{i % 3}": i}},
        }
        if i % 7 == 3:
            e = {
                "type": "track",
                "userId": f"u{i % users}",
                "event": "Clicked",
                "messageId": f"m{i}",
                "context": {"traits": {"tracked": i}},
            }
        out.append(e)
    return out


def test_a_backfill_of_a_transactional_topic_with_aborts_ends_exact_at_the_end_offsets(
    kafka, api, settings_for
):
    topic = kafka.topic(3)
    # Small transactions, one in three aborted; the last one aborted too, so each partition
    # ends in aborted records and an abort marker: nothing past its last record is delivered.
    events = keyed_events(900, 60)
    kept = produce_in_transactions(
        kafka.bootstrap, topic, events, size=25, abort_every=3, partitions=3
    )
    assert len(kept) == 600
    sink = Sink(settings_for(topic))
    summary = sink.run(from_beginning=True, until_end=True)
    assert actual_state(api.users()) == expected_state(kept)
    assert dict(summary.dead_lettered) == {}
    # Read to the markers and committed there: what a next backfill or run starts from.
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)


@pytest.mark.parametrize("outcome", ["commit", "abort"])
def test_an_open_transaction_ends_a_backfill_where_it_starts_and_run_takes_it_once_over(
    kafka, api, settings_for, outcome
):
    # An abort is what the coordinator writes for a transaction that times out.
    topic = kafka.topic(1)
    events = keyed_events(200, 20)
    before = produce_in_transactions(
        kafka.bootstrap, topic, events[:100], size=10, abort_every=4, partitions=1
    )
    p = transactional_producer(kafka.bootstrap)
    p.begin_transaction()
    for e in events[100:]:
        p.produce(topic, orjson.dumps(e), key=e["userId"].encode(), partition=0)
    assert p.flush(30) == 0
    # A read_committed end offset is the last stable one: where the open transaction starts.
    stable = kafka.end_offsets(topic)
    summary = Sink(settings_for(topic)).run(from_beginning=True, until_end=True)
    assert summary.consumed == len(before)
    assert actual_state(api.users()) == expected_state(before)
    assert kafka.committed(f"g-{topic}", topic) == stable
    # Once it is over, the live sink reads on from there, and past its marker.
    (p.commit_transaction if outcome == "commit" else p.abort_transaction)(30)
    sink = Sink(settings_for(topic))
    runner = threading.Thread(target=sink.run)
    runner.start()
    try:
        ends = kafka.end_offsets(topic)
        assert ends[0] > stable[0]
        wait_for(lambda: kafka.committed(f"g-{topic}", topic) == ends, 60, "commits at the end")
        taken = before + (events[100:] if outcome == "commit" else [])
        assert actual_state(api.users()) == expected_state(taken)
    finally:
        sink.stop()
        runner.join(60)
    assert not runner.is_alive()


def test_run_commits_past_the_markers_of_a_transactional_topic(kafka, api, settings_for):
    topic = kafka.topic(2)
    events = keyed_events(300, 30)
    kept = produce_in_transactions(
        kafka.bootstrap, topic, events, size=20, abort_every=2, partitions=2
    )
    sink = Sink(settings_for(topic))
    runner = threading.Thread(target=sink.run)
    runner.start()
    try:
        ends = kafka.end_offsets(topic)
        wait_for(lambda: kafka.committed(f"g-{topic}", topic) == ends, 60, "commits at the ends")
        assert actual_state(api.users()) == expected_state(kept)
    finally:
        sink.stop()
        runner.join(60)
    assert not runner.is_alive()


# -- the position as what was read, without a broker ----------------------------------------


def test_the_tracker_commits_up_to_the_consumers_position_never_past_unresolved_work():
    from consumer.tracker import OffsetTracker

    tp = ("t", 0)
    t = OffsetTracker()
    t.add([tp])
    a, b = t.track(tp, 0), t.track(tp, 1)
    t.read_to({tp: 3})  # offset 2: a commit marker
    assert t.committable() == {}
    a.release()
    assert t.committable() == {tp: 1}
    b.release()
    assert t.committable() == {tp: 3}  # past the marker
    t.mark_committed({tp: 3})
    c = t.track(tp, 5)  # 3 and 4: aborted records, never delivered
    t.read_to({tp: 6})
    assert t.committable() == {tp: 5}  # the first unresolved: never back below the commit
    c.release()
    assert t.committable() == {tp: 6}
    t.read_to({tp: 4, ("t", 9): 7})  # a stale position, a partition not owned: nothing
    assert t.committable() == {tp: 6}


def test_the_read_ahead_finishes_a_partition_by_position():
    from consumer.flow import ReadAhead

    tp = ("t", 0)
    ra = ReadAhead({tp: 10}, idle=1.0, now=0.0)
    ra.read_to({tp: 8})
    assert ra.left(tp) == 2 and ra.finished() == set()
    ra.read_to({tp: 10, ("t", 1): 99})
    assert ra.left(tp) == 0 and ra.finished() == {tp}
    assert not ra.holding(0.0, full=False, short=lambda: True)
