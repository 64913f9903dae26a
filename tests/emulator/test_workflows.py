"""Workflow triggers, tenants and objects."""

from __future__ import annotations

import httpx
import knockapi
import pytest
from knockapi import Knock

from consumer.emulator import EmulatorServer


def test_trigger_identifies_inline_recipients_and_records_the_trigger(
    knock: Knock, emulator: EmulatorServer
) -> None:
    knock.users.update("known", name="Known")
    answer = knock.workflows.trigger(
        "new-comment",
        recipients=["known", {"id": "inline", "email": "in@x.io", "plan": "pro"}],
        actor={"id": "actor-1", "name": "Act"},
        data={"comment": "hi"},
        tenant="acme",
        cancellation_key="ck",
        idempotency_key="trigger-1",
    )
    again = knock.workflows.trigger(
        "new-comment",
        recipients=["known", {"id": "inline", "email": "in@x.io", "plan": "pro"}],
        actor={"id": "actor-1", "name": "Act"},
        data={"comment": "hi"},
        tenant="acme",
        cancellation_key="ck",
        idempotency_key="trigger-1",
    )
    assert again.workflow_run_id == answer.workflow_run_id
    assert knock.users.get("inline").email == "in@x.io"
    assert knock.users.get("actor-1").name == "Act"
    (recorded,) = emulator.triggers()
    assert recorded == {
        "workflow": "new-comment",
        "workflow_run_id": answer.workflow_run_id,
        "idempotency_key": "trigger-1",
        "recipients": ["known", {"id": "inline", "email": "in@x.io", "plan": "pro"}],
        "actor": {"id": "actor-1", "name": "Act"},
        "tenant": "acme",
        "data": {"comment": "hi"},
        "cancellation_key": "ck",
        "settings": None,
    }
    # Inline identification on trigger is not an identify call.
    assert emulator.stats()["identify_entries"] == 1


def test_idempotent_replay_headers_and_mismatch(
    http: httpx.Client, emulator: EmulatorServer
) -> None:
    body = {"recipients": ["u1"]}
    first = http.post("/v1/workflows/wf/trigger", json=body, headers={"idempotency-key": "k"})
    replay = http.post("/v1/workflows/wf/trigger", json=body, headers={"idempotency-key": "k"})
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["original-x-request-id"] == first.headers["x-request-id"]
    other = http.post(
        "/v1/workflows/wf/trigger", json={"recipients": ["u2"]}, headers={"idempotency-key": "k"}
    )
    assert other.status_code == 422
    fresh = http.post("/v1/workflows/wf/trigger", json=body, headers={"idempotency-key": "k2"})
    assert fresh.json() != first.json()
    assert len(emulator.triggers()) == 2


def test_trigger_validation(knock: Knock, emulator: EmulatorServer) -> None:
    with pytest.raises(knockapi.UnprocessableEntityError):
        knock.workflows.trigger("wf", recipients=[])
    with pytest.raises(knockapi.UnprocessableEntityError):
        knock.workflows.trigger("wf", recipients=[{"id": "a/b"}])
    assert emulator.triggers() == []


def test_set_tenant_and_object(knock: Knock) -> None:
    tenant = knock.tenants.set("acme", extra_body={"name": "Acme", "tier": {"level": 1}})
    assert (tenant.id, tenant.name, tenant.tier) == ("acme", "Acme", {"level": 1})  # type: ignore[attr-defined]
    tenant = knock.tenants.set("acme", extra_body={"tier": {"seats": 5}})
    assert tenant.name == "Acme"
    assert tenant.tier == {"level": 1, "seats": 5}  # type: ignore[attr-defined]
    obj = knock.objects.set("projects", "p1", extra_body={"name": "P1", "cfg": {"a": 1}})
    assert (obj.collection, obj.id, obj.properties) == (
        "projects",
        "p1",
        {"name": "P1", "cfg": {"a": 1}},
    )
    obj = knock.objects.set("projects", "p1", extra_body={"cfg": {"b": 2}})
    assert obj.properties == {"name": "P1", "cfg": {"a": 1, "b": 2}}


@pytest.mark.parametrize(
    ("recipients", "actor", "field"),
    [
        (["ok", {"id": "bad", "name": "B"}], None, "recipients[1].id"),
        (["ok"], {"id": "bad"}, "actor.id"),
    ],
)
def test_trigger_with_a_failing_inline_user_is_422_and_identifies_nobody(
    knock: Knock, emulator: EmulatorServer, recipients: list, actor: object, field: str
) -> None:
    emulator.set_faults(failing_users=["bad"])
    with pytest.raises(knockapi.UnprocessableEntityError) as err:
        knock.workflows.trigger(
            "wf", recipients=[*recipients, {"id": "fine", "name": "F"}], actor=actor
        )
    assert err.value.body["errors"] == [  # type: ignore[index]
        {"field": field, "message": "the user data was rejected", "type": "invalid"}
    ]
    assert emulator.users() == []
    assert emulator.triggers() == []


def test_a_failing_user_named_by_id_only_is_not_upserted_so_not_refused(
    knock: Knock, emulator: EmulatorServer
) -> None:
    emulator.set_faults(failing_users=["bad"])
    knock.workflows.trigger("wf", recipients=["bad"], actor="bad")
    assert len(emulator.triggers()) == 1


def test_unknown_workflow_is_404_once_workflows_are_declared(
    knock: Knock, emulator: EmulatorServer
) -> None:
    assert emulator.set_faults()["workflows"] is None
    knock.workflows.trigger("anything", recipients=["u1"])
    assert emulator.set_faults(workflows=["welcome"])["workflows"] == ["welcome"]
    with pytest.raises(knockapi.NotFoundError) as err:
        knock.workflows.trigger("anything", recipients=[{"id": "u1"}])
    assert err.value.body == {
        "code": "workflow_missing",
        "message": "The workflow you tried to invoke does not exist",
        "status": 404,
        "type": "invalid_request_error",
    }
    knock.workflows.trigger("welcome", recipients=["u1"])
    assert [t["workflow"] for t in emulator.triggers()] == ["anything", "welcome"]
    assert emulator.users() == []
    emulator.set_faults(workflows=None)
    knock.workflows.trigger("anything", recipients=["u1"])


def test_same_idempotency_key_same_body_is_one_run_through_the_sdk(
    knock: Knock, emulator: EmulatorServer
) -> None:
    first = knock.workflows.trigger("wf", recipients=["u1"], data={"n": 1}, idempotency_key="i")
    second = knock.workflows.trigger("wf", recipients=["u1"], data={"n": 1}, idempotency_key="i")
    assert second.workflow_run_id == first.workflow_run_id
    with pytest.raises(knockapi.UnprocessableEntityError) as err:
        knock.workflows.trigger("wf", recipients=["u1"], data={"n": 2}, idempotency_key="i")
    assert err.value.body["code"] == "idempotency_key_reused"  # type: ignore[index]
    assert len(emulator.triggers()) == 1
    assert emulator.stats()["triggers"] == 1
