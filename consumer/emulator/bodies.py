"""Knock's request bodies as pydantic types, and the 422 that a body Knock's schema forbids gets.

Each type follows the request schema of Knock's OpenAPI description (named in its docstring or
beside it), read with JSON Schema's meaning: a key that is absent is not a key that is
``null``, so ``NotRequired[X]`` is "may be left out, never null" and ``NotRequired[X | None]``
"may be left out or null". Undeclared keys are free (custom properties), as the spec says.

Where the emulator departs from the letter of the spec, it is because Knock itself must, and
the reason is beside the type:

* ids follow Knock's id rules (:func:`.models.check_id`), where the spec says "string";
* a ``oneOf`` whose branches overlap is told apart as Knock does: a recipient with a
  ``collection`` is an object (it is also a valid inline user); channel data is accepted when
  any shape fits (any ``connections`` list fits Slack, Teams and Discord alike; Knock picks
  the shape from the channel's provider, which the emulator does not know);
* ``oneOf``/``anyOf [X, {nullable: true}]`` is read as "X or null", as meant: taken
  literally, a bare ``{nullable: true}`` admits any value;
* the tenant branding URLs, plain strings in the request schema, are URIs, as in the
  ``Tenant`` Knock answers with.

Bodies are only validated here; the routes keep working on the JSON they received, so what
is stored is exactly what was sent.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired

from pydantic import AfterValidator, Discriminator, Field, Tag, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from .models import MAX_BULK_ITEMS, MAX_ID_LENGTH, KnockHTTPError

# -- scalar formats ---------------------------------------------------------------------------


def _id(value: str) -> str:
    # The rules of models.check_id, with pydantic's error types.
    if not value:
        raise PydanticCustomError("required", "must be a non-empty string")
    if len(value) > MAX_ID_LENGTH or "/" in value or "#" in value:
        raise PydanticCustomError(
            "invalid", "must be at most 256 characters and contain no '/' or '#'"
        )
    return value


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")
_UUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")


def _date_time(value: str) -> str:
    # ``format: date-time`` is RFC 3339: a date alone, or a time without an offset, is not one.
    if _RFC3339.fullmatch(value):
        try:
            datetime.fromisoformat(value.upper())
            return value
        except ValueError:
            pass
    raise PydanticCustomError("invalid", "must be an RFC 3339 date-time")


def _uuid(value: str) -> str:
    if not _UUID.fullmatch(value):
        raise PydanticCustomError("invalid", "must be a UUID")
    return value


def _uri(value: str) -> str:
    if not _URI.fullmatch(value):
        raise PydanticCustomError("invalid", "must be an absolute URI")
    return value


Id = Annotated[str, AfterValidator(_id)]
DateTime = Annotated[str, AfterValidator(_date_time)]
Uuid = Annotated[str, AfterValidator(_uuid)]
Uri = Annotated[str, AfterValidator(_uri)]
Json = dict[str, Any]

# -- preferences (PreferenceSetRequest and what it holds) --------------------------------------

Operator = Literal[
    "equal_to",
    "not_equal_to",
    "greater_than",
    "less_than",
    "greater_than_or_equal_to",
    "less_than_or_equal_to",
    "contains",
    "not_contains",
    "empty",
    "not_empty",
    "exists",
    "not_exists",
    "contains_all",
    "not_contains_all",
    "is_timestamp",
    "is_not_timestamp",
    "is_timestamp_on_or_after",
    "is_timestamp_before",
    "is_timestamp_on_or_after_date",
    "is_timestamp_before_date",
    "is_timestamp_between",
    "is_between",
    "is_audience_member",
    "is_not_audience_member",
]


class Condition(TypedDict):
    variable: str
    operator: Operator
    argument: str | None


class Conditions(TypedDict):
    """``PreferenceSetChannelTypeSetting``, ``PreferenceSetChannelSetting`` and
    ``PreferenceSetCommercialSubscribedSetting`` (one shape)."""

    conditions: list[Condition]


Setting = bool | Conditions


class ChannelTypes(TypedDict):
    chat: NotRequired[Setting]
    email: NotRequired[Setting]
    http: NotRequired[Setting]
    in_app_feed: NotRequired[Setting]
    push: NotRequired[Setting]
    sms: NotRequired[Setting]


Channels = dict[str, Setting]


class WorkflowSetting(TypedDict):
    channel_types: NotRequired[ChannelTypes | None]
    channels: NotRequired[Channels | None]
    conditions: NotRequired[list[Condition] | None]


# The spec's ``PreferenceSetWorkflowCategorySetting`` is ``oneOf [boolean, object]`` under a
# ``type: object`` that no boolean passes; ``PreferenceSetRequest``'s own example has
# ``"marketing": false`` among its categories.
WorkflowCategory = bool | WorkflowSetting


class PreferenceSet(TypedDict):
    __persistence_strategy__: NotRequired[Literal["merge", "replace"]]
    categories: NotRequired[dict[str, WorkflowCategory] | None]
    channel_types: NotRequired[ChannelTypes | None]
    channels: NotRequired[Channels | None]
    commercial_subscribed: NotRequired[Setting | None]
    workflows: NotRequired[dict[str, WorkflowCategory] | None]


#: ``InlinePreferenceSetRequest``: preference sets by id.
Preferences = dict[str, PreferenceSet]

# -- channel data (InlineChannelDataRequest) ---------------------------------------------------


class PushTokens(TypedDict):
    tokens: list[str]


class _PushDevice(TypedDict):
    token: str
    locale: NotRequired[str | None]
    timezone: NotRequired[str | None]


class PushDevices(TypedDict):
    devices: list[_PushDevice]


class SnsTargets(TypedDict):
    target_arns: list[str]


class _SnsDevice(TypedDict):
    target_arn: str
    locale: NotRequired[str | None]
    timezone: NotRequired[str | None]


class SnsDevices(TypedDict):
    devices: list[_SnsDevice]


class OneSignal(TypedDict):
    player_ids: list[Uuid]


class _Url(TypedDict):
    url: str


class _Webhook(TypedDict):
    incoming_webhook: _Url


class _SlackToken(TypedDict):
    access_token: NotRequired[str | None]
    channel_id: NotRequired[str | None]
    channel_name: NotRequired[str | None]
    user_id: NotRequired[str | None]


class _SlackAccess(TypedDict):
    access_token: str | None


class Slack(TypedDict):
    connections: list[_SlackToken | _Webhook]
    token: NotRequired[_SlackAccess | None]


class _TeamsToken(TypedDict):
    ms_teams_channel_id: NotRequired[Uuid | None]
    ms_teams_team_id: NotRequired[Uuid | None]
    ms_teams_tenant_id: NotRequired[Uuid | None]
    ms_teams_user_id: NotRequired[Uuid | None]


class Teams(TypedDict):
    connections: list[_TeamsToken | _Webhook]
    ms_teams_tenant_id: NotRequired[Uuid | None]


class _DiscordChannel(TypedDict):
    channel_id: str


class Discord(TypedDict):
    connections: list[_DiscordChannel | _Webhook]


ChannelData = dict[
    str, PushTokens | PushDevices | SnsTargets | SnsDevices | OneSignal | Slack | Teams | Discord
]

# -- users, objects, tenants -------------------------------------------------------------------


class IdentifyUser(TypedDict):
    """``IdentifyUserRequest``."""

    avatar: NotRequired[str | None]
    channel_data: NotRequired[ChannelData | None]
    created_at: NotRequired[DateTime | None]
    email: NotRequired[str | None]
    locale: NotRequired[str | None]
    name: NotRequired[str | None]
    phone_number: NotRequired[str | None]
    preferences: NotRequired[Preferences | None]
    timezone: NotRequired[str | None]


class InlineUser(IdentifyUser):
    """``InlineIdentifyUserRequest``."""

    id: Id


class InlineObject(TypedDict):
    """``InlineIdentifyObjectRequest``."""

    id: Id
    collection: Id
    channel_data: NotRequired[ChannelData | None]
    created_at: NotRequired[DateTime | None]
    name: NotRequired[str | None]
    preferences: NotRequired[Preferences | None]


class BulkObject(TypedDict):
    """``BulkSetObjectRequest``."""

    id: Id
    channel_data: NotRequired[ChannelData | None]
    created_at: NotRequired[DateTime | None]
    name: NotRequired[str | None]
    preferences: NotRequired[Preferences | None]


class SetObject(TypedDict):
    """``SetObjectRequest``."""

    channel_data: NotRequired[ChannelData]
    locale: NotRequired[str | None]
    name: NotRequired[str | None]
    preferences: NotRequired[Preferences]
    timezone: NotRequired[str | None]


class Branding(TypedDict):
    # The dark_* keys are declared in ``TenantRequest`` only, but ``Tenant`` answers all eight.
    icon_url: NotRequired[Uri | None]
    logo_url: NotRequired[Uri | None]
    primary_color: NotRequired[str | None]
    primary_color_contrast: NotRequired[str | None]
    dark_icon_url: NotRequired[Uri | None]
    dark_logo_url: NotRequired[Uri | None]
    dark_primary_color: NotRequired[str | None]
    dark_primary_color_contrast: NotRequired[str | None]


class TenantSettings(TypedDict):
    branding: NotRequired[Branding]
    preference_set: NotRequired[PreferenceSet | None]


class SetTenant(TypedDict):
    """``SetTenantRequest``, with ``preferences`` typed as in ``TenantRequest`` (the inline
    tenant): one resource, one shape."""

    channel_data: NotRequired[ChannelData | None]
    name: NotRequired[str | None]
    preferences: NotRequired[Preferences | None]
    settings: NotRequired[TenantSettings]


class InlineTenant(SetTenant):
    """``TenantRequest``."""

    id: Id


def _shape(value: Any) -> str | None:
    if isinstance(value, str):
        return "id"
    return "object" if isinstance(value, dict) else None


#: ``InlineTenantRequest``: a tenant id or a tenant.
TenantRef = Annotated[
    Annotated[Id, Tag("id")] | Annotated[InlineTenant, Tag("object")],
    Discriminator(
        _shape,
        custom_error_type="invalid",
        custom_error_message="must be a tenant id or an object with an id",
    ),
]


def _recipient_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "id"
    if isinstance(value, dict):
        return "object" if "collection" in value else "user"
    return None


#: ``RecipientRequest``: a user id, an inline user, or an inline object (one with a
#: ``collection``; the spec's ``oneOf`` cannot tell it from a user, Knock does by that key).
Recipient = Annotated[
    Annotated[Id, Tag("id")]
    | Annotated[InlineUser, Tag("user")]
    | Annotated[InlineObject, Tag("object")],
    Discriminator(
        _recipient_kind,
        custom_error_type="invalid",
        custom_error_message="must be a user id or an object with an id",
    ),
]


class _ObjectRef(TypedDict):
    # The spec leaves both keys optional; a reference without an id names nothing.
    id: Id
    collection: NotRequired[Id]


#: ``RecipientReference``.
RecipientRef = Annotated[
    Annotated[Id, Tag("id")] | Annotated[_ObjectRef, Tag("object")],
    Discriminator(
        _shape,
        custom_error_type="invalid",
        custom_error_message="must be a recipient id or an object with an id",
    ),
]

# -- request bodies, one per emulated route ----------------------------------------------------


#: 1 to 1,000 items a call: Knock's documented limit; the spec gives none.
Batch = Field(min_length=1, max_length=MAX_BULK_ITEMS)


class BulkIdentify(TypedDict):
    users: Annotated[list[InlineUser], Batch]


class BulkDelete(TypedDict):
    user_ids: Annotated[list[Id], Batch]


class Merge(TypedDict):
    from_user_id: Id


class _TriggerSettings(TypedDict):
    sandbox_mode: NotRequired[bool | None]
    skip_delay: NotRequired[bool | None]


class Trigger(TypedDict):
    """``TriggerWorkflowRequest``."""

    recipients: Annotated[list[Recipient], Batch]
    actor: NotRequired[Recipient | None]
    cancellation_key: NotRequired[str | None]
    data: NotRequired[Json | None]
    settings: NotRequired[_TriggerSettings | None]
    tenant: NotRequired[TenantRef | None]


class BulkSetTenants(TypedDict):
    tenants: Annotated[list[TenantRef], Batch]


class BulkSetObjects(TypedDict):
    objects: Annotated[list[BulkObject], Batch]


#: "You can subscribe up to 100 recipients to an object at a time." (UpsertSubscriptionsRequest)
Subscribers = Field(min_length=1, max_length=100)


class Subscribe(TypedDict):
    """``UpsertSubscriptionsRequest``."""

    recipients: Annotated[list[Recipient], Subscribers]
    properties: NotRequired[Json | None]


class Unsubscribe(TypedDict):
    """``DeleteSubscriptionsRequest``."""

    recipients: Annotated[list[RecipientRef], Subscribers]


class _Member(TypedDict):
    user: InlineUser
    tenant: NotRequired[Id | None]


class AudienceMembers(TypedDict):
    """``AddAudienceMembersRequest`` and ``RemoveAudienceMembersRequest`` (one shape)."""

    members: Annotated[list[_Member], Batch]


# -- validation ------------------------------------------------------------------------------

_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def validate(body: dict[str, Any], schema: Any) -> None:
    """Check ``body`` against one of the request types above.

    :raises KnockHTTPError: 422 ``invalid_params`` with one entry per offending field.
    """
    adapter = _ADAPTERS.get(schema)
    if adapter is None:
        adapter = _ADAPTERS[schema] = TypeAdapter(schema)
    try:
        # Strict: JSON's types as they are, so "1" is no integer and 1 no boolean.
        adapter.validate_python(body, strict=True)
    except ValidationError as exc:
        raise _unprocessable(body, exc) from None


#: pydantic's error types that have a name of their own in Knock's error bodies.
_TYPES = {"missing": "required", "too_short": "required", "too_long": "length"}


def _unprocessable(body: Any, exc: ValidationError) -> KnockHTTPError:
    errors: dict[str, dict[str, str]] = {}
    for error in exc.errors(include_url=False):
        field = _field(body, error["loc"], error["type"] == "missing")
        kind = _TYPES.get(error["type"], error["type"])
        if error["type"] == "missing":
            message = "is required"
        elif error["type"] == "too_short":
            message = "must be a non-empty list"
        elif error["type"] == "too_long":
            message = f"must contain at most {error['ctx']['max_length']} items"
        else:
            message = error["msg"]
        if kind not in ("required", "length"):
            kind = "invalid"
        # A union's branches each report the same field; the first says enough.
        errors.setdefault(field, {"field": field, "message": message, "type": kind})
    return KnockHTTPError(
        422, "invalid_params", "One or more parameters are invalid.", errors=list(errors.values())
    )


def _field(body: Any, loc: tuple[int | str, ...], missing: bool) -> str:
    """``users[1].email`` from pydantic's location, walking the body itself so that the
    union branch names pydantic puts in the location (``str``, ``user``, …) are left out."""
    out = ""
    value = body
    for i, step in enumerate(loc):
        if isinstance(value, dict) and isinstance(step, str) and step in value:
            value = value[step]
        elif isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value):
            out += f"[{step}]"
            value = value[step]
            continue
        elif not (missing and i == len(loc) - 1):
            continue
        out += f".{step}" if out else str(step)
    return out or "body"
