"""Knock's wire shapes: error bodies, the ``User``/``Tenant``/``Object``/``BulkOperation``
objects, id checks and timestamps (request bodies are in :mod:`.bodies`).

Everything here is pure (no I/O, no state) so the store, the bulk worker and the routes
render identical shapes.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

#: Reserved user fields: rendered on every ``User`` (``null`` when unset).
RESERVED_FIELDS: Final = (
    "name",
    "email",
    "avatar",
    "phone_number",
    "locale",
    "timezone",
    "created_at",
)
#: Keys of an identify body that are stored but are not part of the ``User`` object.
SPECIAL_FIELDS: Final = frozenset({"preferences", "channel_data"})
#: Keys the server owns; a client sending them does not change them.
SERVER_FIELDS: Final = frozenset({"id", "__typename", "updated_at"})
MAX_ID_LENGTH: Final = 256
MAX_BULK_ITEMS: Final = 1000
MAX_PAGE_SIZE: Final = 50
#: ``PageInfo`` of a list the emulator answers in one page (subscriptions, audience members).
ONE_PAGE: Final = {"__typename": "PageInfo", "after": None, "before": None, "page_size": 50}

BulkStatus = Literal["queued", "processing", "completed", "failed"]
BulkKind = Literal["identify", "delete", "tenants", "objects"]


class KnockHTTPError(Exception):
    """An error answer in Knock's body shape ``{code, message, status, type[, errors]}``.

    Raised anywhere below a route; the route wrapper turns it into the response.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        type_: str = "invalid_request_error",
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type_
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "status": self.status,
            "type": self.type,
        }
        if self.errors is not None:
            out["errors"] = self.errors
        return out


def invalid(field_name: str, message: str, type_: str = "invalid") -> KnockHTTPError:
    """A 422 ``invalid_params`` error naming one field."""
    return KnockHTTPError(
        422,
        "invalid_params",
        "One or more parameters are invalid.",
        errors=[{"field": field_name, "message": message, "type": type_}],
    )


def not_found() -> KnockHTTPError:
    return KnockHTTPError(
        404, "resource_missing", "The resource you requested does not exist", "api_error"
    )


def unauthorized() -> KnockHTTPError:
    # Knock answers a missing and a wrong key alike, so a caller cannot probe for keys.
    return KnockHTTPError(
        401, "api_key_missing", "No valid API key provided", "authentication_error"
    )


def rate_limited(retry_after: int) -> KnockHTTPError:
    return KnockHTTPError(
        429,
        "rate_limit_exceeded",
        "Too many requests, please slow down.",
        "rate_limit_error",
        headers={"retry-after": str(max(1, retry_after))},
    )


def server_error(status: int) -> KnockHTTPError:
    if status == 503:
        return KnockHTTPError(503, "service_unavailable", "Service unavailable", "api_error")
    return KnockHTTPError(
        status, "internal_server_error", "An internal error occurred", "api_error"
    )


def check_id(value: object, field_name: str) -> str:
    """Return ``value`` if it is a valid Knock id, else raise a 422.

    :raises KnockHTTPError: not a non-empty string, longer than 256 characters, or
        containing ``/`` or ``#``.
    """
    if not isinstance(value, str) or not value:
        raise invalid(field_name, "must be a non-empty string", "required")
    if len(value) > MAX_ID_LENGTH or "/" in value or "#" in value:
        raise invalid(field_name, "must be at most 256 characters and contain no '/' or '#'")
    return value


def now_iso() -> str:
    """The current UTC time as Knock renders it (ISO-8601, microseconds, ``Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def render_user(user_id: str, data: dict[str, Any], updated_at: str) -> dict[str, Any]:
    """The ``User`` object: reserved fields (``null`` when unset), custom properties flat
    at the top level, without ``preferences``/``channel_data`` (not part of Knock's schema)."""
    out: dict[str, Any] = {"__typename": "User", "id": user_id}
    for key in RESERVED_FIELDS:
        out[key] = None
    out.update((key, value) for key, value in data.items() if key not in SPECIAL_FIELDS)
    out["updated_at"] = updated_at
    return out


def render_tenant(tenant_id: str, data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"__typename": "Tenant", "id": tenant_id, "name": None, "settings": None}
    out.update((k, v) for k, v in data.items() if k not in SPECIAL_FIELDS)
    settings = out["settings"]
    if isinstance(settings, dict) and isinstance(settings.get("preference_set"), dict):
        # A tenant's preference set is its "default" one; Knock's ``PreferenceSet`` has an id.
        preference_set = {**settings["preference_set"], "id": "default"}
        out["settings"] = {**settings, "preference_set": preference_set}
    return out


def render_object(
    collection: str, object_id: str, data: dict[str, Any], created_at: str, updated_at: str
) -> dict[str, Any]:
    return {
        "__typename": "Object",
        "id": object_id,
        "collection": collection,
        "created_at": created_at,
        "updated_at": updated_at,
        "properties": {k: v for k, v in data.items() if k not in SPECIAL_FIELDS},
    }


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"u:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, field_name: str) -> int:
    """:raises KnockHTTPError: 422 when the cursor was not produced by :func:`encode_cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, seq = raw.split(":", 1)
        if tag != "u":
            raise ValueError(tag)
        return int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid(field_name, "is not a valid cursor") from None


@dataclass(slots=True)
class BulkOperation:
    """One bulk operation. ``payload`` holds the work until the worker has applied it."""

    id: str
    name: str
    kind: BulkKind
    payload: list[Any]
    total_rows: int
    #: Set at submission by the ``fail_bulk_operations`` fault: the op ends ``failed``.
    doomed: bool
    inserted_at: str
    updated_at: str
    status: BulkStatus = "queued"
    processed_rows: int = 0
    success_count: int = 0
    error_items: list[dict[str, Any]] = field(default_factory=list)
    started_at: str | None = None
    completed_at: str | None = None
    failed_at: str | None = None
    #: The collection of an ``objects`` op (every item of one call shares it).
    collection: str | None = None

    def render(self, base_url: str) -> dict[str, Any]:
        return {
            "__typename": "BulkOperation",
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "estimated_total_rows": self.total_rows,
            "processed_rows": self.processed_rows,
            "success_count": self.success_count,
            "error_count": len(self.error_items),
            "error_items": self.error_items,
            "progress_path": f"{base_url}/v1/bulk_operations/{self.id}",
            "inserted_at": self.inserted_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
        }
