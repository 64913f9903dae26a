"""The sink loop: source → decode → events → mapping → plan → apply → dead letters → commit.

One thread runs the loop and owns the source, the planner and the tracker; plans are applied
on worker threads (:class:`~consumer.apply.Flight`), and their outcomes come back to the loop
thread, which alone resolves offsets and commits. Every stage keeps its own state; the loop
only wires them.

The guarantee, in one line: a position is committed only when every event before it in its
partition has been applied in Knock or confirmed in the dead-letter topic.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from .actions import Actions
from .apply import Applier, Flight, Outcome
from .avro import decoder_for
from .budget import Budget
from .cadence import Cadence
from .config import Settings
from .deadletter import DeadLetters
from .decode import Decoder, SizeLimit
from .errors import ConfigError, FatalKnockError, InvalidEvent, RegistryError, RetryableError
from .events import parse_event
from .flow import Backpressure, Sizing
from .freshness import Freshness
from .health import Health, HealthServer
from .holding import Holding, applied_events, dead_letter_record, end_targets, reached
from .keying import KeyWatch
from .knock import KnockClient
from .mapping import Mapped
from .metrics import Metrics, Summary
from .plan import Pending, Planner
from .records import Edge, Partition, Record, Replay, Source
from .source import KafkaEdge
from .stalls import REGISTRY_BACKOFF, Stalls
from .tracker import Handle, OffsetTracker

log = logging.getLogger("knock_sink")

#: Seconds between commits while running (a revoke or shutdown commits at once).
COMMIT_EVERY = 0.5


class Sink:
    """Run with :meth:`run`; stop from any thread (or a signal handler) with :meth:`stop`.

    :param edge: the Kafka clients (default: the real ones, :class:`~consumer.source.KafkaEdge`;
        the tests' in-memory edge stands in for a broker).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        edge: Edge | None = None,
        decoder: Decoder | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        settings.require_runnable()
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._freshness = Freshness(self.metrics.registry)
        self._clock = clock
        self._edge = edge or KafkaEdge(settings.kafka)
        self._format = decoder or decoder_for(settings.kafka)
        self._decoder = SizeLimit(self._format, settings.kafka.max_message_bytes)
        self._stalls = Stalls(REGISTRY_BACKOFF, clock=clock, pause=self._pause, resume=self._resume,
                              on_wait=self.metrics.retries.labels("registry").inc)  # fmt: skip
        self._keys = KeyWatch(clock=clock, on_split=self.metrics.users_on_several_partitions.inc)
        self._actions = Actions(settings)
        self._planner = Planner(nested=settings.knock.nested_merge)
        self._tracker = OffsetTracker()
        self._sizing = sizing = Sizing.of(settings.knock)
        self._stop = threading.Event()
        self._knock_stop = threading.Event()
        self._knock = KnockClient.from_settings(settings.knock, stop=self._knock_stop,
                                                on_request=self.metrics.knock_request,
                                                on_wait=self.metrics.knock_wait)  # fmt: skip
        self._flight = Flight(Applier(
            self._knock, bulk_size=settings.knock.bulk_size, concurrency=settings.knock.concurrency,
            item_attempts=settings.sink.item_attempts, singles=sizing.singles,
            entity_gap=sizing.entity_gap, clock=clock,
        ))  # fmt: skip
        self._backpressure = Backpressure(settings.sink.max_pending)
        self._cadence = Cadence(settings.sink.flush_interval, settings.knock.rate_limits == "knock")
        #: A backfill's read-ahead and held users (:mod:`consumer.holding`), under Knock's limits.
        self._holding: Holding | None = None
        self._source: Source | None = None
        self._dlq: DeadLetters | None = None
        self._seq = itertools.count(1)  # Pending numbers, shared with the holding
        #: Events read this batch by (type, outcome), counted once a batch (a counter locks).
        self._outcomes: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._last_plan = self._last_commit = clock()
        self._looping = False
        # The revoke's settle blocks the loop for up to the drain budget: never a stall.
        self.health = Health(max(settings.sink.stall_timeout, settings.sink.drain_timeout + 5), clock)
        self._server: HealthServer | None = None
        self._budget = Budget(self._knock.limits, settings.knock.budget_share, self.metrics.budget_share)

    def stop(self) -> None:
        """Ask the loop to stop fetching, drain and exit (safe from signal handlers). Before
        the loop has started (the start-up check retrying an unreachable Knock) it also
        interrupts Knock calls: there is nothing to drain yet."""
        self._stop.set()
        if not self._looping:
            self._knock_stop.set()

    # -- run -------------------------------------------------------------------------------

    def run(self, *, from_beginning: bool = False, until_end: bool = False,
            replay: Replay | None = None) -> Summary:
        """Consume until :meth:`stop` (or, with ``until_end``, until every event up to the end
        offsets seen at start is applied and committed). Raises :class:`FatalKnockError` after
        committing what is safe when Knock rejects the configuration at run time,
        :class:`~consumer.errors.FatalRegistryError` when the schema registry does (after
        applying and committing what came before the record it refused), and
        :class:`ConfigError` when either rejects it at start."""
        self._actions.window(backfill=until_end)
        kafka = self.settings.kafka
        if self.settings.sink.metrics_port:
            # Before the start-up check: the probes say "not ready" while it retries.
            self._server = HealthServer(self.metrics.registry, self.health, self.settings.sink.metrics_port)
        # Kafka settings first: a bad client option is a bad setting, reported before any I/O.
        writer = self._edge.writer()
        self._dlq = DeadLetters(kafka, writer, self._edge.reader(), self.metrics, clock=self._clock)
        self._source = self._edge.source(
            on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost,
            from_beginning=from_beginning, **({"replay": replay} if replay else {}),
        )  # fmt: skip
        try:
            self._knock.check()
        except FatalKnockError as exc:
            self.health.fatal(str(exc))
            self._close()
            setting = "knock.api_key" if exc.status in (401, 403) else "knock.base_url"
            raise ConfigError(setting, str(exc)) from None
        except RetryableError:  # stopped while Knock was unreachable
            self._close()
            return Summary.of(self.metrics)
        try:
            if not getattr(self._format, "check", lambda: True)():
                log.warning("schema registry not answering at start: events that need it will wait")
        except ConfigError:
            self._close()
            raise
        self._looping = True
        self.health.checked()
        writer.ensure_topics(kafka.topics, kafka.dlq_for)
        ends = end_targets(self._source, kafka.topics, from_beginning, replay) if until_end else None
        for (topic, partition), target in (ends or {}).items():
            self.metrics.target.labels(topic, str(partition)).set(target)
        if ends is not None and self.settings.knock.rate_limits == "knock":
            self._holding = Holding(
                ends, settings=self.settings, sizing=self._sizing, source=self._source,
                planner=self._planner, tracker=self._tracker, dlq=self._dlq, metrics=self.metrics,
                map_record=self._map, outcomes=self._outcomes, next_seq=self._seq.__next__,
                forget=self._forget, stop=self._stop, clock=self._clock,
            )  # fmt: skip
        # The loop allocates a few small objects per event and keeps them until Knock applied
        # them: with the default thresholds the collector rescans that young, live heap every
        # 700 allocations (up to a tenth of the loop's time in profiles).
        thresholds = gc.get_threshold()
        gc.set_threshold(50_000, 20, 100)
        try:
            while not self._stop.is_set() and not (ends is not None and self._reached(ends)):
                self._step()
            self._drain()
            if self._stalls.fatal is not None:  # stopped fetching; what was mapped is applied
                log.critical("the schema registry rejected the configuration, stopped: %s", self._stalls.fatal)
                raise self._stalls.fatal
        except FatalKnockError as exc:
            self.health.fatal(str(exc))
            log.critical("Knock rejected the configuration, stopping: %s", exc)
            self._commit(force=True)
            raise
        finally:
            gc.set_threshold(*thresholds)
            self._close()
        return Summary.of(self.metrics)

    def _step(self) -> None:
        """One turn of the loop: fetch, take in finished plans, dead letters, next plan, commit."""
        assert self._source is not None and self._dlq is not None
        self.health.turned()
        if self._budget.stale and self._budget.share is not None:
            self._budget.refresh(lambda: self._source.end_offsets(self.settings.kafka.topics))  # type: ignore[union-attr]
        pending = self._tracker.pending()
        self._backpressure.update(pending, self._source)
        self.metrics.pending.set(pending)
        self.metrics.paused.set(1 if self._source.paused else 0)
        busy = len(self._flight) > 0 or len(self._planner) > 0
        self._stalls.retry(self._process)
        self._ingest(self._source.consume(self.settings.kafka.consume_batch, 0.02 if busy else 0.2))
        self._flight.collect(self._take)
        self._dlq.pump()
        if self._holding is not None:
            self._holding.step()
        self._start_plan()
        last = self._last_commit
        self._commit()
        marks = getattr(self._source, "high_watermarks", None)  # the in-memory edge has none
        if self._last_commit != last and marks is not None:  # not in _commit: it runs in callbacks
            self.metrics.set_lag(marks())

    def _ingest(self, records: list[Record]) -> None:
        """Track, decode, parse and map each record; queue its ops with the planner."""
        assert self._dlq is not None
        tracker, holding = self._tracker, self._holding
        seen = time.time()  # wall time, once a batch: the freshness metrics compare it to stamps
        for rec in records:
            tp = (rec.topic, rec.partition)
            if not tracker.owns(tp):
                continue  # fetched just before its partition was revoked: the new owner reads it
            if holding is not None:
                if not holding.ingest(rec, tp):
                    break
                continue
            if not tracker.accepts(tp, rec.offset):
                # The consumer went back (a partition revoked and given back within one fetch, a
                # reset): the events from here on come again, so start the partition afresh.
                log.info("%s[%d] rewound to %d: reading it again", tp[0], tp[1], rec.offset,
                         extra={"topic": tp[0], "partition": tp[1], "offset": rec.offset})  # fmt: skip
                self._forget([tp])
                tracker.add([tp])
            handle = tracker.track(tp, rec.offset)
            if self._stalls.holds(tp):
                self._stalls.keep(rec, handle)  # behind a record waiting for the registry
                continue
            try:
                self._process(rec, handle, seen)
            except RegistryError as exc:
                self._stalls.stall(rec, handle, exc)
        if self._stalls.fatal is not None:
            self._stop.set()
        for (kind, outcome), n in self._outcomes.items():
            self.metrics.events.labels(kind, outcome).inc(n)
        self._outcomes.clear()
        if records:
            if holding is not None:
                holding.fetched(records)
            # Counted per batch: a prometheus counter takes a lock on every inc().
            self.metrics.consumed.inc(len(records))

    def _process(self, rec: Record, handle: Handle, seen: float | None = None) -> None:
        """Decode, parse and map one tracked record (read at wall time ``seen``, default now);
        queue its ops or park it. Raises :class:`RegistryError` with the handle still held (the
        record must wait)."""
        assert self._dlq is not None
        seen = time.time() if seen is None else seen
        tp = (rec.topic, rec.partition)
        try:
            mapped, stamp, kind = self._map(rec)
        except InvalidEvent as exc:
            self._dlq.park(handle, exc.kind, exc.reason, rec)
            self._outcomes[("invalid", "dead_lettered")] += 1
        else:
            self._outcomes[(kind, "queued" if mapped.ops else "nothing_to_send")] += 1
            if mapped.ops:
                handle.seen, handle.kafka_ms, handle.event_ts = seen, rec.timestamp, stamp
            for note in mapped.notes:
                self.metrics.notes.labels(note).inc()
            for op in mapped.ops:
                handle.hold()
                user = getattr(op, "user_id", None)
                if user is not None:
                    self._keys.seen(user, tp)
                self._planner.add(Pending(next(self._seq), op, handle, tp))
        handle.release()  # zero-op events resolve here

    def _pause(self, tps: list[Partition]) -> None:
        if self._source is not None:
            self._source.pause_partitions(tps)

    def _resume(self, tps: list[Partition]) -> None:
        if self._source is not None:
            self._source.resume_partitions(tps)

    def _map(self, rec: Record) -> tuple[Mapped, object, str]:
        """Decode, parse and map one record (a tombstone, with deletes on, maps to a delete);
        also the event's raw ``timestamp`` (for the freshness metrics) and its type.

        :raises InvalidEvent: the record can never be applied.
        :raises RegistryError: its writer schema cannot be had now (or ever, when fatal).
        """
        if rec.value is None and self._actions.tombstones:
            return self._actions.tombstone(rec.key), None, "tombstone"
        message = self._decoder.decode(rec.value, rec.topic)
        event = parse_event(message)
        return self._actions.map(event, message, rec), event.raw_timestamp, event.type  # type: ignore[arg-type]

    # -- plans -----------------------------------------------------------------------------

    def _start_plan(self) -> None:
        """Cut the next plan and start it, when there is room in flight and a batch is due
        (full, or old enough). Its users are disjoint from those of the plans in flight."""
        if self._flight.full or len(self._planner) == 0:
            return
        now = self._clock()
        size = self._sizing.users_per_plan
        due = self._cadence.due(now, pending=len(self._planner), full_at=size,
                                last_cut=self._last_plan,
                                bulk_ready_in=self._knock.ready_in("bulk_identify"))
        holding = self._holding
        if (not due or (holding is not None and holding.holds_back(now))) and not self._stop.is_set():
            return
        plan = self._planner.cut(now, max_users=size, busy=self._flight.busy(),
                                 max_levels=self._sizing.max_levels)  # fmt: skip
        if plan:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("plan cut: %d users, %.3f s after the last, %d ops left pending",
                          len(plan.users()), now - self._last_plan, len(self._planner))  # fmt: skip
            self._last_plan = now
            self.metrics.plan_users.observe(len(plan.users()))
            self._flight.start(plan)

    def _take(self, out: Outcome) -> None:
        """Resolve what Knock applied, park what it rejected, give back what must be retried."""
        assert self._dlq is not None
        for p in out.done:
            p.source.release()
        self.metrics.applied.inc(applied_events(out.done))
        self._freshness.applied(out.done, time.time())
        for p, kind, reason in out.dead:
            self._dlq.park(p.source, kind, reason, dead_letter_record(p))
            p.source.release()
        now = self._clock()
        by_delay: dict[float, list[Pending]] = defaultdict(list)
        for p, delay in out.retry:
            if p.source.current:
                by_delay[delay].append(p)
        for delay, items in by_delay.items():
            self.metrics.retries.labels("item" if delay else "blocked").inc(len(items))
            self._planner.retry(items, now + delay)
        for op, n in out.calls.items():
            self.metrics.knock_calls.labels(op).inc(n)
        self.metrics.users_sent.inc(out.users_sent)

    # -- commits, rebalances, shutdown -----------------------------------------------------

    def _commit(self, force: bool = False) -> None:
        """Commit what the tracker vouches for: at most every :data:`COMMIT_EVERY` seconds
        unless forced."""
        assert self._source is not None
        now = self._clock()
        if not force and now - self._last_commit < COMMIT_EVERY:
            return
        self._last_commit = now
        holding = self._holding
        positions = self._tracker.committable() if holding is None else holding.committable(self._tracker)
        if positions and self._source.commit(positions):
            self._tracker.mark_committed(positions)
            if holding is not None:
                holding.mark_committed(positions)
            for (topic, partition), offset in positions.items():
                self.metrics.committed.labels(topic, str(partition)).set(offset)
            self.metrics.commits.inc()

    def _settle(self, deadline: float) -> bool:
        """Flush, then commit, by ``deadline`` (a clock reading): the one procedure behind a
        revoke and a shutdown. Returns False when plans were still in flight at the deadline
        (their results will not count)."""
        assert self._dlq is not None
        # Step 1. Finish the plans in flight and take in their outcomes.
        drained = self._flight.collect(self._take, timeout=max(0.0, deadline - self._clock()))
        # Step 2. Read back what Knock rejected and confirm every dead-letter write.
        self._dlq.flush(max(0.5, deadline - self._clock()))
        # Step 3. Commit what the tracker vouches for.
        self._commit(force=True)
        return drained

    def _on_assign(self, tps: list[Partition]) -> None:
        self._tracker.add(tps)
        self.health.assigned(tps)
        self._budget.update(self.health.partitions)

    def _on_lost(self, tps: list[Partition]) -> None:
        self.health.unassigned(tps)
        self._budget.update(self.health.partitions)
        self._forget(tps)

    def _on_revoke(self, tps: list[Partition]) -> None:
        """Partitions are leaving: settle while they are still ours, then forget them, so that
        no late result can commit for them."""
        if not self._settle(self._clock() + self.settings.sink.drain_timeout):
            log.warning("revoke: plans still in flight after the drain budget; their results "
                        "for %s will be ignored", tps)  # fmt: skip
        self._forget(tps)
        self.health.unassigned(tps)
        self._budget.update(self.health.partitions)

    def _forget(self, tps: list[Partition]) -> None:
        """Drop everything held for ``tps`` (revoked, lost or rewound: they will be read again,
        here or by their new owner; lost ones are not committed, they may be someone else's)."""
        gone = set(tps)
        if self._holding is not None and self._holding.forget(gone):
            self._stop.set()
            self._planner.drop(lambda p: True)
        self._stalls.drop(tps)
        self._planner.drop(lambda p: p.source.partition in gone)
        self._tracker.drop(tps)

    def _drain(self) -> None:
        """Stop fetching, apply what is buffered (within the drain budget), then settle."""
        assert self._source is not None and self._dlq is not None
        self._source.pause()
        deadline = self._clock() + self.settings.sink.drain_timeout
        while self._clock() < deadline:
            self.health.turned()
            if self._flight.collect(self._take, timeout=0.05) and len(self._planner) == 0:
                break
            self._start_plan()
            # Keeps group membership and callbacks served; whatever was fetched before the
            # pause is taken in rather than dropped.
            self._ingest(self._source.consume(self.settings.kafka.consume_batch, 0.01))
            self._dlq.pump()
        if len(self._flight) or len(self._planner):
            log.warning("drain budget spent: %d events will be replayed by the next run",
                        self._tracker.pending())  # fmt: skip
        self._knock_stop.set()
        self._settle(max(deadline, self._clock() + 1.0))

    def _reached(self, ends: dict[Partition, int]) -> bool:
        assert self._source is not None
        return reached(ends, self.metrics.committed_positions(), self._source,
                       lambda: bool(self._tracker.pending() or len(self._planner) or len(self._flight)))

    def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._stop.set()  # the loop is over: a revoke from closing the consumer is expected
        self._knock_stop.set()
        self._flight.close()
        self._knock.close()
        if self._holding is not None:
            self._holding.close()
        if self._source is not None:
            self._source.close()
        if self._dlq is not None:
            self._dlq.close()
