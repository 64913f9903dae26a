"""Avro through the whole sink: the real broker, a real Schema Registry (Apicurio) and the local
Knock API. Values are written with confluent-kafka's own ``AvroSerializer``; the Knock state is
checked against the independent model of ``tests/model.py``, computed from the JSON events.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumer.errors import ConfigError
from consumer.sink import Sink
from tests.conftest import wait_for
from tests.gate import Gate
from tests.model import actual_state, expected_state


def record(name: str, *fields: tuple[str, Any]) -> dict[str, Any]:
    return {
        "type": "record",
        "name": name,
        "namespace": "sinktest",
        "fields": [{"name": n, "type": t} for n, t in fields],
    }


def nullable(t: Any) -> list[Any]:
    return ["null", t]


ADDRESS = record("Address", ("city", "string"))
TRAITS = {
    # A typed record: an unset optional field is null in Avro and must stay out of Knock.
    "record": record(
        "Traits",
        ("email", nullable("string")),
        ("age", nullable("long")),
        ("address", nullable(ADDRESS)),
    ),
    # A map: a null value is an explicit null, as in JSON.
    "map": {
        "type": "map",
        "values": ["null", "string", "long", {"type": "map", "values": "string"}],
    },
    # A JSON-encoded string: whatever JSON says, nulls included.
    "string": "string",
}


def event_schema(shape: str) -> dict[str, Any]:
    return record(
        "Event",
        ("type", "string"),
        ("userId", nullable("string")),
        ("previousId", nullable("string")),
        ("traits", nullable(TRAITS[shape])),
    )


def events_for(shape: str, users: int = 6, n: int = 30) -> list[dict[str, Any]]:
    """JSON events; what a typed record cannot say (an explicit null) only for the others."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        traits: dict[str, Any] = {"email": f"u{i % users}-{i}@example.com", "age": i}
        if i % 3 == 0:
            traits["address"] = {"city": f"city-{i}"}
        out.append({"type": "identify", "userId": f"u{i % users}", "traits": traits})
    if shape != "record":
        out.append({"type": "identify", "userId": "u1", "traits": {"age": None}})
    out.append({"type": "alias", "previousId": "u2", "userId": "u3"})
    out.append({"type": "identify", "userId": "u3", "traits": {"email": "last@example.com"}})
    return out


def avro_value(event: dict[str, Any], shape: str) -> dict[str, Any]:
    traits = event.get("traits")
    if traits is not None and shape == "record":
        traits = {k: traits.get(k) for k in ("email", "age", "address")}
    elif traits is not None and shape == "string":
        traits = orjson.dumps(traits).decode()
    return {
        "type": event["type"],
        "userId": event.get("userId"),
        "previousId": event.get("previousId"),
        "traits": traits,
    }


def serializer(url: str, schema: dict[str, Any]) -> AvroSerializer:
    client = SchemaRegistryClient({"url": url, "timeout": 20})
    return AvroSerializer(client, json.dumps(schema))


def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    keys: list[str],
    partitions: list[int] | None = None,
) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for i, (value, key) in enumerate(zip(values, keys, strict=True)):
        kw = {} if partitions is None else {"partition": partitions[i]}
        p.produce(topic, value, key=key.encode(), **kw)
    assert p.flush(30) == 0


def key_of(event: dict[str, Any]) -> str:
    return str(event["userId"])


def backfill(settings: Any) -> Any:
    return Sink(settings).run(from_beginning=True, until_end=True)


@pytest.mark.parametrize("framing", ["confluent", "plain"])
@pytest.mark.parametrize("shape", ["record", "map", "string"])
def test_avro_events_end_in_the_state_of_the_same_events_as_json(
    kafka, api, settings_for, schema_registry, tmp_path, framing, shape
):
    events = events_for(shape)
    topic = kafka.topic(2)
    ser = serializer(schema_registry, event_schema(shape))
    ctx = SerializationContext(topic, MessageField.VALUE)
    values = [ser(avro_value(e, shape), ctx) for e in events]
    over: dict[str, Any] = {"kafka__schema_registry_url": schema_registry}
    if framing == "plain":
        # The same bytes without Confluent's 5-byte header: bare Avro, schema from a file.
        values = [v[5:] for v in values]
        schema_file = tmp_path / "event.avsc"
        schema_file.write_text(json.dumps(event_schema(shape)))
        over = {"kafka__format": "avro-plain", "kafka__avro_schema_file": str(schema_file)}
    produce(kafka.bootstrap, topic, values, [key_of(e) for e in events])
    summary = backfill(settings_for(topic, **over))
    assert actual_state(api.users()) == expected_state(events)
    assert dict(summary.dead_lettered) == {}
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)

    if framing == "confluent":  # the same events as JSON, from a clean Knock
        avro_state = actual_state(api.users())
        api.reset()
        json_topic = kafka.topic(2)
        kafka.produce(json_topic, events)
        backfill(settings_for(json_topic))
        assert actual_state(api.users()) == avro_state


def test_unknown_schema_id_and_undecodable_bytes_are_dead_lettered(
    kafka, api, settings_for, schema_registry
):
    topic = kafka.topic(1)
    ser = serializer(schema_registry, event_schema("map"))
    ctx = SerializationContext(topic, MessageField.VALUE)
    good = {"type": "identify", "userId": "ok", "traits": {"a": "1"}}
    raw = ser(avro_value(good, "map"), ctx)
    schema_id = int.from_bytes(raw[1:5], "big")
    unknown = b"\x00" + (987_654_321).to_bytes(4, "big") + raw[5:]
    garbage = raw[:5] + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
    produce(kafka.bootstrap, topic, [raw, unknown, garbage, raw], ["ok"] * 4)
    summary = backfill(
        settings_for(topic, kafka__schema_registry_url=schema_registry, kafka__format="avro")
    )
    assert actual_state(api.users()) == {"ok": {"a": "1"}}
    dead = kafka.read_all(f"{topic}.dlq", 2)
    headers = [dict(m.headers()) for m in dead]
    assert [(h["knock-sink.error.kind"], h["knock-sink.source.offset"]) for h in headers] == [
        (b"undecodable", b"1"),
        (b"undecodable", b"2"),
    ]
    assert b"schema id 987654321" in headers[0]["knock-sink.error.reason"]
    assert f"schema id {schema_id}".encode() in headers[1]["knock-sink.error.reason"]
    assert [m.value() for m in dead] == [unknown, garbage]
    assert dict(summary.dead_lettered) == {"undecodable": 2}
    assert kafka.committed(f"g-{topic}", topic) == {0: 4}


@pytest.fixture
def gated_registry(schema_registry: str) -> Iterator[Gate]:
    gate = Gate(schema_registry)
    try:
        yield gate
    finally:
        gate.close()


@pytest.mark.slow
def test_a_registry_outage_holds_the_partition_and_loses_nothing(
    kafka, api, settings_for, gated_registry
):
    """The registry becomes unreachable mid-run: the records that need a schema the sink has
    not fetched wait (nothing dead-lettered, nothing committed past the first of them) and are
    applied once it is reachable again."""
    gate = gated_registry
    topic = kafka.topic(2)
    schema_a, schema_b = event_schema("map"), event_schema("string")
    ser_a, ser_b = serializer(gate.url, schema_a), serializer(gate.url, schema_b)
    ctx_a = SerializationContext(f"a-{topic}", MessageField.VALUE)
    ctx_b = SerializationContext(f"b-{topic}", MessageField.VALUE)
    # Both schemas registered while the registry is up; the sink has fetched neither yet.
    probe = {"type": "identify", "userId": "p", "traits": None, "previousId": None}
    ser_a(probe, ctx_a)
    ser_b(probe, ctx_b)

    # Phase 1, registry up: JSON and Avro (schema A) on both partitions.
    first = [
        {"type": "identify", "userId": f"u{i % 4}", "traits": {"p1": str(i)}} for i in range(8)
    ]
    produce(
        kafka.bootstrap,
        topic,
        [
            orjson.dumps(e) if i % 2 else ser_a(avro_value(e, "map"), ctx_a)
            for i, e in enumerate(first)
        ],
        [key_of(e) for e in first],
        [i % 2 for i in range(len(first))],
    )
    settings = settings_for(topic, kafka__schema_registry_url=gate.url)
    sink = Sink(settings)
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(summary=sink.run()))
    t.start()
    try:
        wait_for(lambda: actual_state(api.users()) == expected_state(first), 60, "phase 1 applied")
        wait_for(
            lambda: kafka.committed(f"g-{topic}", topic) == {0: 4, 1: 4}, 30, "phase 1 committed"
        )
        gate.close()
        # Phase 2, registry unreachable: on partition 0 a JSON event, then schema B (never fetched),
        # then more; on partition 1 schema A (cached: no registry needed) and JSON.
        second = [
            {"type": "identify", "userId": "j0", "traits": {"p2": "json-before"}},
            {"type": "identify", "userId": "b0", "traits": {"p2": "needs-b"}},
            {"type": "identify", "userId": "j1", "traits": {"p2": "json-after"}},
            {"type": "identify", "userId": "a1", "traits": {"p2": "cached-a"}},
            {"type": "identify", "userId": "j2", "traits": {"p2": "json"}},
        ]
        values = [
            orjson.dumps(second[0]),
            ser_b(avro_value(second[1], "string"), ctx_b),
            orjson.dumps(second[2]),
            ser_a(avro_value(second[3], "map"), ctx_a),
            orjson.dumps(second[4]),
        ]
        produce(kafka.bootstrap, topic, values, [key_of(e) for e in second], [0, 0, 0, 1, 1])
        wait_for(
            lambda: sink.metrics.retries.labels("registry")._value.get() >= 3,
            60,
            "registry retries",
        )
        wait_for(
            lambda: kafka.committed(f"g-{topic}", topic) == {0: 5, 1: 6},
            30,
            "commits up to the stall",
        )
        state = actual_state(api.users())
        assert "b0" not in state and "j1" not in state  # held behind the stalled record
        assert {"j0", "a1", "j2"} <= set(state)
        assert sink.metrics.dead_lettered.labels("undecodable")._value.get() == 0
        assert kafka.committed(f"g-{topic}", topic) == {0: 5, 1: 6}

        gate.open()
        wait_for(
            lambda: actual_state(api.users()) == expected_state(first + second), 60, "all applied"
        )
        wait_for(
            lambda: kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic),
            30,
            "all committed",
        )
    finally:
        sink.stop()
        t.join(60)
    assert not t.is_alive()
    assert dict(result["summary"].dead_lettered) == {}
    assert kafka.end_offsets(f"{topic}.dlq") == {}


# A registry that answers what the test says (Apicurio demands an OIDC server for auth): the
# subject list at start, and each schema lookup.


class _Refusing:
    def __init__(self, subjects: int, schemas: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        answers = {"/subjects": subjects}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = answers.get(self.path.split("?")[0], schemas)
                body = (
                    b"[]"
                    if status == 200
                    else orjson.dumps({"error_code": status * 100 + 1, "message": "no"})
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_registry_refusing_the_credentials_at_start_is_a_config_error(kafka, api, settings_for):
    reg = _Refusing(subjects=401, schemas=401)
    secret = "pw-" + uuid.uuid4().hex
    try:
        topic = kafka.topic(1)
        settings = settings_for(
            topic,
            kafka__schema_registry_url=reg.url,
            kafka__schema_registry_basic_auth=f"sink:{secret}",
        )
        with pytest.raises(ConfigError, match=r"kafka\.schema_registry_basic_auth") as err:
            Sink(settings).run()
        assert secret not in str(err.value) and "HTTP 401" in str(err.value)
    finally:
        reg.close()


def test_a_registry_refusing_a_lookup_while_running_stops_with_exit_3(
    kafka, api, settings_for, monkeypatch, capsys
):
    from consumer.cli import main

    reg = _Refusing(subjects=200, schemas=403)
    try:
        topic = kafka.topic(1)
        events = [{"type": "identify", "userId": "before", "traits": {"a": 1}}]
        kafka.produce(topic, events)
        kafka.produce(topic, [b"\x00\x00\x00\x00\x07\x02"])  # a schema id it refuses to give
        kafka.produce(topic, [{"type": "identify", "userId": "after", "traits": {"a": 1}}])
        for name, value in {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "KNOCK_API_KEY": api.api_key,
            "KNOCK_BASE_URL": api.url,
        }.items():
            monkeypatch.setenv(name, value)
        # A live sink (a backfill keeps what it holds uncommitted when it stops, see README).
        code = main(
            [
                "run",
                "--topic",
                topic,
                "--group-id",
                f"g-{topic}",
                "--rate-limits",
                "off",
                "--schema-registry-url",
                reg.url,
            ]
        )
        assert code == 3
        assert "schema registry rejected the credentials" in capsys.readouterr().err
        # What came before is applied and committed; nothing at or past the refused record.
        assert actual_state(api.users()) == expected_state(events)
        assert kafka.committed(f"g-{topic}", topic) == {0: 1}
        assert kafka.end_offsets(f"{topic}.dlq") == {}
    finally:
        reg.close()
