"""Lenient Segment parsing: what is accepted, normalised, or refused (and with which reason)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from consumer.errors import InvalidEvent
from consumer.events import EVENT_TYPES, Event, parse_event, parse_timestamp

IST = timezone(timedelta(hours=5, minutes=30))
PST = timezone(timedelta(hours=-8))


def refused(obj: object) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse_event(obj)
    assert info.value.kind == "invalid_event"
    return info.value.reason


def test_full_identify() -> None:
    event = parse_event(
        {
            "type": "identify",
            "userId": "u1",
            "anonymousId": "a1",
            "messageId": "m1",
            "timestamp": "2024-05-01T12:00:00.123Z",
            "version": "1.1",
            "channel": "browser",
            "context": {"locale": "en-US", "traits": {"email": "old@x.io", "plan": "free"}},
            "traits": {"email": "new@x.io", "age": 3},
        }
    )
    assert event == Event(
        type="identify",
        user_id="u1",
        anonymous_id="a1",
        message_id="m1",
        traits={"email": "new@x.io", "plan": "free", "age": 3},
        context={"locale": "en-US", "traits": {"email": "old@x.io", "plan": "free"}},
        channel="browser",
        version="1.1",
        timestamp=datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC),
    )


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_every_type_accepted(kind: str) -> None:
    assert parse_event({"type": kind}).type == kind


def test_type_is_case_insensitive() -> None:
    assert parse_event({"type": "Identify"}).type == "identify"


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([], "message: expected an object, got list"),
        ("identify", "message: expected an object, got string"),
        (None, "message: expected an object, got null"),
        ({}, "type: missing"),
        ({"type": None}, "type: missing"),
        ({"type": 3}, "type: expected a string, got number"),
        ({"type": "delete"}, "type: unknown message type 'delete'"),
        ({"type": "identify", "traits": []}, "traits: expected an object, got list"),
        ({"type": "identify", "traits": "x"}, "traits: expected an object, got string"),
        ({"type": "group", "traits": 1}, "traits: expected an object, got number"),
        ({"type": "track", "context": []}, "context: expected an object, got list"),
        (
            {"type": "track", "context": {"traits": "x"}},
            "context.traits: expected an object, got string",
        ),
        ({"type": "track", "userId": {"id": 1}}, "userId: expected a string or number, got object"),
        ({"type": "track", "userId": [1]}, "userId: expected a string or number, got list"),
        ({"type": "track", "userId": True}, "userId: expected a string or number, got bool"),
        (
            {"type": "track", "anonymousId": {}},
            "anonymousId: expected a string or number, got object",
        ),
        ({"type": "alias", "previousId": []}, "previousId: expected a string or number, got list"),
        ({"type": "group", "groupId": {}}, "groupId: expected a string or number, got object"),
        ({"type": "track", "messageId": []}, "messageId: expected a string or number, got list"),
        ({"type": "track", "event": {}}, "event: expected a string or number, got object"),
    ],
)
def test_refused_with_field_named(obj: object, reason: str) -> None:
    assert refused(obj) == reason


@pytest.mark.parametrize("value", [None, ""])
def test_null_and_empty_ids_are_absent(value: Any) -> None:
    event = parse_event(
        {
            "type": "alias",
            "userId": value,
            "anonymousId": value,
            "previousId": value,
            "groupId": value,
            "messageId": value,
        }
    )
    assert (event.user_id, event.anonymous_id, event.previous_id, event.group_id) == (
        None,
        None,
        None,
        None,
    )
    assert event.message_id is None


def test_numeric_ids_are_stringified() -> None:
    event = parse_event(
        {"type": "group", "userId": 42, "anonymousId": 1.5, "groupId": 0, "messageId": 7}
    )
    assert (event.user_id, event.anonymous_id, event.group_id, event.message_id) == (
        "42",
        "1.5",
        "0",
        "7",
    )


def test_alias_legacy_from_to() -> None:
    event = parse_event({"type": "alias", "from": "old", "to": 5})
    assert (event.previous_id, event.user_id) == ("old", "5")


def test_alias_current_keys_win_over_legacy() -> None:
    event = parse_event({"type": "alias", "from": "a", "to": "b", "previousId": "p", "userId": "u"})
    assert (event.previous_id, event.user_id) == ("p", "u")


def test_from_to_ignored_outside_alias() -> None:
    assert parse_event({"type": "identify", "to": "u"}).user_id is None


@pytest.mark.parametrize("version", [2, 1, "1.1", 2.0])
def test_version_number_or_string(version: Any) -> None:
    assert parse_event({"type": "track", "version": version}).version == version


def test_version_of_other_shape_is_dropped_not_fatal() -> None:
    assert parse_event({"type": "track", "version": {"v": 1}}).version is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00.000+00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        (
            "2022-06-22T12:31:19.002+05:30",
            datetime(2022, 6, 22, 12, 31, 19, 2000, tzinfo=IST),
        ),
        ("2024-05-01T12:00:00-08:00", datetime(2024, 5, 1, 12, tzinfo=PST)),
        ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01 12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01t12:00:00z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2014", datetime(2014, 1, 1, tzinfo=UTC)),
        ("2014-03", datetime(2014, 3, 1, tzinfo=UTC)),
        ("20240501T120000Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ],
)
def test_timestamps_any_iso_form(text: str, expected: datetime) -> None:
    event = parse_event(
        {
            "type": "track",
            "timestamp": text,
            "originalTimestamp": text,
            "sentAt": text,
            "receivedAt": text,
        }
    )
    assert event.timestamp == expected
    assert event.timestamp is not None and event.timestamp.utcoffset() == expected.utcoffset()
    assert event.original_timestamp == event.sent_at == event.received_at == expected


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01", "", [], {}, True])
def test_unparseable_timestamp_is_none_not_fatal(value: Any) -> None:
    assert parse_event({"type": "identify", "timestamp": value}).timestamp is None


def test_parse_timestamp_epochs() -> None:
    assert parse_timestamp(1_700_000_000) == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert parse_timestamp(1_700_000_000_000) == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    half = datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    assert parse_timestamp(1_700_000_000.5) == half
    assert parse_timestamp(10**30) is None


def test_unknown_keys_ignored() -> None:
    event = parse_event(
        {
            "type": "identify",
            "userId": "u",
            "writeKey": "k",
            "_metadata": {"x": 1},
            "integrations": {"All": True},
            "options": [],
            "properties": "whatever",
        }
    )
    assert event == Event(type="identify", user_id="u")


def test_channel_from_context() -> None:
    assert parse_event({"type": "track", "context": {"channel": "server"}}).channel == "server"
    assert parse_event({"type": "track", "channel": 3}).channel is None


def test_identify_traits_only_in_context() -> None:
    event = parse_event({"type": "identify", "userId": "u", "context": {"traits": {"a": 1}}})
    assert event.traits == {"a": 1}


def test_identify_null_traits() -> None:
    assert parse_event({"type": "identify", "traits": None, "context": None}).traits == {}


def test_track_reads_context_traits_only() -> None:
    event = parse_event(
        {
            "type": "track",
            "event": "Clicked",
            "traits": {"ignored": 1},
            "context": {"traits": {"email": "a@b.c"}},
        }
    )
    assert (event.event, event.traits, event.group_traits) == ("Clicked", {"email": "a@b.c"}, {})


def test_track_top_level_traits_of_wrong_type_ignored() -> None:
    assert parse_event({"type": "track", "traits": []}).traits == {}


def test_group_traits_kept_apart() -> None:
    event = parse_event(
        {
            "type": "group",
            "groupId": "g1",
            "userId": "u",
            "traits": {"name": "Acme"},
            "context": {"traits": {"email": "a@b.c"}},
        }
    )
    assert (event.group_id, event.traits, event.group_traits) == (
        "g1",
        {"email": "a@b.c"},
        {"name": "Acme"},
    )
