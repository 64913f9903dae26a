"""How fresh Knock is: the age of each applied event, measured where the loop takes in a plan's
outcome (within one loop turn of Knock finishing it).

Three histograms, registered in the sink's own registry (:class:`consumer.metrics.Metrics`):

* ``knock_sink_event_age_seconds{clock="event"}``: now minus the event's own ``timestamp``
  (the producer's clock: skew between machines shows here, and only here);
* ``knock_sink_event_age_seconds{clock="kafka"}``: now minus the Kafka record's timestamp
  (the producer's or the broker's, as the topic's ``message.timestamp.type`` says);
* ``knock_sink_consume_to_apply_seconds``: from the moment the sink read the event to the
  moment Knock had applied it: the sink's own share.

Consumer lag is the operations metrics' (per partition), not this module's.

Each outcome is sampled, evenly, :data:`SAMPLE` events at most: a histogram observation takes a
lock, and a backfill applies tens of thousands of events a second; a live sink's plan (a second
of traffic) is rarely bigger than the sample, and the quantiles of an even sample are those of
the whole. Event timestamps are parsed only for the sampled events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Histogram

from .events import parse_timestamp
from .plan import Pending

#: Events observed per outcome at most.
SAMPLE: Final = 256
#: Seconds: sub-second steps where a live sink lives, then minutes to hours for backfills.
BUCKETS: Final = (
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.25,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    21600.0,
    86400.0,
)


class Freshness:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.age = Histogram(
            "knock_sink_event_age_seconds",
            "Age of an event when Knock has applied it, by the event's or the Kafka record's clock",
            ["clock"],
            buckets=BUCKETS,
            registry=registry,
        )
        self._by_event = self.age.labels("event")
        self._by_kafka = self.age.labels("kafka")
        self.consume_to_apply = Histogram(
            "knock_sink_consume_to_apply_seconds",
            "Seconds from consuming an event to Knock having applied it",
            buckets=BUCKETS,
            registry=registry,
        )

    def applied(self, done: Sequence[Pending], now: float) -> None:
        """Observe a sample of ``done`` as applied at wall time ``now``, by the stamps of each
        one's :class:`~consumer.stage.Committable` (an event's, or a held user's first event's;
        unstamped ones are left out)."""
        if not done:
            return
        step = max(1, len(done) // SAMPLE)
        for p in done[::step]:
            h = p.source
            seen = h.seen
            if not seen:
                continue
            self.consume_to_apply.observe(max(0.0, now - seen))
            kafka_ms = h.kafka_ms
            if kafka_ms:
                self._by_kafka.observe(max(0.0, now - kafka_ms / 1000))
            stamp = parse_timestamp(h.event_ts)
            if stamp is not None:
                self._by_event.observe(max(0.0, now - stamp.timestamp()))
