"""One stage on the in-memory edge (``tests/memory.py``), wired as the loop wires it but driven
verb by verb by the test: no Knock call is made (nothing is cut into a plan), and time is a
clock the test moves."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from consumer.deadletter import DeadLetters
from consumer.decode import json_value
from consumer.dispatch import Dispatch
from consumer.errors import RegistryUnavailable
from consumer.fetch import FetchControl
from consumer.ingest import Ingest
from consumer.knock import KnockClient
from consumer.metrics import Metrics
from consumer.plan import Pending
from consumer.records import Partition, Record
from consumer.tracker import OffsetTracker
from tests.conftest import sink_settings
from tests.memory import Broker, MemoryEdge, MemorySource

TOPIC = "events"
#: Settings need a Knock; none is called.
NO_KNOCK = SimpleNamespace(api_key="sk_test_unit", url="http://127.0.0.1:9")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Registry:
    """A JSON decoder whose schema registry can be switched off."""

    def __init__(self) -> None:
        self.down = False

    def decode(self, value: bytes | None, topic: str | None = None) -> object:
        if self.down:
            raise RegistryUnavailable("down")
        return json_value(value)

    def for_topic(self, topic: str | None) -> Callable[[bytes | None], object]:
        return lambda value: self.decode(value, topic)

    def check(self) -> bool:
        return True


@dataclass
class Rig:
    broker: Broker
    settings: Any
    clock: Clock
    registry: Registry
    metrics: Metrics
    tracker: OffsetTracker
    fetch: FetchControl
    source: MemorySource
    dispatch: Dispatch
    dlq: DeadLetters
    ingest: Ingest
    stop: threading.Event = field(default_factory=threading.Event)
    revoked: list[list[Partition]] = field(default_factory=list)

    def fetched(self, n: int = 1000) -> list[Record]:
        """One consume call: the first one joins the group (assigns every partition)."""
        return self.source.consume(n, 0)

    def queued(self) -> list[Pending]:
        """Everything queued with the dispatch, taken out (as a plan would)."""
        return self.dispatch.drop(lambda p: True)

    def close(self) -> None:
        self.dispatch.close()
        self.dlq.close()


def rig(broker: Broker, **over: Any) -> Rig:
    settings = sink_settings("in-memory:9092", NO_KNOCK, TOPIC, **over)
    clock, registry, metrics = Clock(), Registry(), Metrics()
    tracker, fetch = OffsetTracker(), FetchControl()
    edge = MemoryEdge(broker, [TOPIC])
    revoked: list[list[Partition]] = []

    def assigned(tps: list[Partition]) -> None:
        fetch.assigned(tps)
        tracker.add(tps)

    source = edge.source(
        on_assign=assigned,
        on_revoke=revoked.append,
        on_lost=revoked.append,
        from_beginning=True,
    )
    fetch.bind(source)
    knock = KnockClient.from_settings(settings.knock)
    return Rig(
        broker=broker,
        settings=settings,
        clock=clock,
        registry=registry,
        metrics=metrics,
        tracker=tracker,
        fetch=fetch,
        source=source,
        dispatch=Dispatch(settings, knock, metrics, clock),
        dlq=DeadLetters(settings.kafka, edge.writer(), edge.reader(), metrics, clock=clock),
        ingest=Ingest(settings, metrics, registry),
        revoked=revoked,
    )


def identify(user: str, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user, "traits": traits}


def produce(broker: Broker, partition: int, *events: dict[str, Any]) -> None:
    for e in events:
        broker.produce(TOPIC, partition, e, str(e.get("userId", "")).encode())


def counted(metrics: Metrics, kind: str, outcome: str) -> float:
    return (
        metrics.registry.get_sample_value(
            "knock_sink_events_total", {"type": kind, "outcome": outcome}
        )
        or 0.0
    )
