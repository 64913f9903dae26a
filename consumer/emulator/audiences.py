"""``/v1/audiences/{key}/members``: add (with inline identification), remove and list.

An audience comes into being with its first member: the emulator has no audience
definitions to check ``create_audience`` against, so every key is accepted.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .bodies import AudienceMembers, validate
from .models import ONE_PAGE, render_user
from .recipients import reject_failing_users
from .state import Emulator
from .web import json_response, path_id, read_object


def _members(body: dict[str, Any]) -> list[tuple[dict[str, Any], str | None]]:
    """``(inline user, tenant)`` of each ``AudienceMemberRequest``; up to 1,000 a call."""
    validate(body, AudienceMembers)
    return [(member["user"], member.get("tenant")) for member in body["members"]]


async def add_members(request: Request, em: Emulator) -> Response:
    key = path_id(request, "key")
    members = _members(await read_object(request))
    reject_failing_users(
        em, [(f"members[{i}].user.id", user["id"]) for i, (user, _) in enumerate(members)]
    )
    for user, _ in members:
        em.store.identify(user["id"], user, deep=em.deep)
    em.store.memberships.add_members(key, [(user["id"], tenant) for user, tenant in members])
    return Response(status_code=204)


async def remove_members(request: Request, em: Emulator) -> Response:
    # Removing only names users (nothing is identified), so the failing_users fault is moot.
    key = path_id(request, "key")
    members = _members(await read_object(request))
    em.store.memberships.remove_members(key, [(user["id"], tenant) for user, tenant in members])
    return Response(status_code=204)


def render_member(em: Emulator, user_id: str, tenant: str | None, added_at: str) -> dict[str, Any]:
    user = em.store.get_user(user_id)
    assert user is not None, "an audience member outlived its user"
    return {
        "__typename": "AudienceMember",
        "added_at": added_at,
        "user": render_user(user_id, *user),
        "user_id": user_id,
        "tenant": tenant,
    }


async def list_members(request: Request, em: Emulator) -> Response:
    """One page holding every member, in the order they were added."""
    key = path_id(request, "key")
    entries = [
        render_member(em, uid, tenant, added)
        for _, uid, tenant, added in em.store.memberships.members(key)
    ]
    return json_response({"entries": entries, "page_info": ONE_PAGE})
