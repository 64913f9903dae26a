"""What happened, recorded once: the Prometheus metrics of one sink, and the run's
:class:`Summary` read back from them.

Each :class:`Metrics` has its own registry, so several sinks (tests, benchmarks) can live in one
process; ``serve`` exposes it over HTTP. Labels never carry user ids or anything from the Knock
settings: cardinality stays bounded and the API key has no way in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .freshness import Freshness
from .records import Partition


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.consumed = Counter("knock_sink_events_consumed", "Kafka messages read", registry=r)
        self.applied = Counter(
            "knock_sink_events_applied", "Events whose changes Knock applied", registry=r
        )
        self.dead_lettered = Counter(
            "knock_sink_events_dead_lettered",
            "Events parked in the dead-letter topic",
            ["kind"],
            registry=r,
        )
        self.notes = Counter(
            "knock_sink_mapping_notes",
            "Events skipped or partly mapped, by reason",
            ["note"],
            registry=r,
        )
        self.knock_calls = Counter(
            "knock_sink_knock_calls", "Knock operations sent", ["operation"], registry=r
        )
        self.users_sent = Counter(
            "knock_sink_users_sent", "User entries sent to Knock (after coalescing)", registry=r
        )
        self.retries = Counter(
            "knock_sink_retries", "Knock requests or items retried", ["reason"], registry=r
        )
        self.commits = Counter("knock_sink_commits", "Offset commits", registry=r)
        self.committed = Gauge(
            "knock_sink_committed_offset",
            "Last committed position (next offset to read)",
            ["topic", "partition"],
            registry=r,
        )
        self.pending = Gauge(
            "knock_sink_pending_events", "Events read but not yet committable", registry=r
        )
        self.paused = Gauge("knock_sink_paused", "1 while fetching is paused", registry=r)
        self.users_on_several_partitions = Counter(
            "knock_sink_users_on_several_partitions",
            "Users whose events came on more than one partition of a topic (not keyed by user)",
            registry=r,
        )
        self.late_events = Counter(
            "knock_sink_late_events",
            "Ops of a user split over partitions handed on in arrival order: older than one of the user's already handed on",
            registry=r,
        )
        self.duplicate_merges = Counter(
            "knock_sink_duplicate_merges",
            "Merges (alias) skipped: their messageId repeats one taken in from another position",
            registry=r,
        )
        self.budget_share = Gauge(
            "knock_sink_budget_share",
            "Share of each Knock rate-limit tier this process uses",
            registry=r,
        )
        self.budget_share.set(1)
        self.events = Counter(
            "knock_sink_events",
            "Events read, by type and what became of them at reading "
            "(queued for Knock, nothing to send, dead-lettered)",
            ["type", "outcome"],
            registry=r,
        )
        self.plan_users = Histogram(
            "knock_sink_plan_users",
            "Users per plan sent to Knock",
            registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 4000, 8000),
        )
        self.knock_requests = Counter(
            "knock_sink_knock_requests",
            "HTTP requests to Knock, by route and status (error: no answer)",
            ["route", "status"],
            registry=r,
        )
        self.knock_latency = Histogram(
            "knock_sink_knock_request_seconds",
            "Time of one HTTP request to Knock",
            ["route"],
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.rate_limit_wait = Counter(
            "knock_sink_rate_limit_wait_seconds",
            "Seconds requests waited for their rate limit",
            ["route"],
            registry=r,
        )
        self.lag = Gauge(
            "knock_sink_consumer_lag",
            "Events after the committed position, per partition held",
            ["topic", "partition"],
            registry=r,
        )
        self.target = Gauge(
            "knock_sink_backfill_target_offset",
            "Position a backfill runs up to, per partition",
            ["topic", "partition"],
            registry=r,
        )
        self.held_states = Gauge(
            "knock_sink_backfill_held_states",
            "User states a backfill holds, not yet handed out "
            "for sending, in memory or on disk (a user spilled twice has two states on disk)",
            ["where"],
            registry=r,
        )
        self.spilled_states = Counter(
            "knock_sink_backfill_spilled_states",
            "User states a backfill spilled to disk",
            registry=r,
        )
        self.held_budget = Gauge(
            "knock_sink_backfill_held_budget_bytes",
            "What of the backfill's memory budget its "
            "held users may take now (lowered as the process grows past the budget)",
            registry=r,
        )
        #: How fresh Knock is when an event is applied (three histograms of their own).
        self.freshness = Freshness(r)

    def knock_request(self, route: str, status: int | None, seconds: float) -> None:
        """One HTTP request to Knock answered (``status``) or not (``None``)."""
        self.knock_requests.labels(route, str(status) if status is not None else "error").inc()
        self.knock_latency.labels(route).observe(seconds)

    def set_lag(self, high_watermarks: dict[Partition, int]) -> None:
        """Lag of each partition held: its high watermark minus its commit (left out until
        its first commit)."""
        committed = self.committed_positions()
        self.lag.clear()
        for (topic, partition), hi in high_watermarks.items():
            if (topic, partition) in committed:
                self.lag.labels(topic, str(partition)).set(
                    max(0, hi - committed[(topic, partition)])
                )

    def knock_wait(self, route: str, seconds: float) -> None:
        if seconds > 0:
            self.rate_limit_wait.labels(route).inc(seconds)

    def committed_positions(self) -> dict[Partition, int]:
        """The last position committed for each partition this process ever committed."""
        return {
            (labels["topic"], int(labels["partition"])): int(v)
            for labels, v in _samples(self.committed, "_offset")
        }


def _samples(metric: Counter | Gauge, suffix: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value) for m in metric.collect() for s in m.samples if s.name.endswith(suffix)
    ]


def total(counter: Counter) -> int:
    """Sum of a counter over all its label values."""
    return int(sum(v for _, v in _samples(counter, "_total")))


def by_label(counter: Counter) -> dict[str, int]:
    """A one-label counter as ``{label value: count}``, zeros left out."""
    return {next(iter(labels.values())): int(v) for labels, v in _samples(counter, "_total") if v}


@dataclass(frozen=True)
class Summary:
    """What one run did, read from its :class:`Metrics`; printed by the command line."""

    consumed: int
    applied: int
    dead_lettered: dict[str, int]
    notes: dict[str, int]
    knock_calls: dict[str, int]
    users_sent: int
    committed: dict[Partition, int]

    @classmethod
    def of(cls, metrics: Metrics) -> Summary:
        return cls(
            consumed=total(metrics.consumed),
            applied=total(metrics.applied),
            dead_lettered=by_label(metrics.dead_lettered),
            notes=by_label(metrics.notes),
            knock_calls=by_label(metrics.knock_calls),
            users_sent=total(metrics.users_sent),
            committed=metrics.committed_positions(),
        )

    @property
    def triggers_skipped(self) -> dict[str, int]:
        """Workflow triggers not sent because the event was outside the trigger window, by
        reason: the ``trigger_*`` mapping notes (see :mod:`consumer.actions`)."""
        return {k: v for k, v in self.notes.items() if k.startswith("trigger_")}

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly view."""
        return {
            "consumed": self.consumed,
            "applied": self.applied,
            "dead_lettered": self.dead_lettered,
            "skipped_or_noted": self.notes,
            "triggers_skipped": self.triggers_skipped,
            "knock_calls": self.knock_calls,
            "users_sent": self.users_sent,
            "committed": {f"{t}[{p}]": o for (t, p), o in sorted(self.committed.items())},
        }
