"""``knock-sink repartition`` on the real broker: an unkeyed topic (round robin over 3
partitions, each event stamped in production order) re-keyed by user, then backfilled: the
Knock state is exact; and a SIGKILL mid-way then a rerun leaves each event exactly once in the
keyed topic (read with isolation.level=read_committed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from confluent_kafka import Consumer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumer.config import KafkaSettings
from consumer.repartition import Repartitioner, event_time, user_key
from consumer.sink import Sink
from tests.conftest import ROOT, wait_for
from tests.model import actual_state, expected_state
from tests.segment_rr import events_of, segment_events, time_of
from tests.segment_rr import produce_round_robin as produce_segment_round_robin
from tests.test_sink_avro import avro_value, event_schema, produce, serializer

START = datetime(2024, 3, 1, tzinfo=UTC)


def unkeyed_events(n: int, users: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        e: dict[str, Any] = {
            "type": "identify",
            "userId": f"u{i % users}",
            "messageId": f"m{i}",
            "timestamp": (START + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
            "traits": {"last": i, f"k{i % 4}": i},
        }
        if i % 50 == 49:
            # Now and then an alias, keyed by the user it merges into. Its previousId is one no
            # other event names: an alias relates two keys, and no keying orders it against
            # the events of the other one (docs/delivery.md, Topics not keyed by user).
            e = {
                "type": "alias",
                "previousId": f"visitor{i}",
                "userId": f"u{i % users}",
                "messageId": f"m{i}",
                "timestamp": e["timestamp"],
            }
        out.append(e)
    return out


def produce_round_robin(kafka: Any, topic: str, events: list[dict[str, Any]]) -> None:
    for p in range(3):  # production order within each partition, no key (Segment's default)
        kafka.produce(
            topic, [e for i, e in enumerate(events) if i % 3 == p], key=lambda v: None, partition=p
        )


def read_committed(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[Any]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"rc-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    out: list[Any] = []
    try:
        wait_for(
            lambda: (
                out.extend(m for m in c.consume(500, 0.2) if m.error() is None)
                or len(out) >= expected
            ),
            timeout,
            f"{expected} committed records in {topic}",
        )
        out += [m for m in c.consume(500, 1.0) if m.error() is None]  # anything beyond
    finally:
        c.close()
    return out


def test_keys_and_times():
    assert user_key({"userId": "u", "anonymousId": "a"}) == "u"
    assert user_key({"userId": None, "anonymousId": "a"}) == "a"
    assert user_key({"type": "alias", "previousId": "p", "userId": "u"}) == "u"
    assert user_key("not an event") is None and user_key({"userId": ""}) is None
    assert event_time({"timestamp": "2024-03-01T00:00:01Z"}, 5) == START.timestamp() + 1
    assert event_time({"originalTimestamp": "2024-03-01T00:00:02Z"}, 5) == START.timestamp() + 2
    assert event_time(None, 7000) == 7.0


def test_repartition_then_backfill_is_exact(kafka, api, settings_for):
    raw, keyed = kafka.topic(3, "raw"), f"keyed-{uuid.uuid4().hex[:10]}"
    events = unkeyed_events(300, 20)
    produce_round_robin(kafka, raw, events)
    counts = Repartitioner(
        KafkaSettings(bootstrap_servers=kafka.bootstrap), raw, keyed, batch=40
    ).run()
    assert (counts.read, counts.written, counts.unkeyed) == (300, 300, 0)
    copied = read_committed(kafka.bootstrap, keyed, 300)
    assert sorted(orjson.loads(m.value())["messageId"] for m in copied) == sorted(
        e["messageId"] for e in events
    )
    partitions: dict[bytes, set[int]] = {}
    for m in copied:
        partitions.setdefault(m.key(), set()).add(m.partition())
    assert all(len(p) == 1 for p in partitions.values())  # each user on one partition
    Sink(settings_for(keyed)).run(from_beginning=True, until_end=True)
    assert actual_state(api.users()) == expected_state(events)


def test_a_sigkill_mid_way_then_a_rerun_writes_each_event_exactly_once(kafka):
    raw, keyed = kafka.topic(3, "raw"), f"keyed-{uuid.uuid4().hex[:10]}"
    events = unkeyed_events(3000, 50)
    produce_round_robin(kafka, raw, events)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap}
    # A short session, so that the rerun's consumer need not wait 45 s for the killed one to
    # leave the group.
    cmd = [
        sys.executable,
        "-m",
        "consumer.cli",
        "repartition",
        "--from",
        raw,
        "--to",
        keyed,
        "--batch",
        "10",
        "--kafka-option",
        "session.timeout.ms=6000",
    ]
    group = f"knock-sink-repartition.{raw}.{keyed}"
    first = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(
            lambda: sum(kafka.committed(group, raw).values()) >= 300,
            120,
            "some transactions committed",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    done = sum(kafka.committed(group, raw).values())
    assert 300 <= done < 3000, "killed mid-way"
    rerun = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    resumed = orjson.loads(rerun.stdout.splitlines()[-1])
    assert resumed["written"] == 3000 - done  # the rerun started where the last commit ended
    copied = read_committed(kafka.bootstrap, keyed, 3000)
    ids = [orjson.loads(m.value())["messageId"] for m in copied]
    assert len(ids) == 3000 and sorted(ids) == sorted(e["messageId"] for e in events)
    assert kafka.committed(group, raw) == {0: 1000, 1: 1000, 2: 1000}


def test_avro_values_are_keyed_by_their_user_and_copied_unchanged(kafka, schema_registry):
    raw, keyed = kafka.topic(3, "raw"), f"keyed-{uuid.uuid4().hex[:10]}"
    events = [
        {"type": "identify", "userId": f"u{i % 5}", "traits": {"n": str(i)}} for i in range(30)
    ]
    ser = serializer(schema_registry, event_schema("map"))
    values = [
        ser(avro_value(e, "map"), SerializationContext(raw, MessageField.VALUE)) for e in events
    ]
    values.append(b"\x00\x3a\xde\x68\xb1\x00")  # an unknown schema id: copied with its own key
    produce(
        kafka.bootstrap,
        raw,
        values,
        [f"k{i}" for i in range(len(values))],
        [i % 3 for i in range(len(values))],
    )
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, schema_registry_url=schema_registry)
    counts = Repartitioner(settings, raw, keyed).run()
    assert (counts.written, counts.unkeyed) == (31, 1)
    copied = read_committed(kafka.bootstrap, keyed, 31)
    by_value = {m.value(): m.key() for m in copied}
    assert by_value == {
        v: (f"u{i % 5}".encode() if i < 30 else b"k30") for i, v in enumerate(values)
    }


# -- Segment's round robin, as a new user meets it (issue 29) ------------------------------


def check_keyed_copy(copied: list[Any], records: list[Any]) -> None:
    """Every record exactly once, each user on one partition, and each user's events in
    event-time order (``timestamp``, else ``originalTimestamp``; poison has none)."""
    produced = sorted(r if isinstance(r, bytes) else orjson.dumps(r) for r in records)
    assert sorted(m.value() for m in copied) == produced
    by_user: dict[bytes, list[Any]] = {}
    for m in sorted(copied, key=lambda m: (m.partition(), m.offset())):
        stamp = time_of(m.value())
        if stamp is not None:
            by_user.setdefault(m.key(), []).append((stamp, m.partition()))
    assert all(len({p for _, p in seq}) == 1 for seq in by_user.values())
    unordered = [
        u for u, seq in by_user.items() if [s for s, _ in seq] != sorted(s for s, _ in seq)
    ]
    assert unordered == [], f"{len(unordered)} users out of event-time order"


def test_round_robin_segment_events_reach_the_keyed_topic_in_event_time_order(
    kafka, api, settings_for
):
    raw, keyed = kafka.topic(3, "raw"), f"keyed-{uuid.uuid4().hex[:10]}"
    records = segment_events(3000)
    produce_segment_round_robin(kafka.bootstrap, raw, records)
    # Small transactions: many markers in the keyed topic, which the backfill reads past.
    counts = Repartitioner(
        KafkaSettings(bootstrap_servers=kafka.bootstrap), raw, keyed, batch=50
    ).run()
    poison = sum(isinstance(r, bytes) for r in records)
    assert (counts.read, counts.written, counts.unkeyed, counts.late) == (3000, 3000, poison, 0)
    check_keyed_copy(read_committed(kafka.bootstrap, keyed, 3000), records)
    assert counts.transactions >= 60  # --batch bounds each
    summary = Sink(settings_for(keyed)).run(from_beginning=True, until_end=True)
    assert actual_state(api.users()) == expected_state(events_of(records))
    assert dict(summary.dead_lettered) == {"undecodable": poison}
    assert kafka.committed(f"g-{keyed}", keyed) == kafka.end_offsets(keyed)


def test_a_sigkilled_repartition_of_round_robin_events_resumes_in_order_exactly_once(kafka):
    raw, keyed = kafka.topic(3, "raw"), f"keyed-{uuid.uuid4().hex[:10]}"
    records = segment_events(3000, seed=7)
    produce_segment_round_robin(kafka.bootstrap, raw, records)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap}
    cmd = [
        sys.executable,
        "-m",
        "consumer.cli",
        "repartition",
        "--from",
        raw,
        "--to",
        keyed,
        "--batch",
        "25",
        "--kafka-option",
        "session.timeout.ms=6000",
    ]
    group = f"knock-sink-repartition.{raw}.{keyed}"
    first = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(
            lambda: sum(kafka.committed(group, raw).values()) >= 300,
            120,
            "some transactions committed",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    done = sum(kafka.committed(group, raw).values())
    assert 300 <= done < 3000, "killed mid-way"
    rerun = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert orjson.loads(rerun.stdout.splitlines()[-1])["written"] == 3000 - done
    check_keyed_copy(read_committed(kafka.bootstrap, keyed, 3000), records)
    assert kafka.committed(group, raw) == {0: 1000, 1: 1000, 2: 1000}


def test_a_following_repartition_keeps_order_and_waits_a_bounded_time_for_an_idle_partition(
    kafka,
):
    raw, keyed = kafka.topic(3, "raw"), f"keyed-{uuid.uuid4().hex[:10]}"
    records = segment_events(1200, seed=11)
    rep = Repartitioner(
        KafkaSettings(bootstrap_servers=kafka.bootstrap), raw, keyed, batch=100, lateness=1.0
    )
    stop = threading.Event()
    counts: list[Any] = []
    runner = threading.Thread(target=lambda: counts.append(rep.run(until_end=False, stop=stop)))
    runner.start()
    group = f"knock-sink-repartition.{raw}.{keyed}"
    try:
        # Produced while it runs, in bursts: between them every partition is at its end.
        for at in range(0, 1080, 120):
            produce_segment_round_robin(kafka.bootstrap, raw, records[at : at + 120], start=at)
        # Then partition 2 stays idle: what the others bring goes once it was waited for.
        tail = [r for i, r in enumerate(records[1080:], 1080) if i % 3 != 2]
        produce_segment_round_robin(kafka.bootstrap, raw, records[1080:], start=1080, skip={2})
        ends = kafka.end_offsets(raw)
        wait_for(lambda: kafka.committed(group, raw) == ends, 60, "every record copied")
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive() and counts[0].late == 0
    sent = records[:1080] + tail
    check_keyed_copy(read_committed(kafka.bootstrap, keyed, len(sent)), sent)


def test_a_partition_far_ahead_in_event_time_waits_in_kafka_not_in_memory(kafka):
    raw, keyed = kafka.topic(3, "raw"), f"keyed-{uuid.uuid4().hex[:10]}"
    records = segment_events(1800, seed=5)
    # Partition 0 gets the last third of the events (stamped after all the others), 1 and 2
    # the first two thirds round robin: everything read of partition 0 waits for them.
    late, early = records[1200:], records[:1200]
    produce_segment_round_robin(kafka.bootstrap, raw, early, partitions=2, shift=1)
    produce_segment_round_robin(kafka.bootstrap, raw, late, partitions=1)
    peak: list[int] = [0]

    class Watched(Repartitioner):
        def _balance(self) -> None:
            peak[0] = max([peak[0], *(len(q) for q in self._buffers.values())])
            super()._balance()

    counts = Watched(
        KafkaSettings(bootstrap_servers=kafka.bootstrap), raw, keyed, batch=20, max_buffered=60
    ).run()
    assert (counts.written, counts.late) == (1800, 0)
    assert peak[0] <= 60 + 20  # the limit, and one poll's records beyond it
    check_keyed_copy(read_committed(kafka.bootstrap, keyed, 1800), records)
