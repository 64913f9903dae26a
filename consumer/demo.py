"""``knock-sink demo``: the whole path on local parts, in one command.

It starts the project's local Kafka broker (``deploy/local``; or uses ``KAFKA_BOOTSTRAP_SERVERS``)
and the local Knock-compatible API with Knock's real rate limits, writes sample Segment events
(identify, track with ``context.traits``, alias, and one malformed message), runs the sink as a
backfill, and prints the users read back from the API.

With ``--avro`` it also writes a few Confluent-framed Avro events (the shipped ``schemas/``,
through confluent-kafka's ``AvroSerializer``) to the same topic, registered in a Schema
Registry: ``SCHEMA_REGISTRY_URL``, or the local Apicurio (``deploy/local/registry``, Java 21+,
fetched from Maven Central on first use). The sink reads the topic as ``auto``: Avro by its
first byte, JSON otherwise.
"""

from __future__ import annotations

import os
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

TOPIC = "segment-events"
DEMO_LOG_LEVEL = "ERROR"

SAMPLE_EVENTS: list[dict[str, Any]] = [
    {
        "type": "identify",
        "userId": "ada",
        "traits": {
            "email": "ada@example.com",
            "firstName": "Ada",
            "lastName": "Lovelace",
            "phone": "(415) 555-0100",
            "plan": "pro",
            "createdAt": "2024-03-01T09:30:00+01:00",
            "company": {"name": "Analytical Engines", "employees": 12},
        },
        "context": {"locale": "en-GB", "timezone": "Europe/London"},
    },
    {
        "type": "identify",
        "userId": "grace",
        "traits": {
            "name": "Grace Hopper",
            "email": "grace@example.com",
            "phone": "+44 20 7946 0958",
            "avatar": "https://example.com/grace.png",
            "plan": "free",
        },
    },
    {
        "type": "track",
        "userId": "ada",
        "event": "Upgraded",
        "properties": {"plan": "enterprise"},
        "context": {"traits": {"plan": "enterprise"}},
    },
    {
        "type": "identify",
        "anonymousId": "anon-42",
        "userId": "anon-visitor",
        "traits": {"email": "visitor@example.com", "utm_source": "newsletter"},
    },
    {"type": "alias", "previousId": "anon-visitor", "userId": "linus"},
    {
        "type": "identify",
        "userId": "linus",
        "version": "1.1",
        "traits": {"name": "Linus", "phone": "not a phone", "timezone": "America/Los_Angeles"},
    },
    {"type": "identify", "userId": "ada", "traits": {"company": {"employees": 13}}},
]
POISON = [b"{not json", orjson.dumps({"type": "identify", "userId": "a/b", "traits": {}})]
#: Written as Avro with ``--avro``: free-form parts as JSON strings, as the shipped schemas say.
AVRO_EVENTS: list[dict[str, Any]] = [
    {
        "type": "identify",
        "userId": "hedy",
        "messageId": "avro-1",
        "traits": orjson.dumps(
            {"name": "Hedy Lamarr", "email": "hedy@example.com", "plan": "pro"}
        ).decode(),
    },
    {
        "type": "track",
        "userId": "grace",
        "event": "Upgraded",
        "messageId": "avro-2",
        "properties": '{"plan": "team"}',
        "context": orjson.dumps({"traits": {"plan": "team"}}).decode(),
    },
]


def _broker(stack: ExitStack) -> str:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    launcher = Path(__file__).resolve().parents[1] / "deploy" / "local"
    if not (launcher / "kafka_broker.py").exists():
        raise SystemExit("knock-sink demo: set KAFKA_BOOTSTRAP_SERVERS, or run it from a checkout")
    sys.path.insert(0, str(launcher))
    from kafka_broker import Broker  # type: ignore[import-not-found]

    return str(stack.enter_context(Broker()).bootstrap)


def _registry(stack: ExitStack) -> str:
    if os.environ.get("SCHEMA_REGISTRY_URL"):
        return os.environ["SCHEMA_REGISTRY_URL"]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "local"))
    from registry import Registry  # type: ignore[import-not-found]

    return str(stack.enter_context(Registry()).url)


def _avro_values(url: str, topic: str) -> list[bytes]:
    import json

    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    schemas = Path(__file__).resolve().parents[1] / "schemas"
    client = SchemaRegistryClient({"url": url})
    out = []
    for event in AVRO_EVENTS:
        schema = (schemas / f"{event['type']}.avsc").read_text()
        # One subject per event type (record name strategy): several schemas on one topic.
        ser = AvroSerializer(
            client, schema, conf={"subject.name.strategy": lambda ctx, name: f"demo-{name}"}
        )
        out.append(
            ser(json.loads(orjson.dumps(event)), SerializationContext(topic, MessageField.VALUE))
        )
    return out


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic  # where the stubs declare it

    from .logs import KAFKA_LOG

    # Through logging, as the sink's clients: librdkafka would write to stderr itself.
    admin = AdminClient({"bootstrap.servers": bootstrap}, logger=KAFKA_LOG)
    admin.create_topics([NewTopic(topic, 3)])[topic].result(30)  # admin outlives the future
    producer = Producer({"bootstrap.servers": bootstrap}, logger=KAFKA_LOG)
    for v in values:
        key = orjson.loads(v).get("userId") if v.startswith(b'{"') else None
        if v[:1] == b"\x00":  # Avro: the demo's Avro events are all grace's or hedy's
            key = "grace" if b"grace" in v else "hedy"
        producer.produce(topic, v, key=key)
    producer.flush(30)


def _events(extra: int) -> list[bytes]:
    out = [orjson.dumps(e) for e in SAMPLE_EVENTS] + POISON
    out += [
        orjson.dumps(
            {
                "type": "identify",
                "userId": f"user-{i % 500}",
                "traits": {"email": f"user{i % 500}@example.com", "visits": i},
            }
        )
        for i in range(extra)
    ]
    return out


def run_demo(extra_events: int = 0, avro: bool = False) -> int:
    from .config import load_settings
    from .emulator import EmulatorServer
    from .logs import setup
    from .sink import Sink

    # Off a terminal rich assumes 80 columns, too narrow for the table of users.
    console = Console(width=None if sys.stdout.isatty() else 140)
    key = "sk_test_" + uuid.uuid4().hex
    # The demo's own lines only: what the sink and librdkafka log on the way (the dead
    # letters, which step 4 reports; a fresh broker's "coordinator load in progress") shows
    # from ERROR up, formatted, rather than raw through logging's last-resort handler.
    setup(DEMO_LOG_LEVEL, "text", secrets=[key])
    with ExitStack() as stack:
        console.print(
            "[bold]1.[/] starting a local Kafka broker (first start fetches it from Maven Central)…"
        )
        bootstrap = _broker(stack)
        console.print(f"   broker on {bootstrap}")
        api = stack.enter_context(EmulatorServer(api_key=key, rate_limits="knock"))
        console.print(f"[bold]2.[/] local Knock API on {api.url} (Knock's rate limits on)")
        topic = f"{TOPIC}-{uuid.uuid4().hex[:6]}"
        values = _events(extra_events)
        registry = None
        if avro:
            console.print(
                "   starting a Schema Registry (local Apicurio unless SCHEMA_REGISTRY_URL)…"
            )
            registry = _registry(stack)
            values += _avro_values(registry, topic)
        _produce(bootstrap, topic, values)
        what = f", {len(AVRO_EVENTS)} in Avro through {registry}" if registry else ""
        console.print(
            f"[bold]3.[/] wrote {len(values)} events to {topic} (2 of them malformed{what})"
        )
        if not avro:
            console.print(
                "   Avro too: `knock-sink demo --avro` writes Confluent-framed Avro events "
                "through a local Schema Registry (Java 21+)"
            )
        settings = load_settings(
            environ={},
            overrides={
                "kafka.bootstrap_servers": bootstrap,
                "kafka.topics": [topic],
                "kafka.group_id": f"demo-{topic}",
                "knock.api_key": key,
                "knock.base_url": api.url,
                "sink.flush_interval": 0.2,
                "sink.log_level": DEMO_LOG_LEVEL,
                "kafka.schema_registry_url": registry,
            },
        )
        summary = Sink(settings).run(from_beginning=True, until_end=True)
        console.print(
            f"[bold]4.[/] sink done: {summary.consumed} read, {summary.applied} applied, "
            f"{sum(summary.dead_lettered.values())} dead-lettered to {topic}.dlq "
            f"({', '.join(sorted(summary.dead_lettered))}), offsets committed "
            f"{ {f'{t}[{p}]': o for (t, p), o in sorted(summary.committed.items())} }"
        )
        _print_users(console, api.url, key)
    return 0


def _print_users(console: Console, url: str, key: str) -> None:
    """Read every user back through the public API, as any Knock client would."""
    import httpx

    users: list[dict[str, Any]] = []
    after = None
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        while True:
            page = http.get(
                "/v1/users", params={"page_size": 50, **({"after": after} if after else {})}
            ).json()
            users += page["entries"]
            after = page["page_info"]["after"]
            if not after:
                break
    reserved = ["id", "name", "email", "phone_number", "timezone", "locale", "created_at"]
    table = Table(title=f"{len(users)} Knock users, read back from GET /v1/users")
    for col in [*reserved, "custom properties"]:
        table.add_column(col, overflow="fold")
    skip = {*reserved, "__typename", "updated_at", "avatar"}
    for u in sorted(users, key=lambda u: u["id"])[:25]:
        custom = {k: v for k, v in u.items() if k not in skip}
        table.add_row(*[str(u.get(c) or "") for c in reserved], orjson.dumps(custom).decode())
    console.print(table)
