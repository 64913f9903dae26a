"""Subscriptions and audience members, through the SDK: inline identification, the
``failing_users`` fault, and what a user delete takes with it."""

from __future__ import annotations

import knockapi
import pytest
from knockapi import Knock

from consumer.emulator import EmulatorServer

REFUSED = {"message": "the user data was rejected", "type": "invalid"}


def test_subscribe_identifies_inline_recipients_and_upserts(
    knock: Knock, emulator: EmulatorServer
) -> None:
    knock.objects.set("projects", "p1", extra_body={"name": "P1"})
    knock.users.update("known", name="Known")
    subs = knock.objects.add_subscriptions(
        "projects",
        "p1",
        recipients=["known", {"id": "inline", "email": "in@x.io"}],
        properties={"role": "viewer"},
    )
    assert [(s.recipient.id, s.properties, s.object.id) for s in subs] == [
        ("known", {"role": "viewer"}, "p1"),
        ("inline", {"role": "viewer"}, "p1"),
    ]
    assert knock.users.get("inline").email == "in@x.io"
    knock.objects.add_subscriptions("projects", "p1", recipients=["known"], properties={"r": 2})
    listed = knock.objects.list_subscriptions("projects", "p1")
    assert [(s.recipient.id, s.properties) for s in listed] == [
        ("known", {"r": 2}),
        ("inline", {"role": "viewer"}),
    ]
    assert emulator.subscriptions() == [
        {"collection": "projects", "object_id": "p1", "recipient": "known", "properties": {"r": 2}},
        {
            "collection": "projects",
            "object_id": "p1",
            "recipient": "inline",
            "properties": {"role": "viewer"},
        },
    ]
    deleted = knock.objects.delete_subscriptions("projects", "p1", recipients=["inline", "nope"])
    assert [s.recipient.id for s in deleted] == ["inline"]
    assert [s["recipient"] for s in emulator.subscriptions()] == ["known"]
    assert emulator.stats()["subscriptions"] == 1


def test_subscribe_to_a_missing_object_or_unknown_bare_user_is_404(
    knock: Knock, emulator: EmulatorServer
) -> None:
    with pytest.raises(knockapi.NotFoundError):
        knock.objects.add_subscriptions("projects", "none", recipients=[{"id": "u"}])
    knock.objects.set("projects", "p1")
    with pytest.raises(knockapi.NotFoundError):
        knock.objects.add_subscriptions("projects", "p1", recipients=[{"id": "u"}, "ghost"])
    assert emulator.users() == []
    assert emulator.subscriptions() == []


def test_subscribe_with_a_failing_inline_user_is_422_and_changes_nothing(
    knock: Knock, emulator: EmulatorServer
) -> None:
    knock.objects.set("projects", "p1")
    emulator.set_faults(failing_users=["bad"])
    with pytest.raises(knockapi.UnprocessableEntityError) as err:
        knock.objects.add_subscriptions(
            "projects", "p1", recipients=[{"id": "ok"}, {"id": "bad", "name": "B"}]
        )
    assert err.value.body["errors"] == [{"field": "recipients[1].id", **REFUSED}]  # type: ignore[index]
    assert emulator.users() == []
    assert emulator.subscriptions() == []


def test_audience_members_add_list_remove(knock: Knock, emulator: EmulatorServer) -> None:
    knock.audiences.add_members(
        "vip",
        members=[
            {"user": {"id": "u1", "name": "One"}, "tenant": "acme"},
            {"user": {"id": "u2"}},
        ],
    )
    assert knock.users.get("u1").name == "One"
    listed = knock.audiences.list_members("vip")
    assert [(m.user_id, m.tenant, m.user.id) for m in listed.entries] == [
        ("u1", "acme", "u1"),
        ("u2", None, "u2"),
    ]
    knock.audiences.remove_members("vip", members=[{"user": {"id": "u2"}}])
    assert emulator.audiences() == {"vip": [{"user_id": "u1", "tenant": "acme"}]}
    assert emulator.stats()["audience_members"] == 1


def test_audience_add_with_a_failing_user_is_422_and_changes_nothing(
    knock: Knock, emulator: EmulatorServer
) -> None:
    emulator.set_faults(failing_users=["bad"])
    with pytest.raises(knockapi.UnprocessableEntityError) as err:
        knock.audiences.add_members(
            "vip", members=[{"user": {"id": "ok"}}, {"user": {"id": "bad"}}]
        )
    assert err.value.body["errors"] == [{"field": "members[1].user.id", **REFUSED}]  # type: ignore[index]
    assert emulator.users() == []
    assert emulator.audiences() == {}


def test_audience_add_of_1001_members_is_422(knock: Knock) -> None:
    with pytest.raises(knockapi.UnprocessableEntityError) as err:
        knock.audiences.add_members("a", members=[{"user": {"id": f"u{n}"}} for n in range(1001)])
    assert err.value.body["errors"][0]["type"] == "length"  # type: ignore[index]


def test_deleting_a_user_drops_its_subscriptions_and_memberships_and_is_logged(
    knock: Knock, emulator: EmulatorServer
) -> None:
    knock.objects.set("projects", "p1")
    knock.objects.add_subscriptions("projects", "p1", recipients=[{"id": "u1"}, {"id": "u2"}])
    knock.audiences.add_members("vip", members=[{"user": {"id": "u1"}}])
    knock.users.delete("u1")
    assert [s["recipient"] for s in emulator.subscriptions()] == ["u2"]
    assert emulator.audiences() == {}
    assert emulator.deleted() == ["u1"]
    emulator.reset()
    assert (emulator.deleted(), emulator.subscriptions(), emulator.objects()) == ([], [], [])
