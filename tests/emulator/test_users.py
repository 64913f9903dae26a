"""Identify, get, list, delete, ids and auth, driven through Knock's official SDK."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import knockapi
import pytest
from knockapi import Knock

from consumer.emulator import EmulatorServer

from .helpers import make_knock, wait_bulk, wait_until

USER_KEYS = {
    "__typename",
    "id",
    "updated_at",
    "created_at",
    "name",
    "email",
    "avatar",
    "phone_number",
    "locale",
    "timezone",
}


def test_identify_returns_the_user_with_custom_properties_flat(
    knock: Knock, emulator: EmulatorServer
) -> None:
    user = knock.users.update(
        "u1",
        email="ian@chaos.theory",
        name="Ian",
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
        extra_body={"plan": "pro", "company": {"id": "c1", "size": 10}},
    )
    assert user.id == "u1"
    assert user.email == "ian@chaos.theory"
    assert user.created_at == datetime(2024, 1, 1, tzinfo=UTC)
    assert user.plan == "pro"  # type: ignore[attr-defined]
    raw = knock.users.with_raw_response.get("u1")
    body = raw.http_response.json()
    assert set(body) == USER_KEYS | {"plan", "company"}
    assert body["__typename"] == "User"
    assert body["phone_number"] is None and body["locale"] is None and body["avatar"] is None
    assert body["company"] == {"id": "c1", "size": 10}
    assert raw.headers["x-request-id"]
    assert emulator.stats()["identify_entries"] == 1


def test_identify_deep_merges_nested_properties_and_null_overwrites(knock: Knock) -> None:
    knock.users.update("u1", name="Ian", extra_body={"a": {"x": 1, "y": {"z": 1}}, "plan": "pro"})
    user = knock.users.update(
        "u1", name=None, extra_body={"a": {"y": {"w": 2}}, "plan": None, "tags": [1]}
    )
    assert user.name is None
    assert user.a == {"x": 1, "y": {"z": 1, "w": 2}}  # type: ignore[attr-defined]
    assert user.plan is None  # type: ignore[attr-defined]
    assert user.tags == [1]  # type: ignore[attr-defined]
    knock.users.update("u1", extra_body={"a": None})
    assert knock.users.get("u1").a is None  # type: ignore[attr-defined]


def test_shallow_merge_mode_replaces_nested_objects() -> None:
    with EmulatorServer(rate_limits="off", merge="shallow") as server, make_knock(server) as knock:
        knock.users.update("u1", extra_body={"a": {"x": 1}, "b": 1})
        user = knock.users.update("u1", extra_body={"a": {"y": 2}})
        assert user.a == {"y": 2}  # type: ignore[attr-defined]
        assert user.b == 1  # type: ignore[attr-defined]


def test_preferences_and_channel_data_are_stored_but_not_in_the_user(
    knock: Knock, emulator: EmulatorServer
) -> None:
    channel = "97c5837d-c65c-4d54-aa39-080eeb81c69d"
    knock.users.update(
        "u1",
        channel_data={channel: {"tokens": ["t1"]}},
        preferences={"default": {"channel_types": {"email": True}}},
    )
    user = knock.users.update("u1", preferences={"default": {"channel_types": {"sms": False}}})
    assert "preferences" not in (user.model_extra or {})
    (stored,) = emulator.users()
    assert stored["channel_data"] == {channel: {"tokens": ["t1"]}}
    assert stored["preferences"] == {"default": {"channel_types": {"email": True, "sms": False}}}


def test_list_walks_pages_of_50_in_creation_order(knock: Knock, emulator: EmulatorServer) -> None:
    ids = [f"user-{n:03d}" for n in range(120)]
    op = knock.users.bulk.identify(users=[{"id": uid, "n": n} for n, uid in enumerate(ids)])

    wait_bulk(knock, op.id)
    first = knock.users.list(page_size=50)
    assert [u.id for u in first.entries] == ids[:50]
    assert first.page_info is not None and first.page_info.after
    pages = [[u.id for u in page.entries] for page in first.iter_pages()]
    assert pages == [ids[:50], ids[50:100], ids[100:]]
    assert [u.id for u in knock.users.list(page_size=50)] == ids  # auto-pagination
    raw = knock.users.with_raw_response.list(page_size=50, after=first.page_info.after)
    page_info = raw.http_response.json()["page_info"]
    assert page_info["page_size"] == 50 and page_info["before"]
    back = knock.users.list(page_size=50, before=page_info["before"])
    assert [u.id for u in back.entries] == ids[:50]


def test_list_rejects_page_size_over_50(knock: Knock) -> None:
    with pytest.raises(knockapi.UnprocessableEntityError) as err:
        knock.users.list(page_size=51)
    assert err.value.body["code"] == "invalid_params"  # type: ignore[index]


def test_delete_then_get_is_404(knock: Knock, emulator: EmulatorServer) -> None:
    knock.users.update("u1", name="Ian")
    assert knock.users.delete("u1") is None
    with pytest.raises(knockapi.NotFoundError) as err:
        knock.users.get("u1")
    assert err.value.body == {
        "code": "resource_missing",
        "message": "The resource you requested does not exist",
        "status": 404,
        "type": "api_error",
    }
    with pytest.raises(knockapi.NotFoundError):
        knock.users.delete("u1")
    assert emulator.users() == []


@pytest.mark.parametrize("bad_id", ["a/b", "a#b", "x" * 257])
def test_forbidden_ids_are_422(knock: Knock, bad_id: str) -> None:
    with pytest.raises(knockapi.UnprocessableEntityError) as err:
        knock.users.update(bad_id, name="x")
    assert err.value.body["code"] == "invalid_params"  # type: ignore[index]
    assert err.value.body["errors"][0]["field"] == "user_id"  # type: ignore[index]


def test_an_id_of_256_characters_and_unicode_is_fine(knock: Knock) -> None:
    assert knock.users.update("x" * 256).id == "x" * 256
    assert knock.users.update("ü ser+1@x").id == "ü ser+1@x"
    assert knock.users.get("ü ser+1@x").id == "ü ser+1@x"


def test_an_encoded_slash_cannot_reach_another_route(
    http: httpx.Client, emulator: EmulatorServer
) -> None:
    http.put("/v1/users/u1", json={"name": "a"}).raise_for_status()
    http.put("/v1/users/u2", json={"name": "b"}).raise_for_status()
    # Decoded too early, these would be "merge u2 into u1" and "bulk identify".
    merge = http.post("/v1/users/u1%2Fmerge", json={"from_user_id": "u2"})
    assert merge.status_code == 404
    assert merge.json() == {"errors": {"detail": "404 Not Found"}}
    assert http.post("/v1/users/bulk%2Fidentify", json={"users": [{"id": "u3"}]}).status_code == 404
    put = http.put("/v1/users/bulk%2Fidentify", json={})
    assert put.status_code == 422
    assert put.json()["errors"] == [
        {
            "field": "user_id",
            "message": "must be at most 256 characters and contain no '/' or '#'",
            "type": "invalid",
        }
    ]
    assert [u["id"] for u in emulator.users()] == ["u1", "u2"]


def test_percent_encoded_ids_are_decoded(http: httpx.Client) -> None:
    assert http.put("/v1/users/a%20b%2Bc", json={}).json()["id"] == "a b+c"
    assert http.get("/v1/users/a b+c").json()["id"] == "a b+c"


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": "Bearer sk_wrong"}, {"authorization": "sk_test_emulator"}]
)
def test_401_without_the_right_key(emulator: EmulatorServer, headers: dict[str, str]) -> None:
    response = httpx.get(f"{emulator.url}/v1/users/u1", headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "code": "api_key_missing",
        "message": "No valid API key provided",
        "status": 401,
        "type": "authentication_error",
    }
    assert emulator.api_key not in response.text
    assert response.headers["x-request-id"]


def test_401_through_the_sdk(emulator: EmulatorServer) -> None:
    with (
        Knock(api_key="sk_wrong", base_url=emulator.url, max_retries=0) as knock,
        pytest.raises(knockapi.AuthenticationError),
    ):
        knock.users.get("u1")
    stats = emulator.stats()
    assert stats["requests"] == {"GET /v1/users/{user_id}": {"401": 1}}
    assert stats["first_request_at"] <= time.time()


def test_sdk_headers_are_accepted_and_idempotency_key_ignored_on_identify(
    http: httpx.Client, emulator: EmulatorServer
) -> None:
    headers = {"idempotency-key": "k1", "x-knock-branch": "feature", "x-stainless-lang": "python"}
    http.put("/v1/users/u1", json={"n": 1}, headers=headers).raise_for_status()
    http.put("/v1/users/u1", json={"n": 2}, headers=headers).raise_for_status()
    assert emulator.users()[0]["n"] == 2
    assert emulator.stats()["identify_entries"] == 2


def test_malformed_bodies(http: httpx.Client) -> None:
    bad_json = http.put(
        "/v1/users/u1", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert bad_json.json()["code"] == "invalid_json"
    not_object = http.put("/v1/users/u1", json=[1])
    assert not_object.status_code == 422
    wrong_type = http.put("/v1/users/u1", json={"email": 5})
    assert wrong_type.json()["errors"] == [
        {"field": "email", "message": "Input should be a valid string", "type": "invalid"}
    ]
    bad_date = http.put("/v1/users/u1", json={"created_at": "yesterday"})
    assert bad_date.json()["errors"][0]["field"] == "created_at"


def test_unrouted_paths_answer_knocks_404(http: httpx.Client) -> None:
    response = http.get("/v1/nothing/here")
    assert response.status_code == 404
    assert response.json() == {"errors": {"detail": "404 Not Found"}}
    assert http.patch("/v1/users/u1", json={}).status_code == 404


def test_a_failing_user_is_refused_by_identify_and_not_stored(
    knock: Knock, emulator: EmulatorServer
) -> None:
    emulator.set_faults(failing_users=["bad"])
    with pytest.raises(knockapi.UnprocessableEntityError) as err:
        knock.users.update("bad", name="Bad")
    assert err.value.body == {
        "code": "invalid_params",
        "message": "One or more parameters are invalid.",
        "status": 422,
        "type": "invalid_request_error",
        "errors": [
            {"field": "user_id", "message": "the user data was rejected", "type": "invalid"}
        ],
    }
    assert emulator.users() == []
    assert emulator.stats()["identify_entries"] == 0
    emulator.clear_faults()
    assert knock.users.update("bad", name="Fine").name == "Fine"


def test_refusals_are_counted_by_route_and_user(
    knock: Knock, http: httpx.Client, emulator: EmulatorServer
) -> None:
    emulator.set_faults(failing_users=["bad", "worse"])
    with pytest.raises(knockapi.UnprocessableEntityError):
        knock.users.update("bad", name="Bad")
    with pytest.raises(knockapi.UnprocessableEntityError):
        knock.users.merge("ok", from_user_id="worse")
    op = knock.users.bulk.identify(users=[{"id": "ok"}, {"id": "bad"}, {"id": "bad"}])
    wait_bulk(knock, op.id)
    http.post("/v1/users/bulk/delete", json={"user_ids": ["worse"]}).raise_for_status()
    wait_until(lambda: emulator.stats()["bulk_operations"]["completed"] == 2)
    assert emulator.stats()["refused"] == {
        "PUT /v1/users/{user_id}": {"bad": 1},
        "POST /v1/users/{user_id}/merge": {"worse": 1},
        "POST /v1/users/bulk/identify": {"bad": 2},
        "POST /v1/users/bulk/delete": {"worse": 1},
    }
    emulator.reset()
    assert emulator.stats()["refused"] == {}


def test_a_failing_user_already_stored_is_not_changed(
    knock: Knock, emulator: EmulatorServer
) -> None:
    knock.users.update("bad", name="Before")
    emulator.set_faults(failing_users=["bad"])
    with pytest.raises(knockapi.UnprocessableEntityError):
        knock.users.update("bad", name="After")
    assert [(u["id"], u["name"]) for u in emulator.users()] == [("bad", "Before")]


@pytest.mark.parametrize("failing", ["primary", "secondary"])
def test_merge_with_a_failing_user_is_422_and_changes_nothing(
    knock: Knock, emulator: EmulatorServer, failing: str
) -> None:
    knock.users.update("primary", name="P")
    knock.users.update("secondary", name="S", extra_body={"only_s": 1})
    emulator.set_faults(failing_users=[failing])
    with pytest.raises(knockapi.UnprocessableEntityError) as err:
        knock.users.merge("primary", from_user_id="secondary")
    field = "user_id" if failing == "primary" else "from_user_id"
    assert err.value.body["errors"] == [  # type: ignore[index]
        {"field": field, "message": "the user data was rejected", "type": "invalid"}
    ]
    assert [(u["id"], u["name"]) for u in emulator.users()] == [
        ("primary", "P"),
        ("secondary", "S"),
    ]
