"""Intake: each consumed record tracked, decoded, parsed, mapped, and its ops queued.

:class:`Intake` is the loop's first stage after the source: for each :class:`~consumer.records.Record`
it takes a :class:`~consumer.tracker.Handle` from the tracker, runs the record through the
decoder (with the size limit every format shares), :func:`~consumer.events.parse_event` and the
mapping rules (:class:`~consumer.actions.Actions`), and hands each op to the planner, or the
record to the dead letters. It also keeps what belongs to that step:

* records waiting for the Schema Registry hold their partition (:class:`~consumer.stalls.Stalls`);
* users seen on more than one partition are noticed (:class:`~consumer.keying.KeyWatch`), and
  their ops handed to the planner in event-time order, merges repeating a ``messageId``
  skipped (:mod:`consumer.ordering`);
* what became of each event is counted once per batch (a Prometheus counter takes a lock).

Under a backfill's holding (:mod:`consumer.holding`) the records go to the holding instead,
which uses :meth:`Intake.map`, :meth:`Intake.count` and :meth:`Intake.queue`. The loop's thread
owns it: not thread-safe.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable

from .actions import Actions
from .avro import decoder_for
from .backlog import HeldHandle
from .config import Settings
from .deadletter import DeadLetters
from .decode import Decoder, SizeLimit
from .errors import FatalRegistryError, InvalidEvent, RegistryError
from .events import parse_event
from .keying import KeyWatch
from .mapping import Mapped
from .metrics import Metrics
from .ops import Op
from .ordering import PendingOrder
from .plan import Pending, Planner
from .records import Partition, Record, Source
from .stalls import REGISTRY_BACKOFF, Stalls
from .tracker import Handle, OffsetTracker

log = logging.getLogger("knock_sink")


class Intake:
    """Records in, ops queued with ``planner`` (or records parked with the dead letters).

    :param decoder: the value decoder (default: the topics' formats, :func:`consumer.avro.decoder_for`).
    :param forget: the loop's forget, called with a partition the consumer rewound.
    :raises ConfigError: a format or a mapping rule is misconfigured.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        planner: Planner,
        tracker: OffsetTracker,
        metrics: Metrics,
        forget: Callable[[list[Partition]], None],
        decoder: Decoder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._decoder = SizeLimit(
            decoder or decoder_for(settings.kafka), settings.kafka.max_message_bytes
        )
        #: Each topic's decode, size check included, looked up once (see consumer.decode).
        self._decoders: dict[str, Callable[[bytes | None], object]] = {}
        self.actions = Actions(settings)
        self._map = self.actions.map
        self._planner = planner
        self._tracker = tracker
        self._metrics = metrics
        self._forget = forget
        self._keys = KeyWatch(clock=clock, on_split=metrics.users_on_several_partitions.inc)
        self._stalls = Stalls(
            REGISTRY_BACKOFF,
            clock=clock,
            pause=self._pause,
            resume=self._resume,
            on_wait=metrics.retries.labels("registry").inc,
        )
        self._seq = itertools.count(1)  # Pending numbers: the planner's order of arrival
        #: Topics not keyed by user: ops in event-time order across partitions, repeated merges skipped.
        self._order = PendingOrder(
            settings,
            add=planner.add,
            next_seq=self._seq.__next__,
            keys=self._keys,
            metrics=metrics,
            pause=self._pause,
            resume=self._resume,
            may_resume=lambda tp: not self._stalls.holds(tp),
            clock=clock,
        )
        #: Events read this batch by (type, outcome), added to the metrics once a batch.
        self._outcomes: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._source: Source | None = None
        self._dlq: DeadLetters | None = None

    def open(self, source: Source, dlq: DeadLetters) -> None:
        """The run's source (stalled partitions are paused there) and dead letters."""
        self._source, self._dlq = source, dlq

    def check(self) -> bool:
        """The decoder's start-up check: False when the registry does not answer yet.

        :raises ConfigError: the registry rejects the configuration."""
        return self._decoder.check()

    @property
    def fatal(self) -> FatalRegistryError | None:
        """Set once the registry refused us: the loop stops fetching."""
        return self._stalls.fatal

    # -- the per-event path ------------------------------------------------------------------

    def ingest(
        self, records: list[Record], take: Callable[[Record, Partition], bool] | None = None
    ) -> None:
        """Track and process ``records``, in order. ``take`` (a backfill's holding) takes each
        record instead; it returns False to stop taking in the batch."""
        tracker = self._tracker
        if take is not None:
            for rec in records:
                tp = (rec.topic, rec.partition)
                # One fetched just before its partition was revoked is left to the new owner.
                if tracker.owns(tp) and not take(rec, tp):
                    break
        else:
            seen = (
                time.time()
            )  # wall time, once a batch: the freshness metrics compare it to stamps
            stalls, process = self._stalls, self._process
            for rec in records:
                tp = (rec.topic, rec.partition)
                partition = tracker.partition(tp)
                if partition is None:
                    continue  # fetched just before its partition was revoked: the new owner reads it
                offset = rec.offset
                if not partition.accepts(offset):
                    # The consumer went back (a partition revoked and given back within one
                    # fetch, a reset): the events from here on come again, so start the
                    # partition afresh.
                    log.info(
                        "%s[%d] rewound to %d: reading it again",
                        tp[0],
                        tp[1],
                        offset,
                        extra={"topic": tp[0], "partition": tp[1], "offset": offset},
                    )
                    self._forget([tp])
                    tracker.add([tp])
                    partition = tracker.partition(tp)
                    assert partition is not None
                handle = partition.handle(offset)
                if stalls.holds(tp):
                    stalls.keep(rec, handle)  # behind a record waiting for the registry
                    continue
                try:
                    process(rec, handle, seen, tp)
                except RegistryError as exc:
                    stalls.stall(rec, handle, exc)
        for (kind, outcome), n in self._outcomes.items():
            self._metrics.events.labels(kind, outcome).inc(n)
        self._outcomes.clear()
        if records:
            self._metrics.consumed.inc(len(records))

    def release(self, *, flush: bool = False) -> None:
        """Hand on to the planner the ops whose event-time turn has come (``flush``: the sink
        stops, every op waiting goes on)."""
        self._order.step(flush=flush)

    def retry_stalled(self) -> None:
        """Process the records waiting for the registry, when their backoff has elapsed."""
        self._stalls.retry(self._process)

    def drop(self, tps: list[Partition]) -> None:
        """Forget the records held back for ``tps`` (revoked, lost or rewound), and their ops
        waiting for their event-time turn."""
        self._stalls.drop(tps)
        self._order.drop(tps)

    def _process(
        self, rec: Record, handle: Handle, seen: float | None = None, tp: Partition | None = None
    ) -> None:
        """Decode, parse and map one tracked record (read at wall time ``seen``, default now;
        ``tp``: its partition, when the caller has it); queue its ops or park it. Raises
        :class:`RegistryError` with the handle still held (the record must wait)."""
        assert self._dlq is not None
        if tp is None:
            tp = (rec.topic, rec.partition)
        try:
            mapped, stamp, kind = self.map(rec)
        except InvalidEvent as exc:
            self._dlq.park(handle, exc.kind, exc.reason, rec)
            self.count_invalid()
            handle.release()
            return
        ops = mapped.ops
        self.count(kind, mapped)
        if not ops:
            handle.release()  # zero-op events resolve here
            return
        handle.seen = time.time() if seen is None else seen
        handle.kafka_ms, handle.event_ts = rec.timestamp, stamp
        key, seen_on, add = rec.key, self._keys.seen, self._order.add
        last = len(ops) - 1
        for i, op in enumerate(ops):
            user = getattr(op, "user_id", None)
            if user is not None:
                seen_on(user, tp)
            if i < last:
                handle.hold()
            # The last op takes over the intake's own hold (no hold and release of it).
            add(Pending(0, op, handle, tp), key)  # numbered as it leaves the order

    # -- shared with a backfill's holding ----------------------------------------------------

    def map(self, rec: Record) -> tuple[Mapped, object, str]:
        """Decode, parse and map one record (a tombstone, with deletes on, maps to a delete);
        also the event's raw ``timestamp`` (else ``originalTimestamp``: for the freshness
        metrics and the event-time order) and its type.

        :raises InvalidEvent: the record can never be applied.
        :raises RegistryError: its writer schema cannot be had now (or ever, when fatal).
        """
        value = rec.value
        if value is None and self.actions.tombstones:
            return self.actions.tombstone(rec.key), None, "tombstone"
        decode = self._decoders.get(rec.topic)
        if decode is None:
            decode = self._decoders[rec.topic] = self._decoder.for_topic(rec.topic)
        message = decode(value)
        event = parse_event(message)
        return self._map(event, message, rec), event.raw_time, event.type  # type: ignore[arg-type]

    def count(self, kind: str, mapped: Mapped) -> None:
        """Count an event of type ``kind`` that mapped to ``mapped``, and its notes."""
        self._outcomes[(kind, "queued" if mapped.ops else "nothing_to_send")] += 1
        for note in mapped.notes:
            self._metrics.notes.labels(note).inc()

    def repeats(self, op: Op, tp: Partition, offset: int) -> bool:
        """Whether ``op`` is a merge repeating one taken in from elsewhere (see
        :meth:`consumer.ordering.PendingOrder.repeats`)."""
        return self._order.repeats(op, tp, offset)

    def count_invalid(self) -> None:
        self._outcomes[("invalid", "dead_lettered")] += 1

    def queue(self, op: Op, handle: Handle, tp: Partition) -> None:
        """Hand one event's ``op`` to the planner, held on its tracker ``handle``."""
        handle.hold()
        self._planner.add(Pending(next(self._seq), op, handle, tp))

    def queue_held(self, op: Op, handle: HeldHandle) -> None:
        """Hand a held user's folded update to the planner (its handle starts held; no lane:
        it never folds on add)."""
        self._planner.add(Pending(next(self._seq), op, handle))

    # -- stalled partitions ------------------------------------------------------------------

    def _pause(self, tps: list[Partition]) -> None:
        if self._source is not None:
            self._source.pause_partitions(tps)

    def _resume(self, tps: list[Partition]) -> None:
        if self._source is not None:
            self._source.resume_partitions(tps)
