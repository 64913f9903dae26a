"""When a bulk call last updated each entity: the state behind Knock's per-entity gap.

Knock's bulk routes skip an entity (user, tenant, object) that a bulk call updated less than
:data:`~consumer.limits.ENTITY_GAP` earlier, and name it in an ``x-ratelimited-*`` header. The
appliers avoid that where they can: an identify whose user is too recent goes through single
identify instead (:class:`~consumer.apply.Applier`), and an action's bulk call waits the gap
out (:class:`~consumer.apply_actions.ActionRunner`). One :class:`EntityGap` serves both and
every plan in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

#: Entities remembered before those last stamped more than a gap ago are forgotten.
PRUNE_AT = 200_000

_NEVER = float("-inf")


class EntityGap:
    """The time each entity was last sent in a bulk call, by the appliers' ``clock``.

    Safe to share between threads: every read and write holds one lock. With ``gap`` 0 (no
    rate limits) nothing is remembered and nothing is ever too recent.

    :param gap: seconds Knock leaves between two bulk updates of one entity.
    :param sleep: the wait of :meth:`wait_out`.
    """

    def __init__(
        self,
        gap: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.gap = gap
        self._clock = clock
        self._sleep = sleep
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        """Whether the gap is kept at all."""
        return self.gap > 0

    def __len__(self) -> int:
        """Entities remembered."""
        return len(self._last)

    def recent(self, keys: Iterable[str], at: float) -> set[str]:
        """The ``keys`` a bulk call arriving at ``at`` would find updated less than a gap ago."""
        if not self.gap:
            return set()
        gap = self.gap
        with self._lock:
            last = self._last
            return {k for k in keys if at - last.get(k, _NEVER) < gap}

    def stamp(self, keys: Iterable[str], at: float | None = None) -> None:
        """Record a bulk call updating ``keys`` at ``at`` (default: the clock, read under the
        lock, so that stamps of one key never go back in time between threads)."""
        if not self.gap:
            return
        with self._lock:
            last = self._last
            now = self._clock() if at is None else at
            for k in keys:
                last[k] = now
            if len(last) > PRUNE_AT:
                # An entity stamped more than a gap ago counts as never stamped.
                cutoff = now - self.gap
                self._last = {k: t for k, t in last.items() if t >= cutoff}

    def forget(self, keys: Iterable[str]) -> None:
        """Knock refused the call that stamped ``keys`` as a whole: it updated none of them."""
        with self._lock:
            for k in keys:
                self._last.pop(k, None)

    def wait_out(self, keys: list[str]) -> None:
        """Wait until a bulk call would update every one of ``keys`` (at most one gap), then
        stamp them: a short wait costs less than Knock skipping them and a retry round."""
        if not self.gap:
            return
        with self._lock:
            latest = max((self._last.get(k, _NEVER) for k in keys), default=_NEVER)
        delay = latest + self.gap - self._clock()
        if delay > 0:
            self._sleep(min(delay, self.gap))
        self.stamp(keys)
