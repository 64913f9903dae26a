"""Deterministic Segment events of realistic size, and a fast producer.

Every user has a profile of 35 traits (scalars, a list, three nested objects). An event is

* ``identify`` (40 %): 10–30 of the user's traits, nested objects included, a few values
  changed from the profile (plan, seats, last_seen_at…);
* ``track`` (55 %): ``properties`` of its own and ``context.traits`` with 2–6 of the user's
  scalar traits;
* ``page`` (5 %): ``context`` without traits (the sink maps it to nothing).

Each message carries the usual Segment envelope (``messageId``, four timestamps, ``context``
with library, ip, userAgent, locale, page…), so a value is 0.6–2 KB, about 1.1 KB on average.
The same ``(n, users, seed)`` always gives the same bytes. Users are drawn uniformly, so with
``n = 10 × users`` each user has about ten events spread over the whole topic; messages are
keyed by ``userId`` (per-user order within a partition), as Segment's Kafka destination does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]
_CITIES = [
    ("Berlin", "DE", 52.52, 13.40),
    ("Paris", "FR", 48.85, 2.35),
    ("Austin", "US", 30.27, -97.74),
    ("Tokyo", "JP", 35.68, 139.69),
    ("Lagos", "NG", 6.52, 3.38),
    ("Lima", "PE", -12.05, -77.04),
]
_AREAS = [212, 310, 415, 512, 617, 646, 206, 303, 404, 312]
_TZ = [
    "Europe/Berlin",
    "Europe/Paris",
    "America/Chicago",
    "Asia/Tokyo",
    "Africa/Lagos",
    "America/Lima",
]
_LOCALES = ["de-DE", "fr-FR", "en-US", "ja-JP", "en-NG", "es-PE"]
_PLANS = ["free", "starter", "pro", "enterprise"]
_EVENTS = [
    "Order Completed",
    "Product Viewed",
    "Signed In",
    "Feature Used",
    "Invite Sent",
    "Subscription Renewed",
    "Report Exported",
    "Checkout Started",
]
_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148",
]
_LIBS = [
    {"name": "analytics-node", "version": "2.1.2"},
    {"name": "analytics.js", "version": "5.2.0"},
    {"name": "analytics-python", "version": "2.3.2"},
]
#: Profile keys an identify may send besides the always-present email.
_OPTIONAL = [
    "name",
    "firstName",
    "lastName",
    "phone",
    "avatar",
    "createdAt",
    "plan",
    "seats",
    "title",
    "industry",
    "employees",
    "website",
    "description",
    "age",
    "gender",
    "birthday",
    "username",
    "logins",
    "active",
    "score",
    "tags",
    "referrer",
    "timezone",
    "locale",
    "company",
    "address",
    "preferences",
    "utm_source",
    "utm_campaign",
    "mrr",
    "trial",
    "last_seen_at",
    "newsletter",
]
_SCALAR = [
    "email",
    "name",
    "plan",
    "seats",
    "title",
    "username",
    "logins",
    "active",
    "score",
    "mrr",
]


def user_id(n: int) -> str:
    return f"user-{n:07d}"


def _profile(rng: random.Random, n: int) -> dict[str, Any]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    city, country, lat, lon = rng.choice(_CITIES)
    k = rng.randrange(len(_TZ))
    return {
        "email": f"{first.lower()}.{last.lower()}.{n}@example.com",
        "name": f"{first} {last}",
        "firstName": first,
        "lastName": last,
        # One number per user (as in real data: each costs the sink one phonenumbers parse).
        "phone": f"({_AREAS[n % len(_AREAS)]}) {200 + (n // 10_000) % 700:03d}-{n % 10_000:04d}",
        "avatar": f"https://cdn.example.com/avatars/{n}.png",
        "createdAt": f"20{rng.randint(18, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T10:00:00Z",
        "plan": rng.choice(_PLANS),
        "seats": rng.randint(1, 500),
        "title": rng.choice(["Engineer", "CTO", "Designer", "PM", "Analyst"]),
        "industry": rng.choice(["SaaS", "Retail", "Fintech", "Health", "Media"]),
        "employees": rng.randint(5, 50_000),
        "website": f"https://company{n % 997}.example.com",
        "description": "Customer since the beta; " * rng.randint(1, 4),
        "age": rng.randint(18, 80),
        "gender": rng.choice(["f", "m", "x"]),
        "birthday": f"19{rng.randint(50, 99)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "username": f"{first.lower()}{n}",
        "logins": rng.randint(0, 5_000),
        "active": rng.random() < 0.8,
        "score": round(rng.random() * 100, 2),
        "tags": rng.sample(
            ["beta", "vip", "churn-risk", "admin", "partner", "edu"], rng.randint(0, 3)
        ),
        "referrer": rng.choice(["google", "newsletter", "friend", "ads", None]),
        "timezone": _TZ[k],
        "locale": _LOCALES[k],
        "company": {
            "id": f"c{n % 5_000}",
            "name": f"Company {n % 5_000}",
            "plan": rng.choice(_PLANS),
            "employee_count": rng.randint(5, 50_000),
        },
        "address": {
            "street": f"{rng.randint(1, 200)} Main St",
            "city": city,
            "country": country,
            "geo": {"lat": lat, "lon": lon},
        },
        "preferences": {
            "newsletter": rng.random() < 0.5,
            "digest": rng.choice(["daily", "weekly"]),
        },
        "utm_source": rng.choice(["newsletter", "twitter", "linkedin"]),
        "utm_campaign": f"spring-{rng.randint(1, 40)}",
        "mrr": rng.randint(0, 20_000),
        "trial": rng.random() < 0.2,
        "last_seen_at": "2026-11-01T00:00:00Z",
        "newsletter": rng.random() < 0.5,
    }


def events(n: int, users: int, seed: int = 7) -> Iterator[tuple[bytes, bytes]]:
    """``n`` (key, value) pairs: ``userId`` and the JSON message."""
    rng = random.Random(seed)
    # Precomputed key orders: an event takes a prefix of one (rng.sample per event is the
    # generator's main cost otherwise).
    orders = [rng.sample(_OPTIONAL, len(_OPTIONAL)) for _ in range(256)]
    scalar_orders = [rng.sample(_SCALAR, len(_SCALAR)) for _ in range(64)]
    rand = rng.random
    ts_cache: dict[int, str] = {}
    profiles: dict[int, dict[str, Any]] = {}
    dumps = orjson.dumps
    base_ts = 1_790_000_000
    for i in range(n):
        u = int(rand() * users)
        profile = profiles.get(u)
        if profile is None:
            profile = profiles[u] = _profile(random.Random(seed * 1_000_003 + u), u)
        uid = user_id(u)
        second = i // 50
        stamp = ts_cache.get(second)
        if stamp is None:
            ts_cache.clear()
            stamp = ts_cache[second] = time.strftime(
                "%Y-%m-%dT%H:%M:%S", time.gmtime(base_ts + second)
            )
        ts = f"{stamp}.{i % 1000:03d}Z"
        k = _LOCALES.index(profile["locale"])
        context: dict[str, Any] = {
            "library": _LIBS[u % 3],
            "ip": f"10.{u % 256}.{(u >> 8) % 256}.{i % 256}",
            "userAgent": _AGENTS[u % 3],
            "locale": _LOCALES[k],
            "timezone": _TZ[k],
            "page": {
                "path": "/app/dashboard",
                "url": "https://app.example.com/app/dashboard",
                "title": "Dashboard",
                "referrer": "",
            },
        }
        msg: dict[str, Any] = {
            "messageId": f"ajs-{seed:x}-{i:010d}",
            "userId": uid,
            "anonymousId": f"anon-{u:07d}",
            "timestamp": ts,
            "originalTimestamp": ts,
            "sentAt": ts,
            "receivedAt": ts,
            "channel": "server",
            "version": 2,
            "integrations": {},
        }
        r = rand()
        if r < 0.40:
            keys = orders[int(rand() * 256)][: 9 + int(rand() * 21)]
            traits = {"email": profile["email"]}
            for key in keys:
                traits[key] = profile[key]
            # A few values move over time.
            traits["last_seen_at"] = ts
            if "logins" in traits:
                traits["logins"] = profile["logins"] + i % 97
            if "plan" in traits and rand() < 0.1:
                traits["plan"] = rng.choice(_PLANS)
            msg["type"] = "identify"
            msg["traits"] = traits
        elif r < 0.95:
            order = scalar_orders[int(rand() * 64)][: 2 + int(rand() * 5)]
            context["traits"] = {key: profile[key] for key in order}
            msg["type"] = "track"
            msg["event"] = _EVENTS[i % len(_EVENTS)]
            msg["properties"] = {
                "revenue": round(rand() * 300, 2),
                "currency": "USD",
                "sku": f"sku-{int(rand() * 10_000)}",
                "quantity": 1 + i % 5,
            }
        else:
            msg["type"] = "page"
            msg["name"] = "Dashboard"
            msg["properties"] = {"path": "/app/dashboard"}
        msg["context"] = context
        yield uid.encode(), dumps(msg)


def ensure_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic not in admin.list_topics(timeout=10).topics:
        admin.create_topics([NewTopic(topic, partitions)])[topic].result(30)
    deadline = time.monotonic() + 30
    while topic not in admin.list_topics(timeout=10).topics:
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} did not appear")
        time.sleep(0.1)


def fill(
    bootstrap: str, topic: str, n: int, users: int, *, seed: int = 7, partitions: int = 4
) -> dict[str, Any]:
    """Create ``topic`` and produce ``events(n, users, seed)`` to it; returns sizes and time."""
    ensure_topic(bootstrap, topic, partitions)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            # In order and once per partition: the checks compare Knock with the events' model.
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )
    started = time.monotonic()
    total = 0
    produce, poll = producer.produce, producer.poll
    for i, (key, value) in enumerate(events(n, users, seed)):
        total += len(value)
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:
                poll(0.05)
        if i % 10_000 == 0:
            poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError(f"{topic}: messages left unsent")
    return {
        "topic": topic,
        "events": n,
        "users": users,
        "bytes": total,
        "avg_bytes": round(total / max(n, 1)),
        "seconds": round(time.monotonic() - started, 1),
    }


def fill_transactional(
    bootstrap: str,
    topic: str,
    n: int,
    users: int,
    *,
    seed: int = 7,
    partitions: int = 4,
    size: int = 100,
    abort_every: int = 10,
) -> dict[str, Any]:
    """Create ``topic`` and produce the same ``events(n, users, seed)`` as :func:`fill`, in
    transactions of ``size`` records, as an exactly-once producer writes them (``repartition``,
    Kafka Streams, Flink): every ``abort_every``-th transaction is first written and aborted,
    then written again and committed. A ``read_committed`` reader gets exactly the events of
    :func:`fill`; the topic also holds a commit or abort marker per transaction and partition,
    and the aborted copies, none of which is delivered."""
    import uuid

    ensure_topic(bootstrap, topic, partitions)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"bench-fill-{uuid.uuid4().hex}",
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    started = time.monotonic()
    total = aborted = transactions = 0
    chunk: list[tuple[bytes, bytes]] = []

    def write(records: list[tuple[bytes, bytes]], commit: bool) -> None:
        producer.begin_transaction()
        for key, value in records:
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.05)
        if not commit:
            # Delivered first: an abort racing the partitions' registration with the
            # coordinator can fail with INVALID_TXN_STATE (confluentinc/librdkafka#4849).
            producer.flush(60)
        (producer.commit_transaction if commit else producer.abort_transaction)(60)

    for key, value in events(n, users, seed):
        total += len(value)
        chunk.append((key, value))
        if len(chunk) == size:
            transactions += 1
            if transactions % abort_every == 0:
                write(chunk, False)
                aborted += len(chunk)
            write(chunk, True)
            chunk = []
    if chunk:
        write(chunk, True)
    return {
        "topic": topic,
        "events": n,
        "users": users,
        "bytes": total,
        "aborted": aborted,
        "transaction_size": size,
        "seconds": round(time.monotonic() - started, 1),
    }
