"""Source step: the Kafka consumer. Batches of :class:`~consumer.records.Record` from
``consume(n, timeout)`` in a consumer group, partitions paused and resumed as the loop's fetch
control (:mod:`consumer.fetch`) says, and synchronous commits of positions the caller vouches
for.

Offsets are never committed automatically (``enable.auto.commit=false``): the sink commits a
position only when the tracker says every event before it has been applied or dead-lettered.
The ``confluent_kafka.Message`` ends here: what leaves this module is the project's own record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any, Final, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from .config import FETCH_QUEUE_BACKOFF_MS, PREFETCH_KBYTES, KafkaSettings
from .errors import ConfigError
from .records import Headers, Partition, RebalanceCallback, Record, Replay

log = logging.getLogger("knock_sink.source")

#: Attempts at reading the group's commits before giving up (see KafkaSource.committed).
COMMITTED_ATTEMPTS = 12
#: librdkafka's own log lines, through Python logging (its ``logger`` setting) rather than
#: straight to stderr, so they take the sink's format and level.
KAFKA_LOG = logging.getLogger("knock_sink.librdkafka")  # the one logs.py filters

#: The consumer settings the sink sets itself (the benchmark's ceilings take them too, so that
#: they read as the sink does).
CONSUMER_DEFAULTS: Final[dict[str, Any]] = {
    "enable.auto.commit": False,
    # Rebalances move only the partitions that change owner: the others keep flowing.
    "partition.assignment.strategy": "cooperative-sticky",
    "enable.partition.eof": False,
    "queued.max.messages.kbytes": PREFETCH_KBYTES,
    "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
}


class KafkaSource:
    """A subscribed consumer (or, for a backfill worker, one assigned its share by hand: see
    :class:`~consumer.records.Worker`). ``on_assign`` / ``on_revoke`` / ``on_lost`` are called from inside
    :meth:`consume`, on the caller's thread, with ``(topic, partition)`` lists; ``on_revoke`` runs
    while the partitions are still ours, so it may commit for them."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        on_assign: RebalanceCallback,
        on_revoke: RebalanceCallback,
        on_lost: RebalanceCallback,
        from_beginning: bool = False,
        replay: Replay | None = None,
    ) -> None:
        conf: dict[str, Any] = {
            **settings.librdkafka(),
            "group.id": settings.group_id,
            "auto.offset.reset": settings.auto_offset_reset,
            **CONSUMER_DEFAULTS,
        }
        # The pass-through wins over our defaults except where the delivery guarantee rests on them.
        conf.update({k: v for k, v in settings.client.items() if k != "enable.auto.commit"})
        try:
            self._consumer = Consumer(conf, logger=KAFKA_LOG)
        except KafkaException as exc:
            raise ConfigError("kafka.client", exc.args[0].str()) from None
        self._on_assign, self._on_revoke, self._on_lost = on_assign, on_revoke, on_lost
        self._rewind = from_beginning
        self._rewound: set[Partition] = set()
        self._topics = list(settings.topics)
        replay = replay or Replay()
        self._start: dict[Partition, int] = dict(replay.from_offsets or {})
        if replay.from_time_ms is not None:
            self._start.update(self.offsets_at(self._topics, replay.from_time_ms))
        self._stop_at: dict[Partition, int] = (
            {}
            if replay.until_time_ms is None
            else self.offsets_at(self._topics, replay.until_time_ms)
        )
        #: A backfill worker's share, assigned by hand at the first :meth:`consume` (so that
        #: ``on_assign`` runs inside it, as a group's assignment does); ``None``: subscribed.
        self._worker = replay.worker
        if self._worker is None:
            self._consumer.subscribe(
                list(settings.topics),
                on_assign=self._assigned,
                on_revoke=self._revoked,
                on_lost=self._lost,
            )

    # -- rebalance callbacks (librdkafka thread == caller's thread, inside consume) --

    def _assigned(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        if self._rewind:
            # --from-beginning rewinds each partition the first time this process gets it; a
            # partition that comes back after a rebalance continues from its commit.
            for p in parts:
                if (p.topic, p.partition) not in self._rewound:
                    p.offset = OFFSET_BEGINNING
                    self._rewound.add((p.topic, p.partition))
        for p in parts:
            # The same once-per-process rule for a backfill's chosen start.
            tp = (p.topic, p.partition)
            if tp in self._start and tp not in self._rewound:
                p.offset = self._start[tp]
                self._rewound.add(tp)
        consumer.incremental_assign(parts)
        # A new partition fetches until the loop's fetch control, told here, holds it back.
        self._on_assign([(p.topic, p.partition) for p in parts])

    def _assign_share(self) -> None:
        """A worker's fixed share: no group membership, so no rebalance ever moves it, and the
        commits go to the group as a standalone consumer's do (Kafka takes them from a consumer
        outside the group while the group has no members: a backfill's group has none)."""
        assert self._worker is not None
        share = self._worker.owns(self.end_offsets(self._topics))
        self._worker = None
        if not share:
            log.warning("this worker's share of the partitions is empty: nothing to read")
        # OFFSET_INVALID: from the group's commit, else auto.offset.reset, as a subscription.
        self._assigned(self._consumer, [TopicPartition(t, p) for t, p in share])

    def _revoked(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self._on_revoke([(p.topic, p.partition) for p in parts])
        consumer.incremental_unassign(parts)

    def _lost(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self._on_lost([(p.topic, p.partition) for p in parts])
        consumer.incremental_unassign(parts)

    # -- the loop's verbs --

    def consume(self, n: int, timeout: float) -> list[Record]:
        """Up to ``n`` records; per-partition errors are logged and left out, fatal client
        errors raised."""
        if self._worker is not None:
            self._assign_share()
        out = []
        stop_at = self._stop_at
        for msg in self._consumer.consume(n, timeout):
            err = msg.error()
            if err is None:
                # Once per message: each accessor is a C call, so each is asked once. A message
                # without an error always has all three (the stubs type them optional).
                topic: str
                partition: int
                offset: int
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()  # type: ignore[assignment]
                if stop_at and offset >= stop_at.get((topic, partition), offset + 1):
                    continue  # at or past --until-timestamp: not this backfill's
                ts_type, ts = msg.timestamp()
                out.append(
                    Record(
                        topic,
                        partition,
                        offset,
                        msg.key(),
                        msg.value(),
                        msg.headers(),  # type: ignore[arg-type]  # a consumed message's: a list
                        ts if ts_type else None,
                    )
                )
            elif err.fatal():
                raise KafkaException(err)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka: %s", err)
        return out

    def positions(self, tps: list[Partition]) -> dict[Partition, int]:
        got = self._consumer.position([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): tp.offset for tp in got if tp.offset >= 0}

    def pause_partitions(self, tps: list[Partition]) -> None:
        self._consumer.pause([TopicPartition(t, p) for t, p in tps])

    def resume_partitions(self, tps: list[Partition]) -> None:
        self._consumer.resume([TopicPartition(t, p) for t, p in tps])

    def commit(self, positions: dict[Partition, int]) -> bool:
        """Commit ``positions`` (next offset to read, per partition) synchronously. Returns False
        when the broker refused (a rebalance in progress, a partition no longer ours): the caller
        keeps the positions and tries again later."""
        if not positions:
            return True
        tps = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            result = self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed, will retry: %s", exc.args[0])
            return False
        bad = [tp for tp in result or [] if tp.error is not None]
        for tp in bad:
            log.warning(
                "commit of %s[%d] failed: %s",
                tp.topic,
                tp.partition,
                tp.error,
                extra={"topic": tp.topic, "partition": tp.partition},
            )
        return not bad

    def committed(self, tps: Iterable[Partition], timeout: float = 10.0) -> dict[Partition, int]:
        """The group's committed positions (partitions without a commit are left out).

        A timeout is retried (up to :data:`COMMITTED_ATTEMPTS` times): right after a consumer
        of the group was killed, the coordinator can take longer than one timeout to answer,
        and a backfill resuming from its commit must not fail for that."""
        wanted = [TopicPartition(t, p) for t, p in tps]
        for attempt in range(1, COMMITTED_ATTEMPTS + 1):
            try:
                res = self._consumer.committed(wanted, timeout=timeout)
                break
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError._TIMED_OUT or attempt == COMMITTED_ATTEMPTS:
                    raise
                log.warning(
                    "reading the group's commits timed out (attempt %d); trying again", attempt
                )
        return {(tp.topic, tp.partition): tp.offset for tp in res if tp.offset >= 0}

    def end_offsets(
        self, topics: Iterable[str], timeout: float = 10.0
    ) -> dict[Partition, tuple[int, int]]:
        """``(low, high)`` watermarks of every partition of ``topics``, read now."""
        meta = self._consumer.list_topics(timeout=timeout)
        out: dict[Partition, tuple[int, int]] = {}
        for topic in topics:
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None:
                raise ConfigError("kafka.topics", f"topic {topic!r} does not exist")
            for pid in tmeta.partitions:
                lo, hi = self._consumer.get_watermark_offsets(TopicPartition(topic, pid), timeout)
                out[(topic, pid)] = (lo, hi)
        return out

    def offsets_at(
        self, topics: Iterable[str], time_ms: int, timeout: float = 10.0
    ) -> dict[Partition, int]:
        """Each partition's first offset whose timestamp is at or after ``time_ms`` (its high
        watermark when there is none yet)."""
        meta = self._consumer.list_topics(timeout=timeout)
        wanted = []
        for topic in topics:
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None:
                raise ConfigError("kafka.topics", f"topic {topic!r} does not exist")
            wanted += [TopicPartition(topic, pid, time_ms) for pid in tmeta.partitions]
        out: dict[Partition, int] = {}
        # A partition's error (its leader moving, a broker slow to answer) comes back as offset
        # -1 with the error set, which is also how "no such offset" reads: taken as "none yet",
        # a backfill would start that partition at its end and read nothing. Ask again.
        for attempt in range(1, COMMITTED_ATTEMPTS + 1):
            failed, errors = [], []
            for tp in self._consumer.offsets_for_times(wanted, timeout=timeout):
                if tp.error is not None:
                    failed.append(TopicPartition(tp.topic, tp.partition, time_ms))
                    errors.append(tp.error)
                    continue
                key = (tp.topic, tp.partition)
                out[key] = (
                    tp.offset
                    if tp.offset >= 0
                    else self._consumer.get_watermark_offsets(tp, timeout)[1]
                )
            if not failed:
                return out
            if attempt == COMMITTED_ATTEMPTS:
                raise KafkaException(errors[0])
            log.warning(
                "reading offsets by time failed for %d partition(s) (attempt %d): %s; trying again",
                len(failed),
                attempt,
                errors[0],
            )
            wanted = failed
            time.sleep(min(2.0, 0.1 * 2**attempt))
        return out

    def high_watermarks(self) -> dict[Partition, int]:
        """The high watermark of each assigned partition as of the last fetch (no broker call)."""
        out = {}
        for tp in self._consumer.assignment():
            try:
                _, hi = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if hi >= 0:
                out[(tp.topic, tp.partition)] = hi
        return out

    def start_offsets(self) -> dict[Partition, int]:
        """Where a backfill starts each partition it chose a start for."""
        return dict(self._start)

    def stop_offsets(self) -> dict[Partition, int]:
        """Where a backfill stops each partition (``--until-timestamp``; empty otherwise)."""
        return dict(self._stop_at)

    def close(self) -> None:
        self._consumer.close()


def read_to_end(
    settings: KafkaSettings, *, from_beginning: bool, timeout: float = 10.0
) -> Iterator[Record]:
    """Every record of ``settings.topics`` from the group's committed positions (or the first
    offsets) up to the end offsets seen now, for ``backfill --dry-run``.

    Partitions are assigned by hand, not subscribed: a dry run must not join the sink's group
    (that would rebalance the running sinks) and never commits; it only reads the group's
    positions.
    """
    conf: dict[str, Any] = {
        **settings.librdkafka(),
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        **{k: v for k, v in settings.client.items() if k != "enable.auto.commit"},
    }
    try:
        consumer = Consumer(conf, logger=KAFKA_LOG)
    except KafkaException as exc:
        raise ConfigError("kafka.client", exc.args[0].str()) from None
    try:
        meta = consumer.list_topics(timeout=timeout)
        parts = []
        for topic in settings.topics:
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None:
                raise ConfigError("kafka.topics", f"topic {topic!r} does not exist")
            parts += [TopicPartition(topic, pid) for pid in sorted(tmeta.partitions)]
        committed = (
            {}
            if from_beginning
            else {
                (tp.topic, tp.partition): tp.offset
                for tp in consumer.committed(parts, timeout=timeout)
                if tp.offset >= 0
            }
        )
        todo: dict[Partition, int] = {}
        assign = []
        for tp in parts:
            key = (tp.topic, tp.partition)
            lo, hi = consumer.get_watermark_offsets(tp, timeout)
            start = committed.get(
                key, lo if settings.auto_offset_reset == "earliest" or from_beginning else hi
            )
            if max(start, lo) < hi:
                todo[key] = hi
                assign.append(TopicPartition(tp.topic, tp.partition, max(start, lo)))
        consumer.assign(assign)
        while todo:
            for msg in consumer.consume(500, 0.5):
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    continue
                # A message without an error has all three (the stubs type them optional).
                topic, partition, offset = (
                    cast(str, msg.topic()),
                    cast(int, msg.partition()),
                    cast(int, msg.offset()),
                )
                key = (topic, partition)
                if key in todo and offset < todo[key]:
                    ts_type, ts = msg.timestamp()
                    yield Record(
                        topic,
                        partition,
                        offset,
                        msg.key(),
                        msg.value(),
                        cast("Headers | None", msg.headers()),
                        ts if ts_type else None,
                    )
            # By position, not by the last record: an end that is a transaction marker is
            # never delivered as a message.
            for tp in consumer.position([TopicPartition(t, p) for t, p in todo]):
                if tp.offset >= 0 and tp.offset >= todo[(tp.topic, tp.partition)]:
                    del todo[(tp.topic, tp.partition)]
    finally:
        consumer.close()
