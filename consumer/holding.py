"""A backfill's holding: read ahead, fold each user's events, send each user once.

A backfill (``--until-end``) does not send events as they are read: under Knock's limits it is
bounded by the users it sends, and without them (a local Knock) folding each user's events
into one update still saves most of the sends (case 2 of the benchmark: 50 calls against
475). :class:`Holding` owns the read-ahead policy (:class:`~consumer.flow.ReadAhead`), the
per-user folded state (:class:`~consumer.backlog.Backlog`) and which partition fetching is
focused on, and the loop (:mod:`consumer.sink`) asks it at each stage:

* ingest: :meth:`Holding.ingest` takes each record instead of the per-event path, and
  :meth:`Holding.fetched` each batch;
* each turn: :meth:`Holding.step` folds the events whose event-time turn has come
  (:mod:`consumer.ordering`; with ``sink.lateness`` 0, as read), focuses fetching (one partition
  at a time, the one with the fewest events left to its end first, unless a topic not keyed by
  user is being ordered: then its partitions are read side by side; under Knock's limits none
  while the users ready to send outlast reading the rest of the partition being read, until a
  user spills, see :data:`AHEAD_MARGIN`), packs the held users of partitions read to their end,
  feeds held users to the planner and, every :data:`TRIM_EVERY` seconds, hands freed memory
  back to the system (:func:`give_back_memory`);
* plans: :meth:`Holding.holds_back` says whether a due plan must still wait;
* outcomes: :func:`applied_events` and :func:`dead_letter_record` count and dead-letter a held
  user's folded update;
* commits: :meth:`Holding.committable` and :meth:`Holding.mark_committed`;
* rebalances: :meth:`Holding.forget` (True: the backfill must stop); shutdown: :meth:`Holding.close`.

It also computes where a backfill starts and ends (:func:`read_targets`) and whether it got there
(:func:`reached`), with or without holding. The loop's thread owns it: not thread-safe.
"""

from __future__ import annotations

import ctypes
import logging
import resource
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Final

from .backlog import Backlog, Held, HeldHandle
from .config import Settings
from .deadletter import DeadLetters
from .dispatch import Dispatch
from .errors import InvalidEvent, RegistryUnavailable
from .flow import ReadAhead, ReadRate
from .intake import Intake
from .limits import per_second
from .mapping import Mapped
from .metrics import Metrics
from .ops import Identify, Merge, Op
from .ordering import EventOrder, event_time, users_of
from .plan import Pending
from .records import Partition, Record, Replay, Source
from .stalls import REGISTRY_BACKOFF
from .tracker import Handle, OffsetTracker

log = logging.getLogger("knock_sink")

#: Seconds between two hand-backs of freed memory to the system during a backfill (see
#: :func:`give_back_memory`).
TRIM_EVERY: Final = 5.0
#: While reading ahead, fetching pauses once the users ready to send (those of partitions read
#: to their end) would keep Knock busy longer than reading the rest of the partition being
#: read takes, plus this many seconds: reading further ahead sends no one sooner, it only holds
#: more users (once reading got faster than sending, case 4 of the benchmark peaked 31 MB
#: higher without it, with a second partition's users waiting). Not once users spilled.
AHEAD_MARGIN: Final = 10.0
#: Seconds of fetching the read rate is averaged over (see :class:`~consumer.flow.ReadRate`).
RATE_WINDOW: Final = 5.0


class Holding:
    """Read-ahead, held users and focus for one backfill.

    :param ends: each partition's end target (:func:`read_targets`).
    :param starts: the offset each partition's reading starts from (:func:`read_targets`).
    :param dispatch: the loop's plans: held users go to its planner, in plans sized for held
        users (:meth:`~consumer.dispatch.Dispatch.hold`, set here).
    :param intake: the loop's intake: it maps records, counts outcomes and queues ops.
    :param forget: the loop's forget, called with a partition that rewound.
    :param stop: the loop's stop event: a registry wait ends when it is set.
    """

    def __init__(
        self,
        ends: dict[Partition, int],
        starts: dict[Partition, int],
        *,
        settings: Settings,
        dispatch: Dispatch,
        intake: Intake,
        source: Source,
        tracker: OffsetTracker,
        dlq: DeadLetters,
        metrics: Metrics,
        forget: Callable[[list[Partition]], None],
        stop: threading.Event,
        clock: Callable[[], float],
    ) -> None:
        sink = settings.sink
        self._max_pending = sink.max_pending
        dispatch.hold()
        self._sizing = dispatch.sizing
        self._planner = dispatch.planner
        self._intake = intake
        self._source = source
        self._tracker = tracker
        self._dlq = dlq
        self._metrics = metrics
        self._forget = forget
        self._stop = stop
        self._clock = clock
        # At least a second: moving from one partition to the next is a pause in fetching
        # too (see _focus), not an end that is never delivered.
        self._read_ahead = ReadAhead(
            ends, starts=starts, idle=max(1.0, sink.flush_interval), now=clock()
        )
        self._rate = ReadRate(RATE_WINDOW)
        self._ticked = clock()
        #: Users a second Knock takes: a full plan per bulk call (a group's share of the budget
        #: makes it less, so reading ahead pauses later than it could, never too early).
        #: ``None`` without Knock's limits: sending never outlasts reading, so no pause.
        self._send_rate = (
            self._sizing.users_per_plan * per_second("bulk_identify")
            if settings.knock.paced
            else None
        )
        self._share = HeldShare(
            sink.backfill_memory_mb << 20, settings.kafka.prefetch_kbytes() << 10
        )
        # Set at every turn: the labelled gauges looked up once.
        self._held_gauges = (
            metrics.held_states.labels("memory"),
            metrics.held_states.labels("disk"),
            metrics.held_budget,
        )
        budget = self._share.now()
        self._backlog = Backlog(
            nested=settings.knock.nested_merge, work_dir=sink.work_dir, memory_bytes=budget
        )
        log.info(
            "backfill: %d MiB of the %d MiB memory budget left for held users",
            budget >> 20,
            sink.backfill_memory_mb,
        )
        self._focused: set[Partition] | None = None
        self._trimmed = clock()
        # Topics not keyed by user: events fold in event-time order across partitions (see
        # consumer.ordering), so the partitions are read side by side, not one at a time (the
        # limit: see consumer.ordering.PendingOrder).
        self._order = (
            EventOrder(
                self._fold,
                ends=ends,
                positions=source.positions,
                limit=max(1, sink.max_pending // 4),
                pause=source.pause_partitions,
                resume=source.resume_partitions,
                on_late=metrics.late_events.inc,
                clock=clock,
            )
            if sink.lateness > 0
            else None
        )

    # -- ingest ----------------------------------------------------------------------------

    def ingest(self, rec: Record, tp: Partition) -> bool:
        """A backfill's record: folded into its user's held state (see :mod:`consumer.backlog`),
        or, when it does not fold, on the per-event path. False when the consumer rewound, or
        the loop was stopped while the registry was away (the record was not read): the
        caller stops taking in this batch."""
        backlog = self._backlog
        if backlog.frozen:
            return False
        mapped: Mapped | None = None
        bad: InvalidEvent | None = None
        attempt = 0
        while mapped is None and bad is None:
            try:
                mapped, stamp, kind = self._intake.map(rec)
            except InvalidEvent as exc:
                bad = exc
            except RegistryUnavailable as exc:
                # A backfill holding users cannot set one record aside as the live path does
                # (stalls.py): its users' later events would fold past it. It waits instead;
                # its group is its own, so nobody else waits with it.
                delay = REGISTRY_BACKOFF.delay(attempt)
                attempt += 1
                self._metrics.retries.labels("registry").inc()
                log.warning("schema registry unavailable, the backfill waits %.1fs: %s", delay, exc)
                if self._stop.wait(delay):
                    return False
        if not backlog.read(tp, rec.offset):
            log.warning(
                "%s[%d] rewound to %d during a backfill: stopping (the next run resumes "
                "from the last commit)",
                tp[0],
                tp[1],
                rec.offset,
            )
            self._forget([tp])
            return False
        if bad is not None:
            handle = self._tracker.track(tp, rec.offset)
            self._dlq.park(handle, bad.kind, bad.reason, rec)
            handle.release()
            self._intake.count_invalid()
            return True
        assert mapped is not None
        self._intake.count(kind, mapped)
        ops = self._fresh(mapped.ops, tp, rec.offset)
        order = self._order
        users = users_of(ops) if order is not None and ops else ()
        if order is None or not ops or order.as_read(tp, rec.offset, users, rec.key):
            self._fold((tp, rec.offset, ops, None))  # nothing waits: no handle, no time read
            return True
        # Tracked while it waits, so that no commit passes it before it is folded.
        handle = self._tracker.track(tp, rec.offset)
        seen = self._clock()
        order.add(
            (tp, rec.offset, ops, handle),
            tp,
            rec.offset,
            users,
            lambda: event_time(stamp, rec.timestamp, seen),
        )
        return True

    def _fresh(self, ops: list[Op], tp: Partition, offset: int) -> list[Op]:
        """``ops`` without a merge repeating the ``messageId`` of one taken in elsewhere (the
        intake's memory of merges: one for both paths)."""
        for op in ops:  # a loop, not any() over a generator: this runs for every event
            if op.__class__ is Merge:
                break
        else:
            return ops
        return [op for op in ops if not self._intake.repeats(op, tp, offset)]

    def _fold(self, unit: tuple[Partition, int, list[Op], Handle | None]) -> None:
        """Fold one event's ops into their users' held state, or queue them on the per-event
        path when they do not fold (see :mod:`consumer.backlog`)."""
        tp, offset, ops, handle = unit
        rest = self._backlog.fold(tp, offset, ops, self._add_held) if ops else []
        if rest:
            if handle is None:
                handle = self._tracker.track(tp, offset)
            for op in rest:
                self._intake.queue(op, handle, tp)
        if handle is not None:
            handle.release()

    def fetched(self, records: list[Record]) -> None:
        """After a non-empty batch: spill past the memory budget (users of the partitions read
        to their end first: they will not change), note how far each partition was read."""
        backlog = self._backlog
        backlog.memory_bytes = self._share.now()
        if backlog.over_budget():
            before = backlog.spilled
            backlog.spill(self._read_ahead.finished())
            self._metrics.spilled_states.inc(backlog.spilled - before)
            give_back_memory()
            log.info(
                "backfill: memory budget reached, %d held users spilled, %d states now on disk "
                "(%d MiB left for held users)",
                backlog.spilled - before,
                backlog.rows,
                backlog.memory_bytes >> 20,
            )
        self._read_ahead.fetched(records, self._clock())
        self._rate.add(len(records))

    def _add_held(self, held: Held) -> None:
        """Queue a held user's folded state as one update (fed, or ejected at a barrier)."""
        self._intake.queue_held(Identify(held.user_id, held.props), self._backlog.handle(held))

    # -- each turn -------------------------------------------------------------------------

    def step(self) -> None:
        """One turn of the loop: focus fetching, pack the held users of partitions read to
        their end (:meth:`~consumer.backlog.Backlog.compact`), top the planner up with held
        users, and show what is held in the metrics."""
        if self._order is not None:
            self._order.step()
        now = self._clock()
        self._rate.tick(
            now - self._ticked, fetching=self._focused != set() and not self._source.paused
        )
        self._ticked = now
        finished = self._read_ahead.finished()
        reading_ahead = self._focus(now, finished)
        backlog = self._backlog
        if len(backlog):
            backlog.compact(finished)
            self._feed(finished if reading_ahead else None)
        in_memory, on_disk, share = self._held_gauges
        in_memory.set(backlog.in_memory)
        on_disk.set(backlog.rows)
        share.set(backlog.memory_bytes or 0)
        if now - self._trimmed >= TRIM_EVERY:
            self._trimmed = now
            give_back_memory()

    def _read_apart(self) -> bool:
        """Whether partitions may be read one at a time: no event-time order, or every topic
        keyed by user (see :data:`consumer.ordering.KEYED_AFTER`)."""
        order = self._order
        return order is None or all(
            order.keyed(topic) for topic in {tp[0] for tp in self._read_ahead.ends}
        )

    def _focus(self, now: float, finished: set[Partition]) -> bool:
        """While a backfill reads ahead, read one partition at a time: each one read to its end
        (``finished``) frees its users to be sent (topics are keyed by user) while the next is
        read; none while the users ready to send outlast reading the rest of it
        (:meth:`_ahead`). Returns whether it is reading ahead.

        The partition with the fewest events left to its end goes first. Why: Knock has nothing
        to do until the first partition is read to its end, so a skewed topic's smallest
        partition (or, resuming, the one nearest its end) shortens that wait. The one being
        read only gets nearer its end, so it stays first until it is finished."""
        reading_ahead = self._reading_ahead(now)
        if reading_ahead and self._read_apart():
            read_ahead = self._read_ahead
            left = [tp for tp in read_ahead.ends if tp not in finished]
            first = min(left, key=lambda tp: (read_ahead.left(tp), tp)) if left else None
            keep = None if first is None else {first}
            if first is not None and self._ahead(first, finished):
                keep = set()  # a pause of its own: not idleness, which would end the read-ahead
                self._read_ahead.waiting_from(now)
            elif keep != self._focused:
                self._read_ahead.waiting_from(now)
        else:
            keep = None
        self._focused = keep
        self._source.focus(keep)
        return reading_ahead

    def _ahead(self, reading: Partition, finished: set[Partition]) -> bool:
        """Whether the users ready to send would keep Knock busy longer than reading the rest
        of ``reading`` takes, by more than :data:`AHEAD_MARGIN` seconds (at the recent read
        rate; never before a second of it, a fifth of :data:`RATE_WINDOW`)."""
        # Once held users spill, the budget bounds the memory, and reading slows with each
        # spill below the rate measured: paused on it, a 2M-event backfill of the benchmark
        # ran its sends dry while it read (277 to 284 s in four runs, against 221 s without).
        if self._backlog.spilled or self._send_rate is None:
            return False
        rate = self._rate.per_second()
        if rate is None:
            return False
        ready = self._backlog.waiting(finished) + len(self._planner)
        # Two plans at least: while reading ahead a plan waits until it is full (holds_back),
        # and a pause must not leave it waiting for users that are not being read.
        if ready < 2 * self._sizing.users_per_plan:
            return False
        return ready / self._send_rate > self._read_ahead.left(reading) / rate + AHEAD_MARGIN

    def _feed(self, finished: set[Partition] | None) -> None:
        """Top the planner up with held users: two plans' worth, so a cut is always full. While
        reading ahead (``finished``: the partitions read to their end), only users of those."""
        room = 2 * self._sizing.users_per_plan - len(self._planner)
        if room <= 0 or finished == set():
            return
        taken = (
            self._backlog.take(room)
            if finished is None
            else self._backlog.take_finished(finished, room)
        )
        for held in taken:
            self._add_held(held)

    # -- plans -----------------------------------------------------------------------------

    def holds_back(self, now: float) -> bool:
        """Whether a plan that is due must still wait: the backfill is reading ahead."""
        if not self._reading_ahead(now):
            return False
        # Users of partitions read to their end are fed while reading: a full plan of them goes.
        return len(self._planner) < self._sizing.users_per_plan

    def _reading_ahead(self, now: float) -> bool:
        full = self._source.paused or self._tracker.pending() >= self._max_pending
        return self._read_ahead.holding(now, full=full, short=self._short)

    def _short(self) -> bool:
        """Whether a partition being read (the focused one, else every one not read to its end)
        is short of its end target by the consumer's position. Why: a second without a record
        alone stopped the read-ahead, and the users of the partition being read could go out
        before their last events were read, to be sent again (a slow first fetch of the next
        partition, or the loop itself away that long: a full collection, a large spill). Past
        its end by position, a partition whose last record was a transaction marker (never
        delivered) does not hold the backfill."""
        ends, finished = self._read_ahead.ends, self._read_ahead.finished()
        reading = [
            tp
            for tp in (self._focused if self._focused is not None else ends)
            if tp not in finished
        ]
        if not reading:
            return False
        positions = self._source.positions(reading)
        return any(positions.get(tp, -1) < ends[tp] for tp in reading)

    # -- commits, rebalances, shutdown -----------------------------------------------------

    def committable(self, tracker: OffsetTracker) -> dict[Partition, int]:
        """Commit positions that moved: held users' offsets bound the tracker's (see
        :meth:`consumer.backlog.Backlog.committable`)."""
        return self._backlog.committable(tracker.first_unresolved)

    def mark_committed(self, positions: dict[Partition, int]) -> None:
        self._backlog.mark_committed(positions)

    def forget(self, gone: set[Partition]) -> bool:
        """``gone`` left this consumer (revoked, lost or rewound). True when the backfill must
        stop (the caller stops the loop and drops every queued op); False when nothing left, or
        it already stopped."""
        if not gone or self._backlog.frozen:
            return False
        # A held user may span partitions, and its folded state cannot be split back into
        # events: a backfill that loses a partition stops, with what it committed so far.
        if not self._stop.is_set():  # else the consumer closing, or a drain
            log.warning(
                "backfill: %s left this consumer; stopping (the next run resumes "
                "from the last commit)",
                sorted(gone),
            )
        self._backlog.freeze()
        if self._order is not None:
            self._order.drop(list(self._read_ahead.ends))
        return True

    def close(self) -> None:
        """Drop the backlog's spill file."""
        self._backlog.close()


def held_budget(budget: int, prefetch: int, rss: int) -> int:
    """What of a backfill's memory budget (``sink.backfill_memory_mb``, in bytes) its held
    users may take: the budget is the process's, so what the process holds before it holds
    anyone comes off first: its resident size ``rss`` (the interpreter, its libraries and
    the Kafka clients) and twice librdkafka's prefetch allowance
    ``prefetch`` (measured: the fetch buffers live beside the queued messages). At least a
    quarter of the budget is left to them, so a budget below the process's own size still
    holds some users between spills."""
    return max(budget - rss - 2 * prefetch, budget // 4)


class HeldShare:
    """What of a backfill's memory budget (``sink.backfill_memory_mb``, in bytes) its held users
    may take now: :func:`held_budget` at the start, then less by however far the process's
    resident size (``read``) has been seen past the budget, never below a quarter of it.

    Why: the held users' size is an estimate of them alone. Beside them the process holds
    users out for sending and their request bodies, the allocator's free blocks, caches; with
    them a 2M-event backfill of the benchmark (case 5) peaked at 322 MB on its 256 MiB budget.
    Lowered only, never raised back: freed memory stays with the process (the allocator keeps
    most of it), so its resident size does not come down as users spill, and a share raised
    again would chase it.
    """

    def __init__(self, budget: int, prefetch: int, read: Callable[[], int] | None = None) -> None:
        self._read = read or resident_bytes
        self._budget = budget
        self._start = held_budget(budget, prefetch, self._read())
        self._floor = budget // 4
        self._peak = budget

    def now(self) -> int:
        """The share now, after reading the resident size once."""
        rss = self._read()
        if rss > self._peak:
            self._peak = rss
        return max(self._start - (self._peak - self._budget), self._floor)


def give_back_memory() -> None:
    """Hand the allocator's free pages back to the system: glibc's ``malloc_trim(0)``, where
    the C library has one (elsewhere nothing). Why: a backfill frees each user's state as it is
    sent, but glibc keeps freed chunks in its arenas (one per allocating thread: the workers
    build every request body) and hands back only what lies at the top of an arena, so the
    resident size stays at its high-water mark. A trim takes 2 to 4 ms (measured, 1M-event
    backfill)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to hand back this way
        return None


_malloc_trim = _find_malloc_trim()


def resident_bytes() -> int:
    """This process's resident size now: ``/proc/self/statm`` where there is one. Elsewhere
    the peak so far (``ru_maxrss``); not on Linux, where that peak is carried over fork and
    exec from the parent (a child of a large process would see its parent's size)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak << 10  # macOS: bytes; else KiB


def applied_events(done: Iterable[Pending]) -> int:
    """Events that ``done`` (applied ops) stand for: a held user's update counts all it folds."""
    applied = 0
    for p in done:
        applied += 1
        if p.source.__class__ is HeldHandle:
            applied += p.source.held.events - 1
    return applied


def dead_letter_record(p: Pending) -> Record | None:
    """What to dead-letter for a rejected op: for a held user's update, what
    :meth:`~consumer.backlog.Held.record` gives; ``None`` (the dead letters read the original
    back from its topic) for an event's op, or a held user of one event."""
    return p.source.held.record() if p.source.__class__ is HeldHandle else None


# -- a backfill's end ---------------------------------------------------------------------


def read_targets(
    source: Source, topics: Iterable[str], from_beginning: bool, replay: Replay | None = None
) -> tuple[dict[Partition, int], dict[Partition, int]]:
    """``(ends, starts)`` for ``--until-end``: each partition's end target, the high watermark
    seen now (or the replay's stop), and the offset its reading starts from (the replay's
    start, else the group's commit unless ``from_beginning``, and never below the low
    watermark), for the partitions with something left to read between the two."""
    marks = source.end_offsets(topics)
    start = {} if from_beginning else source.committed(marks)
    if replay is not None:
        start.update(source.start_offsets())
        stops = source.stop_offsets()
        marks = {tp: (lo, min(hi, stops.get(tp, hi))) for tp, (lo, hi) in marks.items()}
    starts = {tp: max(lo, start.get(tp, 0)) for tp, (lo, _) in marks.items()}
    ends = {tp: hi for tp, (_, hi) in marks.items() if hi > starts[tp]}
    return ends, {tp: starts[tp] for tp in ends}


def reached(
    ends: dict[Partition, int],
    committed: dict[Partition, int],
    source: Source,
    busy: Callable[[], bool],
) -> bool:
    """Whether every end target is committed. ``busy``: whether events are still pending,
    queued or in flight (asked only when some target is not committed)."""
    short = [tp for tp, hi in ends.items() if committed.get(tp, -1) < hi]
    if not short:
        return True
    # A transactional topic (repartition writes one) ends in a commit marker, never
    # delivered nor tracked: read past it with nothing left to apply is the end too.
    if busy():
        return False
    positions = source.positions(short)
    return all(positions.get(tp, -1) >= ends[tp] for tp in short)
