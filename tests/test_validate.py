"""``knock-sink validate`` and ``backfill --dry-run``: exact output and exit codes; a dry run
reads the real broker, asks nothing of Knock (the emulator counts no request) and commits
nothing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import fastavro
import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumer.calls import Call, bulk_identify, call_for, merge, single_identify
from consumer.cli import main
from consumer.ops import Identify, Merge

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"

GOOD_AND_BAD = [
    b'{"type":"identify","userId":"u1","traits":{"email":"a@example.com","plan":"pro","gone":null}}',
    b"{not json",
    b"",
    b'{"type":"alias","previousId":"anon","userId":"u 1"}',
    b'{"type":"track","userId":"u2","event":"Clicked"}',
    b'{"type":"identify","userId":"a/b","traits":{}}',
    b'{"type":"page","userId":"u3","context":{"traits":{"phone":"not a number","n":1}}}',
]


def test_calls_render_as_the_client_sends_them():
    assert call_for(Identify("u/1", {"a": 1})) == Call(
        "POST", "/v1/users/bulk/identify", {"users": [{"id": "u/1", "a": 1}]}
    )
    assert (
        single_identify(Identify("u/1", {"a": None})).render() == 'PUT /v1/users/u%2F1 {"a":null}'
    )
    assert merge(Merge("to", "from")).render() == 'POST /v1/users/to/merge {"from_user_id":"from"}'
    assert bulk_identify([Identify("a", {}), Identify("b", {"x": 1})]).body == {
        "users": [{"id": "a"}, {"id": "b", "x": 1}]
    }


def test_validate_prints_each_messages_calls_or_dead_letter_and_a_summary(tmp_path, capsys):
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(GOOD_AND_BAD) + b"\n")
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        'line 1: POST /v1/users/bulk/identify {"users":[{"id":"u1","plan":"pro","gone":null,"email":"a@example.com"}]}',
        "line 2: dead-letter undecodable: invalid JSON: unexpected character, expected a string key: line 1 column 2 (char 1)",
        'line 4: POST /v1/users/u%201/merge {"from_user_id":"anon"}',
        "line 5: note no_traits",
        "line 6: dead-letter forbidden_user_id: user id 'a/b' contains '/' or '#'",
        'line 7: POST /v1/users/bulk/identify {"users":[{"id":"u3","n":1}]}',
        "line 7: note invalid_phone",
        "6 messages: 4 map to 3 calls (POST /v1/users/bulk/identify 2, POST /v1/users/{id}/merge 1), "
        "2 would be dead-lettered (forbidden_user_id 1, undecodable 1)",
    ]


def test_validate_exits_0_when_every_message_maps(tmp_path, capsys):
    path = tmp_path / "good.ndjson"
    path.write_bytes(GOOD_AND_BAD[0] + b"\n" + GOOD_AND_BAD[4] + b"\n")
    assert main(["validate", str(path), "--anonymous", "anonymous_id"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "2 messages: 2 map to 1 calls (POST /v1/users/bulk/identify 1), 0 would be dead-lettered"
    )


def test_validate_bad_usage_exits_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing.ndjson")]) == 2
    assert "missing.ndjson" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["validate"])
    assert exit_.value.code == 2
    assert main(["validate", str(tmp_path), "--format", "avro-plain"]) == 2  # no schema file
    assert "kafka.avro_schema_file" in capsys.readouterr().err


def test_validate_an_avro_container_file(tmp_path, capsys):
    schema = json.loads((SCHEMAS / "identify.avsc").read_text())
    path = tmp_path / "events.avro"
    with path.open("wb") as f:
        fastavro.writer(
            f,
            fastavro.parse_schema(schema),
            [
                {"type": "identify", "userId": "u1", "traits": '{"plan": "pro", "seats": null}'},
                {"type": "identify", "userId": "u2", "traits": "not json"},
            ],
        )
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0]
        == 'record 1: POST /v1/users/bulk/identify {"users":[{"id":"u1","plan":"pro","seats":null}]}'
    )
    assert out[1].startswith("record 2: dead-letter undecodable: traits: a string that is not JSON")
    assert out[2] == (
        "2 messages: 1 map to 1 calls (POST /v1/users/bulk/identify 1), "
        "1 would be dead-lettered (undecodable 1)"
    )


def test_validate_base64_confluent_values_with_the_registry(tmp_path, capsys, schema_registry):
    schema = (SCHEMAS / "alias.avsc").read_text()
    ser = AvroSerializer(SchemaRegistryClient({"url": schema_registry, "timeout": 20}), schema)
    value = ser(
        {"type": "alias", "userId": "to", "previousId": "from"},
        SerializationContext("validate-test", MessageField.VALUE),
    )
    unknown = b"\x00" + (987_654_321).to_bytes(4, "big") + value[5:]
    path = tmp_path / "values.b64"
    path.write_text("\n".join(base64.b64encode(v).decode() for v in (value, unknown)) + "\n!!!\n")
    assert (
        main(["validate", str(path), "--input", "base64", "--schema-registry-url", schema_registry])
        == 1
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == 'line 1: POST /v1/users/to/merge {"from_user_id":"from"}'
    assert out[1].startswith("line 2: dead-letter undecodable: schema id 987654321 not found")
    assert out[2].startswith("line 3: dead-letter undecodable: not base64")
    assert out[3].endswith("2 would be dead-lettered (undecodable 2)")


def test_backfill_dry_run_calls_nothing_and_commits_nothing(kafka, api, capsys, monkeypatch):
    topic = kafka.topic(2)
    events = [{"type": "identify", "userId": f"u{i}", "traits": {"i": i}} for i in range(4)]
    kafka.produce(topic, events, partition=0)
    kafka.produce(topic, [b"{not json"], partition=1)
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "KNOCK_API_KEY": api.api_key,
        "KNOCK_BASE_URL": api.url,
    }.items():
        monkeypatch.setenv(name, value)
    code = main(
        ["backfill", "--dry-run", "--from-beginning", "--topic", topic, "--group-id", f"g-{topic}"]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert sorted(out[:-1]) == sorted(
        [
            f"{topic}[0]@{i}: POST /v1/users/bulk/identify "
            + orjson.dumps({"users": [{"id": f"u{i}", "i": i}]}).decode()
            for i in range(4)
        ]
        + [
            f"{topic}[1]@0: dead-letter undecodable: invalid JSON: unexpected character, expected a string key: "
            "line 1 column 2 (char 1)"
        ]
    )
    assert out[-1] == (
        "5 messages: 4 map to 4 calls (POST /v1/users/bulk/identify 4), "
        "1 would be dead-lettered (undecodable 1)"
    )
    assert api.stats()["requests"] == {}
    assert kafka.committed(f"g-{topic}", topic) == {}
    assert f"{topic}.dlq" not in kafka.admin.list_topics(timeout=10).topics
