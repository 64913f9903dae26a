"""``/v1/objects/{collection}/{object_id}/subscriptions``: add (with inline
identification), delete and list the recipients subscribed to an object.

Knock does not document what a subscription to a missing object or a bare id of an unknown
user does; we answer 404 (``resource_missing``) for both, so a caller that skips setting the
object or identifying the user first finds out, instead of the emulator inventing either.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .bodies import Subscribe, Unsubscribe, validate
from .memberships import RecipientKey
from .models import ONE_PAGE, invalid, not_found, render_object, render_user
from .recipients import identify_inline, inline_users, reject_failing_users
from .state import Emulator
from .web import json_response, path_id, read_object


def _key(recipient: Any) -> RecipientKey:
    if isinstance(recipient, str):
        return ("", recipient)
    return (recipient.get("collection") or "", recipient["id"])


def _object(em: Emulator, request: Request) -> tuple[str, str]:
    collection = path_id(request, "collection")
    object_id = path_id(request, "object_id")
    if em.store.get_object(collection, object_id) is None:
        raise not_found()
    return collection, object_id


def _render_recipient(em: Emulator, key: RecipientKey) -> dict[str, Any]:
    rcollection, rid = key
    if not rcollection:
        user = em.store.get_user(rid)
        assert user is not None, "a subscription outlived its user"
        return render_user(rid, *user)
    found = em.store.get_object(rcollection, rid)
    assert found is not None, "a subscription outlived its object"
    return render_object(rcollection, rid, *found)


def render_subscriptions(
    em: Emulator, rows: list[tuple[str, str, RecipientKey, Any, str, str]]
) -> list[dict[str, Any]]:
    out = []
    for collection, object_id, key, properties, inserted_at, updated_at in rows:
        obj = em.store.get_object(collection, object_id)
        assert obj is not None, "a subscription outlived its object"
        out.append(
            {
                "__typename": "Subscription",
                "object": render_object(collection, object_id, *obj),
                "recipient": _render_recipient(em, key),
                "properties": properties,
                "inserted_at": inserted_at,
                "updated_at": updated_at,
            }
        )
    return out


async def add(request: Request, em: Emulator) -> Response:
    collection, object_id = _object(em, request)
    body = await read_object(request)
    validate(body, Subscribe)
    recipients, properties = body["recipients"], body.get("properties")
    named = [(f"recipients[{i}]", r) for i, r in enumerate(recipients)]
    reject_failing_users(em, inline_users(named))
    for recipient in recipients:
        if isinstance(recipient, str) and em.store.get_user(recipient) is None:
            raise not_found()
    for recipient in recipients:
        identify_inline(em, recipient)
    keys = list(dict.fromkeys(_key(r) for r in recipients))
    em.store.memberships.subscribe(collection, object_id, keys, properties)
    rows = [
        row for row in em.store.memberships.subscriptions(collection, object_id) if row[2] in keys
    ]
    return json_response(render_subscriptions(em, rows))


async def delete(request: Request, em: Emulator) -> Response:
    """Answers the subscriptions it deleted (a recipient not subscribed is skipped)."""
    collection, object_id = _object(em, request)
    body = await read_object(request)
    validate(body, Unsubscribe)
    keys = {_key(r) for r in body["recipients"]}
    rows = [
        row for row in em.store.memberships.subscriptions(collection, object_id) if row[2] in keys
    ]
    answer = render_subscriptions(em, rows)
    em.store.memberships.unsubscribe(collection, object_id, [row[2] for row in rows])
    return json_response(answer)


async def list_for_object(request: Request, em: Emulator) -> Response:
    """``mode=object`` (the default) only: one page holding every subscriber."""
    collection, object_id = _object(em, request)
    if request.query_params.get("mode", "object") != "object":
        raise invalid("mode", "only mode=object is emulated")
    rows = em.store.memberships.subscriptions(collection, object_id)
    return json_response({"entries": render_subscriptions(em, rows), "page_info": ONE_PAGE})
