"""Repeated merges: an alias that arrives twice with one ``messageId`` is merged once.

Segment retries whole batches, so an alias can arrive twice with one ``messageId``. A merge is
not idempotent (``a`` merged into ``b``, ``a`` identified again, the repeat merges the new
``a`` away), so :class:`RecentIds` remembers the ``messageId`` of the last merges taken in,
with their position: the same id at another position is a duplicate and is skipped; at the
same position it is that event read again (a rewind, a revoke) and goes on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from ..ops import Merge, Op
from ..records import Partition

__all__ = ["RecentIds"]


class RecentIds:
    """The ``messageId`` of the last ``size`` merges taken in, with the position each came from."""

    def __init__(self, size: int, on_repeat: Callable[[], object] = lambda: None) -> None:
        self._size = size
        self._on_repeat = on_repeat
        self._ids: OrderedDict[str, tuple[Partition, int]] = OrderedDict()

    def repeats(self, op: Op, tp: Partition, offset: int) -> bool:
        """Whether ``op``, read at ``tp``/``offset``, is a merge repeating the ``messageId`` of
        one taken in from elsewhere (``on_repeat`` is called for it); if not, a merge is
        remembered. The one check both the live order and a backfill make."""
        if op.__class__ is not Merge or not self.duplicate(op.message_id, tp, offset):
            return False
        self._on_repeat()
        return True

    def duplicate(self, message_id: str | None, tp: Partition, offset: int) -> bool:
        """Whether a merge with ``message_id`` at ``tp``/``offset`` repeats one taken in from
        elsewhere; if not, it is remembered."""
        if message_id is None or self._size <= 0:
            return False
        ids = self._ids
        where = ids.get(message_id)
        if where is not None:
            ids.move_to_end(message_id)
            return where != (tp, offset)
        ids[message_id] = (tp, offset)
        if len(ids) > self._size:
            ids.popitem(last=False)
        return False
