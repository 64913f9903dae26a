"""The changelog of change detection's state: a compacted topic per sink group and source topic
(``<group_id>.<topic>.known``), partitioned like the source, so that what Knock confirmed of a
partition's users follows the partition to whichever process owns it next.

A record is keyed by user id and holds that user's whole entry (fingerprints and the time of
its first confirmation: :meth:`consumer.known.Known.encode`); a tombstone (no value) says the user
is forgotten. Compaction keeps the last of each. Written after Knock confirmed (records) and
before a call that may change the user (tombstones; or once Knock rejected the user, or a call's
fate is unknown); the loop flushes it before every
commit (:meth:`KnownLog.flush`), so every record and tombstone of an event whose offset is
committed is on the broker: what a restore misses is only ever of events that will be read
again. Read back from its start to its end when a partition is assigned (:meth:`restore`),
with a consumer assigned by hand that never joins a group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # exported, not in its stubs' __all__

from .config import KafkaSettings
from .errors import ConfigError
from .records import Partition

if TYPE_CHECKING:
    from .known import Known

log = logging.getLogger("knock_sink.known")
KAFKA_LOG = logging.getLogger("knock_sink.librdkafka")


#: Errors that say a partition's leader is being chosen or moving: asked again, not given up.
_LEADER_MOVING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


def log_topic(group_id: str, topic: str) -> str:
    return f"{group_id}.{topic}.known"


class KnownLog:
    """The changelog topics of one sink group. Records come from the loop's thread, tombstones
    written ahead of a call from the plans' threads too (the producer is thread-safe); restores
    and flushes from the loop's thread."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._group = settings.group_id
        conf = {
            **settings.librdkafka(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            # librdkafka queues up to 1 GiB by default: a sink confirming users faster than
            # the broker takes their records grew to 667 MB (benchmark case 6, 2026-12-05).
            # Past 16 MiB a write waits (``_produce``), which slows confirmations instead.
            "queue.buffering.max.kbytes": 16_384,
            # A record spells out its user's property paths and fingerprints as JSON: LZ4 took
            # the changelog of benchmark case 6's topic from 79 to 35 MB a partition
            # (2026-12-06), compressing on librdkafka's thread, outside the interpreter lock.
            "compression.type": "lz4",
        }
        try:
            self._producer = Producer(conf, logger=KAFKA_LOG)
        except KafkaException as exc:
            raise ConfigError("kafka.client", exc.args[0].str()) from None
        #: Source topics whose changelog exists (writes for others are dropped).
        self._ready: set[str] = set()
        #: Of those, the ones whose changelog this process created and has not written yet:
        #: nothing to restore (a topic just created may have no partition leader for a moment).
        self._created: set[str] = set()

    def ensure(self, topics: Iterable[str], timeout: float = 15.0) -> None:
        """Create the missing changelog topics, compacted, with their source's partition count.
        A changelog that cannot be created leaves change detection without one for that topic:
        the state then starts empty after each restart (only more is sent)."""
        conf: dict[str, Any] = {**self._settings.librdkafka(), "logger": KAFKA_LOG}
        admin = AdminClient(conf)
        try:
            meta = admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            log.warning("change detection's changelog not checked (%s): kept in memory only", exc)
            return
        wanted = {}
        for topic in topics:
            src = meta.topics.get(topic)
            if src is None or src.error is not None:
                continue
            name = log_topic(self._group, topic)
            have = meta.topics.get(name)
            if have is not None and have.error is None:
                if len(have.partitions) != len(src.partitions):
                    log.warning(
                        "changelog %s has %d partitions, %s has %d: not used",
                        name,
                        len(have.partitions),
                        topic,
                        len(src.partitions),
                    )
                    continue
                self._ready.add(topic)
                continue
            wanted[topic] = NewTopic(
                name,
                num_partitions=len(src.partitions),
                config={"cleanup.policy": "compact"},
            )
        if not wanted:
            return
        futures = admin.create_topics(list(wanted.values()))
        for topic, new in wanted.items():
            try:
                futures[new.topic].result(timeout)
                self._created.add(topic)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    log.warning("could not create changelog %s: %s", new.topic, exc.args[0])
                    continue
            self._ready.add(topic)

    def write(self, tp: Partition, user: str, value: bytes | None) -> None:
        """``user``'s entry (``None``: a tombstone) on ``tp``'s changelog partition."""
        topic, partition = tp
        if topic not in self._ready:
            return
        self._created.discard(topic)  # it holds something now: the next assignment restores
        name = log_topic(self._group, topic)
        key = user.encode()
        if value is not None:
            # The report's callback must not hold the value: it lives until the report is
            # served, and an orjson value takes a 4 KiB block whatever its length. With the
            # values held and the reports served only at each flush, a run of 1,000,000 new
            # users peaked at 749 MB; without either, 269 MB (2026-12-05).
            self._produce(name, partition, key, value, self._record_delivered)
            return

        def delivered(err: KafkaError | None, _m: Any) -> None:
            if err is not None:
                # A lost tombstone would bring a forgotten user back at the next restore.
                log.error("changelog tombstone to %s failed (%s); writing again", name, err)
                self._produce(name, partition, key, None, delivered)

        self._produce(name, partition, key, None, delivered)

    @staticmethod
    def _record_delivered(err: KafkaError | None, msg: Any) -> None:
        if err is not None:  # a lost record only makes the next owner send more
            log.warning("changelog write to %s failed: %s", msg.topic(), err)

    def _produce(self, name: str, partition: int, key: bytes, value: bytes | None, cb: Any) -> None:
        while True:
            try:
                self._producer.produce(name, value, key, partition=partition, on_delivery=cb)
                # Serve the reports as they come, not only at the next flush: librdkafka keeps
                # each message until its report is served.
                self._producer.poll(0)
                return
            except BufferError:
                self._producer.poll(0.1)

    def flush(self, timeout: float) -> bool:
        """True when every write so far is on the broker."""
        return int(self._producer.flush(timeout)) == 0

    def restore(
        self, tp: Partition, timeout: float = 30.0
    ) -> Iterator[list[tuple[str, bytes | None]]]:
        """Every record of ``tp``'s changelog partition, oldest first, a batch at a time as it
        is read (nothing when it has no changelog): a restore holds one batch, not the
        partition. Raises :class:`KafkaException` when the broker cannot be read."""
        topic, partition = tp
        if topic not in self._ready or topic in self._created:
            return
        name = log_topic(self._group, topic)
        consumer = Consumer(
            {
                **self._settings.librdkafka(),
                "group.id": f"{self._group}.known-restore",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
            },
            logger=KAFKA_LOG,
        )
        try:
            lo, hi = self._marks(consumer, TopicPartition(name, partition), timeout)
            if hi <= lo:
                return
            consumer.assign([TopicPartition(name, partition, OFFSET_BEGINNING)])
            deadline = time.monotonic() + timeout
            while True:
                out: list[tuple[str, bytes | None]] = []
                for msg in consumer.consume(1000, 0.5):
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise KafkaException(err)
                        continue
                    key = msg.key()
                    if key is not None:
                        out.append((key.decode(), msg.value()))
                if out:
                    yield out
                pos = consumer.position([TopicPartition(name, partition)])[0].offset
                if pos >= hi:
                    return
                if time.monotonic() > deadline:
                    raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        finally:
            consumer.close()

    @staticmethod
    def _marks(consumer: Consumer, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        """The changelog partition's watermarks, asked again while its leader is moving (another
        member may have created the topic a moment ago, or a broker is restarting)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                lo, hi = consumer.get_watermark_offsets(tp, max(0.5, deadline - time.monotonic()))
                return lo, hi
            except KafkaException as exc:
                if exc.args[0].code() not in _LEADER_MOVING or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)  # a backoff between two asks of the broker, not a synchronisation

    def close(self) -> None:
        self._producer.flush(5.0)


class KnownSync:
    """Change detection's state (:class:`~consumer.known.Known`) kept in step with its
    changelog as partitions come and go: restored when a partition is assigned, forgotten when
    it leaves, flushed before every commit. The loop calls it; it owns the changelog client.

    :param known: the state (``None``: change detection off, and every verb does nothing).
    :param settings: the Kafka settings the changelog's clients are made from.
    :param durable: whether to keep a changelog at all (a real broker); else the state lives in
        memory only and a restart only costs sends.
    :param observe: hears each partition's restore time, in seconds (a metric).
    """

    def __init__(
        self,
        known: Known | None,
        settings: KafkaSettings,
        *,
        durable: bool,
        observe: Callable[[float], object] = lambda seconds: None,
    ) -> None:
        self._known = known
        self._settings = settings
        # The changelog is made at the first assignment: the broker is known to answer then,
        # and a sink that never reaches it starts no client of its own for it.
        self._wanted = known is not None and durable
        self._log: KnownLog | None = None
        self._observe = observe

    def assigned(self, tps: Iterable[Partition]) -> None:
        """What Knock confirmed of the assigned partitions' users, from the changelog, before
        any of their events is read. A changelog that cannot be read leaves the state empty
        for the partition: only more is sent."""
        known = self._known
        if known is None:
            return
        if self._log is None and self._wanted:
            self._wanted = False
            try:
                self._log = KnownLog(self._settings)
                self._log.ensure(self._settings.topics)
            except Exception as exc:  # without a changelog, restarts only cost sends
                log.warning("change detection: no changelog (%s): kept in memory only", exc)
                self._log = None
            else:
                known.log = self._log.write
        changelog = self._log
        if changelog is None:
            return
        for tp in tps:
            started = time.monotonic()
            try:
                users = known.load(tp, changelog.restore(tp))
            except Exception as exc:  # any failure to read only costs sends
                # What was read may lack a later tombstone: none of it is trusted.
                known.forget_partitions([tp])
                log.warning("change detection: %s[%d] not restored (%s)", tp[0], tp[1], exc)
                continue
            took = time.monotonic() - started
            self._observe(took)
            log.info(
                "change detection: restored %d users of %s[%d] in %.3f s",
                users,
                tp[0],
                tp[1],
                took,
                extra={"topic": tp[0], "partition": tp[1]},
            )

    def left(self, tps: set[Partition]) -> None:
        """``tps`` left (revoked, lost, rewound): what is known of their users goes, their next
        owner restores it from the changelog."""
        if self._known is not None:
            self._known.forget_partitions(tps)

    def flush(self, timeout: float) -> bool:
        """Every record and tombstone written so far on the broker within ``timeout`` seconds
        (True without a changelog): asked before a commit, since a restore that missed a
        tombstone of a committed event would bring back a user Knock no longer has as
        recorded."""
        return self._log is None or self._log.flush(timeout)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
