"""What became of the pending ops of a plan, and the rules both appliers follow to decide it.

:class:`Outcome` collects, per plan, the ops Knock applied, those to retry (with the delay
before they may go again) and those to dead-letter (with the kind and reason).
:class:`Rejections` decides between the last two for an op Knock rejected, and :func:`reason`
is the one wording of a dead letter from Knock. Both appliers
(:class:`~consumer.apply.Applier` and :class:`~consumer.apply_actions.ActionRunner`) import
them from here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import ItemError
from .known import Confirmed, Forgotten
from .plan import Pending
from .records import Partition

#: Users remembered as rejected before the memory starts over.
REJECTED_KEPT = 100_000
#: The longest wait before an op Knock rejected is tried again, in seconds.
MAX_RETRY_DELAY = 30.0


@dataclass(slots=True)
class Outcome:
    """What became of a plan. ``retry`` pairs each pending with the delay before it may be sent
    again; ``dead`` pairs it with the dead-letter kind and reason.

    The steps of a plan fill it from worker threads: ``list.append`` and ``list.extend`` are
    atomic under the interpreter lock; :meth:`count` locks.
    """

    done: list[Pending] = field(default_factory=list)
    retry: list[tuple[Pending, float]] = field(default_factory=list)
    dead: list[tuple[Pending, str, str]] = field(default_factory=list)
    #: Of ``done``, those not sent: Knock was known to have all they carry (change detection).
    unchanged: list[Pending] = field(default_factory=list)
    #: What the plan learnt of what Knock has (change detection), in order, for the loop to
    #: take in (:meth:`consumer.known.Known.settle`).
    known: list[Confirmed | Forgotten] = field(default_factory=list)
    #: Per user whose known state the plan changed, what it confirmed of it so far, in order
    #: (``None``: it forgot the user): its later levels compare with that too
    #: (:meth:`consumer.known.Known.strip`'s ``earlier``).
    touched: dict[str, list[Confirmed] | None] = field(default_factory=dict)
    users_sent: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def confirmed(self, user: str, sent: dict[str, Any], tp: Partition | None, source: Any) -> None:
        c = Confirmed(user, sent, tp, source)
        self.known.append(c)
        earlier = self.touched.setdefault(user, [])
        if earlier is not None:
            earlier.append(c)

    def forgot(self, users: Iterable[str], tp: Partition | None, *, logged: bool = False) -> None:
        gone = tuple(users)
        self.known.append(Forgotten(gone, tp, logged))
        for u in gone:
            self.touched[u] = None

    def count(self, operation: str, users: int = 0) -> None:
        with self._lock:
            self.calls[operation] = self.calls.get(operation, 0) + 1
            self.users_sent += users


def reason(exc: ItemError) -> str:
    """The dead-letter reason: our one line, then Knock's error body as Knock sent it."""
    if exc.body is None:
        return str(exc)
    return f"{exc} | {orjson.dumps(exc.body).decode()}"


class Rejections:
    """Items Knock rejected inside a bulk operation: retried with backoff up to
    ``item_attempts`` attempts, then dead-lettered.

    A user whose last op was dead-lettered this way is remembered until one of its ops applies:
    its later ops get one attempt each, since a fresh backoff series per op would hold the
    partition's commits for (that user's ops) x (the whole series).

    Shared by the plans in flight; a set's ``add`` and ``discard`` are atomic under the
    interpreter lock, which is all the sharing it does.
    """

    def __init__(self, item_attempts: int) -> None:
        self._attempts = item_attempts
        self._users: set[str] = set()

    def __contains__(self, user: str) -> bool:
        return user in self._users

    def failed(
        self, items: list[Pending], user: str, why: str, blocked: set[str], out: Outcome
    ) -> None:
        """Knock rejected ``items`` of ``user`` for ``why``: each goes to ``out.retry`` or, past
        its attempts, ``out.dead``; ``user`` is blocked for the rest of the plan."""
        blocked.add(user)
        rejected_before = user in self._users
        for p in items:
            p.attempts += 1
            if p.attempts >= self._attempts or rejected_before:
                out.dead.append((p, "knock_rejected", why))
                if len(self._users) > REJECTED_KEPT:
                    self._users.clear()
                self._users.add(user)
            else:
                out.retry.append((p, min(MAX_RETRY_DELAY, 2.0**p.attempts)))

    def applied(self, user: str) -> None:
        """An op of ``user`` applied: its next rejection starts a fresh series."""
        self._users.discard(user)
