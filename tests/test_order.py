"""Topics not keyed by user: one user's events ordered by event time across partitions
(:mod:`consumer.ordering`), and merges safe against a repeated ``messageId``. Unit tests of the
order and of the fold it feeds; then the real broker and the local Knock API, checked against
the independent model of ``tests/model.py`` applied in event-time order."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumer.backfill.backlog import Backlog
from consumer.metrics import total
from consumer.ops import Identify
from consumer.ordering import EventOrder, RecentIds, event_time
from consumer.sink import Sink
from tests.conftest import wait_for
from tests.model import actual_state, deep_merge, expected_state

START = datetime(2024, 3, 1, tzinfo=UTC)
P = [("t", 0), ("t", 1), ("t", 2)]


def stamp(i: float) -> str:
    return (START + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")


# -- the order ----------------------------------------------------------------------------


def test_exact_order_is_a_merge_by_event_time_that_waits_for_every_unfinished_partition():
    out: list[str] = []
    ends = {P[0]: 10, P[1]: 10, P[2]: 2}
    positions: dict[Any, int] = {}
    order = EventOrder(
        out.append,
        ends=ends,
        positions=lambda tps: {tp: positions.get(tp, 0) for tp in tps},
        clock=lambda: 0.0,
    )

    def add(name: str, tp: Any, off: int, t: float) -> None:
        order.add(name, tp, off, (name[0],), lambda: t)

    add("a3", P[0], 0, 3.0)
    add("b1", P[1], 0, 1.0)
    order.step()
    assert out == []  # partition 2 may still bring something earlier
    add("c2", P[2], 0, 2.0)
    order.step()
    assert out == ["b1"]  # c2 waits: partition 1 may still bring something before 2
    add("b3", P[1], 1, 3.0)  # a tie with a3: the one read first goes first
    order.step()
    assert out == ["b1", "c2"]  # partition 2 may still bring something before 3
    positions[P[2]] = 2  # partition 2 read to its end (its last record had no op)
    add("a5", P[0], 1, 5.0)
    order.step()
    assert out == ["b1", "c2", "a3", "b3"]  # a5 waits for partition 1
    assert len(order) == 1


def _keyed_add(order: EventOrder, out: list[str]):
    def add(
        name: str, tp: Any, off: int, users: tuple[str, ...], t: Any, key: bytes | None
    ) -> None:
        if order.as_read(tp, off, users, key):
            out.append(name)
        else:
            order.add(name, tp, off, users, t)

    return add


def test_a_topic_whose_records_carry_their_users_id_as_key_counts_as_keyed_and_goes_on_as_read(
    monkeypatch,
):
    monkeypatch.setattr("consumer.ordering.exact.KEYED_AFTER", 3)
    out: list[str] = []
    order = EventOrder(out.append, ends={P[0]: 9, P[1]: 9}, clock=lambda: 0.0)
    add = _keyed_add(order, out)
    add("a1", P[0], 0, ("a",), lambda: 1.0, b"a")
    add("tenant", P[1], 0, ("tenant/x",), lambda: 0.5, None)  # touches no user: not judged
    add("b2", P[1], 1, ("b",), lambda: 2.0, b"b")
    order.step()
    assert out == ["tenant", "a1"] and not order.keyed("t")  # judged 2 of 3: b2 waits its turn
    add("a0", P[0], 1, ("a",), lambda: pytest.fail("a keyed topic reads no time"), b"a")
    # The third: keyed. What waited goes on in the order so far, the rest as read.
    assert out == ["tenant", "a1", "b2", "a0"] and order.keyed("t") and len(order) == 0


@pytest.mark.parametrize("key", [None, b"someone-else"])
def test_one_record_without_its_users_id_as_key_and_the_topic_is_ordered(monkeypatch, key):
    monkeypatch.setattr("consumer.ordering.exact.KEYED_AFTER", 3)
    out: list[str] = []
    order = EventOrder(out.append, ends={P[0]: 9, P[1]: 9}, clock=lambda: 0.0)
    add = _keyed_add(order, out)
    add("a3", P[0], 0, ("a",), lambda: 3.0, b"a")
    add("a1", P[1], 0, ("a",), lambda: 1.0, key)
    for i, t in enumerate([4.0, 5.0, 6.0]):  # keyed ones after it change nothing
        add(f"a{t:.0f}", P[0], i + 1, ("a",), lambda t=t: t, b"a")
    order.step()
    # Still ordered: a3 waits, as partition 1 may bring something before 3.
    assert out == ["a1"] and not order.keyed("t") and len(order) == 4


def test_a_straggler_goes_on_in_arrival_order_and_is_counted():
    out: list[str] = []
    late: list[int] = []
    order = EventOrder(
        out.append, ends={P[0]: 9, P[1]: 9}, clock=lambda: 0.0, on_late=lambda: late.append(1)
    )
    for name, tp, off, t in [
        ("u5", P[0], 0, 5.0),
        ("u6", P[1], 0, 6.0),
        ("u7", P[0], 1, 7.0),
        ("u4", P[1], 1, 4.0),
    ]:
        order.add(name, tp, off, ("u",), lambda t=t: t)
        order.step()
    # u4 is older than u5, already handed on: out of order within its own partition.
    assert out == ["u5", "u6", "u4"] and late == [1]


def test_the_window_holds_only_users_seen_on_several_partitions_and_lets_go_after_it():
    now = [0.0]
    out: list[str] = []
    split = {"s"}
    order = EventOrder(
        out.append, lateness=5.0, split=lambda u, topic: u in split, clock=lambda: now[0]
    )
    order.add("k1", P[0], 0, ("k",), lambda: pytest.fail("a keyed topic reads no time"))
    assert out == ["k1"]
    order.add("s10", P[0], 1, ("s",), lambda: 10.0)
    order.add("k2", P[0], 2, ("k",), lambda: 11.0)  # not split, nothing of it waits
    order.add("s9", P[1], 0, ("s",), lambda: 9.0)
    order.step()
    assert out == ["k1", "k2", "s9"]  # s10 waits: partition 1 has read nothing as late yet
    now[0] = 4.9
    order.step()
    assert out == ["k1", "k2", "s9"]
    now[0] = 5.0
    order.step()
    assert out == ["k1", "k2", "s9", "s10"]


def test_a_merge_waits_behind_what_its_users_wait_for():
    now = [0.0]
    out: list[str] = []
    order = EventOrder(
        out.append, lateness=5.0, split=lambda u, topic: u == "a", clock=lambda: now[0]
    )
    order.add("a1", P[0], 0, ("a",), lambda: 1.0)
    order.add("merge a->b", P[1], 0, ("b", "a"), lambda: 2.0)
    order.add("b3", P[1], 1, ("b",), lambda: 3.0)  # b is not split, but its merge waits
    order.step()
    assert out == ["a1"]
    now[0] = 10.0
    order.step()
    assert out == ["a1", "merge a->b", "b3"]


def test_recent_merge_ids_skip_a_repeat_from_elsewhere_not_the_same_event_read_again():
    ids = RecentIds(2)
    assert not ids.duplicate("m1", P[0], 5)
    assert not ids.duplicate("m1", P[0], 5)  # read again (a rewind): the same event
    assert ids.duplicate("m1", P[1], 9)  # Segment's retry of the batch
    assert not ids.duplicate(None, P[1], 10)
    ids.duplicate("m2", P[0], 6)
    ids.duplicate("m3", P[0], 7)  # m1 forgotten
    assert not ids.duplicate("m1", P[2], 1)


def test_event_time_falls_back_to_the_kafka_timestamp_then_the_reading():
    assert event_time(stamp(1), 5000, 7.0) == START.timestamp() + 1
    assert event_time("not a time", 5000, 7.0) == 5.0
    assert event_time(None, None, 7.0) == 7.0


@pytest.mark.parametrize("mode", ["deep", "either"])
def test_users_folded_through_the_order_equal_their_events_applied_in_event_time_order(mode):
    # Events of a few users round robin over 3 partitions, read in random chunks per
    # partition, through the order into a backfill's fold: handed on in event-time order, and
    # what Knock gets (held states, ejected at a barrier or sent at the end, and the per-event
    # rest, in the order the planner keeps) is the model of the events one by one in that order.
    rng = random.Random(11)
    events = []
    for i in range(3000):
        uid = f"u{rng.randrange(60)}"
        # Mostly what folds in the mode (under "either" no object under a key already held).
        usual = {"a": i} if mode == "deep" else i
        value = (
            rng.choice([1, None, [i], {"a": i}, {"b": {"c": i}}]) if rng.random() < 0.05 else usual
        )
        events.append((i, uid, {f"k{rng.randrange(5)}": i, "o": value, "last": i}))
    parts = [[e for e in events if e[0] % 3 == p] for p in range(3)]
    backlog = Backlog(nested=mode)  # type: ignore[arg-type]
    knock: dict[str, dict[str, Any]] = {}
    handed: list[int] = []

    def send(uid: str, props: dict[str, Any]) -> None:
        knock[uid] = deep_merge(knock.get(uid, {}), props)

    def fold(unit: tuple[int, str, dict[str, Any], int, Any]) -> None:
        i, uid, traits, off, tp = unit
        handed.append(i)
        for op in backlog.fold(
            tp, off, [Identify(uid, traits)], lambda h: send(h.user_id, h.props)
        ):
            send(op.user_id, op.props)  # type: ignore[union-attr]

    order = EventOrder(fold, ends={P[p]: len(parts[p]) for p in range(3)}, clock=lambda: 0.0)
    cursor = [0, 0, 0]
    while any(cursor[p] < len(parts[p]) for p in range(3)):
        p = rng.randrange(3)
        for _ in range(rng.randrange(1, 40)):
            if cursor[p] == len(parts[p]):
                break
            i, uid, traits = parts[p][cursor[p]]
            order.add(
                (i, uid, traits, cursor[p], P[p]), P[p], cursor[p], (uid,), lambda i=i: float(i)
            )
            cursor[p] += 1
        order.step()
    assert len(order) == 0 and handed == list(range(3000))
    held = backlog.take(1000)
    assert held  # some users never hit a barrier: their whole history is one update
    for h in held:
        send(h.user_id, h.props)
    assert knock == expected_state(
        [{"type": "identify", "userId": u, "traits": t} for _, u, t in events]
    )


# -- on the real broker -------------------------------------------------------------------


def scenario(
    seed: int = 3, users: int = 300, visitors: int = 10, n: int = 2400
) -> list[dict[str, Any]]:
    """Identifies and tracks of ``users`` users, nested traits, and ``visitors`` anonymous
    users identified, aliased into a user (a merge), then identified again (recreated) and
    aliased once more: merges interleaved with identifies of both their users. Each event has
    its own ``timestamp``, in production order."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    alias_at = {int(n * (j + 1) / (visitors + 2)): j for j in range(visitors)}
    again_at = {k + n // 7 + 5: j for k, j in alias_at.items() if k + n // 7 + 5 < n}
    for i in range(n):
        e: dict[str, Any]
        if i in alias_at:
            j = alias_at[i]
            e = {"type": "alias", "previousId": f"visitor{j}", "userId": f"u{j}"}
        elif i in again_at:
            j = again_at[i]
            e = {"type": "alias", "previousId": f"visitor{j}", "userId": f"u{j + 1}"}
        elif rng.random() < 0.08:
            j = rng.randrange(visitors)
            e = {"type": "identify", "userId": f"visitor{j}", "traits": {"seen": i, f"v{i % 3}": i}}
        elif rng.random() < 0.1:
            u = f"u{rng.randrange(users)}"
            e = {
                "type": "track",
                "userId": u,
                "event": "Clicked",
                "context": {"traits": {"last": i, "tracked": i}},
            }
        else:
            u = f"u{rng.randrange(users)}" if rng.random() < 0.7 else f"u{rng.randrange(12)}"
            e = {
                "type": "identify",
                "userId": u,
                "traits": {"last": i, f"k{i % 4}": i, "prefs": {f"p{rng.randrange(3)}": i}},
            }
        e["messageId"] = f"m{i}"
        e["timestamp"] = stamp(i)
        events.append(e)
    return events


def produce_round_robin(kafka: Any, topic: str, events: list[dict[str, Any]]) -> None:
    for p in range(3):  # production order within each partition, no key (Segment's default)
        kafka.produce(
            topic, [e for i, e in enumerate(events) if i % 3 == p], key=lambda v: None, partition=p
        )


def exact_users(actual: dict[str, Any], expected: dict[str, Any]) -> int:
    return sum(1 for u, v in expected.items() if actual.get(u) == v)


@pytest.mark.parametrize("limits", ["knock", "off"])
def test_an_unkeyed_topic_ends_exact_after_a_backfill(kafka, api, settings_for, limits):
    topic = kafka.topic(3)
    events = scenario()
    produce_round_robin(kafka, topic, events)
    sink = Sink(settings_for(topic, knock__rate_limits=limits))
    summary = sink.run(from_beginning=True, until_end=True)
    expected = expected_state(events)
    actual = actual_state(api.users())
    assert len(expected) == 310
    assert exact_users(actual, expected) == 310 and actual == expected
    assert total(sink.metrics.late_events) == 0
    assert dict(summary.dead_lettered) == {}
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)


def test_a_live_run_applies_a_split_users_events_in_event_time_order_within_the_window(
    kafka, api, settings_for
):
    topic = kafka.topic(3)
    # The default window: a pair read further apart than it (wall time) is applied as read,
    # and a loaded CI machine once took more than 2 s between the two partitions' reads.
    lateness = 5.0
    sink = Sink(settings_for(topic, sink__lateness=lateness))
    runner = threading.Thread(target=sink.run)
    runner.start()
    produced: list[dict[str, Any]] = []
    ends = {0: 0, 1: 0}

    def put(partition: int, t: float, traits: dict[str, Any]) -> None:
        e = {"type": "identify", "userId": "s", "timestamp": stamp(t), "traits": traits}
        kafka.produce(topic, [e], key=lambda v: None, partition=partition)
        produced.append(e)
        ends[partition] += 1

    def committed() -> bool:
        return kafka.committed(f"g-{topic}", topic) == {p: n for p, n in ends.items() if n}

    try:
        # The user shows up on two partitions: from here on its events wait for their turn.
        put(0, 1, {"plan": "free", "a": 1})
        put(1, 2, {"plan": "trial", "b": 2})
        wait_for(lambda: total(sink.metrics.users_on_several_partitions) == 1, 60, "the split seen")
        wait_for(committed, 60, "the first two applied")
        # Read newest first, across partitions, well inside the window: event time wins.
        put(0, 11, {"plan": "pro", "c": 11})
        put(1, 10, {"plan": "team", "d": 10})
        wait_for(committed, 60, "the out-of-order pair applied")
        in_time = sorted(produced, key=lambda e: e["timestamp"])
        assert (
            actual_state(api.users())
            == expected_state(in_time)
            == {"s": {"plan": "pro", "a": 1, "b": 2, "c": 11, "d": 10}}
        )
        assert total(sink.metrics.late_events) == 0
        # Older than what was applied already: beyond the window, applied as it arrives.
        put(1, 5, {"plan": "legacy"})
        wait_for(committed, 60, "the straggler applied")
        assert actual_state(api.users())["s"]["plan"] == "legacy"
        assert total(sink.metrics.late_events) == 1
    finally:
        sink.stop()
        runner.join(60)
    assert not runner.is_alive()


@pytest.mark.parametrize("limits", ["knock", "off"])
def test_a_repeated_alias_does_not_merge_the_recreated_user_again(kafka, api, settings_for, limits):
    topic = kafka.topic(1)
    merge = {"type": "alias", "previousId": "a", "userId": "b", "messageId": "alias-1"}
    events = [
        {"type": "identify", "userId": "a", "messageId": "m1", "traits": {"from": "a", "x": 1}},
        {"type": "identify", "userId": "b", "messageId": "m2", "traits": {"from": "b"}},
        merge,
        {"type": "identify", "userId": "a", "messageId": "m3", "traits": {"again": True}},
        dict(merge),  # Segment's retry of the batch: the same messageId at another offset
        {"type": "identify", "userId": "b", "messageId": "m4", "traits": {"y": 2}},
    ]
    kafka.produce(topic, events)
    sink = Sink(settings_for(topic, knock__rate_limits=limits))
    sink.run(from_beginning=True, until_end=True)
    unique = events[:4] + events[5:]
    assert (
        actual_state(api.users())
        == expected_state(unique)
        == {"a": {"again": True}, "b": {"from": "b", "x": 1, "y": 2}}
    )
    assert total(sink.metrics.duplicate_merges) == 1
    assert kafka.committed(f"g-{topic}", topic) == {0: len(events)}
