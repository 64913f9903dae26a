"""``knock-sink repartition --from RAW --to KEYED``: re-key a topic by user, exactly once.

A topic not keyed by user spreads one user's events over every partition, and no sink (nor
several) can order them across partitions. This copies it into a topic keyed by user id
(``userId``, else ``anonymousId``; an alias by its ``userId``), so that every event of a user
lands on one partition, in order, and the sink group reads that topic instead.

* **Order.** The source partitions are merged by event time (``timestamp``, else
  ``originalTimestamp``, else the Kafka timestamp): a record is written only once every
  partition that may still have records has one waiting, and the earliest goes first (a k-way
  merge; a partition read to its end is not waited for). When each source partition is in
  event-time order, as a round-robin producer writes it, one user's events reach the keyed
  topic in event-time order.
* **Exactly once.** Kafka transactions, read-process-write: the records written and the source
  offsets they came from (``send_offsets_to_transaction``) commit together, so a crash at any
  point leaves either both or neither; a rerun (same transactional id, fencing any zombie)
  resumes after the last committed transaction. Readers of the keyed topic use
  ``isolation.level=read_committed`` (librdkafka's default, and the sink's).
* Values, headers and Kafka timestamps are copied unchanged; a value that cannot be decoded
  keeps its original key (the sink dead-letters it later, with its reason).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .avro import decoder_for
from .config import KafkaSettings
from .decode import Decoder
from .errors import ConfigError, InvalidEvent, RegistryUnavailable
from .events import parse_timestamp
from .logs import KAFKA_LOG
from .policy import wait
from .records import Partition
from .stalls import REGISTRY_BACKOFF

log = logging.getLogger("knock_sink.repartition")


@dataclass
class Counts:
    read: int = 0
    written: int = 0
    #: Written without a user id (undecodable, or no userId/anonymousId): original key kept.
    unkeyed: int = 0
    transactions: int = 0

    def describe(self) -> dict[str, int]:
        return {
            "read": self.read,
            "written": self.written,
            "unkeyed": self.unkeyed,
            "transactions": self.transactions,
        }


def user_key(obj: object) -> str | None:
    """The user id an event belongs to: ``userId``, else ``anonymousId`` (an alias's
    ``userId`` is the user it merges into)."""
    if type(obj) is not dict:
        return None
    for field in ("userId", "anonymousId"):
        value = obj.get(field)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def event_time(obj: object, kafka_ms: float) -> float:
    """Seconds since the epoch: the event's ``timestamp``, else ``originalTimestamp``, else the
    Kafka timestamp."""
    if type(obj) is dict:
        for field in ("timestamp", "originalTimestamp"):
            parsed = parse_timestamp(obj.get(field))
            if parsed is not None:
                return parsed.timestamp()
    return kafka_ms / 1000


class Repartitioner:
    """Copies ``source`` into ``target`` keyed by user; see the module docstring.

    :param batch: records asked of the consumer per poll; one transaction per poll that
        yields records to write.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        source: str,
        target: str,
        *,
        batch: int = 1000,
        decoder: Decoder | None = None,
    ) -> None:
        if source == target:
            raise ConfigError("--to", "the keyed topic must differ from the source topic")
        self._settings = settings
        self.source, self.target = source, target
        self._batch = batch
        self._decoder = decoder or decoder_for(settings)
        name = f"knock-sink-repartition.{source}.{target}"
        base = {**settings.librdkafka()}
        try:
            self._admin = AdminClient(base)
            self._consumer = Consumer(
                {
                    **base,
                    "group.id": name,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                },
                logger=KAFKA_LOG,
            )
            # A stable transactional id: a rerun fences the previous process (a zombie cannot
            # commit after it) and continues from its last committed transaction.
            self._producer = Producer(
                {**base, "transactional.id": name, "linger.ms": 5}, logger=KAFKA_LOG
            )
        except KafkaException as exc:
            raise ConfigError("kafka.client", exc.args[0].str()) from None
        self._buffers: dict[Partition, deque[tuple[float, Message, str | None]]] = {}
        self._at_end: dict[Partition, bool] = {}
        self.counts = Counts()
        self._stop: threading.Event | None = None

    def _ensure_target(self) -> None:
        meta = self._admin.list_topics(timeout=10)
        src = meta.topics.get(self.source)
        if src is None or src.error is not None:
            raise ConfigError("--from", f"topic {self.source!r} does not exist")
        if self.target not in meta.topics:
            # As many partitions as the source: the same parallelism for the sink group.
            fut = self._admin.create_topics([NewTopic(self.target, len(src.partitions))])[
                self.target
            ]
            try:
                fut.result(30)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise

    def run(self, *, until_end: bool = True, stop: threading.Event | None = None) -> Counts:
        """Copy until ``stop`` is set or, with ``until_end``, until every source partition is
        read to its end and written."""
        self._stop = stop
        self._ensure_target()
        self._producer.init_transactions(30)
        self._consumer.subscribe(
            [self.source], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )
        try:
            while stop is None or not stop.is_set():
                self._take(self._consumer.consume(self._batch, 0.5))
                out = self._merge()
                if out:
                    self._write(out)
                if (
                    until_end
                    and self._buffers
                    and all(self._at_end[tp] and not q for tp, q in self._buffers.items())
                ):
                    break
        finally:
            self._consumer.close()
            self._producer.flush(10)
        return self.counts

    def _assigned(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        for p in parts:
            self._buffers[(p.topic, p.partition)] = deque()
            self._at_end[(p.topic, p.partition)] = False

    def _revoked(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Buffered records were not committed: the new owner reads them again.
        for p in parts:
            self._buffers.pop((p.topic, p.partition), None)
            self._at_end.pop((p.topic, p.partition), None)

    def _take(self, messages: list[Message]) -> None:
        for msg in messages:
            err = msg.error()
            tp = (msg.topic(), msg.partition())
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if tp in self._at_end:
                        self._at_end[tp] = True
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("kafka: %s", err)
                continue
            if tp not in self._buffers:
                continue
            self.counts.read += 1
            self._at_end[tp] = False
            obj = self._decode(msg)
            _, ms = msg.timestamp()
            self._buffers[tp].append((event_time(obj, ms), msg, user_key(obj)))

    def _decode(self, msg: Message) -> object:
        """The event, or ``None`` when it cannot be decoded (written with its original key).
        A registry that does not answer is waited for: guessing no key would misplace the
        event. A refusal (:class:`~consumer.errors.FatalRegistryError`) goes up: nothing of
        the open batch is committed, and a rerun starts from the last transaction."""
        attempt = 0
        while True:
            try:
                return self._decoder.decode(msg.value(), msg.topic())
            except InvalidEvent:
                return None
            except RegistryUnavailable as exc:
                if self._stop is not None and self._stop.is_set():
                    raise
                if attempt == 0:
                    log.warning("schema registry unavailable, waiting: %s", exc)
                wait(REGISTRY_BACKOFF.delay(attempt), self._stop)
                attempt += 1

    def _merge(self) -> list[tuple[float, Message, str | None]]:
        """The records that can go now, earliest event first (see the module docstring)."""
        out: list[tuple[float, Message, str | None]] = []
        while True:
            heads = [(q[0][0], tp) for tp, q in self._buffers.items() if q]
            if not heads or any(not q and not self._at_end[tp] for tp, q in self._buffers.items()):
                return out
            _, tp = min(heads)
            out.append(self._buffers[tp].popleft())

    def _write(self, out: list[tuple[float, Message, str | None]]) -> None:
        positions: dict[Partition, int] = {}
        self._producer.begin_transaction()
        try:
            for _, msg, user in out:
                key: Any = user.encode() if user is not None else msg.key()
                if user is None:
                    self.counts.unkeyed += 1
                ts_type, ts = msg.timestamp()
                self._producer.produce(
                    self.target,
                    msg.value(),
                    key=key,
                    headers=msg.headers(),
                    timestamp=ts if ts_type else 0,
                )  # 0: now
                self._producer.poll(0)
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                assert topic is not None and partition is not None and offset is not None
                positions[(topic, partition)] = offset + 1
            offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
            self._producer.send_offsets_to_transaction(
                offsets, self._consumer.consumer_group_metadata(), 30
            )
            self._producer.commit_transaction(30)
        except KafkaException as exc:
            if exc.args[0].txn_requires_abort():
                self._producer.abort_transaction(30)
            raise
        self.counts.written += len(out)
        self.counts.transactions += 1
