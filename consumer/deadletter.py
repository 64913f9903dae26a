"""Dead-letter step: park an event that can never be applied, with its reason, in a Kafka topic.

:class:`DeadLetters` is the whole rule, with no Kafka inside: :meth:`~DeadLetters.park` takes
the event's :class:`~consumer.tracker.Handle` and holds it until the broker has confirmed the
record, so the offset moves past the event only then. The record keeps the original key, value
and headers and adds headers naming the error and where the event came from. An event rejected
by Knock is parked without its record (the sink let go of the bytes once it mapped them); it is
read back from its topic by position (:class:`Originals`) by :meth:`~DeadLetters.pump`.

:class:`KafkaWriter` and :class:`Originals` are the Kafka side: the idempotent producer and the
read-back consumer.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # exported, not in its stubs' __all__

from .config import KafkaSettings
from .errors import ConfigError
from .logs import KAFKA_LOG
from .metrics import Metrics
from .records import DeadLetterWriter, Headers, Position, Record, RecordReader
from .stage import Committable as Handle

log = logging.getLogger("knock_sink.deadletter")

#: Header names; values are UTF-8 strings.
H_KIND = "knock-sink.error.kind"
H_REASON = "knock-sink.error.reason"
H_TOPIC = "knock-sink.source.topic"
H_PARTITION = "knock-sink.source.partition"
H_OFFSET = "knock-sink.source.offset"

#: Reasons longer than this are cut: a header is not the place for a whole response body.
MAX_REASON = 2000
#: Seconds between attempts to read back events while the broker cannot serve them.
READ_BACK_EVERY = 5.0


def headers_for(record: Record, kind: str, reason: str) -> Headers:
    """The original headers plus the sink's: what failed, why, and where the event was."""
    return [
        *(record.headers or []),
        (H_KIND, kind.encode()),
        (H_REASON, reason[:MAX_REASON].encode()),
        (H_TOPIC, record.topic.encode()),
        (H_PARTITION, str(record.partition).encode()),
        (H_OFFSET, str(record.offset).encode()),
    ]


class DeadLetters:
    """Parks events in their dead-letter topic and releases each one's handle once the broker
    has the record.

    Not thread-safe: the loop calls every method, and the writer's delivery callbacks run inside
    :meth:`pump` and :meth:`flush`, on the same thread.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        writer: DeadLetterWriter,
        reader: RecordReader,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._writer = writer
        self._reader = reader
        self._metrics = metrics
        self._clock = clock
        #: Parked without their record, waiting to be read back: (handle, kind, reason).
        self._unread: list[tuple[Handle, str, str]] = []
        self._read_back_at = 0.0

    def park(self, handle: Handle, kind: str, reason: str, record: Record | None = None) -> None:
        """Dead-letter the event of ``handle``, from ``record`` or, when not given, read back
        from its topic. The handle is held until the broker confirms the write; the caller
        keeps (and releases) its own hold. One record per event: a second park of the same
        event, or a park for a retired generation (the event will be read again), does nothing.
        """
        if not handle.claim_dead_letter():
            return
        handle.hold()
        self._metrics.dead_lettered.labels(kind).inc()
        topic, partition = handle.partition
        log.warning(
            "dead-lettering %s[%d]@%d: %s: %s",
            topic,
            partition,
            handle.offset,
            kind,
            reason,
            extra={"topic": topic, "partition": partition, "offset": handle.offset},
        )
        if record is None:
            self._unread.append((handle, kind, reason))
            self._read_back_at = 0.0  # read the new ones back on the next pump, all in one go
        else:
            self._write(record, kind, reason, handle)

    def pump(self, timeout: float = 5.0) -> None:
        """Serve delivery confirmations and read back what is parked without its record: at
        most once every :data:`READ_BACK_EVERY` seconds while the broker cannot serve it. What
        was revoked meanwhile is left to the partition's new owner."""
        self._writer.poll()
        if not self._unread or self._clock() < self._read_back_at:
            return
        self._read_back_at = self._clock() + READ_BACK_EVERY
        waiting = [w for w in self._unread if w[0].current]
        self._unread = []
        got = self._reader.fetch(((*h.partition, h.offset) for h, _, _ in waiting), timeout)
        for handle, kind, reason in waiting:
            pos: Position = (*handle.partition, handle.offset)
            if pos not in got:
                self._unread.append((handle, kind, reason))
                continue
            record = got[pos]
            if record is None:
                record = Record(*pos)
                self._write(
                    record, kind, f"{reason} (the original is no longer in {pos[0]})", handle
                )
            else:
                self._write(record, kind, reason, handle)
        if self._unread:
            log.warning(
                "%d rejected events could not be read back for the dead-letter topic "
                "yet; their offsets stay uncommitted",
                len(self._unread),
            )

    def flush(self, timeout: float) -> None:
        """Read back what is parked and confirm every write, within ``timeout`` seconds."""
        deadline = self._clock() + timeout
        self._read_back_at = 0.0
        self.pump(max(0.5, deadline - self._clock()))
        self._writer.flush(max(0.0, deadline - self._clock()))

    def close(self) -> None:
        self._reader.close()
        self._writer.close()

    def _write(self, record: Record, kind: str, reason: str, handle: Handle) -> None:
        dlq = self._settings.dlq_for(record.topic)
        self._writer.write(record, dlq, headers_for(record, kind, reason), handle.release)


class KafkaWriter:
    """The dead-letter producer: idempotent, so a retried produce never writes a record twice;
    a write that fails after librdkafka's own retries is written again rather than skipped."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        conf = {**settings.librdkafka(), "enable.idempotence": True, "acks": "all", "linger.ms": 5}
        try:
            self._producer = Producer(conf, logger=KAFKA_LOG)
        except KafkaException as exc:
            raise ConfigError("kafka.client", exc.args[0].str()) from None

    def ensure_topics(
        self, source_topics: Iterable[str], dlq_for: Callable[[str], str], timeout: float = 15.0
    ) -> None:
        """Create missing dead-letter topics with the partition count of their source topic.
        Where the broker does not let us, the first write will say so."""
        conf: dict[str, Any] = {**self._settings.librdkafka(), "logger": KAFKA_LOG}
        admin = AdminClient(conf)
        meta = None
        for attempt in range(1, 4):
            try:
                meta = admin.list_topics(timeout=timeout / 3)
                break
            except KafkaException as exc:
                log.warning(
                    "Kafka unreachable at %s (attempt %d of 3 to check the dead-letter topics): %s",
                    self._settings.bootstrap_servers,
                    attempt,
                    exc.args[0].str(),
                )
        if meta is None:
            # An unreachable broker is transient: the consumer keeps trying to join on its own,
            # and a dead-letter write to a topic that does not exist yet will say so then.
            log.error(
                "dead-letter topics not checked: Kafka unreachable at %s; going on, the "
                "consumer retries",
                self._settings.bootstrap_servers,
            )
            return
        wanted = {}
        for topic in source_topics:
            dlq = dlq_for(topic)
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

    def write(
        self, record: Record, topic: str, headers: Headers, on_delivered: Callable[[], object]
    ) -> None:
        def delivered(err: KafkaError | None, _m: Message) -> None:
            if err is None:
                on_delivered()
                return
            log.error("dead-letter write to %s failed (%s); writing again", topic, err)
            self._produce(topic, record, headers, delivered)

        self._produce(topic, record, headers, delivered)

    def _produce(
        self,
        topic: str,
        record: Record,
        headers: Headers,
        cb: Callable[[KafkaError | None, Message], None],
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic,
                    record.value,
                    record.key,
                    headers=cast("list[tuple[str, str | bytes | None]]", headers),
                    on_delivery=cb,
                )
                return
            except BufferError:
                self._producer.poll(0.1)

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        return int(self._producer.flush(timeout))

    def close(self) -> None:
        self._producer.flush(5.0)


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
        self, wanted: Iterable[Position], timeout: float = 10.0
    ) -> dict[Position, Record | None]:
        """Read back ``(topic, partition, offset)`` positions. The answer maps each position
        read to its record, or to ``None`` when the topic no longer holds it (retention,
        compaction); positions missing from the answer could not be read within ``timeout``
        (the broker is away) and are for a later call."""
        by_tp: dict[tuple[str, int], list[int]] = {}
        for topic, partition, offset in wanted:
            by_tp.setdefault((topic, partition), []).append(offset)
        out: dict[Position, Record | None] = {}
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
                # A delivered message (no error) always has an offset; the stubs type it optional.
                offset = cast(int, msg.offset())
                position = offset + 1
                while todo and todo[0] < offset:
                    out[(topic, partition, todo.popleft())] = None  # gone from the topic
                if todo and todo[0] == offset:
                    headers = cast("Headers | None", msg.headers())  # a consumed message's: a list
                    out[(topic, partition, todo.popleft())] = Record(
                        topic, partition, offset, msg.key(), msg.value(), headers
                    )
        return out

    def _open(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(
                {
                    **self._settings.librdkafka(),
                    "group.id": self._settings.group_id,  # required; assign() never joins it
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "enable.partition.eof": False,
                },
                logger=KAFKA_LOG,
            )
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
