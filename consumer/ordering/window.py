"""A live sink's event-time window (``run``), for users whose events come from several
partitions of a topic.

Only ops of users seen on more than one partition of a topic
(:class:`~consumer.keying.KeyWatch`), or of anything an op waiting here touches, wait; every
other op goes on at once, so a topic keyed by user pays nothing. A waiting op goes on as soon
as the merge's condition holds among the partitions seen so far, or once the topic has read an
event ``lateness`` seconds newer, or ``lateness`` seconds after it was read, whichever comes
first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ..records import Partition
from .queues import OrderQueues, Unit

__all__ = ["WindowOrder"]


class WindowOrder(OrderQueues):
    """Holds a live sink's ops of split users for at most ``lateness`` seconds.

    :param release: called with each item as it leaves, in order.
    :param lateness: seconds an op waits at most (0: nothing waits, arrival order).
    :param split: whether a user has been seen on more than one partition of a topic.
    """

    exact = False

    def __init__(
        self,
        release: Callable[[Any], None],
        *,
        lateness: float = 5.0,
        split: Callable[[str, str], bool] = lambda user, topic: False,
        on_late: Callable[[], object] = lambda: None,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(release, on_late=on_late, clock=clock)
        self._lateness = lateness
        self._split = split
        #: topics where a user was seen on several partitions (their times are read)
        self._unkeyed: set[str] = set()
        self._flushed = False

    def keyed(self, topic: str) -> bool:
        """Always False: only a backfill judges whether a topic is keyed by user."""
        return False

    def as_read(
        self, tp: Partition, offset: int, users: tuple[str, ...], key: bytes | None
    ) -> bool:
        """Whether the ops of a record of ``tp`` touching ``users`` go on as read, without
        waiting here nor their time being read: while no user of its topic has been seen on
        several partitions, nor any of ``users`` now, or once the sink is stopping."""
        return self._goes_on(tp[0], users)

    def _goes_on(self, topic: str, users: tuple[str, ...]) -> bool:
        if self._flushed:
            return True  # stopping: nothing waits any more
        if topic in self._unkeyed:
            return False
        if self._lateness > 0:
            split = self._split
            for u in users:
                if split(u, topic):
                    return False
        return True

    def add(
        self,
        item: Any,
        tp: Partition,
        offset: int,
        users: tuple[str, ...],
        time: Callable[[], float],
    ) -> None:
        """Take in one item read at ``tp``, touching ``users``; ``time`` gives its event time
        (asked only when it waits or may be late)."""
        if self._goes_on(tp[0], users):
            self._release(item)
            return
        # Its topic is unkeyed, or one of its users split.
        topic = tp[0]
        touched = self._touched
        split = self._lateness > 0 and any(self._split(u, topic) for u in users)
        if split:
            self._unkeyed.add(topic)
        t = time()
        self._note(tp, t)
        parts = self._parts.setdefault(topic, [])
        if tp not in parts:
            parts.append(tp)
        waits = any(touched[u] for u in users) if touched else False
        if self._late(users, t, topic):
            self._on_late()
            if not waits:
                self._hand(users, t, topic)
                self._release(item)
                return
        if split or waits:
            self._queue(item, tp, users, t)
        else:
            self._hand(users, t, topic)
            self._release(item)

    def step(self, *, flush: bool = False) -> None:
        """Hand on every op whose turn has come. ``flush`` (the sink stops): every op waiting
        goes on now, in the order so far, and what comes later goes on as read."""
        if flush:
            self._flushed = True
        if not self._waiting:
            return
        self._release_all(self._clock(), flush)

    def drop(self, gone: Iterable[Partition]) -> list[Any]:
        """Forget the partitions ``gone`` (revoked, lost, rewound): their waiting items are
        dropped and returned; the others' turns no longer wait for them."""
        out: list[Any] = []
        for tp in gone:
            out.extend(self._drop_queues(tp))
            parts = self._parts.get(tp[0], ())
            if tp in parts:
                self._parts[tp[0]].remove(tp)
        return out

    def _turn(
        self, topic: str, queues: dict[Partition, deque[Unit]], best: Unit, now: float
    ) -> bool:
        late = self._lateness
        if best.time + late <= self._newest.get(topic, best.time) or now - best.at >= late:
            return True
        return super()._turn(topic, queues, best, now)
