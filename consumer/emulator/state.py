"""Everything one emulator instance holds: the store, the bulk worker, limits, faults,
recorded triggers, idempotency replays and request counters.

Single-threaded by contract: only the server's event loop touches an :class:`Emulator`.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .bulk import BulkOperations
from .limits import Clock, EntityLimiter, Faults, FaultSettings, RateLimiter
from .store import Store

RateLimitMode = Literal["knock", "off"]
MergeMode = Literal["deep", "shallow"]
IDEMPOTENCY_TTL = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Replay:
    """A cached 2xx trigger answer, replayed for the same ``Idempotency-Key``."""

    expires_at: float
    fingerprint: bytes
    body: dict[str, Any]
    request_id: str


class Stats:
    """Counters read back by tests through ``GET /_emulator/stats``."""

    def __init__(self) -> None:
        self.requests: defaultdict[str, Counter[str]] = defaultdict(Counter)
        #: Wall time (Unix seconds) of the first request counted: the benchmark times a run
        #: from the sink's first call as well as from its start.
        self.first_request_at: float | None = None
        self.identify_entries = 0
        self.identify_by_user: Counter[str] = Counter()
        #: Users the ``failing_users`` fault refused, by route.
        self.refused: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def record(self, endpoint: str, status: int) -> None:
        if self.first_request_at is None:
            self.first_request_at = time.time()
        self.requests[endpoint][str(status)] += 1

    def refuse(self, endpoint: str, user_ids: Iterable[str]) -> None:
        self.refused[endpoint].update(user_ids)

    def count_identify(self, user_ids: Iterable[str]) -> None:
        ids = list(user_ids)
        self.identify_entries += len(ids)
        self.identify_by_user.update(ids)


class Emulator:
    """One emulator's state (see the module docstring for the threading contract)."""

    def __init__(
        self,
        *,
        api_key: str,
        rate_limits: RateLimitMode = "knock",
        merge: MergeMode = "deep",
        db: str | None = None,
        faults: FaultSettings | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        """``clock`` drives every time-based rule (tiers, the per-entity limit, outages,
        the 24 h idempotency window), so tests advance it instead of sleeping."""
        if rate_limits not in ("knock", "off"):
            raise ValueError(f"rate_limits must be 'knock' or 'off', not {rate_limits!r}")
        if merge not in ("deep", "shallow"):
            raise ValueError(f"merge must be 'deep' or 'shallow', not {merge!r}")
        self.api_key = api_key
        self.limits_on = rate_limits == "knock"
        self.deep = merge == "deep"
        self.clock = clock
        self.store = Store(db)
        self.faults = Faults(faults, clock)
        self.limiter = RateLimiter(clock)
        self.entities = EntityLimiter(clock)
        self.bulk = BulkOperations(
            self.store,
            deep=self.deep,
            failing_users=lambda: self.faults.settings.failing_users,
            refused=self._refused,
            delay=lambda: self.faults.settings.bulk_ms / 1000,
        )
        self.stats = Stats()
        self.triggers: list[dict[str, Any]] = []
        self.replays: dict[str, Replay] = {}

    def reset(self) -> None:
        """Drop all state and counters; faults go back to the ones the server started with."""
        self.store.reset()
        self.bulk.reset()
        self.limiter.reset()
        self.entities.reset()
        self.faults.restore()
        self.stats = Stats()
        self.triggers.clear()
        self.replays.clear()

    def _refused(self, endpoint: str, user_ids: list[str]) -> None:
        # Looked up on each call: reset() puts new counters in place.
        self.stats.refuse(endpoint, user_ids)

    def replay(self, key: str) -> Replay | None:
        now = self.clock()
        if len(self.replays) > 10_000:
            self.replays = {k: r for k, r in self.replays.items() if r.expires_at > now}
        found = self.replays.get(key)
        return found if found is not None and found.expires_at > now else None

    def remember(self, key: str, fingerprint: bytes, body: dict[str, Any], request_id: str) -> None:
        self.replays[key] = Replay(self.clock() + IDEMPOTENCY_TTL, fingerprint, body, request_id)
