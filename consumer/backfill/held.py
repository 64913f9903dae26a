"""A held user: one user's folded state during a backfill (:class:`Held`), and the offset
carrier of its update in the planner (:class:`HeldHandle`).

Held per event, a backfill would cost a ``Pending``, a tracker handle and the event's own dict
(about 1.1 KB an event); a :class:`Held` is one dict of properties per *user*, folded as each
identify is read, and the earliest offset of the user in each partition where it holds events
(see :mod:`consumer.backfill.backlog`). No I/O, no clock, not thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

import orjson

from ..records import Partition, Record


class Freezable(Protocol):
    """What a handle asks of the backlog that made it (:class:`~.backlog.Backlog`): whether
    the backfill stopped, so that a late outcome resolves nothing. A protocol, not the class:
    the backlog builds handles, and a handle importing it back would tie the two in a circle."""

    @property
    def frozen(self) -> bool: ...


#: Dead-letter header of a rejected held user: how many events its folded update stands for.
H_FOLDED = "knock-sink.folded.events"
#: Estimated bytes of a held user in memory: its properties as Python objects cost about
#: 4.5 times their JSON, plus the rest (a user of one partition: the ``Held``, its offsets
#: dict, its entry in the users dict and in its partition's offsets deque). A spilled user
#: takes nothing in memory.
PY_PER_JSON_BYTE: Final = 4.5
PER_USER: Final = 400
#: Bytes of a packed user (see :meth:`Backlog.compact`) beyond its JSON: the ``bytes`` header.
PER_BYTES: Final = 33


class Held:
    """One user's folded identify and where its events came from.

    :ivar props: its folded properties; their JSON while packed (:meth:`Backlog.compact`).
    :ivar first: ``{partition: earliest offset}`` of the events folded in.
    :ivar events: how many events were folded in (for the applied count).
    :ivar seen, kafka_ms, event_ts: its first event's freshness stamps (see
        :class:`~consumer.stage.Committable`); none for a state read back from the spill file.
    """

    __slots__ = (
        "done",
        "event_ts",
        "events",
        "first",
        "kafka_ms",
        "owned",
        "props",
        "riders",
        "seen",
        "user_id",
    )

    def __init__(
        self,
        user_id: str,
        props: dict[str, Any],
        tp: Partition,
        offset: int,
        seen: float = 0.0,
        kafka_ms: int | None = None,
        event_ts: object = None,
    ) -> None:
        self.user_id = user_id
        self.seen, self.kafka_ms, self.event_ts = seen, kafka_ms, event_ts
        self.props = props
        self.first: dict[Partition, int] = {tp: offset}
        self.events = 1
        self.done = False
        #: Whether ``props`` is our own copy (the first event's dict is the mapper's until then).
        self.owned = False
        #: Later states of the user folded into this one when read back: applied with it.
        self.riders: list[Held] | None = None

    @classmethod
    def restored(
        cls, user_id: str, props: dict[str, Any], first: dict[Partition, int], events: int
    ) -> Held:
        """A user's row read back from the spill file (its props are our own copy)."""
        held = cls.__new__(cls)
        held.user_id, held.props, held.first, held.events = user_id, props, first, events
        held.done, held.owned, held.riders = False, True, None
        held.seen, held.kafka_ms, held.event_ts = 0.0, None, None
        return held

    def absorb(self, later: Held, fold: Callable[[dict[str, Any], dict[str, Any]], None]) -> None:
        """Fold ``later`` (a newer state of the same user) into this one: one update for both."""
        if not self.owned:
            self.props = dict(self.props)
            self.owned = True
        fold(self.props, later.props)
        self.events += later.events
        for tp, offset in later.first.items():
            self.first.setdefault(tp, offset)  # this one is older: its offsets come first
        self.riders = [*(self.riders or ()), later, *(later.riders or ())]

    def record(self) -> Record | None:
        """What to dead-letter when Knock rejects the folded update: ``None`` when it holds one
        event (the dead letters read that original back from its topic, as for any event);
        else one identify carrying the folded update (Knock's properties, as sent), at the
        user's earliest offset, with a header saying how many events it folds (the originals
        are in the source topic, before the commit)."""
        if self.events == 1:
            return None
        (topic, partition), offset = min(self.first.items(), key=lambda kv: kv[1])
        value = orjson.dumps({"type": "identify", "userId": self.user_id, "traits": self.props})
        return Record(
            topic,
            partition,
            offset,
            key=self.user_id.encode(),
            value=value,
            headers=[(H_FOLDED, str(self.events).encode())],
        )


def unpacked(held: Held) -> dict[str, Any]:
    """``held``'s properties as a dict: decoded back first if :meth:`Backlog.compact` packed
    them. Everything the backlog hands out goes through here."""
    props = held.props
    if props.__class__ is bytes:  # type: ignore[comparison-overlap]  # packed: see Backlog.compact
        props = held.props = orjson.loads(props)
        held.owned = True
    return props


def size(props: dict[str, Any] | bytes) -> float:
    """Estimated bytes of a held user in memory with these properties."""
    if props.__class__ is bytes:
        return len(props) + PER_BYTES + PER_USER
    return len(orjson.dumps(props)) * PY_PER_JSON_BYTE + PER_USER


class HeldHandle:
    """The :class:`~consumer.stage.Committable` of a held user's update: what an
    :class:`~consumer.handles.EventHandle` is to one event, for all of a user's folded events.
    Released as often as held; the last release marks the user applied, so its offsets stop
    holding back the commit."""

    __slots__ = ("_backlog", "_dead", "_owed", "held")

    def __init__(self, backlog: Freezable, held: Held) -> None:
        self.held = held
        self._backlog = backlog
        self._owed = 1
        self._dead = False

    @property
    def partition(self) -> Partition:
        return min(self.held.first.items(), key=lambda kv: kv[1])[0]

    @property
    def offset(self) -> int:
        return min(self.held.first.values())

    @property
    def current(self) -> bool:
        return not self._backlog.frozen

    @property
    def events(self) -> int:
        return self.held.events

    @property
    def seen(self) -> float:
        return self.held.seen

    @property
    def kafka_ms(self) -> int | None:
        return self.held.kafka_ms

    @property
    def event_ts(self) -> object:
        return self.held.event_ts

    def record(self) -> Record | None:
        """See :meth:`Held.record`."""
        return self.held.record()

    def hold(self) -> None:
        self._owed += 1

    def release(self) -> bool:
        if self._owed <= 0:
            raise ValueError(f"{self!r} released more often than held")
        self._owed -= 1
        if self._owed == 0:
            # Applied: only the offsets are still needed, and ``_owed`` keeps an applied user
            # until every earlier one of its partition is applied too (while the rest of the
            # backlog is sent, that would hold every sent user's properties).
            for held in (self.held, *(self.held.riders or ())):
                held.done = True
                held.props = None
            self.held.riders = None
            return True
        return False

    def claim_dead_letter(self) -> bool:
        if self._dead or self._backlog.frozen:
            return False
        self._dead = True
        return True

    def __repr__(self) -> str:
        return f"HeldHandle({self.held.user_id}, events={self.held.events}, owed={self._owed})"
