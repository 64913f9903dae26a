"""``/v1/tenants``: set, get, delete and bulk set. Tenants are objects of Knock's
``$tenants`` collection, so they share the objects table."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .batches import base_url, bulk_list, entity_limit
from .models import check_id, invalid, not_found, render_tenant
from .state import Emulator
from .web import json_response, path_id, read_object

TENANTS = "$tenants"


def _check_tenant_body(body: dict[str, Any], prefix: str = "") -> None:
    if body.get("name") is not None and not isinstance(body["name"], str):
        raise invalid(prefix + "name", "must be a string or null")
    if body.get("settings") is not None and not isinstance(body["settings"], dict):
        raise invalid(prefix + "settings", "must be an object or null")


async def set_tenant(request: Request, em: Emulator) -> Response:
    tenant_id = path_id(request, "id")
    body = await read_object(request, empty_ok=True)
    _check_tenant_body(body)
    data, _, _ = em.store.set_object(TENANTS, tenant_id, body, deep=em.deep)
    return json_response(render_tenant(tenant_id, data))


async def get_tenant(request: Request, em: Emulator) -> Response:
    tenant_id = path_id(request, "id")
    found = em.store.get_object(TENANTS, tenant_id)
    if found is None:
        raise not_found()
    return json_response(render_tenant(tenant_id, found[0]))


async def delete_tenant(request: Request, em: Emulator) -> Response:
    # A missing tenant is a 404, as GET answers (the same choice as for users).
    if not em.store.delete_object(TENANTS, path_id(request, "id")):
        raise not_found()
    return Response(status_code=204)


async def bulk_set(request: Request, em: Emulator) -> Response:
    """``{"tenants": [id | {id, ...}]}`` (``InlineTenantRequest``): a bare id sets a tenant
    with no properties."""
    items = bulk_list(await read_object(request), "tenants")
    tenants: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"id": item}
        elif not isinstance(item, dict):
            raise invalid(f"tenants[{i}]", "must be a tenant id or an object with an id")
        check_id(item.get("id"), f"tenants[{i}].id")
        _check_tenant_body(item, f"tenants[{i}].")
        tenants.append(item)
    ids = [t["id"] for t in tenants]
    limited, headers = entity_limit(em, ids, "x-ratelimited-tenants", namespace=f"{TENANTS}/")
    tenants = [t for t in tenants if t["id"] not in limited]
    op = em.bulk.submit("tenants", tenants, doomed=em.faults.take_doomed_bulk())
    return json_response(op.render(base_url(request)), headers=headers)
