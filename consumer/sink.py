"""The sink loop: source → decode → events → mapping → plan → apply → dead letters → commit.

One thread runs the loop and owns the consumer, the planner and the tracker; plans (at most
:data:`PLANS_IN_FLIGHT`, on disjoint users) are applied on worker threads, so fetching (and the
consumer's group membership) goes on while Knock is slow, retried or rate-limited. Everything the worker reports comes back to the loop
thread, which alone resolves offsets and commits.

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
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .apply import Applier, Outcome
from .config import Settings
from .deadletter import DeadLetters, Originals
from .decode import Decoder, JsonDecoder
from .errors import ConfigError, FatalKnockError, InvalidEvent, RetryableError
from .events import parse_event
from .knock import KnockClient
from .mapping import Mapper
from .metrics import Metrics
from .plan import Pending, Planner
from .source import TP, Source
from .tracker import OffsetTracker, PartitionTracker

if TYPE_CHECKING:
    from confluent_kafka import Message

log = logging.getLogger("knock_sink")

#: Knock's single-identify budget per second (tier 3), spent on bulk overflow.
SINGLE_IDENTIFY_PER_S = 60
#: Plans applied side by side. Two hide the gap between one plan's end and the next one's
#: first request (bulk operation polling, waiting for the limiter); their users are disjoint,
#: so per-user order holds (see :meth:`consumer.plan.Planner.cut`, ``busy``).
PLANS_IN_FLIGHT = 2


class Origin:
    """Where one consumed message came from and what is still owed on it before its offset may
    be resolved. Not the message itself: a backfill reading ahead holds many of these, and the
    few that Knock rejects are read back from Kafka for the dead-letter topic (see
    :class:`~consumer.deadletter.Originals`)."""

    __slots__ = ("tp", "offset", "owed", "dead", "gen")

    def __init__(self, msg: Message) -> None:
        self.tp: TP = (msg.topic(), msg.partition())
        self.offset: int = msg.offset()
        self.owed = 1  # released by the ingest itself, so zero-op events resolve at once
        self.dead = False
        #: The partition's tracker generation this message was tracked in (see OffsetTracker).
        self.gen: PartitionTracker | None = None


@dataclass
class Summary:
    """What one run did; printed by the command line, read by tests."""

    consumed: int = 0
    applied: int = 0
    dead_lettered: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    notes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    knock_calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    users_sent: int = 0
    committed: dict[TP, int] = field(default_factory=dict)
    fatal: str | None = None


class Sink:
    """Run with :meth:`run`; stop from any thread (or a signal handler) with :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        *,
        decoder: Decoder | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        settings.require_runnable()
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.summary = Summary()
        self._clock = clock
        self._decoder = decoder or JsonDecoder()
        self._mapper = Mapper(settings.mapping)
        self._planner = Planner(nested=settings.knock.nested_merge)
        self._tracker = OffsetTracker()
        self._stop = threading.Event()
        self._knock_stop = threading.Event()
        self._knock = KnockClient.from_settings(settings.knock, stop=self._knock_stop)
        knock_limits = settings.knock.rate_limits == "knock"
        self._applier = Applier(
            self._knock,
            bulk_size=settings.knock.bulk_size,
            concurrency=settings.knock.concurrency,
            item_attempts=settings.sink.item_attempts,
            singles=SINGLE_IDENTIFY_PER_S if knock_limits else 0,
            entity_gap=1.0 if knock_limits else 0.0,
            clock=clock,
        )
        # Users per plan: under Knock's limits one bulk call's worth (a second of tier-1 budget)
        # plus the single-identify overflow; without limits, one bulk call per worker, sent
        # side by side.
        self._flush_users = (
            settings.knock.bulk_size + SINGLE_IDENTIFY_PER_S
            if knock_limits
            else settings.knock.bulk_size * settings.knock.concurrency
        )
        # Under Knock's limits each level of a plan is a paced bulk call: keep plans to one, so
        # a user's next non-foldable update waits for the next (full) call, not a near-empty one.
        self._max_levels = 1 if knock_limits else None
        self._knock_limits = knock_limits
        #: A backfill under Knock's limits reads ahead before it sends (see :meth:`_holding`):
        #: the partitions' end targets, and how far each has been fetched.
        self._ends: dict[TP, int] | None = None
        self._fetched: dict[TP, int] = {}
        self._last_fetch = clock()
        self._worker = ThreadPoolExecutor(PLANS_IN_FLIGHT, thread_name_prefix="apply")
        #: Plans being applied, with the users each touches.
        self._inflight: dict[Future[Outcome], set[str]] = {}
        self._seq = 0
        self._last_flush = clock()
        self._last_commit = clock()
        self._source: Source | None = None
        self._dlq: DeadLetters | None = None
        self._originals: Originals | None = None
        #: Events Knock rejected, waiting to be read back and dead-lettered: (origin, kind, reason).
        self._unfetched: list[tuple[Origin, str, str]] = []
        self._refetch_at = 0.0
        self._looping = False

    def stop(self) -> None:
        """Ask the loop to stop fetching, drain and exit (safe from signal handlers). Before
        the loop has started (the start-up check retrying an unreachable Knock) it also
        interrupts Knock calls: there is nothing to drain yet."""
        self._stop.set()
        if not self._looping:
            self._knock_stop.set()

    # -- run -------------------------------------------------------------------------------

    def run(self, *, from_beginning: bool = False, until_end: bool = False) -> Summary:
        """Consume until :meth:`stop` (or, with ``until_end``, until every event up to the end
        offsets seen at start is applied and committed). Raises :class:`FatalKnockError` after
        committing what is safe when Knock rejects the configuration at run time, and
        :class:`ConfigError` when it rejects it at start."""
        topics = self.settings.kafka.topics
        # Kafka settings first: a bad client option is a bad setting, reported before any I/O.
        self._dlq = DeadLetters(self.settings.kafka)
        self._originals = Originals(self.settings.kafka)
        self._source = Source(
            self.settings.kafka,
            on_assign=self._tracker.add,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
            from_beginning=from_beginning,
        )
        try:
            self._knock.check()
        except FatalKnockError as exc:
            self._close()
            raise ConfigError("knock.api_key" if exc.status in (401, 403) else "knock.base_url",
                              str(exc)) from None
        except RetryableError:  # stopped while Knock was unreachable
            self._close()
            return self.summary
        self._looping = True
        self._dlq.ensure_topics(topics)
        ends = self._end_targets(from_beginning) if until_end else None
        if ends is not None and self._knock_limits:
            self._ends = ends
        if self.settings.sink.metrics_port:
            self.metrics.serve(self.settings.sink.metrics_port)
        # The loop allocates a few small objects per event and keeps them until Knock applied
        # them: with the default thresholds the collector rescans that young, live heap every
        # 700 allocations (up to a tenth of the loop's time in profiles).
        thresholds = gc.get_threshold()
        gc.set_threshold(50_000, 20, 100)
        try:
            while not self._stop.is_set():
                if ends is not None and self._reached(ends):
                    break
                self._step()
            self._drain()
        except FatalKnockError as exc:
            self.summary.fatal = str(exc)
            log.critical("Knock rejected the configuration, stopping: %s", exc)
            self._commit(force=True)
            raise
        finally:
            gc.set_threshold(*thresholds)
            self._close()
        return self.summary

    def _step(self) -> None:
        """One turn of the loop: fetch, collect a finished plan, start the next, commit."""
        assert self._source is not None and self._dlq is not None
        pending = self._tracker.pending()
        self.metrics.pending.set(pending)
        if pending >= self.settings.sink.max_pending:
            self._source.pause()
        elif pending <= self.settings.sink.max_pending // 2:
            self._source.resume()
        self.metrics.paused.set(1 if self._source.paused else 0)
        busy = bool(self._inflight) or len(self._planner) > 0
        self._ingest_all(self._source.consume(self.settings.kafka.consume_batch, 0.02 if busy else 0.2))
        self._dlq.poll()
        self._collect()
        self._send_unfetched()
        self._flush()
        self._commit()

    def _ingest_all(self, msgs: list[Message]) -> None:
        for msg in msgs:
            self._ingest(msg)
        if msgs and self._ends is not None:
            self._last_fetch = self._clock()
            for msg in msgs:
                self._fetched[(msg.topic(), msg.partition())] = msg.offset() + 1
        # Counted per batch: a prometheus counter takes a lock on every inc().
        self.metrics.consumed.inc(len(msgs))

    def _ingest(self, msg: Message) -> None:
        origin = Origin(msg)
        tp = origin.tp
        if not self._tracker.owns(tp):
            return  # fetched just before its partition was revoked: the new owner reads it
        if not self._tracker.accepts(tp, origin.offset):
            # The consumer went back (a partition revoked and given back within one fetch, a
            # reset): the events from here on come again, so start the partition afresh. Work
            # of the old generation still in flight can no longer resolve anything.
            log.info("%s[%d] rewound to %d: reading it again", tp[0], tp[1], origin.offset)
            self._planner.drop(lambda p: p.source.tp == tp)
            self._tracker.restart(tp)
        origin.gen = self._tracker.track(tp, origin.offset)
        self.summary.consumed += 1
        value = msg.value()
        try:
            if value is not None and len(value) > self.settings.kafka.max_message_bytes:
                raise InvalidEvent(
                    "oversize", f"{len(value)} bytes > {self.settings.kafka.max_message_bytes}"
                )
            mapped = self._mapper.map(parse_event(self._decoder.decode(value)))
        except InvalidEvent as exc:
            self._dead_letter(origin, exc.kind, exc.reason, msg)
        else:
            for note in mapped.notes:
                self.summary.notes[note] += 1
                self.metrics.notes.labels(note).inc()
            for op in mapped.ops:
                origin.owed += 1
                self._seq += 1
                self._planner.add(Pending(self._seq, op, origin, tp))
        self._release(origin)

    def _release(self, origin: Origin) -> None:
        origin.owed -= 1
        if origin.owed == 0:
            # Ignored when the partition was revoked, lost or rewound since it was tracked.
            self._tracker.resolve(origin.tp, origin.offset, origin.gen)

    def _dead_letter(self, origin: Origin, kind: str, reason: str, msg: Message | None = None) -> None:
        """Write ``origin``'s message (``msg``, or read back from Kafka when not given) to the
        dead-letter topic; its offset stays owed until the broker confirms. The caller still
        releases its own hold on ``origin``."""
        assert self._dlq is not None
        if origin.dead or not self._tracker.current(origin.tp, origin.gen):
            # One record per event, and none for an event that will be read again (by another
            # consumer, or by this one after a rewind).
            return
        origin.dead = True
        origin.owed += 1
        self.summary.dead_lettered[kind] += 1
        self.metrics.dead_lettered.labels(kind).inc()
        log.warning(
            "dead-lettering %s[%d]@%d: %s: %s", origin.tp[0], origin.tp[1], origin.offset, kind, reason
        )
        if msg is None:
            self._unfetched.append((origin, kind, reason))  # sent by _send_unfetched
        else:
            self._dlq.send(msg, kind, reason, lambda: self._release(origin))

    def _send_unfetched(self, timeout: float = 5.0) -> None:
        """Read back the events waiting in ``_unfetched`` and dead-letter them. What cannot be
        read now (the broker is away) stays owed and waits for the next call, at most one every
        few seconds; what was revoked meanwhile is left to the partition's new owner."""
        assert self._dlq is not None and self._originals is not None
        if not self._unfetched:
            return
        now = self._clock()
        if now < self._refetch_at:
            return
        self._refetch_at = now + 5.0
        waiting = [w for w in self._unfetched if self._tracker.current(w[0].tp, w[0].gen)]
        self._unfetched = []
        if not waiting:
            return
        got = self._originals.fetch(((o.tp[0], o.tp[1], o.offset) for o, _, _ in waiting), timeout)
        for origin, kind, reason in waiting:
            key = (origin.tp[0], origin.tp[1], origin.offset)
            if key not in got:
                self._unfetched.append((origin, kind, reason))
                continue
            msg = got[key]
            done = lambda o=origin: self._release(o)  # noqa: E731
            if msg is None:
                self._dlq.send_gone(*key, kind, reason, done)
            else:
                self._dlq.send(msg, kind, reason, done)
        if self._unfetched:
            log.warning("%d rejected events could not be read back for the dead-letter topic yet; "
                        "their offsets stay uncommitted", len(self._unfetched))

    # -- plans -----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Start the next plan when there is room in flight and a batch is due (full, or old
        enough). Its users are disjoint from those of the plans still in flight."""
        if len(self._inflight) >= PLANS_IN_FLIGHT or len(self._planner) == 0:
            return
        now = self._clock()
        due = len(self._planner) >= self._flush_users or (
            now - self._last_flush >= self.settings.sink.flush_interval
        )
        if (not due or self._holding(now)) and not self._stop.is_set():
            return
        busy: set[str] = set().union(*self._inflight.values())
        plan = self._planner.cut(
            now, max_users=self._flush_users, busy=busy, max_levels=self._max_levels
        )
        if not plan:
            return
        self._last_flush = now
        self._inflight[self._worker.submit(self._applier.apply, plan)] = plan.users()

    def _holding(self, now: float) -> bool:
        """Whether a backfill under Knock's limits is still reading ahead instead of sending.

        There the bulk budget, not the reading, bounds the run, and every send of a user
        before its last event is read is a send spent twice: so the backlog is read (and folded
        per user, see :meth:`consumer.plan.Planner.add`) up to the end targets before the first
        send, as far as ``sink.max_pending`` allows. It stops holding once the window is full,
        every partition is read to its target, or nothing came for a flush interval (an end
        that is never delivered, such as a transaction marker)."""
        assert self._source is not None
        if self._ends is None:
            return False
        if self._source.paused or self._tracker.pending() >= self.settings.sink.max_pending:
            return False
        if now - self._last_fetch >= self.settings.sink.flush_interval:
            return False
        if all(self._fetched.get(tp, 0) >= hi for tp, hi in self._ends.items()):
            self._ends = None  # read to the end: from here on, send as usual
            return False
        return True

    def _collect(self, timeout: float = 0) -> bool:
        """Take in the outcomes of finished plans, waiting up to ``timeout`` for all of them.
        Returns True when none is left in flight."""
        if self._inflight:
            done, _ = wait(list(self._inflight), timeout, return_when=ALL_COMPLETED)
            for future in [f for f in self._inflight if f in done]:
                del self._inflight[future]
                self._take(future.result())  # FatalKnockError surfaces here
        return not self._inflight

    def _take(self, out: Outcome) -> None:
        for p in out.done:
            self._release(p.source)
        self.summary.applied += len(out.done)
        self.metrics.applied.inc(len(out.done))
        for p, kind, reason in out.dead:
            self._dead_letter(p.source, kind, reason)
            self._release(p.source)
        if out.dead:
            self._refetch_at = 0.0  # new ones: read them back now, all in one go
            self._send_unfetched()
        self._retry(out)
        for op, n in out.calls.items():
            self.summary.knock_calls[op] += n
            self.metrics.knock_calls.labels(op).inc(n)
        self.summary.users_sent += out.users_sent
        self.metrics.users_sent.inc(out.users_sent)

    def _retry(self, out: Outcome) -> None:
        now = self._clock()
        by_delay: dict[float, list[Pending]] = defaultdict(list)
        for p, delay in out.retry:
            if self._tracker.current(p.source.tp, p.source.gen):
                by_delay[delay].append(p)
        for delay, items in by_delay.items():
            self.metrics.retries.labels("item" if delay else "blocked").inc(len(items))
            self._planner.retry(items, now + delay)

    # -- commits, rebalances, shutdown -----------------------------------------------------

    def _commit(self, force: bool = False) -> None:
        """Commit what the tracker vouches for: at most twice a second unless forced."""
        assert self._source is not None
        now = self._clock()
        if not force and now - self._last_commit < 0.5:
            return
        self._last_commit = now
        positions = self._tracker.committable()
        if positions and self._source.commit(positions):
            self._tracker.mark_committed(positions)
            self.summary.committed.update(positions)
            self.metrics.commits.inc()

    def _on_revoke(self, tps: list[TP]) -> None:
        """Partitions are leaving: (1) finish the plans in flight within the drain budget,
        (2) confirm dead-letter writes, (3) commit while they are still ours, (4) forget them,
        so that no late result can commit for them."""
        assert self._dlq is not None
        deadline = self._clock() + self.settings.sink.drain_timeout
        if not self._collect(timeout=max(0.0, deadline - self._clock())):
            log.warning("revoke: plans still in flight after the drain budget; their results "
                        "for %s will be ignored", tps)
        self._refetch_at = 0.0
        self._send_unfetched(max(0.5, deadline - self._clock()))
        self._dlq.flush(max(0.0, deadline - self._clock()))
        self._commit(force=True)
        gone = set(tps)
        self._planner.drop(lambda p: p.source.tp in gone)
        self._tracker.drop(tps)

    def _on_lost(self, tps: list[TP]) -> None:
        # Lost partitions may already belong to someone else: no commit, just forget them.
        gone = set(tps)
        self._planner.drop(lambda p: p.source.tp in gone)
        self._tracker.drop(tps)

    def _drain(self) -> None:
        """Stop fetching, apply what is buffered (within the drain budget), commit."""
        assert self._source is not None and self._dlq is not None
        self._source.pause()
        deadline = self._clock() + self.settings.sink.drain_timeout
        while self._clock() < deadline:
            if self._collect(timeout=0.05) and len(self._planner) == 0:
                break
            self._flush()
            # Keeps group membership and callbacks served; whatever was fetched before the
            # pause is taken in rather than dropped.
            self._ingest_all(self._source.consume(self.settings.kafka.consume_batch, 0.01))
            self._dlq.poll()
            self._send_unfetched()
        if self._inflight or len(self._planner):
            log.warning("drain budget spent: %d events will be replayed by the next run",
                        self._tracker.pending())
        self._knock_stop.set()
        self._refetch_at = 0.0
        self._send_unfetched(max(1.0, deadline - self._clock()))
        self._dlq.flush(max(1.0, deadline - self._clock()))
        self._commit(force=True)

    def _end_targets(self, from_beginning: bool) -> dict[TP, int]:
        assert self._source is not None
        marks = self._source.end_offsets(self.settings.kafka.topics)
        start = {} if from_beginning else self._source.committed(marks)
        return {tp: hi for tp, (lo, hi) in marks.items() if hi > max(lo, start.get(tp, 0))}

    def _reached(self, ends: dict[TP, int]) -> bool:
        return all(self.summary.committed.get(tp, -1) >= hi for tp, hi in ends.items())

    def _close(self) -> None:
        self._knock_stop.set()
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._applier.close()
        self._knock.close()
        if self._source is not None:
            self._source.close()
        if self._originals is not None:
            self._originals.close()
        if self._dlq is not None:
            self._dlq.flush(5.0)


def describe(summary: Summary) -> dict[str, Any]:
    """A JSON-friendly view of :class:`Summary`."""
    return {
        "consumed": summary.consumed,
        "applied": summary.applied,
        "dead_lettered": dict(summary.dead_lettered),
        "skipped_or_noted": dict(summary.notes),
        "knock_calls": dict(summary.knock_calls),
        "users_sent": summary.users_sent,
        "committed": {f"{t}[{p}]": o for (t, p), o in sorted(summary.committed.items())},
        **({"fatal": summary.fatal} if summary.fatal else {}),
    }
