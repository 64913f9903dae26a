"""Budget step: this process's share of Knock's rate limits, re-derived at every rebalance.

Knock counts requests per environment; every member of the group paces itself with its own
:class:`~consumer.policy.RateLimits`. So each member takes the share of each tier that its
partitions are of the subscribed topics' partitions, by taking turns on the wall clock
(:class:`~consumer.policy.Slots`), times ``knock.budget_share`` when several groups share one
environment. A member that holds no partition sends nothing; a member that holds every
partition of a group with the whole budget paces exactly as a lone process.

Plan sizes (:class:`~consumer.flow.Sizing`) need no change: a level is one bulk call plus the
single identifies sent beside it, and the share scales the bulk and the single-identify
budgets alike, so the identify budget per bulk call stays the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from prometheus_client import Gauge

from .errors import ConfigError
from .policy import SLOT_USABLE, RateLimits, Slots
from .records import Partition

log = logging.getLogger("knock_sink.budget")


class Budget:
    """:param group_share: ``knock.budget_share`` (``None``: the whole budget).
    :param all_partitions: every partition of the subscribed topics, read when needed (the
        count may grow)."""

    def __init__(self, limits: RateLimits, group_share: float | None, gauge: Gauge) -> None:
        self._limits = limits
        self._group = group_share or 1.0
        self._gauge = gauge
        self._all: set[Partition] = set()
        self._owned: set[Partition] = set()
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
        slots = Slots(
            frozenset(index[tp] for tp in self._owned), len(ordered) or 1, settle=SLOT_USABLE
        )
        if slots.fraction == 1 and self._group == 1:
            self._limits.share(1.0)  # alone: no turns to take
        else:
            self._limits.share(self._group, slots)
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
