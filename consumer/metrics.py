"""What happened, recorded once: the Prometheus metrics of one sink, and the run's
:class:`Summary` read back from them.

Each :class:`Metrics` has its own registry, so several sinks (tests, benchmarks) can live in one
process; ``serve`` exposes it over HTTP. Labels never carry user ids or anything from the Knock
settings: cardinality stays bounded and the API key has no way in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, overload

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .freshness import Freshness
from .records import Partition

M = TypeVar("M", Counter, Gauge, Histogram)
Kind = Literal["counter", "gauge", "histogram"]


class Declared(Generic[M]):
    """One metric of :class:`Metrics`, declared as a class attribute: its name, kind, help and
    labels, read by the metrics reference (``python -m consumer.docs``) without building it.

    On a :class:`Metrics` instance the attribute is the metric itself, built in that
    instance's registry by :meth:`Metrics.__init__`; on the class it is this declaration.
    """

    def __init__(
        self,
        kind: Kind,
        make: Callable[[CollectorRegistry], M],
        name: str,
        help: str,
        labels: tuple[str, ...],
        doc: str,
    ) -> None:
        self.kind, self.name, self.help, self.labels, self.doc = kind, name, help, labels, doc
        self.attr = ""
        self._make: Callable[[CollectorRegistry], M] = make

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr

    @overload
    def __get__(self, obj: None, owner: type) -> Declared[M]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> M: ...
    def __get__(self, obj: object | None, owner: type) -> Declared[M] | M:
        # Reached only on the class, or before __init__ set the instance's own metric.
        if obj is None:
            return self
        raise AttributeError(self.attr)

    def build(self, registry: CollectorRegistry) -> M:
        return self._make(registry)

    @property
    def exposed(self) -> str:
        """The name Prometheus shows: counters get ``_total``."""
        return f"{self.name}_total" if self.kind == "counter" else self.name


def counter(name: str, help: str, *labels: str, doc: str = "") -> Declared[Counter]:
    """A counter; ``doc`` adds to ``help`` in the reference only (label values, pointers)."""
    return Declared(
        "counter", lambda r: Counter(name, help, labels, registry=r), name, help, labels, doc
    )


def gauge(name: str, help: str, *labels: str, doc: str = "") -> Declared[Gauge]:
    return Declared(
        "gauge", lambda r: Gauge(name, help, labels, registry=r), name, help, labels, doc
    )


def histogram(
    name: str, help: str, *labels: str, buckets: tuple[float, ...], doc: str = ""
) -> Declared[Histogram]:
    return Declared(
        "histogram",
        lambda r: Histogram(name, help, labels, registry=r, buckets=buckets),
        name,
        help,
        labels,
        doc,
    )


class Metrics:
    """The sink's metrics, declared one after another; each instance has its own registry.

    Names, kinds, help texts and labels are part of the interface (dashboards and alerts read
    them): change them only on purpose. The freshness histograms are declared beside the code
    that observes them (:class:`~consumer.freshness.Freshness`).
    """

    consumed = counter("knock_sink_events_consumed", "Kafka messages read")
    applied = counter("knock_sink_events_applied", "Events whose changes Knock applied")
    unchanged = counter(
        "knock_sink_events_unchanged",
        "Events not sent: Knock was known to have everything they carry (counted as applied too)",
        doc="Change detection; see [change detection](../change-detection.md).",
    )
    known_restore = histogram(
        "knock_sink_known_restore_seconds",
        "Time to restore change detection's state of one assigned partition from its changelog",
        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        doc="See [change detection](../change-detection.md#restarts-and-rebalances).",
    )
    known_users = gauge(
        "knock_sink_known_users",
        "Users whose confirmed properties change detection remembers",
        doc="See [change detection](../change-detection.md#what-it-costs).",
    )
    known_bytes = gauge(
        "knock_sink_known_memory_bytes",
        "Change detection's estimate of the memory its record takes (bounded by "
        "sink.known_memory_mb)",
        doc="See [change detection](../change-detection.md#what-it-costs).",
    )
    dead_lettered = counter(
        "knock_sink_events_dead_lettered",
        "Events parked in the dead-letter topic",
        "kind",
        doc="`kind`: `undecodable`, `invalid_event`, `forbidden_user_id`, `oversize`, "
        "`knock_rejected`.",
    )
    notes = counter(
        "knock_sink_mapping_notes",
        "Events skipped or partly mapped, by reason",
        "note",
        doc="Skipped workflow triggers are notes too: `trigger_too_old`, `trigger_backfill`, "
        "`trigger_no_time`.",
    )
    knock_calls = counter("knock_sink_knock_calls", "Knock operations sent", "operation")
    users_sent = counter("knock_sink_users_sent", "User entries sent to Knock (after coalescing)")
    retries = counter(
        "knock_sink_retries",
        "Knock requests or items retried",
        "reason",
        doc="Items given back for a retry: `item`, `blocked`.",
    )
    commits = counter("knock_sink_commits", "Offset commits")
    committed = gauge(
        "knock_sink_committed_offset",
        "Last committed position (next offset to read)",
        "topic",
        "partition",
    )
    pending = gauge("knock_sink_pending_events", "Events read but not yet committable")
    paused = gauge("knock_sink_paused", "1 while fetching is paused", doc="Backpressure.")
    catching_up = gauge(
        "knock_sink_catching_up_partitions",
        "Partitions behind by a backlog whose users are held and folded until it is read",
        doc="See [catching up](../operations.md#catching-up).",
    )
    users_on_several_partitions = counter(
        "knock_sink_users_on_several_partitions",
        "Users whose events came on more than one partition of a topic (not keyed by user)",
        doc="See [topics not keyed by user](../delivery.md#topics-not-keyed-by-user).",
    )
    late_events = counter(
        "knock_sink_late_events",
        "Ops of a user split over partitions handed on in arrival order: older than one of "
        "the user's already handed on",
        doc="See [event-time order](../delivery.md#event-time-order-inside-the-sink).",
    )
    duplicate_merges = counter(
        "knock_sink_duplicate_merges",
        "Merges (alias) skipped: their messageId repeats one taken in from another position",
        doc="See [duplicates](../delivery.md#duplicates).",
    )
    budget_share = gauge(
        "knock_sink_budget_share",
        "Share of each Knock rate-limit tier this process uses",
        doc="Re-derived at every rebalance; see [scaling out](../operations.md#scaling-out).",
    )
    budget_idle = gauge(
        "knock_sink_budget_idle_ratio",
        "Share of this process's part of a Knock route's budget it left unused over the last "
        "10 s (bulk identify, single identify)",
        "route",
        doc="1 while it has nothing to send. In a group, taking turns on tier 1 leaves 0.17 of "
        "bulk identify (0.2 s of every 1.2 s turn) unused at best; see [scaling out](../operations.md#scaling-out).",
    )
    events = counter(
        "knock_sink_events",
        "Events read, by type and what became of them at reading "
        "(queued for Knock, nothing to send, dead-lettered)",
        "type",
        "outcome",
        doc="`type`: the Segment type, `invalid` when it could not be read, parsed or mapped; "
        "`outcome`: `queued`, `nothing_to_send`, `dead_lettered`.",
    )
    plan_users = histogram(
        "knock_sink_plan_users",
        "Users per plan sent to Knock",
        buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 4000, 8000),
    )
    knock_requests = counter(
        "knock_sink_knock_requests",
        "HTTP requests to Knock, by route and status (error: no answer)",
        "route",
        "status",
    )
    knock_latency = histogram(
        "knock_sink_knock_request_seconds",
        "Time of one HTTP request to Knock",
        "route",
        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )
    rate_limit_wait = counter(
        "knock_sink_rate_limit_wait_seconds",
        "Seconds requests waited for their rate limit",
        "route",
    )
    lag = gauge(
        "knock_sink_consumer_lag",
        "Events after the committed position, per partition held",
        "topic",
        "partition",
        doc="The high watermark as last fetched minus the commit; a partition appears after "
        "its first commit.",
    )
    target = gauge(
        "knock_sink_backfill_target_offset",
        "Position a backfill runs up to, per partition",
        "topic",
        "partition",
    )
    held_states = gauge(
        "knock_sink_backfill_held_states",
        "User states a backfill holds, not yet handed out for sending, in memory or on disk "
        "(a user spilled twice has two states on disk)",
        "where",
        doc="`where`: `memory`, `disk`.",
    )
    spilled_states = counter(
        "knock_sink_backfill_spilled_states", "User states a backfill spilled to disk"
    )
    held_budget = gauge(
        "knock_sink_backfill_held_budget_bytes",
        "What of the backfill's memory budget its held users may take now (lowered as the "
        "process grows past the budget)",
        doc="Of `sink.backfill_memory_mb`; see [backfills](../backfills.md#memory).",
    )

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        for d in self.declared():
            setattr(self, d.attr, d.build(r))
        # A process holds every partition until a rebalance says otherwise.
        self.budget_share.set(1)
        #: Requests Knock counted against its budget, by route (the budget's idle ratio).
        self.spent: defaultdict[str, int] = defaultdict(int)
        #: How fresh Knock is when an event is applied (three histograms of their own).
        self.freshness = Freshness(r)

    @classmethod
    def declared(cls) -> Iterator[Declared[Any]]:
        """The declarations, in the order written."""
        return (v for v in vars(cls).values() if isinstance(v, Declared))

    def knock_request(self, route: str, status: int | None, seconds: float) -> None:
        """One HTTP request to Knock answered (``status``) or not (``None``)."""
        self.knock_requests.labels(route, str(status) if status is not None else "error").inc()
        if status is not None and status != 429:
            self.spent[route] += 1
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
    #: A backfill: whether it got to its end targets (``None``: not a backfill).
    reached: bool | None = None
    #: Whether the stop was asked for (a signal, :meth:`~consumer.sink.Sink.stop`).
    stopped: bool = False

    @classmethod
    def of(cls, metrics: Metrics, *, reached: bool | None = None, stopped: bool = False) -> Summary:
        return cls(
            reached=reached,
            stopped=stopped,
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
            **({} if self.reached is None else {"complete": self.reached}),
        }
