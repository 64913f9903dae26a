"""One constructor for both event-time orders: exact (a backfill) or a window (``run``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..records import Partition
from .exact import ExactOrder
from .window import WindowOrder

__all__ = ["EventOrder"]


class EventOrder:
    """Holds ops until their event-time order is known: an :class:`~.exact.ExactOrder` when
    ``ends`` is given, else a :class:`~.window.WindowOrder`; every call goes to that one.

    :param release: called with each item as it leaves, in order.
    :param ends: exact mode (a backfill): each partition's end target; ``None``: window mode.
    :param lateness: window mode: seconds an op waits at most (0: nothing waits, arrival order).
    :param split: window mode: whether a user has been seen on more than one partition of a topic.
    :param positions: exact mode: the consumer's position of partitions (one past the last
        record handed over), to find those read to their end when their last events had no op.
    :param limit: exact mode: ops waiting before partitions far ahead are paused.
    :param pause, resume: exact mode: pause and resume fetching partitions (the loop's).
    :param on_unkeyed: exact mode: called with a topic when it is found not keyed by user.
    :param may_resume: exact mode: whether a partition this paused may be resumed (not held by
        another stage).
    """

    def __init__(
        self,
        release: Callable[[Any], None],
        *,
        ends: dict[Partition, int] | None = None,
        lateness: float = 5.0,
        split: Callable[[str, str], bool] = lambda user, topic: False,
        positions: Callable[[list[Partition]], dict[Partition, int]] = lambda tps: {},
        limit: int = 10_000,
        pause: Callable[[list[Partition]], None] = lambda tps: None,
        resume: Callable[[list[Partition]], None] = lambda tps: None,
        may_resume: Callable[[Partition], bool] = lambda tp: True,
        on_late: Callable[[], object] = lambda: None,
        on_unkeyed: Callable[[str], object] = lambda topic: None,
        clock: Callable[[], float],
    ) -> None:
        self._order: ExactOrder | WindowOrder
        if ends is not None:
            self._order = ExactOrder(
                release,
                ends=ends,
                positions=positions,
                limit=limit,
                pause=pause,
                resume=resume,
                may_resume=may_resume,
                on_late=on_late,
                on_unkeyed=on_unkeyed,
                clock=clock,
            )
        else:
            self._order = WindowOrder(
                release, lateness=lateness, split=split, on_late=on_late, clock=clock
            )

    @property
    def exact(self) -> bool:
        return self._order.exact

    def __len__(self) -> int:
        """Ops waiting."""
        return len(self._order)

    def keyed(self, topic: str) -> bool:
        """Exact mode: whether ``topic`` counts as keyed by user (see
        :data:`~.exact.KEYED_AFTER`)."""
        return self._order.keyed(topic)

    def as_read(
        self, tp: Partition, offset: int, users: tuple[str, ...], key: bytes | None
    ) -> bool:
        """Whether the ops of the record at ``tp``/``offset``, touching ``users``, with Kafka
        ``key``, go on as read, without waiting here nor their time being read (ask once per
        record, before :meth:`add`; see each order's ``as_read``)."""
        return self._order.as_read(tp, offset, users, key)

    def add(
        self,
        item: Any,
        tp: Partition,
        offset: int,
        users: tuple[str, ...],
        time: Callable[[], float],
    ) -> None:
        """Take in one item (an op, or an event's ops) read at ``tp``/``offset``, touching
        ``users`` (entities); ``time`` gives its event time (asked only when it matters)."""
        self._order.add(item, tp, offset, users, time)

    def step(self, *, flush: bool = False) -> None:
        """Hand on every op whose turn has come. ``flush`` (window mode: the sink stops): every
        op waiting goes on now, in the order so far."""
        self._order.step(flush=flush)

    def drop(self, gone: Iterable[Partition]) -> list[Any]:
        """Forget the partitions ``gone`` (revoked, lost, rewound): their waiting items are
        dropped and returned."""
        return self._order.drop(gone)
