"""Time-based rules on an injected clock: the tiers of the new routes, the per-entity limit
of bulk set routes, and the 24 h idempotency window. No sleeps: the test moves the clock."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import knockapi
import pytest
from knockapi import Knock

from consumer.emulator import EmulatorServer

from .helpers import FakeClock, make_knock

TRIGGER = "/v1/workflows/wf/trigger"


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def _server(clock: FakeClock) -> Iterator[EmulatorServer]:
    with EmulatorServer(rate_limits="knock", clock=clock) as server:
        yield server


@pytest.fixture
def server(_server: EmulatorServer, clock: FakeClock) -> EmulatorServer:
    _server.reset()
    clock.advance(3600)  # every bucket full again
    return _server


@pytest.fixture
def knock(server: EmulatorServer) -> Iterator[Knock]:
    with make_knock(server) as client:
        yield client


@pytest.fixture
def http(server: EmulatorServer) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.url, headers=headers) as client:
        yield client


def test_bulk_set_tenants_is_tier_1(knock: Knock, clock: FakeClock) -> None:
    knock.tenants.bulk.set(tenants=["t1"])
    with pytest.raises(knockapi.RateLimitError) as err:
        knock.tenants.bulk.set(tenants=["t2"])
    assert err.value.response.headers["retry-after"] == "1"
    clock.advance(1.0)
    knock.tenants.bulk.set(tenants=["t2"])


def test_set_tenant_is_tier_3(knock: Knock, clock: FakeClock) -> None:
    for n in range(60):
        knock.tenants.set(f"t{n}")
    with pytest.raises(knockapi.RateLimitError):
        knock.tenants.set("one-too-many")
    clock.advance(1 / 30)  # 60/s: two tokens back (one would sit on a float boundary)
    knock.tenants.set("one-more")


def test_audience_add_is_tier_3_and_list_is_tier_4(knock: Knock) -> None:
    for n in range(60):
        knock.audiences.add_members("a", members=[{"user": {"id": f"u{n}"}}])
    with pytest.raises(knockapi.RateLimitError):
        knock.audiences.add_members("a", members=[{"user": {"id": "late"}}])
    for _ in range(200):
        knock.audiences.list_members("a")
    with pytest.raises(knockapi.RateLimitError):
        knock.audiences.list_members("a")


def test_bulk_set_routes_skip_entities_set_in_the_last_second(
    http: httpx.Client, server: EmulatorServer, clock: FakeClock
) -> None:
    # Tier 1 (1/s) and the per-entity window (1 s) are equal, so through one route the
    # rule only shows once the endpoint's bucket is emptied by hand: the tier is tested above.
    limiter = server.app.state.emulator.limiter
    http.post("/v1/objects/projects/bulk/set", json={"objects": [{"id": "p1"}]})
    # A tenant p1 is another entity than the object p1.
    first = http.post("/v1/tenants/bulk/set", json={"tenants": ["p1", "t1"]})
    limiter.reset()
    clock.advance(0.5)
    objects = http.post(
        "/v1/objects/projects/bulk/set", json={"objects": [{"id": "p2"}, {"id": "p1"}]}
    )
    other = http.post("/v1/objects/teams/bulk/set", json={"objects": [{"id": "p1"}]})
    tenants = http.post("/v1/tenants/bulk/set", json={"tenants": ["t1", {"id": "t2"}]})
    limiter.reset()
    clock.advance(0.5)
    later = http.post("/v1/tenants/bulk/set", json={"tenants": ["t1"]})
    assert "x-ratelimited-tenants" not in first.headers
    assert objects.status_code == 200
    assert objects.headers["x-ratelimited-objects"] == "p1"
    assert objects.json()["estimated_total_rows"] == 1
    assert other.status_code == 429  # another collection, but the same endpoint's bucket
    assert tenants.headers["x-ratelimited-tenants"] == "t1"
    assert tenants.json()["estimated_total_rows"] == 1
    assert "x-ratelimited-tenants" not in later.headers


def test_idempotency_key_is_remembered_for_24_hours(
    http: httpx.Client, server: EmulatorServer, clock: FakeClock
) -> None:
    body = {"recipients": ["u1"]}
    headers = {"idempotency-key": "k"}
    first = http.post(TRIGGER, json=body, headers=headers).json()
    clock.advance(24 * 3600 - 1)
    assert http.post(TRIGGER, json=body, headers=headers).json() == first
    assert http.post(TRIGGER, json={"recipients": ["u2"]}, headers=headers).status_code == 422
    clock.advance(1)
    again = http.post(TRIGGER, json={"recipients": ["u2"]}, headers=headers)
    assert again.status_code == 200 and again.json() != first
    assert [t["recipients"] for t in server.triggers()] == [["u1"], ["u2"]]
