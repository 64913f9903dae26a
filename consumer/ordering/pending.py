"""The live intake's side of the event-time window: consumed ops numbered as they leave it,
merges repeating a ``messageId`` skipped (a backfill orders in :mod:`consumer.backfill.stage`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..config import Settings
from ..keying import KeyWatch
from ..metrics import Metrics
from ..ops import Identify, Merge, Op, entities
from ..plan import Pending
from ..records import Partition
from .queues import event_time
from .repeats import RecentIds
from .window import WindowOrder

__all__ = ["PendingOrder"]


class PendingOrder:
    """The intake's side of :class:`~.window.WindowOrder`: each consumed
    :class:`~consumer.plan.Pending` (its ``seq`` set as it leaves, so the planner's consume
    order is the event-time order), and merges repeating a ``messageId`` skipped.

    :param add: the planner's ``add``.
    :param next_seq: the loop's sequence of pending numbers.
    :param keys: the loop's watch of users seen on several partitions.
    :param pause, resume, may_resume: the loop's control of fetching; a window never pauses a
        partition (only a backfill's exact order does), so none is called today.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        add: Callable[[Pending], None],
        next_seq: Callable[[], int],
        keys: KeyWatch,
        metrics: Metrics,
        pause: Callable[[list[Partition]], None],
        resume: Callable[[list[Partition]], None],
        may_resume: Callable[[Partition], bool],
        clock: Callable[[], float],
    ) -> None:
        self._add, self._next_seq = add, next_seq
        self._keys = keys
        self._lateness = settings.sink.lateness
        self.order = WindowOrder(
            self._hand_on,
            lateness=self._lateness,
            split=keys.split,
            on_late=metrics.late_events.inc,
            clock=clock,
        )
        size = settings.sink.merge_ids
        self._merges = RecentIds(size, metrics.duplicate_merges.inc) if size else None

    def _hand_on(self, p: Pending) -> None:
        p.seq = self._next_seq()
        self._add(p)

    def repeats(self, op: Op, tp: Partition, offset: int) -> bool:
        """Whether ``op``, read at ``tp``/``offset``, is a merge repeating the ``messageId`` of
        one taken in from elsewhere (counted); if not, a merge is remembered."""
        return self._merges is not None and self._merges.repeats(op, tp, offset)

    def add(self, p: Pending, key: bytes | None = None) -> None:
        """Take in a consumed op (``p.source``: its tracker handle, held for it) of a record
        with Kafka ``key``."""
        op, h = p.op, p.source
        tp = h.partition
        cls = op.__class__
        if cls is Identify:
            users: tuple[str, ...] = (op.user_id,)  # type: ignore[union-attr]
        else:
            if cls is Merge:
                if self.repeats(op, tp, h.offset):
                    h.release()
                    return
                # The intake saw its target; a merge relates both.
                self._keys.seen(op.from_user_id, tp)  # type: ignore[union-attr]
            users = entities(op)
        order = self.order
        if order.as_read(tp, h.offset, users, key):
            p.seq = self._next_seq()
            self._add(p)
            return
        order.add(p, tp, h.offset, users, lambda: event_time(h.event_ts, h.kafka_ms, h.seen))

    def step(self, *, flush: bool = False) -> None:
        self.order.step(flush=flush)

    def drop(self, gone: Iterable[Partition]) -> None:
        self.order.drop(gone)
