"""Avro decoding against a real Schema Registry (Apicurio, Confluent-compatible API).

Values are produced with confluent-kafka's own ``AvroSerializer``, as a Confluent producer
would, and must decode to exactly the JSON a JSON producer would have sent.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import fastavro
import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumer.avro import ConfluentAvroDecoder, PlainAvroDecoder, decoder_for
from consumer.config import KafkaSettings, load_settings
from consumer.errors import ConfigError, FatalRegistryError, InvalidEvent, RegistryUnavailable
from consumer.events import parse_event

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
TYPES = ("identify", "track", "alias", "group", "page", "screen")
FREE_FORM = ("traits", "properties", "context", "integrations")
STAMPS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")


@pytest.fixture(scope="module")
def client(schema_registry: str) -> SchemaRegistryClient:
    # A timeout, so that a registry that stops answering fails the test instead of hanging it.
    return SchemaRegistryClient({"url": schema_registry, "timeout": 20})


@pytest.fixture(scope="module")
def decoder(schema_registry: str) -> Any:
    return decoder_for(KafkaSettings(schema_registry_url=schema_registry))


def serialize(
    client: SchemaRegistryClient, schema: dict[str, Any], value: Any, topic: str | None = None
) -> bytes:
    """``value`` as a Confluent producer writes it; a fresh subject unless ``topic`` is given."""
    topic = topic or f"avro-{uuid.uuid4().hex[:10]}"
    ser = AvroSerializer(client, json.dumps(schema))
    return ser(value, SerializationContext(topic, MessageField.VALUE))  # type: ignore[no-any-return]


def record(name: str, *fields: tuple[str, Any]) -> dict[str, Any]:
    return {
        "type": "record",
        "name": name,
        "namespace": "t",
        "fields": [{"name": n, "type": t} for n, t in fields],
    }


def nullable(t: Any) -> list[Any]:
    return ["null", t]


# --- the three shapes of traits ------------------------------------------------------------

ADDRESS = record("Address", ("city", "string"), ("zip", nullable("string")))
TRAITS_RECORD = record(
    "Traits",
    ("email", nullable("string")),
    ("age", nullable("int")),
    ("vip", "boolean"),
    ("address", nullable(ADDRESS)),
)


def identify_with(traits_type: Any) -> dict[str, Any]:
    return record(
        "Identify", ("type", "string"), ("userId", nullable("string")), ("traits", traits_type)
    )


def test_traits_as_a_record_leave_unset_optional_fields_out(client, decoder):
    raw = serialize(
        client,
        identify_with(nullable(TRAITS_RECORD)),
        {
            "type": "identify",
            "userId": "u1",
            "traits": {
                "email": "a@example.com",
                "age": None,
                "vip": True,
                "address": {"city": "Paris", "zip": None},
            },
        },
    )
    assert decoder.decode(raw) == {
        "type": "identify",
        "userId": "u1",
        "traits": {"email": "a@example.com", "vip": True, "address": {"city": "Paris"}},
    }


def test_traits_as_a_map_keep_their_nulls(client, decoder):
    values = ["null", "string", "long", "double", "boolean"]
    raw = serialize(
        client,
        identify_with({"type": "map", "values": values}),
        {
            "type": "identify",
            "userId": "u1",
            "traits": {
                "email": "a@example.com",
                "age": 41,
                "score": 0.5,
                "vip": False,
                "nick": None,
            },
        },
    )
    assert decoder.decode(raw) == {
        "type": "identify",
        "userId": "u1",
        "traits": {"email": "a@example.com", "age": 41, "score": 0.5, "vip": False, "nick": None},
    }


def test_traits_as_a_json_string_keep_explicit_nulls(client, decoder):
    traits = {
        "email": "a@example.com",
        "age": 41,
        "nick": None,
        "address": {"city": "Paris", "zip": None},
    }
    raw = serialize(
        client,
        identify_with(nullable("string")),
        {
            "type": "identify",
            "userId": None,
            "traits": orjson.dumps(traits).decode(),
        },
    )
    # userId null in the record: left out; nick and zip null inside the JSON: kept.
    assert decoder.decode(raw) == {"type": "identify", "traits": traits}


def test_context_record_with_traits_as_a_json_string(client, decoder):
    context = record(
        "Context",
        ("ip", nullable("string")),
        ("locale", nullable("string")),
        ("traits", nullable("string")),
    )
    schema = record(
        "Track",
        ("type", "string"),
        ("userId", "string"),
        ("event", "string"),
        ("context", nullable(context)),
        ("properties", nullable("string")),
    )
    raw = serialize(
        client,
        schema,
        {
            "type": "track",
            "userId": "u1",
            "event": "Signed Up",
            "context": {"ip": None, "locale": "fr-FR", "traits": '{"plan": "pro", "seats": null}'},
            "properties": "",
        },
    )
    # properties "": a non-nullable producer's "none", left out like a null.
    assert decoder.decode(raw) == {
        "type": "track",
        "userId": "u1",
        "event": "Signed Up",
        "context": {"locale": "fr-FR", "traits": {"plan": "pro", "seats": None}},
    }


def test_a_free_form_string_that_is_not_json_is_undecodable(client, decoder):
    raw = serialize(
        client,
        identify_with(nullable("string")),
        {"type": "identify", "userId": "u1", "traits": "{nope"},
    )
    with pytest.raises(InvalidEvent) as err:
        decoder.decode(raw)
    assert err.value.kind == "undecodable" and "traits" in err.value.reason


# --- unions and logical types --------------------------------------------------------------


def test_unions_and_logical_types(client, decoder):
    ts_ms = {"type": "long", "logicalType": "timestamp-millis"}
    ts_us = {"type": "long", "logicalType": "timestamp-micros"}
    money = {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}
    a, b = record("A", ("a", "string")), record("B", ("b", "int"), ("c", nullable("string")))
    schema = record(
        "Everything",
        ("ts_ms", ts_ms),
        ("ts_us", ts_us),
        ("ts_us_ms", ts_us),
        ("local", {"type": "long", "logicalType": "local-timestamp-millis"}),
        ("day", {"type": "int", "logicalType": "date"}),
        ("price", money),
        ("count", money),
        ("id", {"type": "string", "logicalType": "uuid"}),
        ("blob", "bytes"),
        ("digest", {"type": "fixed", "name": "Digest", "size": 2}),
        ("plan", {"type": "enum", "name": "Plan", "symbols": ["free", "pro"]}),
        ("n", ["null", "string", "long"]),
        ("s", ["null", "string", "long"]),
        ("missing", ["null", "string", "long"]),
        ("ab", ["null", a, b]),
        ("tags", {"type": "array", "items": nullable("string")}),
        ("maybe_stamp", nullable(ts_ms)),
    )
    uid = uuid.UUID("6f1c2f8e-4d3b-4a57-9e43-1c1c7e0b2a11")
    raw = serialize(
        client,
        schema,
        {
            "ts_ms": datetime(2024, 3, 1, 10, 0, tzinfo=UTC),
            "ts_us": datetime(2024, 3, 1, 10, 0, 0, 123456, tzinfo=UTC),
            "ts_us_ms": datetime(2024, 3, 1, 10, 0, 0, 123000, tzinfo=UTC),
            "local": datetime(2024, 3, 1, 10, 0),
            "day": date(2024, 3, 1),
            "price": Decimal("12.50"),
            "count": Decimal("10.00"),
            "id": str(uid),
            "blob": b"\x00\xffhi",
            "digest": b"\x01\x02",
            "plan": "pro",
            "n": 7,
            "s": "x",
            "missing": None,
            "ab": ("t.B", {"b": 3, "c": None}),
            "tags": ["a", None],
            "maybe_stamp": datetime(2024, 3, 1, 11, 30, 15, 5000, tzinfo=UTC),
        },
    )
    out = decoder.decode(raw)
    assert out == {
        "ts_ms": "2024-03-01T10:00:00.000Z",
        "ts_us": "2024-03-01T10:00:00.123456Z",
        "ts_us_ms": "2024-03-01T10:00:00.123Z",
        "local": "2024-03-01T10:00:00.000",
        "day": "2024-03-01",
        "price": 12.5,
        "count": 10,
        "id": str(uid),
        "blob": base64.b64encode(b"\x00\xffhi").decode(),
        "digest": "AQI=",
        "plan": "pro",
        "n": 7,
        "s": "x",
        "ab": {"b": 3},
        "tags": ["a", None],
        "maybe_stamp": "2024-03-01T11:30:15.005Z",
    }
    assert type(out["count"]) is int and type(out["price"]) is float


# --- JSON and Avro are the same event ------------------------------------------------------

SAMPLES: dict[str, dict[str, Any]] = {
    "identify": {
        "type": "identify",
        "messageId": "m-1",
        "userId": "u1",
        "timestamp": "2024-03-01T10:00:00.000Z",
        "sentAt": "2024-03-01T10:00:01.250Z",
        "context": {"ip": "203.0.113.7", "locale": "fr-FR", "traits": {"plan": "pro"}},
        "traits": {
            "email": "a@example.com",
            "age": 41,
            "vip": True,
            "nick": None,
            "address": {"city": "Paris", "zip": None},
            "tags": ["a", "b"],
        },
    },
    "track": {
        "type": "track",
        "userId": "u1",
        "event": "Signed Up",
        "channel": "server",
        "properties": {"plan": "pro", "price": 9.5},
        "context": {"traits": {"email": "a@example.com"}},
        "version": 2,
    },
    "alias": {
        "type": "alias",
        "userId": "u2",
        "previousId": "anon-1",
        "originalTimestamp": "2024-03-01T09:59:59.999Z",
    },
    "group": {
        "type": "group",
        "userId": "u1",
        "groupId": "g1",
        "traits": {"name": "Acme", "employees": 50},
        "context": {"traits": {"role": "admin"}},
    },
    "page": {
        "type": "page",
        "userId": "u1",
        "name": "Home",
        "category": "site",
        "properties": {"path": "/", "referrer": None},
        "receivedAt": "2024-03-01T10:00:02.000Z",
    },
    "screen": {
        "type": "screen",
        "anonymousId": "a1",
        "name": "Settings",
        "context": {"traits": {"locale": "fr"}},
        "integrations": {"All": True},
    },
}


def shipped(kind: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{kind}.avsc").read_text())  # type: ignore[no-any-return]


def as_avro_value(event: dict[str, Any]) -> dict[str, Any]:
    """A JSON event as a producer using the shipped schemas fills them."""
    out = dict(event)
    for key in FREE_FORM:
        if key in out:
            out[key] = orjson.dumps(out[key]).decode()
    for key in STAMPS:
        if key in out:
            out[key] = datetime.fromisoformat(out[key])
    return out


def test_shipped_schemas_parse_and_share_the_common_part():
    common = None
    for kind in TYPES:
        schema = shipped(kind)
        fastavro.parse_schema(schema)
        fields = schema["fields"]
        assert fields[0]["name"] == "type" and fields[0]["default"] == kind
        part = [(f["name"], f["type"], f.get("default"), f.get("doc")) for f in fields[1:12]]
        assert part[-1][0] == "integrations"
        common = common or part
        assert part == common, f"{kind}.avsc: common part differs"


@pytest.mark.parametrize("kind", TYPES)
def test_shipped_schemas_round_trip_to_the_json_value(client, decoder, kind):
    sample = SAMPLES[kind]
    raw = serialize(client, shipped(kind), as_avro_value(sample))
    assert decoder.decode(raw) == sample
    # Plain Avro with the same schema from the file: the same value.
    plain = PlainAvroDecoder(SCHEMAS / f"{kind}.avsc")
    assert plain.decode(raw[5:]) == sample


def test_json_and_avro_on_one_topic_are_the_same_events(kafka, client, schema_registry):
    topic = kafka.topic(partitions=1, prefix="avro")
    values: list[bytes] = []
    for kind in TYPES:
        values.append(orjson.dumps(SAMPLES[kind]))
        values.append(serialize(client, shipped(kind), as_avro_value(SAMPLES[kind]), topic))
    # The traits shapes a producer with its own schema might use, as Avro, beside the JSON.
    traits = {
        k: v for k, v in SAMPLES["identify"]["traits"].items() if k not in ("nick", "address")
    }
    own = {**SAMPLES["identify"], "traits": traits}
    values.append(orjson.dumps(own))
    values.append(
        serialize(
            client,
            record(
                "MyIdentify",
                ("type", "string"),
                ("userId", "string"),
                ("messageId", "string"),
                ("timestamp", "string"),
                ("sentAt", "string"),
                (
                    "context",
                    {
                        "type": "map",
                        "values": ["null", "string", {"type": "map", "values": "string"}],
                    },
                ),
                (
                    "traits",
                    record(
                        "MyTraits",
                        ("email", "string"),
                        ("age", "long"),
                        ("vip", "boolean"),
                        ("tags", {"type": "array", "items": "string"}),
                    ),
                ),
            ),
            own,
            topic,
        )
    )
    kafka.produce(topic, values, key=lambda v: b"k")
    settings = load_settings(
        environ={},
        overrides={
            "kafka.schema_registry_url": schema_registry,
            "kafka.formats": {topic: "auto"},
        },
    )
    dec = decoder_for(settings.kafka)
    messages = sorted(kafka.read_all(topic, len(values)), key=lambda m: m.offset())
    assert [m.value()[:1] == b"\x00" for m in messages] == [False, True] * (len(values) // 2)
    decoded = [dec.decode(m.value(), m.topic()) for m in messages]
    for as_json, as_avro in zip(decoded[::2], decoded[1::2], strict=True):
        assert as_avro == as_json
        assert parse_event(as_avro) == parse_event(as_json)


# --- errors --------------------------------------------------------------------------------


def test_an_unknown_schema_id_is_undecodable_naming_the_id(decoder):
    with pytest.raises(InvalidEvent) as err:
        decoder.decode(b"\x00" + (987654).to_bytes(4, "big") + b"\x02")
    assert err.value.kind == "undecodable"
    assert "schema id 987654" in err.value.reason


def test_garbage_after_a_valid_header_is_undecodable(client, decoder):
    raw = serialize(client, shipped("alias"), as_avro_value(SAMPLES["alias"]))
    schema_id = int.from_bytes(raw[1:5], "big")
    for body in (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", raw[5:] + b"\x00\x00", raw[5:-3]):
        with pytest.raises(InvalidEvent) as err:
            decoder.decode(raw[:5] + body)
        assert err.value.kind == "undecodable"
        assert f"schema id {schema_id}" in err.value.reason


def test_values_that_are_not_confluent_avro(decoder, schema_registry):
    avro_only = decoder_for(KafkaSettings(schema_registry_url=schema_registry, format="avro"))
    for value in (b'{"type": "track"}', b"\x00\x00", None):
        with pytest.raises(InvalidEvent, match="undecodable"):
            avro_only.decode(value)
    with pytest.raises(InvalidEvent, match="undecodable"):
        decoder.decode(None)  # a tombstone, as the JSON decoder says
    # No registry configured: JSON still reads, Avro is undecodable with a reason.
    json_only = decoder_for(KafkaSettings())
    assert json_only.decode(b'{"type": "track"}') == {"type": "track"}
    with pytest.raises(InvalidEvent, match="no schema registry"):
        json_only.decode(b"\x00\x00\x00\x00\x07\x02")


def test_formats_per_topic(client, schema_registry):
    raw = serialize(client, shipped("alias"), as_avro_value(SAMPLES["alias"]))
    settings = KafkaSettings(
        schema_registry_url=schema_registry,
        format="json",
        formats={"avro-topic": "avro", "mixed": "auto"},
    )
    dec = decoder_for(settings)
    assert dec.decode(raw, "avro-topic") == SAMPLES["alias"]
    assert dec.decode(raw, "mixed") == SAMPLES["alias"]
    assert dec.decode(b'{"type": "alias"}', "mixed") == {"type": "alias"}
    with pytest.raises(InvalidEvent, match="invalid JSON"):
        dec.decode(raw, "other")  # json by default
    with pytest.raises(InvalidEvent, match="invalid JSON"):
        dec.decode(raw)  # the one-argument call: the default format


def test_settings_that_cannot_work_name_the_setting():
    with pytest.raises(ConfigError, match=r"kafka\.schema_registry_url"):
        load_settings(environ={}, overrides={"kafka.format": "avro"})
    with pytest.raises(ConfigError, match=r"kafka\.schema_registry_url"):
        load_settings(environ={}, overrides={"kafka.formats": {"t": "avro"}})
    with pytest.raises(ConfigError, match=r"kafka\.avro_schema_file"):
        load_settings(environ={}, overrides={"kafka.format": "avro-plain"})
    with pytest.raises(ConfigError, match=r"kafka\.schema_registry_basic_auth") as err:
        load_settings(environ={"SCHEMA_REGISTRY_BASIC_AUTH": "only-a-secret"})
    assert "only-a-secret" not in str(err.value)
    with pytest.raises(ConfigError, match=r"kafka\.schema_registry_url") as err:
        load_settings(environ={"SCHEMA_REGISTRY_URL": "http://me:pw123@registry:8081"})
    assert "pw123" not in str(err.value)
    with pytest.raises(ConfigError, match=r"kafka\.avro_schema_file"):
        decoder_for(KafkaSettings(format="avro-plain", avro_schema_file="/nonexistent.avsc"))
    env = {
        "SCHEMA_REGISTRY_URL": "https://r:8081/apis/ccompat/v7/",
        "SCHEMA_REGISTRY_BASIC_AUTH": "u:p",
    }
    kafka = load_settings(environ=env).kafka
    assert kafka.schema_registry_url == "https://r:8081/apis/ccompat/v7"
    assert kafka.schema_registry_basic_auth is not None
    assert kafka.schema_registry_basic_auth.get_secret_value() == "u:p"
    assert "u:p" not in repr(kafka)


@pytest.mark.slow
def test_a_registry_that_stops_answering_is_unavailable_not_undecodable(client):
    from registry import Registry

    with Registry() as second:
        dec = decoder_for(KafkaSettings(schema_registry_url=second.url, format="avro"))
        other = SchemaRegistryClient({"url": second.url, "timeout": 20})
        first = serialize(other, shipped("alias"), as_avro_value(SAMPLES["alias"]))
        later = serialize(other, shipped("page"), as_avro_value(SAMPLES["page"]))
        assert dec.decode(first) == SAMPLES["alias"]
        second.stop()
        # A schema already fetched needs no registry; a new one cannot be had.
        assert dec.decode(first) == SAMPLES["alias"]
        with pytest.raises(RegistryUnavailable) as err:
            dec.decode(later)
        assert err.value.status is None
        second.start()  # empty again (in memory): the same id is now unknown, not unavailable
        with pytest.raises(InvalidEvent, match="schema id"):
            dec.decode(later)


# A registry that answers what the test says: Apicurio demands an OIDC server for auth, far
# from cheap, so the one case that needs 401/403/5xx uses this stand-in.


class _Answers(BaseHTTPRequestHandler):
    status = 401
    code = 40101
    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        body = (
            b"not json"
            if self.code is None
            else orjson.dumps({"error_code": self.code, "message": "no"})
        )
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_registry() -> Iterator[tuple[ThreadingHTTPServer, str]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (401, 40101, FatalRegistryError),
        (403, 40301, FatalRegistryError),
        (404, None, FatalRegistryError),  # a 404 that is no "schema not found": wrong URL
        (404, 40403, InvalidEvent),
        (503, 50301, RegistryUnavailable),
        (500, None, RegistryUnavailable),
    ],
)
def test_registry_answers_and_what_they_become(fake_registry, status, code, error):
    _server, url = fake_registry
    _Answers.status, _Answers.code, _Answers.seen = status, code, []
    secret = "s3cret-" + uuid.uuid4().hex
    env = {"SCHEMA_REGISTRY_URL": url, "SCHEMA_REGISTRY_BASIC_AUTH": f"knock-sink:{secret}"}
    dec = decoder_for(load_settings(environ=env, overrides={"kafka.format": "avro"}).kafka)
    with pytest.raises(error) as err:
        dec.decode(b"\x00\x00\x00\x00\x2a\x02")
    assert secret not in str(err.value) and secret not in repr(err.value.__cause__)
    expected = "Basic " + base64.b64encode(f"knock-sink:{secret}".encode()).decode()
    assert _Answers.seen == [expected]  # one request: the sink does the retrying
    if error is RegistryUnavailable:
        assert err.value.status == status


def test_an_injected_client_is_used_as_is():
    class Refusing:
        def get_schema(self, schema_id: int) -> Any:
            raise ConnectionRefusedError("refused")

    dec = ConfluentAvroDecoder(Refusing(), url="http://registry")
    with pytest.raises(RegistryUnavailable, match="http://registry"):
        dec.decode(b"\x00\x00\x00\x00\x01\x02")
