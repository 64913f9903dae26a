"""An event's offset carrier: a tracker :class:`~consumer.tracker.Handle` with the freshness
stamps beside it.

The tracker knows nothing of time; the freshness metrics (:mod:`consumer.freshness`) and the
event-time order (:mod:`consumer.ordering`) want to know when an event was read and what its
clocks said. So the stamps ride on a subclass made here, by the stages that read records: one
object per event, as before, and the tracker's own handle stays clock-free.
"""

from __future__ import annotations

from .tracker import Handle, PartitionTracker


class EventHandle(Handle):
    """One tracked event (a :class:`~consumer.stage.Committable`) and its stamps.

    :ivar seen: wall time the sink read it (0.0 until stamped: the freshness metrics leave it
        out).
    :ivar kafka_ms: the Kafka record's timestamp (ms), or ``None``.
    :ivar event_ts: the event's raw ``timestamp`` (else ``originalTimestamp``).
    """

    __slots__ = ("event_ts", "kafka_ms", "seen")

    def __init__(self, partition: PartitionTracker, offset: int) -> None:
        super().__init__(partition, offset)
        self.seen = 0.0
        self.kafka_ms: int | None = None
        self.event_ts: object = None

    @classmethod
    def track(cls, partition: PartitionTracker, offset: int) -> EventHandle:
        """Track ``offset`` on ``partition`` and return its handle, held once by the caller.

        :raises ValueError: as :meth:`~consumer.tracker.PartitionTracker.track`.
        """
        partition.track(offset)
        return cls(partition, offset)

    def stamp(self, seen: float, kafka_ms: int | None, event_ts: object) -> None:
        self.seen, self.kafka_ms, self.event_ts = seen, kafka_ms, event_ts
