"""Progress step: what a backfill shows while it runs, and its summary at the end, read from
:class:`~consumer.metrics.Metrics` only (never the loop's own state), on a thread of its own.

On a terminal a live table (rich): events read and applied, lag per partition (its target
minus its commit), users sent, Knock calls and rate-limit waits, dead-lettered, and an ETA.
Off a terminal one plain log line every few seconds. Under Knock's limits the ETA is the users
still to send (the distinct users per event read so far, sent or held, times the events left)
at the rate users were sent over the last :data:`RATE_WINDOW` seconds, or at the bulk budget
before that: a backfill that shares Knock's budget with a live sink, or meets 429s, shows the
rate it gets, not the one it was promised. Without limits, from the rate applied so far.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, TextIO

from .metrics import Metrics, by_label, total

log = logging.getLogger("knock_sink.progress")

#: Seconds between plain progress lines off a terminal.
PLAIN_EVERY = 5.0
#: Seconds of sending the ETA's rate is measured over, and the least it needs.
RATE_WINDOW = 30.0
RATE_MIN = 10.0


@dataclass(frozen=True)
class Snapshot:
    consumed: int
    applied: int
    users_sent: int
    calls: dict[str, int]
    dead_lettered: dict[str, int]
    rate_limit_wait: float
    lag: dict[tuple[str, int], int]
    elapsed: float
    eta: float | None

    @property
    def remaining(self) -> int:
        return sum(self.lag.values())


def snapshot(
    metrics: Metrics,
    started: float,
    *,
    bulk_per_second: float | None,
    send_rate: float | None = None,
    now: float | None = None,
) -> Snapshot:
    """The run so far. ``bulk_per_second``: users a second Knock's bulk budget allows this
    process (``None``: limits off); ``send_rate``: users a second sent lately (``None``: not
    measured yet), which the ETA uses instead when there is one."""
    now = time.monotonic() if now is None else now
    committed = metrics.committed_positions()
    lag = {}
    for labels, target in _gauge(metrics.target):
        tp = (labels["topic"], int(labels["partition"]))
        lag[tp] = max(0, int(target) - committed.get(tp, 0))
    consumed, applied, users = (
        total(metrics.consumed),
        total(metrics.applied),
        total(metrics.users_sent),
    )
    elapsed = max(now - started, 1e-9)
    remaining = sum(lag.values())
    eta: float | None = None
    if remaining == 0 and lag:
        eta = 0.0
    elif bulk_per_second and consumed:
        # Held users are read and not sent yet: left out, a backfill reading ahead counts
        # almost no users per event.
        held = sum(value for _labels, value in _gauge(metrics.held_states))
        per_event = min(1.0, (users + held) / consumed) if users + held else 1.0
        rate = send_rate if send_rate is not None else bulk_per_second
        eta = remaining * per_event / rate if rate > 0 else None
    elif applied:
        eta = remaining / (applied / elapsed)
    wait = getattr(metrics, "rate_limit_wait", None)
    return Snapshot(
        consumed,
        applied,
        users,
        by_label(metrics.knock_calls),
        by_label(metrics.dead_lettered),
        _sum(wait) if wait is not None else 0.0,
        lag,
        elapsed,
        eta,
    )


def _gauge(metric: Any) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for m in metric.collect() for s in m.samples]


def _sum(metric: Any) -> float:
    return float(
        sum(
            s.value
            for m in metric.collect()
            for s in m.samples
            if s.name.endswith(("_total", "_sum"))
        )
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def plain_line(snap: Snapshot) -> str:
    calls = sum(snap.calls.values())
    return (
        f"backfill: {snap.consumed} read, {snap.applied} applied, {snap.remaining} to go over "
        f"{len(snap.lag)} partitions, {snap.users_sent} users sent in {calls} Knock calls, "
        f"{snap.rate_limit_wait:.1f} s waiting on rate limits, {sum(snap.dead_lettered.values())} "
        f"dead-lettered, ETA {_duration(snap.eta)}"
    )


def table(snap: Snapshot) -> Any:
    from rich.table import Table

    t = Table(
        title=f"knock-sink backfill, {_duration(snap.elapsed)} elapsed, ETA {_duration(snap.eta)}"
    )
    t.add_column("")
    t.add_column("", justify="right")
    t.add_row("events read", str(snap.consumed))
    t.add_row("events applied", str(snap.applied))
    t.add_row("users sent", str(snap.users_sent))
    t.add_row("Knock calls", ", ".join(f"{k} {v}" for k, v in sorted(snap.calls.items())) or "0")
    t.add_row("rate-limit waits", f"{snap.rate_limit_wait:.1f} s")
    t.add_row(
        "dead-lettered", ", ".join(f"{k} {v}" for k, v in sorted(snap.dead_lettered.items())) or "0"
    )
    for (topic, partition), lag in sorted(snap.lag.items()):
        t.add_row(f"lag {topic}[{partition}]", str(lag))
    return t


class SendRate:
    """Users a second sent over the last :data:`RATE_WINDOW` seconds, from the count of users
    sent read at each snapshot."""

    def __init__(self) -> None:
        # (time, users sent so far) at each reading since the first send.
        self._readings: deque[tuple[float, int]] = deque()

    def add(self, now: float, sent: int) -> float | None:
        """The rate after this reading: ``None`` until users have been sent for
        :data:`RATE_MIN` seconds."""
        readings = self._readings
        if not readings and not sent:
            return None
        readings.append((now, sent))
        while len(readings) > 2 and now - readings[1][0] >= RATE_WINDOW:
            readings.popleft()
        then, before = readings[0]
        if now - then < RATE_MIN:
            return None
        return (sent - before) / (now - then)


class Progress:
    """Shows a backfill's progress on ``stream`` until :meth:`close`, which prints the summary.

    :param terminal: live table (``True``) or plain log lines; default: ``stream.isatty()``.
    """

    def __init__(
        self,
        metrics: Metrics,
        stream: TextIO,
        *,
        bulk_per_second: float | None,
        terminal: bool | None = None,
        every: float | None = None,
    ) -> None:
        self._metrics = metrics
        self._stream = stream
        self._bulk = bulk_per_second
        self._terminal = stream.isatty() if terminal is None else terminal
        self._every = every if every is not None else (0.5 if self._terminal else PLAIN_EVERY)
        self._started = time.monotonic()
        self._rate = SendRate()
        self._done = threading.Event()
        self._live: Any = None
        if self._terminal:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=stream, force_terminal=True, highlight=False)
            self._live = Live(table(self._snap()), console=self._console, auto_refresh=False)
            self._live.start()
            # Log lines go above the table rather than through it: rich swapped sys.stderr for a
            # proxy that prints there, but the logging handler holds the stream it was given.
            self._handlers = [
                h
                for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and h.stream is stream
            ]
            for h in self._handlers:
                h.setStream(sys.stderr)
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()

    def _snap(self) -> Snapshot:
        now = time.monotonic()
        return snapshot(
            self._metrics,
            self._started,
            bulk_per_second=self._bulk,
            send_rate=self._rate.add(now, total(self._metrics.users_sent)),
            now=now,
        )

    def _loop(self) -> None:
        while not self._done.wait(self._every):
            self._show()

    def _show(self) -> None:
        snap = self._snap()
        if self._live is not None:
            self._live.update(table(snap), refresh=True)
        else:
            log.info(plain_line(snap))

    def close(self, *, report: bool = True) -> dict[str, Any]:
        """Stop showing; return (and, with ``report``, show) the summary: events, users,
        calls, dead-lettered by kind, duration. ``report=False``: the run never started (a bad
        setting), so there is nothing to tell but that one line."""
        self._done.set()
        self._thread.join()
        snap = self._snap()
        out = {
            "events": snap.consumed,
            "applied": snap.applied,
            "users_sent": snap.users_sent,
            "knock_calls": snap.calls,
            "dead_lettered": snap.dead_lettered,
            "rate_limit_wait_seconds": round(snap.rate_limit_wait, 3),
            "duration_seconds": round(snap.elapsed, 3),
        }
        if self._live is not None:
            self._live.update(table(snap), refresh=True)
            self._live.stop()
            for h in self._handlers:
                h.setStream(self._stream)
        if not report:
            return out
        if self._live is not None:
            self._console.print(
                f"backfill done in {_duration(snap.elapsed)}: {snap.consumed} events, "
                f"{snap.users_sent} users, {sum(snap.calls.values())} Knock calls, "
                f"dead-lettered {snap.dead_lettered or 0}"
            )
        else:
            log.info(plain_line(snap))
        return out
