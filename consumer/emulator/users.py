"""``/v1/users`` and ``/v1/bulk_operations`` handlers. Each takes the request and the
:class:`~.state.Emulator`; auth, limits and faults were already applied by the route wrapper."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .batches import base_url, entity_limit
from .bodies import BulkDelete, BulkIdentify, IdentifyUser, Merge, validate
from .models import MAX_PAGE_SIZE, decode_cursor, encode_cursor, invalid, not_found, render_user
from .recipients import reject_failing_users
from .state import Emulator
from .web import json_response, path_id, read_object


async def identify(request: Request, em: Emulator) -> Response:
    user_id = path_id(request, "user_id")
    body = await read_object(request, empty_ok=True)
    validate(body, IdentifyUser)
    reject_failing_users(em, [("user_id", user_id)])
    data, updated_at = em.store.identify(user_id, body, deep=em.deep)
    em.stats.count_identify((user_id,))
    return json_response(render_user(user_id, data, updated_at))


async def get_user(request: Request, em: Emulator) -> Response:
    user_id = path_id(request, "user_id")
    found = em.store.get_user(user_id)
    if found is None:
        raise not_found()
    return json_response(render_user(user_id, *found))


async def delete_user(request: Request, em: Emulator) -> Response:
    # A missing user is a 404, as GET answers, rather than a silent 204.
    user_id = path_id(request, "user_id")
    if not em.store.delete_users([user_id]):
        raise not_found()
    return Response(status_code=204)


async def list_users(request: Request, em: Emulator) -> Response:
    """Cursor pages in creation order; ``include[]=preferences`` adds each user's sets."""
    query = request.query_params
    size_raw = query.get("page_size", str(MAX_PAGE_SIZE))
    if not size_raw.isdigit() or not 1 <= int(size_raw) <= MAX_PAGE_SIZE:
        raise invalid("page_size", f"must be an integer from 1 to {MAX_PAGE_SIZE}")
    page_size = int(size_raw)
    after = decode_cursor(query["after"], "after") if query.get("after") else None
    before = decode_cursor(query["before"], "before") if query.get("before") else None
    include = set(query.getlist("include[]")) | set(query.getlist("include"))
    rows, more_before, more_after = em.store.list_users(after=after, before=before, limit=page_size)
    entries = []
    for _, (uid, data, updated_at) in rows:
        user = render_user(uid, data, updated_at)
        if "preferences" in include:
            user["preferences"] = data.get("preferences") or {}
        entries.append(user)
    page_info = {
        "__typename": "PageInfo",
        "after": encode_cursor(rows[-1][0]) if rows and more_after else None,
        "before": encode_cursor(rows[0][0]) if rows and more_before else None,
        "page_size": page_size,
    }
    return json_response({"entries": entries, "page_info": page_info})


async def merge(request: Request, em: Emulator) -> Response:
    user_id = path_id(request, "user_id")
    body = await read_object(request)
    validate(body, Merge)
    from_user_id = body["from_user_id"]
    # A merge upserts the primary with the secondary's data: refused if either is refused.
    reject_failing_users(em, [("user_id", user_id), ("from_user_id", from_user_id)])
    merged = em.store.merge(user_id, from_user_id)
    if merged is None:
        raise not_found()
    return json_response(render_user(user_id, *merged))


async def bulk_identify(request: Request, em: Emulator) -> Response:
    body = await read_object(request)
    validate(body, BulkIdentify)
    users = body["users"]
    limited, headers = entity_limit(em, [u["id"] for u in users], "x-ratelimited-users")
    if limited:
        users = [u for u in users if u["id"] not in limited]
    op = em.bulk.submit("identify", users, doomed=em.faults.take_doomed_bulk())
    em.stats.count_identify(u["id"] for u in users)
    return json_response(op.render(base_url(request)), headers=headers)


async def bulk_delete(request: Request, em: Emulator) -> Response:
    body = await read_object(request)
    validate(body, BulkDelete)
    user_ids = body["user_ids"]
    limited, headers = entity_limit(em, user_ids, "x-ratelimited-user_ids")
    if limited:
        user_ids = [uid for uid in user_ids if uid not in limited]
    op = em.bulk.submit("delete", user_ids, doomed=em.faults.take_doomed_bulk())
    return json_response(op.render(base_url(request)), headers=headers)


async def get_bulk_operation(request: Request, em: Emulator) -> Response:
    op = em.bulk.get(request.path_params["id"])
    if op is None:
        raise not_found()
    return json_response(op.render(base_url(request)))
