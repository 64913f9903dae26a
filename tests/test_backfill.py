"""A backfill under Knock's limits holds folded users, not events (:mod:`consumer.backlog`):
unit tests of the fold and the commit floors, and backfills on the real broker and the local
Knock API, checked against the independent model."""

from __future__ import annotations

import random
from typing import Any

from consumer.backfill.backlog import LOW_WATER, Backlog, Held
from consumer.ops import Identify, Merge
from consumer.sink import Sink
from tests.model import actual_state, expected_state

TP0, TP1 = ("t", 0), ("t", 1)


def test_a_users_events_fold_into_one_held_state_with_its_earliest_offset() -> None:
    b = Backlog()
    ejected: list[Held] = []
    for off in range(5):
        assert (
            b.fold(TP0, off, [Identify("u", {"n": off, "o": {f"k{off}": off}})], ejected.append)
            == []
        )
    assert b.fold(TP0, 5, [Identify("v", {"a": 1})], ejected.append) == []
    assert len(b) == 2 and ejected == []
    [u, v] = list(b.take(10))
    assert u.props == {"n": 4, "o": {f"k{i}": i for i in range(5)}} and u.events == 5
    assert u.first == {TP0: 0} and v.first == {TP0: 5}


def test_the_floor_follows_the_earliest_unapplied_user_of_each_partition() -> None:
    b = Backlog()
    for tp, off, uid in [(TP0, 0, "a"), (TP0, 1, "b"), (TP1, 0, "b"), (TP0, 2, "a"), (TP1, 1, "c")]:
        assert b.read(tp, off)
        b.fold(tp, off, [Identify(uid, {"x": off})], lambda h: None)
    a, bb, c = (b.handle(h) for h in b.take(3))
    none = lambda tp: None  # noqa: E731 - nothing on the per-event path
    assert b.committable(none) == {TP0: 0, TP1: 0}
    bb.release()  # b applied: partition 0 still owes a (offset 0), partition 1 owes c (1)
    assert b.committable(none) == {TP0: 0, TP1: 1}
    a.release()
    c.release()
    assert b.committable(none) == {TP0: 3, TP1: 2}  # one past what was read
    b.mark_committed({TP0: 3, TP1: 2})
    assert b.committable(lambda tp: 2 if tp == TP0 else None) == {TP0: 2}  # a dead letter owed


def test_a_merge_or_an_unfoldable_update_bars_its_users_after_their_held_state() -> None:
    b = Backlog()
    ejected: list[Held] = []
    b.fold(TP0, 0, [Identify("anon", {"a": 1})], ejected.append)
    b.fold(TP0, 1, [Identify("u", {"o": 1})], ejected.append)
    assert b.fold(TP0, 2, [Merge("real", "anon")], ejected.append) == [Merge("real", "anon")]
    assert [h.user_id for h in ejected] == ["anon"]
    # Barred: later events of anon take the per-event path too.
    assert b.fold(TP0, 3, [Identify("anon", {"b": 2})], ejected.append) == [
        Identify("anon", {"b": 2})
    ]
    # Deep mode: a scalar then an object under one key does not fold.
    assert b.fold(TP0, 4, [Identify("u", {"o": {"x": 1}})], ejected.append) == [
        Identify("u", {"o": {"x": 1}})
    ]
    assert [h.user_id for h in ejected] == ["anon", "u"] and len(b) == 0


def test_folded_state_equals_every_event_applied_in_order() -> None:
    # Exact under each mode: what a user holds (or ejects at its barrier) is what Knock would
    # hold after the events folded into it, applied one by one (the model deep-merges; mode
    # "either" folds only where replacing and deep-merging agree).
    rng = random.Random(7)
    for mode in ("deep", "either"):
        b = Backlog(nested=mode)  # type: ignore[arg-type]
        folded: dict[str, list[dict[str, Any]]] = {}
        out: list[Held] = []
        for off in range(2000):
            uid = f"u{rng.randrange(40)}"
            traits = {
                f"k{rng.randrange(5)}": rng.choice([1, None, [off], {"a": off}, {"b": {"c": off}}])
            }
            if not b.fold(TP0, off, [Identify(uid, traits)], out.append):
                folded.setdefault(uid, []).append(
                    {"type": "identify", "userId": uid, "traits": traits}
                )
        out += b.take(100)
        assert len(out) == len(folded)
        for h in out:
            assert h.props == expected_state(folded[h.user_id])[h.user_id], (mode, h.user_id)
            assert h.events == len(folded[h.user_id])


# -- on the real broker, under the sink's pacing to Knock's limits --------------------------


def backfill(settings: Any) -> Any:
    return Sink(settings).run(from_beginning=True, until_end=True)


def mixed_backlog(users: int, per_user: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    events: list[Any] = []
    for i in range(per_user):
        for u in range(users):
            traits = {
                "i": i,
                f"k{rng.randrange(4)}": rng.randrange(9),
                "prefs": {f"p{rng.randrange(3)}": i},
            }
            if rng.random() < 0.2:
                traits["prefs"] = {"deep": {f"d{rng.randrange(2)}": i}}
            events.append({"type": "identify", "userId": f"u{u}", "traits": traits})
        if i == per_user // 2:
            events.append({"type": "alias", "previousId": "u1", "userId": "u0"})
            events.append({"type": "alias", "previousId": f"anon{i}", "userId": "u2"})
    return events


def test_a_default_backfill_sends_each_user_once_exact_with_aliases_and_poison(
    kafka, api, settings_for
):
    topic = kafka.topic(3)
    events = mixed_backlog(users=120, per_user=15, seed=1)
    poison = [b"{not json", orjson_dumps({"type": "identify", "userId": "u5", "traits": [1]})]
    kafka.produce(topic, events[: len(events) // 2] + poison + events[len(events) // 2 :])
    summary = backfill(settings_for(topic, knock__rate_limits="knock"))
    # The end first: short of it, the backfill stopped early; at the end with a state that
    # differs, it read everything and lost or misordered an update.
    assert summary.reached is True
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)
    assert actual_state(api.users()) == expected_state(events)
    assert dict(summary.dead_lettered) == {"undecodable": 1, "invalid_event": 1}
    # Each user once, but those an alias barred (u0, u1, u2: held state, then per event).
    by_user = api.stats(by_user=True)["identify_entries_by_user"]
    assert {u for u, n in by_user.items() if n > 1} <= {"u0", "u1", "u2"}
    assert len(by_user) == 120


def orjson_dumps(v: Any) -> bytes:
    import orjson

    return orjson.dumps(v)


def test_spilled_users_come_back_in_order_and_exact(tmp_path) -> None:
    rng = random.Random(3)
    b = Backlog(memory_bytes=20_000, work_dir=str(tmp_path))
    folded: dict[str, list[dict[str, Any]]] = {}
    out: list[Held] = []
    for off in range(3000):
        uid = f"u{rng.randrange(300)}"
        if off == 2500:  # an alias between a spilled user and a held one: both ejected in order
            assert b.fold(TP0, off, [Merge("u1", "u2")], out.append)
            continue
        traits = {f"k{rng.randrange(5)}": rng.choice([1, "x", {"a": off}])}
        if not b.fold(TP0, off, [Identify(uid, traits)], out.append):
            folded.setdefault(uid, []).append({"type": "identify", "userId": uid, "traits": traits})
        if b.over_budget():
            b.spill()
    assert b.spilled > 300  # spilled several times over
    out += b.take(10_000)
    assert len(b) == 0
    # Per user, segments in the order they were made; together they equal the model.
    for uid, events in folded.items():
        segments = [h for h in out if h.user_id == uid]
        state: dict[str, Any] = {}
        from tests.model import deep_merge

        for h in segments:
            state = deep_merge(state, h.props)
        assert state == expected_state(events)[uid], uid
        assert sum(h.events for h in segments) == len(events)
    # The floor waited for every segment, spilled or not.
    handles = [b.handle(h) for h in out]
    assert b.floor(TP0) == 0
    for h in handles:
        h.release()
    assert b.floor(TP0) is None
    b.close()
    assert list(tmp_path.iterdir()) == []


def test_a_backfill_whose_held_users_spill_to_disk_ends_exact(
    kafka, api, settings_for, caplog, tmp_path
):
    # One partition: read to its end only at the end, so nothing is sent before the budget.
    topic = kafka.topic(1)
    events = mixed_backlog(users=2500, per_user=4, seed=2)
    kafka.produce(topic, events)
    caplog.set_level("INFO", logger="knock_sink")
    sink = Sink(
        settings_for(
            topic,
            knock__rate_limits="knock",
            sink__backfill_memory_mb=1,
            sink__work_dir=str(tmp_path),
        )
    )
    summary = sink.run(from_beginning=True, until_end=True)
    spills = [r.args for r in caplog.records if "now on disk" in r.getMessage()]
    assert spills
    # The metrics say what the log does: every state spilled, and at the end nothing held. The
    # test process is past a 1 MiB budget from the start: its held users get the floor, a quarter.
    registry = sink.metrics.registry
    assert registry.get_sample_value("knock_sink_backfill_spilled_states_total") == sum(
        a[0] for a in spills
    )
    assert registry.get_sample_value("knock_sink_backfill_held_states", {"where": "memory"}) == 0
    assert registry.get_sample_value("knock_sink_backfill_held_states", {"where": "disk"}) == 0
    assert registry.get_sample_value("knock_sink_backfill_held_budget_bytes") == (1 << 20) // 4
    assert actual_state(api.users()) == expected_state(events)
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)
    assert summary.applied == len(events)
    by_user = api.stats(by_user=True)["identify_entries_by_user"]
    # Once each, but the users an alias barred and those whose spilled and held states could
    # not fold (a scalar then an object under one key): a handful.
    assert sum(by_user.values()) <= 2500 * 1.02
    assert list(tmp_path.iterdir()) == []


def test_sigkill_during_a_backfill_then_the_same_command_resumes_from_its_commit(kafka, api):
    import json
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT, sink_env, wait_for

    topic = kafka.topic(3)
    rng = random.Random()
    users = 3200
    events: list[Any] = []
    for u in range(users):  # user by user: applying the first users frees a prefix of offsets
        for i in range(4):
            events.append(
                {"type": "identify", "userId": f"u{u}", "traits": {"i": i, "o": {f"k{i % 2}": u}}}
            )
        if u % 800 == 5:
            events.append({"type": "alias", "previousId": f"u{u - 1}", "userId": f"u{u}"})

    # An alias's two users share a partition here: when the previous id's events sit in
    # another partition, a crash after the merge but before that partition's commit passes
    # them replays them and brings the merged-away user back (any per-partition commit scheme
    # has that window; README, Delivery).
    def key(v: Any) -> bytes | None:
        if not isinstance(v, dict):
            return None
        n = int(v["userId"][1:])
        return f"u{n + 1 if n % 800 == 4 else n}".encode()

    kafka.produce(topic, [*events[:100], b"poison", *events[100:]], key=key)
    ends = kafka.end_offsets(topic)
    env = sink_env(kafka, api, topic)
    # Sink paced to Knock's limits: about 1,060 users a second, so ~3 s of sending.
    cmd = [
        sys.executable,
        "-m",
        "consumer.cli",
        "backfill",
        "--rate-limits",
        "knock",
        "--group-id",
        f"g-{topic}",
    ]

    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    at = rng.randrange(1200, 2200)  # a random moment, by progress: after the first bulk call
    try:
        wait_for(
            lambda: api.stats()["identify_entries"] >= at or proc.poll() is not None,
            90,
            "users applied",
        )
        wait_for(
            lambda: (
                sum(kafka.committed(f"g-{topic}", topic).values()) > 0 or proc.poll() is not None
            ),
            30,
            "a first commit",
        )
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the backfill ended before the kill"
    committed = kafka.committed(f"g-{topic}", topic)
    assert 0 < sum(committed.values()) < sum(ends.values())

    again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert actual_state(api.users()) == expected_state(events)
    assert kafka.committed(f"g-{topic}", topic) == ends
    # It resumed from the commit, not from the start of the backlog.
    assert summary["consumed"] == sum(ends.values()) - sum(committed.values()) < sum(ends.values())


def test_users_of_partitions_read_to_their_end_go_first() -> None:
    b = Backlog()
    for tp, off, uid in [(TP0, 0, "a"), (TP1, 0, "b"), (TP0, 1, "c"), (TP1, 1, "c"), (TP0, 2, "d")]:
        b.fold(tp, off, [Identify(uid, {"x": off})], lambda h: None)
    # Partition 0 is read to its end: a and d were seen only there; c also in partition 1.
    assert [h.user_id for h in b.take_finished({TP0}, 10)] == ["a", "d"]
    assert b.take_finished({TP0}, 10) == []
    assert {h.user_id for h in b.take_finished({TP0, TP1}, 10)} == {"b", "c"}
    assert len(b) == 0


def test_a_held_user_knock_rejects_is_dead_lettered_as_its_folded_update(kafka, api, settings_for):
    import orjson

    topic = kafka.topic(1)
    events = [
        {"type": "identify", "userId": "good", "traits": {"plan": "pro"}},
        {"type": "identify", "userId": "bad", "traits": {"email": 12345, "a": 1}},
        {"type": "identify", "userId": "bad", "traits": {"b": 2}},
        {"type": "identify", "userId": "good", "traits": {"seats": 3}},
    ]
    kafka.produce(topic, events)
    summary = backfill(settings_for(topic, knock__rate_limits="knock"))
    assert actual_state(api.users()) == {"good": {"plan": "pro", "seats": 3}}
    [dead] = kafka.read_all(f"{topic}.dlq", 1)
    assert dead.key() == b"bad"
    assert orjson.loads(dead.value()) == {
        "type": "identify",
        "userId": "bad",
        "traits": {"email": 12345, "a": 1, "b": 2},
    }
    headers = dict(dead.headers())
    assert headers["knock-sink.error.kind"] == b"knock_rejected"
    assert headers["knock-sink.source.offset"] == b"1"  # the user's earliest event
    assert headers["knock-sink.folded.events"] == b"2"
    assert dict(summary.dead_lettered) == {"knock_rejected": 1}
    assert kafka.committed(f"g-{topic}", topic) == {0: 4}


def test_the_memory_budget_is_the_processs() -> None:
    from consumer.backfill.memory import held_budget

    mib = 1 << 20
    # What the process and twice librdkafka's prefetch take comes off; a quarter is left at least.
    assert held_budget(256 * mib, 16 * mib, rss=60 * mib) == 164 * mib
    assert held_budget(64 * mib, 16 * mib, rss=60 * mib) == 16 * mib


def test_the_held_share_shrinks_by_how_far_the_process_went_past_the_budget() -> None:
    from consumer.backfill.memory import HeldShare

    mib = 1 << 20
    resident = [60 * mib]
    share = HeldShare(256 * mib, 16 * mib, read=lambda: resident[0])
    assert share.now() == 164 * mib
    resident[0] = 250 * mib  # within the budget: nothing changes
    assert share.now() == 164 * mib
    resident[0] = 270 * mib  # 14 MiB past it
    assert share.now() == 150 * mib
    # Seen past it again by less, or back under it: the share stays where the peak put it.
    resident[0] = 262 * mib
    assert share.now() == 150 * mib
    resident[0] = 200 * mib
    assert share.now() == 150 * mib
    resident[0] = 300 * mib  # a new peak, 44 MiB past
    assert share.now() == 120 * mib
    resident[0] = 500 * mib  # never below a quarter of the budget
    assert share.now() == 64 * mib


def test_a_spill_frees_the_budget_it_spills(tmp_path) -> None:
    b = Backlog(memory_bytes=50_000, work_dir=str(tmp_path))
    sizes = []
    for off in range(1000):
        b.fold(TP0, off, [Identify(f"u{off}", {"k": off})], lambda h: None)
        if b.over_budget():
            before = b.spilled
            b.spill()
            sizes.append(b.spilled - before)
    # Each user is about 470 bytes held (its 10 bytes of JSON and the rest) and nothing once
    # spilled (a shell of 450 bytes per spilled state before): every spill carries what is
    # above the low-water mark, a quarter of the budget's worth of users, not a part of it.
    assert len(sizes) >= 25 and min(sizes) >= (1 - LOW_WATER) * 50_000 // 500
    assert b.rows == sum(sizes)
    b.close()
