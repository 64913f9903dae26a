"""Knock's rate limits (a server with ``rate_limits="knock"``) and injected faults."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import knockapi
import pytest
from knockapi import Knock

from consumer.emulator import EmulatorServer

from .helpers import make_knock, wait_bulk, wait_until


@pytest.fixture(scope="module")
def _limited_server() -> Iterator[EmulatorServer]:
    with EmulatorServer(rate_limits="knock") as server:
        yield server


@pytest.fixture
def limited(_limited_server: EmulatorServer) -> Iterator[Knock]:
    _limited_server.reset()
    with make_knock(_limited_server) as knock:
        yield knock


def test_second_bulk_identify_within_a_second_is_429(
    limited: Knock, _limited_server: EmulatorServer
) -> None:
    limited.users.bulk.identify(users=[{"id": "u1"}])
    with pytest.raises(knockapi.RateLimitError) as err:
        limited.users.bulk.identify(users=[{"id": "u2"}])
    assert err.value.response.headers["retry-after"] == "1"
    assert err.value.body == {
        "code": "rate_limit_exceeded",
        "message": "Too many requests, please slow down.",
        "status": 429,
        "type": "rate_limit_error",
    }
    # Another endpoint has its own bucket.
    limited.users.bulk.delete(user_ids=["zz"])
    stats = _limited_server.stats()["requests"]
    assert stats["POST /v1/users/bulk/identify"] == {"200": 1, "429": 1}


def test_the_sdk_retries_after_retry_after(_limited_server: EmulatorServer) -> None:
    _limited_server.reset()
    with make_knock(_limited_server, max_retries=2) as knock:
        knock.users.bulk.identify(users=[{"id": "u1"}])
        started = time.monotonic()
        knock.users.bulk.identify(users=[{"id": "u2"}])  # 429, Retry-After: 1, then 200
        assert time.monotonic() - started >= 0.9


def test_merge_tier_allows_five_per_second(limited: Knock) -> None:
    statuses = []
    for _ in range(10):
        try:
            limited.users.merge("a", from_user_id="b")
        except knockapi.APIStatusError as exc:
            statuses.append(exc.status_code)
    # Five in a burst pass (404: no such users); tokens refill at 5/s, so a slow machine may
    # let one more through before the 429s.
    assert statuses[:5] == [404] * 5
    assert 429 in statuses[5:]


def test_entities_updated_by_a_bulk_call_in_the_last_second_are_skipped(
    limited: Knock, _limited_server: EmulatorServer
) -> None:
    # Bulk delete and bulk identify are separate endpoints (one token each), but share
    # Knock's per-entity limit of one update per second.
    limited.users.update("c", name="C")
    limited.users.bulk.delete(user_ids=["c"])
    raw = limited.users.bulk.with_raw_response.identify(
        users=[{"id": "c", "name": "again"}, {"id": "d"}, {"id": "c"}]
    )
    assert raw.http_response.status_code == 200
    assert raw.headers["x-ratelimited-users"] == "c"
    op = raw.parse()
    assert op.estimated_total_rows == 1
    wait_bulk(limited, op.id)
    assert [u["id"] for u in _limited_server.users()] == ["d"]
    assert _limited_server.stats(by_user=True)["identify_entries_by_user"] == {"c": 1, "d": 1}


def test_bulk_delete_names_limited_ids(limited: Knock, _limited_server: EmulatorServer) -> None:
    wait_bulk(limited, limited.users.bulk.identify(users=[{"id": "e"}, {"id": "f"}]).id)
    raw = limited.users.bulk.with_raw_response.delete(user_ids=["e", "g"])
    assert raw.headers["x-ratelimited-user_ids"] == "e"


def test_limits_off_lets_everything_through(knock: Knock, emulator: EmulatorServer) -> None:
    # Five bulk calls in well under a second, each updating "same" again: with limits off none
    # is answered 429 and no entity is skipped.
    for n in range(5):
        raw = knock.users.bulk.with_raw_response.identify(users=[{"id": "same"}, {"id": f"u{n}"}])
        assert raw.status_code == 200
        assert not [h for h in raw.headers if h.lower().startswith("x-ratelimited-")]
        wait_bulk(knock, raw.parse().id)
    assert emulator.stats(by_user=True)["identify_entries_by_user"] == {
        "same": 5,
        **{f"u{n}": 1 for n in range(5)},
    }


def test_error_rate_one_answers_500_or_503(knock: Knock, emulator: EmulatorServer) -> None:
    emulator.set_faults(error_rate=1.0, seed=7)
    statuses = set()
    for _ in range(20):
        with pytest.raises(knockapi.InternalServerError) as err:
            knock.users.update("u1", name="x")
        statuses.add(err.value.status_code)
        assert err.value.body["status"] == err.value.status_code  # type: ignore[index]
    assert statuses == {500, 503}
    emulator.set_faults(error_statuses=[502])
    with pytest.raises(knockapi.InternalServerError) as err:
        knock.users.get("u1")
    assert err.value.status_code == 502
    # Control routes are never faulted.
    assert emulator.users() == []
    emulator.clear_faults()
    knock.users.update("u1", name="x")


def test_rate_limit_rate_answers_429_with_retry_after_1(
    knock: Knock, emulator: EmulatorServer
) -> None:
    emulator.set_faults(rate_limit_rate=1.0)
    with pytest.raises(knockapi.RateLimitError) as err:
        knock.users.get("u1")
    assert err.value.response.headers["retry-after"] == "1"


def test_outage_answers_503_until_it_ends(knock: Knock, emulator: EmulatorServer) -> None:
    emulator.set_faults(outage_seconds=0.5)
    with pytest.raises(knockapi.InternalServerError) as err:
        knock.users.update("u1")
    assert err.value.status_code == 503
    assert emulator.set_faults()["outage_seconds"] > 0

    def answers() -> bool:
        try:
            knock.users.update("u1")
            return True
        except knockapi.InternalServerError:
            return False

    wait_until(answers, timeout=5)
    assert emulator.users()[0]["id"] == "u1"


def test_latency_is_added(knock: Knock, emulator: EmulatorServer) -> None:
    emulator.set_faults(latency_ms=200)
    started = time.monotonic()
    knock.users.update("u1")
    assert time.monotonic() - started >= 0.2


def test_fault_fields_not_given_keep_their_value(emulator: EmulatorServer) -> None:
    emulator.set_faults(error_rate=0.25, failing_users=["x"])
    faults = emulator.set_faults(latency_ms=5)
    assert (faults["error_rate"], faults["failing_users"], faults["latency_ms"]) == (0.25, ["x"], 5)
    emulator.clear_faults()
    assert emulator.set_faults()["error_rate"] == 0.0


def test_invalid_fault_bodies_are_422(http: httpx.Client) -> None:
    response = http.post("/_emulator/faults", json={"error_rate": 2})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "error_rate"
    assert http.post("/_emulator/faults", json={"nope": 1}).status_code == 422


def test_control_api_needs_the_key(emulator: EmulatorServer) -> None:
    assert httpx.post(f"{emulator.url}/_emulator/reset").status_code == 401
