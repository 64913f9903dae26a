"""Dead-letter step: park an event Knock can never take, with the reason, in a Kafka topic.

The record keeps the original key, value and headers, and adds headers naming the error and
where the event came from. The caller moves the offset past the event only from the delivery
callback, i.e. once the broker has confirmed the write; a write that fails is sent again.
:class:`Originals` reads an event back from its topic when Knock rejects it after the sink has
let go of the message.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .config import KafkaSettings
from .errors import ConfigError
from .source import client_config

log = logging.getLogger("knock_sink.deadletter")

#: Header names; values are UTF-8 strings.
H_KIND = "knock-sink.error.kind"
H_REASON = "knock-sink.error.reason"
H_TOPIC = "knock-sink.source.topic"
H_PARTITION = "knock-sink.source.partition"
H_OFFSET = "knock-sink.source.offset"

#: Reasons longer than this are cut: a header is not the place for a whole response body.
MAX_REASON = 2000


class DeadLetters:
    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        conf = {
            **client_config(settings),
            # Idempotence: a retried produce never writes the record twice.
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
        try:
            self._producer = Producer(conf)
        except KafkaException as exc:
            raise ConfigError("kafka.client", exc.args[0].str()) from None
        self._outstanding = 0

    def ensure_topics(self, source_topics: Iterable[str], timeout: float = 15.0) -> None:
        """Create missing dead-letter topics with the partition count of their source topic.
        Where the broker does not let us, the first write will say so."""
        admin = AdminClient(client_config(self._settings))
        meta = admin.list_topics(timeout=timeout)
        wanted = {}
        for topic in source_topics:
            dlq = self._settings.dlq_for(topic)
            if dlq not in meta.topics:
                src = meta.topics.get(topic)
                parts = len(src.partitions) if src is not None and src.error is None else 1
                wanted[dlq] = NewTopic(dlq, num_partitions=parts)
        if not wanted:
            return
        for name, fut in admin.create_topics(list(wanted.values())).items():
            try:
                fut.result(timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    log.warning("could not create dead-letter topic %s: %s", name, exc.args[0])

    def send(self, msg: Message, kind: str, reason: str, on_delivered: Callable[[], None]) -> None:
        """Write ``msg`` to its dead-letter topic; call ``on_delivered`` once the broker has it."""
        self._send(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                   list(msg.headers() or []), kind, reason, on_delivered)

    def send_gone(self, topic: str, partition: int, offset: int, kind: str, reason: str,
                  on_delivered: Callable[[], None]) -> None:
        """Write a record without key or value for an event its topic no longer holds
        (see :meth:`Originals.fetch`): the headers still say where it was and why it failed."""
        self._send(topic, partition, offset, None, None, [], kind,
                   f"{reason} (the original is no longer in {topic})", on_delivered)

    def _send(self, topic: str, partition: int, offset: int, key: bytes | None,
              value: bytes | None, headers: list, kind: str, reason: str,  # type: ignore[type-arg]
              on_delivered: Callable[[], None]) -> None:
        headers += [
            (H_KIND, kind.encode()),
            (H_REASON, reason[:MAX_REASON].encode()),
            (H_TOPIC, topic.encode()),
            (H_PARTITION, str(partition).encode()),
            (H_OFFSET, str(offset).encode()),
        ]
        dlq = self._settings.dlq_for(topic)

        def delivered(err: KafkaError | None, _m: Message) -> None:
            if err is None:
                self._outstanding -= 1
                on_delivered()
                return
            # librdkafka already retried for message.timeout.ms; keep the event rather than
            # move past it.
            log.error("dead-letter write to %s failed (%s); writing again", dlq, err)
            self._produce(dlq, key, value, headers, delivered)

        self._outstanding += 1
        self._produce(dlq, key, value, headers, delivered)

    def _produce(self, dlq: str, key: bytes | None, value: bytes | None, headers: list,  # type: ignore[type-arg]
                 cb: Callable) -> None:  # type: ignore[type-arg]
        while True:
            try:
                self._producer.produce(dlq, value, key, headers=headers, on_delivery=cb)
                return
            except BufferError:
                self._producer.poll(0.1)

    def poll(self) -> None:
        """Serve delivery callbacks (on the caller's thread)."""
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` for confirmations; returns how many writes are still unconfirmed."""
        self._producer.flush(timeout)
        return self._outstanding

    @property
    def outstanding(self) -> int:
        return self._outstanding


class Originals:
    """Reads consumed messages back by position, for the dead letters Knock decides on.

    The sink lets go of a message once it is decoded and mapped: a backfill that reads ahead
    would otherwise hold every message's bytes until its user is applied, where only the rare
    event Knock rejects needs them again. This consumer is assigned partitions by hand (it
    never joins the group, commits nothing) and reads each wanted offset back.
    """

    #: Offsets this close to the last one read are reached by reading on rather than seeking.
    READ_ON = 1000

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._consumer: Consumer | None = None

    def fetch(
        self, wanted: Iterable[tuple[str, int, int]], timeout: float = 10.0
    ) -> dict[tuple[str, int, int], Message | None]:
        """Read back ``(topic, partition, offset)`` positions. The answer maps each position
        read to its message, or to ``None`` when the topic no longer holds it (retention,
        compaction); positions missing from the answer could not be read within ``timeout``
        (the broker is away) and are for a later call."""
        by_tp: dict[tuple[str, int], list[int]] = {}
        for topic, partition, offset in wanted:
            by_tp.setdefault((topic, partition), []).append(offset)
        out: dict[tuple[str, int, int], Message | None] = {}
        if not by_tp:
            return out
        consumer = self._open()
        deadline = time.monotonic() + timeout
        for (topic, partition), offsets in by_tp.items():
            todo = deque(sorted(set(offsets)))
            position = -1  # the next offset the assignment will deliver
            while todo and time.monotonic() < deadline:
                if position < 0 or todo[0] > position + self.READ_ON:
                    consumer.assign([TopicPartition(topic, partition, todo[0])])
                    position = todo[0]
                msg = consumer.poll(min(1.0, max(0.0, deadline - time.monotonic())))
                if msg is None or msg.error() is not None:
                    continue
                position = msg.offset() + 1
                while todo and todo[0] < msg.offset():
                    out[(topic, partition, todo.popleft())] = None  # gone from the topic
                if todo and todo[0] == msg.offset():
                    out[(topic, partition, todo.popleft())] = msg
        return out

    def _open(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer({
                **client_config(self._settings),
                "group.id": self._settings.group_id,  # required; assign() never joins it
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            })
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
