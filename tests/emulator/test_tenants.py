"""Tenants and objects: set, get, delete, bulk set, through the SDK."""

from __future__ import annotations

import knockapi
import pytest
from knockapi import Knock

from consumer.emulator import EmulatorServer

from .helpers import wait_bulk


def test_set_get_and_delete_a_tenant(knock: Knock, emulator: EmulatorServer) -> None:
    knock.tenants.set(
        "acme",
        settings={"branding": {"primary_color": "#000000"}},
        extra_body={"name": "Acme", "tier": {"level": 1}},
    )
    knock.tenants.set("acme", extra_body={"tier": {"seats": 5}})
    tenant = knock.tenants.get("acme")
    assert (tenant.id, tenant.name, tenant.tier) == ("acme", "Acme", {"level": 1, "seats": 5})  # type: ignore[attr-defined]
    assert tenant.settings is not None and tenant.settings.branding is not None
    assert tenant.settings.branding.primary_color == "#000000"
    assert emulator.tenants() == [
        {
            "__typename": "Tenant",
            "id": "acme",
            "name": "Acme",
            "settings": {"branding": {"primary_color": "#000000"}},
            "tier": {"level": 1, "seats": 5},
        }
    ]
    knock.tenants.delete("acme")
    with pytest.raises(knockapi.NotFoundError):
        knock.tenants.get("acme")
    with pytest.raises(knockapi.NotFoundError):
        knock.tenants.delete("acme")
    assert emulator.tenants() == []


def test_bulk_set_tenants(knock: Knock, emulator: EmulatorServer) -> None:
    op = knock.tenants.bulk.set(tenants=["t1", {"id": "t2", "name": "Two", "plan": "pro"}])
    assert (op.status, op.name, op.estimated_total_rows) == ("queued", "tenants.set", 2)
    done = wait_bulk(knock, op.id)
    assert (done.processed_rows, done.success_count, done.error_count) == (2, 2, 0)
    assert [(t["id"], t["name"]) for t in emulator.tenants()] == [("t1", None), ("t2", "Two")]
    assert knock.tenants.get("t2").plan == "pro"  # type: ignore[attr-defined]
    assert emulator.stats()["tenants"] == 2


def test_bulk_set_tenants_validates_every_item(knock: Knock) -> None:
    with pytest.raises(knockapi.UnprocessableEntityError) as err:
        knock.tenants.bulk.set(tenants=["ok", {"name": "no id"}])
    assert err.value.body["errors"][0]["field"] == "tenants[1].id"  # type: ignore[index]


def test_set_get_delete_and_bulk_set_objects(knock: Knock, emulator: EmulatorServer) -> None:
    obj = knock.objects.set("projects", "p1", extra_body={"name": "P1", "cfg": {"a": 1}})
    assert (obj.collection, obj.id, obj.properties) == (
        "projects",
        "p1",
        {"name": "P1", "cfg": {"a": 1}},
    )
    done = wait_bulk(
        knock,
        knock.objects.bulk.set(
            "projects", objects=[{"id": "p1", "cfg": {"b": 2}}, {"id": "p2", "name": "P2"}]
        ).id,
    )
    assert (done.name, done.success_count) == ("objects.set", 2)
    assert knock.objects.get("projects", "p1").properties == {"name": "P1", "cfg": {"a": 1, "b": 2}}
    assert [(o["collection"], o["id"]) for o in emulator.objects()] == [
        ("projects", "p1"),
        ("projects", "p2"),
    ]
    knock.objects.delete("projects", "p2")
    with pytest.raises(knockapi.NotFoundError):
        knock.objects.get("projects", "p2")
    assert emulator.stats()["objects"] == 1
    # Tenants are objects of Knock's $tenants collection, but not listed as objects.
    knock.tenants.set("acme")
    assert [o["id"] for o in emulator.objects()] == ["p1"]
