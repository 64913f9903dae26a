"""Prometheus metrics of one sink. Each :class:`Metrics` has its own registry, so several sinks
(tests, benchmarks) can live in one process; ``serve`` exposes it over HTTP.

Labels never carry user ids or anything from the Knock settings: cardinality stays bounded
and the API key has no way in.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.consumed = Counter("knock_sink_events_consumed", "Kafka messages read", registry=r)
        self.applied = Counter(
            "knock_sink_events_applied", "Events whose changes Knock applied", registry=r
        )
        self.dead_lettered = Counter(
            "knock_sink_events_dead_lettered", "Events parked in the dead-letter topic",
            ["kind"], registry=r,
        )  # fmt: skip
        self.notes = Counter(
            "knock_sink_mapping_notes", "Events skipped or partly mapped, by reason",
            ["note"], registry=r,
        )  # fmt: skip
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
        self.pending = Gauge(
            "knock_sink_pending_events", "Events read but not yet committable", registry=r
        )
        self.paused = Gauge("knock_sink_paused", "1 while fetching is paused", registry=r)

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)


def total(counter: Counter) -> int:
    """Sum of a counter over all its label values (for summaries and tests)."""
    return int(sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total")))
