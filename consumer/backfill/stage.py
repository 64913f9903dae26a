"""The backfill stage: read ahead, fold each user's events, send each user once.

A backfill (``--until-end``) does not send events as they are read: under Knock's limits it is
bounded by the users it sends, and without them (a local Knock) folding each user's events
into one update still saves most of the sends. :class:`BackfillStage` is the
:class:`~consumer.stage.Stage` of a backfill; it maps each record with the same
:class:`~consumer.ingest.Ingest` as the live intake, folds its ops into the users' held state
(:class:`~consumer.backfill.backlog.Backlog`; what does not fold goes to the planner per event,
on a tracker handle), and each turn focuses fetching (:class:`~consumer.backfill.focus.Focus`),
packs the held users of partitions read to their end, and feeds held users to the planner.
Topics not keyed by user fold in event-time order across partitions
(:class:`~consumer.ordering.EventOrder`, with ``sink.lateness`` above 0).

The loop's thread owns it: not thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from ..config import Settings
from ..deadletter import DeadLetters
from ..dispatch import Dispatch
from ..errors import ConfigError, FatalRegistryError, InvalidEvent, RegistryUnavailable
from ..fetch import FetchControl
from ..handles import EventHandle
from ..ingest import Ingest
from ..mapping import Mapped
from ..metrics import Metrics
from ..ops import Identify, Merge, Op
from ..ordering import EventOrder, RecentIds, event_time, users_of
from ..records import Partition, Record, Source, Worker
from ..stalls import REGISTRY_BACKOFF
from ..tracker import OffsetTracker
from .backlog import Backlog, Held
from .focus import Focus, send_rate
from .memory import TRIM_EVERY, HeldShare, give_back_memory

log = logging.getLogger("knock_sink")

#: Why partitions far ahead in a backfill's event-time order wait (see :class:`FetchControl`).
ORDER: Final = "backfill-order"

#: What waits in the event-time order: an event's partition, offset, ops, the handle that keeps
#: the commit from passing it, and its stamps.
Unit = tuple[Partition, int, list[Op], EventHandle | None, tuple[float, int | None, object]]


class BackfillStage:
    """Read-ahead, held users and focus for one backfill.

    :param ends: each partition's end target (:func:`~consumer.backfill.targets.read_targets`).
    :param starts: the offset each partition's reading starts from.
    :param dispatch: the loop's plans, sized for held users by the loop.
    :param stop: the loop's stop event: a registry wait ends when it is set.
    :param worker: this process is one worker of several (``--worker``): a topic found not
        keyed by user stops it (:meth:`_refuse`).
    """

    def __init__(
        self,
        ends: dict[Partition, int],
        starts: dict[Partition, int],
        *,
        settings: Settings,
        ingest: Ingest,
        dispatch: Dispatch,
        source: Source,
        fetch: FetchControl,
        tracker: OffsetTracker,
        dlq: DeadLetters,
        metrics: Metrics,
        stop: threading.Event,
        clock: Callable[[], float],
        worker: Worker | None = None,
    ) -> None:
        sink = settings.sink
        self._ingest = ingest
        self._source = source
        self._dispatch = dispatch
        self._tracker = tracker
        self._dlq = dlq
        self._metrics = metrics
        self._stop = stop
        self._clock = clock
        self._share = HeldShare(
            sink.backfill_memory_mb << 20, settings.kafka.prefetch_kbytes() << 10
        )
        # Set at every turn: the labelled gauges looked up once.
        self._held_gauges = (
            metrics.held_states.labels("memory"),
            metrics.held_states.labels("disk"),
            metrics.held_budget,
        )
        self._backlog = Backlog(
            nested=settings.knock.nested_merge, work_dir=sink.work_dir, budget=self._share.now
        )
        log.info(
            "backfill: %d MiB of the %d MiB memory budget left for held users",
            (self._backlog.memory_bytes or 0) >> 20,
            sink.backfill_memory_mb,
        )
        self._trimmed = clock()
        # Merges repeating the ``messageId`` of one taken in elsewhere are skipped.
        self._merges = (
            RecentIds(sink.merge_ids, metrics.duplicate_merges.inc) if sink.merge_ids else None
        )
        # Topics not keyed by user: events fold in event-time order across partitions, so the
        # partitions are read side by side, not one at a time (the limit: see
        # consumer.ordering.PendingOrder).
        self._order = (
            EventOrder(
                self._fold,
                ends=ends,
                positions=source.positions,
                limit=max(1, sink.max_pending // 4),
                pause=fetch.holder(ORDER),
                resume=fetch.releaser(ORDER),
                on_late=metrics.late_events.inc,
                on_unkeyed=self._refuse if worker is not None else lambda topic: None,
                clock=clock,
            )
            if sink.lateness > 0
            else None
        )
        self._focus = Focus(
            ends,
            starts,
            idle=sink.read_ahead_idle,
            send_rate=send_rate(dispatch.sizing.users_per_plan, settings.knock.paced),
            max_pending=sink.max_pending,
            backlog=self._backlog,
            dispatch=dispatch,
            tracker=tracker,
            fetch=fetch,
            source=source,
            order=self._order,
            now=clock(),
        )

    @property
    def fatal(self) -> FatalRegistryError | None:
        return None  # a refusal is raised from submit: what was held cannot be applied

    def _refuse(self, topic: str) -> None:
        """A worker reads only its share of the partitions, so a user whose events are on
        partitions of several workers would be folded by each apart, out of event-time
        order: such a topic needs one process (or ``repartition`` first). Raised from
        :meth:`submit`, as a rule before this topic's first send: its users are held until
        all of this worker's partitions holding them are read, and the verdict comes within
        its first records (a partition of it read to its end before then may have sent its
        users)."""
        raise ConfigError(
            "--worker",
            f"topic {topic} is not keyed by user (a user's events are on several partitions), "
            "so its backfill cannot be split over workers: run it in one process (without "
            "--workers/--worker), or copy it into a topic keyed by user with `knock-sink "
            "repartition` and backfill that (docs/repartition.md)",
        )

    # -- the stage's verbs -----------------------------------------------------------------

    def poll(self) -> None:
        pass

    def submit(self, records: list[Record]) -> None:
        """Take in a batch: each record folded into its user's held state, or, when it does not
        fold, on the per-event path; then spill past the memory budget. Stops taking in the
        batch when the consumer rewound (the backfill stops) or the loop was stopped while the
        registry was away (the rest was not read)."""
        tracker = self._tracker
        seen = time.time()  # wall time, once a batch: the freshness metrics compare it to stamps
        for rec in records:
            tp = (rec.topic, rec.partition)
            # One fetched just before its partition was revoked is left to the new owner.
            if tracker.owns(tp) and not self._take(rec, tp, seen):
                break
        self._ingest.counted(len(records))
        if records:
            self._fetched(records)

    def feed(self) -> None:
        """Fold the events whose event-time turn has come, focus fetching, pack the held users
        of partitions read to their end (:meth:`~consumer.backfill.backlog.Backlog.compact`),
        top the planner up with held users, and show what is held in the metrics."""
        if self._order is not None:
            self._order.step()
        now = self._clock()
        self._read_past_markers()
        finished = self._focus.read_ahead.finished()
        reading_ahead = self._focus.step(now, finished)
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

    def holds_back(self, now: float) -> bool:
        return self._focus.holds_back(now)

    def holds_users(self) -> bool:
        """Whether held users are still to be sent (in memory or spilled): they hold no
        tracked offset, so a backfill read to its end is not applied until they are."""
        return len(self._backlog) > 0

    def committable(self) -> dict[Partition, int]:
        """Commit positions that moved: held users' offsets bound the tracker's (see
        :meth:`consumer.backfill.backlog.Backlog.committable`)."""
        return self._backlog.committable(self._tracker.first_unresolved)

    def mark_committed(self, positions: dict[Partition, int]) -> None:
        self._tracker.mark_committed(positions)
        self._backlog.mark_committed(positions)

    def forget(self, gone: set[Partition]) -> bool:
        """True when the backfill must stop: a held user may span partitions, and its folded
        state cannot be split back into events, so a backfill that loses a partition stops,
        with what it committed so far. False when nothing left, or it already stopped."""
        if not gone or self._backlog.frozen:
            return False
        if not self._stop.is_set():  # else the consumer closing, or a drain
            log.warning(
                "backfill: %s left this consumer; stopping (the next run resumes "
                "from the last commit)",
                sorted(gone),
            )
        self._backlog.freeze()
        if self._order is not None:
            self._order.drop(list(self._focus.read_ahead.ends))
        return True

    def flush(self) -> None:
        pass  # nothing waits for a turn a drain can give: what is held goes in plans

    def close(self) -> None:
        """Drop the backlog's spill file."""
        self._backlog.close()

    # -- ingest ----------------------------------------------------------------------------

    def _take(self, rec: Record, tp: Partition, seen: float) -> bool:
        """One record: False when the rest of the batch is not taken in: the consumer rewound
        (the backfill stops, see :meth:`_rewound`), or the loop was stopped while the registry
        was away (the record was not read)."""
        backlog = self._backlog
        if backlog.frozen:
            return False
        mapped: Mapped | None = None
        bad: InvalidEvent | None = None
        attempt = 0
        while mapped is None and bad is None:
            try:
                mapped, stamp, kind = self._ingest.map_record(rec)
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
            self._rewound(tp)
            return False
        if bad is not None:
            handle = self._track(tp, rec.offset)
            self._dlq.park(handle, bad.kind, bad.reason, rec)
            handle.release()
            self._ingest.count_invalid()
            return True
        assert mapped is not None
        self._ingest.count(kind, mapped)
        self._dispatch.check_key(tp[0], rec.key, mapped.ops)
        ops = self._fresh(mapped.ops, tp, rec.offset)
        stamps = (seen, rec.timestamp, stamp)
        order = self._order
        users = users_of(ops) if order is not None and ops else ()
        if order is None or not ops or order.as_read(tp, rec.offset, users, rec.key):
            self._fold((tp, rec.offset, ops, None, stamps))  # nothing waits: no handle
            return True
        # Tracked while it waits, so that no commit passes it before it is folded.
        handle = self._track(tp, rec.offset)
        handle.stamp(*stamps)
        read_at = self._clock()
        order.add(
            (tp, rec.offset, ops, handle, stamps),
            tp,
            rec.offset,
            users,
            lambda: event_time(stamp, rec.timestamp, read_at),
        )
        return True

    def _rewound(self, tp: Partition) -> None:
        """The consumer went back in ``tp``: what is held can no longer be trusted, so the
        backfill stops (the next run resumes from the last commit), as on a revoke."""
        self.forget({tp})
        self._stop.set()
        self._dispatch.drop(lambda p: True)
        self._tracker.drop([tp])

    def _track(self, tp: Partition, offset: int) -> EventHandle:
        partition = self._tracker.partition(tp)
        if partition is None:
            raise KeyError(f"partition {tp} is not owned; add() it first")
        return EventHandle.track(partition, offset)

    def _fresh(self, ops: list[Op], tp: Partition, offset: int) -> list[Op]:
        """``ops`` without a merge repeating the ``messageId`` of one taken in elsewhere."""
        for op in ops:  # a loop, not any() over a generator: this runs for every event
            if op.__class__ is Merge:
                break
        else:
            return ops
        merges = self._merges
        if merges is None:
            return ops
        return [op for op in ops if not merges.repeats(op, tp, offset)]

    def _fold(self, unit: Unit) -> None:
        """Fold one event's ops into their users' held state, or queue them on the per-event
        path when they do not fold (see :mod:`consumer.backfill.backlog`)."""
        tp, offset, ops, handle, stamps = unit
        rest = self._backlog.fold(tp, offset, ops, self._add_held, stamps) if ops else []
        if rest:
            if handle is None:
                handle = self._track(tp, offset)
                handle.stamp(*stamps)
            for op in rest:
                handle.hold()
                self._dispatch.queue(op, handle, tp)
        if handle is not None:
            handle.release()

    def _read_past_markers(self) -> None:
        """Take the consumer's position, up to its end target, as how far each partition not
        yet read to its end is read. Why: transaction markers and aborted records take offsets
        and are never delivered, so by its last record a partition of a transactional topic
        never reaches its end: it was never finished (its users never sent while the next was
        read, fetching focused on it until a second without a record), and its commit stopped
        short of the end offset. Not once the loop stops or the backlog froze: a batch can then
        be left part-taken, and the position is past records never read."""
        if self._stop.is_set() or self._backlog.frozen:
            return
        read_ahead = self._focus.read_ahead
        ends = read_ahead.ends
        short = [tp for tp in ends if read_ahead.left(tp)]
        if not short:
            return
        positions = {
            tp: min(at, ends[tp]) for tp, at in self._source.positions(short).items() if tp in ends
        }
        read_ahead.read_to(positions)
        for tp, at in positions.items():
            self._backlog.read_to(tp, at)

    def _add_held(self, held: Held) -> None:
        """Queue a held user's folded state as one update (fed, or ejected at a barrier); its
        handle starts held, and it has no lane: it never folds on add."""
        self._dispatch.queue(Identify(held.user_id, held.props), self._backlog.handle(held))

    def _fetched(self, records: list[Record]) -> None:
        """Spill past the memory budget (users of the partitions read to their end first: they
        will not change), note how far each partition was read."""
        backlog = self._backlog
        if backlog.over_budget():
            before = backlog.spilled
            backlog.spill(self._focus.read_ahead.finished())
            self._metrics.spilled_states.inc(backlog.spilled - before)
            give_back_memory()
            log.info(
                "backfill: memory budget reached, %d held users spilled, %d states now on disk "
                "(%d MiB left for held users)",
                backlog.spilled - before,
                backlog.rows,
                (backlog.memory_bytes or 0) >> 20,
            )
        self._focus.fetched(records, self._clock())

    def _feed(self, finished: set[Partition] | None) -> None:
        """Top the planner up with held users: two plans' worth, so a cut is always full. While
        reading ahead (``finished``: the partitions read to their end), only users of those."""
        users_per_plan = self._dispatch.sizing.users_per_plan
        room = 2 * users_per_plan - self._dispatch.queued
        if room <= 0 or finished == set():
            return
        taken = (
            self._backlog.take(room)
            if finished is None
            else self._backlog.take_finished(finished, room)
        )
        for held in taken:
            self._add_held(held)
