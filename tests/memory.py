"""An in-memory Kafka edge for the loop's own tests, as Arroyo's local backend stands in for a
broker: topics are lists of records, a group's commits a dict, and rebalances are scheduled by
the test and happen inside ``consume``, on the loop's thread, as librdkafka's do.

It implements :mod:`consumer.records`' contract and nothing more, so a loop test that passes
here and fails on the real broker points at the edge, not the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from consumer.records import Headers, Partition, Position, RebalanceCallback, Record


@dataclass
class DeadRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]


@dataclass
class Broker:
    """Topics, one group's commits and the dead-letter topics of one test."""

    partitions: dict[Partition, list[Record]] = field(default_factory=dict)
    commits: dict[Partition, int] = field(default_factory=dict)
    dead: list[DeadRecord] = field(default_factory=list)
    #: (after this many records delivered, "revoke" | "lost" | "assign" | "rewind", partitions),
    #: in order; an entry with ``when`` waits, past its count, until ``when()`` is true.
    schedule: list[tuple[int, str, list[Partition]]] = field(default_factory=list)
    when: Callable[[], bool] | None = None
    #: (paused, the sink's pending gauge) at each consume call, when ``probe`` is set.
    log: list[tuple[bool, float]] = field(default_factory=list)
    probe: Callable[[], float] | None = None
    #: Called at each consume call, when set (a test stopping a live sink on a condition).
    tick: Callable[[], None] | None = None
    #: (what, commits before, commits after) of each scheduled rebalance, as it ran.
    rebalances: list[tuple[str, dict[Partition, int], dict[Partition, int]]] = field(
        default_factory=list
    )

    def create(self, topic: str, partitions: int) -> None:
        for p in range(partitions):
            self.partitions[(topic, p)] = []

    def produce(
        self,
        topic: str,
        partition: int,
        value: Any,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> Record:
        log = self.partitions[(topic, partition)]
        raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
        rec = Record(topic, partition, len(log), key, raw, headers, 1_700_000_000_000 + len(log))
        log.append(rec)
        return rec

    def ends(self) -> dict[Partition, int]:
        return {tp: len(log) for tp, log in self.partitions.items() if log}


class MemorySource:
    def __init__(
        self,
        broker: Broker,
        topics: list[str],
        *,
        on_assign: RebalanceCallback,
        on_revoke: RebalanceCallback,
        on_lost: RebalanceCallback,
        from_beginning: bool,
    ) -> None:
        self._broker = broker
        self._topics = topics
        self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        self._from_beginning = from_beginning
        self._position: dict[Partition, int] = {}
        #: Partitions paused (by the sink's fetch control).
        self._held: set[Partition] = set()
        self._delivered = 0
        self._joined = False
        self._idle = threading.Event()  # never set: waiting on it is a consumer's poll timeout

    @property
    def paused(self) -> bool:
        """Whether every assigned partition is paused (fetching wholly paused)."""
        return bool(self._position) and self._held.issuperset(self._position)

    def _assign(self, tps: list[Partition]) -> None:
        for tp in tps:
            start = 0 if self._from_beginning else self._broker.commits.get(tp, 0)
            self._position[tp] = start
        self._callbacks["assign"](tps)

    def consume(self, n: int, timeout: float) -> list[Record]:
        b = self._broker
        if b.probe is not None:
            b.log.append((self.paused, b.probe()))
        if b.tick is not None:
            b.tick()
        if not self._joined:
            self._joined = True
            self._assign([tp for tp in b.partitions if tp[0] in self._topics])
        while b.schedule and b.schedule[0][0] <= self._delivered:
            if b.when is not None:
                if not b.when():
                    break
                b.when = None
            _, what, tps = b.schedule.pop(0)
            before = dict(b.commits)
            if what == "assign":
                self._from_beginning = False
                self._assign(tps)
            elif what == "rewind":
                for tp in tps:  # back to the commit, without a callback (a reset)
                    self._position[tp] = b.commits.get(tp, 0)
            else:
                self._callbacks[what](tps)
                for tp in tps:
                    self._position.pop(tp, None)
                    self._held.discard(tp)  # as librdkafka: an unassigned partition's pause goes
            b.rebalances.append((what, before, dict(b.commits)))
        # One batch at most up to the next scheduled rebalance, so that it lands mid-stream.
        limit = max(0, min(n, b.schedule[0][0] - self._delivered)) if b.schedule else n
        out: list[Record] = []
        progress = True
        while progress and len(out) < limit:  # round robin, as a fetch spans partitions
            progress = False
            for tp, pos in list(self._position.items()):
                if len(out) < limit and pos < len(b.partitions[tp]) and tp not in self._held:
                    out.append(b.partitions[tp][pos])
                    self._position[tp] = pos + 1
                    progress = True
        self._delivered += len(out)
        if not out:
            self._idle.wait(min(timeout, 0.01))
        return out

    def positions(self, tps: list[Partition]) -> dict[Partition, int]:
        return {tp: self._position[tp] for tp in tps if tp in self._position}

    def pause_partitions(self, tps: list[Partition]) -> None:
        self._held.update(tps)

    def resume_partitions(self, tps: list[Partition]) -> None:
        self._held.difference_update(tps)

    def commit(self, positions: dict[Partition, int]) -> bool:
        for tp, offset in positions.items():
            assert offset >= self._broker.commits.get(tp, 0), f"commit of {tp} went back"
        self._broker.commits.update(positions)
        return True

    def committed(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        return {tp: self._broker.commits[tp] for tp in partitions if tp in self._broker.commits}

    def end_offsets(self, topics: Iterable[str]) -> dict[Partition, tuple[int, int]]:
        return {tp: (0, len(log)) for tp, log in self._broker.partitions.items() if tp[0] in topics}

    def high_watermarks(self) -> dict[Partition, int]:
        return {tp: len(log) for tp, log in self._broker.partitions.items() if tp in self._position}

    def start_offsets(self) -> dict[Partition, int]:
        return {}  # no replays in memory: a run starts from the commits or the beginning

    def stop_offsets(self) -> dict[Partition, int]:
        return {}

    def close(self) -> None:
        pass


class MemoryWriter:
    """Confirms each write on the next poll or flush, as a producer's delivery report comes."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._unconfirmed: list[Callable[[], object]] = []

    def write(
        self, record: Record, topic: str, headers: Headers, on_delivered: Callable[[], object]
    ) -> None:
        self._broker.dead.append(
            DeadRecord(topic, record.key, record.value, {k: v.decode() for k, v in headers})
        )
        self._unconfirmed.append(on_delivered)

    def ensure_topics(self, source_topics: Iterable[str], dlq_for: Callable[[str], str]) -> None:
        pass

    def poll(self) -> None:
        done, self._unconfirmed = self._unconfirmed, []
        for cb in done:
            cb()

    def flush(self, timeout: float) -> int:
        self.poll()
        return 0

    def close(self) -> None:
        self.poll()


class MemoryReader:
    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def fetch(self, wanted: Iterable[Position], timeout: float) -> dict[Position, Record | None]:
        return {(t, p, o): self._broker.partitions[(t, p)][o] for t, p, o in wanted}

    def close(self) -> None:
        pass


class MemoryEdge:
    def __init__(self, broker: Broker, topics: list[str]) -> None:
        self.broker = broker
        self._topics = topics

    def source(self, **callbacks: Any) -> MemorySource:
        return MemorySource(self.broker, self._topics, **callbacks)

    def writer(self) -> MemoryWriter:
        return MemoryWriter(self.broker)

    def reader(self) -> MemoryReader:
        return MemoryReader(self.broker)
