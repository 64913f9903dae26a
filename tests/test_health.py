"""/healthz and /readyz over HTTP, in each state: before the start-up check, after it, with a
fatal error, and once the loop stopped turning; /metrics beside them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from consumer.decode import JsonDecoder
from consumer.health import Health, HealthServer
from consumer.metrics import Metrics
from consumer.sink import Sink
from tests.conftest import wait_for
from tests.model import actual_state, expected_state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(port: int, path: str) -> tuple[int, Any]:
    r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    return r.status_code, r.json() if path != "/metrics" else r.text


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_state_over_http():
    clock = FakeClock()
    health = Health(stall=10, clock=clock)
    server = HealthServer(Metrics().registry, health, 0, addr="127.0.0.1")
    try:
        # Start-up check still running: alive, not ready.
        assert probe(server.port, "/healthz") == (200, {"status": "starting"})
        code, body = probe(server.port, "/readyz")
        assert (code, body["status"]) == (503, "starting")
        # Checked, no partition yet (settling, or more members than partitions): ready.
        health.checked()
        assert probe(server.port, "/readyz") == (200, {"status": "ok", "partitions": 0})
        health.assigned([("t", 0), ("t", 1)])
        assert probe(server.port, "/readyz") == (200, {"status": "ok", "partitions": 2})
        health.unassigned([("t", 0)])
        assert probe(server.port, "/readyz")[1]["partitions"] == 1
        # The loop stops turning: neither live nor ready past the threshold, both again after.
        clock.now += 10
        assert probe(server.port, "/healthz")[0] == 200
        clock.now += 0.5
        assert probe(server.port, "/healthz") == (
            503,
            {"status": "stalled", "last_turn_seconds_ago": 10.5},
        )
        assert probe(server.port, "/readyz")[1]["status"] == "stalled"
        health.turned()
        assert probe(server.port, "/healthz")[0] == 200
        # A fatal error: still alive (it is exiting on its own), never ready again.
        health.fatal("Knock rejected the API key (401)")
        assert probe(server.port, "/readyz") == (
            503,
            {"status": "fatal", "reason": "Knock rejected the API key (401)", "partitions": 1},
        )
        assert probe(server.port, "/healthz")[0] == 200
        assert "knock_sink_events_consumed_total" in probe(server.port, "/metrics")[1]
        assert httpx.get(f"http://127.0.0.1:{server.port}/nope").status_code == 404
    finally:
        server.close()


class GatedDecoder:
    """JSON, but the loop thread waits inside ``decode`` while the gate is closed: a loop that
    stopped turning."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self._json = JsonDecoder()

    def decode(self, value: bytes | None, topic: str | None = None) -> object:
        self.entered.set()
        self.open.wait()
        return self._json.decode(value)

    def for_topic(self, topic: str | None) -> Callable[[bytes | None], object]:
        return self.decode  # each event through the gate

    def check(self) -> bool:
        return True


def test_a_real_sink_not_ready_before_the_check_ready_after_not_live_when_stuck(
    kafka, api, settings_for
):
    topic = kafka.topic(2)
    port = free_port()
    settings = settings_for(
        topic,
        sink__metrics_port=port,
        sink__stall_timeout=1.0,
        sink__drain_timeout=0.5,
        knock__max_backoff=0.2,
    )
    decoder = GatedDecoder()
    sink = Sink(settings, decoder=decoder)
    api.set_faults(error_rate=1.0)  # the start-up check retries
    runner = threading.Thread(target=sink.run)
    runner.start()
    try:
        wait_for(lambda: _code(port, "/readyz") == 503, 30, "the server up, not ready")
        assert _code(port, "/healthz") == 200
        wait_for(lambda: api.stats()["requests"], 30, "the start-up check retrying")
        assert _code(port, "/readyz") == 503
        api.clear_faults()
        wait_for(lambda: _code(port, "/readyz") == 200, 30, "ready after the check")
        wait_for(
            lambda: probe(port, "/readyz")[1]["partitions"] == 2, 30, "both partitions assigned"
        )

        events = [{"type": "identify", "userId": f"u{i}", "traits": {"i": i}} for i in range(20)]
        decoder.open.clear()
        kafka.produce(topic, events)
        wait_for(decoder.entered.is_set, 30, "the loop inside decode")
        # 1 s asked, but never less than the drain budget + 5: a revoke's settle holds the loop.
        wait_for(lambda: _code(port, "/healthz") == 503, 30, "not live while stuck")
        assert _code(port, "/readyz") == 503
        decoder.open.set()
        wait_for(lambda: _code(port, "/healthz") == 200, 30, "live again")
        wait_for(
            lambda: kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic),
            30,
            "committed",
        )
        assert actual_state(api.users()) == expected_state(events)
    finally:
        decoder.open.set()
        sink.stop()
        runner.join(60)
    assert not runner.is_alive()


def _code(port: int, path: str) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code
    except httpx.TransportError:
        return None


def test_a_long_knock_outage_keeps_the_loop_turning(kafka, api, settings_for):
    """Retries run beside the loop: a Knock outage longer than the stall threshold leaves the
    sink live and ready, and everything lands once Knock is back."""
    topic = kafka.topic(2)
    port = free_port()
    settings = settings_for(
        topic,
        sink__metrics_port=port,
        sink__stall_timeout=1.0,
        sink__drain_timeout=0.5,
        knock__max_backoff=0.5,
    )
    sink = Sink(settings)
    runner = threading.Thread(target=sink.run)
    runner.start()
    try:
        wait_for(lambda: _code(port, "/readyz") == 200, 30, "ready")
        stall = sink.health.stall
        api.set_faults(outage_seconds=stall + 3)
        events = [{"type": "identify", "userId": f"u{i}", "traits": {"i": i}} for i in range(30)]
        kafka.produce(topic, events)
        deadline = time.monotonic() + stall + 2
        while time.monotonic() < deadline:  # past the threshold, inside the outage
            assert (_code(port, "/healthz"), _code(port, "/readyz")) == (200, 200)
            time.sleep(0.2)  # probe cadence, not synchronisation
        assert len(api.users()) < len(events)  # the outage did hold the events back
        wait_for(
            lambda: kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic),
            60,
            "committed",
        )
        assert actual_state(api.users()) == expected_state(events)
    finally:
        sink.stop()
        runner.join(60)


def test_a_port_in_use_is_a_bad_setting():
    from consumer.errors import ConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        try:
            HealthServer(Metrics().registry, Health(10), busy.getsockname()[1], addr="127.0.0.1")
        except ConfigError as exc:
            assert exc.setting == "sink.metrics_port" and "cannot listen" in str(exc)
        else:
            raise AssertionError("bound a port in use")
