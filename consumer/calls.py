"""Ops as the Knock HTTP calls that carry them: method, route and JSON body.

One place says what an :class:`~consumer.ops.Identify` or :class:`~consumer.ops.Merge` looks
like on the wire, so that ``knock-sink validate`` and ``backfill --dry-run`` print exactly what
:mod:`consumer.knock` sends (the client could build its requests from here too):

* an identify goes out as one entry of ``POST /v1/users/bulk/identify`` (``{"id": ..., props}``
  inside ``{"users": [...]}``); under Knock's rate limits a plan's overflow takes
  ``PUT /v1/users/{id}`` with the same properties and no ``id``;
* an alias is ``POST /v1/users/{id}/merge`` with ``{"from_user_id": ...}``.

Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from .ops import Identify, Merge, Op

BULK_IDENTIFY = "/v1/users/bulk/identify"


def user_path(user_id: str) -> str:
    """``/v1/users/{id}`` with the id kept inside its path segment (as the client quotes it)."""
    return f"/v1/users/{quote(user_id, safe='')}"


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request to Knock."""

    method: str
    route: str
    body: dict[str, Any]

    def render(self) -> str:
        """``METHOD route {json body}`` on one line, keys in the order the sink sends them."""
        return f"{self.method} {self.route} {orjson.dumps(self.body).decode()}"


def bulk_entry(op: Identify) -> dict[str, Any]:
    """The ``users[]`` entry of a bulk identify."""
    return {"id": op.user_id, **op.props}


def bulk_identify(ops: list[Identify]) -> Call:
    return Call("POST", BULK_IDENTIFY, {"users": [bulk_entry(op) for op in ops]})


def single_identify(op: Identify) -> Call:
    return Call("PUT", user_path(op.user_id), dict(op.props))


def merge(op: Merge) -> Call:
    return Call("POST", f"{user_path(op.user_id)}/merge", {"from_user_id": op.from_user_id})


def call_for(op: Op) -> Call:
    """The call one op takes on its own: an identify as a bulk call of one entry."""
    if isinstance(op, Identify):
        return bulk_identify([op])
    if isinstance(op, Merge):
        return merge(op)
    raise TypeError(f"no single call carries a {type(op).__name__}")
