"""Budget step: this process's share of Knock's rate limits, re-derived at every rebalance.

Knock counts requests per environment; every member of the group paces itself with its own
:class:`~consumer.pacing.RateLimits`. So each member takes the share of each tier that its
partitions are of the subscribed topics' partitions, times ``knock.budget_share`` when several
groups share one environment: by rate on the routes whose budget divides so, by taking turns on
the wall clock (:class:`~consumer.pacing.Slots`) on the others, tier 1 first
(:meth:`~consumer.pacing.RateLimits.divide`). A member that holds no partition sends nothing; a member that holds every
partition of a group with the whole budget paces exactly as a lone process.

Plan sizes (:class:`~consumer.flow.Sizing`) need no change: a level is one bulk call plus the
single identifies sent beside it, and the share scales the bulk and the single-identify
budgets alike, so the identify budget per bulk call stays the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import Gauge

from .errors import ConfigError
from .limits import per_second
from .pacing import SLOT, RateLimits, Slots
from .records import Partition

log = logging.getLogger("knock_sink.budget")


#: Seconds over which :meth:`Budget.tick` measures the budget left idle.
IDLE_WINDOW = 10.0
#: The routes whose idle budget is reported: the two an update is sent through.
WATCHED = ("bulk_identify", "identify")


class Budget:
    """:param group_share: ``knock.budget_share`` (``None``: the whole budget).
    :param all_partitions: every partition of the subscribed topics, read when needed (the
        count may grow)."""

    def __init__(
        self,
        limits: RateLimits,
        group_share: float | None,
        gauge: Gauge,
        idle: Gauge | None = None,
        *,
        now: float = 0.0,
    ) -> None:
        self._limits = limits
        self._idle = idle
        self._since = now
        self._spent_then: dict[str, int] = {}
        self._group = group_share or 1.0
        self._gauge = gauge
        self._all: set[Partition] = set()
        self._owned: set[Partition] = set()
        #: The partitions the limiters were last paced for.
        self._paced_for: set[Partition] = set()
        self.share: float | None = None
        #: An owned partition the partition count did not know: call :meth:`known` again (from
        #: the loop: the rebalance callbacks must not call into the consumer).
        self.stale = True
        if group_share is not None and limits.mode == "knock":
            limits.share(self._group)
            gauge.set(self._group)

    def known(self, partitions: Iterable[Partition]) -> None:
        """Every partition of the subscribed topics, read now (the count may grow)."""
        self._all = set(partitions)
        self.stale = False
        self.update(self._owned)

    def refresh(self, read: Callable[[], Iterable[Partition]]) -> None:
        """:meth:`known` with what ``read`` returns; a topic whose metadata is not there yet
        (:class:`ConfigError`) is tried again at the next call."""
        try:
            self.known(read())
        except ConfigError as exc:
            log.debug("partition count not read: %s", exc)

    def update(self, owned: Iterable[Partition]) -> float:
        """Pace to the share ``owned`` gives; returns it."""
        self._owned = set(owned)
        if self._limits.mode != "knock":
            return 1.0
        if not self._owned <= self._all:
            self.stale = True
        ordered = sorted(self._all | self._owned)
        index = {tp: i for i, tp in enumerate(ordered)}
        slots = Slots(frozenset(index[tp] for tp in self._owned), len(ordered) or 1, settle=SLOT)
        gained = bool(self._owned - self._paced_for)
        self._paced_for = set(self._owned)
        if slots.fraction == 1 and self._group == 1:
            self._limits.share(1.0)  # alone: no turns to take
        else:
            self._limits.divide(self._group, slots, settle=SLOT if gained else 0.0)
        share = self._group * slots.fraction
        if share != self.share:
            log.info(
                "Knock budget share %.3f (%d of %d partitions)",
                share,
                len(slots.owned),
                len(ordered),
            )
        self.share = share
        self._gauge.set(share)
        return share

    def tick(self, now: float, spent: Mapping[str, int]) -> None:
        """Every :data:`IDLE_WINDOW` seconds, set the idle ratio of each watched route: 1 less
        the requests Knock counted (``spent``, running totals by route) over what this process's
        share of Knock's tier allowed in that time. Measured against Knock's numbers, so turns'
        own cost shows as idle too."""
        if self._idle is None or self._limits.mode != "knock" or now - self._since < IDLE_WINDOW:
            return
        seconds, self._since = now - self._since, now
        share = 1.0 if self.share is None else self.share
        for route in WATCHED:
            allowed = per_second(route) * share * seconds
            used = spent.get(route, 0) - self._spent_then.get(route, 0)
            self._spent_then[route] = spent.get(route, 0)
            ratio = 1.0 if allowed <= 0 else max(0.0, 1.0 - used / allowed)
            self._idle.labels(route).set(round(ratio, 3))
