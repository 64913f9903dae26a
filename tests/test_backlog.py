"""A backfill's backlog past its memory budget (:mod:`consumer.backlog`): one row per spilled
state on disk, folded when read back, nothing of a spilled user left in memory, commit floors
from disk, users of partitions read to their end spilled first. Pure logic: a real
SQLite file, no broker. Exactness is checked against the independent model (events applied one
by one, in order), the floors against the offsets of the events not yet applied."""

from __future__ import annotations

import random
import tracemalloc
from collections import defaultdict
from typing import Any

import orjson
import pytest

from consumer.backfill.backlog import (
    LOW_WATER,
    PER_USER,
    PY_PER_JSON_BYTE,
    RESAMPLE_EVERY,
    Backlog,
    Held,
    HeldHandle,
)
from consumer.ops import Identify, Merge, Op
from tests.model import deep_merge, expected_state

TP0, TP1, TP2 = ("t", 0), ("t", 1), ("t", 2)


def ident(uid: str, traits: dict[str, Any]) -> dict[str, Any]:
    return {"type": "identify", "userId": uid, "traits": traits}


def test_a_user_spilled_again_and_again_is_read_back_as_one_update_sent_once(tmp_path) -> None:
    b = Backlog(work_dir=str(tmp_path))
    events: list[dict[str, Any]] = []
    off = 0
    for round_ in range(5):
        for u in range(50):
            traits = {"round": round_, f"k{round_}": u, "o": {f"r{round_}": round_}}
            assert b.fold(TP0, off, [Identify(f"u{u}", traits)], lambda h: None) == []
            events.append(ident(f"u{u}", traits))
            off += 1
        b.spill()
        assert b.rows == 50 * (round_ + 1) and len(b) == b.rows  # a row per state, none rewritten
    assert b.spilled == 250
    out = b.take(100)
    assert [h.user_id for h in out] == [f"u{u}" for u in range(50)]  # the order of first spill
    expected = expected_state(events)
    for h in out:
        assert h.props == expected[h.user_id] and h.events == 5
        assert h.first == {TP0: int(h.user_id[1:])}  # the earliest offset, from the first spill
    assert len(b) == 0 and b.rows == 0
    b.close()
    assert list(tmp_path.iterdir()) == []


def test_rows_that_do_not_fold_into_the_earlier_ones_go_as_a_second_update_in_order(
    tmp_path,
) -> None:
    # Under deep, an object after a scalar at one path does not fold: the held state in memory
    # is fresh (it folded), but it cannot join the rows before it. Read back as a second
    # update, sent after the first, and the next row folds into that one.
    b = Backlog(work_dir=str(tmp_path))
    b.fold(TP0, 0, [Identify("u", {"o": 1, "a": 1})], lambda h: None)
    b.fold(TP0, 1, [Identify("v", {"o": 1})], lambda h: None)
    b.spill()
    b.fold(TP0, 2, [Identify("u", {"o": {"x": 1}})], lambda h: None)
    b.fold(TP0, 3, [Identify("u", {"b": 2})], lambda h: None)
    b.fold(TP0, 4, [Identify("v", {"p": 2})], lambda h: None)
    b.spill()
    assert b.rows == 4
    b.fold(TP1, 0, [Identify("u", {"o": {"y": 2}})], lambda h: None)  # folds into the second update
    b.spill()
    assert b.rows == 5
    out = b.take(10)
    assert [(h.user_id, h.props, h.events) for h in out] == [
        ("u", {"o": 1, "a": 1}, 1),
        ("u", {"o": {"x": 1, "y": 2}, "b": 2}, 3),
        ("v", {"o": 1, "p": 2}, 2),
    ]
    assert [h.first for h in out] == [{TP0: 0}, {TP0: 2, TP1: 0}, {TP0: 1}]
    b.close()


def test_nothing_of_a_spilled_user_stays_in_memory(tmp_path) -> None:
    users = 20_000
    ops = [Identify(f"user-{i:07d}", {"k": i}) for i in range(users)]
    tracemalloc.start()
    try:
        b = Backlog(work_dir=str(tmp_path))
        base = tracemalloc.get_traced_memory()[0]
        for i, op in enumerate(ops):
            b.fold(TP0, i, [op], lambda h: None)
        held = tracemalloc.get_traced_memory()[0] - base
        b.spill()
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # Held: about 425 bytes a user besides its props (consumer.backlog.PER_USER).
    assert 350 * users < held < 500 * users
    assert left < 10 * users, left  # was about 450 a user (a shell per spilled state)
    assert len(b) == users and b.rows == users
    b.close()


def test_the_floor_holds_spilled_users_offsets_until_they_are_applied(tmp_path) -> None:
    b = Backlog(work_dir=str(tmp_path))

    def none(tp):  # nothing on the per-event path
        return None

    for tp, off, uid in [(TP0, 0, "a"), (TP0, 1, "b"), (TP1, 0, "b"), (TP0, 2, "c")]:
        assert b.read(tp, off)
        b.fold(tp, off, [Identify(uid, {"x": off})], lambda h: None)
    b.spill()
    for tp, off, uid in [(TP0, 3, "d"), (TP1, 1, "a"), (TP0, 4, "b")]:
        assert b.read(tp, off)
        b.fold(tp, off, [Identify(uid, {"x": off})], lambda h: None)
    assert b.committable(none) == {TP0: 0, TP1: 0}
    handles = {
        h.user_id: b.handle(h) for h in b.take(2)
    }  # a and b read back, their memory folded in
    assert set(handles) == {"a", "b"}
    assert b.committable(none) == {TP0: 0, TP1: 0}  # owed in flight
    handles["b"].release()
    assert b.committable(none) == {TP0: 0, TP1: 1}  # a still owes TP0:0 and TP1:1
    handles["a"].release()
    assert b.committable(none) == {TP0: 2, TP1: 2}  # c on disk owes 2; d in memory 3
    [c] = b.take(1)
    assert c.user_id == "c"
    b.handle(c).release()
    assert b.committable(none) == {TP0: 3, TP1: 2}
    [d] = b.take(1)
    b.handle(d).release()
    assert b.committable(none) == {TP0: 5, TP1: 2} and len(b) == 0
    b.close()


def test_a_spill_moves_users_of_finished_partitions_first_and_stops_at_the_low_water_mark(
    tmp_path,
) -> None:
    b = Backlog(memory_bytes=40_000, work_dir=str(tmp_path))
    off = dict.fromkeys([TP0, TP1], 0)
    for i in range(100):  # interleaved: finished and unfinished users alike, oldest first
        for tp in (TP0, TP1):
            b.fold(tp, off[tp], [Identify(f"{tp[1]}-{i}", {"k": "x" * 20})], lambda h: None)
            off[tp] += 1
    assert b.over_budget()
    # Users of one size: what the estimate keeps is exact.
    keep = int(
        40_000 * LOW_WATER / (len(orjson.dumps({"k": "x" * 20})) * PY_PER_JSON_BYTE + PER_USER)
    )
    b.spill({TP0})  # partition 0 read to its end: its users go first, all of them
    assert b.rows == 200 - keep and len(b) == 200
    assert not b.over_budget()
    # In memory: the newest of partition 1 (its oldest went after all of partition 0).
    got = b.take_finished({TP0, TP1}, 1000)
    on_disk = [h.user_id for h in got[: 200 - keep]]
    assert on_disk == [f"0-{i}" for i in range(100)] + [f"1-{i}" for i in range(100 - keep)]
    assert sorted(h.user_id for h in got[200 - keep :]) == sorted(
        f"1-{i}" for i in range(100 - keep, 100)
    )
    b.close()


def test_the_budget_check_samples_the_users_size_every_few_checks_and_after_a_spill(
    tmp_path,
) -> None:
    b = Backlog(memory_bytes=1_000_000, work_dir=str(tmp_path))
    for u in range(100):
        b.fold(TP0, u, [Identify(f"u{u}", {"k": "x"})], lambda h: None)
    assert not b.over_budget()  # sampled: 100 small users
    for u in range(100):  # every user grows past the budget: the count alone does not say so
        b.fold(TP0, 100 + u, [Identify(f"u{u}", {"big": "x" * 20_000})], lambda h: None)
    assert [b.over_budget() for _ in range(RESAMPLE_EVERY)] == [False] * (RESAMPLE_EVERY - 1) + [
        True
    ]
    b.spill()
    assert b.rows and not b.over_budget()  # sampled again after the spill
    for u in range(100):
        b.fold(TP1, u, [Identify(f"v{u}", {"big": "x" * 20_000})], lambda h: None)
    assert b.over_budget()  # the average of a moment ago: as large
    b.close()


def test_users_on_disk_of_partitions_read_to_their_end_go_first_in_offset_order(tmp_path) -> None:
    b = Backlog(work_dir=str(tmp_path))
    for tp, off, uid in [(TP0, 0, "a"), (TP1, 0, "b"), (TP0, 1, "c"), (TP1, 1, "c"), (TP0, 2, "d")]:
        b.fold(tp, off, [Identify(uid, {"x": off})], lambda h: None)
    b.spill()
    for tp, off, uid in [(TP0, 3, "e"), (TP0, 4, "d"), (TP1, 2, "a")]:
        b.fold(tp, off, [Identify(uid, {"y": off})], lambda h: None)
    # Partition 0 read to its end: from disk a, then d with its state in memory since, then e
    # (in memory only). Not c (it owes partition 1), nor a's state in memory (partition 1's).
    got = b.take_finished({TP0}, 10)
    assert [(h.user_id, h.props) for h in got] == [
        ("a", {"x": 0}),
        ("d", {"x": 2, "y": 4}),
        ("e", {"y": 3}),
    ]
    assert b.take_finished({TP0}, 10) == []
    got = b.take_finished({TP0, TP1}, 10)
    assert [(h.user_id, h.props) for h in got] == [
        ("b", {"x": 0}),
        ("c", {"x": 1}),
        ("a", {"y": 2}),
    ]
    assert len(b) == 0
    b.close()


def test_the_users_waiting_in_finished_partitions_are_counted_until_handed_out() -> None:
    b = Backlog()
    for off in range(6):
        b.fold(TP0, off, [Identify(f"a{off}", {"x": off})], lambda h: None)
    for off in range(3):
        b.fold(TP1, off, [Identify(f"b{off}", {"x": off})], lambda h: None)
    assert b.waiting(set()) == 0
    assert b.waiting({TP0}) == 6 and b.waiting({TP0, TP1}) == 9
    assert len(b.take_finished({TP0}, 4)) == 4
    assert b.waiting({TP0}) == 2 and b.waiting({TP0, TP1}) == 5
    b.close()


def test_a_barrier_ejects_a_spilled_users_rows_then_its_memory(tmp_path) -> None:
    b = Backlog(work_dir=str(tmp_path))
    ejected: list[Held] = []
    b.fold(TP0, 0, [Identify("anon", {"a": 1})], ejected.append)
    b.fold(TP0, 1, [Identify("real", {"r": 1})], ejected.append)
    b.spill()
    b.fold(TP0, 2, [Identify("anon", {"b": 2})], ejected.append)
    merge: list[Op] = [Merge("real", "anon")]
    assert b.fold(TP0, 3, merge, ejected.append) == merge
    assert [(h.user_id, h.props) for h in ejected] == [
        ("real", {"r": 1}),
        ("anon", {"a": 1}),
        ("anon", {"b": 2}),
    ]
    assert b.rows == 0 and len(b) == 0
    # The ejected users hold the floor back until applied, like any held user.
    assert b.floor(TP0) == 0
    for h in ejected:
        b.handle(h).release()
    assert b.floor(TP0) is None
    b.close()


def test_users_of_finished_partitions_wait_packed_and_come_out_as_they_went_in(tmp_path) -> None:
    b = Backlog(work_dir=str(tmp_path), memory_bytes=150_000)
    events: list[dict[str, Any]] = []

    def fold(tp: Any, off: int, uid: str, traits: dict[str, Any]) -> None:
        assert b.fold(tp, off, [Identify(uid, traits)], lambda h: None) == []
        events.append(ident(uid, traits))

    for u in range(100):
        fold(
            TP0 if u < 90 else TP1,
            u,
            f"u{u}",
            {f"key{k}": f"value {k} of user {u}" for k in range(20)},
        )
        fold(TP0 if u < 90 else TP1, 100 + u, f"u{u}", {"o": {"a": u}})
    assert b.over_budget()  # 100 users as Python objects: about 2.7 KB each, estimated
    b.compact({TP0})
    packed = {h.user_id for h in b._users.values() if h.props.__class__ is bytes}
    assert packed == {f"u{u}" for u in range(90)}  # not those of the partition still read
    assert not b.over_budget()  # packed: their JSON, about 0.9 KB each
    # A later event of a packed user (a topic not keyed by user) folds into it, unpacked.
    fold(TP1, 300, "u3", {"o": {"b": 3}, "key1": None})
    assert b._users["u3"].props.__class__ is dict
    b.compact({TP0, TP1})
    for u in range(100, 160):
        fold(TP2, 300 + u, f"u{u}", {f"key{k}": f"value {k} of user {u}" for k in range(20)})
    assert b.over_budget()
    b.spill({TP0, TP1})  # finished users first: packed, they go to disk as they are
    assert b.rows and sum(h.props.__class__ is bytes for h in b._users.values()) < 100
    out = {h.user_id: h for h in b.take(200)}
    expected = expected_state(events)
    assert {uid: h.props for uid, h in out.items()} == expected and expected["u3"]["o"] == {
        "a": 3,
        "b": 3,
    }
    b.close()


def test_a_frozen_backlog_drops_its_spill_file(tmp_path) -> None:
    b = Backlog(work_dir=str(tmp_path))
    b.fold(TP0, 0, [Identify("u", {"a": 1})], lambda h: None)
    b.spill()
    b.freeze()
    assert len(b) == 0 and b.committable(lambda tp: None) == {}
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["deep", "either"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_spilling_folding_and_sending_equal_every_event_applied_alone(
    tmp_path, mode: str, seed: int
) -> None:
    # A topic keyed by user over 3 partitions, read in random chunks; spills at random (and
    # past a small budget; down to its low-water mark, users of partitions read to their end
    # first, or not), so a user has several rows, some of which do not fold; barriers (an
    # update that does not fold into the state in memory) after spills; users handed out at
    # random (of partitions read to their end, or any), applied at random. What Knock gets, in hand-out order, is the model of the events
    # one by one; the commit floor never passes an event not yet applied, and reaches the end.
    rng = random.Random(seed)
    parts = [TP0, TP1, TP2]
    users = [f"u{i}" for i in range(90)]
    events: dict[Any, list[tuple[str, dict[str, Any]]]] = {tp: [] for tp in parts}
    for i in range(3000):
        uid = rng.choice(users)
        # Mostly what folds in the mode (under "either" no object under a key already held).
        usual = {"z": i} if mode == "deep" else i
        value = (
            rng.choice([i, None, [i], {"a": i}, {"b": {"c": i}}]) if rng.random() < 0.1 else usual
        )
        events[parts[int(uid[1:]) % 3]].append((uid, {f"k{rng.randrange(6)}": i, "o": value}))
    b = Backlog(nested=mode, memory_bytes=10_000, work_dir=str(tmp_path))  # type: ignore[arg-type]
    read: list[dict[str, Any]] = []  # every event, in the order read
    knock: dict[str, dict[str, Any]] = {}
    # Per user, its folded events not yet handed out, oldest first: a handed-out state takes
    # as many as it folds (a user's states leave in order, or Knock's state shows it).
    unsent: dict[str, list[tuple[Any, int]]] = defaultdict(list)
    out: dict[int, tuple[HeldHandle, list[tuple[Any, int]]]] = {}
    cursor = dict.fromkeys(parts, 0)
    committed: dict[Any, int] = {}
    barriers_on_disk = 0

    def send(held: Held) -> None:
        assert held.props.__class__ is dict  # handed out unpacked
        knock[held.user_id] = deep_merge(knock.get(held.user_id, {}), held.props)
        owed, unsent[held.user_id] = (
            unsent[held.user_id][: held.events],
            unsent[held.user_id][held.events :],
        )
        assert len(owed) == held.events
        out[id(held)] = (b.handle(held), owed)

    def check_floor() -> None:
        owed = [e for _, events_ in out.values() for e in events_] + [
            e for es in unsent.values() for e in es
        ]
        positions = b.committable(lambda tp: None)
        b.mark_committed(positions)
        committed.update(positions)
        for tp in parts:
            low = min((off for t, off in owed if t == tp), default=cursor[tp])
            assert committed.get(tp, 0) <= low, (tp, committed.get(tp), low)

    while any(cursor[tp] < len(events[tp]) for tp in parts):
        tp = rng.choice(parts)
        for _ in range(rng.randrange(1, 60)):
            if cursor[tp] == len(events[tp]):
                break
            uid, traits = events[tp][cursor[tp]]
            off = cursor[tp]
            cursor[tp] += 1
            assert b.read(tp, off)
            read.append(ident(uid, traits))
            unsent[uid].append((tp, off))
            rows = b.rows
            rest = b.fold(tp, off, [Identify(uid, traits)], send)
            barriers_on_disk += bool(rest) and b.rows < rows
            for op in rest:
                # The per-event path: sent after the ejected state, in order; the tracker's
                # to hold, not the backlog's.
                knock[uid] = deep_merge(knock.get(uid, {}), op.props)  # type: ignore[union-attr]
                unsent[uid].pop()
        finished = {t for t in parts if cursor[t] == len(events[t])}
        if rng.random() < 0.5:
            b.compact(finished)
        if b.over_budget() or rng.random() < 0.1:
            b.spill(finished if rng.random() < 0.7 else set())
        r = rng.random()
        if r < 0.3:
            for held in b.take_finished(finished, rng.randrange(1, 20)):
                send(held)
        elif r < 0.4:
            for held in b.take(rng.randrange(1, 20)):
                send(held)
        for key in rng.sample(list(out), k=len(out) // 2):
            out.pop(key)[0].release()
        check_floor()
    assert b.spilled > 300  # 90 users, each spilled several times over
    assert barriers_on_disk > 5  # a barred user's rows read back and ejected before its event
    while len(b):
        for held in b.take(25):
            send(held)
        check_floor()
    for handle, _ in list(out.values()):
        handle.release()
    out.clear()
    assert knock == expected_state(read)
    assert not any(unsent.values())
    committed.update(b.committable(lambda tp: None))
    assert committed == {tp: len(events[tp]) for tp in parts}  # every offset applied
    b.close()


def test_the_floor_passes_offsets_never_delivered_up_to_the_position_never_a_held_user(
    tmp_path,
) -> None:
    # Offsets 1 and 3 of TP0 are transaction markers: never delivered, never read as records.
    b = Backlog(work_dir=str(tmp_path))

    def none(tp):
        return None  # nothing on the per-event path

    assert b.read(TP0, 0)
    b.fold(TP0, 0, [Identify("a", {"x": 0})], lambda h: None)
    b.read_to(TP0, 2)
    assert b.read(TP0, 2)  # the next record, past the marker: not a rewind
    b.fold(TP0, 2, [Identify("b", {"x": 2})], lambda h: None)
    b.read_to(TP0, 4)
    assert b.committable(none) == {TP0: 0}  # a, held, still owes offset 0
    for held in b.take(2):
        b.handle(held).release()
    assert b.committable(none) == {TP0: 4} and len(b) == 0
    b.mark_committed({TP0: 4})
    b.read_to(TP0, 3)  # a stale position takes nothing back
    assert b.committable(none) == {}
    b.freeze()
    b.read_to(TP0, 9)  # nor does a frozen backlog vouch for anything
    assert b.committable(none) == {}
