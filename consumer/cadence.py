"""When the loop cuts the next plan: the freshness side of flow control.

Under Knock's limits a bulk call leaves at most once a second (tier 1, see
:mod:`consumer.limits`). A plan cut before that call may leave waits in flight for the limiter,
frozen, while the events that arrive meanwhile queue behind it for the call after: each event
then waits for two calls instead of one (docs/performance.md, Freshness). So a plan is
cut when its bulk call could leave now, and carries everything read until then.

``sink.flush_interval`` is the other end of the trade-off: the least time between two cuts.
At its default (below the limiter's second) the limiter sets the pace, one bulk call a second
carrying what arrived in that second; a longer interval sends fewer, fuller calls, and each
event waits up to that long more. A plan that is full (a bulk call's worth of ops and the
single-identify overflow) is cut at once, but under the limits still not before its bulk call
could leave: the ops pending include those of users still in flight, which cannot go in it, so
a plan cut early carries fewer users than it would at its call, and when the group takes turns
(:class:`~consumer.pacing.Slots`) it spends a whole turn on them. (Taking turns, the limiter
says "ready" a little before the turn, so the plan is built when it opens.)

No I/O and no clock of its own: the loop passes ``now`` and how long the limiter would hold a
bulk call.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Cadence:
    """:param flush_interval: least seconds between two cuts (``sink.flush_interval``).
    :param paced: Knock's limits are on (``knock.rate_limits = "knock"``): wait for the bulk
        limiter too. Off, a plan is cut every ``flush_interval``, or at once when full.
    """

    flush_interval: float
    paced: bool

    def due(
        self, now: float, *, pending: int, full_at: int, last_cut: float, bulk_ready_in: float
    ) -> bool:
        """Whether to cut a plan now. ``pending``: ops queued with the planner; ``full_at``: ops
        that fill a plan; ``bulk_ready_in``: seconds before the bulk limiter grants a call."""
        if self.paced and bulk_ready_in > 0.0:
            return False
        if pending >= full_at:
            return True
        return now - last_cut >= self.flush_interval
