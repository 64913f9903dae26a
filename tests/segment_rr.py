"""A Segment-like topic written round robin, as the Kafka destination does without a message
key: record *i* on partition *i* mod 3, each event's ``timestamp`` 10 ms after the one produced
before it. Shared by the repartition and transactional-topic tests and the benchmark.

Events: identifies with changing (and nested) traits, tracks carrying ``context.traits``, some
stamped only with ``originalTimestamp``, aliases, duplicates (Segment's retry of a batch: the
same event, ``messageId`` and ``timestamp`` included, produced again right after it) and a
little poison (values that are not JSON).

An alias's ``previousId`` is a visitor no other event names: an alias is keyed by the user it
merges into, so in a topic keyed by user it is ordered against that user's events only
(docs/repartition.md, Aliases), and an exact outcome cannot ask more of it.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

START = datetime(2024, 3, 1, tzinfo=UTC)
POISON = b'{"type": "identify", "userId": '


def stamp(i: int) -> str:
    return (START + timedelta(milliseconds=10 * i)).isoformat(timespec="milliseconds")[:-6] + "Z"


def segment_events(n: int, users: int = 300, seed: int = 29) -> list[dict[str, Any] | bytes]:
    """``n`` records in production order (poison as bytes)."""
    rng = random.Random(seed)
    out: list[dict[str, Any] | bytes] = []
    i = 0
    seen: set[str] = set()
    while len(out) < n:
        roll = rng.random()
        u = f"u{rng.randrange(users)}"
        e: dict[str, Any]
        if roll < 0.004:
            out.append(POISON + str(i).encode())
            i += 1
            continue
        if roll < 0.02 and u in seen:  # merged into a user that exists
            e = {"type": "alias", "previousId": f"visitor{i}", "userId": u}
        elif roll < 0.25:
            e = {
                "type": "track",
                "userId": u,
                "event": "Clicked",
                "context": {"traits": {"last": i, "tracked": i}},
            }
        else:
            e = {
                "type": "identify",
                "userId": u,
                "traits": {
                    "last": i,
                    "plan": rng.choice(["free", "pro", "team"]),
                    f"k{i % 4}": i,
                    "prefs": {f"p{rng.randrange(3)}": i},
                },
            }
        seen.add(u)
        e["messageId"] = f"m{i}"
        e["originalTimestamp" if rng.random() < 0.05 else "timestamp"] = stamp(i)
        out.append(e)
        if rng.random() < 0.02 and len(out) < n:
            out.append(dict(e))  # a retried batch: the same event again, its stamp included
        i += 1
    return out


def events_of(records: list[dict[str, Any] | bytes]) -> list[dict[str, Any]]:
    """The decodable events, in production order."""
    return [r for r in records if isinstance(r, dict)]


def time_of(value: bytes) -> str | None:
    """The stamp a record is ordered by (``None`` for poison)."""
    try:
        e = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    stamp_: str = e.get("timestamp") or e["originalTimestamp"]
    return stamp_


def produce_round_robin(
    bootstrap: str,
    topic: str,
    records: list[dict[str, Any] | bytes],
    *,
    partitions: int = 3,
    start: int = 0,
    skip: set[int] | None = None,
    shift: int = 0,
) -> None:
    """Record *i* on partition *i* mod ``partitions``, without a key, in production order
    (``records`` from record ``start`` on; those falling on a partition in ``skip`` are left
    out, as if that partition's producer were away; ``shift``: partition numbers start there)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for i, r in enumerate(records, start):
        if skip and i % partitions in skip:
            continue
        value = r if isinstance(r, bytes) else orjson.dumps(r)
        p.produce(topic, value, partition=shift + i % partitions)
        p.poll(0)
    assert p.flush(30) == 0
