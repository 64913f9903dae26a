"""``backfill --workers N`` and ``--worker I/N``: one backfill over several processes, each with
a fixed share of the partitions, spending one Knock budget; a worker killed and rerun alone."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from typing import Any

import pytest

from consumer.cli import _worker
from consumer.emulator import EmulatorServer
from consumer.records import Worker
from consumer.workers import combine, worst
from tests.conftest import ROOT, sink_env, wait_for
from tests.model import actual_state, expected_state
from tests.test_budget import statuses

CLI = [sys.executable, "-m", "consumer.cli"]
PARTITIONS = 4


def deep_history(users: int, per_user: int) -> list[list[dict[str, Any]]]:
    """Per partition, each user's events in order on one partition (user u on u % 4): mostly
    tracks carrying the user's traits, an identify every tenth event."""
    parts: list[list[dict[str, Any]]] = [[] for _ in range(PARTITIONS)]
    for i in range(per_user):
        for u in range(users):
            traits = {"i": i, f"k{i % 5}": i, "plan": {f"p{i % 3}": i}}
            if i % 10 == 0:
                event = {"type": "identify", "userId": f"u{u}", "traits": traits}
            else:
                event = {
                    "type": "track",
                    "userId": f"u{u}",
                    "event": "Viewed",
                    "context": {"traits": traits},
                }
            parts[u % PARTITIONS].append(event)
    return parts


def produce(kafka: Any, topic: str, parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    for p, events in enumerate(parts):
        kafka.produce(topic, events, partition=p)
    return [e for events in parts for e in events]


# -- pure logic --------------------------------------------------------------------------------


def test_shares_are_whole_partitions_disjoint_and_cover_every_partition():
    parts = [("b", 1), ("a", 2), ("a", 0), ("b", 0), ("a", 1)]
    shares = [Worker(i, 2).owns(parts) for i in range(2)]
    assert shares == [[("a", 0), ("a", 2), ("b", 1)], [("a", 1), ("b", 0)]]
    for n in (1, 2, 3, 5, 7):
        got = [tp for i in range(n) for tp in Worker(i, n).owns(parts)]
        assert sorted(got) == sorted(parts)  # each partition in exactly one share
    assert Worker(6, 7).owns(parts) == []  # more workers than partitions: some read nothing


@pytest.mark.parametrize("text", ["2/2", "1", "a/2", "-1/2", "0/0", "1/"])
def test_a_bad_worker_is_refused_by_the_parser(text):
    with pytest.raises(argparse.ArgumentTypeError):
        _worker(text)


def test_the_summary_adds_the_workers_up_and_the_exit_code_is_the_most_serious():
    outs = {
        1: {"consumed": 5, "committed": {"t[1]": 9}, "complete": True, "worker": "1/2"},
        0: {"consumed": 3, "committed": {"t[0]": 4}, "complete": True, "worker": "0/2"},
    }
    total = combine("g", outs)
    assert total["consumed"] == 8 and total["committed"] == {"t[0]": 4, "t[1]": 9}
    assert total["complete"] is True and total["group_id"] == "g"
    assert [w["worker"] for w in total["workers"]] == ["0/2", "1/2"]
    assert combine("g", {0: outs[0], 1: None})["complete"] is False  # one never reported
    assert worst([0, 0]) == 0 and worst([0, 4, 2]) == 2 and worst([4, 3]) == 3
    assert worst([2, -9, 0]) == 1  # killed: counted as unexpected


# -- real processes, a real broker -------------------------------------------------------------


def test_two_workers_share_knocks_limits_and_end_exact(kafka):
    """``--workers 2`` under Knock's limits: each worker reads its own two partitions and
    commits them under one group, every user is sent once, and taking turns on Knock's budget
    they draw no 429."""
    topic = kafka.topic(PARTITIONS)
    events = produce(kafka, topic, deep_history(users=120, per_user=100))
    with EmulatorServer(api_key="sk_test_workers", rate_limits="knock") as api:
        env = sink_env(kafka, api, topic)
        proc = subprocess.run(
            [*CLI, "backfill", "--workers", "2", "--from-beginning", "--log-format", "json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout)
        group = out["group_id"]
        assert group.startswith(f"g-{topic}-backfill-")
        assert out["complete"] is True and out["consumed"] == len(events)
        assert [w["worker"] for w in out["workers"]] == ["0/2", "1/2"]
        # Worker 0 read partitions 0 and 2, worker 1 partitions 1 and 3.
        assert [sorted(w["committed"]) for w in out["workers"]] == [
            [f"{topic}[0]", f"{topic}[2]"],
            [f"{topic}[1]", f"{topic}[3]"],
        ]
        assert kafka.committed(group, topic) == kafka.end_offsets(topic)
        assert actual_state(api.users()) == expected_state(events)
        assert api.stats()["identify_entries"] == 120  # each user once
        counts = statuses(api)
        assert "429" not in counts, api.stats()["requests"]
        # Each worker's lines say which worker wrote them.
        tagged = [json.loads(line).get("worker") for line in proc.stderr.splitlines()]
        assert {"0/2", "1/2"} <= set(tagged)


def test_a_worker_killed_midway_reruns_alone_and_the_backfill_ends_exact(kafka, api):
    topic = kafka.topic(PARTITIONS)
    events = produce(kafka, topic, deep_history(users=200, per_user=20))
    group = f"g-{topic}-replay"
    env = sink_env(kafka, api, topic)
    base = [*CLI, "backfill", "--group-id", group, "--rate-limits", "off"]
    # Slow enough to kill worker 0 midway: 10 users a call, 0.3 s a call.
    api.set_faults(latency_ms=300)

    def worker(i: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*base, "--worker", f"{i}/2", "--bulk-size", "10"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    first, second = worker(0), worker(1)
    try:
        wait_for(lambda: api.stats()["identify_entries"] >= 30, 90, "both workers sending")
        first.kill()
        first.wait(30)
        out, err = second.communicate(timeout=120)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
    assert first.returncode == -signal.SIGKILL
    assert second.returncode == 0, err[-3000:]
    ends = kafka.end_offsets(topic)
    done = kafka.committed(group, topic)
    # Worker 1 finished its share; worker 0 was cut short and touched nothing of worker 1's.
    assert json.loads(out)["worker"] == "1/2"
    assert {p: done.get(p) for p in (1, 3)} == {1: ends[1], 3: ends[3]}
    assert done.get(0, 0) + done.get(2, 0) < ends[0] + ends[2]

    api.clear_faults()
    again = subprocess.run(
        [*base, "--worker", "0/2"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["complete"] is True
    assert kafka.committed(group, topic) == ends
    assert actual_state(api.users()) == expected_state(events)


def test_workers_refuse_a_topic_not_keyed_by_user_before_sending_anything(kafka, api):
    topic = kafka.topic(PARTITIONS)
    events = [{"type": "identify", "userId": f"u{i % 30}", "traits": {"i": i}} for i in range(300)]
    kafka.produce(topic, events, key=lambda e: None)  # round robin, as Segment writes
    proc = subprocess.run(
        [*CLI, "backfill", "--workers", "2", "--from-beginning", "--rate-limits", "off"],
        env=sink_env(kafka, api, topic),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "not keyed by user" in proc.stderr and "knock-sink repartition" in proc.stderr
    assert api.stats()["identify_entries"] == 0
    assert json.loads(proc.stdout)["complete"] is False


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--worker", "0/2"], "--group-id"),
        (["--workers", "2", "--dry-run"], "--dry-run"),
        (["--worker", "2/2", "--group-id", "g"], "--worker"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_bad_worker_options_exit_2_naming_them(kafka, api, args, needle):
    proc = subprocess.run(
        [*CLI, "backfill", *args],
        env=sink_env(kafka, api, "t-unused"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr.strip().splitlines()[-1], proc.stderr
