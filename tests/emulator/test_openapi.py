"""Every emulated route's success answers, validated against Knock's own OpenAPI spec.

The spec is a reference file outside the project (``../shared/knock/openapi.yml``, or
``$KNOCK_OPENAPI``); without it these tests skip. Each body is validated against the schema
the operation declares for that status, with OAS 3.0 semantics (``nullable``) and format
checks (``date-time``, ``uuid``, ``uri``). ``$ref``s resolve against the spec's own
``components`` by embedding them in the schema being checked.

Limits of what the spec allows us to check: every declared schema has
``additionalProperties`` open (or unset), so an extra key in an answer cannot be caught here;
and the spec declares no error responses for these operations except ``403``, so error
bodies are checked against ``AuthenticationError``, the one error schema it has.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from consumer.emulator import EmulatorServer

from .helpers import wait_until
from .spec import check, check_error


def test_user_routes_match_the_spec(spec: dict[str, Any], http: httpx.Client) -> None:
    user = {
        "name": "Ian",
        "email": "ian@x.io",
        "created_at": "2024-05-22T12:00:00Z",
        "preferences": {"default": {"channel_types": {"email": True}}},
        "channel_data": {"97c5837d-c65c-4d54-aa39-080eeb81c69d": {"tokens": ["t"]}},
        "plan": "pro",
        "nested": {"a": 1},
    }
    check(spec, "PUT", "/v1/users/{user_id}", http.put("/v1/users/u1", json=user))
    check(spec, "PUT", "/v1/users/{user_id}", http.put("/v1/users/u2", json={}))
    check(spec, "GET", "/v1/users/{user_id}", http.get("/v1/users/u1"))
    check(spec, "GET", "/v1/users", http.get("/v1/users", params={"page_size": 1}))
    check(spec, "GET", "/v1/users", http.get("/v1/users", params={"include[]": "preferences"}))
    check(
        spec,
        "POST",
        "/v1/users/{user_id}/merge",
        http.post("/v1/users/u1/merge", json={"from_user_id": "u2"}),
    )
    check(spec, "DELETE", "/v1/users/{user_id}", http.delete("/v1/users/u1"))


def test_bulk_routes_match_the_spec(
    spec: dict[str, Any], http: httpx.Client, emulator: EmulatorServer
) -> None:
    emulator.set_faults(failing_users=["bad"])
    identify = http.post(
        "/v1/users/bulk/identify", json={"users": [{"id": "a", "x": 1}, {"id": "bad"}]}
    )
    check(spec, "POST", "/v1/users/bulk/identify", identify)
    op_path = f"/v1/bulk_operations/{identify.json()['id']}"
    done = wait_until(lambda: (r := http.get(op_path)).json()["status"] == "completed" and r)
    assert done.json()["error_items"] == [{"id": "bad", "collection": None}]
    check(spec, "GET", "/v1/bulk_operations/{id}", done)
    delete = http.post("/v1/users/bulk/delete", json={"user_ids": ["a"]})
    check(spec, "POST", "/v1/users/bulk/delete", delete)
    emulator.set_faults(fail_bulk_operations=1)
    failing = http.post("/v1/users/bulk/identify", json={"users": [{"id": "c"}]})
    failed = wait_until(
        lambda: (
            (r := http.get(f"/v1/bulk_operations/{failing.json()['id']}")).json()["status"]
            == "failed"
            and r
        )
    )
    check(spec, "GET", "/v1/bulk_operations/{id}", failed)


def test_workflow_tenant_and_object_routes_match_the_spec(
    spec: dict[str, Any], http: httpx.Client
) -> None:
    trigger = http.post(
        "/v1/workflows/wf/trigger",
        json={
            "recipients": [
                "u1",
                {"id": "u2", "email": "u2@x.io"},
                {"id": "o1", "collection": "projects"},
            ],
            "actor": "u1",
            "tenant": {"id": "t1", "name": "T"},
            "data": {"k": 1},
        },
    )
    check(spec, "POST", "/v1/workflows/{key}/trigger", trigger)
    tenant = http.put(
        "/v1/tenants/t1",
        json={
            "name": "Acme",
            "settings": {"branding": {"primary_color": "#000000"}},
            "custom": 1,
        },
    )
    check(spec, "PUT", "/v1/tenants/{id}", tenant)
    check(spec, "PUT", "/v1/tenants/{id}", http.put("/v1/tenants/t2", json={}))
    check(
        spec,
        "PUT",
        "/v1/objects/{collection}/{id}",
        http.put("/v1/objects/projects/p1", json={"name": "P", "cfg": {"a": 1}}),
    )


def test_error_bodies_match_knocks_error_schema(
    spec: dict[str, Any], http: httpx.Client, emulator: EmulatorServer
) -> None:
    check_error(spec, httpx.get(f"{emulator.url}/v1/users/u1"))
    check_error(spec, http.get("/v1/users/missing"))
    check_error(spec, http.put("/v1/users/a%2Fb", json={}))
    emulator.set_faults(rate_limit_rate=1.0)
    check_error(spec, http.get("/v1/users/missing"))


def test_the_check_is_not_vacuous(spec: dict[str, Any]) -> None:
    request = httpx.Request("GET", "http://x/v1/users/u1")
    for bad in (
        {"__typename": "User", "id": "u1"},  # updated_at missing
        {"__typename": "User", "id": "u1", "updated_at": "yesterday"},  # not a date-time
        {"__typename": "User", "id": "u1", "updated_at": "2024-05-22T12:00:00Z", "email": 1},
    ):
        with pytest.raises(AssertionError):
            check(
                spec, "GET", "/v1/users/{user_id}", httpx.Response(200, json=bad, request=request)
            )
    not_uuid = {
        "__typename": "BulkOperation",
        "id": "nope",
        "name": "n",
        "status": "queued",
        "estimated_total_rows": 1,
        "processed_rows": 0,
        "success_count": 0,
        "inserted_at": "2024-05-22T12:00:00Z",
        "updated_at": "2024-05-22T12:00:00Z",
    }
    with pytest.raises(AssertionError):
        check(
            spec,
            "GET",
            "/v1/bulk_operations/{id}",
            httpx.Response(200, json=not_uuid, request=request),
        )


def test_tenant_and_object_routes_match_the_spec(spec: dict[str, Any], http: httpx.Client) -> None:
    check(spec, "PUT", "/v1/tenants/{id}", http.put("/v1/tenants/t1", json={"name": "T"}))
    check(spec, "GET", "/v1/tenants/{id}", http.get("/v1/tenants/t1"))
    bulk = http.post("/v1/tenants/bulk/set", json={"tenants": ["t2", {"id": "t3", "name": "3"}]})
    check(spec, "POST", "/v1/tenants/bulk/set", bulk)
    op_path = f"/v1/bulk_operations/{bulk.json()['id']}"
    done = wait_until(lambda: (r := http.get(op_path)).json()["status"] == "completed" and r)
    check(spec, "GET", "/v1/bulk_operations/{id}", done)
    check(spec, "DELETE", "/v1/tenants/{id}", http.delete("/v1/tenants/t1"))
    check(spec, "PUT", "/v1/objects/{collection}/{id}", http.put("/v1/objects/c/o1", json={}))
    check(spec, "GET", "/v1/objects/{collection}/{id}", http.get("/v1/objects/c/o1"))
    bulk = http.post("/v1/objects/c/bulk/set", json={"objects": [{"id": "o2", "name": "2"}]})
    check(spec, "POST", "/v1/objects/{collection}/bulk/set", bulk)
    check(spec, "DELETE", "/v1/objects/{collection}/{id}", http.delete("/v1/objects/c/o2"))


def test_subscription_and_audience_routes_match_the_spec(
    spec: dict[str, Any], http: httpx.Client
) -> None:
    # Only user recipients: the spec's ``Recipient`` is oneOf User | Object, and an Object
    # also matches User (open additionalProperties), so an object recipient cannot pass oneOf.
    path = "/v1/objects/{collection}/{object_id}/subscriptions"
    http.put("/v1/objects/c/o1", json={"name": "O"})
    added = http.post(
        "/v1/objects/c/o1/subscriptions",
        json={"recipients": [{"id": "u1", "email": "u1@x.io"}], "properties": {"r": 1}},
    )
    check(spec, "POST", path, added)
    check(spec, "GET", path, http.get("/v1/objects/c/o1/subscriptions"))
    removed = http.request("DELETE", "/v1/objects/c/o1/subscriptions", json={"recipients": ["u1"]})
    check(spec, "DELETE", path, removed)
    assert len(removed.json()) == 1
    members = "/v1/audiences/{key}/members"
    body = {"members": [{"user": {"id": "u1"}, "tenant": "t1"}]}
    check(spec, "POST", members, http.post("/v1/audiences/vip/members", json=body))
    check(spec, "GET", members, http.get("/v1/audiences/vip/members"))
    check(spec, "DELETE", members, http.request("DELETE", "/v1/audiences/vip/members", json=body))
    check(spec, "DELETE", "/v1/users/{user_id}", http.delete("/v1/users/u1"))


def test_refusals_and_missing_workflows_match_knocks_error_schema(
    spec: dict[str, Any], http: httpx.Client, emulator: EmulatorServer
) -> None:
    emulator.set_faults(failing_users=["bad"], workflows=["known"])
    check_error(spec, http.put("/v1/users/bad", json={}))
    check_error(spec, http.post("/v1/workflows/other/trigger", json={"recipients": ["u"]}))
