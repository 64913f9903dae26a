"""``/v1/tenants``: set, get, delete and bulk set. Tenants are objects of Knock's
``$tenants`` collection, so they share the objects table."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .batches import base_url, entity_limit
from .bodies import BulkSetTenants, SetTenant, validate
from .models import not_found, render_tenant
from .state import Emulator
from .web import json_response, path_id, read_object

TENANTS = "$tenants"


async def set_tenant(request: Request, em: Emulator) -> Response:
    tenant_id = path_id(request, "id")
    body = await read_object(request, empty_ok=True)
    validate(body, SetTenant)
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
    body = await read_object(request)
    validate(body, BulkSetTenants)
    tenants: list[dict[str, Any]] = [
        {"id": item} if isinstance(item, str) else item for item in body["tenants"]
    ]
    ids = [t["id"] for t in tenants]
    limited, headers = entity_limit(em, ids, "x-ratelimited-tenants", namespace=f"{TENANTS}/")
    tenants = [t for t in tenants if t["id"] not in limited]
    op = em.bulk.submit("tenants", tenants, doomed=em.faults.take_doomed_bulk())
    return json_response(op.render(base_url(request)), headers=headers)
