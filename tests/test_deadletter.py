"""Reading rejected events back from their topic, on the real broker."""

from __future__ import annotations

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.config import KafkaSettings
from consumer.deadletter import Originals


def test_originals_reads_back_what_is_there_says_what_is_gone_and_leaves_the_rest(kafka):
    topic = kafka.topic(2)
    kafka.produce(topic, [{"n": i} for i in range(6)], key=lambda v: b"k", partition=0)
    kafka.produce(topic, [{"n": 10 + i} for i in range(3)], key=lambda v: b"k", partition=1)
    originals = Originals(KafkaSettings(bootstrap_servers=kafka.bootstrap, group_id=f"g-{topic}"))
    try:
        got = originals.fetch([(topic, 0, 4), (topic, 1, 2), (topic, 0, 1)])
        assert {k: m.value for k, m in got.items()} == {
            (topic, 0, 1): b'{"n":1}',
            (topic, 0, 4): b'{"n":4}',
            (topic, 1, 2): b'{"n":12}',
        }
        # Retention deleted the head of partition 0: the answer says so, with None.
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        for fut in admin.delete_records([TopicPartition(topic, 0, 3)]).values():
            fut.result(30)
        got = originals.fetch([(topic, 0, 1), (topic, 0, 3)])
        assert got[(topic, 0, 1)] is None and got[(topic, 0, 3)].value == b'{"n":3}'
        # Not there yet (or the broker away): left out, for a later call.
        assert originals.fetch([(topic, 1, 7)], timeout=1.0) == {}
    finally:
        originals.close()
