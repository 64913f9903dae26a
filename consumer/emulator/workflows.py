"""``POST /v1/workflows/{key}/trigger``: inline identification, unknown workflows and
``Idempotency-Key`` replays."""

from __future__ import annotations

import uuid

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .bodies import Trigger, validate
from .models import KnockHTTPError, invalid
from .recipients import identify_inline, inline_users, reject_failing_users
from .state import Emulator
from .tenants import TENANTS
from .web import json_response, path_id, read_object

MAX_IDEMPOTENCY_KEY = 255


def workflow_missing() -> KnockHTTPError:
    # Knock documents the ``workflow_missing`` code; a 404 as for any missing resource.
    return KnockHTTPError(
        404, "workflow_missing", "The workflow you tried to invoke does not exist"
    )


async def trigger(request: Request, em: Emulator) -> Response:
    """Check everything, then identify inline recipients, actor and tenant, then record.

    Knock's idempotency (``Idempotency-Key``, 24 h of the emulator clock): the same key
    with the same request replays the first 2xx answer and runs nothing; the same key with
    a different request is refused. Knock documents only "an error" for that case; we
    answer 422 (the request's parameters are what is wrong, as for any invalid parameter)
    rather than 409, which the SDK would retry. Only 2xx answers are remembered, so a
    refused request can be retried with the same key.
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
    known = em.faults.settings.workflows
    if known is not None and key not in known:
        raise workflow_missing()
    validate(body, Trigger)
    recipients = body["recipients"]
    actor, tenant, data = body.get("actor"), body.get("tenant"), body.get("data")
    named = [(f"recipients[{i}]", r) for i, r in enumerate(recipients)]
    reject_failing_users(em, inline_users([*named, ("actor", actor)]))

    for recipient in [*recipients, actor]:
        identify_inline(em, recipient)
    if isinstance(tenant, dict):
        props = {k: v for k, v in tenant.items() if k != "id"}
        em.store.set_object(TENANTS, tenant["id"], props, deep=em.deep)
    elif isinstance(tenant, str):
        # Knock creates a stub tenant for an id it has not seen.
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
