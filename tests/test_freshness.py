"""Freshness metrics (consumer.freshness): exposed on the metrics port and moved by applied
events, on the real broker and the local Knock API. Not a speed check: the ages asserted are
either set by the test (event timestamps two hours old) or bounded far beyond any run."""

from __future__ import annotations

import socket
import threading
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from consumer.freshness import Freshness
from consumer.sink import Sink
from tests.conftest import wait_for
from tests.model import actual_state, expected_state


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_event_age_and_consume_to_apply_are_exposed_and_move(kafka, api, settings_for):
    topic = kafka.topic(3)
    port = _free_port()
    sink = Sink(settings_for(topic, sink__metrics_port=port))
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(summary=sink.run()))
    t.start()
    two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    events: list[dict[str, Any]] = [
        {"type": "identify", "userId": f"u{i}", "timestamp": two_hours_ago, "traits": {"i": i}}
        for i in range(20)
    ]
    events.append({"type": "identify", "userId": "no-stamp", "traits": {"i": -1}})
    try:
        wait_for(lambda: _scrape_or_none(port), 30, "metrics port")
        before = _scrape(port)
        assert before[("knock_sink_consume_to_apply_seconds_count", ())] == 0
        kafka.produce(topic, events)
        wait_for(lambda: actual_state(api.users()) == expected_state(events), 60, "users applied")
        m = wait_for(
            lambda: (
                (s := _scrape(port))[("knock_sink_consume_to_apply_seconds_count", ())]
                == len(events)
                and s
            ),
            30,
            "every applied event observed",
        )
    finally:
        sink.stop()
        t.join(60)
    assert not t.is_alive() and "summary" in result
    event, kafka_clock = (("clock", "event"),), (("clock", "kafka"),)
    # Every event is one op of its own user, far below the sample: each is observed once.
    assert m[("knock_sink_event_age_seconds_count", kafka_clock)] == len(events)
    # The event without a timestamp has no age by the event's clock.
    assert m[("knock_sink_event_age_seconds_count", event)] == len(events) - 1
    # Two hours old by their own clock: none is in the one-hour bucket, all in the six-hour one.
    assert m[("knock_sink_event_age_seconds_bucket", (*event, ("le", "3600.0")))] == 0
    six_hours = (*event, ("le", "21600.0"))
    assert m[("knock_sink_event_age_seconds_bucket", six_hours)] == len(events) - 1
    assert m[("knock_sink_event_age_seconds_sum", event)] >= 2 * 3600 * (len(events) - 1)
    # The Kafka records were stamped when the test produced them, well inside five minutes.
    five_minutes = (*kafka_clock, ("le", "300.0"))
    assert m[("knock_sink_event_age_seconds_bucket", five_minutes)] == len(events)
    assert m[("knock_sink_consume_to_apply_seconds_bucket", (("le", "300.0"),))] == len(events)


def _scrape_or_none(port: int) -> Any:
    try:
        return _scrape(port)
    except OSError:
        return None


class _Handle:
    def __init__(self, seen: float, kafka_ms: int | None, event_ts: object) -> None:
        self.seen, self.kafka_ms, self.event_ts = seen, kafka_ms, event_ts


class _Pending:
    def __init__(self, source: _Handle) -> None:
        self.source = source


def test_a_big_outcome_is_sampled_evenly() -> None:
    from prometheus_client import CollectorRegistry

    from consumer.freshness import SAMPLE

    registry = CollectorRegistry()
    f = Freshness(registry)
    done = [_Pending(_Handle(100.0, 99_000, 98.0)) for _ in range(SAMPLE * 4)]
    f.applied(done, 101.0)  # type: ignore[arg-type]
    got = registry.get_sample_value
    assert got("knock_sink_consume_to_apply_seconds_count") == SAMPLE
    assert got("knock_sink_consume_to_apply_seconds_sum") == SAMPLE * 1.0
    assert got("knock_sink_event_age_seconds_sum", {"clock": "kafka"}) == SAMPLE * 2.0
    assert got("knock_sink_event_age_seconds_sum", {"clock": "event"}) == SAMPLE * 3.0
    # Not seen by the sink (zero): left out.
    f.applied([_Pending(_Handle(0.0, None, None))], 101.0)  # type: ignore[list-item]
    assert got("knock_sink_consume_to_apply_seconds_count") == SAMPLE
