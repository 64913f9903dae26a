"""Topics not keyed by user: the sink notices one user's events on several partitions."""

from __future__ import annotations

import logging
import threading

from consumer.keying import WARN_EVERY, KeyWatch, keyed_by
from consumer.metrics import total
from consumer.sink import Sink
from tests.conftest import wait_for


def test_the_watch_counts_each_split_user_once_and_warns_at_most_every_few_minutes(caplog):
    now = [0.0]
    splits: list[int] = []
    watch = KeyWatch(clock=lambda: now[0], on_split=lambda: splits.append(1), remembered=3)
    with caplog.at_level(logging.WARNING, "knock_sink.keying"):
        watch.seen("a", ("t", 0))
        watch.seen("a", ("t", 0))
        watch.seen("a", ("other", 1))  # another topic: another key space
        assert splits == []
        watch.seen("a", ("t", 1))
        watch.seen("a", ("t", 2))  # already counted
        now[0] = WARN_EVERY / 2
        watch.seen("b", ("t", 0))
        watch.seen("b", ("t", 1))  # counted, not warned: too soon
        now[0] = WARN_EVERY + 1
        watch.seen("c", ("t", 0))
        watch.seen("c", ("t", 2))
    assert len(splits) == watch.users_split == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert (
        "not keyed by user" in warnings[0]
        and "userId" in warnings[0]
        and "repartition" in warnings[0]
    )
    assert "3 user(s)" in warnings[1]


def test_the_watch_catches_a_user_within_the_last_users_it_remembers_and_forgets_older_ones():
    watch = KeyWatch(clock=lambda: 0.0, remembered=3)
    # Each of the last 3 users seen is remembered, however the generations turned in between.
    for n in range(10):
        watch.seen("kept", ("t", 0))
        for other in range(3 * n, 3 * n + 2):
            watch.seen(f"u{other}", ("t", 0))
    watch.seen("kept", ("t", 1))
    assert watch.users_split == 1 and watch.split("kept", "t")
    # A user not seen for more than twice as many users is forgotten, and so is its split.
    for other in range(100, 107):
        watch.seen(f"u{other}", ("t", 0))
    assert not watch.split("kept", "t")
    watch.seen("kept", ("t", 2))
    watch.seen("gone", ("t", 0))
    for other in range(200, 207):
        watch.seen(f"u{other}", ("t", 0))
    watch.seen("gone", ("t", 1))
    assert watch.users_split == 1
    # Topics are apart: the same id on another topic is another user.
    watch.seen("kept", ("other", 1))
    assert watch.users_split == 1 and not watch.split("kept", "other")


def test_an_unkeyed_topic_is_detected_by_the_sink(kafka, api, settings_for, caplog):
    topic = kafka.topic(3)
    events = [{"type": "identify", "userId": f"u{i % 10}", "traits": {"n": i}} for i in range(40)]
    for p in range(3):  # round robin, as Segment writes without a message key
        kafka.produce(
            topic, [e for i, e in enumerate(events) if i % 3 == p], key=lambda v: None, partition=p
        )
    parts: dict[str, set[int]] = {}
    for i, e in enumerate(events):
        parts.setdefault(e["userId"], set()).add(i % 3)
    split = sum(1 for p in parts.values() if len(p) > 1)
    # A live sink: the watch is the per-event path's (a backfill holds users, and orders a
    # topic by its keys itself, see test_order.py).
    sink = Sink(settings_for(topic))
    runner = threading.Thread(target=sink.run)
    with caplog.at_level(logging.WARNING, "knock_sink.keying"):
        runner.start()
        try:
            ends = kafka.end_offsets(topic)
            wait_for(lambda: kafka.committed(f"g-{topic}", topic) == ends, 60, "commits")
        finally:
            sink.stop()
            runner.join(60)
    assert not runner.is_alive()
    assert total(sink.metrics.users_on_several_partitions) == split == 10
    assert [r.name for r in caplog.records if "not keyed by user" in r.getMessage()] == [
        "knock_sink.keying"
    ]


def test_a_record_is_keyed_by_user_when_its_key_is_one_of_its_users_ids() -> None:
    assert keyed_by(b"u1", ("u1",))
    assert keyed_by(b"u2", ("u1", "u2"))
    assert not keyed_by(None, ("u1",))
    assert not keyed_by(b"m-17", ("u1",))
    # An anonymous user: the key is its anonymousId, the user id has the prefix in front.
    assert keyed_by(b"a9", ("anon:a9",), "anon:")
    assert not keyed_by(b"a9", ("anon:a9",))
