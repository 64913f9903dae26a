"""Backfill options on the real broker: from a timestamp, from offsets, until a timestamp, a
group of its own; the progress on a pseudo-terminal and the plain lines off it."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import select
import subprocess
import sys
from datetime import UTC, datetime

import orjson
import pytest
from confluent_kafka import Producer

from consumer.cli import _offsets, _timestamp, build_parser
from consumer.records import Replay
from consumer.sink import Sink
from tests.conftest import ROOT, sink_env
from tests.model import actual_state, expected_state

CLI = [sys.executable, "-m", "consumer.cli"]
#: Two eras of events, a day apart.
OLD_MS = 1_700_000_000_000
NEW_MS = OLD_MS + 86_400_000


def produce_at(
    kafka, topic: str, events: list[dict], ts_ms: int, partition: int | None = None
) -> None:
    p = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for e in events:
        kw = {} if partition is None else {"partition": partition}
        p.produce(topic, orjson.dumps(e), key=e["userId"].encode(), timestamp=ts_ms, **kw)
    assert p.flush(30) == 0


def eras(users: int = 8) -> tuple[list[dict], list[dict]]:
    old = [
        {"type": "identify", "userId": f"u{i % users}", "traits": {"era": "old", "i": i}}
        for i in range(40)
    ]
    new = [
        {"type": "identify", "userId": f"u{i % users}", "traits": {"era": "new", "j": i}}
        for i in range(40)
    ]
    return old, new


def test_timestamps_and_offsets_parse():
    assert _timestamp("2023-11-14T22:13:20Z") == OLD_MS
    assert _timestamp("2023-11-14T22:13:20") == OLD_MS  # no zone: UTC
    assert _timestamp("2023-11-15T00:13:20+02:00") == OLD_MS
    assert _offsets("a.b:0:5, a.b:1:0,c-d:2:7") == {("a.b", 0): 5, ("a.b", 1): 0, ("c-d", 2): 7}
    for bad in ("a:0", "a:x:1", "a:0:-1", ":0:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            _offsets(bad)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["backfill", "--from-timestamp", "yesterday"])
    with pytest.raises(SystemExit):  # one start only
        build_parser().parse_args(
            ["backfill", "--from-timestamp", "2024-01-01", "--from-offsets", "t:0:1"]
        )


def test_from_a_timestamp_applies_only_what_came_after(kafka, api, settings_for):
    topic = kafka.topic(2)
    old, new = eras()
    produce_at(kafka, topic, old, OLD_MS)
    produce_at(kafka, topic, new, NEW_MS)
    settings = settings_for(topic)
    summary = Sink(settings).run(until_end=True, replay=Replay(from_time_ms=OLD_MS + 1))
    assert actual_state(api.users()) == expected_state(new)
    assert summary.consumed == len(new)
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)


def test_from_offsets_starts_those_partitions_there(kafka, api, settings_for):
    topic = kafka.topic(1)
    events = [{"type": "identify", "userId": f"u{i}", "traits": {"i": i}} for i in range(10)]
    kafka.produce(topic, events)
    summary = Sink(settings_for(topic)).run(
        until_end=True, replay=Replay(from_offsets={(topic, 0): 6})
    )
    assert actual_state(api.users()) == expected_state(events[6:])
    assert summary.consumed == 4
    assert kafka.committed(f"g-{topic}", topic) == {0: 10}


def test_until_a_timestamp_stops_at_the_first_offset_at_or_after_it(kafka, api, settings_for):
    topic = kafka.topic(2)
    old, new = eras()
    for p in (0, 1):
        produce_at(kafka, topic, old[p::2], OLD_MS, partition=p)
        produce_at(kafka, topic, new[p::2], NEW_MS, partition=p)
    summary = Sink(settings_for(topic)).run(
        from_beginning=True, until_end=True, replay=Replay(until_time_ms=NEW_MS)
    )
    assert actual_state(api.users()) == expected_state(old[0::2] + old[1::2])
    assert summary.consumed == len(old)
    assert kafka.committed(f"g-{topic}", topic) == {0: 20, 1: 20}  # the first "new" offsets


def _backfill_cmd(topic: str) -> list[str]:
    return [
        *CLI,
        "backfill",
        "--topic",
        topic,
        "--from-beginning",
        "--rate-limits",
        "off",
        "--from-timestamp",
        datetime.fromtimestamp(OLD_MS / 1000, UTC).isoformat(),
    ]


def test_progress_off_a_terminal_is_plain_log_lines_and_a_summary(kafka, api):
    topic = kafka.topic(2)
    old, new = eras()
    produce_at(kafka, topic, old + new, OLD_MS)
    proc = subprocess.run(
        _backfill_cmd(topic),
        env=sink_env(kafka, api, topic),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    progress = [line["message"] for line in lines if line["logger"] == "knock_sink.progress"]
    assert progress and progress[-1].startswith(
        "backfill: 80 read, 80 applied, 0 to go over 2 partitions"
    )
    out = json.loads(proc.stdout)
    assert out["backfill"]["events"] == 80 and out["backfill"]["users_sent"] >= 8
    assert kafka.committed(f"g-{topic}", topic) == {}  # the live group's offsets untouched
    assert kafka.committed(out["group_id"], topic) == kafka.end_offsets(topic)
    assert actual_state(api.users()) == expected_state(old + new)


def test_progress_on_a_terminal_is_a_live_table(kafka, api):
    topic = kafka.topic(2)
    old, _ = eras()
    produce_at(kafka, topic, old, OLD_MS)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        _backfill_cmd(topic),
        env={**sink_env(kafka, api, topic), "COLUMNS": "120"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    )
    os.close(follower)
    screen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        assert ready, "no output on the terminal"
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    assert "knock-sink backfill" in text and "events applied" in text and f"lag {topic}[1]" in text
    assert "backfill done in" in text and "40 events" in text
    assert "{" not in text.split("backfill done in")[0].splitlines()[0]  # readable, not JSON
    assert json.loads(out)["backfill"]["events"] == 40
    assert actual_state(api.users()) == expected_state(old)
