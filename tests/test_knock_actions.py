"""The Knock client's action routes against the local Knock API (a real HTTP server)."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.errors import FatalKnockError, ItemError
from consumer.knock import KnockClient
from consumer.pacing import RateLimits


def client(api: Any, key: str | None = None) -> KnockClient:
    return KnockClient(api_key=key or api.api_key, base_url=api.url, limits=RateLimits("off"))


def test_trigger_replays_the_first_run_for_the_same_key(api):
    api.set_faults(workflows=["w"])
    body = {"recipients": [{"id": "u1", "email": "u1@x.io"}], "data": {"n": 1}}
    with client(api) as knock:
        first = knock.trigger("w", body, "k1")
        assert knock.trigger("w", body, "k1") == first
        with pytest.raises(ItemError) as refused:
            knock.trigger("w", {**body, "data": {"n": 2}}, "k1")
        assert refused.value.status == 422 and refused.value.code == "idempotency_key_reused"
        with pytest.raises(ItemError) as missing:
            knock.trigger("nope", body, "k2")
        assert missing.value.status == 404 and missing.value.code == "workflow_missing"
    runs = api.triggers()
    assert [(r["workflow"], r["idempotency_key"], r["data"]) for r in runs] == [
        ("w", "k1", {"n": 1})
    ]
    assert [u["id"] for u in api.users()] == ["u1"]


def test_a_rejected_key_is_fatal_on_action_routes(api):
    with client(api, key="sk_wrong") as knock, pytest.raises(FatalKnockError) as fatal:
        knock.bulk_set_tenants([{"id": "t1"}])
    assert fatal.value.status == 401
    assert "sk_wrong" not in str(fatal.value)


def test_bulk_routes_follow_their_operation_to_completion(api):
    with client(api) as knock:
        knock.bulk_identify([{"id": "u1"}, {"id": "u2"}])
        assert knock.bulk_delete_users(["u1"]).applied == ["u1"]
        assert knock.bulk_set_tenants([{"id": "t1", "name": "T"}]).applied == ["t1"]
        assert knock.bulk_set_objects("accounts", [{"id": "o1", "plan": "x"}]).applied == ["o1"]
        knock.add_subscriptions("accounts", "o1", [{"id": "u2"}])
        knock.audience_members("vip", [{"id": "u2"}], add=True)
        knock.audience_members("vip", [{"id": "u3"}], add=True)
        knock.audience_members("vip", [{"id": "u3"}], add=False)
    assert api.deleted() == ["u1"]
    assert [(t["id"], t["name"]) for t in api.tenants()] == [("t1", "T")]
    assert [(o["id"], o["properties"]) for o in api.objects()] == [("o1", {"plan": "x"})]
    assert [(s["object_id"], s["recipient"]) for s in api.subscriptions()] == [("o1", "u2")]
    assert {k: [m["user_id"] for m in v] for k, v in api.audiences().items()} == {"vip": ["u2"]}
