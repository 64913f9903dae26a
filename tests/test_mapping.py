"""The default mapping table row by row, its settings, and the per-type event -> ops rules."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.config import MappingSettings
from consumer.errors import InvalidEvent
from consumer.events import parse_event
from consumer.limits import MAX_USER_ID_LENGTH
from consumer.mapping import Mapped, Mapper, check_user_id, normalize_phone
from consumer.ops import Identify, Merge


def run(msg: dict[str, Any], **settings: Any) -> Mapped:
    return Mapper(MappingSettings(**settings)).map(parse_event(msg))


def identify(
    traits: dict[str, Any] | None, context: dict[str, Any] | None = None, **settings: Any
) -> Mapped:
    return run(
        {"type": "identify", "userId": "u1", "traits": traits, "context": context}, **settings
    )


def props(
    traits: dict[str, Any], context: dict[str, Any] | None = None, **settings: Any
) -> dict[str, Any]:
    mapped = identify(traits, context, **settings)
    assert len(mapped.ops) == 1 and isinstance(mapped.ops[0], Identify)
    return mapped.ops[0].props


# -- the table ------------------------------------------------------------------------------


def test_every_row() -> None:
    mapped = identify(
        {
            "email": "j@x.io",
            "name": "Jane D",
            "phone": "(415) 555-0132",
            "avatar": "https://a/b.png",
            "createdAt": "2020-01-15T10:00:00Z",
            "locale": "fr-FR",
            "timezone": "Europe/Paris",
            "plan": "pro",
            "company": {"name": "Acme", "id": 4},
        },
    )
    assert mapped == Mapped(
        ops=[
            Identify(
                "u1",
                {
                    "email": "j@x.io",
                    "name": "Jane D",
                    "phone_number": "+14155550132",
                    "avatar": "https://a/b.png",
                    "created_at": "2020-01-15T10:00:00+00:00",
                    "locale": "fr-FR",
                    "timezone": "Europe/Paris",
                    "plan": "pro",
                    "company": {"name": "Acme", "id": 4},
                },
            )
        ],
        notes=[],
    )


@pytest.mark.parametrize(
    ("traits", "expected"),
    [
        ({"phone_number": "4155550132"}, {"phone_number": "+14155550132"}),
        ({"phoneNumber": "4155550132"}, {"phone_number": "+14155550132"}),
        ({"phone": "4155550132", "phone_number": "junk"}, {"phone_number": "+14155550132"}),
        ({"created_at": "2020-01-15"}, {"created_at": "2020-01-15T00:00:00+00:00"}),
    ],
)
def test_fallback_sources(traits: dict[str, Any], expected: dict[str, Any]) -> None:
    assert props(traits) == expected


def test_first_present_source_wins_even_when_null() -> None:
    assert props({"phone": None, "phone_number": "4155550132"}) == {"phone_number": None}


@pytest.mark.parametrize("field", ["email", "name", "avatar", "locale", "timezone"])
def test_null_reserved_overwrites(field: str) -> None:
    expected = {"locale": "en-US", "timezone": "UTC", field: None}
    assert props({field: None}, {"locale": "en-US", "timezone": "UTC"}) == expected


def test_null_phone_and_created_at_overwrite() -> None:
    assert props({"phone": None, "createdAt": None}) == {"phone_number": None, "created_at": None}


def test_null_custom_property_overwrites() -> None:
    assert props({"plan": None}) == {"plan": None}


@pytest.mark.parametrize(
    ("first", "last"), [("firstName", "lastName"), ("first_name", "last_name")]
)
def test_name_from_first_and_last(first: str, last: str) -> None:
    assert props({first: " Jane ", last: "Doe"}) == {
        "name": "Jane Doe",
        first: " Jane ",
        last: "Doe",
    }


def test_name_not_derived_from_one_part_or_empty_or_null() -> None:
    assert props({"firstName": "Jane"}) == {"firstName": "Jane"}
    assert props({"firstName": "Jane", "lastName": ""}) == {"firstName": "Jane", "lastName": ""}
    assert props({"firstName": "Jane", "lastName": None}) == {"firstName": "Jane", "lastName": None}


def test_name_trait_wins_over_parts_even_null() -> None:
    assert props({"name": "J", "firstName": "Jane", "lastName": "Doe"}) == {
        "name": "J",
        "firstName": "Jane",
        "lastName": "Doe",
    }
    assert props({"name": None, "firstName": "Jane", "lastName": "Doe"}) == {
        "name": None,
        "firstName": "Jane",
        "lastName": "Doe",
    }


# -- phone ----------------------------------------------------------------------------------


def test_invalid_phone_is_noted_and_rest_applies() -> None:
    assert identify({"phone": "12345", "email": "j@x.io"}) == Mapped(
        ops=[Identify("u1", {"email": "j@x.io"})],
        notes=["invalid_phone"],
    )


@pytest.mark.parametrize("value", ["", "not a phone", True, 4155.5, {"n": 1}, ["4155550132"]])
def test_unusable_phone_values(value: Any) -> None:
    assert identify({"phone": value}) == Mapped(ops=[Identify("u1", {})], notes=["invalid_phone"])


def test_phone_as_int() -> None:
    assert props({"phone": 4155550132}) == {"phone_number": "+14155550132"}
    assert props({"phone": 14155550132}) == {"phone_number": "+14155550132"}
    # No '+' possible in an int: an international number is tried when the region fails.
    assert props({"phone": 442079460958}) == {"phone_number": "+442079460958"}


def test_plus_44_number_in_us_region() -> None:
    assert props({"phone": "+44 20 7946 0958"}) == {"phone_number": "+442079460958"}


def test_default_region_change() -> None:
    assert identify({"phone": "07911 123456"}).notes == ["invalid_phone"]
    assert props({"phone": "07911 123456"}, default_region="gb") == {
        "phone_number": "+447911123456",
    }
    assert props({"phone": "+1 415 555 0132"}, default_region="GB") == {
        "phone_number": "+14155550132",
    }


def test_phone_cache_keeps_int_and_str_apart() -> None:
    assert normalize_phone("4155550132", "US") == normalize_phone(4155550132, "US")
    assert normalize_phone(4155550132, "US") == "+14155550132"


# -- created_at -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2020-01-15T10:00:00Z", "2020-01-15T10:00:00+00:00"),
        ("2020-01-15T15:30:00+05:30", "2020-01-15T10:00:00+00:00"),
        ("2020-01-15T10:00:00.250-02:00", "2020-01-15T12:00:00.250000+00:00"),
        ("2020-01-15T10:00:00", "2020-01-15T10:00:00+00:00"),
        (1579082400, "2020-01-15T10:00:00+00:00"),
        (1579082400000, "2020-01-15T10:00:00+00:00"),
        (1579082400.5, "2020-01-15T10:00:00.500000+00:00"),
    ],
)
def test_created_at_forms(value: Any, expected: str) -> None:
    assert props({"createdAt": value}) == {"created_at": expected}


@pytest.mark.parametrize("value", ["last week", "", True, {"d": 1}, 10**30])
def test_invalid_created_at(value: Any) -> None:
    assert identify({"createdAt": value, "plan": "x"}) == Mapped(
        ops=[Identify("u1", {"plan": "x"})],
        notes=["invalid_created_at"],
    )


# -- locale / timezone ----------------------------------------------------------------------


def test_context_locale_timezone_fallback() -> None:
    ctx = {"locale": "en-US", "timezone": "America/New_York"}
    assert props({}, ctx) == {"locale": "en-US", "timezone": "America/New_York"}
    assert props({"locale": "de-DE"}, ctx) == {"locale": "de-DE", "timezone": "America/New_York"}
    assert props({"locale": None}, ctx) == {"locale": None, "timezone": "America/New_York"}
    assert props({}, {"locale": "", "timezone": 3}) == {}


# -- settings -------------------------------------------------------------------------------


def test_rename_and_drop() -> None:
    assert props(
        {"plan": "pro", "ssn": "x", "email": "j@x.io", "firstName": "J", "lastName": "D"},
        rename={"plan": "tier", "firstName": "given"},
        drop=["ssn", "email", "lastName"],
    ) == {"tier": "pro", "given": "J"}


def test_dropped_source_falls_through_to_next() -> None:
    assert props({"phone": "junk", "phone_number": "4155550132"}, drop=["phone"]) == {
        "phone_number": "+14155550132",
    }


def test_field_override() -> None:
    assert props({"work_email": "w@x.io", "email": "p@x.io"}, fields={"email": ["work_email"]}) == {
        "email": "w@x.io",
    }
    assert props({"mail": "m@x.io"}, fields={"email": ["work_email", "mail"]}) == {
        "email": "m@x.io",
    }


def test_field_disabled_keeps_traits_custom() -> None:
    off = {"phone_number": [], "created_at": []}
    assert props({"phone": "12345", "createdAt": "x"}, fields=off) == {
        "phone": "12345",
        "createdAt": "x",
    }
    assert props({"locale": "fr"}, {"locale": "en-US"}, fields={"locale": []}) == {"locale": "fr"}
    assert props({"firstName": "J", "lastName": "D"}, fields={"name": []}) == {
        "firstName": "J",
        "lastName": "D",
    }


def test_trait_id_is_never_sent() -> None:
    assert props({"id": "u1", "plan": "x"}) == {"plan": "x"}


# -- user ids -------------------------------------------------------------------------------


def test_no_user_id_skipped_by_default() -> None:
    msg = {"type": "identify", "anonymousId": "a1", "traits": {"plan": "x"}}
    assert run(msg) == Mapped(ops=[], notes=["no_user_id"])


def test_anonymous_id_mode() -> None:
    msg = {"type": "identify", "anonymousId": "a1", "traits": {"plan": "x"}}
    assert run(msg, anonymous="anonymous_id", anonymous_prefix="anon_") == Mapped(
        ops=[Identify("anon_a1", {"plan": "x"})],
        notes=[],
    )
    assert run({"type": "identify", "traits": {}}, anonymous="anonymous_id") == Mapped(
        ops=[],
        notes=["no_user_id"],
    )


def test_user_id_wins_over_anonymous_id() -> None:
    msg = {"type": "identify", "userId": "u1", "anonymousId": "a1"}
    assert run(msg, anonymous="anonymous_id").ops == [Identify("u1", {})]


def test_check_user_id_limits() -> None:
    check_user_id("x" * 256)
    for bad in ["x" * 257, "a/b", "a#b", ""]:
        with pytest.raises(InvalidEvent) as info:
            check_user_id(bad)
        assert info.value.kind == "forbidden_user_id"


def test_user_id_of_256_chars_accepted() -> None:
    assert run({"type": "identify", "userId": "x" * 256}).ops == [Identify("x" * 256, {})]


@pytest.mark.parametrize("user_id", ["x" * 257, "team/1", "#1"])
def test_forbidden_user_id_raises(user_id: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        run({"type": "identify", "userId": user_id})
    assert info.value.kind == "forbidden_user_id"


def test_forbidden_prefixed_anonymous_id_raises() -> None:
    with pytest.raises(InvalidEvent):
        run(
            {"type": "identify", "anonymousId": "a"},
            anonymous="anonymous_id",
            anonymous_prefix="anon/",
        )


# -- per type -------------------------------------------------------------------------------


def test_identify_without_traits_still_upserts() -> None:
    assert run({"type": "identify", "userId": 7}) == Mapped(ops=[Identify("7", {})], notes=[])


def test_rudderstack_identify_with_context_traits_only() -> None:
    msg = {
        "type": "identify",
        "userId": "u1",
        "context": {
            "traits": {"email": "j@x.io", "firstName": "J", "lastName": "D"},
            "locale": "en-GB",
        },
    }
    assert run(msg).ops == [
        Identify(
            "u1",
            {
                "email": "j@x.io",
                "name": "J D",
                "firstName": "J",
                "lastName": "D",
                "locale": "en-GB",
            },
        )
    ]


def test_identify_traits_win_over_context_traits() -> None:
    msg = {
        "type": "identify",
        "userId": "u1",
        "traits": {"email": "new@x.io"},
        "context": {"traits": {"email": "old@x.io", "plan": "x"}},
    }
    assert run(msg).ops == [Identify("u1", {"email": "new@x.io", "plan": "x"})]


@pytest.mark.parametrize("kind", ["track", "page", "screen"])
def test_track_page_screen_with_context_traits(kind: str) -> None:
    msg = {
        "type": kind,
        "event": "E",
        "userId": "u1",
        "properties": {"a": 1},
        "context": {"traits": {"email": "j@x.io"}, "timezone": "UTC"},
    }
    assert run(msg) == Mapped(
        ops=[Identify("u1", {"email": "j@x.io", "timezone": "UTC"})], notes=[]
    )


@pytest.mark.parametrize(
    "context", [None, {"locale": "en-US"}, {"traits": {}}, {"traits": {"id": 1}}]
)
def test_track_without_traits(context: dict[str, Any] | None) -> None:
    msg = {"type": "track", "event": "E", "userId": "u1", "context": context}
    assert run(msg) == Mapped(ops=[], notes=["no_traits"])


def test_track_without_traits_does_not_check_the_id() -> None:
    assert run({"type": "track", "userId": "a/b"}).notes == ["no_traits"]


def test_track_with_traits_but_no_user_id() -> None:
    msg = {"type": "track", "anonymousId": "a", "context": {"traits": {"plan": "x"}}}
    assert run(msg) == Mapped(ops=[], notes=["no_user_id"])


def test_group() -> None:
    msg = {
        "type": "group",
        "groupId": "g1",
        "userId": "u1",
        "traits": {"name": "Acme"},
        "context": {"traits": {"plan": "x"}},
    }
    assert run(msg) == Mapped(ops=[Identify("u1", {"plan": "x"})], notes=["ignored_type"])
    assert run({"type": "group", "groupId": "g1", "userId": "u1", "traits": {"name": "Acme"}}) == (
        Mapped(ops=[], notes=["ignored_type", "no_traits"])
    )


def test_alias() -> None:
    assert run({"type": "alias", "previousId": "anon-1", "userId": "u1"}) == Mapped(
        ops=[Merge(user_id="u1", from_user_id="anon-1")],
        notes=[],
    )
    assert run({"type": "alias", "from": 12, "to": "u1"}).ops == [Merge("u1", "12")]


def test_self_alias() -> None:
    assert run({"type": "alias", "previousId": "u1", "userId": "u1"}) == Mapped(
        ops=[],
        notes=["self_alias"],
    )


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        ({"type": "alias", "previousId": "p"}, "alias: userId missing"),
        ({"type": "alias", "userId": "u", "previousId": ""}, "alias: previousId missing"),
    ],
)
def test_alias_needs_both_ids(msg: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        run(msg)
    assert (info.value.kind, info.value.reason) == ("invalid_event", reason)


@pytest.mark.parametrize(
    "msg",
    [
        {"type": "alias", "previousId": "a/b", "userId": "u"},
        {"type": "alias", "previousId": "p", "userId": "x" * 257},
    ],
)
def test_alias_forbidden_ids(msg: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent) as info:
        run(msg)
    assert info.value.kind == "forbidden_user_id"


def test_alias_of_anonymous_user_uses_prefix() -> None:
    msg = {"type": "alias", "previousId": "a1", "anonymousId": "a1", "userId": "u1"}
    assert run(msg, anonymous="anonymous_id", anonymous_prefix="anon_").ops == [
        Merge("u1", "anon_a1"),
    ]
    assert run(msg).ops == [Merge("u1", "a1")]


# -- the hand-tuned pieces give what the plain rules give -----------------------------------


def _props_by_the_rules(mapper: Mapper, traits: dict[str, Any]) -> dict[str, Any]:
    """The custom properties as the rules state them (and as a comprehension built them before
    the copy-and-delete of ``Mapper.props``): every trait in its order, minus the sources of
    active reserved fields (but the name parts), the dropped ones and ``id``; renamed."""
    skip = mapper._consumed | mapper._drop
    out: dict[str, Any] = {}
    for key, value in traits.items():
        name = mapper._rename.get(key, key)
        if key not in skip and name != "id":
            out[name] = value
    return out


_TRAIT_KEYS = [
    "email",
    "name",
    "firstName",
    "lastName",
    "first_name",
    "last_name",
    "phone",
    "phone_number",
    "phoneNumber",
    "avatar",
    "createdAt",
    "created_at",
    "locale",
    "timezone",
    "id",
    "plan",
    "seats",
    "company",
    "ssn",
    "mail",
]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"drop": ["ssn", "phone"]},
        {"fields": {"email": ["mail"], "phone_number": []}},
        {"rename": {"plan": "tier", "seats": "id"}, "drop": ["ssn"]},
    ],
)
def test_props_keep_every_custom_trait_in_its_order_then_the_reserved_fields(
    settings: dict[str, Any],
) -> None:
    import random

    rng = random.Random(27)
    mapper = Mapper(MappingSettings(**settings))
    values: list[Any] = ["Ada", "", None, 7, 1.5, True, {"a": 1}, ["x"], "4155550132"]
    for _ in range(2_000):
        keys = rng.sample(_TRAIT_KEYS, rng.randint(0, len(_TRAIT_KEYS)))
        traits = {k: rng.choice(values) for k in keys}
        notes: list[str] = []
        got = mapper.props(traits, {"locale": "de-DE"}, notes)
        custom = _props_by_the_rules(mapper, traits)
        reserved = {k: v for k, v in got.items() if k not in custom}
        # The custom properties first, in the traits' order (a reserved value may replace
        # a same-named one in place), then the reserved fields.
        assert list(got)[: len(custom)] == list(custom)
        assert {k: got[k] for k in custom if k not in mapper.settings.field_sources()} == {
            k: v for k, v in custom.items() if k not in mapper.settings.field_sources()
        }
        assert set(reserved) <= set(mapper.settings.field_sources())


@pytest.mark.parametrize(
    "user_id",
    ["u1", "", "a/b", "a#b", "x" * MAX_USER_ID_LENGTH, "x" * (MAX_USER_ID_LENGTH + 1), "ü"],
)
def test_an_event_s_user_id_goes_through_check_user_id(user_id: str) -> None:
    # Mapper.map reads the user id inline (not through Mapper._user_id): the same rule.
    event = parse_event({"type": "identify", "userId": "placeholder", "traits": {"plan": "x"}})
    event.user_id = user_id
    try:
        check_user_id(user_id)
        expected: Any = Mapped([Identify(user_id, {"plan": "x"})], [])
    except InvalidEvent as exc:
        expected = (exc.kind, exc.reason)
    if user_id == "":
        expected = Mapped([], ["no_user_id"])  # an empty id is no id (as parse_event reads it)
        event.user_id = None
    mapper = Mapper(MappingSettings())
    try:
        got: Any = mapper.map(event)
    except InvalidEvent as exc:
        got = (exc.kind, exc.reason)
    assert got == expected


def test_the_phone_cache_gives_what_phonenumbers_gives() -> None:
    import phonenumbers

    def by_the_library(raw: str | int, region: str) -> str | None:
        for text in [str(raw), *([f"+{raw}"] if type(raw) is int else [])]:
            try:
                number = phonenumbers.parse(text, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        return None

    areas = [212, 310, 415, 512, 617, 646, 206, 303, 404, 312]
    raws: list[str | int] = [f"({areas[n % 10]}) {200 + n % 700:03d}-{n:04d}" for n in range(300)]
    raws += ["+44 7911 123456", "07911 123456", "4155550132", 4155550132, 14155550132, 0, "x"]
    raws += ["+1 (415) 555-0132 ext. 9", "1-800-FLOWERS", "+49 30 123456", "", "+", "00"]
    normalize_phone.cache_clear()
    for region in ("US", "GB", "DE"):
        for _ in range(2):  # the second pass answers from the cache
            for raw in raws:
                assert normalize_phone(raw, region) == by_the_library(raw, region), (raw, region)
    assert normalize_phone.cache_info().hits >= len(raws) * 3


def test_traits_named_as_knock_structures_are_not_sent() -> None:
    """A trait ``preferences`` or ``channel_data`` would be read by Knock as preference sets or
    channel data (a 422 unless it has their shape): left out with a note, kept when renamed."""
    from consumer.config import MappingSettings
    from consumer.mapping import Mapper

    traits = {
        "email": "a@b.co",
        "preferences": {"newsletter": True},
        "channel_data": 1,
        "plan": "x",
    }
    notes: list[str] = []
    props = Mapper(MappingSettings()).props(dict(traits), {}, notes)
    assert props == {"email": "a@b.co", "plan": "x"}
    assert notes == ["structured_trait", "structured_trait"]

    notes = []
    renamed = Mapper(MappingSettings(rename={"preferences": "prefs", "plan": "preferences"}))
    props = renamed.props(dict(traits), {}, notes)
    assert props == {"email": "a@b.co", "prefs": {"newsletter": True}}
    assert notes == ["structured_trait", "structured_trait"]
