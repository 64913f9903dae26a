"""Shared fixtures: a real Kafka broker and the local Knock API, started once per test run.

The broker is chosen in this order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; testcontainers' Kafka
module when a Docker engine answers; otherwise the project's launcher (``deploy/local``), which
runs the official Apache Kafka jars from Maven Central. Nothing here mocks Kafka.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "local"))


def wait_for(cond: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


class Kafka:
    """The broker the tests use, with small helpers around the admin and producer clients."""

    def __init__(self, bootstrap: str, broker: Any = None) -> None:
        self.bootstrap = bootstrap
        self.broker = broker  # the launcher's Broker when we started it (restartable)
        self.admin = AdminClient({"bootstrap.servers": bootstrap})

    def topic(self, partitions: int = 3, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.admin.create_topics([NewTopic(name, partitions)])[name].result(30)
        wait_for(lambda: name in self.admin.list_topics(timeout=5).topics, 30, f"topic {name}")
        return name

    def produce(
        self,
        topic: str,
        values: list[Any],
        key: Callable[[Any], Any] | None = None,
        partition: int | None = None,
    ) -> None:
        """Produce JSON-encoded events (bytes are sent as they are), keyed by userId by default."""
        p = Producer(
            {"bootstrap.servers": self.bootstrap, "linger.ms": 5, "enable.idempotence": True}
        )
        # Idempotent: a produce request retried after a timeout (a loaded machine) would
        # otherwise write its batch twice, or after the next one, and a user's events would be
        # in another order on the topic than in the model. flush() counts a message that failed
        # for good as delivered: each report is checked, so a test never measures the sink
        # against events that never reached the topic.
        failed: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(f"{msg.topic()}[{msg.partition()}]: {err}")

        for v in values:
            raw = v if isinstance(v, bytes) else orjson.dumps(v)
            k = (
                key(v)
                if key
                else (v.get("userId") or v.get("anonymousId"))
                if isinstance(v, dict)
                else None
            )
            kw = {} if partition is None else {"partition": partition}
            if k is not None and not isinstance(k, bytes):
                k = str(k).encode()
            p.produce(topic, raw, key=k, on_delivery=delivered, **kw)
            p.poll(0)
        assert p.flush(30) == 0
        assert not failed, f"{len(failed)} events not produced, first: {failed[0]}"

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed positions per partition (missing partitions left out)."""
        meta = self.admin.list_topics(topic, timeout=10).topics[topic]
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        deadline = time.monotonic() + 90
        try:
            while True:
                try:
                    res = c.committed(
                        [TopicPartition(topic, p) for p in meta.partitions], timeout=10
                    )
                    break
                except KafkaException as exc:
                    # After a SIGKILL the broker holds the group's offsets back while a
                    # transaction (or the dead member's session) is still open.
                    if exc.args[0].code() != KafkaError._TIMED_OUT or time.monotonic() > deadline:
                        raise
        finally:
            c.close()
        return {tp.partition: tp.offset for tp in res if tp.offset >= 0}

    def end_offsets(self, topic: str) -> dict[int, int]:
        """High watermarks of the non-empty partitions (an empty one never gets a commit)."""
        meta = self.admin.list_topics(topic, timeout=10).topics[topic]
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "probe"})
        try:
            marks = {
                p: c.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in meta.partitions
            }
            return {p: hi for p, hi in marks.items() if hi > 0}
        finally:
            c.close()

    def read_all(self, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
        """Read ``expected`` messages of ``topic`` from the beginning (confluent Message objects)."""
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        c.subscribe([topic])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < expected and time.monotonic() < deadline:
                out += [m for m in c.consume(500, 0.2) if m.error() is None]
            # A moment more to catch anything beyond what was expected.
            out += [m for m in c.consume(500, 0.5) if m.error() is None]
        finally:
            c.close()
        return out


@pytest.fixture(scope="session")
def kafka() -> Iterator[Kafka]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield Kafka(os.environ["KAFKA_BOOTSTRAP_SERVERS"])
    elif _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kc:
            yield Kafka(kc.get_bootstrap_server())
    else:
        from kafka_broker import Broker

        with Broker() as broker:
            yield Kafka(broker.bootstrap, broker)


@pytest.fixture(scope="session")
def knock_api() -> Iterator[Any]:
    """The local Knock-compatible API, limits off; state is reset before each test using it."""
    from consumer.emulator import EmulatorServer

    with EmulatorServer(api_key="sk_test_" + uuid.uuid4().hex, rate_limits="off") as server:
        yield server


@pytest.fixture
def api(knock_api: Any) -> Any:
    knock_api.reset()
    return knock_api


def sink_settings(bootstrap: str, api: Any, topic: str, **over: Any) -> Any:
    """Sink settings for ``topic`` against a broker and the local API; keyword overrides use
    dotted names with ``__`` (``sink__flush_interval=0.1``)."""
    from consumer.config import load_settings

    base = {
        "kafka.bootstrap_servers": bootstrap,
        "kafka.topics": [topic],
        "kafka.group_id": f"g-{topic}",
        "knock.api_key": api.api_key,
        "knock.base_url": api.url,
        "knock.rate_limits": "off",
        "sink.flush_interval": 0.1,
        "sink.drain_timeout": 20.0,
    }
    base.update({k.replace("__", "."): v for k, v in over.items()})
    return load_settings(environ={}, overrides=base)


@pytest.fixture
def settings_for(kafka: Kafka, api: Any) -> Callable[..., Any]:
    """``sink_settings`` against the test broker and API."""
    return lambda topic, **over: sink_settings(kafka.bootstrap, api, topic, **over)


def sink_env(kafka: Kafka, api: Any, topic: str, **extra: str) -> dict[str, str]:
    """Environment for a ``knock-sink`` subprocess (settings through the documented variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KNOCK_", "KAFKA_"))}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "KNOCK_API_KEY": api.api_key,
            "KNOCK_BASE_URL": api.url,
            "KNOCK_SINK_TOPICS": topic,
            "KNOCK_SINK_GROUP_ID": f"g-{topic}",
            **extra,
        }
    )
    return env


@pytest.fixture(scope="session")
def schema_registry() -> Iterator[str]:
    """The Confluent-compatible URL of a real Schema Registry: ``SCHEMA_REGISTRY_URL`` if set,
    else Apicurio Registry started by the project's launcher (``deploy/local/registry``)."""
    if os.environ.get("SCHEMA_REGISTRY_URL"):
        yield os.environ["SCHEMA_REGISTRY_URL"]
    else:
        from registry import Registry

        with Registry() as registry:
            yield registry.url
