"""Segment event -> Knock ops, and traits -> Knock recipient properties.

What each message type becomes:

* ``identify`` -> one :class:`~consumer.ops.Identify`, even when it has no traits at all:
  an identify means "this user exists", and an empty upsert creates the user in Knock.
* ``track`` / ``page`` / ``screen`` -> an ``Identify`` from ``context.traits`` when there are
  traits (note ``no_traits`` otherwise); the event itself is not sent anywhere.
* ``alias`` -> :class:`~consumer.ops.Merge` of ``previousId`` into ``userId``; both required.
* ``group`` -> an ``Identify`` from its ``context.traits`` if any. The group itself (``groupId``,
  its own traits) is not mapped here: every group gets the note ``ignored_type``, which
  :mod:`consumer.actions` takes back when ``groups.mode`` maps it to a tenant or an object.

Traits -> properties (:meth:`Mapper.props`): each Knock reserved field reads the first of its
source traits that is *present* (a ``null`` is sent and overwrites); every other trait is a
custom property under its own (or its ``rename``) name, value unchanged. Further rules:

* Source traits of an active reserved field are never also custom properties, except the
  first/last name parts, which always are. A trait named ``id`` is never sent: Segment copies
  ``userId`` there and ``id`` is the Knock user id. A reserved value wins over a custom
  property of the same name.
* ``name``, when none of its sources is present: ``firstName + " " + lastName`` (or
  ``first_name``/``last_name``) when both parts are non-empty strings.
* ``phone_number``: E.164 via ``phonenumbers`` and the default region; unusable -> not sent,
  note ``invalid_phone``.
* ``created_at``: converted to UTC, ``datetime.isoformat()`` (``2024-01-02T03:04:05+00:00``);
  ISO strings in any offset or epoch seconds/milliseconds; unusable -> not sent, note
  ``invalid_created_at``.
* A trait named (or renamed) ``channel_data`` or ``preferences`` is not sent: Knock reads those
  names as channel data and preference sets, not properties (note ``structured_trait``).
* ``locale`` / ``timezone`` fall back to ``context.locale`` / ``context.timezone`` (non-empty
  strings only) when no trait source is present.

Notes are stable tags the caller counts and logs; they never stop the rest of the event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC
from functools import lru_cache
from typing import Any

import phonenumbers

from .config import MappingSettings
from .errors import InvalidEvent
from .events import Event, parse_timestamp
from .limits import MAX_USER_ID_LENGTH
from .ops import Identify, Merge, Op

_NAME_PARTS = (("firstName", "lastName"), ("first_name", "last_name"))
_ALWAYS_CUSTOM = frozenset(k for pair in _NAME_PARTS for k in pair)
_CONTEXT_FALLBACK = frozenset({"locale", "timezone"})
_USER_UPDATE_TYPES = frozenset({"track", "page", "screen", "group"})
#: Names Knock's identify body reserves for structures that are not user properties (channel
#: data per channel id, preference sets per set id): a trait of that name would be read as one
#: and refused (422) unless it happened to have its shape, and then it would change the user's
#: channels or preferences. Such a trait is not sent (note ``structured_trait``); rename it to
#: keep it as a property.
NOT_PROPERTIES = ("channel_data", "preferences")
_FALLBACK_CONTEXT, _FALLBACK_NAME = 1, 2


@dataclass(slots=True)
class Mapped:
    """The outcome of mapping one event: the ops to apply, in order, and notes (stable tags
    such as ``no_user_id`` or ``invalid_phone``) about what was skipped or unusable."""

    ops: list[Op] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_user_id(user_id: str) -> None:
    """Refuse an id Knock would reject.

    :raises InvalidEvent: ``kind="forbidden_user_id"`` when ``user_id`` is empty, contains
        ``/`` or ``#``, or is longer than :data:`MAX_USER_ID_LENGTH` characters.
    """
    if not user_id:
        raise InvalidEvent("forbidden_user_id", "user id is empty")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise InvalidEvent(
            "forbidden_user_id",
            f"user id is {len(user_id)} characters long, Knock allows {MAX_USER_ID_LENGTH}",
        )
    if "/" in user_id or "#" in user_id:
        raise InvalidEvent("forbidden_user_id", f"user id {user_id[:80]!r} contains '/' or '#'")


# Unless told to keep them (its own switch, process-wide), phonenumbers compiles every metadata
# pattern it uses again on each parse, through the re module's cache: a fifth of a new number's
# parse (median 53.5 against 42.1 µs on the benchmark's numbers, 16 rounds alternated). The
# patterns come from its fixed metadata, so they are bounded.
phonenumbers.enable_pattern_cache()


@lru_cache(maxsize=65_536, typed=True)
def normalize_phone(raw: str | int, region: str) -> str | None:
    """``raw`` in E.164 (``+14155550100``), or ``None`` when it is not a valid number.

    Numbers without a country code are read in ``region``. An int cannot carry a ``+``, so
    one that is invalid in ``region`` is tried once more as an international number.
    Cached: parsing is slow and the same numbers come back with every identify.
    """
    candidates = [str(raw)]
    if type(raw) is int:
        candidates.append(f"+{raw}")
    for text in candidates:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def normalize_created_at(value: object) -> str | None:
    """``value`` (ISO-8601 string or epoch seconds/milliseconds) as a UTC ISO-8601 string,
    or ``None`` when it is not a usable date."""
    if value.__class__ is str:
        return _created_at_text(value)
    if isinstance(value, bool):
        return None
    parsed = parse_timestamp(value)
    return None if parsed is None else parsed.astimezone(UTC).isoformat()


@lru_cache(maxsize=65_536)
def _created_at_text(value: str) -> str | None:
    # Cached: a user's creation date comes back with every identify that carries it, and
    # parsing and formatting it costs several times the lookup.
    parsed = parse_timestamp(value)
    return None if parsed is None else parsed.astimezone(UTC).isoformat()


class Mapper:
    """Maps events with one :class:`~consumer.config.MappingSettings`; stateless per event."""

    def __init__(self, settings: MappingSettings) -> None:
        self.settings = settings
        self._region = settings.default_region
        self._fields = [(f, tuple(keys)) for f, keys in settings.field_sources().items() if keys]
        self._consumed = frozenset(k for _, keys in self._fields for k in keys) - _ALWAYS_CUSTOM
        self._drop = frozenset(settings.drop)
        self._rename = dict(settings.rename)
        self._anonymous = settings.anonymous == "anonymous_id"
        self._prefix = settings.anonymous_prefix
        # The per-event walk, prepared once: each active field with its sources minus the
        # dropped ones (a dropped source is skipped, as if absent), and what to do when none is
        # present. ``_reserved`` only for the fields that convert their value.
        self._plan: list[tuple[str, tuple[str, ...], bool, int]] = [
            (
                fname,
                tuple(k for k in keys if k not in self._drop),
                fname in ("phone_number", "created_at"),
                _FALLBACK_CONTEXT
                if fname in _CONTEXT_FALLBACK
                else _FALLBACK_NAME
                if fname == "name"
                else 0,
            )
            for fname, keys in self._fields
        ]
        # Keys never copied as custom properties; with no rename this is all the copy loop needs.
        self._skip = self._consumed | self._drop | {"id"}
        # The same keys as a tuple, for the copy without rename (see props).
        self._skip_keys = tuple(sorted(self._skip))
        self._name_parts = [
            (first, last)
            for first, last in _NAME_PARTS
            if first not in self._drop and last not in self._drop
        ]

    def map(self, event: Event) -> Mapped:
        """The ops for one event.

        :raises InvalidEvent: ``forbidden_user_id`` (see :func:`check_user_id`) for a user id
            that would be used; ``invalid_event`` for an alias without both ids.
        """
        out = Mapped([], [])  # explicit lists: the dataclass' default factories cost more
        kind = event.type
        if kind == "identify":
            # _user_id inline for an event with a userId (one call fewer an event; the rule
            # itself stays in check_user_id).
            user_id = event.user_id
            if user_id is None:
                user_id = self._user_id(event, out)
            else:
                check_user_id(user_id)
            if user_id is not None:
                props = self.props(event.traits, event.context, out.notes)
                out.ops.append(Identify(user_id, props))
        elif kind == "alias":
            self._alias(event, out)
        elif kind in _USER_UPDATE_TYPES:
            if kind == "group":
                out.notes.append("ignored_type")
            # Traits first: an event with nothing to apply is not worth failing on its id.
            props = self.props(event.traits, event.context, out.notes) if event.traits else {}
            if not props:
                out.notes.append("no_traits")
            else:
                user_id = event.user_id  # as for an identify, above
                if user_id is None:
                    user_id = self._user_id(event, out)
                else:
                    check_user_id(user_id)
                if user_id is not None:
                    out.ops.append(Identify(user_id, props))
        else:
            out.notes.append("ignored_type")
        return out

    def _user_id(self, event: Event, out: Mapped) -> str | None:
        user_id = event.user_id
        if user_id is None and self._anonymous and event.anonymous_id is not None:
            user_id = self._prefix + event.anonymous_id
        if user_id is None:
            out.notes.append("no_user_id")
            return None
        check_user_id(user_id)
        return user_id

    def _alias(self, event: Event, out: Mapped) -> None:
        user_id, previous_id = event.user_id, event.previous_id
        if user_id is None or previous_id is None:
            missing = "userId" if user_id is None else "previousId"
            raise InvalidEvent("invalid_event", f"alias: {missing} missing")
        if self._anonymous and previous_id == event.anonymous_id:
            # The anonymous user was created under the prefixed id: merge that one.
            previous_id = self._prefix + previous_id
        check_user_id(user_id)
        check_user_id(previous_id)
        if previous_id == user_id:
            out.notes.append("self_alias")
            return
        out.ops.append(
            Merge(user_id=user_id, from_user_id=previous_id, message_id=event.message_id)
        )

    def props(
        self, traits: dict[str, Any], context: dict[str, Any], notes: list[str]
    ) -> dict[str, Any]:
        """Knock user properties (reserved and custom, no ``id``) from ``traits``.

        :param context: the message's ``context``, for the ``locale``/``timezone`` fallback.
        :param notes: receives ``invalid_phone`` / ``invalid_created_at``.
        """
        if self._rename:
            drop, rename, consumed = self._drop, self._rename, self._consumed
            props: dict[str, Any] = {}
            for key, value in traits.items():
                if key in consumed or key in drop:
                    continue
                name = rename.get(key, key)
                if name != "id":
                    props[name] = value
        else:
            # A copy of every trait, then the few skipped keys deleted: the copy is one C call
            # and the deletions are one test per skipped key (about a dozen), where a
            # comprehension tested each trait (an identify has 10 to 30): half the time on the
            # benchmark's identifies (bench/path.py). The order is the comprehension's: what is
            # left keeps its place, and the reserved fields below come after it.
            props = traits.copy()
            for key in self._skip_keys:
                if key in props:
                    del props[key]
        for fname, keys, converts, fallback in self._plan:
            for key in keys:
                if key in traits:
                    if converts:
                        self._reserved(props, fname, traits[key], notes)
                    else:
                        props[fname] = traits[key]
                    break
            else:
                if fallback == _FALLBACK_CONTEXT:
                    value = context.get(fname)
                    if type(value) is str and value:
                        props[fname] = value
                elif fallback == _FALLBACK_NAME:
                    self._derive_name(props, traits)
        for name in NOT_PROPERTIES:
            if name in props:
                del props[name]
                notes.append("structured_trait")
        return props

    def _reserved(self, props: dict[str, Any], fname: str, value: Any, notes: list[str]) -> None:
        if value is None:
            props[fname] = None
        elif fname == "phone_number":
            cls = type(value)
            phone = normalize_phone(value, self._region) if cls is str or cls is int else None
            if phone is None:
                props.pop(fname, None)  # nor as a same-named custom property
                notes.append("invalid_phone")
            else:
                props[fname] = phone
        elif fname == "created_at":
            created = normalize_created_at(value)
            if created is None:
                props.pop(fname, None)
                notes.append("invalid_created_at")
            else:
                props[fname] = created
        else:
            props[fname] = value

    def _derive_name(self, props: dict[str, Any], traits: dict[str, Any]) -> None:
        for first_key, last_key in self._name_parts:
            first, last = traits.get(first_key), traits.get(last_key)
            if type(first) is str and type(last) is str:
                first, last = first.strip(), last.strip()
                if first and last:
                    props["name"] = f"{first} {last}"
                    return
