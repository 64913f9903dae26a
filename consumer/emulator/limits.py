"""Knock's rate limits (per-endpoint tiers, per-entity limit of bulk calls) and the faults
that can be switched on from the CLI or the control API.

All of it is plain single-threaded state driven by an injected clock, so tests of the sink
can reason about it and the server does not need locks (it lives on the event loop).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

Clock = Callable[[], float]

#: Requests per second of Knock's documented tiers 1–5. The emulator's own copy, kept apart
#: from the sink's pacing table on purpose: this is the other side of the contract, so a
#: wrong number in the sink shows up as 429s here rather than being agreed with.
TIER_RATES: Final = {1: 1.0, 2: 5.0, 3: 60.0, 4: 200.0, 5: 1000.0}
#: Knock's "one update per second per entity" window of bulk endpoints.
ENTITY_WINDOW: Final = 1.0


class RateLimiter:
    """One token bucket per endpoint: ``rate`` tokens per second, bursts up to ``rate``."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def reset(self) -> None:
        self._buckets.clear()

    def acquire(self, endpoint: str, tier: int) -> int:
        """Take a token for ``endpoint``; return 0 when allowed, else the ``Retry-After``
        in whole seconds (≥ 1) after which a token will be available."""
        rate = TIER_RATES[tier]
        now = self._clock()
        tokens, last = self._buckets.get(endpoint, (rate, now))
        tokens = min(rate, tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[endpoint] = (tokens - 1.0, now)
            return 0
        self._buckets[endpoint] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / rate))


class EntityLimiter:
    """Knock's per-entity limit of bulk endpoints: an entity updated by a bulk call less than
    one second ago is skipped by the next one."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}

    def reset(self) -> None:
        self._last.clear()

    def admit(self, entity_ids: Iterable[str]) -> set[str]:
        """Record an update of every id not limited; return the limited ones.

        An id repeated inside one call is one update, not two.
        """
        now = self._clock()
        if len(self._last) > 200_000:
            self._last = {k: t for k, t in self._last.items() if now - t < ENTITY_WINDOW}
        limited: set[str] = set()
        fresh: set[str] = set()
        for uid in entity_ids:
            if uid in fresh:
                continue
            last = self._last.get(uid)
            if last is not None and now - last < ENTITY_WINDOW:
                limited.add(uid)
            else:
                fresh.add(uid)
        for uid in fresh:
            self._last[uid] = now
        return limited


class FaultUpdate(BaseModel):
    """Body of ``POST /_emulator/faults``: every field optional, absent ones unchanged."""

    model_config = ConfigDict(extra="forbid")

    error_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    error_statuses: list[int] | None = Field(default=None, min_length=1)
    rate_limit_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    latency_ms: int | None = Field(default=None, ge=0)
    outage_seconds: float | None = Field(default=None, ge=0.0)
    failing_users: list[str] | None = None
    fail_bulk_operations: int | None = Field(default=None, ge=0)
    #: Milliseconds a bulk operation stays queued after it was accepted (Knock's take seconds).
    bulk_ms: int | None = Field(default=None, ge=0)
    seed: int | None = None
    #: The workflow keys that exist; ``null`` = any key is accepted.
    workflows: list[str] | None = None


@dataclass(frozen=True, slots=True)
class FaultSettings:
    """The faults in force. ``outage_until`` is a clock reading (``0`` = no outage)."""

    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 503)
    rate_limit_rate: float = 0.0
    latency_ms: int = 0
    outage_until: float = 0.0
    failing_users: frozenset[str] = field(default_factory=frozenset)
    fail_bulk_operations: int = 0
    bulk_ms: int = 0
    seed: int | None = None
    #: Workflow keys that exist (others are Knock's 404); ``None`` accepts any key.
    workflows: frozenset[str] | None = None


class Faults:
    """The fault state: settings plus the random source they draw from."""

    def __init__(self, initial: FaultSettings | None = None, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._initial = initial or FaultSettings()
        self.settings = self._initial
        self._random = random.Random(self._initial.seed)

    def restore(self) -> None:
        """Back to the settings the server started with (``DELETE`` and reset)."""
        self.settings = self._initial
        self._random = random.Random(self._initial.seed)

    def clear(self) -> None:
        self.settings = FaultSettings()
        self._random = random.Random()

    def update(self, change: FaultUpdate) -> None:
        given = change.model_dump(exclude_unset=True)
        updates: dict[str, Any] = {}
        for key, value in given.items():
            if key == "outage_seconds":
                updates["outage_until"] = self._clock() + value if value else 0.0
            elif key == "failing_users":
                updates[key] = frozenset(value or ())
            elif key == "workflows":
                updates[key] = None if value is None else frozenset(value)
            elif key == "error_statuses":
                updates[key] = tuple(value or (500, 503))
            elif value is not None or key == "seed":
                updates[key] = value
        self.settings = replace(self.settings, **updates)
        if "seed" in given:
            self._random = random.Random(self.settings.seed)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {f.name: getattr(s, f.name) for f in fields(s)}
        del out["outage_until"]
        out["outage_seconds"] = max(0.0, s.outage_until - self._clock())
        out["error_statuses"] = list(s.error_statuses)
        out["failing_users"] = sorted(s.failing_users)
        out["workflows"] = None if s.workflows is None else sorted(s.workflows)
        return out

    def in_outage(self) -> bool:
        return self.settings.outage_until > self._clock()

    def draw(self) -> int:
        """The status a request is forced to answer (429 or an error status), or 0."""
        s = self.settings
        if s.rate_limit_rate and self._random.random() < s.rate_limit_rate:
            return 429
        if s.error_rate and self._random.random() < s.error_rate:
            return self._random.choice(s.error_statuses)
        return 0

    def take_doomed_bulk(self) -> bool:
        """Consume one of the ``fail_bulk_operations`` budget; ``True`` if this op must fail."""
        if self.settings.fail_bulk_operations <= 0:
            return False
        self.settings = replace(
            self.settings, fail_bulk_operations=self.settings.fail_bulk_operations - 1
        )
        return True
