"""``knock-sink repartition --from RAW --to KEYED``: re-key a topic by user, exactly once.

A topic not keyed by user spreads one user's events over every partition, and no sink (nor
several) can order them across partitions. This copies it into a topic keyed by user id
(``userId``, else ``anonymousId``; an alias by its ``userId``), so that every event of a user
lands on one partition, in order, and the sink group reads that topic instead.

* **Order.** The source partitions are merged by event time (``timestamp``, else
  ``originalTimestamp``, else the Kafka timestamp; ties in the order read; a record without a
  user, such as one that cannot be decoded, takes the time of the record before it in its
  partition, so it neither waits nor holds its partition back). A record is written only once
  no source partition can still bring an earlier one: each other partition has a record
  waiting, or is read to its end by the consumer's *position* (which is past transaction
  markers and aborted records, never delivered), never by what happens to be buffered: a
  partition whose buffer is momentarily empty, its next fetch not back yet, is waited for. So
  when each source partition is in event-time order (what a round-robin producer writes), every
  user's events reach the keyed topic in event-time order. Without ``--follow`` a partition's
  end is its end offset when it was assigned (read_committed: the last stable offset, so an
  open transaction is not waited for; what lies past the end is left, uncommitted, for the next
  run). With ``--follow`` the end moves: a partition short of its latest high watermark is
  waited for until its records come (an open transaction: until it commits or aborts, which
  the producer's transaction timeout bounds), and one at its latest high watermark with nothing
  buffered at most ``lateness`` seconds after the record that waits for it was read. Why a
  while rather than not at all: its fetches report the high watermark about every
  ``fetch.wait.max.ms`` (500 ms), so a record produced just before the waiting one may be
  fetched after it. A record that comes later than that and is older than one already written
  for its user is written as it comes, and counted (``late``).
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
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # exported, not in its stubs' __all__

from .avro import decoder_for
from .config import KafkaSettings
from .decode import Decoder
from .errors import ConfigError, InvalidEvent, RegistryUnavailable
from .events import parse_timestamp
from .logs import KAFKA_LOG
from .records import Partition
from .retry import wait
from .stalls import REGISTRY_BACKOFF

log = logging.getLogger("knock_sink.repartition")


#: Records read and not yet written a partition holds before its fetching pauses: one far ahead
#: of the others in event time (or one waiting for another's open transaction) waits for them
#: in Kafka rather than in memory. It has records waiting, so the merge never waits for it.
MAX_BUFFERED: Final = 10_000
#: Users whose last written event time is remembered (to count late records).
REMEMBERED: Final = 100_000
#: Seconds a ``--follow`` merge waits, after a record was read, for a partition at its latest
#: high watermark with nothing buffered (see the module docstring).
LATENESS: Final = 1.0


@dataclass
class Counts:
    read: int = 0
    written: int = 0
    #: Written without a user id (undecodable, or no userId/anonymousId): original key kept.
    unkeyed: int = 0
    transactions: int = 0
    #: Written older than a record of the same user written before it: it came more than
    #: ``lateness`` seconds after its turn (``--follow``), or its source partition is itself out
    #: of event-time order.
    late: int = 0

    def describe(self) -> dict[str, int]:
        return {
            "read": self.read,
            "written": self.written,
            "unkeyed": self.unkeyed,
            "transactions": self.transactions,
            "late": self.late,
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


@dataclass(slots=True)
class _Waiting:
    """A record read and not yet written."""

    time: float
    n: int  # the order read: ties go to the one read first
    tp: Partition
    msg: Message
    user: str | None
    read_at: float


class Repartitioner:
    """Copies ``source`` into ``target`` keyed by user; see the module docstring.

    :param batch: records asked of the consumer per poll; one transaction per poll that
        yields records to write.
    :param lateness: ``--follow``: seconds a record waits for a partition at its latest high
        watermark with nothing buffered (see the module docstring).
    :param max_buffered: records a partition holds read and not yet written before its
        fetching pauses (see :data:`MAX_BUFFERED`).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        source: str,
        target: str,
        *,
        batch: int = 1000,
        decoder: Decoder | None = None,
        lateness: float = LATENESS,
        max_buffered: int = MAX_BUFFERED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if source == target:
            raise ConfigError("--to", "the keyed topic must differ from the source topic")
        self._settings = settings
        self.source, self.target = source, target
        self._batch = batch
        self._decoder = decoder or decoder_for(settings)
        self._lateness = lateness
        self._max_buffered = max(1, max_buffered)
        self._paused: set[Partition] = set()
        self._clock = clock
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
                    # Ends are read from positions and watermarks, not from EOF events: an EOF
                    # says nothing of records produced after it, and is stale once they come.
                    "enable.partition.eof": False,
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
        self._buffers: dict[Partition, deque[_Waiting]] = {}
        #: Where each assigned partition's reading starts (its commit, else its low watermark):
        #: the position until a record of it is delivered.
        self._starts: dict[Partition, int] = {}
        #: Without --follow: each partition's end, its high watermark when it was assigned.
        self._ends: dict[Partition, int] = {}
        self._until_end = True
        self._n = 0
        #: The event time of the last record read in each partition (for records without one).
        self._last: dict[Partition, float] = {}
        #: The event time of the last record written per user (to count late ones).
        self._written: OrderedDict[str, float] = OrderedDict()
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
        read to its end (its end offset when it was assigned) and written."""
        self._stop = stop
        self._until_end = until_end
        self._ensure_target()
        self._producer.init_transactions(30)
        self._consumer.subscribe(
            [self.source], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )
        wait = 0.5 if until_end else min(0.5, max(0.05, self._lateness / 4))
        try:
            while stop is None or not stop.is_set():
                self._take(self._consumer.consume(self._batch, wait))
                self._learn_starts()
                out = self._merge()
                # What waited for a slow partition comes out together: --batch bounds a
                # transaction, not a poll.
                for at in range(0, len(out), self._batch):
                    self._write(out[at : at + self._batch])
                self._balance()
                if until_end and self._finished():
                    break
        finally:
            self._consumer.close()
            self._producer.flush(10)
        return self.counts

    def _assigned(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        for p in parts:
            self._buffers[(p.topic, p.partition)] = deque()

    def _revoked(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Buffered records were not committed: the new owner reads them again.
        for p in parts:
            tp = (p.topic, p.partition)
            self._buffers.pop(tp, None)
            self._starts.pop(tp, None)
            self._ends.pop(tp, None)
            self._last.pop(tp, None)
            self._paused.discard(tp)

    def _balance(self) -> None:
        """Pause fetching a partition holding more than ``max_buffered`` records; resume it at
        half (see :data:`MAX_BUFFERED`)."""
        limit = self._max_buffered
        for tp, q in self._buffers.items():
            if tp not in self._paused and len(q) > limit:
                self._consumer.pause([TopicPartition(*tp)])
                self._paused.add(tp)
            elif tp in self._paused and len(q) <= limit // 2:
                self._consumer.resume([TopicPartition(*tp)])
                self._paused.discard(tp)

    def _learn_starts(self) -> None:
        """Where newly assigned partitions start, and (without --follow) end: asked of the
        broker once per assignment, outside the rebalance callback."""
        new = [tp for tp in self._buffers if tp not in self._starts]
        if not new:
            return
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in self._consumer.committed([TopicPartition(*tp) for tp in new], timeout=30)
        }
        for tp in new:
            lo, hi = self._consumer.get_watermark_offsets(TopicPartition(*tp), timeout=30)
            self._starts[tp] = max(lo, committed.get(tp, -1))
            if self._until_end:
                self._ends[tp] = hi

    def _finished(self) -> bool:
        """Without --follow: every assigned partition read to its end and written."""
        if not self._buffers or any(self._buffers.values()):
            return False
        if any(tp not in self._starts for tp in self._buffers):
            return False
        positions = self._positions(list(self._buffers))
        return all(positions[tp] >= self._ends[tp] for tp in self._buffers)

    def _positions(self, tps: list[Partition]) -> dict[Partition, int]:
        """How far each partition is read: the consumer's position (past transaction markers
        and aborted records as well as every record delivered), its start before that."""
        got = self._consumer.position([TopicPartition(*tp) for tp in tps])
        return {
            (p.topic, p.partition): max(p.offset, self._starts[(p.topic, p.partition)]) for p in got
        }

    def _take(self, messages: list[Message]) -> None:
        now = self._clock()
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("kafka: %s", err)
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            assert topic is not None and partition is not None and offset is not None
            tp = (topic, partition)
            q = self._buffers.get(tp)
            if q is None:
                continue
            end = self._ends.get(tp)
            if end is not None and offset >= end:
                continue  # past this run's end: left for the next one (not committed)
            self.counts.read += 1
            obj = self._decode(msg)
            user = user_key(obj)
            if user is None:
                # Nothing of a user to order: it goes right after the record before it.
                t = self._last.get(tp, float("-inf"))
            else:
                _, ms = msg.timestamp()
                t = event_time(obj, ms)
                self._last[tp] = t
            self._n += 1
            q.append(_Waiting(t, self._n, tp, msg, user, now))

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

    def _merge(self) -> list[_Waiting]:
        """The records that can go now, earliest event first (see the module docstring)."""
        out: list[_Waiting] = []
        buffers = self._buffers
        if any(tp not in self._starts for tp in buffers):
            return out  # a partition whose start is not known yet may bring anything
        empty: list[Partition] | None = None
        waits_for: list[Partition] = []
        idle = False
        while True:
            best: _Waiting | None = None
            for q in buffers.values():
                if q and (best is None or (q[0].time, q[0].n) < (best.time, best.n)):
                    best = q[0]
            if best is None:
                return out
            now_empty = [tp for tp, q in buffers.items() if not q]
            if now_empty != empty:
                empty = now_empty
                waits_for, idle = self._open(empty) if empty else ([], False)
            if waits_for and not (idle and self._clock() - best.read_at >= self._lateness):
                return out
            buffers[best.tp].popleft()
            out.append(best)

    def _open(self, empty: list[Partition]) -> tuple[list[Partition], bool]:
        """Of partitions with nothing buffered, those that may still bring a record, and
        whether every one of them is only waited for a while. Without --follow: those short of
        their end by position, waited for until they bring it. With --follow: all of them; only
        a while (``lateness``) if each is at its latest high watermark by position."""
        positions = self._positions(empty)
        if self._until_end:
            return [tp for tp in empty if positions[tp] < self._ends[tp]], False
        idle = True
        for tp in empty:
            _, hi = self._consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
            if hi < 0 or positions[tp] < hi:
                idle = False  # records to come: fetched, not yet delivered
                break
        return empty, idle

    def _write(self, out: list[_Waiting]) -> None:
        positions: dict[Partition, int] = {}
        self._producer.begin_transaction()
        try:
            for w in out:
                msg, user = w.msg, w.user
                key: Any = user.encode() if user is not None else msg.key()
                if user is None:
                    self.counts.unkeyed += 1
                else:
                    self._note_written(user, w.time)
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

    def _note_written(self, user: str, t: float) -> None:
        """Count a record older than one of its user written before (bounded memory: the last
        :data:`REMEMBERED` users)."""
        written = self._written
        last = written.get(user)
        if last is not None and t < last:
            self.counts.late += 1
            return
        written[user] = t
        written.move_to_end(user)
        if len(written) > REMEMBERED:
            written.popitem(last=False)
