"""The control API under ``/_emulator``: faults, reset, and read-back of state for tests."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from .limits import FaultUpdate
from .models import KnockHTTPError, render_object, render_tenant, render_user
from .state import Emulator
from .tenants import TENANTS
from .web import json_response


async def get_faults(request: Request, em: Emulator) -> Response:
    return json_response(em.faults.describe())


async def set_faults(request: Request, em: Emulator) -> Response:
    """Change the given fault fields; the others keep their value."""
    try:
        change = FaultUpdate.model_validate_json((await request.body()) or b"{}")
    except ValidationError as exc:
        raise KnockHTTPError(
            422,
            "invalid_params",
            "One or more parameters are invalid.",
            errors=[
                {
                    "field": ".".join(map(str, e["loc"])) or "body",
                    "message": e["msg"],
                    "type": e["type"],
                }
                for e in exc.errors()
            ],
        ) from None
    em.faults.update(change)
    return json_response(em.faults.describe())


async def clear_faults(request: Request, em: Emulator) -> Response:
    em.faults.clear()
    return json_response(em.faults.describe())


async def reset(request: Request, em: Emulator) -> Response:
    em.reset()
    return Response(status_code=204)


async def users(request: Request, em: Emulator) -> Response:
    """Every user's full stored state, ``preferences``/``channel_data`` included when set."""
    out: list[dict[str, Any]] = []
    for uid, data, updated_at in em.store.all_users():
        user = render_user(uid, data, updated_at)
        for key in ("preferences", "channel_data"):
            if data.get(key) is not None:
                user[key] = data[key]
        out.append(user)
    return json_response(out)


async def stats(request: Request, em: Emulator) -> Response:
    body: dict[str, Any] = {
        "requests": {k: dict(v) for k, v in em.stats.requests.items()},
        "identify_entries": em.stats.identify_entries,
        "first_request_at": em.stats.first_request_at,
        "users": em.store.count_users(),
        "bulk_operations": em.bulk.counts(),
        "triggers": len(em.triggers),
        "tenants": sum(1 for o in em.store.all_objects() if o[0] == TENANTS),
        "objects": sum(1 for o in em.store.all_objects() if o[0] != TENANTS),
        "subscriptions": len(em.store.memberships.subscriptions()),
        "audience_members": len(em.store.memberships.members()),
        "deleted_users": len(em.store.deleted_users()),
        "refused": {k: dict(v) for k, v in em.stats.refused.items()},
    }
    if request.query_params.get("by_user") in ("1", "true"):
        body["identify_entries_by_user"] = dict(em.stats.identify_by_user)
    return json_response(body)


async def triggers(request: Request, em: Emulator) -> Response:
    return json_response(em.triggers)


async def tenants(request: Request, em: Emulator) -> Response:
    return json_response(
        [render_tenant(i, data) for c, i, data, _, _ in em.store.all_objects() if c == TENANTS]
    )


async def objects(request: Request, em: Emulator) -> Response:
    """Every object outside ``$tenants``, by collection then creation."""
    return json_response(
        [
            render_object(c, i, data, created, updated)
            for c, i, data, created, updated in em.store.all_objects()
            if c != TENANTS
        ]
    )


async def subscriptions(request: Request, em: Emulator) -> Response:
    """Every subscription as ``{collection, object_id, recipient, properties}``; a user
    recipient is its id, an object recipient ``{collection, id}``."""
    out = []
    for collection, object_id, (rc, rid), props, _, _ in em.store.memberships.subscriptions():
        out.append(
            {
                "collection": collection,
                "object_id": object_id,
                "recipient": {"collection": rc, "id": rid} if rc else rid,
                "properties": props,
            }
        )
    return json_response(out)


async def audiences(request: Request, em: Emulator) -> Response:
    """``{audience key: [{user_id, tenant}, ...]}`` in the order members were added."""
    out: dict[str, list[dict[str, Any]]] = {}
    for key, user_id, tenant, _ in em.store.memberships.members():
        out.setdefault(key, []).append({"user_id": user_id, "tenant": tenant})
    return json_response(out)


async def deleted(request: Request, em: Emulator) -> Response:
    """Ids of every applied user delete (single or bulk), in order."""
    return json_response(em.store.deleted_users())
