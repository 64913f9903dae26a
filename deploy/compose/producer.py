#!/usr/bin/env python3
"""Write a few hundred Segment-style events (identify, track, alias) to Kafka, then exit.

The sample producer of the compose stack (deploy/compose/compose.yaml). Events are keyed by
userId, so that every event of one user lands on one partition, in order. Only confluent-kafka
and the standard library are used: it runs in the knock-sink image.

Environment: KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092), KNOCK_SINK_TOPICS (the first
topic is written; default segment-events), PRODUCER_USERS (default 100), PRODUCER_SEED (7).
"""

from __future__ import annotations

import json
import os
import random
import sys
import uuid
from datetime import UTC, datetime, timedelta

from confluent_kafka import KafkaException, Producer

PLANS = ["free", "team", "business", "enterprise"]
EVENTS = ["Signed In", "Project Created", "Invite Sent", "Plan Upgraded", "Report Exported"]


def _ts(base: datetime, n: int) -> str:
    return (base + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")


def events(users: int, rng: random.Random) -> list[tuple[str, dict[str, object]]]:
    """(key, event) pairs: per user one identify, a few tracks with context.traits, a second
    identify; and for every tenth user an alias from an earlier anonymous-style id."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    out: list[tuple[str, dict[str, object]]] = []
    n = 0
    for i in range(users):
        user = f"user-{i:04d}"
        first, last = (
            rng.choice(["Ada", "Grace", "Alan", "Edsger"]),
            rng.choice(["Lovelace", "Hopper", "Turing"]),
        )
        if i % 10 == 0:
            n += 1
            out.append(
                (
                    user,
                    {
                        "type": "alias",
                        "previousId": f"legacy-{i:04d}",
                        "userId": user,
                        "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
                        "timestamp": _ts(base, n),
                    },
                )
            )
        n += 1
        out.append(
            (
                user,
                {
                    "type": "identify",
                    "userId": user,
                    "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
                    "timestamp": _ts(base, n),
                    "traits": {
                        "email": f"{user}@example.com",
                        "firstName": first,
                        "lastName": last,
                        "phone": f"+1 415 555 {i % 10000:04d}",
                        "plan": rng.choice(PLANS),
                        "createdAt": _ts(base, -86400 * (i + 1)),
                        "company": {"name": f"Company {i % 7}", "size": rng.randint(1, 500)},
                    },
                    "context": {"locale": "en-US", "timezone": "America/Los_Angeles"},
                },
            )
        )
        for _ in range(rng.randint(1, 3)):
            n += 1
            out.append(
                (
                    user,
                    {
                        "type": "track",
                        "userId": user,
                        "event": rng.choice(EVENTS),
                        "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
                        "timestamp": _ts(base, n),
                        "properties": {"source": "compose"},
                        "context": {"traits": {"last_seen_event": n, "plan": rng.choice(PLANS)}},
                    },
                )
            )
        n += 1
        out.append(
            (
                user,
                {
                    "type": "identify",
                    "userId": user,
                    "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
                    "timestamp": _ts(base, n),
                    "traits": {
                        "logins": rng.randint(1, 50),
                        "company": {"plan_seats": rng.randint(1, 20)},
                    },
                },
            )
        )
    return out


def main() -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    topic = os.environ.get("KNOCK_SINK_TOPICS", "segment-events").split(",")[0].strip()
    users = int(os.environ.get("PRODUCER_USERS", "100"))
    rng = random.Random(int(os.environ.get("PRODUCER_SEED", "7")))
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20}
    )
    failed: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    batch = events(users, rng)
    for key, event in batch:
        value = json.dumps(event, separators=(",", ":")).encode()
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.5)
        producer.poll(0)
    left = producer.flush(60)
    if left or failed:
        print(f"producer: {left} undelivered, {len(failed)} failed: {failed[:3]}", file=sys.stderr)
        return 1
    kinds: dict[str, int] = {}
    for _, event in batch:
        kinds[str(event["type"])] = kinds.get(str(event["type"]), 0) + 1
    print(
        json.dumps({"topic": topic, "users": users, "events": len(batch), "by_type": kinds}),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KafkaException as exc:
        print(f"producer: {exc}", file=sys.stderr)
        sys.exit(1)
