"""The Starlette app: the route table with Knock's rate-limit tiers, and the wrapper that
gives every route auth, faults, limits, Knock error bodies, ``x-request-id`` and counters.

Order of checks on a ``/v1`` request, each ending the request when it fires:
auth (401) → added latency → outage (503) → tier rate limit (429) → injected 429/5xx →
the handler (4xx in Knock's body, or the answer).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import audiences, control, objects, subscriptions, tenants, users, workflows
from .limits import Clock, FaultSettings
from .models import KnockHTTPError, rate_limited, server_error, unauthorized
from .recipients import Refused
from .state import Emulator, MergeMode, RateLimitMode
from .web import json_response

logger = logging.getLogger("consumer.emulator")

Handler = Callable[[Request, Emulator], Awaitable[Response]]

#: ``(method, path template, Knock rate-limit tier, handler)``.
#:
#: The tiers are the ``x-ratelimit-tier`` of each operation in Knock's OpenAPI description.
#: This is the emulator's own copy, on purpose independent of the sink's pacing table: it is
#: the other side of the contract, so a wrong tier in the sink shows up here as 429s.
#: Paths and body fields follow the spec where it and the issue text disagree.
V1_ROUTES: list[tuple[str, str, int, Handler]] = [
    ("GET", "/v1/users", 4, users.list_users),
    ("POST", "/v1/users/bulk/identify", 1, users.bulk_identify),
    ("POST", "/v1/users/bulk/delete", 1, users.bulk_delete),
    ("PUT", "/v1/users/{user_id}", 3, users.identify),
    ("GET", "/v1/users/{user_id}", 4, users.get_user),
    ("DELETE", "/v1/users/{user_id}", 2, users.delete_user),
    ("POST", "/v1/users/{user_id}/merge", 2, users.merge),
    ("GET", "/v1/bulk_operations/{id}", 4, users.get_bulk_operation),
    ("POST", "/v1/workflows/{key}/trigger", 5, workflows.trigger),
    ("POST", "/v1/tenants/bulk/set", 1, tenants.bulk_set),
    ("PUT", "/v1/tenants/{id}", 3, tenants.set_tenant),
    ("GET", "/v1/tenants/{id}", 4, tenants.get_tenant),
    ("DELETE", "/v1/tenants/{id}", 2, tenants.delete_tenant),
    ("POST", "/v1/objects/{collection}/bulk/set", 1, objects.bulk_set),
    ("PUT", "/v1/objects/{collection}/{id}", 3, objects.set_object),
    ("GET", "/v1/objects/{collection}/{id}", 4, objects.get_object),
    ("DELETE", "/v1/objects/{collection}/{id}", 3, objects.delete_object),
    ("POST", "/v1/objects/{collection}/{object_id}/subscriptions", 3, subscriptions.add),
    ("DELETE", "/v1/objects/{collection}/{object_id}/subscriptions", 3, subscriptions.delete),
    ("GET", "/v1/objects/{collection}/{object_id}/subscriptions", 4, subscriptions.list_for_object),
    ("POST", "/v1/audiences/{key}/members", 3, audiences.add_members),
    ("DELETE", "/v1/audiences/{key}/members", 3, audiences.remove_members),
    ("GET", "/v1/audiences/{key}/members", 4, audiences.list_members),
]
CONTROL_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/_emulator/faults", control.get_faults),
    ("POST", "/_emulator/faults", control.set_faults),
    ("DELETE", "/_emulator/faults", control.clear_faults),
    ("POST", "/_emulator/reset", control.reset),
    ("GET", "/_emulator/users", control.users),
    ("GET", "/_emulator/stats", control.stats),
    ("GET", "/_emulator/triggers", control.triggers),
    ("GET", "/_emulator/tenants", control.tenants),
    ("GET", "/_emulator/objects", control.objects),
    ("GET", "/_emulator/subscriptions", control.subscriptions),
    ("GET", "/_emulator/audiences", control.audiences),
    ("GET", "/_emulator/deleted", control.deleted),
]


class RawPathRouting:
    """Route on the raw, still percent-encoded path.

    Uvicorn decodes ``%2F`` into ``/`` in ``scope["path"]``, which would let
    ``POST /v1/users/a%2Fmerge`` reach the merge route of user ``a``. Routing on
    ``raw_path`` keeps an encoded ``/`` inside its segment; handlers decode the parameters.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path")
        if scope["type"] == "http" and raw:
            scope = {**scope, "path": raw.decode("latin-1")}
        await self.app(scope, receive, send)


def _authorized(request: Request, api_key: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    )


async def _guard(request: Request, em: Emulator, endpoint: str, tier: int) -> None:
    """Latency, outage, rate limits and injected faults, in that order (raises to answer)."""
    settings = em.faults.settings
    if settings.latency_ms:
        await asyncio.sleep(settings.latency_ms / 1000)
    if em.faults.in_outage():
        raise server_error(503)
    if em.limits_on:
        retry_after = em.limiter.acquire(endpoint, tier)
        if retry_after:
            raise rate_limited(retry_after)
    forced = em.faults.draw()
    if forced == 429:
        raise rate_limited(1)
    if forced:
        raise server_error(forced)


def _route(em: Emulator, method: str, template: str, tier: int | None, handler: Handler) -> Route:
    """Wrap ``handler``; ``tier`` is ``None`` for control routes (no faults, no counters)."""
    endpoint_name = f"{method} {template}"

    async def endpoint(request: Request) -> Response:
        request_id = secrets.token_hex(12)
        request.state.request_id = request_id
        try:
            if not _authorized(request, em.api_key):
                raise unauthorized()
            if tier is not None:
                await _guard(request, em, endpoint_name, tier)
            response = await handler(request, em)
        except KnockHTTPError as exc:
            if isinstance(exc, Refused):
                em.stats.refuse(endpoint_name, exc.user_ids)
            response = json_response(exc.body(), exc.status, exc.headers)
        except Exception:
            # An emulator bug must still answer in Knock's shape and be counted; the log
            # names the route only (never headers, so never the key).
            logger.exception("unhandled error in %s", endpoint_name)
            error = server_error(500)
            response = json_response(error.body(), error.status)
        response.headers["x-request-id"] = request_id
        if tier is not None:
            em.stats.record(endpoint_name, response.status_code)
        return response

    return Route(template, endpoint, methods=[method])


def _unrouted(em: Emulator) -> Route:
    async def endpoint(request: Request) -> Response:
        if not _authorized(request, em.api_key):
            exc = unauthorized()
            response = json_response(exc.body(), exc.status)
        else:
            # Knock's answer for a path it does not route, a shape of its own.
            response = json_response({"errors": {"detail": "404 Not Found"}}, 404)
        response.headers["x-request-id"] = secrets.token_hex(12)
        return response

    # Every method, so a known path with an unknown method gets this answer rather than
    # Starlette's plain-text 405.
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Route("/{path:path}", endpoint, methods=methods)


def create_app(
    *,
    api_key: str = "sk_test_emulator",
    rate_limits: RateLimitMode = "knock",
    merge: MergeMode = "deep",
    db: str | None = None,
    faults: FaultSettings | None = None,
    clock: Clock = time.monotonic,
) -> Starlette:
    """Build the emulator app. The SQLite store opens now; the bulk worker starts with the
    app's lifespan and, on shutdown, applies what is still queued before the store closes.

    :param db: SQLite file (kept across restarts); ``None`` keeps state in memory.
    :param faults: faults in force from the start (and after ``POST /_emulator/reset``).
    :param clock: monotonic seconds for every time-based rule; tests pass a fake one.
    """
    em = Emulator(
        api_key=api_key, rate_limits=rate_limits, merge=merge, db=db, faults=faults, clock=clock
    )
    routes = [_route(em, m, t, tier, h) for m, t, tier, h in V1_ROUTES]
    routes += [_route(em, m, t, None, h) for m, t, h in CONTROL_ROUTES]
    routes.append(_unrouted(em))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        em.bulk.start()
        try:
            yield
        finally:
            await em.bulk.stop()
            em.store.close()

    app = Starlette(routes=routes, middleware=[Middleware(RawPathRouting)], lifespan=lifespan)
    app.state.emulator = em
    return app
