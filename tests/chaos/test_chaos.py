"""The delivery guarantee under faults (issue: chaos suite), on the real broker and the emulator.

Every case ends the same way (:func:`finish`): Knock's state equals the state the model
computes from the valid events, every partition is committed up to its end offset, and the
dead-letter topic holds exactly the expected records with the expected kinds. The figures go to
``bench/results/chaos-<case>.json`` (see :mod:`tests.chaos.report`).

Random moments come from a seeded RNG (the seed is printed; ``KNOCK_SINK_CHAOS_SEED`` replays
it) and are chosen by progress, i.e. by how many identify entries the emulator has received,
never by sleeping.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaException

from tests.chaos import report
from tests.chaos.conftest import (
    FULL,
    MODE,
    SIZE,
    Progress,
    Record,
    dead_letters,
    env_for,
    events_of,
    identify_stream,
    produce,
    write_config,
)
from tests.conftest import Kafka, wait_for
from tests.model import actual_state, expected_state

TIMEOUT = 900 if FULL else 240
#: The process cases: ~100 bulk calls per run, and at most 2% of the stream buffered, so that
#: a consumer that stops (or is killed) leaves most of its partitions' work to the others.
#: ``--nested-merge either`` (not the default) keeps every update carrying an object under a key
#: it shares with the previous one apart: the base of "duplicates sent" (see report.DUPLICATES).
PINNED = ["--nested-merge", "either"]
#: The single-process backfill cases (faults, poison): ten bulk calls per 10k events.
BACKFILL = [
    "backfill",
    "--from-beginning",
    *PINNED,
    "--rate-limits",
    "off",
    "--bulk-size",
    "1000",
    "--flush-interval",
    "0.1",
]
RUN = [
    "run",
    *PINNED,
    *(["--log-level", "DEBUG"] if os.environ.get("KNOCK_SINK_CHAOS_DEBUG") else []),
    "--rate-limits",
    "off",
    "--flush-interval",
    "0.05",
    "--bulk-size",
    str(SIZE.events // 100),
    "--max-pending",
    str(SIZE.events // 50),
]
#: Knock's latency in the process cases, so that a run lasts long enough to be hit mid-way.
LATENCY_MS = 20
#: SIGKILL leaves the dead member in the group until its session expires (45 s by default).
#: The shortened run uses the broker's minimum to fit CI's budget; the full run the default.
SESSION_TIMEOUT_MS = None if FULL else 6000


def entries(api: Any) -> int:
    return int(api.stats()["identify_entries"])


def wait_entries(api: Any, n: int, what: str) -> None:
    wait_for(lambda: entries(api) >= n, TIMEOUT, f"{n} identify entries ({what})")


def later(api: Any, progress: Progress, rng: random.Random, lo: float, hi: float) -> int:
    """A random moment ahead, as an identify-entry count: now plus a share in [lo, hi) of the
    events not committed yet (a restart sends those again first, so the moment always comes
    before the end)."""
    return entries(api) + max(
        1, int(rng.uniform(lo, hi) * (progress.total_end - progress.sample_now()))
    )


def request_counts(stats: dict[str, Any]) -> dict[str, int]:
    by_status: Counter[str] = Counter()
    for statuses in stats["requests"].values():
        for status, n in statuses.items():
            by_status["5xx" if status.startswith("5") else status] += n
    return {"total": sum(by_status.values()), "5xx": by_status["5xx"], "429": by_status["429"]}


def finish(
    *,
    case: str,
    title: str,
    kafka: Kafka,
    api: Any,
    topic: str,
    parts: list[list[Record]],
    progress: Progress,
    t0: float,
    fault_end: float | None,
    excluded_users: frozenset[str] = frozenset(),
    extra_dead: dict[tuple[int, int], str] | None = None,
    figures: dict[str, Any] | None = None,
    knock_grace: float = 0.0,
) -> None:
    """Compare, report, then assert (the report is written even when an assert fails)."""
    total_s = time.monotonic() - t0
    valid = [e for e in events_of(parts) if e["userId"] not in excluded_users]
    expected = expected_state(valid)
    actual = actual_state(api.users())
    stats = api.stats(by_user=True)
    committed = kafka.committed(f"g-{topic}", topic)
    ends = progress.ends

    # The dead letters expected: poison by its label, plus records named by the case.
    want: dict[tuple[int, int], Record] = {}
    want_kind: dict[tuple[int, int], str] = {}
    for pid, records in enumerate(parts):
        for rec in records:
            kind = rec.poison or (extra_dead or {}).get((pid, rec.offset))
            if kind is not None:
                want[(pid, rec.offset)] = rec
                want_kind[(pid, rec.offset)] = kind
    dlq = dead_letters(kafka, f"{topic}.dlq", len(want))
    got = Counter(
        (
            int(d["headers"]["knock-sink.source.partition"]),
            int(d["headers"]["knock-sink.source.offset"]),
        )
        for d in dlq
    )

    # One entry per valid event, rejected users' included: each needs one send (report.DUPLICATES).
    needed = len(events_of(parts))
    by_user = stats["identify_entries_by_user"]
    excluded_entries = sum(by_user.get(u, 0) for u in excluded_users)
    excluded_events = sum(1 for e in events_of(parts) if e["userId"] in excluded_users)
    record = report.write(
        case,
        MODE,
        {
            "title": title,
            "size": {"events": SIZE.events, "users": SIZE.users, "partitions": SIZE.partitions},
            "events_in": sum(len(p) for p in parts),
            "valid_events": needed,
            "applied_events": len(valid),
            "users_expected": len(expected),
            "users_correct": sum(1 for u, v in expected.items() if actual.get(u) == v),
            "users_missing": sum(1 for u in expected if u not in actual),
            "users_unexpected": sorted(set(actual) - set(expected))[:20],
            "dead_lettered": dict(Counter(d["kind"] for d in dlq)),
            "dead_letters_expected": dict(Counter(want_kind.values())),
            "duplicates_sent": stats["identify_entries"] - needed,
            "identify_entries": stats["identify_entries"],
            "entries_needed": needed,
            "resent_for_rejected_users": excluded_entries - excluded_events
            if excluded_users
            else 0,
            "requests": request_counts(stats),
            "knock_resume_s": None
            if fault_end is None
            else progress.knock_resume_after(fault_end, knock_grace),
            "resume_s": None if fault_end is None else progress.resume_after(fault_end),
            "recover_s": None if fault_end is None else progress.caught_up_after(fault_end),
            "total_s": round(total_s, 2),
            **(figures or {}),
        },
    )

    # Exact comparisons.
    assert committed == ends, f"committed {committed} != end offsets {ends}"
    assert record["users_correct"] == len(expected) and set(actual) == set(expected), (
        f"{len(expected) - record['users_correct']} users wrong, {record['users_missing']} missing, "
        f"unexpected: {record['users_unexpected']}"
    )
    assert actual == expected
    assert set(got) == set(want), (
        f"dead letters missing: {sorted(set(want) - set(got))[:10]}, "
        f"unexpected: {sorted(set(got) - set(want))[:10]}"
    )
    assert all(n == 1 for n in got.values()), (
        f"dead-lettered twice: {[k for k, n in got.items() if n > 1][:10]}"
    )
    for d in dlq:
        pos = (
            int(d["headers"]["knock-sink.source.partition"]),
            int(d["headers"]["knock-sink.source.offset"]),
        )
        rec = want[pos]
        assert d["kind"] == want_kind[pos], (pos, d["kind"], want_kind[pos], d["reason"])
        assert d["reason"], pos
        if rec.names:
            assert rec.names in d["reason"], (pos, rec.names, d["reason"])
        assert d["headers"]["knock-sink.source.topic"] == topic
        assert (d["key"], d["value"]) == (rec.key, rec.value), pos
        for name, value in rec.headers:
            assert d["headers"].get(name) == value.decode(), (pos, name)


def start_progress(kafka: Kafka, topic: str, ends: dict[int, int], api: Any) -> Progress:
    return Progress(kafka, f"g-{topic}", topic, ends, api)


# -- 1. Knock misbehaving ----------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(TIMEOUT + 120)
def test_knock_errors_rate_limits_outage_and_rejected_users(kafka, api, seed, sinks, tmp_path):
    """5% 500/503, 2% 429, a full outage (10 s; 3 s shortened) at a random moment, and named
    users Knock rejects on every route that upserts them, which must end in the dead-letter
    topic (``knock_rejected``) and never in Knock (the same through single identify, under
    Knock's pacing: ``test_sink.py``)."""
    rng = random.Random(seed)
    outage = 10.0 if FULL else 3.0
    attempts = 5 if FULL else 3
    topic = kafka.topic(SIZE.partitions, prefix="chaos-faults")
    parts = identify_stream(rng, SIZE)
    seen = sorted({e["userId"] for e in events_of(parts)})
    failing = frozenset(rng.sample(seen, 10 if FULL else 5))
    ends = produce(kafka, topic, parts)
    rejected = {
        (pid, r.offset): "knock_rejected"
        for pid, records in enumerate(parts)
        for r in records
        if r.event and r.event["userId"] in failing
    }
    # 2% of requests draw 429 first, then 5% of the rest would be 4.9%: 5/98 makes it 5% of all.
    api.set_faults(
        seed=seed,
        error_rate=0.05 / 0.98,
        error_statuses=[500, 503],
        rate_limit_rate=0.02,
        failing_users=sorted(failing),
    )
    config = write_config(tmp_path / "knock-sink.toml", sink={"item_attempts": attempts})
    progress = start_progress(kafka, topic, ends, api)
    t0 = time.monotonic()
    try:
        proc = sinks(
            env_for(kafka, api, topic),
            *BACKFILL,
            "--group-id",
            f"g-{topic}",
            "--config",
            str(config),
        )
        at = int(rng.uniform(0.2, 0.5) * SIZE.events)
        wait_entries(api, at, "the outage's moment")
        api.set_faults(outage_seconds=outage)
        fault_end = time.monotonic() + outage
        committed_at_outage = progress.sample_now()
        assert proc.wait(TIMEOUT) == 0, proc.stderr_tail()
        progress.wait_caught_up(30)
        summary = proc.summary()
        finish(
            case="faults",
            title="1. Knock 5% 5xx, 2% 429, outage, rejected users",
            kafka=kafka,
            api=api,
            topic=topic,
            parts=parts,
            progress=progress,
            t0=t0,
            fault_end=fault_end,
            excluded_users=failing,
            extra_dead=rejected,
            figures={
                "faults": {
                    "error_rate_5xx": 0.05,
                    "rate_limit_rate_429": 0.02,
                    "outage_s": outage,
                    "outage_at_entries": at,
                    "committed_at_outage": committed_at_outage,
                    "failing_users": sorted(failing),
                    "item_attempts": attempts,
                },
                "sink_summary": {k: summary[k] for k in ("consumed", "applied", "dead_lettered")},
                "seed": seed,
            },
        )
        stats = api.stats(by_user=True)
        # Without a crash no accepted entry is ever sent twice: 5xx and 429 answers carry none.
        others = sum(n for u, n in stats["identify_entries_by_user"].items() if u not in failing)
        assert others == sum(1 for e in events_of(parts) if e["userId"] not in failing)
    finally:
        progress.close()


# -- 2. SIGKILL, three times -------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(TIMEOUT + 120)
def test_sigkill_three_times_and_restart(kafka, api, seed, sinks):
    rng = random.Random(seed)
    topic = kafka.topic(SIZE.partitions, prefix="chaos-kill")
    parts = identify_stream(rng, SIZE)
    ends = produce(kafka, topic, parts)
    env = env_for(kafka, api, topic)
    args = list(RUN)
    if SESSION_TIMEOUT_MS:
        args += ["--kafka-option", f"session.timeout.ms={SESSION_TIMEOUT_MS}"]
    api.set_faults(latency_ms=LATENCY_MS)
    progress = start_progress(kafka, topic, ends, api)
    t0 = time.monotonic()
    kills = []
    try:
        proc = sinks(env, *args)
        fault_end = t0
        for k in range(3):
            # The next kill lands once a random share (10–40%) of what is left reached Knock.
            at = later(api, progress, rng, 0.1, 0.4)
            wait_entries(api, at, f"kill {k + 1}")
            assert proc.kill() == -signal.SIGKILL
            committed = progress.sample_now()
            assert committed < progress.total_end, (
                "the kill came after the end: nothing interrupted"
            )
            proc = sinks(env, *args)
            fault_end = proc.started
            kills.append({"at_entries": at, "committed_at_kill": committed, "restart": fault_end})
        progress.wait_caught_up(TIMEOUT)
        assert proc.terminate() == 0, proc.stderr_tail()
        for kill in kills:
            restart = kill.pop("restart")
            # A restarted process sends nothing in its first half second (start, key check,
            # group join): entries counted then are the killed one's last requests.
            kill["knock_resume_s"] = progress.knock_resume_after(restart, grace=0.5)
            kill["resume_s"] = progress.resume_after(restart)
        finish(
            case="sigkill",
            title="2. SIGKILL ×3 at random moments, restarted",
            kafka=kafka,
            api=api,
            topic=topic,
            parts=parts,
            progress=progress,
            t0=t0,
            fault_end=fault_end,
            knock_grace=0.5,
            figures={
                "kills": kills,
                "latency_ms": LATENCY_MS,
                "seed": seed,
                "session_timeout_ms": SESSION_TIMEOUT_MS or 45000,
            },
        )
    finally:
        progress.close()


# -- 3. A second consumer joins and leaves ----------------------------------------------------


def group_members(kafka: Kafka, group: str) -> list[int]:
    """Partitions assigned to each member of ``group``, sorted (``[]`` while the broker cannot
    say, e.g. during a rebalance or a coordinator move)."""
    try:
        desc = kafka.admin.describe_consumer_groups([group])[group].result(10)
    except KafkaException:
        return []
    return sorted(len(m.assignment.topic_partitions) for m in desc.members)


@pytest.mark.chaos
@pytest.mark.timeout(TIMEOUT + 120)
def test_second_consumer_joins_and_leaves_mid_run(kafka, api, seed, sinks):
    rng = random.Random(seed)
    topic = kafka.topic(SIZE.partitions, prefix="chaos-group")
    group = f"g-{topic}"
    parts = identify_stream(rng, SIZE)
    ends = produce(kafka, topic, parts)
    env = env_for(kafka, api, topic)
    # The backlog is produced before the first consumer starts: catching up would fold it and
    # send each user once, at the end, leaving nothing to hand over. The hand-over mid-run is
    # what is tested here (catching up beside a rebalance: tests/test_sink.py).
    args = [*RUN, "--catch-up-lag", "0"]
    # Slower than the other cases: the second consumer needs ~5 s to join, and every partition
    # must still have work by then, or it may be handed one already committed to its end.
    api.set_faults(latency_ms=3 * LATENCY_MS)
    progress = start_progress(kafka, topic, ends, api)
    t0 = time.monotonic()
    try:
        first = sinks(env, *args)
        join_at = later(api, progress, rng, 0.02, 0.1)
        wait_entries(api, join_at, "the second consumer's join")
        second = sinks(env, *args)
        wait_for(
            lambda: group_members(kafka, group) == [1, 2],
            TIMEOUT,
            "both consumers holding partitions",
        )
        joined_s = time.monotonic() - second.started
        leave_at = later(api, progress, rng, 0.1, 0.4)
        wait_entries(api, leave_at, "the second consumer's leave")
        assert second.terminate() == 0, second.stderr_tail()
        # The base of resume_s is the commit its drain made: sampled before the fault's end.
        assert progress.sample_now() < progress.total_end, "it left after the end: no handoff"
        fault_end = time.monotonic()
        wait_for(
            lambda: group_members(kafka, group) == [SIZE.partitions],
            TIMEOUT,
            "the first consumer holding every partition again",
        )
        progress.wait_caught_up(TIMEOUT)
        assert first.terminate() == 0, first.stderr_tail()
        s1, s2 = first.summary(), second.summary()
        assert s2["consumed"] > 0, "the second consumer never got any work"
        finish(
            case="rebalance",
            title="3. a second consumer joins, then leaves",
            kafka=kafka,
            api=api,
            topic=topic,
            parts=parts,
            progress=progress,
            t0=t0,
            fault_end=fault_end,
            figures={
                "join_at_entries": join_at,
                "leave_at_entries": leave_at,
                "join_to_assigned_s": round(joined_s, 2),
                "consumed": {"first": s1["consumed"], "second": s2["consumed"]},
                "latency_ms": 3 * LATENCY_MS,
                "seed": seed,
            },
        )
    finally:
        progress.close()


# -- 4. The broker stops and comes back --------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(TIMEOUT + 180)
def test_broker_stopped_and_restarted_mid_run(own_kafka, api, seed, sinks):
    kafka = own_kafka
    rng = random.Random(seed)
    topic = kafka.topic(SIZE.partitions, prefix="chaos-broker")
    parts = identify_stream(rng, SIZE)
    ends = produce(kafka, topic, parts)
    env = env_for(kafka, api, topic)
    api.set_faults(latency_ms=LATENCY_MS)
    progress = start_progress(kafka, topic, ends, api)
    t0 = time.monotonic()
    try:
        proc = sinks(env, *RUN)
        at = int(rng.uniform(0.2, 0.5) * SIZE.events)
        wait_entries(api, at, "the broker's stop")
        committed_at_stop = progress.sample_now()
        assert committed_at_stop < progress.total_end
        down = time.monotonic()
        kafka.broker.stop()
        kafka.broker.start()
        progress.sample_now()
        fault_end = time.monotonic()
        progress.wait_caught_up(TIMEOUT)
        assert proc.terminate() == 0, proc.stderr_tail()
        finish(
            case="broker-restart",
            title="4. broker stopped and restarted",
            kafka=kafka,
            api=api,
            topic=topic,
            parts=parts,
            progress=progress,
            t0=t0,
            fault_end=fault_end,
            figures={
                "stop_at_entries": at,
                "committed_at_stop": committed_at_stop,
                "broker_down_s": round(fault_end - down, 2),
                "latency_ms": LATENCY_MS,
                "seed": seed,
            },
        )
    finally:
        progress.close()


# -- 5. Poison ---------------------------------------------------------------------------------

MAX_BYTES = 4096


def poison_records(rng: random.Random, n: int, users: int) -> list[Record]:
    """``n`` poison records drawn from every kind the README names, each labelled with the
    dead-letter kind it must get and, where the reason should name it, the offending field."""

    def js(v: Any) -> bytes:
        return orjson.dumps(v)

    def make(i: int) -> Record:
        u = f"u{rng.randrange(users)}"
        t = {"plan": "poison", "nested": {"x": i}}
        choices: list[tuple[str, bytes | None, str | None]] = [
            # undecodable
            (
                "undecodable",
                b'{"type": "identify", "userId": "' + u.encode() + b'", "traits": {',
                None,
            ),
            ("undecodable", b"\xff\xfe\x00not json at all", None),
            ("undecodable", b"", None),
            ("undecodable", None, None),  # a tombstone
            # wrong types
            ("invalid_event", js({"type": "identify", "userId": {"id": u}, "traits": t}), "userId"),
            ("invalid_event", js({"type": "identify", "userId": True, "traits": t}), "userId"),
            (
                "invalid_event",
                js({"type": "identify", "userId": u, "traits": "plan=pro"}),
                "traits",
            ),
            ("invalid_event", js({"type": "identify", "userId": u, "traits": [t]}), "traits"),
            (
                "invalid_event",
                js({"type": "identify", "userId": u, "traits": t, "context": "web"}),
                "context",
            ),
            (
                "invalid_event",
                js({"type": "track", "userId": u, "event": "e", "context": {"traits": 5}}),
                "context.traits",
            ),
            ("invalid_event", js({"type": 7, "userId": u, "traits": t}), "type"),
            ("invalid_event", js({"userId": u, "traits": t}), "type"),
            ("invalid_event", js({"type": "subscribe", "userId": u, "traits": t}), "type"),
            ("invalid_event", js([{"type": "identify", "userId": u, "traits": t}]), None),
            ("invalid_event", js("identify"), None),
            ("invalid_event", js({"type": "alias", "userId": u}), "previousId"),
            # forbidden ids
            (
                "forbidden_user_id",
                js({"type": "identify", "userId": f"team/{u}", "traits": t}),
                f"team/{u}",
            ),
            (
                "forbidden_user_id",
                js({"type": "identify", "userId": f"{u}#1", "traits": t}),
                f"{u}#1",
            ),
            ("forbidden_user_id", js({"type": "identify", "userId": "x" * 257, "traits": t}), None),
            (
                "forbidden_user_id",
                js({"type": "alias", "previousId": f"a/{u}", "userId": u}),
                f"a/{u}",
            ),
            # oversize: otherwise a valid update of a real user
            (
                "oversize",
                js({"type": "identify", "userId": u, "traits": {**t, "blob": "b" * MAX_BYTES}}),
                None,
            ),
            ("oversize", b"{" + b" " * (MAX_BYTES + 10), None),
        ]
        kind, value, names = choices[i % len(choices)]
        return Record(
            key=rng.choice([u.encode(), None]),
            value=value,
            poison=kind,
            names=names,
            headers=[("chaos-origin", f"poison-{i}".encode())],
        )

    return [make(i) for i in range(n)]


@pytest.mark.chaos
@pytest.mark.timeout(TIMEOUT + 120)
def test_poison_goes_to_the_dead_letter_topic_and_nothing_else_is_lost(
    kafka, api, seed, sinks, tmp_path: Path
):
    rng = random.Random(seed)
    topic = kafka.topic(SIZE.partitions, prefix="chaos-poison")
    parts = identify_stream(rng, SIZE)
    poison = poison_records(rng, SIZE.events // 100, SIZE.users)
    for rec in poison:
        part = parts[rng.randrange(SIZE.partitions)]
        part.insert(rng.randrange(len(part) + 1), rec)
    ends = produce(kafka, topic, parts)
    # Knock stays unreliable meanwhile: poison must not be confused with transient failures.
    api.set_faults(seed=seed, error_rate=0.05, error_statuses=[500, 503])
    config = write_config(tmp_path / "knock-sink.toml", kafka={"max_message_bytes": MAX_BYTES})
    progress = start_progress(kafka, topic, ends, api)
    t0 = time.monotonic()
    try:
        proc = sinks(
            env_for(kafka, api, topic),
            *BACKFILL,
            "--group-id",
            f"g-{topic}",
            "--config",
            str(config),
        )
        assert proc.wait(TIMEOUT) == 0, proc.stderr_tail()
        progress.wait_caught_up(30)
        finish(
            case="poison",
            title="5. poison: invalid JSON, wrong types, forbidden ids, oversize",
            kafka=kafka,
            api=api,
            topic=topic,
            parts=parts,
            progress=progress,
            t0=t0,
            fault_end=None,
            figures={"poison": len(poison), "error_rate_5xx": 0.05, "seed": seed},
        )
        # Nothing but poison was dead-lettered, and no accepted entry was sent twice.
        assert entries(api) == sum(1 for _ in events_of(parts))
    finally:
        progress.close()
