"""Workflow triggers (inline identification, ``Idempotency-Key`` replays) and the tenant
and object upserts."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .models import (
    MAX_BULK_ITEMS,
    KnockHTTPError,
    check_id,
    invalid,
    render_object,
    render_tenant,
)
from .recipients import check_recipient, identify_inline, inline_users, reject_failing_users
from .state import Emulator
from .web import json_response, path_id, read_object

TENANTS = "$tenants"
MAX_IDEMPOTENCY_KEY = 255


async def trigger(request: Request, em: Emulator) -> Response:
    """Identify inline recipients, actor and tenant first, then record the trigger.

    With an ``Idempotency-Key`` seen in the last 24 h the first answer is replayed (nothing
    is recorded again); the same key with a different request is a 422.
    """
    key = path_id(request, "key")
    body = await read_object(request)
    idem = request.headers.get("idempotency-key")
    fingerprint = orjson.dumps([key, body], option=orjson.OPT_SORT_KEYS)
    if idem is not None:
        if not idem or len(idem) > MAX_IDEMPOTENCY_KEY:
            raise invalid("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        replay = em.replay(idem)
        if replay is not None:
            if replay.fingerprint != fingerprint:
                raise KnockHTTPError(
                    422,
                    "idempotency_key_reused",
                    "This idempotency key was used with different parameters",
                )
            return json_response(
                replay.body,
                headers={
                    "idempotent-replayed": "true",
                    "original-x-request-id": replay.request_id,
                },
            )
    recipients = body.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        raise invalid("recipients", "must be a non-empty list", "required")
    if len(recipients) > MAX_BULK_ITEMS:
        raise invalid("recipients", f"must contain at most {MAX_BULK_ITEMS} items", "length")
    for i, recipient in enumerate(recipients):
        check_recipient(recipient, f"recipients[{i}]")
    actor, tenant, data = body.get("actor"), body.get("tenant"), body.get("data")
    if actor is not None:
        check_recipient(actor, "actor")
    if tenant is not None and not isinstance(tenant, str):
        if not isinstance(tenant, dict):
            raise invalid("tenant", "must be a tenant id or an object with an id")
        check_id(tenant.get("id"), "tenant.id")
    elif isinstance(tenant, str):
        check_id(tenant, "tenant")
    if data is not None and not isinstance(data, dict):
        raise invalid("data", "must be an object or null")

    named = [(f"recipients[{i}]", r) for i, r in enumerate(recipients)]
    reject_failing_users(em, inline_users([*named, ("actor", actor)]))
    for recipient in [*recipients, actor]:
        identify_inline(em, recipient)
    if isinstance(tenant, dict):
        props = {k: v for k, v in tenant.items() if k != "id"}
        em.store.set_object(TENANTS, tenant["id"], props, deep=em.deep)
    elif isinstance(tenant, str):
        em.store.ensure_object(TENANTS, tenant)

    answer = {"workflow_run_id": str(uuid.uuid4())}
    em.triggers.append(
        {
            "workflow": key,
            **answer,
            "idempotency_key": idem,
            "recipients": recipients,
            "actor": actor,
            "tenant": tenant,
            "data": data,
            "cancellation_key": body.get("cancellation_key"),
            "settings": body.get("settings"),
        }
    )
    if idem is not None:
        em.remember(idem, fingerprint, answer, request.state.request_id)
    return json_response(answer)


async def set_tenant(request: Request, em: Emulator) -> Response:
    tenant_id = path_id(request, "id")
    body = await read_object(request, empty_ok=True)
    if body.get("name") is not None and not isinstance(body["name"], str):
        raise invalid("name", "must be a string or null")
    if body.get("settings") is not None and not isinstance(body["settings"], dict):
        raise invalid("settings", "must be an object or null")
    data, _, _ = em.store.set_object(TENANTS, tenant_id, body, deep=em.deep)
    return json_response(render_tenant(tenant_id, data))


async def set_object(request: Request, em: Emulator) -> Response:
    collection = path_id(request, "collection")
    object_id = path_id(request, "id")
    body = await read_object(request, empty_ok=True)
    data, created_at, updated_at = em.store.set_object(collection, object_id, body, deep=em.deep)
    return json_response(render_object(collection, object_id, data, created_at, updated_at))
