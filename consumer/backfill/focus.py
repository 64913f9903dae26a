"""Where a backfill reads: ahead of sending, one partition at a time, paused while reading further
would send no one sooner.

Under Knock's limits a backfill is bounded by the users it sends, and every send of a user
before its last event is read is a send spent twice, so it reads ahead before it sends
(:class:`~consumer.flow.ReadAhead`). :class:`Focus` decides, each turn, which partitions
fetch (through the loop's :class:`~consumer.fetch.FetchControl`, under :data:`FOCUS`) and
whether a due plan still waits. No I/O but the consumer's positions; the loop's thread owns
it: not thread-safe.
"""

from __future__ import annotations

from typing import Final

from ..dispatch import Dispatch
from ..fetch import FetchControl
from ..flow import ReadAhead, ReadRate
from ..limits import per_second
from ..ordering import EventOrder
from ..records import Partition, Record, Source
from ..tracker import OffsetTracker
from .backlog import Backlog

#: Why partitions other than the one a backfill reads wait (see :class:`FetchControl`).
FOCUS: Final = "focus"
#: While reading ahead, fetching pauses once the users ready to send (those of partitions read
#: to their end) would keep Knock busy longer than reading the rest of the partition being
#: read takes, plus this many seconds: reading further ahead sends no one sooner, it only holds
#: more users. Not once users spilled.
AHEAD_MARGIN: Final = 10.0
#: Seconds of fetching the read rate is averaged over (see :class:`~consumer.flow.ReadRate`).
RATE_WINDOW: Final = 5.0


class Focus:
    """The read-ahead of one backfill: which partitions fetch, and whether plans wait.

    :param ends: each partition's end target; ``starts``: where its reading starts.
    :param idle: the read-ahead's idle time (``sink.read_ahead_idle``).
    :param send_rate: users a second Knock takes (``None`` without Knock's limits: sending
        never outlasts reading, so no pause).
    :param order: a backfill's event-time order, when topics not keyed by user are read side
        by side.
    """

    def __init__(
        self,
        ends: dict[Partition, int],
        starts: dict[Partition, int],
        *,
        idle: float,
        send_rate: float | None,
        max_pending: int,
        backlog: Backlog,
        dispatch: Dispatch,
        tracker: OffsetTracker,
        fetch: FetchControl,
        source: Source,
        order: EventOrder | None,
        now: float,
    ) -> None:
        self.read_ahead = ReadAhead(ends, starts=starts, idle=idle, now=now)
        self._rate = ReadRate(RATE_WINDOW)
        self._ticked = now
        self._send_rate = send_rate
        self._max_pending = max_pending
        self._backlog = backlog
        self._dispatch = dispatch
        self._tracker = tracker
        self._fetch = fetch
        self._source = source
        self._order = order
        self._focused: set[Partition] | None = None

    def fetched(self, records: list[Record], now: float) -> None:
        """After a non-empty batch: note how far each partition was read."""
        self.read_ahead.fetched(records, now)
        self._rate.add(len(records))

    def step(self, now: float, finished: set[Partition]) -> bool:
        """Focus fetching for this turn; returns whether the backfill is reading ahead.

        While it reads ahead, one partition at a time: each one read to its end
        (``finished``) frees its users to be sent (topics are keyed by user) while the next is
        read; none while the users ready to send outlast reading the rest of it
        (:meth:`_ahead`). The partition with the fewest events left to its end goes first:
        Knock has nothing to do until the first partition is read to its end, so a skewed
        topic's smallest partition (or, resuming, the one nearest its end) shortens that wait.
        The one being read only gets nearer its end, so it stays first until it is finished."""
        self._rate.tick(
            now - self._ticked, fetching=self._focused != set() and not self._fetch.paused
        )
        self._ticked = now
        reading_ahead = self._reading_ahead(now)
        keep: set[Partition] | None = None
        if reading_ahead and self._read_apart():
            read_ahead = self.read_ahead
            left = [tp for tp in read_ahead.ends if tp not in finished]
            first = min(left, key=lambda tp: (read_ahead.left(tp), tp)) if left else None
            keep = None if first is None else {first}
            if first is not None and self._ahead(first, finished):
                keep = set()  # a pause of its own: not idleness, which would end the read-ahead
                read_ahead.waiting_from(now)
            elif keep != self._focused:
                read_ahead.waiting_from(now)
        self._focused = keep
        self._fetch.only(FOCUS, keep)
        return reading_ahead

    def holds_back(self, now: float) -> bool:
        """Whether a plan that is due must still wait: the backfill is reading ahead, and
        fewer than a full plan of users of partitions read to their end are queued."""
        if not self._reading_ahead(now):
            return False
        return self._dispatch.queued < self._dispatch.sizing.users_per_plan

    def _read_apart(self) -> bool:
        """Whether partitions may be read one at a time: no event-time order, or every topic
        keyed by user (see :data:`consumer.ordering.KEYED_AFTER`)."""
        order = self._order
        return order is None or all(
            order.keyed(topic) for topic in {tp[0] for tp in self.read_ahead.ends}
        )

    def _ahead(self, reading: Partition, finished: set[Partition]) -> bool:
        """Whether the users ready to send would keep Knock busy longer than reading the rest
        of ``reading`` takes, by more than :data:`AHEAD_MARGIN` seconds (at the recent read
        rate; never before a second of it, a fifth of :data:`RATE_WINDOW`)."""
        # Once held users spill, the budget bounds the memory, and reading slows with each
        # spill below the rate measured: a pause on it would run the sends dry while it reads.
        if self._backlog.spilled or self._send_rate is None:
            return False
        rate = self._rate.per_second()
        if rate is None:
            return False
        sizing = self._dispatch.sizing
        ready = self._backlog.waiting(finished) + self._dispatch.queued
        # Two plans at least: while reading ahead a plan waits until it is full (holds_back),
        # and a pause must not leave it waiting for users that are not being read.
        if ready < 2 * sizing.users_per_plan:
            return False
        return ready / self._send_rate > self.read_ahead.left(reading) / rate + AHEAD_MARGIN

    def _reading_ahead(self, now: float) -> bool:
        full = self._fetch.paused or self._tracker.pending() >= self._max_pending
        return self.read_ahead.holding(now, full=full, short=self._short)

    def _short(self) -> bool:
        """Whether a partition being read (the focused one, else every one not read to its end)
        is short of its end target by the consumer's position. Why: a second without a record
        alone stopped the read-ahead, and the users of the partition being read could go out
        before their last events were read, to be sent again (a slow first fetch of the next
        partition, or the loop itself away that long: a full collection, a large spill). Past
        its end by position, a partition whose last record was a transaction marker (never
        delivered) does not hold the backfill."""
        ends, finished = self.read_ahead.ends, self.read_ahead.finished()
        reading = [
            tp
            for tp in (self._focused if self._focused is not None else ends)
            if tp not in finished
        ]
        if not reading:
            return False
        positions = self._source.positions(reading)
        return any(positions.get(tp, -1) < ends[tp] for tp in reading)


def send_rate(users_per_plan: int, paced: bool) -> float | None:
    """Users a second Knock takes: a full plan per bulk call (a group's share of the budget makes
    it less, so reading ahead pauses later than it could, never too early); ``None`` without
    Knock's limits."""
    return users_per_plan * per_second("bulk_identify") if paced else None
