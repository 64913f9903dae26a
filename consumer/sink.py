"""The sink loop: source → stage (map, then queue or fold) → dispatch (plan, apply) → dead
letters → commit.

One thread runs the loop and owns the source, the fetch control, the stage, the
:class:`~consumer.dispatch.Dispatch`, the tracker and the committed positions; plans are applied
on worker threads, and their outcomes come back to the loop thread, which alone resolves offsets
and commits. The stage is picked once, at start: the live :class:`~consumer.intake.Intake`, or
a backfill's :class:`~consumer.backfill.BackfillStage`; both speak
:class:`~consumer.stage.Stage`. Every stage keeps its own state; the loop only wires them.

The guarantee, in one line: a position is committed only when every event before it in its
partition has been applied in Knock or confirmed in the dead-letter topic.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from .apply import Outcome
from .backfill import BackfillStage, reached, read_targets
from .budget import Budget
from .catchup import FOCUS as CATCH_UP
from .catchup import CatchUp
from .config import Settings
from .deadletter import DeadLetters
from .decode import Decoder
from .dispatch import Dispatch
from .edge import KafkaEdge
from .errors import ConfigError, FatalKnockError, RetryableError
from .fetch import FetchControl
from .flow import Backpressure
from .health import Health
from .ingest import Ingest
from .intake import Intake
from .knock import KnockClient
from .knownlog import KnownSync
from .metrics import Metrics, Summary
from .plan import Pending
from .records import Edge, Partition, Replay, Source, Worker
from .stage import NotStarted, Stage
from .tracker import OffsetTracker

log = logging.getLogger("knock_sink")

#: Seconds between commits while running (a revoke or shutdown commits at once).
COMMIT_EVERY = 0.5
#: Why fetching waits (see :class:`~consumer.fetch.FetchControl`): too many events unresolved,
#: or the loop is stopping.
BACKPRESSURE = "backpressure"
DRAIN = "drain"


class Sink:
    """Run with :meth:`run`; stop from any thread (or a signal handler) with :meth:`stop`.

    :param edge: the Kafka clients (default: the real ones, :class:`~consumer.edge.KafkaEdge`;
        the tests' in-memory edge stands in for a broker).
    :param wall: wall time, for the age of what change detection knows (:mod:`consumer.known`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        edge: Edge | None = None,
        decoder: Decoder | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        settings.require_runnable()
        self.settings = settings
        self.metrics = metrics = metrics or Metrics()
        self._clock = clock
        self._edge = edge or KafkaEdge(settings.kafka)
        self._tracker = OffsetTracker()
        self._stop = threading.Event()
        #: Set by :meth:`stop` (a signal, the caller): the stop was asked for, not the sink's own.
        self._stopped = False
        self._knock_stop = threading.Event()
        self._knock = KnockClient.from_settings(
            settings.knock,
            stop=self._knock_stop,
            on_request=metrics.knock_request,
            on_wait=metrics.knock_wait,
        )
        self._dispatch = Dispatch(settings, self._knock, metrics, clock, wall)
        self._ingest = Ingest(settings, metrics, decoder)
        self._fetch = FetchControl()
        self._backpressure = Backpressure(settings.sink.max_pending)
        self._fetching = self._fetch.whole(BACKPRESSURE)
        self._budget = Budget(
            self._knock.limits,
            settings.knock.budget_share,
            metrics.budget_share,
            metrics.budget_idle,
            now=clock(),
        )
        #: The run's stage, picked at start (:meth:`_pick_stage`).
        self._stage: Stage = NotStarted()
        #: ``run``'s partitions behind by a backlog (``None``: a backfill, or off).
        self._catch_up: CatchUp | None = None
        #: The last position committed for each partition by this sink.
        self._committed: dict[Partition, int] = {}
        self._source: Source | None = None
        self._dlq: DeadLetters | None = None
        self._known = KnownSync(
            self._dispatch.known,
            settings.kafka,
            durable=isinstance(self._edge, KafkaEdge),
            observe=metrics.known_restore.observe,
        )
        if (known := self._dispatch.known) is not None:
            metrics.known_users.set_function(known.__len__)
            metrics.known_bytes.set_function(lambda: known.memory_bytes)
        self._last_commit = clock()
        # The revoke's settle blocks the loop for up to the drain budget: never a stall.
        self.health = Health(
            max(settings.sink.stall_timeout, settings.sink.drain_timeout + 5), clock
        )

    def stop(self) -> None:
        """Ask the loop to stop fetching, drain and exit (safe from signal handlers). Before
        the loop has started (the start-up check retrying an unreachable Knock) it also
        interrupts Knock calls: there is nothing to drain yet."""
        self._stopped = True
        self._stop.set()
        if not self.health.check_passed:
            self._knock_stop.set()

    # -- run -------------------------------------------------------------------------------

    def run(
        self,
        *,
        from_beginning: bool = False,
        until_end: bool = False,
        replay: Replay | None = None,
        full: bool = False,
    ) -> Summary:
        """Consume until :meth:`stop` (or, with ``until_end``, until every event up to the end
        offsets seen at start is applied and committed). Raises :class:`FatalKnockError` after
        committing what is safe when Knock rejects the configuration at run time,
        :class:`~consumer.errors.FatalRegistryError` when the schema registry does (after
        applying and committing what came before the record it refused), and
        :class:`ConfigError` when either rejects it at start. With ``full``, change detection
        sends everything (and records what Knock confirms)."""
        self._ingest.actions.window(backfill=until_end)
        known = self._dispatch.known
        if known is not None:
            known.full = full
        kafka = self.settings.kafka
        if self.settings.sink.metrics_port:
            # Before the start-up check: the probes say "not ready" while it retries.
            self.health.serve(self.metrics.registry, self.settings.sink.metrics_port)
        # Kafka settings first: a bad client option is a bad setting, reported before any I/O.
        writer = self._edge.writer()
        self._dlq = DeadLetters(kafka, writer, self._edge.reader(), self.metrics, clock=self._clock)
        self._source = self._edge.source(
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
            from_beginning=from_beginning,
            **({"replay": replay} if replay else {}),
        )
        self._fetch.bind(self._source)
        try:
            self._knock.check()
            if not self._ingest.check():
                log.warning("schema registry not answering at start: events that need it will wait")
        except FatalKnockError as exc:
            self.health.fatal(str(exc))
            self._close()
            setting = "knock.api_key" if exc.status in (401, 403) else "knock.base_url"
            raise ConfigError(setting, str(exc)) from None
        except RetryableError:  # stopped while Knock was unreachable
            self._close()
            return Summary.of(
                self.metrics, reached=False if until_end else None, stopped=self._stopped
            )
        except ConfigError:
            self._close()
            raise
        self.health.checked()
        writer.ensure_topics(kafka.topics, kafka.dlq_for)
        ends, starts = (
            read_targets(self._source, kafka.topics, from_beginning, replay)
            if until_end
            else (None, {})
        )
        if replay is not None and replay.worker is not None:
            # Before its share is assigned: the share's first pacing is then its turns among
            # every partition's, never a lone process's (a group learns the count after).
            source = self._source
            self._budget.refresh(lambda: source.end_offsets(kafka.topics))
        for (topic, partition), target in (ends or {}).items():
            self.metrics.target.labels(topic, str(partition)).set(target)
        self._stage = stage = self._pick_stage(ends, starts, replay.worker if replay else None)
        # The loop allocates a few small objects per event and keeps them until Knock applied
        # them: with the default thresholds the collector rescans that young, live heap every
        # 700 allocations.
        thresholds = gc.get_threshold()
        gc.set_threshold(50_000, 20, 100)
        # A backfill that stops before its targets (a partition lost or rewound, a signal) says
        # so in its summary: its commits are good, but the replay is not done.
        reached: bool | None = None if ends is None else False
        try:
            while not self._stop.is_set():
                if ends is not None and self._reached(ends):
                    reached = True
                    break
                self._step()
            self._drain()
            if stage.fatal is not None:  # stopped fetching; what was mapped is applied
                log.critical(
                    "the schema registry rejected the configuration, stopped: %s", stage.fatal
                )
                raise stage.fatal
        except FatalKnockError as exc:
            self.health.fatal(str(exc))
            log.critical("Knock rejected the configuration, stopping: %s", exc)
            self._commit(force=True)
            raise
        finally:
            gc.set_threshold(*thresholds)
            self._close()
        return Summary.of(self.metrics, reached=reached, stopped=self._stopped)

    def _pick_stage(
        self,
        ends: dict[Partition, int] | None,
        starts: dict[Partition, int],
        worker: Worker | None = None,
    ) -> Stage:
        """The live intake, or with end targets a backfill (its plans sized for held users)."""
        assert self._source is not None and self._dlq is not None
        if ends is None:
            if self.settings.sink.catch_up_lag:
                self._catch_up = CatchUp(
                    self.settings.sink.catch_up_lag,
                    self.settings.sink.catch_up_pending,
                    positions=self._source.positions,
                    highs=self._source.high_watermarks,
                    pause=self._fetch.holder(CATCH_UP),
                    resume=self._fetch.releaser(CATCH_UP),
                )
            return Intake(
                self.settings,
                ingest=self._ingest,
                dispatch=self._dispatch,
                tracker=self._tracker,
                dlq=self._dlq,
                fetch=self._fetch,
                metrics=self.metrics,
                clock=self._clock,
                positions=self._source.positions,
            )
        self._dispatch.hold()
        return BackfillStage(
            ends,
            starts,
            settings=self.settings,
            ingest=self._ingest,
            dispatch=self._dispatch,
            source=self._source,
            fetch=self._fetch,
            tracker=self._tracker,
            dlq=self._dlq,
            metrics=self.metrics,
            stop=self._stop,
            clock=self._clock,
            worker=worker,
        )

    def _step(self) -> None:
        """One turn of the loop: fetch and take in, take in finished plans, dead letters, next
        plan, commit."""
        assert self._source is not None and self._dlq is not None
        source, stage = self._source, self._stage
        self.health.turned()
        if self._budget.stale and self._budget.share is not None:
            self._budget.refresh(lambda: source.end_offsets(self.settings.kafka.topics))
        pending = self._tracker.pending()
        limit = None
        if (catch_up := self._catch_up) is not None:
            catch_up.step(self._clock(), pending)
            self.metrics.catching_up.set(catch_up.catching_up)
            if catch_up.catching_up:
                limit = catch_up.pending
        self._backpressure.update(pending, self._fetching, limit)
        self.metrics.pending.set(pending)
        self.metrics.paused.set(1 if self._fetch.paused else 0)
        stage.poll()
        self._take_in(0.2 if self._dispatch.idle else 0.02)
        self._dispatch.collect(self._take)
        self._dlq.pump()
        stage.feed()
        self._start_plan()
        self._budget.tick(self._clock(), self.metrics.spent)
        if self._commit():  # not in _commit: that runs in the rebalance callbacks too
            self.metrics.set_lag(source.high_watermarks())

    def _take_in(self, timeout: float) -> None:
        """Fetch a batch and submit it to the stage."""
        assert self._source is not None
        records = self._source.consume(self.settings.kafka.consume_batch, timeout)
        self._stage.submit(records)
        if self._stage.fatal is not None:
            self._stop.set()

    def _start_plan(self) -> None:
        self._dispatch.start(
            wait=self._stage.holds_back,
            now=self._stop.is_set(),
            held=self._catch_up.held if self._catch_up is not None else frozenset(),
        )

    def _take(self, out: Outcome) -> None:
        """Resolve what Knock applied, park what it rejected, give back what must be retried."""
        assert self._dlq is not None
        applied = 0
        for p in out.done:
            p.source.release()
            applied += p.source.events
        self.metrics.applied.inc(applied)
        if out.unchanged:
            self.metrics.unchanged.inc(sum(p.source.events for p in out.unchanged))
        self.metrics.freshness.applied(out.done, time.time())
        for p, kind, reason in out.dead:
            self._dlq.park(p.source, kind, reason, p.source.record())
            p.source.release()
        now = self._clock()
        by_delay: dict[float, list[Pending]] = defaultdict(list)
        for p, delay in out.retry:
            if p.source.current:
                by_delay[delay].append(p)
        for delay, items in by_delay.items():
            self.metrics.retries.labels("item" if delay else "blocked").inc(len(items))
            self._dispatch.retry(items, now + delay)
        for op, n in out.calls.items():
            self.metrics.knock_calls.labels(op).inc(n)
        self.metrics.users_sent.inc(out.users_sent)

    # -- commits, rebalances, shutdown -----------------------------------------------------

    def _commit(self, force: bool = False) -> bool:
        """Commit what the tracker vouches for: at most every :data:`COMMIT_EVERY` seconds
        unless forced. True when it committed."""
        assert self._source is not None
        now = self._clock()
        if not force and now - self._last_commit < COMMIT_EVERY:
            return False
        self._last_commit = now
        positions = self._stage.committable()
        if not positions:
            return False
        if not self._known.flush(5.0):
            log.warning("change detection's changelog not flushed; commit deferred")
            return False
        if not self._source.commit(positions):
            return False
        self._stage.mark_committed(positions)
        self._committed.update(positions)
        for (topic, partition), offset in positions.items():
            self.metrics.committed.labels(topic, str(partition)).set(offset)
        self.metrics.commits.inc()
        return True

    def _settle(self, deadline: float) -> bool:
        """Flush, then commit, by ``deadline`` (a clock reading): the one procedure behind a
        revoke and a shutdown. Returns False when plans were still in flight at the deadline
        (their results will not count)."""
        assert self._dlq is not None
        # Step 1. Finish the plans in flight and take in their outcomes.
        drained = self._dispatch.collect(self._take, timeout=max(0.0, deadline - self._clock()))
        # Step 2. Read back what Knock rejected and confirm every dead-letter write.
        self._dlq.flush(max(0.5, deadline - self._clock()))
        # Step 3. Commit what the tracker vouches for.
        self._commit(force=True)
        # Even with nothing to commit: the partitions' next owner restores from it.
        self._known.flush(max(0.5, deadline - self._clock()))
        return drained

    def _on_assign(self, tps: list[Partition]) -> None:
        if self._catch_up is not None:
            self._catch_up.assigned(tps)
        self._known.assigned(tps)
        self._fetch.assigned(tps)
        self._tracker.add(tps)
        self.health.assigned(tps)
        self._budget.update(self.health.partitions)

    def _on_lost(self, tps: list[Partition]) -> None:
        self.health.unassigned(tps)
        self._budget.update(self.health.partitions)
        self._forget(tps)
        self._fetch.unassigned(tps)

    def _on_revoke(self, tps: list[Partition]) -> None:
        """Partitions are leaving: settle while they are still ours, then forget them, so that
        no late result can commit for them."""
        if not self._settle(self._clock() + self.settings.sink.drain_timeout):
            log.warning(
                "revoke: plans still in flight after the drain budget; their results "
                "for %s will be ignored",
                tps,
            )
        self._forget(tps)
        self._fetch.unassigned(tps)
        self.health.unassigned(tps)
        self._budget.update(self.health.partitions)

    def _forget(self, tps: list[Partition]) -> None:
        """Drop everything held for ``tps`` (revoked, lost or rewound: they will be read again,
        here or by their new owner; lost ones are not committed, they may be someone else's)."""
        gone = set(tps)
        if self._catch_up is not None:
            self._catch_up.unassigned(gone)
        self._known.left(gone)
        if self._stage.forget(gone):
            self._stop.set()
            self._dispatch.drop(lambda p: True)
        self._dispatch.drop(lambda p: p.source.partition in gone)
        self._tracker.drop(tps)

    def _drain(self) -> None:
        """Stop fetching, apply what is buffered (within the drain budget), then settle."""
        assert self._dlq is not None
        self._fetch.hold_all(DRAIN)
        self._stage.flush()  # what a live sink holds for event-time order goes on now
        if self._catch_up is not None:
            self._catch_up.release_all()  # and what it folds while catching up
        deadline = self._clock() + self.settings.sink.drain_timeout
        while self._clock() < deadline:
            self.health.turned()
            if self._dispatch.collect(self._take, timeout=0.05) and self._dispatch.idle:
                break
            self._stage.flush()  # and what came in since
            self._start_plan()
            # Keeps group membership and callbacks served; whatever was fetched before the
            # pause is taken in rather than dropped.
            self._take_in(0.01)
            self._dlq.pump()
        if not self._dispatch.idle:
            log.warning(
                "drain budget spent: %d events will be replayed by the next run",
                self._tracker.pending(),
            )
        self._knock_stop.set()
        self._settle(max(deadline, self._clock() + 1.0))

    def _reached(self, ends: dict[Partition, int]) -> bool:
        assert self._source is not None
        stage = self._stage
        return reached(
            ends,
            self._committed,
            self._source,
            lambda: bool(self._tracker.pending() or not self._dispatch.idle),
            held=stage.holds_users if isinstance(stage, BackfillStage) else None,
        )

    def _close(self) -> None:
        self.health.close()
        self._stop.set()  # the loop is over: a revoke from closing the consumer is expected
        self._knock_stop.set()
        self._dispatch.close()
        self._knock.close()
        self._stage.close()
        self._known.close()
        if self._source is not None:
            self._source.close()
        if self._dlq is not None:
            self._dlq.close()
