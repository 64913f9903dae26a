"""Flow control: how big a plan is, when fetching pauses, and when a backfill starts sending.

The loop asks these small policies and does what they say; none of them does I/O or
reads a clock of its own.

* :class:`Sizing`: users per plan, levels per plan and single-identify overflow, derived from
  Knock's tiers (:mod:`consumer.limits`) in one place.
* :class:`Backpressure`: pause fetching at ``sink.max_pending`` unresolved events, resume at
  half, so memory stays bounded while polling (and group membership) goes on.
* :class:`ReadAhead`: under Knock's limits a backfill is bounded by the bulk budget, not by
  reading, and every send of a user before its last event is read is a send spent twice (and
  without the limits, an entry more); so it reads (folding each user's events, see
  :mod:`consumer.backfill.backlog`) up to the end targets before its first send, as far as
  ``sink.max_pending`` allows the events that do not fold.
* :class:`ReadRate`: how fast a backfill reads while it fetches, so that reading ahead can
  pause once it has more ready to send than reading the rest of a partition takes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from .config import KnockSettings
from .limits import ENTITY_GAP, per_second
from .records import Partition, Record


@dataclass(frozen=True, slots=True)
class Sizing:
    """How plans are cut and sent, for one ``[knock]`` configuration.

    :ivar users_per_plan: under Knock's limits, one bulk call's worth (a second of tier-1
        budget) plus the single-identify overflow; without limits, one bulk call per worker,
        sent side by side, but for a backfill's held users (``held``) one bulk call: they wait
        for a plan unpacked, several KB each, and sending them outruns reading with two calls
        side by side (two plans in flight) already, and a plan per worker would hold that
        many more users unpacked at once.
    :ivar max_levels: under Knock's limits each level is a paced bulk call of its own, so a plan
        is one level: a user's next non-foldable update waits for the next (full) call, not a
        near-empty one. ``None``: no limit.
    :ivar singles: entries per level sent through single identify, whose budget adds to the
        bulk one (Knock paces routes separately).
    :ivar entity_gap: Knock skips a user updated by a bulk call less than this long ago, so
        such a user goes through single identify instead (0: not enforced).
    """

    users_per_plan: int
    max_levels: int | None
    singles: int
    entity_gap: float

    @classmethod
    def of(cls, knock: KnockSettings, *, held: bool = False) -> Sizing:
        if knock.paced:
            singles = per_second("identify")
            return cls(knock.bulk_size + singles, 1, singles, ENTITY_GAP)
        return cls(knock.bulk_size * (1 if held else knock.concurrency), None, 0, 0.0)


class Pausable(Protocol):
    """Fetching, as one switch (the loop's: :meth:`consumer.fetch.FetchControl.whole`)."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class Backpressure:
    """Pauses fetching at ``max_pending`` unresolved events and resumes it at half: the gap
    keeps it from flapping on every batch."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending

    def update(self, pending: int, fetching: Pausable, limit: int | None = None) -> None:
        """``limit``: pause at this many instead (partitions catching up, see
        :mod:`consumer.catchup`)."""
        at = self.max_pending if limit is None else limit
        if pending >= at:
            fetching.pause()
        elif pending <= at // 2:
            fetching.resume()


class ReadRate:
    """Events read a second while fetching, averaged over about ``window`` seconds of it: a
    pause of fetching neither counts nor ages it (a backfill's read-ahead, see
    :class:`consumer.backfill.focus.Focus`)."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._events = 0.0
        self._seconds = 0.0
        self._new = 0

    def add(self, n: int) -> None:
        """``n`` more events read."""
        self._new += n

    def tick(self, seconds: float, *, fetching: bool) -> None:
        """``seconds`` went by since the last tick; ``fetching``: fetching was on (else what
        came in was fetched before the pause, and is left out)."""
        if fetching and seconds > 0:
            decay = math.exp(-seconds / self._window)
            self._events = self._events * decay + self._new
            self._seconds = self._seconds * decay + seconds
        self._new = 0

    def per_second(self) -> float | None:
        """The rate, or ``None`` before a fifth of the window of fetching."""
        if self._seconds < self._window / 5 or self._events <= 0:
            return None
        return self._events / self._seconds


class ReadAhead:
    """Whether a backfill is still reading ahead instead of sending.

    :param ends: each partition's end target (the high watermark seen at start).
    :param starts: the offset each partition's reading starts from (default 0): until a
        record of it is fetched, what is left of it is counted from there.
    :param idle: seconds without a record after which it stops holding, unless the partitions
        being read are still short of their ends (see :meth:`holding`): an end that is never
        delivered, such as a transaction marker, must not hold the backfill forever.
    """

    def __init__(
        self,
        ends: dict[Partition, int],
        *,
        idle: float,
        now: float,
        starts: dict[Partition, int] | None = None,
    ) -> None:
        self._ends = dict(ends)
        self._fetched: dict[Partition, int] = {
            tp: at for tp, at in (starts or {}).items() if tp in ends
        }
        self._idle = idle
        self._last_fetch = now
        self.done = not ends

    def fetched(self, records: Iterable[Record], now: float) -> None:
        """Note how far each partition has been read."""
        for rec in records:
            self._fetched[(rec.topic, rec.partition)] = rec.offset + 1
            self._last_fetch = now

    def read_to(self, positions: Mapping[Partition, int]) -> None:
        """The consumer's ``positions``: what lies below them is read, records or not. Why:
        transaction markers and aborted records take offsets and are never delivered, so the
        last record delivered never brings a partition of a transactional topic to its end."""
        fetched = self._fetched
        for tp, at in positions.items():
            if tp in self._ends and at > fetched.get(tp, 0):
                fetched[tp] = at

    @property
    def ends(self) -> dict[Partition, int]:
        return self._ends

    def waiting_from(self, now: float) -> None:
        """Count idleness from ``now``: fetching just moved to other partitions."""
        self._last_fetch = now

    def left(self, tp: Partition) -> int:
        """Offsets of ``tp`` still to read before its end target."""
        return max(0, self._ends[tp] - self._fetched.get(tp, 0))

    def finished(self) -> set[Partition]:
        """The partitions read to their end target: in a topic keyed by user, the state of a
        user seen only there can no longer change before the end."""
        return {tp for tp, hi in self._ends.items() if self._fetched.get(tp, 0) >= hi}

    def holding(self, now: float, *, full: bool, short: Callable[[], bool]) -> bool:
        """True while the loop should keep reading before it sends. ``full``: the read-ahead
        window (``sink.max_pending``) is used up, so sending must start. ``short`` (asked
        only once nothing was fetched for ``idle`` seconds): whether the partitions being
        read are still short of their ends by the consumer's position, so their records are
        still to come (fetching is slow), not an end that is never delivered."""
        if self.done or full or (now - self._last_fetch >= self._idle and not short()):
            return False
        if all(self._fetched.get(tp, 0) >= hi for tp, hi in self._ends.items()):
            self.done = True  # read to the end: from here on, send as usual
            return False
        return True
