"""The sink end to end, in-process, on the real broker and the local Knock API."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson
import pytest

from consumer.backfill import focus as backfill_focus
from consumer.fetch import FetchControl
from consumer.sink import Sink
from tests.conftest import wait_for
from tests.model import actual_state, expected_state


def backfill(settings: Any) -> Any:
    return Sink(settings).run(from_beginning=True, until_end=True)


@contextmanager
def running(sink: Sink, **run: Any) -> Iterator[dict[str, Any]]:
    """``sink.run(**run)`` on a thread for the ``with`` block, then stopped and joined; the
    dict yielded holds its ``summary`` once it returned."""
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(summary=sink.run(**run)))
    t.start()
    try:
        yield result
    finally:
        sink.stop()
        t.join(60)
    assert not t.is_alive()


def test_identify_maps_every_field(kafka, api, settings_for):
    topic = kafka.topic(1)
    kafka.produce(
        topic,
        [
            {
                "type": "identify",
                "userId": "ada",
                "version": 2,
                "timestamp": "2024-03-01T10:00:00.000+05:30",
                "traits": {
                    "email": "ada@example.com",
                    "firstName": "Ada",
                    "lastName": "Lovelace",
                    "phone": "(415) 555-0100",
                    "avatar": "https://example.com/ada.png",
                    "createdAt": "2024-03-01T09:30:00+01:00",
                    "timezone": "Europe/London",
                    "plan": "pro",
                    "company": {"name": "Engines", "size": 12},
                    "beta": None,
                },
                "context": {"locale": "en-GB", "timezone": "America/New_York"},
            }
        ],
    )
    summary = backfill(settings_for(topic))
    user = api.users()[0]
    assert datetime.fromisoformat(user.pop("created_at")) == datetime.fromisoformat(
        "2024-03-01T08:30:00+00:00"
    )
    assert actual_state([user]) == {
        "ada": {
            "email": "ada@example.com",
            "name": "Ada Lovelace",
            "phone_number": "+14155550100",
            "avatar": "https://example.com/ada.png",
            "locale": "en-GB",
            "timezone": "Europe/London",
            "firstName": "Ada",
            "lastName": "Lovelace",
            "plan": "pro",
            "company": {"name": "Engines", "size": 12},
            "beta": None,
        }
    }
    assert summary.applied == 1
    assert kafka.committed(f"g-{topic}", topic) == {0: 1}


def test_track_context_traits_and_skips(kafka, api, settings_for):
    topic = kafka.topic(1)
    kafka.produce(
        topic,
        [
            {
                "type": "track",
                "userId": "u1",
                "event": "Upgraded",
                "properties": {"plan": "x"},
                "context": {"traits": {"plan": "enterprise", "email": "u1@example.com"}},
            },
            {"type": "track", "userId": "u2", "event": "Clicked"},  # no traits: nothing to send
            {"type": "identify", "anonymousId": "anon-1", "traits": {"email": "a@example.com"}},
            {
                "type": "identify",
                "userId": "u3",
                "traits": {"phone": "not a number", "plan": "free"},
            },
        ],
    )
    summary = backfill(settings_for(topic))
    assert actual_state(api.users()) == {
        "u1": {"plan": "enterprise", "email": "u1@example.com"},
        "u3": {"plan": "free"},
    }
    assert dict(summary.notes) == {"no_traits": 1, "no_user_id": 1, "invalid_phone": 1}
    assert kafka.committed(f"g-{topic}", topic) == {0: 4}


def test_anonymous_id_mode(kafka, api, settings_for):
    topic = kafka.topic(1)
    kafka.produce(topic, [{"type": "identify", "anonymousId": "anon-1", "traits": {"plan": "x"}}])
    backfill(
        settings_for(topic, mapping__anonymous="anonymous_id", mapping__anonymous_prefix="anon:")
    )
    assert actual_state(api.users()) == {"anon:anon-1": {"plan": "x"}}


def test_coalesces_updates_of_one_user_into_one_entry(kafka, api, settings_for):
    topic = kafka.topic(1)
    events = [
        {"type": "identify", "userId": "u1", "traits": {"n": i, f"k{i % 3}": i}} for i in range(50)
    ]
    events += [
        {"type": "identify", "userId": "u1", "traits": {"prefs": {"a": 1, "b": 1}}},
        {"type": "identify", "userId": "u1", "traits": {"prefs": {"b": 2}}},  # nested: kept apart
        {"type": "identify", "userId": "u1", "traits": {"gone": None, "n": "last"}},
    ]
    kafka.produce(topic, events)
    # Pinned: the nested-object rule of mode "either" is what this counts.
    summary = backfill(settings_for(topic, knock__nested_merge="either", sink__flush_interval=2.0))
    assert actual_state(api.users()) == expected_state(events)
    assert api.users()[0]["prefs"] == {"a": 1, "b": 2}
    # 53 events, but u1 was sent only as often as the nested-object rule requires.
    assert api.stats()["identify_entries"] == summary.users_sent == 2
    assert summary.applied == 53


def test_alias_before_and_after_updates(kafka, api, settings_for):
    topic = kafka.topic(1)
    events = [
        {
            "type": "identify",
            "userId": "anon",
            "traits": {"email": "old@example.com", "seen": 1, "n": {"a": 1}},
        },
        {"type": "identify", "userId": "real", "traits": {"plan": "pro", "n": {"b": 2}}},
        {"type": "alias", "previousId": "anon", "userId": "real"},
        {"type": "identify", "userId": "real", "traits": {"email": "new@example.com"}},
        {"type": "identify", "userId": "anon", "traits": {"back": True}},
        # The merge target never identified: it is created for the merge.
        {"type": "identify", "userId": "visitor", "traits": {"utm": "ad"}},
        {"type": "alias", "previousId": "visitor", "userId": "fresh"},
    ]
    kafka.produce(topic, events)
    backfill(settings_for(topic))
    assert (
        actual_state(api.users())
        == expected_state(events)
        == {
            "real": {"email": "new@example.com", "seen": 1, "plan": "pro", "n": {"a": 1, "b": 2}},
            "anon": {"back": True},
            "fresh": {"utm": "ad"},
        }
    )


def test_replayed_alias_whose_previous_user_is_gone_succeeds(kafka, api, settings_for):
    topic = kafka.topic(1)
    events = [
        {"type": "identify", "userId": "old", "traits": {"a": 1}},
        {"type": "alias", "previousId": "old", "userId": "new"},
    ]
    kafka.produce(topic, events)
    backfill(settings_for(topic))
    # Replaying only the alias (the previous user is gone by now) must count as success.
    summary = backfill(settings_for(topic, kafka__group_id=f"again-{topic}"))
    assert actual_state(api.users()) == {"new": {"a": 1}}
    assert dict(summary.dead_lettered) == {}


def test_bad_input_goes_to_dead_letter_topic_with_headers(kafka, api, settings_for):
    topic = kafka.topic(1)
    kafka.produce(
        topic,
        [
            b"{not json",
            {"type": "identify", "userId": "ok-1", "traits": {"a": 1}},
            {"type": "identify", "userId": "a/b", "traits": {"a": 1}},
            {"type": "identify", "userId": "x" * 257, "traits": {}},
            {"type": "identify", "userId": "ok-2", "traits": ["not", "an", "object"]},
            {"type": "dance", "userId": "ok-3"},
            {"type": "identify", "userId": "ok-4", "traits": {"blob": "x" * 2000}},
        ],
        key=lambda v: b"k",
    )
    summary = backfill(settings_for(topic, kafka__max_message_bytes=1500))
    assert actual_state(api.users()) == {"ok-1": {"a": 1}}
    dead = kafka.read_all(f"{topic}.dlq", 6)
    got = [
        (
            dict(m.headers())["knock-sink.error.kind"].decode(),
            dict(m.headers())["knock-sink.source.offset"].decode(),
        )
        for m in dead
    ]
    assert got == [
        ("undecodable", "0"),
        ("forbidden_user_id", "2"),
        ("forbidden_user_id", "3"),
        ("invalid_event", "4"),
        ("invalid_event", "5"),
        ("oversize", "6"),
    ]
    first = dict(dead[0].headers())
    assert first["knock-sink.source.topic"].decode() == topic
    assert first["knock-sink.source.partition"].decode() == "0"
    assert b"invalid JSON" in first["knock-sink.error.reason"]
    assert dead[0].value() == b"{not json" and dead[0].key() == b"k"
    assert b"traits" in dict(dead[3].headers())["knock-sink.error.reason"]
    assert dict(summary.dead_lettered) == {
        "undecodable": 1,
        "forbidden_user_id": 2,
        "invalid_event": 2,
        "oversize": 1,
    }
    assert kafka.committed(f"g-{topic}", topic) == {0: 7}


def test_knock_rejected_item_is_dead_lettered_after_retries(kafka, api, settings_for):
    topic = kafka.topic(1)
    api.set_faults(failing_users=["bad"])
    kafka.produce(
        topic,
        [
            {"type": "identify", "userId": "good", "traits": {"a": 1}},
            {"type": "identify", "userId": "bad", "traits": {"a": 1}},
            {"type": "identify", "userId": "good", "traits": {"b": 2}},
        ],
    )
    summary = backfill(settings_for(topic, sink__item_attempts=2))
    assert actual_state(api.users()) == {"good": {"a": 1, "b": 2}}
    dead = kafka.read_all(f"{topic}.dlq", 1)
    assert [dict(m.headers())["knock-sink.error.kind"] for m in dead] == [b"knock_rejected"]
    assert dict(summary.dead_lettered) == {"knock_rejected": 1}
    assert kafka.committed(f"g-{topic}", topic) == {0: 3}


def test_a_rejected_users_later_updates_get_one_attempt_each(kafka, api, settings_for):
    # Found by the chaos suite: each later update of a user Knock keeps rejecting started a
    # fresh backoff series, so the partition's commits waited (its updates) x (the series).
    topic = kafka.topic(1)
    api.set_faults(failing_users=["bad"])
    # An object under the same key in each: never folded in mode "either", four sequential
    # updates.
    events = [{"type": "identify", "userId": "bad", "traits": {"o": {"i": i}}} for i in range(4)]
    events.append({"type": "identify", "userId": "good", "traits": {"a": 1}})
    kafka.produce(topic, events)
    summary = backfill(settings_for(topic, knock__nested_merge="either", sink__item_attempts=3))
    assert dict(summary.dead_lettered) == {"knock_rejected": 4}
    # Three attempts for the first update, then one for each later one.
    assert api.stats(by_user=True)["identify_entries_by_user"]["bad"] == 3 + 3
    assert actual_state(api.users()) == {"good": {"a": 1}}
    assert kafka.committed(f"g-{topic}", topic) == {0: 5}


def test_live_run_applies_new_events_and_stops_on_request(kafka, api, settings_for):
    topic = kafka.topic(3)
    with running(Sink(settings_for(topic))) as result:
        events = [
            {"type": "identify", "userId": f"u{i % 7}", "traits": {"i": i}} for i in range(200)
        ]
        kafka.produce(topic, events)
        wait_for(lambda: actual_state(api.users()) == expected_state(events), 60, "users applied")
        more = [{"type": "identify", "userId": "late", "traits": {"x": 1}}]
        kafka.produce(topic, more)
        wait_for(lambda: "late" in actual_state(api.users()), 60, "late event")
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)
    assert result["summary"].consumed == 201


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_api_key_is_a_config_error(kafka, api, settings_for, status):
    from consumer.errors import ConfigError

    topic = kafka.topic(1)
    if status == 401:  # a key of no environment
        settings = settings_for(topic, knock__api_key="sk_wrong_key")
    else:  # a key Knock knows but refuses (every answer a 403)
        settings = settings_for(topic)
        api.set_faults(error_rate=1.0, error_statuses=[403])
    with pytest.raises(ConfigError) as err:
        Sink(settings).run()
    assert "knock.api_key" in str(err.value) and f"HTTP {status}" in str(err.value)
    assert "sk_wrong_key" not in str(err.value) and api.api_key not in str(err.value)


def test_summary_is_json_friendly(kafka, api, settings_for):
    topic = kafka.topic(1)
    kafka.produce(topic, [{"type": "identify", "userId": "u", "traits": {}}])
    out = backfill(settings_for(topic)).describe()
    assert orjson.loads(orjson.dumps(out))["committed"] == {f"{topic}[0]": 1}


def test_deep_nested_merge_folds_objects_into_one_entry(kafka, api, settings_for):
    topic = kafka.topic(1)
    events = [
        {"type": "identify", "userId": "u1", "traits": {"prefs": {f"k{i}": i}, "n": i}}
        for i in range(20)
    ]
    kafka.produce(topic, events)
    summary = backfill(settings_for(topic, sink__flush_interval=2.0))  # deep: the default
    assert actual_state(api.users()) == expected_state(events)
    assert api.stats()["identify_entries"] == summary.users_sent == 1


def test_a_user_knock_rejects_with_422_is_dead_lettered_with_knocks_body(kafka, api, settings_for):
    # Knock refuses the whole bulk call for one bad user: the sink finds it by sending each
    # user alone, dead-letters it with Knock's error body, and applies the others.
    topic = kafka.topic(1)
    events = [
        {"type": "identify", "userId": "good", "traits": {"email": "good@example.com"}},
        {"type": "identify", "userId": "bad", "traits": {"email": 12345}},
        {"type": "identify", "userId": "also-good", "traits": {"plan": "pro"}},
    ]
    kafka.produce(topic, events)
    summary = backfill(settings_for(topic))
    assert actual_state(api.users()) == {
        "good": {"email": "good@example.com"},
        "also-good": {"plan": "pro"},
    }
    [dead] = kafka.read_all(f"{topic}.dlq", 1)
    # The sink let go of the message after mapping it: this is the original, read back.
    assert (dead.key(), dead.value()) == (b"bad", orjson.dumps(events[1]))
    headers = dict(dead.headers())
    assert headers["knock-sink.error.kind"] == b"knock_rejected"
    assert headers["knock-sink.source.offset"] == b"1"
    reason = headers["knock-sink.error.reason"].decode()
    assert "422" in reason and '"code":"invalid_params"' in reason and "email" in reason
    assert api.api_key not in reason
    assert dict(summary.dead_lettered) == {"knock_rejected": 1}
    assert kafka.committed(f"g-{topic}", topic) == {0: 3}


def test_a_backfill_under_knocks_limits_reads_ahead_and_sends_each_user_once(
    kafka, api, settings_for
):
    # Under Knock's limits the bulk budget bounds a backfill: the sink reads the backlog (folding
    # each user's events as they arrive) before its first send, so each user goes out once.
    topic = kafka.topic(3)
    events = [
        {"type": "identify", "userId": f"u{i % 40}", "traits": {"n": i, f"k{i % 7}": i}}
        for i in range(400)
    ]
    kafka.produce(topic, events)  # keyed by user: one user's events are ordered
    summary = backfill(
        settings_for(
            topic, knock__rate_limits="knock", kafka__consume_batch=10, sink__flush_interval=1.0
        )
    )
    assert actual_state(api.users()) == expected_state(events)
    assert api.stats()["identify_entries"] == summary.users_sent == 40
    assert summary.applied == 400
    assert sum(kafka.committed(f"g-{topic}", topic).values()) == 400


def test_reading_ahead_pauses_while_more_is_ready_to_send_than_the_rest_takes_to_read(
    kafka, api, settings_for, monkeypatch
):
    # Partition 0 has fewer events left, so it is read first; its 3,000 users take Knock about
    # 2.8 s, reading partition 1's 13,000 events (1,000 users) a fraction of it: fetching pauses
    # (no partition kept), then reads partition 1 and each user goes once.
    monkeypatch.setattr(backfill_focus, "AHEAD_MARGIN", 0.0)
    monkeypatch.setattr(backfill_focus, "RATE_WINDOW", 0.5)  # a rate after 0.1 s of fetching
    kept: list[set | None] = []
    only = FetchControl.only
    monkeypatch.setattr(
        FetchControl,
        "only",
        lambda self, reason, keep: kept.append(keep) or only(self, reason, keep),
    )
    topic = kafka.topic(2)
    sizes = {0: (3000, 12_000), 1: (1000, 13_000)}  # users, events: a rate before partition 0 ends
    events = {
        p: [
            {"type": "identify", "userId": f"p{p}-u{i % n}", "traits": {"n": i, "p": {"i": i}}}
            for i in range(m)
        ]
        for p, (n, m) in sizes.items()
    }
    for p, evs in events.items():
        kafka.produce(topic, evs, partition=p)
    summary = backfill(settings_for(topic, knock__rate_limits="knock"))
    assert actual_state(api.users()) == expected_state(events[0] + events[1])
    assert api.stats()["identify_entries"] == summary.users_sent == 4000
    assert kafka.committed(f"g-{topic}", topic) == {0: 12_000, 1: 13_000}
    focused = [k for i, k in enumerate(kept) if i == 0 or k != kept[i - 1]]
    i = focused.index(set())
    assert focused[i - 1 : i + 2] == [{(topic, 0)}, set(), {(topic, 1)}]


def test_a_user_knock_rejects_everywhere_is_dead_lettered_whole_under_knocks_pacing(
    kafka, api, settings_for
):
    # Found by the house issue: the emulator's failing users failed only inside bulk calls, so
    # the single identifies that take a bulk call's overflow (and users inside the entity gap)
    # applied some of their events. Here 1,100 users overflow one bulk call, and the rejected
    # user's updates never fold (an object under one key each time, nested_merge either).
    topic = kafka.topic(1)
    api.set_faults(failing_users=["bad"])
    events = [{"type": "identify", "userId": f"u{i}", "traits": {"i": i}} for i in range(1100)]
    for n in range(6):
        events.insert(n * 150, {"type": "identify", "userId": "bad", "traits": {"o": {"n": n}}})
    kafka.produce(topic, events)
    summary = backfill(
        settings_for(
            topic, knock__rate_limits="knock", knock__nested_merge="either", sink__item_attempts=2
        )
    )
    good = [e for e in events if e["userId"] != "bad"]
    assert actual_state(api.users()) == expected_state(good)
    assert "bad" not in actual_state(api.users())
    dead = kafka.read_all(f"{topic}.dlq", 6)
    assert sorted(int(dict(m.headers())["knock-sink.source.offset"]) for m in dead) == [
        i for i, e in enumerate(events) if e["userId"] == "bad"
    ]
    assert {m.value() for m in dead} == {orjson.dumps(e) for e in events if e["userId"] == "bad"}
    assert summary.dead_lettered == {"knock_rejected": 6}
    assert kafka.committed(f"g-{topic}", topic) == {0: len(events)}
    # Whether the rejected user's updates went through bulk or single identify (the overflow)
    # depends on timing; the emulator's own tests hold that every upserting route refuses it
    # (tests/emulator/test_users.py). Here Knock refused that user, and no other, on those
    # routes only, each of its 6 updates at least once (they never fold into one), while bulk
    # and single identifies both left:
    stats = api.stats()
    refused = stats["refused"]
    assert set(refused) <= {"POST /v1/users/bulk/identify", "PUT /v1/users/{user_id}"}
    assert {user for users in refused.values() for user in users} == {"bad"}
    assert sum(users["bad"] for users in refused.values()) >= 6
    routes = stats["requests"]
    assert routes["POST /v1/users/bulk/identify"] and routes["PUT /v1/users/{user_id}"]


def test_a_live_run_behind_by_a_backlog_folds_it_and_sends_each_user_once(kafka, api, settings_for):
    # `run` starting behind (a new group from the earliest offset): each partition's users are
    # held and folded until it is read to where it ended, then sent, each once; the events that
    # come after go out live.
    topic = kafka.topic(3)
    events = [
        {"type": "identify", "userId": f"u{i % 40}", "traits": {"n": i, f"k{i % 7}": i}}
        for i in range(1_200)
    ]
    kafka.produce(topic, events)
    sink = Sink(
        settings_for(
            topic,
            knock__rate_limits="knock",
            kafka__consume_batch=10,
            sink__catch_up_lag=100,
            sink__known_ttl=0,  # every update counts: nothing skipped as unchanged
        )
    )
    with running(sink, from_beginning=True) as result:
        ends = kafka.end_offsets(topic)
        wait_for(lambda: kafka.committed(f"g-{topic}", topic) == ends, 60, "the backlog committed")
        assert actual_state(api.users()) == expected_state(events)
        assert api.stats()["identify_entries"] == 40
        live = [{"type": "identify", "userId": "late", "traits": {"x": 1}}]
        kafka.produce(topic, live)
        wait_for(lambda: "late" in actual_state(api.users()), 60, "a live event after it")
    assert api.stats()["identify_entries"] == 41
    assert result["summary"].consumed == 1_201
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)
