"""Ops waiting for their event-time turn, per topic and partition, handed on as a k-way merge.

What both orders (:class:`~.exact.ExactOrder`, :class:`~.window.WindowOrder`) share: the
queues, what each partition has brought so far, and the merge itself. An op's turn comes once
no other partition of its topic can still bring an earlier one; each order adds its own reasons
a partition cannot (read to its end; the window passed). The merge is stable within a
partition, so it is exact when each partition is in event-time order. Ties go to the op read
first.

Ops touching one entity are handed on in the order they leave here, and an op waits while
anything it touches has an op waiting, so a merge (alias) keeps its place among the identifies
of both its users. An op older than one its user already had handed on (a straggler) is
counted (``on_late``) and goes on in arrival order.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from ..events import parse_timestamp
from ..ops import Op, entities
from ..records import Partition

__all__ = ["REMEMBERED", "OrderQueues", "Unit", "event_time", "users_of"]

#: Remembered per user: the event time of its last op handed on (bounded like the KeyWatch).
REMEMBERED = 100_000

_NEVER = float("-inf")


def event_time(raw: object, kafka_ms: int | None, seen: float) -> float:
    """Seconds since the epoch an event is ordered by: its raw ``timestamp`` (or
    ``originalTimestamp``, see :attr:`consumer.events.Event.raw_time`), else the Kafka
    record's timestamp, else ``seen`` (when it was read)."""
    parsed = parse_timestamp(raw) if raw is not None else None
    if parsed is not None:
        return parsed.timestamp()
    if kafka_ms:
        return kafka_ms / 1000
    return seen


def users_of(ops: Iterable[Op]) -> tuple[str, ...]:
    """Every entity the ops of one event touch."""
    return tuple(u for op in ops for u in entities(op))


class Unit:
    """One item waiting: its event time, arrival number, partition, entities, and when it was
    read (by the order's clock)."""

    __slots__ = ("at", "item", "n", "time", "tp", "users")

    def __init__(
        self, time: float, n: int, tp: Partition, users: tuple[str, ...], item: Any, at: float
    ) -> None:
        self.time, self.n, self.tp, self.users, self.item, self.at = time, n, tp, users, item, at


class OrderQueues:
    """The waiting ops and the merge; an order subclasses it and says when a partition can no
    longer bring an earlier op (:meth:`_ended`, :meth:`_turn`).

    :param release: called with each item as it leaves, in order.
    :param on_late: called for each straggler.
    :param clock: when an item is read (the window's second bound).
    """

    def __init__(
        self,
        release: Callable[[Any], None],
        *,
        on_late: Callable[[], object],
        clock: Callable[[], float],
    ) -> None:
        self._release = release
        self._on_late = on_late
        self._clock = clock
        self._n = 0
        # topic -> partition -> ops waiting, in the order read
        self._queues: dict[str, dict[Partition, deque[Unit]]] = {}
        self._waiting = 0
        #: entity -> ops waiting that touch it
        self._touched: Counter[str] = Counter()
        #: partition -> the latest event time of an op read there; topic -> the newest of them
        self._last: dict[Partition, float] = {}
        self._newest: dict[str, float] = {}
        #: topic -> its partitions the merge waits for
        self._parts: dict[str, list[Partition]] = {}
        #: partitions that can bring nothing more
        self._finished: set[Partition] = set()
        #: (topic, entity) -> the event time of its last op handed on
        self._handed: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        """Ops waiting."""
        return self._waiting

    def _note(self, tp: Partition, t: float) -> None:
        if t > self._last.get(tp, _NEVER):
            self._last[tp] = t
        if t > self._newest.get(tp[0], _NEVER):
            self._newest[tp[0]] = t

    def _late(self, users: tuple[str, ...], t: float, topic: str) -> bool:
        handed = self._handed
        return any(handed.get((topic, u), t) > t for u in users)

    def _queue(self, item: Any, tp: Partition, users: tuple[str, ...], t: float) -> None:
        self._n += 1
        unit = Unit(t, self._n, tp, users, item, self._clock())
        self._queues.setdefault(tp[0], {}).setdefault(tp, deque()).append(unit)
        self._waiting += 1
        for u in users:
            self._touched[u] += 1

    def _hand(self, users: tuple[str, ...], t: float, topic: str) -> None:
        handed = self._handed
        for u in users:
            key = (topic, u)
            if handed.get(key, _NEVER) < t:
                handed[key] = t
            handed.move_to_end(key)
        while len(handed) > REMEMBERED:
            handed.popitem(last=False)

    def _release_all(self, now: float, flush: bool) -> None:
        for topic, queues in self._queues.items():
            self._release_topic(topic, queues, now, flush)

    def _release_topic(
        self, topic: str, queues: dict[Partition, deque[Unit]], now: float, flush: bool
    ) -> None:
        """Hand on the ops of ``topic`` whose turn has come, earliest first (all of them, in
        the merge's order, with ``flush``)."""
        asked = False
        while True:
            best: Unit | None = None
            for q in queues.values():
                if q:
                    head = q[0]
                    if (
                        best is None
                        or head.time < best.time
                        or (head.time == best.time and head.n < best.n)
                    ):
                        best = head
            if best is None:
                return
            if not flush and not self._turn(topic, queues, best, now):
                if asked or not self._recheck(topic):
                    return
                asked = True
                if not self._turn(topic, queues, best, now):
                    return
            queues[best.tp].popleft()
            self._waiting -= 1
            for u in best.users:
                left = self._touched[u] - 1
                if left:
                    self._touched[u] = left
                else:
                    del self._touched[u]
            self._hand(best.users, best.time, topic)
            self._release(best.item)

    def _turn(
        self, topic: str, queues: dict[Partition, deque[Unit]], best: Unit, now: float
    ) -> bool:
        """Whether no partition of ``topic`` can still bring an op earlier than ``best``: each
        other one has an op waiting, has brought one at or after its time, or has ended."""
        t = best.time
        for tp in self._parts.get(topic, ()):
            if tp == best.tp or tp in self._finished:
                continue
            q = queues.get(tp)
            if q or self._last.get(tp, _NEVER) >= t:
                continue
            if self._ended(tp):
                self._finished.add(tp)
                continue
            return False
        return True

    def _ended(self, tp: Partition) -> bool:
        """Whether ``tp`` can bring nothing more (then it stays finished)."""
        return False

    def _recheck(self, topic: str) -> bool:
        """Called once per release round when an op's turn has not come: learn more of the
        partitions of ``topic`` (True: ask :meth:`_turn` again)."""
        return False

    def _drop_queues(self, tp: Partition) -> list[Any]:
        """Forget what waits from ``tp`` and what it brought; return its items."""
        out: list[Any] = []
        queues = self._queues.get(tp[0], {})
        for unit in queues.pop(tp, ()):
            out.append(unit.item)
            self._waiting -= 1
            for u in unit.users:
                self._touched[u] -= 1
                if self._touched[u] <= 0:
                    del self._touched[u]
        self._last.pop(tp, None)
        return out
