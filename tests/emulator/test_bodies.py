"""Request bodies that Knock's schema forbids get Knock's 422 and change nothing.

One forbidden body per emulated route with a body; each is first shown to be forbidden by the
route's request schema in Knock's OpenAPI description (so the emulator is not merely
stricter than Knock), and most were accepted, stored or recorded before the emulator
validated bodies against that schema. The spec's own example body of each route, by
contrast, is accepted.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from consumer.emulator import EmulatorServer
from consumer.emulator.app import V1_ROUTES

from .spec import check_error, request_errors

#: ``(method, path template, concrete path, body)``: one body Knock's schema forbids.
FORBIDDEN: list[tuple[str, str, str, dict[str, Any]]] = [
    # Found with schemathesis: accepted, stored and echoed by GET.
    ("PUT", "/v1/tenants/{id}", "/v1/tenants/t1", {"settings": {"branding": [None, None]}}),
    (
        "POST",
        "/v1/tenants/bulk/set",
        "/v1/tenants/bulk/set",
        {"tenants": ["t2", {"id": "t3", "settings": {"branding": {"logo_url": 1}}}]},
    ),
    (
        "PUT",
        "/v1/users/{user_id}",
        "/v1/users/u1",
        {"preferences": {"default": {"__persistence_strategy__": "sometimes"}}},
    ),
    (
        "POST",
        "/v1/users/bulk/identify",
        "/v1/users/bulk/identify",
        {"users": [{"id": "u2"}, {"id": "u3", "channel_data": {"c": {"tokens": "t"}}}]},
    ),
    ("POST", "/v1/users/bulk/delete", "/v1/users/bulk/delete", {"user_ids": ["u1", 5]}),
    ("POST", "/v1/users/{user_id}/merge", "/v1/users/u1/merge", {"from_user_id": ["u9"]}),
    (
        "POST",
        "/v1/workflows/{key}/trigger",
        "/v1/workflows/wf/trigger",
        {"recipients": [{"id": "u4", "name": "U"}], "cancellation_key": 5},
    ),
    ("PUT", "/v1/objects/{collection}/{id}", "/v1/objects/c/o2", {"name": 5}),
    (
        "POST",
        "/v1/objects/{collection}/bulk/set",
        "/v1/objects/c/bulk/set",
        {"objects": [{"id": "o3"}, {"id": "o4", "created_at": "yesterday"}]},
    ),
    (
        "POST",
        "/v1/objects/{collection}/{object_id}/subscriptions",
        "/v1/objects/c/o1/subscriptions",
        {"recipients": [{"id": "u5"}, {"id": "o5", "collection": "c", "created_at": "2024"}]},
    ),
    (
        "DELETE",
        "/v1/objects/{collection}/{object_id}/subscriptions",
        "/v1/objects/c/o1/subscriptions",
        {"recipients": ["u1", {"id": "u1", "collection": 5}]},
    ),
    (
        "POST",
        "/v1/audiences/{key}/members",
        "/v1/audiences/vip/members",
        {"members": [{"user": {"id": "u6", "channel_data": {"c": {"player_ids": ["p1"]}}}}]},
    ),
    (
        "DELETE",
        "/v1/audiences/{key}/members",
        "/v1/audiences/vip/members",
        {"members": [{"user": {"id": "u1", "created_at": "2024-05-22"}}]},
    ),
]


def _state(emulator: EmulatorServer) -> dict[str, Any]:
    stats = emulator.stats()
    return {
        "users": emulator.users(),
        "tenants": emulator.tenants(),
        "objects": emulator.objects(),
        "subscriptions": emulator.subscriptions(),
        "audiences": emulator.audiences(),
        "triggers": emulator.triggers(),
        "deleted": emulator.deleted(),
        "bulk_operations": stats["bulk_operations"],
        "identify_entries": stats["identify_entries"],
    }


@pytest.fixture
def seeded(http: httpx.Client) -> httpx.Client:
    """A user subscribed to an object and in an audience, and a tenant: what a forbidden
    request could otherwise change."""
    http.put("/v1/users/u1", json={"name": "One"}).raise_for_status()
    http.put("/v1/tenants/t1", json={"name": "T"}).raise_for_status()
    http.put("/v1/objects/c/o1", json={"name": "O"}).raise_for_status()
    http.post("/v1/objects/c/o1/subscriptions", json={"recipients": ["u1"]}).raise_for_status()
    members = {"members": [{"user": {"id": "u1"}}]}
    http.post("/v1/audiences/vip/members", json=members).raise_for_status()
    return http


def test_every_route_with_a_body_has_a_forbidden_case(spec: dict[str, Any]) -> None:
    with_body = {
        (method, path)
        for method, path, _, _ in V1_ROUTES
        if "requestBody" in spec["paths"][path][method.lower()]
    }
    assert {(method, path) for method, path, _, _ in FORBIDDEN} == with_body


@pytest.mark.parametrize(("method", "template", "path", "body"), FORBIDDEN)
def test_a_body_knocks_schema_forbids_is_422_and_changes_nothing(
    spec: dict[str, Any],
    emulator: EmulatorServer,
    seeded: httpx.Client,
    method: str,
    template: str,
    path: str,
    body: dict[str, Any],
) -> None:
    assert request_errors(spec, method, template, body)
    before = _state(emulator)
    response = seeded.request(method, path, json=body)
    assert response.status_code == 422, response.text
    check_error(spec, response)
    assert response.json()["code"] == "invalid_params"
    assert _state(emulator) == before


def test_the_first_tenant_finding_names_the_field(http: httpx.Client) -> None:
    response = http.put("/v1/tenants/t1", json={"settings": {"branding": [None, None]}})
    assert response.json()["errors"] == [
        {
            "field": "settings.branding",
            "message": "Input should be a valid dictionary",
            "type": "invalid",
        }
    ]
    assert http.get("/v1/tenants/t1").status_code == 404


@pytest.mark.parametrize(
    ("method", "template"),
    sorted({(method, template) for method, template, _, _ in FORBIDDEN}),
)
def test_the_specs_example_body_is_accepted(
    spec: dict[str, Any], seeded: httpx.Client, method: str, template: str
) -> None:
    content = spec["paths"][template][method.lower()]["requestBody"]["content"]
    example = content["application/json"].get("example")
    if example is None:
        pytest.skip("the spec gives no example")
    assert request_errors(spec, method, template, example) == []
    # The examples name users the emulator must know (a bare id does not create one).
    for user in ("user_1", "user_2", "dr_sattler", "mr_dna", "dr_grant"):
        seeded.put(f"/v1/users/{user}", json={}).raise_for_status()
    path = template.format(user_id="dr_grant", id="t9", key="vip", collection="c", object_id="o1")
    response = seeded.request(method, path, json=example)
    assert response.is_success, response.text
