"""The loop's bookkeeping on the in-memory edge (``tests/memory.py``) and the real local Knock
API: exact end states, commits, dead letters, backpressure and rebalances, without a broker.
The same behaviour on the real broker is covered by ``test_sink.py`` and the chaos suite."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from consumer.flow import Backpressure, ReadAhead, ReadRate
from consumer.metrics import Summary
from consumer.records import Record
from consumer.sink import Sink
from tests.conftest import sink_settings
from tests.memory import Broker, MemoryEdge
from tests.model import actual_state, expected_state

TOPIC = "events"
PARTITIONS = 3


def settings(api: Any, **over: Any) -> Any:
    # The loop sees no broker: the bootstrap address is never dialled.
    return sink_settings("in-memory:9092", api, TOPIC, **{"sink__flush_interval": 0.05, **over})


def stream(users: int = 12, per_user: int = 15) -> tuple[Broker, list[dict[str, Any]]]:
    """Identify and track events, each user on partition ``index % PARTITIONS``; aliases only
    between users of one partition, so each partition's order is the model's."""
    broker = Broker()
    broker.create(TOPIC, PARTITIONS)
    events: list[dict[str, Any]] = []
    for i in range(per_user):
        for u in range(users):
            traits = {"i": i, f"k{i % 3}": u, "nested": {f"n{i % 2}": i}}
            if i % 4 == 3:
                e = {
                    "type": "track",
                    "userId": f"u{u}",
                    "event": "e",
                    "context": {"traits": traits},
                }
            else:
                e = {"type": "identify", "userId": f"u{u}", "traits": traits}
            events.append(e)
            broker.produce(TOPIC, u % PARTITIONS, e, f"u{u}".encode())
        if i == per_user // 2:
            e = {"type": "alias", "previousId": f"u{PARTITIONS}", "userId": "u0"}
            events.append(e)
            broker.produce(TOPIC, 0, e, b"u0")
    return broker, events


def backfill(api: Any, broker: Broker, **over: Any) -> Summary:
    sink = Sink(settings(api, **over), edge=MemoryEdge(broker, [TOPIC]))
    return sink.run(from_beginning=True, until_end=True)


def live(api: Any, broker: Broker, sink: Sink | None = None, **over: Any) -> Summary:
    """``run``, the per-event path (a backfill holds users instead), stopped once every
    partition is committed to its end. ``over``: settings for a sink made here."""
    assert sink is None or not over, "settings go to the sink given"
    if sink is None:
        sink = Sink(settings(api, **over), edge=MemoryEdge(broker, [TOPIC]))
    ends = broker.ends()
    broker.tick = lambda: sink.stop() if broker.commits == ends else None
    return sink.run(from_beginning=True)


def test_a_backfill_ends_exact_committed_to_the_end_with_poison_parked(api):
    broker, events = stream()
    bad = [
        broker.produce(TOPIC, 1, b"{not json", b"k", [("origin", b"x")]),
        broker.produce(TOPIC, 2, {"type": "identify", "userId": "a/b"}),
    ]
    summary = backfill(api, broker)
    assert actual_state(api.users()) == expected_state(events)
    assert broker.commits == broker.ends()
    assert [
        (
            d.topic,
            d.headers["knock-sink.error.kind"],
            d.headers["knock-sink.source.partition"],
            d.headers["knock-sink.source.offset"],
        )
        for d in broker.dead
    ] == [
        (f"{TOPIC}.dlq", "undecodable", "1", str(bad[0].offset)),
        (f"{TOPIC}.dlq", "forbidden_user_id", "2", str(bad[1].offset)),
    ]
    assert (broker.dead[0].key, broker.dead[0].value) == (b"k", b"{not json")
    assert broker.dead[0].headers["origin"] == "x"
    assert summary.consumed == len(events) + 2
    assert summary.applied == len(events)
    assert summary.dead_lettered == {"undecodable": 1, "forbidden_user_id": 1}
    assert summary.committed == broker.ends()


def test_a_backfill_without_knocks_limits_holds_users_sent_once_in_plans_of_one_bulk_call(api):
    broker = Broker()
    broker.create(TOPIC, PARTITIONS)
    events = []
    for i in range(10):
        for u in range(30):
            traits = {"i": i, f"k{i % 3}": u, "nested": {f"n{i % 2}": i}}
            e = {"type": "identify", "userId": f"u{u}", "traits": traits}
            events.append(e)
            broker.produce(TOPIC, u % PARTITIONS, e, f"u{u}".encode())
    sink = Sink(
        settings(api, knock__bulk_size=10, knock__concurrency=4), edge=MemoryEdge(broker, [TOPIC])
    )
    summary = sink.run(from_beginning=True, until_end=True)
    assert actual_state(api.users()) == expected_state(events)
    assert broker.commits == broker.ends()
    assert summary.applied == len(events)
    # Each user once (not once per batch it came in), ten to a plan: each partition's users
    # go in one plan once it is read to its end (a plan per worker, 40, would wait for more).
    assert api.stats()["identify_entries"] == 30
    plans = {s.name: s.value for s in sink.metrics.plan_users.collect()[0].samples}
    assert (plans["knock_sink_plan_users_count"], plans["knock_sink_plan_users_sum"]) == (3, 30)


def test_a_backfill_reads_the_partition_with_the_fewest_events_left_first(api):
    # Partition 1 has the fewest events, partition 2 the most: Knock gets its first plan once
    # partition 1 is read, then partition 0's, then partition 2's (in partition order, 0 would
    # come first). The emulator keeps users in the order they were first identified.
    broker = Broker()
    broker.create(TOPIC, PARTITIONS)
    users = {
        0: [f"a{u}" for u in range(10)],
        1: [f"b{u}" for u in range(5)],
        2: [f"c{u}" for u in range(15)],
    }
    events = []
    for i in range(2):
        for partition, ids in users.items():
            for uid in ids:
                e = {"type": "identify", "userId": uid, "traits": {"i": i, "p": partition}}
                events.append(e)
                broker.produce(TOPIC, partition, e, uid.encode())
    # Batches of 3: the first fetch reads one record of each partition, before any focus;
    # lateness 0: no event-time order, so the partitions are read one at a time from the start.
    sink = Sink(
        settings(
            api, knock__bulk_size=5, knock__concurrency=1, kafka__consume_batch=3, sink__lateness=0
        ),
        edge=MemoryEdge(broker, [TOPIC]),
    )
    sink.run(from_beginning=True, until_end=True)
    assert actual_state(api.users()) == expected_state(events)
    assert broker.commits == broker.ends()
    order = [u["id"][0] for u in api.users()]
    assert order == ["b"] * 5 + ["a"] * 10 + ["c"] * 15


def test_backpressure_pauses_at_max_pending_and_resumes_at_half(api):
    broker, events = stream(users=30, per_user=10)
    api.set_faults(latency_ms=30)  # Knock slower than reading: pending piles up
    sink = Sink(
        settings(api, sink__max_pending=40, kafka__consume_batch=10),
        edge=MemoryEdge(broker, [TOPIC]),
    )
    broker.probe = sink.metrics.pending._value.get
    live(api, broker, sink)
    assert actual_state(api.users()) == expected_state(events)
    # Each entry: whether fetching was paused at a consume, and the pending count it was
    # decided on.
    states = broker.log
    pauses = [pending for (was, _), (now, pending) in itertools.pairwise(states) if not was and now]
    resumes = [
        pending for (was, _), (now, pending) in itertools.pairwise(states) if was and not now
    ]
    assert pauses and resumes, "never paused and resumed"
    assert all(p >= 40 for p in pauses), pauses
    assert all(p <= 20 for p in resumes), resumes


class FakeSource:
    def __init__(self) -> None:
        self.paused = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


@pytest.mark.parametrize(
    ("pendings", "expected"),
    [
        ([0, 9, 10, 11], [False, False, True, True]),
        ([10, 8, 6, 5, 6, 9, 10], [True, True, True, False, False, False, True]),
    ],
)
def test_backpressure_does_not_flap_between_half_and_full(pendings, expected):
    bp, src = Backpressure(10), FakeSource()
    seen = []
    for n in pendings:
        bp.update(n, src)  # type: ignore[arg-type]
        seen.append(src.paused)
    assert seen == expected


def test_a_pause_in_fetching_ends_the_read_ahead_only_past_the_ends_by_position():
    ra = ReadAhead({("t", 0): 10}, idle=1.0, now=0.0)
    asked: list[int] = []

    def short(answer: bool):
        return lambda: asked.append(1) or answer

    assert ra.holding(0.5, full=False, short=short(False)) and not asked  # not idle: not asked
    # Idle for a second: still holding while the position is short of the end (records to come).
    assert ra.holding(1.5, full=False, short=short(True)) and len(asked) == 1
    # Past the end by position (a transaction marker, never delivered): it stops holding.
    assert not ra.holding(1.5, full=False, short=short(False))
    assert not ra.holding(0.5, full=True, short=short(True))  # the window is used up


def test_the_read_rate_counts_only_time_spent_fetching():
    rate = ReadRate(5.0)
    rate.add(1000)
    rate.tick(0.5, fetching=True)
    assert rate.per_second() is None  # not a fifth of the window yet
    rate.add(1500)
    rate.tick(0.75, fetching=True)
    assert rate.per_second() == pytest.approx(2000.0)
    # A pause neither counts what it delivers (fetched before it) nor ages the rate.
    rate.add(500)
    rate.tick(30.0, fetching=False)
    assert rate.per_second() == pytest.approx(2000.0)
    # Slower reading weighs in over the window.
    for _ in range(50):
        rate.add(100)
        rate.tick(0.5, fetching=True)
    assert rate.per_second() == pytest.approx(200.0, rel=0.05)


def test_what_is_left_to_read_of_a_partition_counts_down_to_its_end():
    ra = ReadAhead({("t", 0): 10, ("t", 1): 4}, idle=1.0, now=0.0)
    assert ra.left(("t", 0)) == 10
    ra.fetched([Record("t", 0, 6)], 0.1)
    assert ra.left(("t", 0)) == 3 and ra.left(("t", 1)) == 4
    ra.fetched([Record("t", 0, 9), Record("t", 1, 3)], 0.2)
    assert ra.left(("t", 0)) == 0 and ra.finished() == {("t", 0), ("t", 1)}
    # Resumed from a commit: what is left is counted from where reading starts.
    ra = ReadAhead(
        {("t", 0): 10, ("t", 1): 4}, starts={("t", 0): 8, ("t", 1): 0}, idle=1.0, now=0.0
    )
    assert ra.left(("t", 0)) == 2 and ra.left(("t", 1)) == 4 and ra.finished() == set()


def test_a_revoked_partition_is_committed_then_forgotten_and_read_again_when_it_returns(api):
    broker, events = stream()
    # Knock is slow enough for plans to be in flight at the revoke.
    api.set_faults(latency_ms=20)
    tp = (TOPIC, 1)
    broker.schedule = [(40, "revoke", [tp]), (60, "assign", [tp])]
    # The revoke comes once Knock has applied some of what was read, with more in flight.
    broker.when = lambda: api.stats()["identify_entries"] > 0
    summary = live(api, broker, kafka__consume_batch=5)
    assert actual_state(api.users()) == expected_state(events)
    assert broker.commits == broker.ends()
    # The revoke finished what was in flight and committed it while the partition was ours.
    (what, before, after), _ = broker.rebalances
    assert what == "revoke" and after.get(tp, 0) > before.get(tp, 0)
    assert summary.dead_lettered == {}


def test_a_lost_partition_is_not_committed_and_is_read_again(api):
    broker, events = stream()
    api.set_faults(latency_ms=20)
    lost = (TOPIC, 2)
    broker.schedule = [(30, "lost", [lost]), (31, "assign", [lost])]
    summary = live(api, broker, kafka__consume_batch=5)
    assert actual_state(api.users()) == expected_state(events)
    assert broker.commits == broker.ends()
    # A lost partition may be someone else's already: the loss commits nothing...
    (what, before, after), _ = broker.rebalances
    assert what == "lost" and after == before
    # ...and what had been read of it is read again.
    assert summary.consumed > sum(len(log) for log in broker.partitions.values())


def test_a_rewound_partition_is_read_again_and_stale_results_never_count(api):
    # Found by the chaos suite: a partition revoked and given back to the same process within
    # one fetch hands out offsets it already gave. The partition starts afresh (no crash), and
    # a late result of the first read cannot resolve the same offset read the second time.
    broker, events = stream()
    api.set_faults(latency_ms=20)
    broker.schedule = [(25, "rewind", [(TOPIC, 0)]), (50, "rewind", [(TOPIC, 1), (TOPIC, 2)])]
    summary = live(api, broker, kafka__consume_batch=5)
    assert actual_state(api.users()) == expected_state(events)
    assert broker.commits == broker.ends()
    assert summary.consumed > sum(len(log) for log in broker.partitions.values())


@pytest.mark.parametrize(
    "schedule",
    [
        [(40, "revoke", [(TOPIC, 1)]), (60, "assign", [(TOPIC, 1)])],
        [(30, "lost", [(TOPIC, 2)]), (31, "assign", [(TOPIC, 2)])],
        [(25, "rewind", [(TOPIC, 0)]), (50, "rewind", [(TOPIC, 1), (TOPIC, 2)])],
    ],
    ids=["revoke", "lost", "rewind"],
)
def test_a_partition_that_moves_while_catching_up_ends_exact(api, schedule):
    # Every partition starts behind (catch_up_lag 10): its users are held, folding, when it is
    # revoked, lost or rewound mid-read. What was held is dropped with the partition and read
    # again; nothing is committed past what Knock applied.
    broker, events = stream()
    api.set_faults(latency_ms=20)
    broker.schedule = schedule
    summary = live(api, broker, kafka__consume_batch=5, sink__catch_up_lag=10)
    assert actual_state(api.users()) == expected_state(events)
    assert broker.commits == broker.ends()
    assert summary.dead_lettered == {}


def test_a_backlog_caught_up_sends_each_user_once_in_memory(api):
    # Identifies only (no merge to split a user's history): 12 users, 15 updates each, on three
    # partitions behind by 60 events each; one entry a user, against one per plan otherwise.
    broker = Broker()
    broker.create(TOPIC, PARTITIONS)
    events = []
    for i in range(15):
        for u in range(12):
            e = {"type": "identify", "userId": f"u{u}", "traits": {"i": i, f"k{i % 3}": u}}
            events.append(e)
            broker.produce(TOPIC, u % PARTITIONS, e, f"u{u}".encode())
    live(
        api,
        broker,
        kafka__consume_batch=5,
        knock__rate_limits="knock",
        sink__flush_interval=0.001,  # a plan as soon as a bulk call may leave: the first batch
        sink__catch_up_lag=10,
        sink__known_ttl=0,
    )
    assert actual_state(api.users()) == expected_state(events)
    assert broker.commits == broker.ends()
    assert api.stats()["identify_entries"] == 12
