"""Unit tests of the action rules (consumer/actions.py): pure logic, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from consumer.actions import Actions, idempotency_key
from consumer.config import Settings
from consumer.errors import ConfigError, InvalidEvent
from consumer.events import parse_event
from consumer.ops import Audience, Delete, Identify, SetObject, SetTenant, Subscribe, Trigger
from consumer.records import Record

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC).timestamp()


def _actions(backfill: bool = False, **sections: Any) -> Actions:
    a = Actions(Settings.model_validate(sections), clock=lambda: NOW)
    a.window(backfill=backfill)
    return a


def _map(a: Actions, msg: dict[str, Any], rec: Record | None = None):
    return a.map(parse_event(msg), msg, rec)


def _iso(seconds_ago: float) -> str:
    return datetime.fromtimestamp(NOW - seconds_ago, UTC).isoformat()


SHIPPED = {
    "workflows": {
        "rules": [
            {
                "event": "Order Shipped",
                "key": "order-shipped",
                "data": {"order_id": "properties.order_id"},
                "actor": "properties.actor_id",
            },
        ]
    }
}


def test_track_triggers_with_inline_recipient_data_actor_and_tenant() -> None:
    msg = {
        "type": "track",
        "event": "Order Shipped",
        "userId": "u1",
        "messageId": "m1",
        "timestamp": _iso(10),
        "properties": {"order_id": 7, "actor_id": "u2", "x": 1},
        "context": {"traits": {"email": "a@x.io"}, "groupId": "acme"},
    }
    out = _map(_actions(**SHIPPED), msg)
    assert out.ops == [
        Identify("u1", {"email": "a@x.io"}),
        Trigger(
            "order-shipped",
            "u1",
            {"email": "a@x.io"},
            {"order_id": 7},
            "u2",
            "acme",
            idempotency_key("order-shipped", "m1", None),
            NOW - 10,
        ),
    ]
    assert out.notes == []


def test_default_data_is_all_properties_and_patterns_match() -> None:
    a = _actions(
        workflows={
            "rules": [
                {"pattern": "Order *", "key": "orders"},
                {"pattern": "re:Ord.r S\\w+", "key": "re"},
                {"type": "page", "event": "Pricing", "key": "pricing"},
            ]
        }
    )
    msg = {
        "type": "track",
        "event": "Order Shipped",
        "userId": "u1",
        "messageId": "m1",
        "timestamp": _iso(0),
        "properties": {"a": 1},
    }
    ops = _map(a, msg).ops
    assert [(o.workflow, o.data) for o in ops] == [("orders", {"a": 1}), ("re", {"a": 1})]
    page = {
        "type": "page",
        "name": "Pricing",
        "userId": "u1",
        "messageId": "m2",
        "timestamp": _iso(0),
    }
    assert [o.workflow for o in _map(a, page).ops] == ["pricing"]
    assert _map(a, {**msg, "event": "Other"}).ops == []


def test_idempotency_key_is_stable_and_falls_back_to_the_position() -> None:
    assert idempotency_key("w", "m1", None) == idempotency_key("w", "m1", Record("t", 0, 5))
    assert idempotency_key("w", "m1", None) != idempotency_key("v", "m1", None)
    assert idempotency_key("w", None, Record("t", 0, 5)) == idempotency_key(
        "w", None, Record("t", 0, 5)
    )
    assert idempotency_key("w", None, Record("t", 0, 5)) != idempotency_key(
        "w", None, Record("t", 0, 6)
    )
    assert len(idempotency_key("w", "x" * 1000, None)) <= 255


def test_trigger_window_run_and_backfill() -> None:
    msg = {
        "type": "track",
        "event": "Order Shipped",
        "userId": "u1",
        "messageId": "m1",
        "context": {"traits": {"plan": "pro"}},
    }
    old, new = {**msg, "timestamp": _iso(7200)}, {**msg, "timestamp": _iso(60)}
    run = _actions(**SHIPPED)
    assert _map(run, old).notes == ["trigger_too_old"] and len(_map(run, old).ops) == 1
    assert len(_map(run, new).ops) == 2
    back = _actions(backfill=True, **SHIPPED)
    assert _map(back, new).notes == ["trigger_backfill"] and len(_map(back, new).ops) == 1
    since = datetime.fromtimestamp(NOW - 3600, UTC).isoformat()
    back = _actions(
        backfill=True, workflows={**SHIPPED["workflows"], "backfill": True, "since": since}
    )
    assert _map(back, old).notes == ["trigger_too_old"]
    assert len(_map(back, new).ops) == 2
    assert _map(run, msg).notes == ["trigger_no_time"]
    with pytest.raises(ConfigError, match=r"workflows\.since"):
        _actions(backfill=True, workflows={"backfill": True, "since": _iso(2 * 86_400)})


def test_group_to_tenant_and_to_object_with_subscription() -> None:
    msg = {
        "type": "group",
        "groupId": "acme",
        "userId": "u1",
        "traits": {"name": "Acme", "plan": "pro", "secret": 1, "id": "acme"},
    }
    out = _map(_actions(groups={"mode": "tenant", "drop": ["secret"]}), msg)
    assert out.ops == [SetTenant("acme", {"name": "Acme", "plan": "pro"})] and out.notes == [
        "no_traits"
    ]
    out = _map(
        _actions(
            groups={
                "mode": "object",
                "collection": "accounts",
                "subscribe": True,
                "rename": {"plan": "tier"},
            }
        ),
        msg,
    )
    assert out.ops == [
        SetObject("accounts", "acme", {"name": "Acme", "tier": "pro", "secret": 1}),
        Subscribe("accounts", "acme", "u1", {}),
    ]
    assert _map(_actions(), msg).notes == ["ignored_type", "no_traits"]


def test_audiences_trait_and_track_forms() -> None:
    a = _actions(audiences={"traits": ["vip"], "trait_prefix": "aud_", "track": True})
    msg = {
        "type": "identify",
        "userId": "u1",
        "traits": {"vip": True, "aud_x": False, "aud_y": "no", "n": 1},
    }
    out = _map(a, msg)
    assert out.ops[1:] == [Audience("vip", "u1", True, {}), Audience("aud_x", "u1", False, {})]
    assert out.notes == ["audience_not_bool"]
    enter = {
        "type": "track",
        "event": "Audience Entered",
        "userId": "u1",
        "properties": {"audience_key": "k"},
    }
    assert _map(a, enter).ops == [Audience("k", "u1", True, {})]
    assert _map(a, {**enter, "event": "Audience Exited"}).ops == [Audience("k", "u1", False, {})]
    assert _map(a, {**enter, "properties": {}}).notes == ["no_traits", "no_audience_key"]


def test_tombstone_deletes_the_user_named_by_the_key() -> None:
    a = _actions(deletes={"tombstones": True})
    assert a.tombstone(b"u1").ops == [Delete("u1")]
    with pytest.raises(InvalidEvent):
        a.tombstone(None)
    with pytest.raises(InvalidEvent):
        a.tombstone(b"a/b")
