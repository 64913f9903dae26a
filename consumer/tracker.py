"""Offset watermarks: which Kafka position may be committed, given which offsets are done.

Invariant: **an unresolved offset is never committed.** A partition's commit position is one past
the highest tracked offset that is resolved together with every tracked offset before it, so a
restart re-reads everything not yet known to be applied and nothing else.

Only tracked offsets matter: gaps between them (compacted topics, transaction markers) are never
waited for. The module knows nothing about Kafka, HTTP or time, and is not thread-safe: the
caller serialises access.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

TopicPartition = tuple[str, int]


class PartitionTracker:
    """Tracks the offsets of one partition and computes its commit position.

    Every operation is O(1) amortised: offsets wait in a deque in tracking order, and the head is
    popped while it is resolved.
    """

    __slots__ = ("_window", "_unresolved", "_last_tracked", "_position")

    def __init__(self) -> None:
        # Tracked offsets not yet folded into the position; some may be resolved already, waiting
        # for an earlier one. Membership in ``_unresolved`` tells which.
        self._window: deque[int] = deque()
        self._unresolved: set[int] = set()
        self._last_tracked: int | None = None
        self._position: int | None = None

    def track(self, offset: int) -> None:
        """Start tracking ``offset`` as unresolved.

        :raises ValueError: if ``offset`` is not greater than every offset tracked before: a
            repeated or rewound offset would let the position run ahead of unapplied work.
        """
        if self._last_tracked is not None and offset <= self._last_tracked:
            raise ValueError(f"offset {offset} tracked after {self._last_tracked}")
        self._window.append(offset)
        self._unresolved.add(offset)
        self._last_tracked = offset

    def resolve(self, offset: int) -> None:
        """Mark a tracked offset as done; the position advances once everything before it is done.

        :raises ValueError: if ``offset`` is not tracked, or is already resolved.
        """
        try:
            self._unresolved.remove(offset)
        except KeyError:
            raise ValueError(f"offset {offset} is not tracked or already resolved") from None
        window = self._window
        while window and window[0] not in self._unresolved:
            self._position = window.popleft() + 1

    def committable(self) -> int | None:
        """The Kafka commit position (next offset to read), or ``None`` if nothing was ever
        resolved contiguously from the first tracked offset."""
        return self._position

    def pending(self) -> int:
        """How many tracked offsets are not resolved yet."""
        return len(self._unresolved)

    def accepts(self, offset: int) -> bool:
        """Whether :meth:`track` would take ``offset`` (it is past every tracked offset)."""
        return self._last_tracked is None or offset > self._last_tracked


class OffsetTracker:
    """A :class:`PartitionTracker` per owned ``(topic, partition)``, plus what was committed.

    Ownership follows the consumer's assignment: :meth:`add` on assign, :meth:`drop` on revoke or
    loss. Results that arrive for a partition no longer owned are ignored, because the new owner
    re-reads from the last commit and a position computed here could skip its work.

    Each ownership is a *generation*: :meth:`track` returns it, and :meth:`resolve` given a
    generation that is no longer current changes nothing. So a result from before a partition
    was dropped and owned again (or :meth:`restart` ed) can never resolve the same offset number
    tracked again since.
    """

    __slots__ = ("_partitions", "_committed")

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, PartitionTracker] = {}
        self._committed: dict[TopicPartition, int] = {}

    def add(self, tps: Iterable[TopicPartition]) -> None:
        """Own these partitions. A partition already owned keeps its state."""
        for tp in tps:
            if tp not in self._partitions:
                self._partitions[tp] = PartitionTracker()

    def drop(self, tps: Iterable[TopicPartition]) -> None:
        """Forget these partitions and everything tracked on them; unknown ones are skipped."""
        for tp in tps:
            self._partitions.pop(tp, None)
            self._committed.pop(tp, None)

    def owns(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` is currently owned (added and not dropped since)."""
        return tp in self._partitions

    def track(self, tp: TopicPartition, offset: int) -> PartitionTracker:
        """Track a consumed offset; returns the partition's current generation.

        :raises KeyError: if ``tp`` is not owned. Tracking is done at consume time, when the
            partition must be owned; silently re-creating a dropped one would hide a bug.
        :raises ValueError: as :meth:`PartitionTracker.track`.
        """
        try:
            partition = self._partitions[tp]
        except KeyError:
            raise KeyError(f"partition {tp} is not owned; add() it first") from None
        partition.track(offset)
        return partition

    def accepts(self, tp: TopicPartition, offset: int) -> bool:
        """Whether ``offset`` may be tracked on owned ``tp`` (False: the consumer rewound)."""
        return self._partitions[tp].accepts(offset)

    def restart(self, tp: TopicPartition) -> None:
        """Start a new generation of owned ``tp``: what was tracked is forgotten, as on
        :meth:`drop` then :meth:`add`. For a consumer that rewound: the events will come again."""
        self._partitions[tp] = PartitionTracker()
        self._committed.pop(tp, None)

    def resolve(
        self, tp: TopicPartition, offset: int, generation: PartitionTracker | None = None
    ) -> bool:
        """Mark an offset done. Returns ``False``, changing nothing, if ``tp`` is not owned or
        ``generation`` (from :meth:`track`) is not its current one.

        :raises ValueError: as :meth:`PartitionTracker.resolve`, for owned partitions only.
        """
        partition = self._partitions.get(tp)
        if partition is None or (generation is not None and partition is not generation):
            return False
        partition.resolve(offset)
        return True

    def current(self, tp: TopicPartition, generation: PartitionTracker) -> bool:
        """Whether ``generation`` is ``tp``'s current one (owned, not dropped or restarted)."""
        return self._partitions.get(tp) is generation

    def committable(self) -> dict[TopicPartition, int]:
        """Commit positions of the owned partitions that advanced since :meth:`mark_committed`."""
        out: dict[TopicPartition, int] = {}
        for tp, partition in self._partitions.items():
            position = partition.committable()
            if position is not None and position != self._committed.get(tp):
                out[tp] = position
        return out

    def mark_committed(self, positions: Mapping[TopicPartition, int]) -> None:
        """Record that Kafka accepted these positions. Partitions no longer owned are skipped,
        since the commit may have raced with a revoke."""
        for tp, position in positions.items():
            if tp in self._partitions:
                self._committed[tp] = position

    def pending(self) -> int:
        """Unresolved offsets over all owned partitions (for backpressure)."""
        return sum(p.pending() for p in self._partitions.values())

    def pending_of(self, tp: TopicPartition) -> int:
        """Unresolved offsets of one partition; 0 if it is not owned."""
        partition = self._partitions.get(tp)
        return 0 if partition is None else partition.pending()
