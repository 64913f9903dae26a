"""What the Kafka edge hands the loop, and the contract of that edge.

The loop never sees a ``confluent_kafka.Message``: :mod:`consumer.source` turns each one into a
:class:`Record` as it is consumed, and :mod:`consumer.deadletter` writes records back out. Only
the edge modules import confluent-kafka (``tests/test_layout.py`` lists them), so the loop runs
unchanged on the in-memory edge of the tests (``tests/memory.py``), as Arroyo's local backend
stands in for Kafka.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

#: A topic's partition: ``(topic, partition)``.
Partition = tuple[str, int]
#: A consumed position: ``(topic, partition, offset)``.
Position = tuple[str, int, int]
Headers = list[tuple[str, bytes]]
#: Called with the partitions assigned, revoked or lost, on the loop's thread.
RebalanceCallback = Callable[[list[Partition]], None]


class Record:
    """One consumed Kafka message: where it sits, its key, value, headers and timestamp (ms
    since the epoch, or ``None`` when the broker gave none)."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Headers | None = None,
        timestamp: int | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp = timestamp

    def __repr__(self) -> str:
        return f"Record({self.topic}[{self.partition}]@{self.offset})"


class Source(Protocol):
    """A consumer in a group (:class:`consumer.source.KafkaSource`; in tests an in-memory one).

    The rebalance callbacks given at construction run inside :meth:`consume`, on the caller's
    thread; ``on_revoke`` runs while the partitions are still owned, so it may commit for them.
    """

    def consume(self, n: int, timeout: float) -> list[Record]:
        """Up to ``n`` records, waiting at most ``timeout`` seconds for the first."""
        ...

    def pause_partitions(self, tps: list[Partition]) -> None:
        """Stop fetching ``tps``. Only :class:`consumer.fetch.FetchControl` calls it: it alone
        knows why a partition waits."""
        ...

    def resume_partitions(self, tps: list[Partition]) -> None:
        """Fetch ``tps`` again (see :meth:`pause_partitions`)."""
        ...

    def positions(self, tps: list[Partition]) -> dict[Partition, int]:
        """The next offset this consumer will fetch in each of ``tps`` (unknown ones left out)."""
        ...

    def commit(self, positions: dict[Partition, int]) -> bool:
        """Commit next-offset positions synchronously; ``False`` when refused (try later)."""
        ...

    def committed(self, partitions: Iterable[Partition]) -> dict[Partition, int]: ...

    def end_offsets(self, topics: Iterable[str]) -> dict[Partition, tuple[int, int]]:
        """``(low, high)`` watermarks of every partition of ``topics``."""
        ...

    def high_watermarks(self) -> dict[Partition, int]:
        """The high watermark of each assigned partition as of the last fetch (no broker call:
        the lag metrics read it after every commit)."""
        ...

    def start_offsets(self) -> dict[Partition, int]:
        """Where a backfill's :class:`Replay` starts each partition it chose a start for."""
        ...

    def stop_offsets(self) -> dict[Partition, int]:
        """Where a backfill's :class:`Replay` stops each partition (empty without a stop)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Worker:
    """Worker ``index`` of ``count`` of one backfill (``--worker I/N``): it reads a fixed share of
    the partitions, assigned by hand rather than through the group's rebalances, so that each
    worker can be killed and run again alone and no worker's partitions ever move.

    The share is the topics' partitions sorted by topic then number, every ``count``-th from
    ``index``: each worker gets whole partitions (a user's state lives in one partition of a
    topic keyed by user), the shares never overlap, and together they cover every partition.
    Spreading them round robin rather than in runs keeps the shares even over several topics.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"worker {self.index}/{self.count}: I must be in 0..N-1")

    def owns(self, partitions: Iterable[Partition]) -> list[Partition]:
        """This worker's share of ``partitions`` (every partition of the subscribed topics)."""
        return [tp for i, tp in enumerate(sorted(partitions)) if i % self.count == self.index]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True, slots=True)
class Replay:
    """Where a backfill starts and stops, beyond ``--from-beginning`` and the end offsets, and
    which partitions it reads.

    :ivar from_offsets: the first offset to read, per partition (the others start from the
        group's commit, or the earliest offset for a new group).
    :ivar from_time_ms: start each partition at its first offset at or after this time.
    :ivar until_time_ms: stop each partition before its first offset at or after this time.
    :ivar worker: read only this worker's share of the partitions, assigned by hand
        (``None``: every partition, through the group).
    """

    from_offsets: dict[Partition, int] | None = None
    from_time_ms: int | None = None
    until_time_ms: int | None = None
    worker: Worker | None = None


class DeadLetterWriter(Protocol):
    """Writes dead-letter records; ``on_delivered`` runs (inside :meth:`poll` or :meth:`flush`)
    once the broker has confirmed the write."""

    def write(
        self, record: Record, topic: str, headers: Headers, on_delivered: Callable[[], object]
    ) -> None: ...

    def ensure_topics(self, source_topics: Iterable[str], dlq_for: Callable[[str], str]) -> None:
        """Create missing dead-letter topics with their source's partition count."""
        ...

    def poll(self) -> None: ...

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` for confirmations; returns how many are still unconfirmed."""
        ...

    def close(self) -> None: ...


class RecordReader(Protocol):
    """Reads consumed records back by position (see :class:`consumer.deadletter.Originals`)."""

    def fetch(self, wanted: Iterable[Position], timeout: float) -> dict[Position, Record | None]:
        """Each position read maps to its record, or to ``None`` when the topic no longer holds
        it; positions left out could not be read within ``timeout``."""
        ...

    def close(self) -> None: ...


class Edge(Protocol):
    """Builds the three Kafka clients of one sink run."""

    def source(
        self,
        *,
        on_assign: RebalanceCallback,
        on_revoke: RebalanceCallback,
        on_lost: RebalanceCallback,
        from_beginning: bool,
    ) -> Source: ...

    def writer(self) -> DeadLetterWriter: ...

    def reader(self) -> RecordReader: ...
