"""The Knock client's contract cases (``test_knock.py`` runs them against scripted
``httpx.MockTransport`` answers) against the local Knock-compatible API over real HTTP, so the
scripted answers and the server that stands in for Knock cannot drift apart."""

from __future__ import annotations

import gc
from typing import Any

import httpx
import pytest

from consumer.errors import FatalKnockError, ItemError
from consumer.knock import KnockClient, MergeResult
from consumer.pacing import RateLimits
from tests.model import actual_state


def client(api: Any, *, key: str | None = None, base: str | None = None) -> KnockClient:
    return KnockClient(
        api_key=key or api.api_key, base_url=base or api.url, limits=RateLimits("off")
    )


def stored(api: Any) -> dict[str, dict[str, Any]]:
    return actual_state(api.users())


def test_identify_upserts_and_returns_the_user(api):
    with client(api) as c:
        user = c.identify("u1", {"email": "a@b.c", "name": None, "plan": {"tier": 2}})
    assert user["id"] == "u1" and user["__typename"] == "User" and user["email"] == "a@b.c"
    assert stored(api)["u1"]["plan"] == {"tier": 2}


@pytest.mark.parametrize("user_id", ["a?page_size=1", "%2F", "a b", "é", "..x", ";"])
def test_no_id_reaches_another_route(api, user_id):
    with client(api) as c:
        assert c.identify(user_id, {"n": 1})["id"] == user_id
    assert stored(api) == {user_id: {"n": 1}}


@pytest.mark.parametrize("user_id", ["a/b#c?d", "../bulk_operations/x", "x/merge"])
def test_an_id_knock_forbids_reaches_the_user_route_and_is_refused_there(api, user_id):
    # Knock refuses "/" and "#" in ids: a 422 of the identify route, not another route's answer.
    with client(api) as c, pytest.raises(ItemError) as err:
        c.identify(user_id, {"n": 1})
    assert err.value.status == 422 and stored(api) == {}


def test_merge_of_two_users_keeps_the_primarys_values(api):
    with client(api) as c:
        c.identify("real", {"plan": "pro"})
        c.identify("anon", {"plan": "free", "seen": 1})
        assert c.merge("real", "anon").from_missing is False
    assert stored(api) == {"real": {"plan": "pro", "seen": 1}}


def test_merge_creates_a_missing_primary_then_merges(api):
    with client(api) as c:
        c.identify("anon", {"utm": "ad"})
        result = c.merge("fresh", "anon")
    assert (result.from_missing, result.created_primary) == (False, True)
    assert stored(api) == {"fresh": {"utm": "ad"}}


def test_merge_with_the_from_user_gone_is_success(api):
    with client(api) as c:
        c.identify("u1", {"a": 1})
        result = c.merge("u1", "gone")
    assert result == MergeResult(result.user, from_missing=True, created_primary=False)
    assert result.user is not None and result.user["id"] == "u1"


def test_merge_with_both_users_missing_creates_the_primary(api):
    with client(api) as c:
        result = c.merge("u1", "anon")
    assert (result.from_missing, result.created_primary) == (True, True)
    assert list(stored(api)) == ["u1"]


def test_bulk_identify_follows_the_operation_to_the_end(api):
    api.set_faults(failing_users=["u2"])
    users = [{"id": f"u{i}", "email": f"u{i}@x.io"} for i in range(1, 5)]
    with client(api) as c:
        result = c.bulk_identify(users)
    assert result.status == "completed"
    assert (result.applied, list(result.failed), result.rate_limited) == (
        ["u1", "u3", "u4"],
        ["u2"],
        [],
    )
    assert sorted(stored(api)) == ["u1", "u3", "u4"]


def test_422_is_an_item_error_with_knocks_body(api):
    api.set_faults(failing_users=["bad"])
    with client(api) as c, pytest.raises(ItemError) as err:
        c.identify("bad", {"a": 1})
    assert err.value.status == 422 and err.value.code == "invalid_params"
    assert isinstance(err.value.body, dict) and err.value.body["status"] == 422
    assert stored(api) == {}


def test_check_reads_one_user_and_reports_a_rejected_key(api):
    with client(api) as c:
        c.check()
    with client(api, key="sk_wrong") as c, pytest.raises(FatalKnockError) as err:
        c.check()
    assert err.value.status == 401 and "sk_wrong" not in str(err.value)


def test_404_on_an_upsert_route_is_fatal_not_an_item_error(api):
    with client(api, base=api.url + "/not-the-api") as c, pytest.raises(FatalKnockError) as err:
        c.identify("u1", {})
    assert err.value.status == 404


def test_a_response_and_its_request_body_go_without_the_cyclic_collector(api):
    # The loop runs the cyclic collector seldom (consumer.sink); httpx 0.28's response and its
    # stream refer to each other, so a response left in that cycle kept its request body (a
    # bulk call's is up to 1 MB) alive until a full collection.
    def alive() -> int:
        return sum(isinstance(o, httpx.Response | httpx.Request) for o in gc.get_objects())

    with client(api) as c:
        c.identify("warm", {"n": 0})  # the connection pool's own objects exist from here on
        gc.collect()
        gc.disable()
        try:
            before = alive()
            c.identify("u1", {"n": 1})
            c.bulk_identify([{"id": f"u{i}", "n": i} for i in range(2, 50)])
            after = alive()
        finally:
            gc.enable()
    assert after == before
    assert stored(api)["u49"] == {"n": 49}
