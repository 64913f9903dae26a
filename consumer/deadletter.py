"""Dead-letter step: park an event Knock can never take, with the reason, in a Kafka topic.

The record keeps the original key, value and headers, and adds headers naming the error and
where the event came from. The caller moves the offset past the event only from the delivery
callback, i.e. once the broker has confirmed the write; a write that fails is sent again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from confluent_kafka import KafkaError, KafkaException, Message, Producer
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
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        headers = list(msg.headers() or [])
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
            self._produce(dlq, msg, headers, delivered)

        self._outstanding += 1
        self._produce(dlq, msg, headers, delivered)

    def _produce(self, dlq: str, msg: Message, headers: list, cb: Callable) -> None:  # type: ignore[type-arg]
        while True:
            try:
                self._producer.produce(dlq, msg.value(), msg.key(), headers=headers, on_delivery=cb)
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
