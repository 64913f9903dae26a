"""The metrics of a real run, checked against what happened: the emulator's own request count
per status, the events produced by type, the broker's offsets."""

from __future__ import annotations

import threading
from collections import Counter

from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.metrics import Metrics
from consumer.sink import Sink
from tests.conftest import wait_for
from tests.model import actual_state, expected_state


def samples(sink: Sink) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(sink.metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def by(values: dict, name: str, *labels: str) -> dict:
    out: Counter = Counter()
    for (n, lab), v in values.items():
        if n == name:
            d = dict(lab)
            out[tuple(d[k] for k in labels)] += v
    return {k: v for k, v in out.items() if v}


KINDS = {"counter": PromCounter, "gauge": Gauge, "histogram": Histogram}


def test_each_declaration_is_an_attribute_of_its_kind_in_the_instances_own_registry():
    a, b = Metrics(), Metrics()
    declared = list(Metrics.declared())
    assert len({d.name for d in declared}) == len(declared) == 31
    for d in declared:
        metric = getattr(a, d.attr)
        assert isinstance(metric, KINDS[d.kind]), d.attr
        assert metric is not getattr(b, d.attr)  # one registry each: sinks side by side
        assert metric._name == d.name and tuple(metric._labelnames) == d.labels
    families = {f.name for f in a.registry.collect()}
    assert {d.name.removesuffix("_total") for d in declared} <= families
    # Beside them, the freshness histograms only.
    assert families - {d.name for d in declared} == {
        "knock_sink_event_age_seconds",
        "knock_sink_consume_to_apply_seconds",
    }


def test_a_process_starts_with_the_whole_budget():
    assert Metrics().budget_share._value.get() == 1


def test_the_metrics_of_a_run_match_what_happened(kafka, api, settings_for):
    topic = kafka.topic(2)
    identifies = [
        {"type": "identify", "userId": f"u{i % 20}", "traits": {"i": i}} for i in range(60)
    ]
    tracks = [{"type": "track", "userId": "u1", "event": "Clicked"}] * 5  # nothing to send
    kafka.produce(topic, identifies + tracks + [b"{not json"], key=lambda _: b"k")
    api.set_faults(error_rate=0.3, seed=7)
    settings = settings_for(
        topic, knock__rate_limits="knock", knock__bulk_size=5, knock__max_backoff=0.2
    )
    sink = Sink(settings)
    runner = threading.Thread(target=sink.run)
    runner.start()
    try:
        ends = kafka.end_offsets(topic)
        wait_for(lambda: kafka.committed(f"g-{topic}", topic) == ends, 90, "everything committed")

        def lag() -> dict[int, float]:
            return {
                int(dict(lab)["partition"]): v
                for (n, lab), v in samples(sink).items()
                if n == "knock_sink_consumer_lag"
            }

        wait_for(
            lambda: lag() == dict.fromkeys(ends, 0), 30, "no lag left on the partitions in use"
        )
        assert samples(sink)[("knock_sink_budget_share", ())] == 1.0  # alone on both partitions
    finally:
        sink.stop()
        runner.join(60)
    api.clear_faults()
    assert actual_state(api.users()) == expected_state(identifies)
    got = samples(sink)

    # Every request Knock saw, by status, counted once on our side too.
    theirs: Counter = Counter()
    for per_status in api.stats()["requests"].values():
        theirs.update(per_status)
    ours = {
        status: n for (status,), n in by(got, "knock_sink_knock_requests_total", "status").items()
    }
    assert ours == dict(theirs)
    assert {"500", "503"} & set(ours)  # the faults were counted, not only the successes
    assert by(got, "knock_sink_knock_request_seconds_count", "route") == by(
        got, "knock_sink_knock_requests_total", "route"
    )
    # Events by type and outcome, as produced.
    assert by(got, "knock_sink_events_total", "type", "outcome") == {
        ("identify", "queued"): 60,
        ("track", "nothing_to_send"): 5,
        ("invalid", "dead_lettered"): 1,
    }
    assert by(got, "knock_sink_events_dead_lettered_total", "kind") == {("undecodable",): 1}
    # Paced to Knock's tiers: the start-up check goes at once, the rest waited somewhere.
    assert sum(by(got, "knock_sink_rate_limit_wait_seconds_total", "route").values()) > 0
    assert got[("knock_sink_plan_users_count", ())] >= 1
    assert got[("knock_sink_budget_share", ())] == 0.0  # after the close: it holds nothing
    committed = {
        int(dict(lab)["partition"]): v
        for (n, lab), v in got.items()
        if n == "knock_sink_committed_offset"
    }
    assert committed == ends
