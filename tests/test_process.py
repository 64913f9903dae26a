"""``knock-sink`` as a real process: SIGKILL and restart, SIGTERM drain, exit codes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from confluent_kafka import Consumer

from tests.conftest import ROOT, sink_env, wait_for
from tests.model import actual_state, expected_state

CLI = [sys.executable, "-m", "consumer.cli"]
PARTITIONS = 3


def partitioned_events(users: int, per_user: int) -> list[list[dict[str, Any]]]:
    """Events per partition (a user's events all in one partition, in order)."""
    parts: list[list[dict[str, Any]]] = [[] for _ in range(PARTITIONS)]
    for i in range(per_user):
        for u in range(users):
            traits = {"i": i, f"k{i % 4}": i, "nested": {f"n{i % 3}": i}}
            if i % 5 == 0:
                parts[u % PARTITIONS].append(
                    {
                        "type": "track",
                        "userId": f"u{u}",
                        "event": "e",
                        "context": {"traits": traits},
                    }
                )
            else:
                parts[u % PARTITIONS].append(
                    {"type": "identify", "userId": f"u{u}", "traits": traits}
                )
    return parts


def produce_partitioned(kafka: Any, topic: str, parts: list[list[dict[str, Any]]]) -> None:
    for p, events in enumerate(parts):
        kafka.produce(topic, events, partition=p)


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    # Pinned to mode "either": the waits on progress count identify entries, and it sends each
    # of a user's updates carrying "nested" apart, so the run lasts long enough to interrupt.
    return subprocess.Popen(
        [
            *CLI,
            "run",
            "--bulk-size",
            "50",
            "--flush-interval",
            "0.05",
            "--nested-merge",
            "either",
            *args,
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_mid_run_then_restart_applies_everything_exactly(kafka, api):
    topic = kafka.topic(PARTITIONS)
    parts = partitioned_events(users=60, per_user=20)
    produce_partitioned(kafka, topic, parts)
    # Slow Knock down so the kill lands in the middle of the run.
    api.set_faults(latency_ms=60)
    env = sink_env(kafka, api, topic)
    proc = start(env, "--rate-limits", "off")
    wait_for(lambda: api.stats()["identify_entries"] >= 100, 60, "some users applied")
    proc.kill()
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    committed_at_kill = kafka.committed(f"g-{topic}", topic)
    ends = kafka.end_offsets(topic)
    assert sum(committed_at_kill.values()) < sum(ends.values())  # the kill did interrupt the run

    api.clear_faults()
    proc = start(env, "--rate-limits", "off")
    try:
        expected = expected_state([e for p in parts for e in p])
        wait_for(lambda: kafka.committed(f"g-{topic}", topic) == ends, 90, "everything committed")
        assert actual_state(api.users()) == expected
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_sigterm_drains_commits_and_exits_zero(kafka, api):
    topic = kafka.topic(PARTITIONS)
    parts = partitioned_events(users=40, per_user=10)
    produce_partitioned(kafka, topic, parts)
    api.set_faults(latency_ms=40)
    env = sink_env(kafka, api, topic)
    proc = start(env, "--rate-limits", "off")
    wait_for(lambda: api.stats()["identify_entries"] >= 40, 60, "the run under way")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    committed = kafka.committed(f"g-{topic}", topic)
    # Everything it had read was applied and committed before it exited...
    assert sum(committed.values()) == summary["consumed"]
    assert summary["committed"] == {f"{topic}[{p}]": o for p, o in sorted(committed.items())}
    # ...and Knock holds exactly the effect of the events below each committed position.
    applied = [e for p, events in enumerate(parts) for e in events[: committed.get(p, 0)]]
    assert actual_state(api.users()) == expected_state(applied)


@pytest.mark.parametrize(
    ("args", "env_over", "needle"),
    [
        (["--bulk-size", "5000"], {}, "knock.bulk_size"),
        (["--default-region", "XX"], {}, "mapping.default_region"),
        ([], {"KNOCK_SINK_TOPICS": ""}, "kafka.topics"),
        ([], {"KNOCK_API_KEY": ""}, "knock.api_key"),
        ([], {"KNOCK_BASE_URL": "ftp://nowhere"}, "knock.base_url"),
        (["--config", "/nonexistent.toml"], {}, "--config"),
        (["--kafka-option", "no.such.option=1"], {}, "kafka.client"),
    ],
)
def test_bad_setting_is_one_line_and_exit_code_2(kafka, api, args, env_over, needle):
    env = {**sink_env(kafka, api, "t-unused"), **env_over}
    proc = subprocess.run(
        [*CLI, "run", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert api.api_key not in proc.stderr + proc.stdout


def test_wrong_api_key_at_start_exits_2_without_showing_it(kafka, api):
    topic = kafka.topic(1)
    env = {**sink_env(kafka, api, topic), "KNOCK_API_KEY": "sk_this_is_secret"}
    proc = subprocess.run(
        [*CLI, "run"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "knock.api_key" in proc.stderr and "sk_this_is_secret" not in proc.stderr + proc.stdout


def test_backfill_command_exits_zero_at_the_end(kafka, api, tmp_path):
    topic = kafka.topic(2)
    events = [{"type": "identify", "userId": f"u{i % 5}", "traits": {"i": i}} for i in range(40)]
    kafka.produce(topic, events)
    env = sink_env(kafka, api, topic)
    config = tmp_path / "on.toml"
    config.write_text("[sink]\nknown_ttl = 86400\n")  # change detection asked for
    proc = subprocess.run(
        [
            *CLI,
            "backfill",
            "--config",
            str(config),
            "--topic",
            topic,
            "--from-beginning",
            "--until-end",
            "--rate-limits",
            "off",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert actual_state(api.users()) == expected_state(events)
    # In a group of its own: the live group's offsets are untouched.
    out = json.loads(proc.stdout)
    assert out["group_id"].startswith(f"g-{topic}-backfill-")
    assert kafka.committed(out["group_id"], topic) == kafka.end_offsets(topic)
    assert kafka.committed(f"g-{topic}", topic) == {}
    assert out["backfill"]["events"] == 40 and out["backfill"]["dead_lettered"] == {}
    assert out["complete"] is True
    # A new group has no record of what Knock confirmed to restore: even with change detection
    # on, none is kept and no changelog topic is left behind.
    topics = kafka.admin.list_topics(timeout=10).topics
    assert not [t for t in topics if t.startswith(out["group_id"])]


def test_key_rejected_mid_run_stops_loudly_commits_nothing_past_it(kafka):
    """Knock starting to answer 401 is a configuration problem, not bad events: the sink exits
    3 without dead-lettering the traffic and without committing what it could not apply."""
    from consumer.emulator import EmulatorServer

    topic = kafka.topic(1)
    first = EmulatorServer(api_key="sk_first_key", rate_limits="off")
    first.start()
    port = int(first.url.rsplit(":", 1)[1])
    env = sink_env(kafka, first, topic)
    kafka.produce(
        topic, [{"type": "identify", "userId": f"u{i}", "traits": {"i": i}} for i in range(20)]
    )
    proc = start(env, "--rate-limits", "off")
    try:
        wait_for(
            lambda: kafka.committed(f"g-{topic}", topic) == {0: 20}, 60, "first events committed"
        )
        first.stop()
        # Same address, another environment's key: every request now answers 401.
        second = EmulatorServer(api_key="sk_rotated_key", rate_limits="off", port=port)
        second.start()
        kafka.produce(
            topic, [{"type": "identify", "userId": f"v{i}", "traits": {"i": i}} for i in range(10)]
        )
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    second.stop()
    assert proc.returncode == 3, err
    assert "rejected the API key" in err and "sk_first_key" not in err + out
    assert kafka.committed(f"g-{topic}", topic) == {0: 20}
    assert kafka.read_all(f"{topic}.dlq", 0, timeout=3) == []


def test_sigterm_while_knock_is_unreachable_at_start_exits_zero(kafka, api):
    from kafka_broker import free_port  # deploy/local, on sys.path via conftest

    topic = kafka.topic(1)
    env = {**sink_env(kafka, api, topic), "KNOCK_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    proc = start(env)
    wait_for(lambda: "retry" in (proc.stderr.readline() or ""), 30, "the start-up check retrying")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_sigkill_mid_run_then_restart_triggers_each_workflow_once(kafka, api, tmp_path):
    from tests.model_actions import actual_triggers, expected_triggers
    from tests.test_actions_sink import RULES, WORKFLOWS, tracks

    topic = kafka.topic(PARTITIONS)
    events = tracks(20, 6)
    kafka.produce(topic, events)
    config = tmp_path / "sink.toml"
    config.write_text(
        "".join(f'[[workflows.rules]]\nevent = "{r["event"]}"\nkey = "{r["key"]}"\n' for r in RULES)
    )
    api.set_faults(workflows=list(WORKFLOWS.values()), latency_ms=60)
    env = sink_env(kafka, api, topic)
    proc = start(env, "--rate-limits", "off", "--config", str(config))
    expected = expected_triggers(events, WORKFLOWS)
    wait_for(lambda: len(api.triggers()) >= 10, 60, "some workflows triggered")
    proc.kill()
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    ends = kafka.end_offsets(topic)
    assert len(api.triggers()) < len(expected)  # the kill did interrupt the run

    api.set_faults(latency_ms=0)
    proc = start(env, "--rate-limits", "off", "--config", str(config))
    try:
        wait_for(lambda: kafka.committed(f"g-{topic}", topic) == ends, 90, "everything committed")
        runs = api.triggers()
        assert actual_triggers(runs) == expected
        assert len({r["idempotency_key"] for r in runs}) == len(runs)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trigger-workflows", "--trigger-since", "2020-01-01T00:00:00Z"], "workflows.since"),
        (["--trigger-workflows", "--trigger-since", "yesterday"], "workflows.since"),
    ],
)
def test_bad_trigger_window_is_one_line_and_exit_code_2(kafka, api, args, needle):
    env = sink_env(kafka, api, "t-unused")
    proc = subprocess.run(
        [*CLI, "backfill", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_a_backfill_that_loses_a_partition_exits_4_and_a_rerun_finishes_it(kafka, api):
    topic = kafka.topic(4)
    events = [
        {"type": "identify", "userId": f"u{i % 600}", "traits": {"i": i, f"k{i % 7}": i}}
        for i in range(6000)
    ]
    kafka.produce(topic, events)
    group = f"g-{topic}-replay"
    env = sink_env(kafka, api, topic)
    args = [*CLI, "backfill", "--from-beginning", "--group-id", group, "--rate-limits", "off"]
    # Slow enough for the second member to join mid-way: 60 bulk calls of 10 users, 0.4 s each.
    api.set_faults(latency_ms=400)
    proc = subprocess.Popen(
        [*args, "--bulk-size", "10"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    joiner = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": group,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
        }
    )
    try:
        wait_for(lambda: api.stats()["identify_entries"] >= 10, 60, "the backfill under way")
        joiner.subscribe([topic])
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            joiner.poll(0.1)  # a member of the group: the backfill loses partitions to it
        _out, err = proc.communicate(timeout=30)
    finally:
        joiner.close()
    assert proc.returncode == 4, err
    assert f"--group-id {group}" in err
    api.clear_faults()
    again = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["complete"] is True
    assert kafka.committed(group, topic) == kafka.end_offsets(topic)
    assert actual_state(api.users()) == expected_state(events)


def detection_on(
    kafka: Any, api: Any, tmp_path: Any
) -> tuple[str, list[list[dict[str, Any]]], dict[str, str], str, tuple[str, ...]]:
    """For the fault tests with change detection on: a topic, the waves of repeated traits to
    produce to it, the sink's environment, its group and ``run``'s arguments."""
    from tests.test_change_detection import waves_of_repeated_traits

    topic = kafka.topic(PARTITIONS)
    config = tmp_path / "on.toml"
    config.write_text("[sink]\nknown_ttl = 86400\n")
    args = ("--rate-limits", "off", "--bulk-size", "3", "--config", str(config))
    return topic, waves_of_repeated_traits(), sink_env(kafka, api, topic), f"g-{topic}", args


def wave_under_way(kafka: Any, api: Any, topic: str, wave: list[dict[str, Any]]) -> None:
    """Produce ``wave`` with Knock slowed to 150 ms a call; return once its first change is
    confirmed: the moment for a fault."""
    base = api.stats()["identify_entries"]
    api.set_faults(latency_ms=150)
    kafka.produce(topic, wave)
    wait_for(lambda: api.stats()["identify_entries"] > base, 60, "a change of the wave applied")


def committed_through(kafka: Any, topic: str, group: str, wave: list[dict[str, Any]]) -> None:
    kafka.produce(topic, wave)
    ends = kafka.end_offsets(topic)
    wait_for(lambda: kafka.committed(group, topic) == ends, 60, "the wave committed")


def ends_exact(kafka: Any, api: Any, topic: str, group: str, waves: list[list[Any]]) -> None:
    """Every wave committed, Knock exact, and not vacuously: repeats were left out. Pinned to
    "either", the sink never folds two updates carrying "address": without change detection
    each event would be an entry."""
    ends = kafka.end_offsets(topic)
    wait_for(lambda: kafka.committed(group, topic) == ends, 120, "everything committed")
    assert actual_state(api.users()) == expected_state([e for w in waves for e in w])
    assert api.stats()["identify_entries"] < sum(len(w) for w in waves) // 2


def test_changes_right_around_a_sigkill_are_never_left_out(kafka, api, tmp_path):
    # Change detection on: after each kill the next process restores what Knock confirmed from
    # the changelog, and a change whose confirmation the kill cut short must still go out (a
    # record missing or stale only ever causes a send).
    topic, waves, env, group, args = detection_on(kafka, api, tmp_path)
    proc = start(env, *args)
    try:
        committed_through(kafka, topic, group, waves[0])
        for wave in waves[1:3]:
            wave_under_way(kafka, api, topic, wave)  # kill as its first change is confirmed
            proc.kill()
            proc.wait(30)
            assert proc.returncode == -signal.SIGKILL
            assert kafka.committed(group, topic) != kafka.end_offsets(topic)  # cut short
            api.clear_faults()
            proc = start(env, *args)
        kafka.produce(topic, waves[3])
        ends_exact(kafka, api, topic, group, waves)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_changes_right_around_a_rebalance_are_never_left_out(kafka, api, tmp_path):
    """Change detection on, two processes of one group: a second member joins as a wave's
    changes are being confirmed, and leaves as the next one's are; each partition's next owner
    restores what Knock confirmed from the changelog. The end state is exact, and repeats were
    still left out."""
    from tests.test_budget import partitions
    from tests.test_health import free_port

    topic, waves, env, group, args = detection_on(kafka, api, tmp_path)
    first = start(env, *args)
    second = None
    try:
        committed_through(kafka, topic, group, waves[0])
        wave_under_way(kafka, api, topic, waves[1])  # a member joins
        port = free_port()
        second = start(env, *args, "--metrics-port", str(port))
        wait_for(lambda: partitions(port), 60, "the second member holding partitions")
        ends = kafka.end_offsets(topic)
        wait_for(lambda: kafka.committed(group, topic) == ends, 90, "wave 1 committed")
        # It leaves (SIGTERM: it drains and hands its partitions back) as wave 2 goes out.
        wave_under_way(kafka, api, topic, waves[2])
        second.send_signal(signal.SIGTERM)
        out, err = second.communicate(timeout=90)
        assert second.returncode == 0, err[-3000:]
        # Not vacuous: the second member held partitions and read events of its own.
        assert json.loads(out.strip().splitlines()[-1])["consumed"] > 0
        api.clear_faults()
        kafka.produce(topic, waves[3])
        ends_exact(kafka, api, topic, group, waves)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=60)
    assert first.returncode == 0


def test_changes_right_around_a_broker_restart_are_never_left_out(api, tmp_path):
    """Change detection on, a broker of the test's own stopped and started again as a wave's
    changes are being confirmed (the changelog's writes and the commits fail meanwhile and are
    retried): the end state is exact, and repeats were still left out."""
    from kafka_broker import Broker  # deploy/local, on sys.path through tests/conftest.py

    from tests.conftest import Kafka

    broker = Broker()
    broker.start()
    try:
        kafka = Kafka(broker.bootstrap, broker)
        topic, waves, env, group, args = detection_on(kafka, api, tmp_path)
        proc = start(env, *args)
        try:
            committed_through(kafka, topic, group, waves[0])
            wave_under_way(kafka, api, topic, waves[1])
            assert kafka.committed(group, topic) != kafka.end_offsets(topic)  # mid-wave
            broker.stop()
            broker.start()
            api.clear_faults()
            for wave in waves[2:]:
                kafka.produce(topic, wave)
            ends_exact(kafka, api, topic, group, waves)
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err[-3000:]
    finally:
        broker.close()
