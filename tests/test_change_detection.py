"""Change detection end to end: the real broker, the local Knock API, exact end states, and
Knock's entry counts against an independent count of the changes that needed sending."""

from __future__ import annotations

import copy
import threading
from typing import Any

from consumer.metrics import total
from consumer.sink import Sink
from tests.conftest import wait_for
from tests.model import actual_state, deep_merge, expected_state

#: Change detection on: a day, the default (spelled out: these tests are about it).
ON = {"sink__known_ttl": 86_400.0}


class Live:
    """A sink running ``run`` on a thread; :meth:`settle` waits until it committed the topic's
    end (every event produced so far resolved)."""

    def __init__(self, kafka: Any, topic: str, settings: Any, **kw: Any) -> None:
        self.kafka, self.topic = kafka, topic
        self.sink = Sink(settings, **kw)
        self.result: dict[str, Any] = {}
        self.thread = threading.Thread(target=lambda: self.result.update(s=self.sink.run()))

    def __enter__(self) -> Live:
        self.thread.start()
        return self

    def settle(self) -> None:
        group = self.sink.settings.kafka.group_id
        wait_for(
            lambda: self.kafka.committed(group, self.topic) == self.kafka.end_offsets(self.topic),
            60,
            "everything committed",
        )

    def __exit__(self, *exc: Any) -> None:
        self.sink.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()


def track(user: str, traits: dict[str, Any], i: int) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": "Viewed",
        "messageId": f"{user}-{i}",
        "context": {"traits": traits},
    }


def waves_of_repeated_traits() -> list[list[dict[str, Any]]]:
    """Four waves over 12 users, each user's traits repeated 5 times per wave; some users change
    a trait (a nested one too) between waves."""
    traits = {
        f"u{n}": {"email": f"u{n}@x", "plan": "free", "address": {"city": "Paris", "n": n}}
        for n in range(12)
    }
    waves = []
    i = 0
    for w in range(4):
        if w:
            for n in range(0, 12, w + 1):
                t = traits[f"u{n}"]
                t["plan"] = f"plan-{w}"
                if n % 2:
                    t["address"] = {"city": f"city-{w}", "n": n}
        wave = []
        for _ in range(5):
            for user, t in traits.items():
                i += 1
                wave.append(track(user, copy.deepcopy(t), i))
        waves.append(wave)
    return waves


def changes_needed(waves: list[list[dict[str, Any]]]) -> int:
    """Each user's first sighting plus each wave that changes what Knock holds of it."""
    state: dict[str, dict[str, Any]] = {}
    changes = 0
    for wave in waves:
        touched: set[str] = set()
        for e in wave:
            user = e["userId"]
            new = deep_merge(state.get(user, {}), e["context"]["traits"])
            if user not in state or new != state[user]:
                touched.add(user)
            state[user] = new
        changes += len(touched)
    return changes


def test_repeated_traits_send_one_entry_per_change(kafka, api, settings_for):
    topic = kafka.topic(2)
    waves = waves_of_repeated_traits()
    sent: list[dict[str, Any]] = []
    with Live(kafka, topic, settings_for(topic, **ON)) as live:
        for wave in waves:
            kafka.produce(topic, wave)
            sent += wave
            live.settle()
            assert actual_state(api.users()) == expected_state(sent)
    assert api.stats()["identify_entries"] == changes_needed(waves) < 12 * 4
    metrics = live.sink.metrics
    assert total(metrics.consumed) == total(metrics.applied) == len(sent)
    assert total(metrics.unchanged) > 0


def test_without_change_detection_every_plan_sends(kafka, api, settings_for):
    topic = kafka.topic(1)
    waves = waves_of_repeated_traits()
    with Live(kafka, topic, settings_for(topic, sink__known_ttl=0)) as live:
        for wave in waves:
            kafka.produce(topic, wave)
            live.settle()
    assert api.stats()["identify_entries"] >= 12 * 4
    assert total(live.sink.metrics.unchanged) == 0


def test_a_topic_not_keyed_by_user_is_never_compared(kafka, api, settings_for):
    # Segment's round robin (no key) and a key that is another id: another member of the group
    # may write a user this process knows, so nothing is left out, whatever the default.
    waves = waves_of_repeated_traits()
    for key in (lambda e: None, lambda e: e["messageId"].encode()):
        topic = kafka.topic(2)
        before = api.stats()["identify_entries"]
        with Live(kafka, topic, settings_for(topic)) as live:
            for wave in waves:
                kafka.produce(topic, wave, key=key)
                live.settle()
        assert actual_state(api.users()) == expected_state([e for w in waves for e in w])
        assert total(live.sink.metrics.unchanged) == 0
        assert api.stats()["identify_entries"] - before >= 12 * 4
        assert topic in live.sink._dispatch.known.unkeyed


class Wall:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_a_user_deleted_behind_the_sinks_back_comes_back_after_the_expiry(kafka, api, settings_for):
    topic = kafka.topic(1)
    wall = Wall()
    traits = {"email": "d@x", "plan": "pro"}
    settings = settings_for(topic, sink__known_ttl=60)
    with Live(kafka, topic, settings, wall=wall) as live:
        kafka.produce(topic, [track("d", traits, 1), track("keep", {"a": 1}, 2)])
        live.settle()
        assert actual_state(api.users())["d"] == traits
        api._call("DELETE", "/v1/users/d", headers={"Authorization": f"Bearer {api.api_key}"})
        wait_for(lambda: "d" not in actual_state(api.users()), 30, "user deleted")
        # Within the expiry the sink believes Knock has it: what it assumes, by design.
        kafka.produce(topic, [track("d", traits, 3)])
        live.settle()
        assert "d" not in actual_state(api.users())
        assert total(live.sink.metrics.unchanged) == 1
        wall.t += 60
        kafka.produce(topic, [track("d", traits, 4)])
        live.settle()
        assert actual_state(api.users()) == {"d": traits, "keep": {"a": 1}}


def test_merges_and_rejections_forget_what_is_known(kafka, api, settings_for):
    topic = kafka.topic(1)
    sent = [
        {"type": "identify", "userId": "a", "traits": {"x": 1, "y": 1}},
        {"type": "identify", "userId": "b", "traits": {"x": 2}},
    ]
    with Live(kafka, topic, settings_for(topic, sink__item_attempts=1, **ON)) as live:
        kafka.produce(topic, sent)
        live.settle()
        # b merges into a (a's values win), then both are mentioned with what was known of
        # them before the merge: b was deleted by the merge and must be created again.
        more = [
            {"type": "alias", "previousId": "b", "userId": "a", "messageId": "m1"},
            {"type": "identify", "userId": "b", "traits": {"x": 2}},
            {"type": "identify", "userId": "a", "traits": {"x": 1, "y": 1}},
        ]
        kafka.produce(topic, more)
        sent += more
        live.settle()
        assert actual_state(api.users()) == expected_state(sent)
        # A user Knock rejects is forgotten: once it accepts again, it is sent whole.
        api.set_faults(failing_users=["a"])
        bad = [{"type": "identify", "userId": "a", "traits": {"x": 5}}]
        kafka.produce(topic, bad)
        live.settle()
        api.clear_faults()
        unchanged = total(live.sink.metrics.unchanged)
        entries = api.stats()["identify_entries"]
        # Knock still has it all, but the sink no longer knows: it sends.
        again = [{"type": "identify", "userId": "a", "traits": {"x": 1, "y": 1}}]
        kafka.produce(topic, again)
        sent += again
        live.settle()
        assert actual_state(api.users()) == expected_state(sent)
        assert total(live.sink.metrics.unchanged) == unchanged
        assert api.stats()["identify_entries"] == entries + 1


def test_a_restarted_sink_restores_what_knock_confirmed(kafka, api, settings_for):
    topic = kafka.topic(3)
    waves = waves_of_repeated_traits()
    settings = settings_for(topic, **ON)
    with Live(kafka, topic, settings) as live:
        kafka.produce(topic, waves[0])
        live.settle()
    entries = api.stats()["identify_entries"]
    assert entries == 12
    # A second sink of the group: the same traits again are not sent, a change is.
    with Live(kafka, topic, settings) as live:
        kafka.produce(topic, waves[0])
        live.settle()
        assert api.stats()["identify_entries"] == entries
        kafka.produce(topic, waves[1])
        live.settle()
    assert api.stats()["identify_entries"] == entries + changes_needed(waves[:2]) - 12
    assert actual_state(api.users()) == expected_state(waves[0] + waves[1])
    restored = live.sink.metrics.known_restore.collect()[0].samples
    assert any(s.name.endswith("_count") and s.value == 3 for s in restored)


def test_a_backfill_of_an_applied_topic_sends_nothing_and_full_sends_all(kafka, api, settings_for):
    topic = kafka.topic(2)
    events = [e for wave in waves_of_repeated_traits() for e in wave]
    kafka.produce(topic, events)
    settings = settings_for(topic, kafka__group_id=f"bf-{topic}", **ON)
    Sink(settings).run(from_beginning=True, until_end=True)
    assert actual_state(api.users()) == expected_state(events)
    first = api.stats()["identify_entries"]
    assert first == 12  # a backfill folds each user into one entry

    again = Sink(settings).run(from_beginning=True, until_end=True)
    assert api.stats()["identify_entries"] == first
    assert again.applied == len(events)

    Sink(settings).run(from_beginning=True, until_end=True, full=True)
    assert api.stats()["identify_entries"] == first + 12
    assert actual_state(api.users()) == expected_state(events)


def test_a_rebalance_hands_the_state_to_the_next_owner(kafka, api, settings_for):
    topic = kafka.topic(4)
    waves = waves_of_repeated_traits()
    settings = settings_for(topic, **ON)
    group = settings.kafka.group_id
    with Live(kafka, topic, settings) as first:
        kafka.produce(topic, waves[0])
        first.settle()
        entries = api.stats()["identify_entries"]
        assert entries == 12
        with Live(kafka, topic, settings) as second:
            # Each member ends with some of the partitions, restored from the changelog.
            wait_for(
                lambda: (
                    0 < len(second.sink.health.partitions) < 4
                    and len(first.sink.health.partitions) + len(second.sink.health.partitions) == 4
                ),
                60,
                "partitions shared",
            )
            kafka.produce(topic, waves[0])
            first.settle()
            assert api.stats()["identify_entries"] == entries
            kafka.produce(topic, waves[1])
            first.settle()
            assert kafka.committed(group, topic) == kafka.end_offsets(topic)
    assert api.stats()["identify_entries"] == entries + changes_needed(waves[:2]) - 12
    assert actual_state(api.users()) == expected_state(waves[0] + waves[1])
