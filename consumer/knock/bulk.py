"""Knock's bulk operations: start one, follow it until Knock has finished it, and read what
became of each id.

A bulk route answers at once with an operation that Knock works through later; an id counts as
applied only once the operation is ``completed`` and the id is in neither its
``error_items`` nor the ``x-ratelimited-*`` header of the answer that started it (ids Knock
skipped under its one-update-per-second-per-entity rule).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Final

from ..errors import FatalKnockError, RetryableError
from .transport import JSON, Transport, path_id

__all__ = ["BulkResult", "BulkRunner"]

log = logging.getLogger("knock_sink.knock")

_POLL_FIRST: Final = 0.005  # local bulk operations finish in milliseconds; Knock's in more
#: Polls of a long bulk operation come at most this far apart: a finished operation is seen
#: within this long. Under 1 s because a plan still polling holds its users (their next events
#: wait for it) and a flight slot; 4 polls a second per operation is little of the tier-4 route
#: budget (limits.py).
_POLL_MAX: Final = 0.25
_DONE: Final = frozenset({"completed", "failed"})


@dataclass(frozen=True, slots=True)
class BulkResult:
    """Outcome of a finished bulk operation. ``applied``, ``failed`` and ``rate_limited``
    partition the distinct ids sent. ``failed`` maps id -> reason; ``rate_limited`` ids were
    skipped by Knock's one-update-per-second-per-entity rule and must be sent again after 1 s."""

    operation_id: str
    status: str
    applied: list[str]
    failed: dict[str, str]
    rate_limited: list[str]


class BulkRunner:
    """Runs bulk operations of up to ``bulk_size`` ids through ``transport``."""

    def __init__(self, transport: Transport, bulk_size: int) -> None:
        self._transport = transport
        self.bulk_size = bulk_size

    def run(self, endpoint: str, path: str, body: JSON, ids: list[Any]) -> BulkResult:
        """POST ``body`` to the bulk route ``path`` and wait until Knock has finished the
        operation. An operation that ends ``failed`` is returned, not raised.

        :param ids: the ids of the entities in ``body``, as Knock names them in its answer.
        :raises ValueError: before sending, for no ids or more than ``bulk_size``.
        :raises RetryableError: the ``stop`` event was set while waiting.
        """
        if not 1 <= len(ids) <= self.bulk_size:
            raise ValueError(f"a bulk call takes 1 to {self.bulk_size} ids, got {len(ids)}")
        transport = self._transport
        debug = log.isEnabledFor(logging.DEBUG)
        started = time.monotonic() if debug else 0.0
        response = transport.send(endpoint, "POST", path, body)
        posted = time.monotonic() if debug else 0.0
        skipped = {
            part.strip()
            for name, value in response.headers.items()
            if name.lower().startswith("x-ratelimited-")
            for part in value.split(",")
        }
        op = self._follow(transport.json(response))
        if debug:
            # The freshness trace: limiter wait + POST, then polling.
            log.debug(
                "%s of %d ids: limiter and POST %.3f s, polling %.3f s",
                endpoint,
                len(ids),
                posted - started,
                time.monotonic() - posted,
            )
        return bulk_result(op, list(dict.fromkeys(ids)), skipped)

    def _follow(self, op: JSON) -> JSON:
        transport = self._transport
        interval = _POLL_FIRST
        while op.get("status") not in _DONE:
            transport.pause(interval)
            if transport.stopped:
                raise RetryableError("stopped")
            if not isinstance(op.get("id"), str):
                raise FatalKnockError(f"{transport.base_url} answered a bulk call without an id")
            path = f"/v1/bulk_operations/{path_id(op['id'])}"
            op = transport.json(transport.send("get_bulk_operation", "GET", path))
            interval = min(interval * 2, _POLL_MAX)
        return op


def bulk_result(op: JSON, ids: list[str], skipped: set[str]) -> BulkResult:
    """What became of each of ``ids`` in the finished operation ``op``, ``skipped`` being the
    ids of the ``x-ratelimited-*`` header."""
    status = str(op.get("status"))
    if status == "failed":
        bad = {i: "bulk operation failed" for i in ids if i not in skipped}
    else:
        items = op.get("error_items") or []
        errors = {str(item.get("id")) for item in items if isinstance(item, dict)}
        bad = {i: "bulk operation error item" for i in ids if i in errors and i not in skipped}
    return BulkResult(
        operation_id=str(op.get("id")),
        status=status,
        applied=[i for i in ids if i not in bad and i not in skipped],
        failed=bad,
        rate_limited=[i for i in ids if i in skipped],
    )
