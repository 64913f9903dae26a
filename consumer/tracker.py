"""Offset watermarks: which Kafka position may be committed, given which offsets are done.

Invariant: **an unresolved offset is never committed.** A partition's commit position is one past
the highest tracked offset that is resolved together with every tracked offset before it, so a
restart re-reads everything not yet known to be applied and nothing else.

Only tracked offsets matter: gaps between them (compacted topics, transaction markers) are never
waited for. Each tracked position comes with a :class:`Handle` (as Jeffail/checkpoint's ``Track`` returns a
resolve function): whoever still owes work on the event holds it, and the last release resolves
the offset. The module knows nothing about Kafka, HTTP or time, and is not thread-safe: the
caller serialises access.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from .records import Partition, Record


class PartitionTracker:
    """Tracks the offsets of one partition and computes its commit position.

    Every operation is O(1) amortised: offsets wait in a deque in tracking order, and the head is
    popped while it is resolved.
    """

    __slots__ = (
        "_last_tracked",
        "_position",
        "_read_to",
        "_unresolved",
        "_window",
        "key",
        "retired",
    )

    def __init__(self, key: Partition = ("", -1)) -> None:
        self.key = key
        #: Set once the partition is dropped or restarted: this generation resolves nothing more.
        self.retired = False
        # Tracked offsets not yet folded into the position; some may be resolved already, waiting
        # for an earlier one. Membership in ``_unresolved`` tells which.
        self._window: deque[int] = deque()
        self._unresolved: set[int] = set()
        self._last_tracked: int | None = None
        self._position: int | None = None
        #: The consumer's position as last told (:meth:`read_to`).
        self._read_to: int | None = None

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

    def handle(self, offset: int) -> Handle:
        """:meth:`track` ``offset`` and return its :class:`Handle`, held once by the caller (the
        intake's per-record call: one instead of two)."""
        self.track(offset)
        return Handle(self, offset)

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
        resolved contiguously from the first tracked offset. Once the consumer's position is
        known (:meth:`read_to`), up to it: the first unresolved offset, else the position."""
        position, read_to = self._position, self._read_to
        if read_to is None:
            return position
        window = self._window
        if not window:
            return read_to if position is None or read_to > position else position
        if position is None:
            return None
        at = min(window[0], read_to)
        return at if at > position else position

    def read_to(self, offset: int) -> None:
        """The consumer's position: every offset below it was delivered (and tracked, if it
        owes anything) or is no record at all (a transaction marker, an aborted record). Why:
        those never come as records, so one past the last tracked offset never reaches the
        end of a transactional topic, and its commit (and lag) would stay short of it."""
        last = self._last_tracked if self._last_tracked is not None else -1
        if offset > last and (self._read_to is None or offset > self._read_to):
            self._read_to = offset

    def pending(self) -> int:
        """How many tracked offsets are not resolved yet."""
        return len(self._unresolved)

    def first_unresolved(self) -> int | None:
        """The earliest tracked offset not resolved yet (the head of the window: resolved
        heads are popped as they resolve), or ``None``."""
        return self._window[0] if self._window else None

    def accepts(self, offset: int) -> bool:
        """Whether :meth:`track` would take ``offset`` (it is past every tracked offset)."""
        return self._last_tracked is None or offset > self._last_tracked


class Handle:
    """One tracked position and the work still owed on it.

    Each stage that takes on work for the event :meth:`hold` s the handle and :meth:`release` s
    it when done (applied in Knock, or confirmed in the dead-letter topic); the last release
    resolves the offset. A handle of a retired generation (its partition was revoked, lost or
    rewound since) resolves nothing: the event will be read again.
    """

    __slots__ = ("_dead", "_owed", "_partition", "offset")

    def __init__(self, partition: PartitionTracker, offset: int) -> None:
        self._partition = partition
        self.offset = offset
        self._owed = 1  # the tracker's caller's own hold, released once it has handed the work on
        self._dead = False

    @property
    def partition(self) -> Partition:
        return self._partition.key

    @property
    def current(self) -> bool:
        """Whether this handle's generation still owns the partition."""
        return not self._partition.retired

    @property
    def events(self) -> int:
        """One event per tracked position."""
        return 1

    def record(self) -> Record | None:
        """Nothing of its own to dead-letter: the original is read back from its topic."""
        return None

    def hold(self) -> None:
        self._owed += 1

    def release(self) -> bool:
        """Drop one hold; returns True when that resolved the offset.

        :raises ValueError: when nothing is held (a stage released twice).
        """
        if self._owed <= 0:
            raise ValueError(f"{self!r} released more often than held")
        self._owed -= 1
        if self._owed == 0 and not self._partition.retired:
            self._partition.resolve(self.offset)
            return True
        return False

    def claim_dead_letter(self) -> bool:
        """True the first time it is asked for a current handle: one dead-letter record per
        event, and none for an event that will be read again (by another consumer, or by this
        one after a rewind)."""
        if self._dead or self._partition.retired:
            return False
        self._dead = True
        return True

    def __repr__(self) -> str:
        topic, partition = self._partition.key
        return f"Handle({topic}[{partition}]@{self.offset}, owed={self._owed})"


class OffsetTracker:
    """A :class:`PartitionTracker` per owned ``(topic, partition)``, plus what was committed.

    Ownership follows the consumer's assignment: :meth:`add` on assign, :meth:`drop` on revoke or
    loss. Results that arrive for a partition no longer owned are ignored, because the new owner
    re-reads from the last commit and a position computed here could skip its work.

    Each ownership is a *generation*: a :class:`Handle` from :meth:`track` resolves only while
    its generation is current, so a result from before a partition was dropped and owned again
    (or :meth:`restart` ed) can never resolve the same offset number tracked again since.
    """

    __slots__ = ("_committed", "_partitions")

    def __init__(self) -> None:
        self._partitions: dict[Partition, PartitionTracker] = {}
        self._committed: dict[Partition, int] = {}

    def add(self, tps: Iterable[Partition]) -> None:
        """Own these partitions. A partition already owned keeps its state."""
        for tp in tps:
            if tp not in self._partitions:
                self._partitions[tp] = PartitionTracker(tp)

    def drop(self, tps: Iterable[Partition]) -> None:
        """Forget these partitions and everything tracked on them; unknown ones are skipped."""
        for tp in tps:
            partition = self._partitions.pop(tp, None)
            if partition is not None:
                partition.retired = True
            self._committed.pop(tp, None)

    def owns(self, tp: Partition) -> bool:
        """Whether ``tp`` is currently owned (added and not dropped since)."""
        return tp in self._partitions

    def partition(self, tp: Partition) -> PartitionTracker | None:
        """The tracker of owned ``tp`` (``None``: not owned), for a caller that tracks many of
        its offsets in a row (:meth:`PartitionTracker.handle`); a :meth:`drop` or
        :meth:`restart` retires it."""
        return self._partitions.get(tp)

    def track(self, tp: Partition, offset: int) -> Handle:
        """Track a consumed offset; returns its handle, held once by the caller.

        :raises KeyError: if ``tp`` is not owned. Tracking is done at consume time, when the
            partition must be owned; silently re-creating a dropped one would hide a bug.
        :raises ValueError: as :meth:`PartitionTracker.track`.
        """
        try:
            partition = self._partitions[tp]
        except KeyError:
            raise KeyError(f"partition {tp} is not owned; add() it first") from None
        return partition.handle(offset)

    def owned(self) -> list[Partition]:
        """The owned partitions."""
        return list(self._partitions)

    def read_to(self, positions: Mapping[Partition, int]) -> None:
        """The consumer's ``positions`` of owned partitions, taken after every record
        delivered before them was tracked (see :meth:`PartitionTracker.read_to`); unowned
        ones are skipped."""
        for tp, offset in positions.items():
            partition = self._partitions.get(tp)
            if partition is not None:
                partition.read_to(offset)

    def accepts(self, tp: Partition, offset: int) -> bool:
        """Whether ``offset`` may be tracked on owned ``tp`` (False: the consumer rewound)."""
        return self._partitions[tp].accepts(offset)

    def restart(self, tp: Partition) -> None:
        """Start a new generation of owned ``tp``: what was tracked is forgotten, as on
        :meth:`drop` then :meth:`add`. For a consumer that rewound: the events will come again."""
        self.drop([tp])
        self.add([tp])

    def committable(self) -> dict[Partition, int]:
        """Commit positions of the owned partitions that advanced since :meth:`mark_committed`."""
        out: dict[Partition, int] = {}
        for tp, partition in self._partitions.items():
            position = partition.committable()
            if position is not None and position != self._committed.get(tp):
                out[tp] = position
        return out

    def mark_committed(self, positions: Mapping[Partition, int]) -> None:
        """Record that Kafka accepted these positions. Partitions no longer owned are skipped,
        since the commit may have raced with a revoke."""
        for tp, position in positions.items():
            if tp in self._partitions:
                self._committed[tp] = position

    def first_unresolved(self, tp: Partition) -> int | None:
        """The earliest unresolved offset tracked on ``tp`` (``None``: none, or not owned)."""
        partition = self._partitions.get(tp)
        return None if partition is None else partition.first_unresolved()

    def pending(self) -> int:
        """Unresolved offsets over all owned partitions (for backpressure)."""
        return sum(p.pending() for p in self._partitions.values())
