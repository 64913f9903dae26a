"""The control API under ``/_emulator``: faults, reset, and read-back of state for tests."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from .limits import FaultUpdate
from .models import KnockHTTPError, render_user
from .state import Emulator
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
        "users": em.store.count_users(),
        "bulk_operations": em.bulk.counts(),
        "triggers": len(em.triggers),
    }
    if request.query_params.get("by_user") in ("1", "true"):
        body["identify_entries_by_user"] = dict(em.stats.identify_by_user)
    return json_response(body)


async def triggers(request: Request, em: Emulator) -> Response:
    return json_response(em.triggers)
