"""The inline identification of recipients (``RecipientRequest``, validated in
:mod:`.bodies`), and the ``failing_users`` fault that refuses a user wherever it is upserted.

Every route that identifies users inline (trigger, subscriptions, audiences) checks the
whole request first and writes only when nothing is refused, so a refused request leaves
the store as it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .models import KnockHTTPError
from .state import Emulator

#: Keys of an inline user that are instructions for the request, not user properties.
_REQUEST_ONLY = frozenset({"$trigger_data"})
REFUSED = "the user data was rejected"


class Refused(KnockHTTPError):
    """Knock's answer to user data it will not store: one 422 ``invalid_params`` naming
    every refused user (the same body as any other invalid parameter).

    ``user_ids`` are the refused users, counted by the route wrapper for the tests.
    """

    def __init__(self, fields: list[str], user_ids: list[str]) -> None:
        super().__init__(
            422,
            "invalid_params",
            "One or more parameters are invalid.",
            errors=[{"field": f, "message": REFUSED, "type": "invalid"} for f in fields],
        )
        self.user_ids = user_ids


def reject_failing_users(em: Emulator, users: Iterable[tuple[str, str]]) -> None:
    """Raise a 422 if any ``(field, user_id)`` names a user of the ``failing_users`` fault.

    Read at request time, so a fault switched on at run time applies to the next request.
    """
    failing = em.faults.settings.failing_users
    if not failing:
        return
    named = [(f, uid) for f, uid in users if uid in failing]
    if named:
        raise Refused([f for f, _ in named], [uid for _, uid in named])


def inline_users(recipients: Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
    """``(field.id, user_id)`` of every recipient that identifies a user inline.

    A bare id names a user without upserting it, so the fault does not apply to it.
    """
    return [
        (f"{field}.id", r["id"])
        for field, r in recipients
        if isinstance(r, dict) and "collection" not in r
    ]


def identify_inline(em: Emulator, recipient: Any) -> None:
    """Upsert an inline user or object; a bare id is left alone."""
    if not isinstance(recipient, dict):
        return
    if "collection" in recipient:
        props = {k: v for k, v in recipient.items() if k not in ("id", "collection")}
        em.store.set_object(recipient["collection"], recipient["id"], props, deep=em.deep)
    else:
        props = {k: v for k, v in recipient.items() if k not in _REQUEST_ONLY}
        em.store.identify(recipient["id"], props, deep=em.deep)
