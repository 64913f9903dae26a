"""The measured side of each case, run in a child process of :mod:`bench.run` so that its CPU
time and peak RSS are its own: ``python -m bench.cases KIND --result FILE [options]``.

* ``ceiling``: a bare confluent-kafka loop that consumes ``--events`` messages and discards them
  (with ``--decode``, after ``orjson.loads`` of each value: the decode ceiling);
* ``naive``: consume, one ``PUT /v1/users/{id}`` per event with the official ``knockapi`` SDK,
  commit after each (synchronously), for ``--events`` events;
* ``live``: a steady producer of ``--rate`` identify events a second, each for a new user
  (``--prefix`` + a number; with ``--users K``, the same K users over and over) and stamped with its production time, for ``--seconds`` seconds
  (the ``live`` case of :mod:`bench.run`);
* ``product``: a product's stream of tracks at ``--rate`` a second over ``--users`` users, each
  carrying the user's traits, a ``--change`` share of them changed (the ``product`` case);
* ``sink``: ``knock-sink`` itself (``consumer.cli.main`` with the arguments after ``--``), with
  ``--profile FILE`` to record it with pyinstrument.

Each writes ``{"seconds", "events", "cpu_s", "rss_mb", ...}`` to ``--result``. ``seconds`` runs
from just before the Kafka consumer is created (imports done) to the last event handled.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import sys
import time
from typing import Any

import orjson
from confluent_kafka import Consumer

from consumer.source import CONSUMER_DEFAULTS


def peak_rss_mb(pid: int) -> float:
    """Peak RSS of ``pid`` since its exec (``VmHWM``). Not ``ru_maxrss``: Linux carries the
    parent's high-water mark over fork and exec into it, so every child of the benchmark (whose
    process holds the emulator and all its users) would report at least the parent's peak."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _consumer(bootstrap: str, group: str, topic: str) -> Consumer:
    # The sink's own consumer settings (consumer/source.py), minus the callbacks.
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            **CONSUMER_DEFAULTS,
        }
    )
    c.subscribe([topic])
    return c


def ceiling(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    c = _consumer(args.bootstrap, args.group, args.topic)
    n = nbytes = passes = 0
    decode = args.decode
    # The topic is read this fast that one pass is over in a second or two: read it again (a
    # fresh group each time) until the run lasts --min-seconds.
    while True:
        try:
            target = n + args.events
            while n < target:
                for msg in c.consume(1000, 0.5):
                    if msg.error() is None:
                        n += 1
                        value = msg.value()
                        nbytes += len(value)
                        if decode:
                            orjson.loads(value)
        finally:
            c.close()
        passes += 1
        if time.monotonic() - started >= args.min_seconds:
            break
        c = _consumer(args.bootstrap, f"{args.group}-{passes}", args.topic)
    return {"seconds": time.monotonic() - started, "events": n, "bytes": nbytes, "passes": passes}


_RESERVED = ("email", "name", "avatar", "locale", "timezone")
#: Names Knock reads as channel data and preference sets: a loop written against Knock learns
#: to leave such traits out (Knock answers 422 otherwise), as the sink does.
_STRUCTURES = ("preferences", "channel_data")


def naive(args: argparse.Namespace) -> dict[str, Any]:
    from knockapi import Knock

    started = time.monotonic()
    knock = Knock(api_key=os.environ["KNOCK_API_KEY"], base_url=args.base_url)
    c = _consumer(args.bootstrap, args.group, args.topic)
    n = calls = 0
    try:
        while n < args.events:
            msg = c.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            n += 1
            event = orjson.loads(msg.value())
            traits = event.get("traits") if event.get("type") == "identify" else None
            traits = traits or (event.get("context") or {}).get("traits")
            user = event.get("userId")
            if traits and user:
                reserved = {k: traits[k] for k in _RESERVED if k in traits}
                if "phone" in traits:
                    reserved["phone_number"] = traits["phone"]
                custom = {
                    k: v
                    for k, v in traits.items()
                    if k not in _RESERVED and k != "phone" and k not in _STRUCTURES
                }
                knock.users.update(user, **reserved, extra_body=custom)
                calls += 1
            c.commit(message=msg, asynchronous=False)
    finally:
        c.close()
    return {"seconds": time.monotonic() - started, "events": n, "calls": calls}


def live(args: argparse.Namespace) -> dict[str, Any]:
    import datetime as dt

    from confluent_kafka import Producer

    # Small linger: the benchmark measures produce -> applied, so the producer must not be
    # where the time goes.
    producer = Producer(
        {"bootstrap.servers": args.bootstrap, "linger.ms": 2, "enable.idempotence": True}
    )
    tick = 0.01
    started = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - started) < args.seconds:
        due = int(elapsed * args.rate) + 1
        while n < due:
            uid = f"{args.prefix}{n % args.users if args.users else n:07d}"
            now = dt.datetime.now(dt.UTC)
            stamp = now.isoformat(timespec="microseconds").replace("+00:00", "Z")
            # The stamp twice: as the event's timestamp, and as a trait that Knock stores, so
            # the benchmark reads each user's production time back beside its updated_at.
            event = {
                "type": "identify",
                "userId": uid,
                "messageId": f"m-{uid}",
                "timestamp": stamp,
                "traits": {
                    "email": f"{uid}@example.com",
                    "name": f"Live {n}",
                    "plan": "pro",
                    "produced_at": stamp,
                },
            }
            producer.produce(args.topic, orjson.dumps(event), uid.encode())
            n += 1
        producer.poll(0)
        time.sleep(max(0.0, started + (n / args.rate) - time.monotonic(), tick / 2))
    if producer.flush(30) != 0:
        raise RuntimeError("messages left unsent")
    return {"seconds": time.monotonic() - started, "events": n}


def product(args: argparse.Namespace) -> dict[str, Any]:
    """A product's event stream (issue 26): tracks at ``rate`` a second over ``users`` active
    users, each carrying the user's current traits in ``context.traits`` (as RudderStack's SDKs
    do), a ``change`` share of them changing one. Counts the changes that need sending (each
    user's first sighting, and each change) and returns each user's last version, against
    which the benchmark checks Knock's end state."""
    import datetime as dt
    import random

    from confluent_kafka import Producer

    rng = random.Random(args.seed)
    producer = Producer(
        {"bootstrap.servers": args.bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    version: dict[str, int] = {}
    changes = 0
    started = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - started) < args.seconds:
        due = int(elapsed * args.rate) + 1
        while n < due:
            uid = f"{args.prefix}{rng.randrange(args.users):07d}"
            v = version.get(uid)
            if v is None or rng.random() < args.change:
                v = version[uid] = 0 if v is None else v + 1
                changes += 1
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
            event = {
                "type": "track",
                "userId": uid,
                "event": "Viewed Page",
                "messageId": f"m-{n}",
                "timestamp": stamp.replace("+00:00", "Z"),
                "properties": {"path": f"/page/{n % 50}"},
                "context": {
                    "traits": {
                        "email": f"{uid}@example.com",
                        "name": f"User {uid}",
                        "plan": ("free", "pro", "team")[v % 3],
                        "version": v,
                        "company": "Acme",
                        "role": "engineer",
                        "locale": "en-GB",
                        "signup_source": "ads",
                    }
                },
            }
            producer.produce(args.topic, orjson.dumps(event), uid.encode())
            n += 1
        producer.poll(0)
        time.sleep(max(0.0, started + (n / args.rate) - time.monotonic(), 0.005))
    if producer.flush(30) != 0:
        raise RuntimeError("messages left unsent")
    return {
        "seconds": time.monotonic() - started,
        "events": n,
        "changes": changes,
        "versions": version,
    }


def sink(args: argparse.Namespace) -> dict[str, Any]:
    from consumer import cli

    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    out = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out):
        code = cli.main(args.rest)
    seconds = time.monotonic() - started
    if profiler is not None:
        profiler.stop()
        with open(args.profile, "w") as f:
            f.write(profiler.output_text(unicode=False, color=False, show_all=False))
        with open(args.profile + ".html", "w") as f:
            f.write(profiler.output_html())
    if code != 0:
        raise SystemExit(code)
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    return {"seconds": seconds, "events": summary["consumed"], "summary": summary}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["ceiling", "naive", "live", "product", "sink"])
    p.add_argument("--result", required=True)
    p.add_argument("--bootstrap")
    p.add_argument("--topic")
    p.add_argument("--group")
    p.add_argument("--events", type=int, default=0)
    p.add_argument("--base-url")
    p.add_argument("--profile")
    p.add_argument("--min-seconds", type=float, default=0.0)
    p.add_argument("--decode", action="store_true", help="ceiling: also orjson.loads every value")
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--prefix", default="live-")
    p.add_argument("--change", type=float, default=0.02, help="product: share of changing events")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--users", type=int, default=0, help="live: cycle over this many users (0: new ones)"
    )
    argv = sys.argv[1:]
    rest: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1 :]
    args = p.parse_args(argv)
    args.rest = rest
    kinds = {"ceiling": ceiling, "naive": naive, "live": live, "product": product, "sink": sink}
    result = kinds[args.kind](args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["rss_mb"] = peak_rss_mb(os.getpid())
    with open(args.result, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
