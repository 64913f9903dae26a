"""``/v1/objects/{collection}``: set, get, delete and bulk set."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .batches import base_url, entity_limit
from .bodies import BulkSetObjects, SetObject, validate
from .models import not_found, render_object
from .state import Emulator
from .web import json_response, path_id, read_object


async def set_object(request: Request, em: Emulator) -> Response:
    collection = path_id(request, "collection")
    object_id = path_id(request, "id")
    body = await read_object(request, empty_ok=True)
    validate(body, SetObject)
    data, created_at, updated_at = em.store.set_object(collection, object_id, body, deep=em.deep)
    return json_response(render_object(collection, object_id, data, created_at, updated_at))


async def get_object(request: Request, em: Emulator) -> Response:
    collection = path_id(request, "collection")
    object_id = path_id(request, "id")
    found = em.store.get_object(collection, object_id)
    if found is None:
        raise not_found()
    return json_response(render_object(collection, object_id, *found))


async def delete_object(request: Request, em: Emulator) -> Response:
    if not em.store.delete_object(path_id(request, "collection"), path_id(request, "id")):
        raise not_found()
    return Response(status_code=204)


async def bulk_set(request: Request, em: Emulator) -> Response:
    collection = path_id(request, "collection")
    body = await read_object(request)
    validate(body, BulkSetObjects)
    objects: list[dict[str, Any]] = body["objects"]
    ids = [o["id"] for o in objects]
    limited, headers = entity_limit(em, ids, "x-ratelimited-objects", namespace=f"{collection}/")
    objects = [o for o in objects if o["id"] not in limited]
    op = em.bulk.submit(
        "objects", objects, doomed=em.faults.take_doomed_bulk(), collection=collection
    )
    return json_response(op.render(base_url(request)), headers=headers)
