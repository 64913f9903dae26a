"""Knock actions end to end, in-process, on the real broker and the local Knock API; each Knock
state asserted exactly against tests/model_actions.py."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Producer

from consumer.sink import Sink
from tests.conftest import wait_for
from tests.model import actual_state
from tests.model_actions import (
    actual_triggers,
    expected_audiences,
    expected_groups,
    expected_subscriptions,
    expected_triggers,
    expected_users,
)

WORKFLOWS = {"Order Shipped": "order-shipped", "Invoice Paid": "invoice-paid"}
RULES = [{"event": name, "key": key} for name, key in WORKFLOWS.items()]


def backfill(settings: Any) -> Any:
    return Sink(settings).run(from_beginning=True, until_end=True)


def run_until_committed(settings: Any, kafka: Any, topic: str) -> None:
    """``run`` (not a backfill) until every event is committed, then stop it."""
    sink = Sink(settings)
    failure: list[BaseException] = []

    def target() -> None:
        try:
            sink.run(from_beginning=True)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    try:
        ends = kafka.end_offsets(topic)
        wait_for(
            lambda: failure or kafka.committed(settings.kafka.group_id, topic) == ends,
            60,
            "all committed",
        )
    finally:
        sink.stop()
        thread.join(60)
    assert not failure, failure


def stamp(seconds_ago: float) -> dict[str, Any]:
    t = time.time() - seconds_ago
    return {"timestamp": datetime.fromtimestamp(t, UTC).isoformat(), "_t": t}


def tracks(n_users: int, per_user: int, seconds_ago: float = 5.0) -> list[dict[str, Any]]:
    events = []
    for i in range(per_user):
        for u in range(n_users):
            name = ["Order Shipped", "Invoice Paid", "Page Scrolled"][(u + i) % 3]
            events.append(
                {
                    "type": "track",
                    "event": name,
                    "userId": f"u{u}",
                    "messageId": f"m-{u}-{i}",
                    "properties": {"n": i, "order": f"o{u}-{i}"},
                    "context": {"groupId": f"acme{u % 2}"} if u % 3 else {},
                    **stamp(seconds_ago),
                }
            )
    return events


def test_tracks_trigger_each_workflow_once_also_when_replayed(kafka, api, settings_for):
    api.set_faults(workflows=list(WORKFLOWS.values()))
    topic = kafka.topic(3)
    events = tracks(6, 5)
    kafka.produce(topic, events)
    run_until_committed(settings_for(topic, workflows__rules=RULES), kafka, topic)
    expected = expected_triggers(events, WORKFLOWS)
    assert actual_triggers(api.triggers()) == expected
    # The whole stream again, in a new group, triggering: Knock answers every key's first run.
    summary = backfill(
        settings_for(
            topic,
            workflows__rules=RULES,
            workflows__backfill=True,
            kafka__group_id=f"again-{topic}",
        )
    )
    runs = api.triggers()
    assert actual_triggers(runs) == expected
    assert len({r["idempotency_key"] for r in runs}) == len(runs) == len(expected)
    assert summary.applied == len(expected)


def test_backfill_triggers_nothing_by_default_and_only_recent_events_when_asked(
    kafka, api, settings_for
):
    api.set_faults(workflows=list(WORKFLOWS.values()))
    topic = kafka.topic(1)
    old, recent = tracks(3, 2, seconds_ago=3 * 3600), tracks(3, 2, seconds_ago=60)
    for e in recent:
        e["messageId"] += "-recent"
    kafka.produce(topic, old + recent)
    summary = backfill(settings_for(topic, workflows__rules=RULES))
    assert api.triggers() == []
    assert summary.notes["trigger_backfill"] == len(expected_triggers(old + recent, WORKFLOWS))
    since = time.time() - 3600
    summary = backfill(
        settings_for(
            topic,
            workflows__rules=RULES,
            workflows__backfill=True,
            kafka__group_id=f"t-{topic}",
            workflows__since=datetime.fromtimestamp(since, UTC).isoformat(),
        )
    )
    assert actual_triggers(api.triggers()) == expected_triggers(old + recent, WORKFLOWS, since)
    assert summary.triggers_skipped == {"trigger_too_old": len(expected_triggers(old, WORKFLOWS))}
    assert summary.describe()["triggers_skipped"] == summary.triggers_skipped


def test_unknown_workflow_is_dead_lettered_with_knocks_error(kafka, api, settings_for):
    api.set_faults(workflows=["order-shipped"])
    topic = kafka.topic(1)
    events = [
        {"type": "track", "event": "Invoice Paid", "userId": "u1", "messageId": "m1", **stamp(1)},
        {"type": "track", "event": "Order Shipped", "userId": "u1", "messageId": "m2", **stamp(1)},
    ]
    kafka.produce(topic, events)
    summary = backfill(settings_for(topic, workflows__rules=RULES, workflows__backfill=True))
    assert actual_triggers(api.triggers()) == expected_triggers(events[1:], WORKFLOWS)
    [dead] = kafka.read_all(f"{topic}.dlq", 1)
    headers = dict(dead.headers())
    assert headers["knock-sink.error.kind"] == b"knock_rejected"
    assert headers["knock-sink.source.offset"] == b"0"
    assert b"workflow_missing" in headers["knock-sink.error.reason"]
    assert summary.dead_lettered == {"knock_rejected": 1}
    assert kafka.committed(f"g-{topic}", topic) == {0: 2}


def group_events() -> list[dict[str, Any]]:
    return [
        {
            "type": "group",
            "groupId": "acme",
            "userId": "u1",
            "traits": {"name": "Acme", "plan": "free"},
        },
        {
            "type": "group",
            "groupId": "acme",
            "userId": "u2",
            "traits": {"plan": "pro", "size": {"n": 3}},
        },
        {"type": "group", "groupId": "globex", "userId": "u1", "traits": {"name": "Globex"}},
    ]


def test_group_to_tenant(kafka, api, settings_for):
    topic = kafka.topic(1)
    events = group_events()
    kafka.produce(topic, events)
    backfill(settings_for(topic, groups__mode="tenant"))
    got = {
        t["id"]: {k: v for k, v in t.items() if k not in ("id", "__typename", "settings")}
        for t in api.tenants()
    }
    assert got == expected_groups(events)


def test_group_to_object_and_subscription(kafka, api, settings_for):
    topic = kafka.topic(3)
    events = group_events()
    # Keyed by group: one object's updates are ordered only within a partition.
    kafka.produce(topic, events, key=lambda e: e["groupId"])
    backfill(
        settings_for(
            topic, groups__mode="object", groups__collection="accounts", groups__subscribe=True
        )
    )
    objects = {o["id"]: o for o in api.objects()}
    assert {i: o["properties"] for i, o in objects.items()} == expected_groups(events)
    assert {o["collection"] for o in objects.values()} == {"accounts"}
    subs = {
        (s["object_id"], s["recipient"])
        for s in api.subscriptions()
        if s["collection"] == "accounts"
    }
    assert subs == expected_subscriptions(events)


def test_audiences_enter_and_exit_in_both_forms(kafka, api, settings_for):
    topic = kafka.topic(3)
    events = [
        {"type": "identify", "userId": "u1", "traits": {"vip": True, "plan": "x"}},
        {"type": "identify", "userId": "u2", "traits": {"vip": True}},
        {
            "type": "track",
            "event": "Audience Entered",
            "userId": "u3",
            "properties": {"audience_key": "churn"},
        },
        {
            "type": "track",
            "event": "Audience Entered",
            "userId": "u1",
            "properties": {"audience_key": "churn"},
        },
        {"type": "identify", "userId": "u2", "traits": {"vip": False}},
        {
            "type": "track",
            "event": "Audience Exited",
            "userId": "u3",
            "properties": {"audience_key": "churn"},
        },
    ]
    kafka.produce(topic, events)
    backfill(settings_for(topic, audiences__traits=["vip"], audiences__track=True))
    got = {k: sorted(m["user_id"] for m in v) for k, v in api.audiences().items() if v}
    assert got == expected_audiences(events, {"vip"})


def test_tombstones_delete_users_in_order_with_updates_around_them(kafka, api, settings_for):
    topic = kafka.topic(1)
    events = [
        {"type": "identify", "userId": "u1", "traits": {"a": 1}},
        {"type": "identify", "userId": "u2", "traits": {"a": 2}},
        {"type": "tombstone", "userId": "u1"},
        {"type": "identify", "userId": "u1", "traits": {"b": 1}},
        {"type": "identify", "userId": "u2", "traits": {"c": 2}},
        {"type": "tombstone", "userId": "u2"},
        {"type": "identify", "userId": "u3", "traits": {"d": 3}},
        {"type": "tombstone", "userId": "u3"},
    ]
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True})
    for e in events:
        value = None if e["type"] == "tombstone" else __import__("orjson").dumps(e)
        producer.produce(topic, value, key=e["userId"].encode())
    assert producer.flush(30) == 0
    backfill(settings_for(topic, deletes__tombstones=True))
    assert actual_state(api.users()) == expected_users(events)
    assert kafka.committed(f"g-{topic}", topic) == {0: len(events)}


def test_a_refused_user_is_dead_lettered_alone_and_the_others_apply(kafka, api, settings_for):
    """Knock refuses a whole audience call for one failing user: the sink finds it by sending
    the members one by one; the bulk delete reports it as an error item, retried then parked."""
    api.set_faults(failing_users=["bad"])
    topic = kafka.topic(1)
    events = [
        {
            "type": "track",
            "event": "Audience Entered",
            "userId": u,
            "properties": {"audience_key": "k"},
        }
        for u in ("a", "bad", "b")
    ]
    kafka.produce(topic, events)
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True})
    producer.produce(topic, None, key=b"bad")
    assert producer.flush(30) == 0
    summary = backfill(
        settings_for(topic, audiences__track=True, deletes__tombstones=True, sink__item_attempts=2)
    )
    got = {k: sorted(m["user_id"] for m in v) for k, v in api.audiences().items() if v}
    assert got == expected_audiences([e for e in events if e["userId"] != "bad"], set())
    dead = kafka.read_all(f"{topic}.dlq", 2)
    assert sorted(dict(m.headers())["knock-sink.source.offset"] for m in dead) == [b"1", b"3"]
    assert {dict(m.headers())["knock-sink.error.kind"] for m in dead} == {b"knock_rejected"}
    assert summary.dead_lettered == {"knock_rejected": 2}
    assert kafka.committed(f"g-{topic}", topic) == {0: 4}


def test_under_knocks_limits_bulk_actions_wait_out_the_entity_gap(kafka, settings_for):
    """A delete right after its user's bulk identify, a tenant set twice: each entity waits for
    Knock's one-update-a-second instead of being skipped, so every bulk call is made once."""
    import uuid

    from consumer.emulator import EmulatorServer

    topic = kafka.topic(1)
    events = [
        {"type": "identify", "userId": "u1", "traits": {"a": 1}},
        {"type": "identify", "userId": "u2", "traits": {"a": 2}},
        {"type": "group", "groupId": "acme", "userId": "u2", "traits": {"name": "Acme"}},
        {"type": "tombstone", "userId": "u1"},
        {"type": "group", "groupId": "acme", "userId": "u2", "traits": {"plan": "pro"}},
    ]
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True})
    for e in events:
        value = None if e["type"] == "tombstone" else __import__("orjson").dumps(e)
        producer.produce(topic, value, key=e["userId"].encode())
    assert producer.flush(30) == 0
    with EmulatorServer(api_key="sk_test_" + uuid.uuid4().hex, rate_limits="knock") as limited:
        settings = settings_for(
            topic,
            knock__api_key=limited.api_key,
            knock__base_url=limited.url,
            knock__rate_limits="knock",
            groups__mode="tenant",
            deletes__tombstones=True,
        )
        summary = backfill(settings)
        assert actual_state(limited.users()) == expected_users(events)
        got = {
            t["id"]: {k: v for k, v in t.items() if k not in ("id", "__typename", "settings")}
            for t in limited.tenants()
        }
        assert got == expected_groups(events)
    assert summary.knock_calls["bulk_delete_users"] == 1
    assert summary.knock_calls["bulk_set_tenants"] == 2
    assert summary.applied == len(events)
