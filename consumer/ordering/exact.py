"""A backfill's exact event-time order across the partitions of a topic (``--until-end``).

Every op waits until no partition of its topic can still bring an earlier one: each of them has
a later op waiting, has already given one at or after its time, or is read to its end target.
A partition far ahead of the others is paused until they catch up, so what waits here stays
bounded.

A topic keyed by user does not need it, and reading its partitions one at a time lets a
backfill send the users of a finished partition while it reads the next: so a topic whose first
:data:`KEYED_AFTER` records each carry their user's id as key counts as keyed, and its ops go
on as read.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from ..keying import keyed_by
from ..records import Partition
from .queues import OrderQueues

__all__ = ["KEYED_AFTER", "ExactOrder"]

log = logging.getLogger("knock_sink.ordering")

#: Records whose Kafka key is the id of the user their ops touch, in a row, after which a topic
#: counts as keyed by user (Kafka's partitioner sends one key to one partition, so one user's
#: events are in one partition, in order) and its ops go on as read. One record with another
#: key, or none (Segment's round robin), and the topic is ordered by event time.
KEYED_AFTER = 1_000


class ExactOrder(OrderQueues):
    """Holds a backfill's ops until no partition of their topic can bring an earlier one.

    :param release: called with each item as it leaves, in order.
    :param ends: each partition's end target (one past the last offset to read).
    :param positions: the consumer's position of partitions (one past the last record handed
        over), to find those read to their end when their last events had no op.
    :param limit: ops waiting before partitions far ahead are paused.
    :param pause, resume: pause and resume fetching partitions (the loop's).
    :param may_resume: whether a partition this paused may be resumed (not held by another stage).
    :param on_unkeyed: called with a topic when it is found not keyed by user (at its first
        record without its user's id as key, among its first :data:`KEYED_AFTER`); it may raise.
    """

    exact = True

    def __init__(
        self,
        release: Callable[[Any], None],
        *,
        ends: dict[Partition, int],
        positions: Callable[[list[Partition]], dict[Partition, int]] = lambda tps: {},
        limit: int = 10_000,
        pause: Callable[[list[Partition]], None] = lambda tps: None,
        resume: Callable[[list[Partition]], None] = lambda tps: None,
        may_resume: Callable[[Partition], bool] = lambda tp: True,
        on_late: Callable[[], object] = lambda: None,
        on_unkeyed: Callable[[str], object] = lambda topic: None,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(release, on_late=on_late, clock=clock)
        self._on_unkeyed = on_unkeyed
        self._ends = ends
        self._positions = positions
        self._limit = limit
        self._pause, self._resume, self._may_resume = pause, resume, may_resume
        #: partition -> one past the last offset read there
        self._read: dict[Partition, int] = {}
        self._paused: set[Partition] = set()
        #: topic -> keyed by user (absent: not judged yet), records judged so far
        self._keyed: dict[str, bool] = {}
        self._judged: Counter[str] = Counter()
        self._warned: set[str] = set()
        for tp in ends:
            self._parts.setdefault(tp[0], []).append(tp)

    def keyed(self, topic: str) -> bool:
        """Whether ``topic`` counts as keyed by user (see :data:`KEYED_AFTER`)."""
        return self._keyed.get(topic) is True

    def as_read(
        self, tp: Partition, offset: int, users: tuple[str, ...], key: bytes | None
    ) -> bool:
        """Whether the ops of the record at ``tp``/``offset``, touching ``users``, with Kafka
        ``key``, go on as read: once its topic counts as keyed by user. This record is judged
        too (records whose ops touch no user, tenants and objects, are not). Ask once per
        record, before :meth:`add`."""
        self._judge(tp, offset, users, key)
        return self._keyed.get(tp[0]) is True

    def add(
        self,
        item: Any,
        tp: Partition,
        offset: int,
        users: tuple[str, ...],
        time: Callable[[], float],
    ) -> None:
        """Take in one item read at ``tp``/``offset``, touching ``users``; ``time`` gives its
        event time. It goes on at once if its topic counts as keyed, else waits its turn."""
        if self._keyed.get(tp[0]) is True:
            self._release(item)
            return
        t = time()
        self._read[tp] = max(self._read.get(tp, 0), offset + 1)
        self._note(tp, t)
        if self._late(users, t, tp[0]):
            self._on_late()
        self._queue(item, tp, users, t)

    def step(self, *, flush: bool = False) -> None:
        """Hand on every op whose turn has come; pause partitions far ahead and resume them
        once the others caught up. ``flush`` changes nothing: a backfill's order stays exact."""
        if not self._waiting:
            if self._paused:
                self._resume_all()
            return
        self._release_all(self._clock(), False)
        self._balance()

    def drop(self, gone: Iterable[Partition]) -> list[Any]:
        """Forget the partitions ``gone`` (revoked, lost, rewound): their waiting items are
        dropped and returned."""
        out: list[Any] = []
        for tp in gone:
            out.extend(self._drop_queues(tp))
            self._read.pop(tp, None)
            self._paused.discard(tp)
        return out

    # -- keyed or not ------------------------------------------------------------------------

    def _judge(self, tp: Partition, offset: int, users: tuple[str, ...], key: bytes | None) -> None:
        """One more record of ``tp``'s topic judged for :data:`KEYED_AFTER`; once it counts as
        keyed, what waited of it goes on, in the order so far."""
        topic = tp[0]
        verdict = self._keyed.get(topic)
        if verdict is False:
            return
        people = (
            users if len(users) == 1 and "/" not in users[0] else [u for u in users if "/" not in u]
        )
        if not people:
            return
        matches = keyed_by(key, people)
        if verdict:
            if not matches and topic not in self._warned:
                self._warned.add(topic)
                log.warning(
                    "topic %s was taken as keyed by user (its first %d records carry their "
                    "user's id as key), but %s[%d]@%d does not: users whose events are on "
                    "several partitions are applied in the order read",
                    topic,
                    KEYED_AFTER,
                    tp[0],
                    tp[1],
                    offset,
                )
            return
        if not matches:
            self._on_unkeyed(topic)
            self._keyed[topic] = False
            log.info(
                "topic %s is not keyed by user (%s[%d]@%d): a backfill applies each user's "
                "events in event-time order across partitions",
                topic,
                tp[0],
                tp[1],
                offset,
            )
            return
        self._judged[topic] += 1
        if self._judged[topic] < KEYED_AFTER:
            return
        self._keyed[topic] = True
        log.info("topic %s is keyed by user: a backfill reads its partitions one at a time", topic)
        queues = self._queues.get(topic)
        if queues:  # what waited goes on, in the order so far
            self._release_topic(topic, queues, self._clock(), flush=True)

    # -- read to the end -----------------------------------------------------------------------

    def _ended(self, tp: Partition) -> bool:
        return self._read.get(tp, 0) >= self._ends[tp]

    def _recheck(self, topic: str) -> bool:
        # Partitions whose last records had no op: the consumer's position says whether they
        # are read to their end.
        open_ = [tp for tp in self._parts.get(topic, ()) if tp not in self._finished]
        if open_:
            for tp, position in self._positions(open_).items():
                if position >= self._ends.get(tp, position + 1):
                    self._finished.add(tp)
        return True

    # -- far ahead -------------------------------------------------------------------------------

    def _balance(self) -> None:
        """Pause a partition holding more than its share of the ops waiting here (it is ahead:
        the others must bring theirs first); resume it at half its share. A whole pause of the
        consumer resumes every partition, so the pause is said again while it holds."""
        for topic, queues in self._queues.items():
            share = max(1, self._limit // max(1, len(self._parts.get(topic, ()))))
            for tp, q in queues.items():
                if len(q) > share:
                    self._paused.add(tp)
                    self._pause([tp])
                elif tp in self._paused and len(q) <= share // 2:
                    self._paused.discard(tp)
                    if self._may_resume(tp):
                        self._resume([tp])

    def _resume_all(self) -> None:
        back = [tp for tp in self._paused if self._may_resume(tp)]
        self._paused.clear()
        if back:
            self._resume(back)
