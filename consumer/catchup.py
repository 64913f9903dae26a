"""Catching up: a live sink behind by a backlog folds each user's backlog into one update.

Under Knock's limits a live sink is bounded by the users it sends, and ``run`` cuts a plan
about every second from what it has read. With a backlog (a new group starting from the
earliest offset, an outage, a deploy) each user's events then spread over many plans, and the
user is sent once per plan it appears in (2.4 times over on benchmark case 10: 60,000 events
over 6,000 users). A backfill avoids it by reading ahead and sending each user once;
:class:`CatchUp` does the same for ``run``, per partition:

* a partition found behind by at least ``sink.catch_up_lag`` events (its high watermark less the
  consumer's position) when it is assigned, or later as lag builds, gets a *target*: the high
  watermark seen then;
* while it has one, its users are *held*: the planner keeps its ops queued (they fold into one
  update per user as they are added, :meth:`consumer.plan.Planner.add`) and cuts none of them;
* partitions catching up are read one at a time (the others' fetching held under
  :data:`FOCUS`), the one with the least left first, so that the first users go out while the
  rest is read, as a backfill's do (:mod:`consumer.backfill.focus`); live partitions fetch
  throughout;
* once the consumer's position reaches the target (transaction markers included), it is
  caught up: its users go out in the next plans, each once, and it is live again.

A newly assigned partition is held until its first verdict, when its first record was read
(then the consumer has a position, and its fetch answered with the high watermark): the first
records of a backlog are not sent on their own. One read from whose high watermark is still
unknown after :data:`VERDICT_WAIT` seconds (the broker restarted since) is taken as live: its
held records may be what pauses fetching. Holding a partition with nothing to read holds
nothing: the planner cuts for what it can send (:meth:`consumer.plan.Planner.queued_in`).

Memory: held events are tracked one by one until Knock applied them, as every event of ``run``
is (about 420 bytes each with their users' folded properties, docs/operations.md). While a
partition is held the loop pauses fetching at ``sink.catch_up_pending`` unresolved events instead of
``sink.max_pending``; when that many are reached, every hold is let go (what is folded so far
goes out) and no new one starts until fewer than half are unresolved. A backlog larger than
that is folded a ``catch_up_pending`` window at a time, not spilled to disk as a backfill's
held users are: a backfill (``knock-sink backfill``) is the tool for a replay of any size.

No I/O of its own (the loop passes the consumer's positions and cached high watermarks), no
clock (the loop passes ``now``), not thread-safe: the loop's thread owns it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from .fetch import Holder
from .records import Partition

log = logging.getLogger("knock_sink")

#: Why partitions catching up, other than the one being read, wait (see
#: :class:`~consumer.fetch.FetchControl`).
FOCUS = "catch-up"

#: Seconds between two looks for lag that builds on partitions that are live.
LOOK_EVERY = 1.0
#: Seconds a new partition read from waits for a high watermark before it is taken as live.
VERDICT_WAIT = 2.0
#: Seconds between two looks for the verdicts of new partitions: their records wait that long
#: at most (a partition with nothing to read stays new, and is looked at this often).
VERDICT_EVERY = 0.1


class CatchUp:
    """Which partitions are catching up, and so hold their users.

    :param lag: events behind (high watermark less position) from which a partition catches up.
    :param pending: unresolved events at which every hold is let go (``sink.catch_up_pending``).
    :param positions: the consumer's positions (:meth:`~consumer.records.Source.positions`).
    :param highs: the cached high watermarks of the assigned partitions
        (:meth:`~consumer.records.Source.high_watermarks`, no broker call).
    :param pause: hold partitions' fetching back under :data:`FOCUS`; ``resume``: let it go.
    """

    def __init__(
        self,
        lag: int,
        pending: int,
        *,
        positions: Callable[[list[Partition]], dict[Partition, int]],
        highs: Callable[[], dict[Partition, int]],
        pause: Holder = lambda tps: None,
        resume: Holder = lambda tps: None,
    ) -> None:
        self._lag = lag
        self._pause, self._resume = pause, resume
        #: The partition catching up that fetches; the others catching up are paused.
        self._focus: Partition | None = None
        self._paused: set[Partition] = set()
        self.pending = pending
        self._positions = positions
        self._highs = highs
        #: Assigned partitions waiting for their first verdict.
        self._new: set[Partition] = set()
        #: New partitions read from without a high watermark, and since when.
        self._unknown: dict[Partition, float] = {}
        #: Partitions catching up, and the offset each must be read to.
        self._targets: dict[Partition, int] = {}
        self._owned: set[Partition] = set()
        #: The partitions whose users are held (new or catching up), as the planner takes them.
        self.held: frozenset[Partition] = frozenset()
        self._looked = float("-inf")
        self._verdicts = float("-inf")
        #: Set when every hold was let go at :attr:`pending`: no new hold until half of it.
        self._full = False

    # -- membership ---------------------------------------------------------------------------

    def assigned(self, tps: Iterable[Partition]) -> None:
        """``tps`` were assigned: held until their first verdict."""
        self._owned.update(tps)
        self._new.update(tps)
        self._update()

    def unassigned(self, tps: Iterable[Partition]) -> None:
        """``tps`` left this consumer (revoked, lost): nothing of theirs is held any more."""
        for tp in tps:
            self._owned.discard(tp)
            self._new.discard(tp)
            self._unknown.pop(tp, None)
            self._targets.pop(tp, None)
            self._paused.discard(tp)  # the fetch control forgets a partition that left
        self._update()

    def release_all(self) -> None:
        """Let every hold go (the loop drains, or too much is held): what is folded goes out
        now, and every partition fetches."""
        self._new.clear()
        self._unknown.clear()
        self._targets.clear()
        self._refocus({})
        self._update()

    # -- each turn ------------------------------------------------------------------------------

    def step(self, now: float, pending: int) -> None:
        """Let go of the partitions caught up, refocus, give verdicts to new partitions (every
        :data:`VERDICT_EVERY` seconds) and start holding live ones that fell behind (every
        :data:`LOOK_EVERY` seconds). ``pending``: the loop's unresolved events."""
        if pending >= self.pending:
            if self._new or self._targets:
                log.warning(
                    "catching up: %d events held (sink.catch_up_pending): sending what is "
                    "folded so far",
                    pending,
                )
                self.release_all()
            self._full = True
            return
        if self._full and pending <= self.pending // 2:
            self._full = False
        targets, new = self._targets, self._new
        look = now - self._looked >= LOOK_EVERY
        verdicts = bool(new) and now - self._verdicts >= VERDICT_EVERY
        if not (targets or verdicts or look) or not self._owned:
            return
        live = self._owned - self.held if look else set()
        if verdicts:
            self._verdicts = now
        if look:
            self._looked = now
        highs = self._highs() if verdicts or live else {}
        positions = self._positions(sorted(targets.keys() | (new if verdicts else set()) | live))
        for tp, target in list(targets.items()):
            at = positions.get(tp)
            if at is not None and at >= target:
                del targets[tp]
                log.info(
                    "%s[%d] caught up at offset %d: its folded users go out",
                    tp[0],
                    tp[1],
                    at,
                    extra={"topic": tp[0], "partition": tp[1], "offset": at},
                )
        # A new partition's verdict waits for its first record read (the consumer has no
        # position before); a live one let go in this step is not among ``live``: what
        # arrived while it caught up waits for the next look.
        for tp in [*(new if verdicts else ()), *live]:
            hi, at = highs.get(tp), positions.get(tp)
            if hi is not None and at is not None:
                new.discard(tp)
                self._unknown.pop(tp, None)
                self._judge(tp, hi, at)
            elif at is not None and tp in new:
                # Read from, but no high watermark (the broker restarted since its fetch): its
                # held records may be what pauses fetching, so it is not waited for long.
                since = self._unknown.setdefault(tp, now)
                if now - since >= VERDICT_WAIT:
                    new.discard(tp)
                    del self._unknown[tp]
        self._refocus(positions)
        self._update()

    @property
    def catching_up(self) -> int:
        """Partitions found behind, holding their users until they are read to their target."""
        return len(self._targets)

    def _judge(self, tp: Partition, hi: int, at: int) -> None:
        """Hold ``tp`` until ``hi`` when it is ``lag`` or more behind at ``at`` (unless too much
        is unresolved to start a hold)."""
        if hi - at < self._lag or self._full:
            return
        self._targets[tp] = hi
        log.info(
            "%s[%d] is %d events behind: its users are held and folded until it is read to "
            "offset %d",
            tp[0],
            tp[1],
            hi - at,
            hi,
            extra={"topic": tp[0], "partition": tp[1], "offset": at},
        )

    def _refocus(self, positions: dict[Partition, int]) -> None:
        """Fetch one partition catching up (the current one until it is caught up, else the
        one with the least left), hold the others back."""
        targets = self._targets
        if self._focus not in targets:
            self._focus = (
                min(targets, key=lambda tp: targets[tp] - positions.get(tp, 0)) if targets else None
            )
        wait = targets.keys() - {self._focus}
        if go := self._paused - wait:
            self._resume(sorted(go))
        if stop := wait - self._paused:
            self._pause(sorted(stop))
        self._paused = set(wait)

    def _update(self) -> None:
        self.held = frozenset(self._new | self._targets.keys())
