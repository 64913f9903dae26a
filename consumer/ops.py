"""What one event asks of Knock: the vocabulary shared by mapping, plan and the Knock client.

The mapping step turns a Segment event into zero or more of these; the plan step coalesces and
orders them; the applier carries them out through the Knock client. They hold no Kafka offsets:
the sink wraps each one with the handle of the position it came from (see :mod:`consumer.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Identify:
    """Upsert of one user: ``props`` is the identify body without ``id`` (reserved and custom
    properties side by side, as Knock takes them; a ``None`` value overwrites)."""

    user_id: str
    props: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Merge:
    """``POST /v1/users/{user_id}/merge`` with ``from_user_id``: the from-user joins ``user_id``
    and is deleted. ``message_id`` is the alias's ``messageId`` (left out of equality): a
    repeat of it is skipped (:class:`consumer.ordering.RecentIds`)."""

    user_id: str
    from_user_id: str
    message_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Delete:
    """Deletion of one user (bulk delete); a later identify creates the user anew."""

    user_id: str


@dataclass(slots=True)
class Trigger:
    """``POST /v1/workflows/{workflow}/trigger`` for one recipient, identified inline with
    ``recipient_props``. ``idempotency_key`` is stable per (message, workflow): Knock runs a
    replay of it at most once within 24 h. ``event_time`` (epoch seconds) is informational."""

    workflow: str
    user_id: str
    recipient_props: dict[str, Any]
    data: dict[str, Any]
    actor: str | None
    tenant: str | None
    idempotency_key: str
    event_time: float | None = None


@dataclass(slots=True)
class SetTenant:
    tenant_id: str
    props: dict[str, Any]


@dataclass(slots=True)
class SetObject:
    collection: str
    object_id: str
    props: dict[str, Any]


@dataclass(slots=True)
class Subscribe:
    """The user (identified inline with ``props``) subscribes to an object."""

    collection: str
    object_id: str
    user_id: str
    props: dict[str, Any]


@dataclass(slots=True)
class Audience:
    """The user joins (``add``) or leaves audience ``key``; joining identifies it inline."""

    key: str
    user_id: str
    add: bool
    props: dict[str, Any]


Action = Delete | Trigger | SetTenant | SetObject | Subscribe | Audience
Op = Identify | Merge | Action


def entities(op: Op) -> tuple[str, ...]:
    """What ``op`` touches, as the planner orders them: user ids, and ``tenant/<id>`` or
    ``object/<collection>/<id>`` for the other entities (a user id never holds ``/``)."""
    cls = op.__class__
    if cls is Identify or cls is Delete or cls is Audience:
        return (op.user_id,)  # type: ignore[union-attr]
    if cls is Merge:
        return (op.user_id, op.from_user_id)  # type: ignore[union-attr]
    if cls is Trigger:
        return (op.user_id,) if op.actor in (None, op.user_id) else (op.user_id, op.actor)  # type: ignore[union-attr]
    if cls is SetTenant:
        return (f"tenant/{op.tenant_id}",)  # type: ignore[union-attr]
    if cls is SetObject:
        return (f"object/{op.collection}/{op.object_id}",)  # type: ignore[union-attr]
    assert cls is Subscribe
    return (op.user_id, f"object/{op.collection}/{op.object_id}")  # type: ignore[union-attr]
