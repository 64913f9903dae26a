"""Pacing requests to Knock's documented tiers, in one place: :class:`RateLimiter` per route,
:class:`RateLimits` for all of them, and :class:`Slots`, the turns a consumer group's members
take on the routes whose budget is too small to divide by rate.

Nothing here does I/O; time comes from injected ``clock`` and ``sleep`` callables so tests
advance a fake clock instead of sleeping. Retries are :mod:`consumer.retry`.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Final

from .limits import ENDPOINT_TIER, TIERS, RateLimitMode
from .retry import Clock, Sleeper, wait

#: The window the client paces to: Knock's second, plus 5 ms for two clocks' rounding. It is
#: counted from when the previous request was *answered* (see :meth:`RateLimiter.take`), not
#: from when it left: Knock stamps a request somewhere between the two, and any delay between
#: our send time and Knock's stamp (thread scheduling in a busy process, the network, a busy
#: server) shortens the gap Knock sees. Pacing from send times with a 3 % margin
#: still drew 429s on a loaded machine: 30 ms of jitter was enough. From the answer no jitter can shorten the gap, at the cost of a call's response time
#: (the bulk route answers 202 before the work is done).
KNOCK_WINDOW: Final = 1.005
#: Each 429 widens a limiter's window by this much, up to :data:`MAX_WINDOW`: the jitter between
#: our send times and Knock's arrival times is a property of the network in between, so a 429
#: says the margin was too thin there (1 % of budget per call is cheaper than a lost second).
WINDOW_STEP: Final = 0.01
MAX_WINDOW: Final = 1.10
#: Members of one consumer group take turns on the routes whose budget is too small to divide
#: by rate (tier 1 is one request a second: see :class:`Slots`) in slots of :data:`SLOT` seconds
#: of the wall clock. A request starts only in the first :data:`SLOT_USABLE` seconds of a slot,
#: so the owner of the next slot finds Knock's second gone by since the last start, with
#: :data:`SLOT_GUARD` to spare for the members' clocks disagreeing and for one request taking
#: longer than another to reach Knock. Measured (docs/operations.md, Scaling out): slots of
#: 2.2 s with 1.1 s usable left most of tier 1 idle; 1.2 s is one bulk call every 1.2 s, 84 %
#: of the tier, the group's whole.
SLOT_USABLE: Final = 0.1
SLOT_GUARD: Final = 0.095
SLOT: Final = KNOCK_WINDOW + SLOT_USABLE + SLOT_GUARD
#: A plan is cut this long before its member's turn, so that its bulk call is built and
#: waiting when the turn opens: a call that misses the first :data:`SLOT_USABLE` seconds waits
#: a whole cycle of the group's turns.
SLOT_LEAD: Final = 0.15


class Slots:
    """Time division of Knock's budget among the members of one consumer group, without talking
    to each other: wall-clock slot ``n`` (``floor(time / SLOT)``) belongs to whoever holds
    partition number ``n mod total`` of the subscribed topics (sorted by topic, then partition).
    A member with ``k`` of ``total`` partitions so gets ``k / total`` of the time, the owner of a
    slot has the whole budget to itself in it, and the members' shares always add up to 1 (a
    partition has one owner), re-derived at every rebalance.

    Why slots rather than each member pacing to ``share x N``: tier 1 is one request per second;
    three members each sending once every 3 s at their own phase would land two requests in
    one second of Knock's often enough to spend the saving on 429s. Dividing the clock is
    the only split of a budget of one that needs no coordination. So only the routes whose
    budget cannot be divided by rate take turns (:meth:`RateLimits.divide`): the others pace to
    their share at any time, and a plan's single identifies and the polling of its bulk
    operation never wait for a turn. It assumes the members' clocks agree within
    :data:`SLOT_GUARD` (NTP keeps them within a few milliseconds); a member whose clock is
    further off, or whose request is held up longer than that on its way, draws a 429 with
    ``Retry-After``, which every member honours (:meth:`RateLimiter.penalize`): time is lost,
    nothing else.

    :param owned: the slot numbers (partition indices) this member holds; empty: it may send
        nothing.
    """

    def __init__(
        self, owned: frozenset[int], total: int, *, wall: Clock = time.time, settle: float = 0.0
    ) -> None:
        """:param settle: seconds from now before the first request: after a rebalance, the
        member that held these slots before (alone, it took no turns) may have sent until
        its revoke, so the new owner waits out one slot (:data:`SLOT`)."""
        if total < 1:
            raise ValueError("total must be at least 1")
        self.owned = frozenset(i for i in owned if 0 <= i < total)
        self.total = total
        self._wall = wall
        self._from = wall() + settle

    @property
    def fraction(self) -> float:
        return len(self.owned) / self.total

    def wait(self) -> float | None:
        """Seconds until a request may start (0: now); ``None`` when this member owns no slot."""
        if not self.owned:
            return None
        now = self._wall()
        start = max(now, self._from)
        n = math.floor(start / SLOT)
        into = start - n * SLOT
        for ahead in range(self.total + 1):
            if (n + ahead) % self.total in self.owned:
                if ahead == 0:
                    if into < SLOT_USABLE:
                        return start - now
                    continue
                return (n + ahead) * SLOT - now
        return None  # unreachable: some slot of every cycle is owned


class RateLimiter:
    """Paces one Knock endpoint to at most ``per_second`` requests in any ``window`` seconds
    (1 by default; :class:`RateLimits` uses :data:`KNOCK_WINDOW`).

    Algorithm: a sliding-window log of the last ``per_second`` grant times; a request may go when
    the oldest of them is at least 1 s old. For tier 1 this is a token bucket with burst 1 (one
    request, then a full second). For higher tiers it allows a burst of up to ``per_second``
    at once (in practice bounded by the number of worker threads), and never more than
    ``per_second`` in any window, which is how Knock counts. ``per_second=None`` never waits.

    :meth:`take` and :meth:`finish` count a request from when it was answered instead: then
    a request waits until the ``per_second``-th before it (and every earlier one) is answered,
    plus ``window``. Knock decides on a 429 before it answers, so it stamps each request before
    the answer: no delay between our send and its stamp can bring two requests closer than
    ``window`` there. :meth:`acquire` counts from the grant (a request answered at once).

    Thread-safe; one instance per endpoint is shared by every thread of the process. Waiters
    are not served in FIFO order. The limit is per process: several processes sharing one Knock
    environment share Knock's budget too.
    """

    def __init__(
        self,
        per_second: int | None,
        *,
        window: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleeper = wait,
    ) -> None:
        if per_second is not None and per_second < 1:
            raise ValueError("per_second must be at least 1")
        self.per_second = per_second
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        # The last ``per_second`` grants in grant order, each [granted at, answered at or None
        # while in flight]; ``_floor``: the latest answer among the grants that left the log.
        self._granted: deque[list[float | None]] = deque(maxlen=per_second or 1)
        self._floor = -math.inf
        self._blocked_until = -math.inf
        self._base = (per_second, window)
        self._slots: Slots | None = None

    def share(self, share: float, slots: Slots | None = None) -> None:
        """Pace to ``share`` (0 < share <= 1) of the endpoint's budget, in the slots of
        ``slots`` only (``None``: at any time).

        ``N x share`` per second becomes ``k = max(1, floor(N x share))`` requests per window of
        ``window x k / (N x share)``: never more than ``N x share`` per second on average, and
        never a burst of more than ``k <= N``. A whole ``k`` keeps the sliding-window log exact
        (it holds ``k`` grant times); the stretched window gives back the fraction ``floor``
        dropped (tier 2 at 1/3 is 1 request per 0.62 s, not 1 per 1.03 s).
        """
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        base, window = self._base
        with self._lock:
            self._slots = slots
            if base is None:
                return
            rate = base * share
            k = max(1, math.floor(rate))
            self.per_second = k
            self.window = window * k / rate  # a 429's widening starts over
            self._granted = deque(self._granted, maxlen=k)

    @property
    def base(self) -> int | None:
        """Knock's requests per second for the endpoint (``None``: unpaced)."""
        return self._base[0]

    @property
    def slotted(self) -> bool:
        """Whether requests wait for this member's turns (:class:`Slots`)."""
        return self._slots is not None

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until a request may be sent, and count it as sent (and answered) now.

        :returns: ``True`` when granted; ``False`` if ``stop`` was set while a wait was needed.
        """
        slot = self.take(stop)
        if slot is None:
            return False
        slot[1] = slot[0]
        return True

    def take(self, stop: threading.Event | None = None) -> list[float | None] | None:
        """Block until a request may be sent; return its slot, to hand to :meth:`finish` once
        the request was answered (or failed), or ``None`` if ``stop`` was set while a wait was
        needed. A slot never finished holds the endpoint back: call it in a ``finally``."""
        if self.per_second is None:
            return [0.0, 0.0]
        while True:
            with self._lock:
                now = self._clock()
                ready = self._ready_at(now)
                slots = self._slots
                turn = 0.0 if slots is None else slots.wait()
                if ready <= now and turn == 0.0:
                    if len(self._granted) == self.per_second:
                        oldest = self._granted[0][1]
                        assert oldest is not None  # else _ready_at would have said wait
                        self._floor = max(self._floor, oldest)
                    slot: list[float | None] = [now, None]
                    self._granted.append(slot)
                    return slot
            if stop is not None and stop.is_set():
                return None
            # No slot at all: look again shortly, the next rebalance may give one.
            self._sleep(max(ready - now, 0.5 if turn is None else turn, 0.001), stop)

    def ready_in(self) -> float:
        """Seconds until :meth:`acquire` would grant without waiting (0: now). Reserves
        nothing: the loop asks it to decide when a plan's bulk call could leave. Taking
        turns, :data:`SLOT_LEAD` less, so that the plan is cut before its turn opens."""
        if self.per_second is None:
            return 0.0
        with self._lock:
            now = self._clock()
            if self._slots is None:
                turn = 0.0
            else:
                wait = self._slots.wait()
                turn = 0.5 if wait is None else max(0.0, wait - SLOT_LEAD)
            return max(0.0, self._ready_at(now) - now, turn)

    def finish(self, slot: list[float | None]) -> None:
        """The request of ``slot`` (from :meth:`take`) was answered: count it from now."""
        with self._lock:
            slot[1] = self._clock()

    def hold(self, seconds: float) -> None:
        """Nobody sends on this endpoint for ``seconds`` from now (the window stays)."""
        if self.per_second is None or seconds <= 0:
            return
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)

    def penalize(self, seconds: float) -> None:
        """Nobody sends on this endpoint for ``seconds`` from now (after a 429), and the window
        widens by :data:`WINDOW_STEP` (up to :data:`MAX_WINDOW`, never narrower than it was)."""
        if self.per_second is None or seconds <= 0:
            return
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)
            self.window = max(self.window, min(MAX_WINDOW, self.window + WINDOW_STEP))

    #: Seconds between looks while the request the next one waits for is still in flight.
    POLL: Final = 0.005

    def _ready_at(self, now: float) -> float:
        ready = max(self._blocked_until, self._floor + self.window)
        if len(self._granted) == self.per_second:
            granted, answered = self._granted[0]
            if answered is None:  # still in flight: at least its window, then look again
                return max(ready, granted + self.window, now + self.POLL)  # type: ignore[operator]
            ready = max(ready, answered + self.window)
        return ready


class RateLimits:
    """One :class:`RateLimiter` per endpoint of :data:`~consumer.limits.ENDPOINT_TIER`.

    :param mode: ``knock`` paces to Knock's tiers; ``off`` never waits (local benchmarks).
    """

    def __init__(
        self, mode: RateLimitMode = "knock", *, clock: Clock = time.monotonic, sleep: Sleeper = wait
    ) -> None:
        if mode not in ("knock", "off"):
            raise ValueError(f"unknown rate limit mode {mode!r}")
        self.mode = mode
        self._limiters = {
            name: RateLimiter(
                TIERS[tier] if mode == "knock" else None,
                window=KNOCK_WINDOW,
                clock=clock,
                sleep=sleep,
            )
            for name, tier in ENDPOINT_TIER.items()
        }

    def share(self, share: float, slots: Slots | None = None) -> None:
        """Every endpoint paced to ``share`` of its tier, in ``slots`` (see :meth:`RateLimiter.share`)."""
        for limiter in self._limiters.values():
            limiter.share(share, slots)

    def divide(self, group: float, slots: Slots, *, settle: float = 0.0) -> None:
        """This member's part of ``group`` (the group's share of Knock's budget), the members
        splitting it by the partitions of ``slots``.

        A route whose budget every member can pace to by rate (``N x group`` per second is at
        least one request per partition, so each member's part is a whole request or more)
        is paced to ``group x slots.fraction`` at any time: the members' parts add up to the
        route's rate, and their bursts (``floor`` of each part) to at most Knock's. Any other
        route (tier 1 always) takes turns in ``slots``. Consistent across members: each
        decides from the route and the partition count, which they share.

        :param settle: seconds before the first request on a route paced by rate (the turns
            settle in ``slots``): a member that gains partitions waits out the window in which
            their previous owner may have sent at its larger rate until its revoke."""
        for limiter in self._limiters.values():
            base = limiter.base
            if slots.owned and base is not None and base * group >= slots.total:
                limiter.share(group * slots.fraction)
                limiter.hold(settle)
            else:
                limiter.share(group, slots)

    def taking_turns(self, name: str) -> bool:
        """Whether endpoint ``name`` waits for this member's slots."""
        return self._limiters[name].slotted

    def for_endpoint(self, name: str) -> RateLimiter:
        """The limiter of endpoint ``name``; :class:`KeyError` for a name not in the table."""
        return self._limiters[name]
