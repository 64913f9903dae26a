"""What one event asks of Knock: the vocabulary shared by mapping, plan and the Knock client.

The mapping step turns a Segment event into zero or more of these; the plan step coalesces and
orders them; the applier carries them out through the Knock client. They hold no Kafka offsets:
the sink wraps each one with the handle of the position it came from (see :mod:`consumer.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass
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
    and is deleted."""

    user_id: str
    from_user_id: str


Op = Identify | Merge
