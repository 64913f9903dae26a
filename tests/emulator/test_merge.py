"""``POST /v1/users/{user_id}/merge``: every documented merge rule."""

from __future__ import annotations

import knockapi
import pytest
from knockapi import Knock

from consumer.emulator import EmulatorServer

EMAIL_CH = "97c5837d-c65c-4d54-aa39-080eeb81c69d"
PUSH_CH = "c1f9e5a0-7b51-4f41-a0a0-1b2f0e0e0e01"
SMS_CH = "0e7b5b4c-2a9f-4b6c-9a57-6a0c8f1b2d3e"


def test_merge_applies_knocks_rules_and_deletes_the_from_user(
    knock: Knock, emulator: EmulatorServer
) -> None:
    knock.users.update(
        "primary",
        email="p@x.io",
        name=None,
        channel_data={PUSH_CH: {"tokens": ["p-token"]}},
        preferences={"default": {"channel_types": {"email": True}}},
        extra_body={"plan": "pro", "company": {"id": "c1", "meta": {"a": 1}}, "only_p": 1},
    )
    knock.users.update(
        "secondary",
        email="s@x.io",
        name="Sec",
        phone_number="+15555550100",
        channel_data={PUSH_CH: {"tokens": ["s-token"]}, SMS_CH: {"tokens": ["s-sms"]}},
        preferences={
            "default": {"channel_types": {"sms": True}},
            "tenant-1": {"channel_types": {"push": False}},
        },
        extra_body={
            "plan": "free",
            "company": {"name": "Acme", "meta": {"a": 2, "b": 3}},
            "only_s": 2,
        },
    )
    merged = knock.users.merge("primary", from_user_id="secondary")
    assert merged.id == "primary"
    assert merged.email == "p@x.io"  # primary wins
    assert merged.name is None  # the primary's explicit null is its value, and wins
    assert merged.phone_number == "+15555550100"  # missing on the primary: taken over
    extra = merged.model_extra or {}
    assert extra["plan"] == "pro"
    assert extra["company"] == {"id": "c1", "name": "Acme", "meta": {"a": 1, "b": 3}}
    assert (extra["only_p"], extra["only_s"]) == (1, 2)

    with pytest.raises(knockapi.NotFoundError):
        knock.users.get("secondary")
    (stored,) = emulator.users()
    assert stored["channel_data"] == {
        PUSH_CH: {"tokens": ["p-token"]},
        SMS_CH: {"tokens": ["s-sms"]},
    }
    # Preference sets are merged shallowly: the primary's "default" is kept whole.
    assert stored["preferences"] == {
        "default": {"channel_types": {"email": True}},
        "tenant-1": {"channel_types": {"push": False}},
    }


def test_merge_with_a_missing_user_is_404(knock: Knock, emulator: EmulatorServer) -> None:
    knock.users.update("present", name="P")
    for user_id, from_user_id in (("present", "ghost"), ("ghost", "present")):
        with pytest.raises(knockapi.NotFoundError) as err:
            knock.users.merge(user_id, from_user_id=from_user_id)
        assert err.value.body["code"] == "resource_missing"  # type: ignore[index]
    assert [u["id"] for u in emulator.users()] == ["present"]


def test_merge_needs_a_valid_from_user_id(knock: Knock) -> None:
    knock.users.update("u1")
    with pytest.raises(knockapi.UnprocessableEntityError):
        knock.users.merge("u1", from_user_id="a#b")
