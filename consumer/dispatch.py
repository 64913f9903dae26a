"""Dispatch: queued ops cut into plans and started on Knock, when a plan is due.

:class:`Dispatch` owns what lies between the intake and Knock: the :class:`~consumer.plan.Planner`
that queues and coalesces ops, the plan sizes derived from Knock's tiers
(:class:`~consumer.flow.Sizing`), the moment a plan is cut (:class:`~consumer.cadence.Cadence`)
and the plans in flight (:class:`~consumer.apply.Flight`). The stages queue ops here (:meth:`Dispatch.queue`,
:meth:`Dispatch.add`), the loop asks it to start a plan each turn, collects the outcomes it
hands back and gives back what must be retried (:meth:`Dispatch.retry`) or dropped
(:meth:`Dispatch.drop`): the planner is reached through nothing else. What an outcome means for
offsets and dead letters is the loop's. The loop's thread owns it: not thread-safe.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet

from .apply import Applier, Flight, Outcome
from .cadence import Cadence
from .config import Settings
from .flow import Sizing
from .keying import keyed_by
from .knock import KnockClient
from .known import Known
from .metrics import Metrics
from .ops import Identify, Op
from .plan import Pending, Planner
from .stage import Committable

log = logging.getLogger("knock_sink")


class Dispatch:
    """The planner, the plan cadence and the plans in flight of one sink.

    :ivar sizing: plan sizes under the ``[knock]`` settings.
    """

    def __init__(
        self,
        settings: Settings,
        knock: KnockClient,
        metrics: Metrics,
        clock: Callable[[], float],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._knock_settings = settings.knock
        self._anonymous_prefix = settings.mapping.anonymous_prefix
        self.sizing = sizing = Sizing.of(settings.knock)
        self._planner = Planner(nested=settings.knock.nested_merge)
        #: Pending numbers: the planner's order of arrival.
        self.next_seq: Callable[[], int] = itertools.count(1).__next__
        #: What Knock confirmed of each user (change detection), ``None`` when off.
        self.known: Known | None = (
            Known(
                settings.sink.known_ttl,
                settings.sink.known_memory_mb << 20,
                settings.knock.nested_merge,
                clock=wall,
            )
            if settings.sink.known_ttl > 0
            else None
        )
        self._flight = Flight(
            Applier(
                knock,
                bulk_size=settings.knock.bulk_size,
                concurrency=settings.knock.concurrency,
                item_attempts=settings.sink.item_attempts,
                singles=sizing.singles,
                entity_gap=sizing.entity_gap,
                clock=clock,
                known=self.known,
            )
        )
        self._cadence = Cadence(settings.sink.flush_interval, settings.knock.paced)
        self._knock = knock
        self._plan_users = metrics.plan_users
        self._clock = clock
        self._last_cut = clock()

    def hold(self) -> None:
        """A backfill holds its users: plans sized for them (:meth:`~consumer.flow.Sizing.of`)."""
        self.sizing = Sizing.of(self._knock_settings, held=True)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight."""
        return len(self._flight) == 0 and len(self._planner) == 0

    @property
    def queued(self) -> int:
        """Ops queued, not yet cut into a plan."""
        return len(self._planner)

    # -- the planner's one door ----------------------------------------------------------------

    def queue(self, op: Op, source: Committable, lane: object = None) -> None:
        """Queue ``op``, numbered now, standing for ``source`` (held for it by the caller)."""
        self._planner.add(Pending(self.next_seq(), op, source, lane))

    def add(self, p: Pending) -> None:
        """Queue ``p``, numbered by the caller with :attr:`next_seq`."""
        self._planner.add(p)

    def retry(self, items: list[Pending], not_before: float) -> None:
        """Give back ops cut but not applied (see :meth:`consumer.plan.Planner.retry`)."""
        self._planner.retry(items, not_before)

    def drop(self, predicate: Callable[[Pending], bool]) -> list[Pending]:
        """Remove the queued ops matching ``predicate`` (a revoke, a stopped backfill)."""
        return self._planner.drop(predicate)

    def start(
        self,
        *,
        wait: Callable[[float], bool] | None = None,
        now: bool = False,
        held: AbstractSet[object] = frozenset(),
    ) -> None:
        """Cut the next plan and start it, when there is room in flight and a plan is due (full,
        or old enough) and ``wait`` (given the clock) does not hold it back; with ``now``, due
        or not (a drain). Its users are disjoint from those of the plans in flight. The ops of
        ``held`` lanes (partitions catching up, :mod:`consumer.catchup`) stay queued, folding per
        user as they are added, and count for no cut."""
        # Ops of held lanes are not sendable: with only those queued, no cut (each walks them).
        pending = len(self._planner) - (self._planner.queued_in(held) if held else 0)
        if self._flight.full or pending <= 0:
            return
        t = self._clock()
        size = self.sizing.users_per_plan
        due = self._cadence.due(
            t,
            pending=pending,
            full_at=size,
            last_cut=self._last_cut,
            bulk_ready_in=self._knock.ready_in("bulk_identify"),
        )
        if not now and (not due or (wait is not None and wait(t))):
            return
        plan = self._planner.cut(
            t,
            max_users=size,
            busy=self._flight.busy(),
            max_levels=self.sizing.max_levels,
            unchanged=self._unchanged if self.known is not None else None,
            lanes=held,
        )
        if plan:
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "plan cut: %d users, %.3f s after the last, %d ops left pending",
                    len(plan.users()),
                    t - self._last_cut,
                    len(self._planner),
                )
            self._last_cut = t
            self._plan_users.observe(len(plan.users()))
            self._flight.start(plan)

    def check_key(self, topic: str, key: bytes | None, ops: list[Op]) -> None:
        """Change detection compares a topic's updates only while its records are keyed by
        their user: then Kafka's partitioner keeps each user on one partition, and no other
        member of the group writes a user this process knows. The first identify whose record
        has another key, or none (Segment's round robin), turns it off for the topic in this
        process: every member reads records of both kinds from its first ones, before it has
        recorded anything of the topic."""
        known = self.known
        if known is None or topic in known.unkeyed:
            return
        for op in ops:
            if op.__class__ is Identify:
                if not keyed_by(key, (op.user_id,), self._anonymous_prefix):
                    known.unkeyed.add(topic)
                    log.info(
                        "change detection off for topic %s: its records are not keyed by their "
                        "user's id (%s)",
                        topic,
                        "a record has no key" if key is None else "a record's key is another id",
                    )
                return

    def _unchanged(self, p: Pending) -> bool:
        """Whether Knock is known to have all of the identify ``p`` carries (asked by the cut,
        so that users with nothing to send take no room in a plan)."""
        known = self.known
        assert known is not None
        source = p.source
        tp = source.partition if source.current else None
        return known.unchanged(p.op.user_id, p.op.props, tp)  # type: ignore[union-attr]

    def collect(self, take: Callable[[Outcome], None], timeout: float = 0) -> bool:
        """Hand each finished plan's outcome to ``take`` (see :meth:`consumer.apply.Flight.collect`);
        True when none is left in flight."""
        return self._flight.collect(take, timeout)

    def in_flight(self) -> int:
        return len(self._flight)

    def close(self) -> None:
        self._flight.close()
