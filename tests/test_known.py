"""Change detection's state (consumer.known): what is stripped is exactly what Knock would not
change, checked against an independent model of Knock's merge."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from consumer.known import PATH_BYTES, Confirmed, Forgotten, Known, entry_bytes, fingerprint


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def deep_merge(into: dict[str, Any], props: dict[str, Any]) -> None:
    for k, v in props.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            deep_merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def replace(into: dict[str, Any], props: dict[str, Any]) -> None:
    into.update(copy.deepcopy(props))


TP = ("t", 0)


class K(Known):
    """Partition ``TP`` unless told."""

    def strip(
        self, user: str, props: dict[str, Any], tp: Any = TP, earlier: Any = ()
    ) -> dict[str, Any]:
        return super().strip(user, props, tp, earlier)

    def confirm(self, user: str, sent: dict[str, Any], tp: Any = TP) -> None:
        super().confirm(user, sent, tp)


def known(nested: str = "deep", ttl: float = 60.0, max_bytes: int = 1 << 20) -> tuple[K, Clock]:
    clock = Clock()
    return K(ttl, max_bytes, nested, clock=clock), clock  # type: ignore[arg-type]


def test_nothing_known_sends_all() -> None:
    k, _ = known()
    props = {"email": "a@x", "plan": {"tier": 1}}
    assert k.strip("u", props) is props


def test_top_level_values_strip_when_confirmed() -> None:
    k, _ = known()
    k.confirm("u", {"email": "a@x", "name": "A", "n": 1})
    assert k.strip("u", {"email": "a@x", "name": "A", "n": 1}) == {}
    assert k.strip("u", {"email": "b@x", "name": "A", "n": 1.0}) == {"email": "b@x", "n": 1.0}
    assert k.strip("u", {"n": True}) == {"n": True}
    assert k.strip("u", {"name": None}) == {"name": None}
    assert k.strip("other", {"email": "a@x"}) == {"email": "a@x"}


def test_deep_compares_nested_objects_by_their_keys() -> None:
    k, _ = known("deep")
    k.confirm("u", {"address": {"city": "Paris", "zip": "75001", "geo": {"lat": 1}}})
    # A subset of what Knock holds: deep-merged, it changes nothing.
    assert k.strip("u", {"address": {"city": "Paris"}}) == {}
    assert k.strip("u", {"address": {"city": "Lyon", "zip": "75001"}}) == {
        "address": {"city": "Lyon"}
    }
    assert k.strip("u", {"address": {"geo": {"lat": 1, "lon": 2}}}) == {
        "address": {"geo": {"lon": 2}}
    }
    # An empty object merges into the one Knock has: nothing.
    assert k.strip("u", {"address": {}}) == {}
    # A value replacing the object is a change.
    assert k.strip("u", {"address": "gone"}) == {"address": "gone"}


def test_deep_value_then_object_then_value() -> None:
    k, _ = known("deep")
    k.confirm("u", {"a": 5})
    assert k.strip("u", {"a": {"b": 1}}) == {"a": {"b": 1}}
    k.confirm("u", {"a": {"b": 1}})
    assert k.strip("u", {"a": 5}) == {"a": 5}
    assert k.strip("u", {"a": {"b": 1}}) == {}
    k.confirm("u", {"a": 5})
    assert k.strip("u", {"a": {"b": 1}}) == {"a": {"b": 1}}
    assert k.strip("u", {"a": {}}) == {"a": {}}
    assert k.strip("u", {"a": 5}) == {}


def test_either_compares_top_level_values_whole() -> None:
    k, _ = known("either")
    k.confirm("u", {"address": {"city": "Paris", "zip": "75001"}})
    # Whether Knock replaced or merged, only the same object again is a no-op.
    assert k.strip("u", {"address": {"zip": "75001", "city": "Paris"}}) == {}
    assert k.strip("u", {"address": {"city": "Paris"}}) == {"address": {"city": "Paris"}}


def test_channel_data_and_preferences_compare_whole_under_deep() -> None:
    k, _ = known("deep")
    k.confirm("u", {"preferences": {"default": {"a": True, "b": False}}})
    assert k.strip("u", {"preferences": {"default": {"a": True}}}) == {
        "preferences": {"default": {"a": True}}
    }
    assert k.strip("u", {"preferences": {"default": {"b": False, "a": True}}}) == {}


def test_expiry_runs_from_the_first_confirmation() -> None:
    k, clock = known(ttl=60)
    k.confirm("u", {"email": "a@x"})
    clock.t += 30
    k.confirm("u", {"name": "A"})  # later updates do not keep the entry alive
    assert k.strip("u", {"email": "a@x", "name": "A"}) == {}
    clock.t += 30
    props = {"email": "a@x", "name": "A"}
    assert k.strip("u", props) is props
    assert len(k) == 1  # a plan's thread only reads: the loop drops it at its next look
    assert k.unchanged("u", props, TP) is False
    assert len(k) == 0


def test_eviction_only_causes_sends() -> None:
    # Room for the one shared path and two users of one leaf each.
    k, _ = known(max_bytes=PATH_BYTES + 2 * entry_bytes("a", 1))
    k.confirm("a", {"x": 1})
    k.confirm("b", {"x": 1})
    assert k.unchanged("a", {"x": 1}, TP)  # the cut's look: a used, b is the least recent
    k.confirm("c", {"x": 1})
    assert len(k) == 2
    assert k.strip("b", {"x": 1}) == {"x": 1}
    assert k.strip("a", {"x": 1}) == {} and k.strip("c", {"x": 1}) == {}
    assert k.memory_bytes == PATH_BYTES + 2 * entry_bytes("a", 1)
    # A user that grows past what is left pushes out the least recent ones, never itself.
    k.confirm("c", {"y": 2, "z": 3})
    assert len(k) == 1 and k.strip("c", {"x": 1, "y": 2, "z": 3}) == {}
    assert k.memory_bytes == 3 * PATH_BYTES + entry_bytes("c", 3)


def accounted(k: Known) -> int:
    """The estimate recomputed from the entries, independently of the running count."""
    users = k._users
    paths = k._paths
    return sum(entry_bytes(u, len(e.fps)) for u, e in users.items()) + PATH_BYTES * len(paths)


def test_the_running_estimate_matches_the_entries_after_any_sequence() -> None:
    rng = random.Random(5)
    k, clock = known(max_bytes=12_000)
    written: list[tuple[Any, str, bytes | None]] = []
    k.log = lambda tp, user, value: written.append((tp, user, value))
    users = [f"user-{i}" for i in range(40)]
    for _ in range(3_000):
        u, tp = rng.choice(users), ("t", rng.randrange(2))
        op = rng.random()
        if op < 0.6:
            props = {f"p{rng.randrange(8)}": rng.randrange(3) for _ in range(rng.randrange(1, 5))}
            if rng.random() < 0.3:
                props["o"] = {f"q{rng.randrange(3)}": {"r": rng.randrange(2)}}
            k.confirm(u, props, tp)
        elif op < 0.75:
            k.strip(u, {"p0": 1}, tp)
        elif op < 0.85:
            k.forget([u], tp)
        elif op < 0.9:
            k.forget_partitions([tp])
        elif op < 0.95:
            clock.t += rng.choice([1, 30])
        else:
            mine = [(user, v) for t, user, v in written if t == tp]
            k.load(tp, [mine[: len(mine) // 2], mine[len(mine) // 2 :]])
        assert k.memory_bytes == accounted(k)
        assert k.memory_bytes <= 12_000 or len(k) == 1


def test_the_estimate_is_near_what_the_allocator_counts() -> None:
    import tracemalloc

    for leaves, nested in ((1, False), (10, False), (10, True), (40, False)):
        k, _ = known(ttl=1e9, max_bytes=1 << 40)
        n = 2_000
        users = [f"user-{i:08d}" for i in range(n)]
        props = [
            {
                **{f"trait_{j}": f"value-{i}-{j}" for j in range(leaves)},
                **({"address": {"city": "Paris", "zip": str(i)}} if nested else {}),
            }
            for i in range(n)
        ]
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for u, p in zip(users, props, strict=True):
            k.confirm(u, p)
        traced = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        # Counted for the users' ids too, which the allocator counted before: a little over.
        assert 0.8 * traced <= k.memory_bytes <= 1.5 * traced, (
            leaves,
            nested,
            k.memory_bytes,
            traced,
        )


def test_a_restore_stays_within_the_bound_and_keeps_the_last_read() -> None:
    k, clock = known(max_bytes=PATH_BYTES + 3 * entry_bytes("u0", 1))
    records = [(f"u{i}", _record(clock.t, {"x": i})) for i in range(10)]
    assert k.load(TP, [records[:4], records[4:]]) == 3
    assert k.memory_bytes == PATH_BYTES + 3 * entry_bytes("u0", 1)
    assert [k.strip(f"u{i}", {"x": i}) for i in (6, 7, 8, 9)] == [{"x": 6}, {}, {}, {}]


def test_a_restore_trusts_no_user_known_from_two_partitions() -> None:
    k, clock = known()
    k.confirm("torn", {"x": 1}, ("t", 1))
    records = [
        ("a", _record(clock.t, {"x": 1})),
        ("torn", _record(clock.t, {"x": 5})),
        ("b", None),
        ("torn", _record(clock.t, {"x": 6})),  # a later record of it on this partition too
    ]
    assert k.load(TP, [records[:2], records[2:]]) == 1
    assert k.strip("torn", {"x": 6}) == {"x": 6}
    assert k.strip("torn", {"x": 1}, ("t", 1)) == {"x": 1}
    assert k.strip("a", {"x": 1}) == {}


def _record(since: float, props: dict[str, Any]) -> bytes:
    k, clock = known()
    clock.t = since
    out: list[bytes | None] = []
    k.log = lambda tp, user, value: out.append(value)
    k.confirm("any", props)
    assert out[-1] is not None
    return out[-1]


def test_forget_and_full() -> None:
    k, _ = known()
    k.confirm("a", {"x": 1})
    k.full = True
    assert k.strip("a", {"x": 1}) == {"x": 1}
    k.full = False
    k.forget(["a"])
    assert k.strip("a", {"x": 1}) == {"x": 1}


def test_values_json_cannot_hold_are_always_sent() -> None:
    k, _ = known()
    assert fingerprint(b"raw") is None
    k.confirm("u", {"blob": b"raw", "x": 1})
    assert k.strip("u", {"blob": b"raw", "x": 1}) == {"blob": b"raw"}


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth < 2 and r < 0.35:
        return {rng.choice("abc"): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 2))}
    return rng.choice([1, 2, "x", None, [1], True, 1.0])


@pytest.mark.parametrize("nested", ["deep", "either"])
def test_stripped_updates_leave_knock_as_the_full_ones(nested: str) -> None:
    """Random update sequences: Knock fed every update whole, and Knock fed only what the state
    let through (confirmed as it goes), end equal after every step; under ``either`` for both
    ways Knock may merge objects."""
    merges = [deep_merge] if nested == "deep" else [deep_merge, replace]
    rng = random.Random(7)
    stripped = 0
    for merge in merges:
        for _ in range(300):
            k, _ = known(nested)
            full: dict[str, Any] = {}
            sent: dict[str, Any] = {}
            for _ in range(8):
                props = {rng.choice("pqr"): _random_value(rng) for _ in range(rng.randint(1, 3))}
                body = k.strip("u", props)
                stripped += body != props
                merge(full, props)
                merge(sent, body)
                k.confirm("u", body)
                assert sent == full, (props, body)
    assert stripped > 100


def test_an_entry_serves_only_its_partition() -> None:
    k, _ = known()
    k.confirm("a", {"x": 1})
    k.confirm("b", {"x": 1}, ("t", 1))
    k.confirm("c", {"x": 1}, ("other", 0))
    # Events of several partitions, or of a partition no longer ours: sent, and not recorded.
    assert k.strip("a", {"x": 1}, None) == {"x": 1}
    k.confirm("d", {"x": 1}, None)
    assert k.strip("d", {"x": 1}) == {"x": 1}
    # The partition left this process: its next owner may change its users.
    k.forget_partitions([("t", 1)])
    assert k.strip("b", {"x": 1}, ("t", 1)) == {"x": 1}
    assert k.strip("a", {"x": 1}) == {}
    # A user met on a second partition of a topic: the topic is not keyed by user, and
    # nothing of it is stripped any more. A plan's thread only reads; the loop's look (the
    # cut's, or a confirmation) draws the conclusion.
    assert k.strip("a", {"x": 1}, ("t", 2)) == {"x": 1}
    assert k.unkeyed == set()
    assert k.unchanged("a", {"x": 1}, ("t", 2)) is False
    assert k.unkeyed == {"t"}
    k.confirm("a", {"x": 1})
    assert k.strip("a", {"x": 1}) == {"x": 1}
    assert k.strip("c", {"x": 1}, ("other", 0)) == {}


def test_the_loop_takes_in_a_plans_changes_in_order() -> None:
    k, _ = known()
    written: list[tuple[Any, str, bool]] = []
    k.log = lambda tp, user, value: written.append((tp, user, value is not None))
    k.confirm("m", {"x": 1})
    # A plan confirms a, then merges m into a (tombstones first, from the plan's thread), then
    # confirms a again.
    k.tombstones(("a", "m"), TP)
    assert written[1:] == [(TP, "a", False), (TP, "m", False)]
    assert k.strip("m", {"x": 1}) == {}  # the state changes when the loop takes the plan in
    k.settle(
        [
            Confirmed("a", {"x": 1}, TP),
            Forgotten(("a", "m"), TP, logged=True),
            Confirmed("a", {"y": 2}, TP),
        ]
    )
    # The first confirmation is left out: its record would follow a's tombstone. The logged
    # forget writes nothing again.
    assert written[3:] == [(TP, "a", True)]
    assert k.strip("a", {"x": 1, "y": 2}) == {"x": 1}
    assert k.strip("m", {"x": 1}) == {"x": 1}
    # A forget not logged ahead (a call whose fate is unknown) writes its tombstone then.
    k.settle([Forgotten(("a",), TP)])
    assert written[4:] == [(TP, "a", False)]


def test_a_plans_later_levels_compare_with_what_it_confirmed_before() -> None:
    k, _ = known()
    k.confirm("u", {"a": 1, "b": 1})
    earlier = [Confirmed("u", {"a": 2}, TP)]
    assert k.strip("u", {"a": 2, "b": 1}, TP, earlier) == {}
    assert k.strip("u", {"a": 1, "b": 1}, TP, earlier) == {"a": 1}
    assert k.strip("new", {"x": 1}, TP, [Confirmed("new", {"x": 1}, TP)]) == {}
    assert k.strip("u", {"b": 1}, TP, None) == {"b": 1}  # the plan forgot the user
    assert k.strip("u", {"a": 2}) == {"a": 2}  # the state is the loop's to change
    assert k.strip("u", {"a": 2}, TP, [Confirmed("u", {"a": 2}, ("t", 1))]) == {"a": 2}


def test_the_changelog_brings_back_what_was_confirmed_and_not_what_was_forgotten() -> None:
    k, clock = known()
    written: list[tuple[Any, str, bytes | None]] = []
    k.log = lambda tp, user, value: written.append((tp, user, value))
    k.confirm("a", {"x": 1, "o": {"p": 1}})
    k.confirm("a", {"y": 2})
    k.confirm("b", {"x": 1})
    k.confirm("c", {"x": 1}, ("t", 1))
    k.forget(["b"], TP)
    k.forget(["gone"], TP)  # not in memory (evicted): a tombstone all the same
    assert (TP, "gone", None) in written
    assert all(tp == ("t", 1) for tp, u, _ in written if u == "c")

    restored, _ = known()
    restored._clock = clock  # type: ignore[attr-defined]
    records = [(u, v) for tp, u, v in written if tp == TP]
    assert restored.load(TP, [records[:2], records[2:]]) == 1
    assert restored.strip("a", {"x": 1, "y": 2, "o": {"p": 1}}) == {}
    assert restored.strip("b", {"x": 1}) == {"x": 1}
    assert restored.strip("c", {"x": 1}, ("t", 1)) == {"x": 1}
    # Expired in the meantime: not taken in.
    clock.t += 60
    later, _ = known()
    later._clock = clock  # type: ignore[attr-defined]
    assert later.load(TP, [records]) == 0


def test_a_repeat_compared_whole_is_compared_again_once_the_user_changed() -> None:
    k, _ = known()
    k.confirm("u", {"a": 1, "o": {"p": 1}})
    assert k.strip("u", {"a": 1, "o": {"p": 1}}) == {}  # remembered as a whole
    assert k.strip("u", {"a": 1, "o": {"p": 1}}) == {}  # the one-hash path
    k.confirm("u", {"a": 2})
    assert k.strip("u", {"a": 1, "o": {"p": 1}}) == {"a": 1}
    assert k.strip("u", {"o": {"p": 1}, "a": 2}) == {}  # key order does not matter
