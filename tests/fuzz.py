"""Fuzzing the path every Kafka value takes: decode -> parse_event -> mapping -> Knock calls.

The property, for any bytes: either the value maps (ops that render as JSON-serialisable Knock
calls) or it raises :class:`~consumer.errors.InvalidEvent` with a known dead-letter kind.
Anything else escaping would stop the sink's loop instead of dead-lettering one event.

The first byte of an input picks the path: JSON, Confluent-framed Avro (writer schemas from an
in-process registry client: ids 1-4 known, others 404), or bare Avro with one of the shipped
schemas. ``python tests/fuzz.py [libFuzzer flags]`` runs it under atheris (``make fuzz``);
``tests/test_fuzz.py`` runs a bounded, seeded share of it in the normal suite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":  # under atheris: the sink's modules instrumented for coverage
    import atheris

    with atheris.instrument_imports(include=["consumer"]):
        import consumer.avro
        import consumer.calls
        import consumer.decode
        import consumer.events
        import consumer.mapping  # noqa: F401

from consumer.avro import ConfluentAvroDecoder, PlainAvroDecoder  # noqa: E402
from consumer.calls import call_for  # noqa: E402
from consumer.config import MappingSettings  # noqa: E402
from consumer.decode import JsonDecoder, SizeLimit  # noqa: E402
from consumer.errors import InvalidEvent  # noqa: E402
from consumer.events import parse_event  # noqa: E402
from consumer.mapping import Mapper  # noqa: E402
from consumer.ops import Identify, Merge  # noqa: E402

SCHEMAS = ROOT / "schemas"
KINDS = {"undecodable", "oversize", "invalid_event", "forbidden_user_id"}
MAX_BYTES = 4096


def _record(name: str, *fields: tuple[str, Any]) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields]}


#: Writer schemas the fuzzed registry knows, by id: the three shapes of traits, and one of
#: logical types and unions.
REGISTERED: dict[int, dict[str, Any]] = {
    1: _record(
        "E1", ("type", "string"), ("userId", ["null", "string"]), ("traits", ["null", "string"])
    ),
    2: _record(
        "E2",
        ("type", "string"),
        ("userId", ["null", "string"]),
        ("previousId", ["null", "string"]),
        (
            "traits",
            ["null", {"type": "map", "values": ["null", "string", "long", "double", "boolean"]}],
        ),
    ),
    3: _record(
        "E3",
        ("type", "string"),
        ("userId", "string"),
        (
            "traits",
            _record(
                "T3",
                ("email", ["null", "string"]),
                ("phone", ["null", "string", "long"]),
                ("createdAt", ["null", {"type": "long", "logicalType": "timestamp-millis"}]),
                ("address", ["null", _record("A3", ("city", "string"))]),
            ),
        ),
        ("context", ["null", "string"]),
    ),
    4: _record(
        "E4",
        ("type", {"type": "enum", "name": "K", "symbols": ["identify", "track", "alias", "page"]}),
        ("userId", ["null", "string"]),
        ("anonymousId", ["null", "string"]),
        ("timestamp", ["null", {"type": "long", "logicalType": "timestamp-micros"}]),
        ("properties", ["null", "string"]),
        (
            "context",
            [
                "null",
                _record(
                    "C4",
                    ("traits", ["null", "string", {"type": "map", "values": "string"}]),
                    ("locale", ["null", "string"]),
                ),
            ],
        ),
        (
            "amount",
            ["null", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}],
        ),
        ("id", ["null", {"type": "string", "logicalType": "uuid"}]),
    ),
}


class _Registry:
    """A registry client holding :data:`REGISTERED` (the real client's 404 for the others)."""

    def get_schema(self, schema_id: int) -> Any:
        from confluent_kafka.schema_registry import Schema
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        if schema_id not in REGISTERED:
            raise SchemaRegistryError(404, 40403, "Schema not found")
        return Schema(json.dumps(REGISTERED[schema_id]), "AVRO")


JSON = SizeLimit(JsonDecoder(), MAX_BYTES)
CONFLUENT = SizeLimit(ConfluentAvroDecoder(_Registry(), url="fuzz"), MAX_BYTES)
PLAIN = [
    SizeLimit(PlainAvroDecoder(SCHEMAS / f"{k}.avsc"), MAX_BYTES)
    for k in ("identify", "track", "alias")
]
MAPPERS = [
    Mapper(MappingSettings()),
    Mapper(MappingSettings(anonymous="anonymous_id", drop=["plan"], rename={"age": "years"})),
]
DECODERS = [JSON, CONFLUENT, *PLAIN]


def check(data: bytes) -> str:
    """One input through the sink's path; returns ``mapped`` or the dead-letter kind. Raises
    (the finding) when anything else escapes or a mapped op cannot be sent."""
    if not data:
        return check(b"\x00")
    selector, value = data[0], data[1:]
    decoder = DECODERS[selector % len(DECODERS)]
    mapper = MAPPERS[(selector >> 4) & 1]
    try:
        mapped = mapper.map(parse_event(decoder.decode(value)))
    except InvalidEvent as exc:
        if exc.kind not in KINDS or not isinstance(exc.reason, str) or not exc.reason:
            raise AssertionError(f"unknown dead-letter kind or empty reason: {exc!r}") from None
        return exc.kind
    for op in mapped.ops:
        assert isinstance(op, (Identify, Merge)), op
        call = call_for(op)
        orjson.dumps(call.body)  # what Knock would receive must be JSON
        assert call.route.startswith("/v1/users/"), call
    assert all(isinstance(n, str) for n in mapped.notes)
    return "mapped"


def seeds() -> list[bytes]:
    """Valid inputs for each path, for the fuzzer's corpus and the bounded test."""
    import io

    import fastavro

    events = [
        {
            "type": "identify",
            "userId": "u1",
            "traits": {
                "email": "a@example.com",
                "phone": "+14155550100",
                "createdAt": "2024-01-01T00:00:00Z",
                "plan": None,
            },
        },
        {
            "type": "track",
            "userId": "u2",
            "event": "x",
            "context": {"traits": {"name": "A", "locale": "en"}},
        },
        {"type": "alias", "previousId": "a", "userId": "b"},
        {
            "type": "identify",
            "anonymousId": "anon",
            "traits": {"firstName": "A", "lastName": "B", "age": 3},
        },
    ]
    out = [bytes([0]) + orjson.dumps(e) for e in events]
    confluent_values = {
        1: {"type": "identify", "userId": "u1", "traits": '{"email": "a@example.com", "n": null}'},
        2: {
            "type": "alias",
            "userId": "u1",
            "previousId": "u0",
            "traits": {"a": 1, "b": None, "c": "x"},
        },
        3: {
            "type": "identify",
            "userId": "u3",
            "traits": {
                "email": None,
                "phone": 4155550100,
                "createdAt": 1_700_000_000_000,
                "address": {"city": "P"},
            },
            "context": '{"locale": "fr"}',
        },
        4: {
            "type": "track",
            "userId": None,
            "anonymousId": "an",
            "timestamp": 1_700_000_000_000_000,
            "properties": "{}",
            "context": {"traits": {"k": "v"}, "locale": None},
            "amount": None,
            "id": "6f1c2b9e-6a3e-4e0b-9d36-3f3f9b7b6c11",
        },
    }
    for sid, value in confluent_values.items():
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(REGISTERED[sid]), value)
        out.append(bytes([1]) + b"\x00" + sid.to_bytes(4, "big") + buf.getvalue())
    for i, kind in enumerate(("identify", "track", "alias")):
        schema = fastavro.parse_schema(json.loads((SCHEMAS / f"{kind}.avsc").read_text()))
        value = {
            "type": kind,
            "userId": "u9",
            "previousId": "u8",
            "event": "E",
            "traits": '{"email": "x@example.com"}',
            "context": '{"traits": {"plan": "pro"}}',
        }
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, value)
        out.append(bytes([2 + i]) + buf.getvalue())
    return out


def main(argv: list[str]) -> None:
    import atheris

    corpus = ROOT / ".fuzz-corpus"
    corpus.mkdir(exist_ok=True)
    for i, seed in enumerate(seeds()):
        (corpus / f"seed-{i}").write_bytes(seed)

    def one(data: bytes) -> None:
        check(data)

    atheris.Setup([argv[0], *argv[1:], str(corpus)], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
