"""Whether and when to try a request to Knock again, in one place.

* :func:`classify` is the single source of truth for what an HTTP status means.
* :class:`Backoff` and :func:`parse_retry_after` decide how long to wait before a retry.
* :func:`wait` is the default :data:`Sleeper`, cut short by a stop event.

Nothing here does I/O; time comes from injected callables so tests advance a fake clock
instead of sleeping. Pacing to Knock's tiers is :mod:`consumer.pacing`.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Literal

Verdict = Literal["ok", "retry", "item", "fatal"]
#: Monotonic seconds.
Clock = Callable[[], float]
#: ``sleep(seconds, stop)``: wait up to ``seconds``, returning early once ``stop`` is set.
Sleeper = Callable[[float, threading.Event | None], None]


def wait(seconds: float, stop: threading.Event | None = None) -> None:
    """The default :data:`Sleeper`: interruptible by ``stop`` so shutdown is prompt."""
    if seconds <= 0:
        return
    if stop is None:
        time.sleep(seconds)
    else:
        stop.wait(seconds)


def classify(status: int) -> Verdict:
    """What the sink does about an HTTP status from Knock.

    2xx ``ok``; 408, 429 and 5xx ``retry``; 401 and 403 ``fatal``; any other 4xx ``item``
    (a rejection of this request's content; the client decides when a 404 means "missing").
    Anything else (1xx, 3xx: redirects are not followed) is ``fatal``: Knock never answers so,
    so the base URL points somewhere else.
    """
    if 200 <= status < 300:
        return "ok"
    if status in (408, 429) or 500 <= status < 600:
        return "retry"
    if status in (401, 403):
        return "fatal"
    if 400 <= status < 500:
        return "item"
    return "fatal"


def parse_retry_after(
    headers: Mapping[str, str], *, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds the server asked us to wait, or ``None`` when it did not say (or said nonsense).

    Reads ``retry-after-ms`` first (what Knock's SDKs prefer), then ``retry-after`` as seconds or
    as an HTTP-date (a date in the past means 0). ``headers`` must be case-insensitive, such as
    ``httpx.Headers``; ``now`` is wall-clock time, for HTTP-dates.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        ms = _finite(raw_ms)
        if ms is not None and ms >= 0:
            return ms / 1000
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _finite(raw)
    if seconds is not None:
        return seconds if seconds >= 0 else None
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means "-0000"
        return None
    return max(0.0, when.timestamp() - now())


def _finite(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class Backoff:
    """Capped exponential backoff with full jitter.

    :param base: ceiling of the first delay, seconds.
    :param cap: largest delay ever chosen by the backoff itself, seconds.
    :param rng: returns a float in ``[0, 1)``; injectable for tests.
    """

    def __init__(
        self, *, base: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random
    ) -> None:
        if base <= 0 or cap <= 0:
            raise ValueError("base and cap must be positive")
        self.base = base
        self.cap = cap
        self._rng = rng

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (``attempt`` counts from 0).

        ``rng() * min(cap, base * 2**attempt)``, raised to ``retry_after`` when the server gave
        one: the server's hint is a floor, never shortened by jitter nor cut by ``cap``.
        """
        # Clamp the exponent: retries go on forever and 2.0**1100 overflows a float.
        ceiling = min(self.cap, self.base * 2.0 ** min(max(attempt, 0), 62))
        chosen = self._rng() * ceiling
        return chosen if retry_after is None else max(retry_after, chosen)
