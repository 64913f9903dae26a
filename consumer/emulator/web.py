"""Small HTTP helpers shared by the route modules: JSON bodies in and out, path ids."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .models import KnockHTTPError, check_id, invalid


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cyclic GC for a short burst of allocations.

    Parsing or merging 1,000 users allocates tens of thousands of containers, each burst
    triggering collections that walk every live object; it was over a third of the bulk
    identify CPU time. The data made here holds no cycles, so nothing is lost by
    collecting later. Only the event-loop thread calls this, so the toggles never interleave.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


async def read_object(request: Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The request body as a JSON object.

    :raises KnockHTTPError: 400 for malformed JSON, 422 for JSON that is not an object.
    """
    raw = await request.body()
    if not raw.strip() and empty_ok:
        return {}
    try:
        with gc_paused():
            body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise KnockHTTPError(400, "invalid_json", "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    return body


def path_id(request: Request, name: str) -> str:
    """A path parameter, percent-decoded and checked as a Knock id.

    The app routes on the raw (still encoded) path, so ``%2F`` stays inside one segment and
    is decoded only here, where it is then rejected like any id containing ``/``.
    """
    raw: str = request.path_params[name]
    try:
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise invalid(name, "is not valid percent-encoded UTF-8") from None
    return check_id(value, name)
