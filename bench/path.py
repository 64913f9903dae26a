"""The per-event path in-process: decode -> ``parse_event`` -> ``Actions.map``, no Kafka.

``python -m bench.path [--corpus main identify deep] [--events N] [--rounds R] [--profile]``
times the path the intake runs for each record (:meth:`consumer.intake.Intake.map`: the
topic's decode with the size check, :func:`~consumer.events.parse_event`,
:meth:`~consumer.actions.Actions.map`) over a fixed corpus of raw Kafka values, and prints
µs an event (the best of ``R`` rounds; the caches of phone numbers and dates are emptied
before each round, so every round sees each user's first number as a fresh process would).

Corpora (all deterministic):

* ``main``: the benchmark's main topic (:func:`bench.generate.events`, seed 7): 40 %
  identify with 10–30 traits, 55 % track with ``context.traits``, 5 % page, ~1.1 KB;
* ``identify``: only the identifies of the same stream (~1.3 KB, the identify-heavy backfill
  of issue 27);
* ``deep``: a deep history, ~100 events a user of ~580 B, 95 % tracks carrying
  ``context.traits`` (2–6 scalar traits) and 5 % small identifies.

``--digest`` prints a SHA-256 of every outcome (ops and notes in order, or the dead-letter
kind and reason): a change to the path must leave it as it was.

``--callgrind`` counts instructions instead of time, which is repeatable on cores shared
with other work: it runs this module twice per corpus under ``valgrind --tool=callgrind``
(``PYTHONHASHSEED=0``), once over the corpus and once with everything but the path (set-up,
corpus generation, the warm-up on the first 1,000 events), and prints the difference per
event; with ``--stages``, also up to the decode and up to ``parse_event``. ``--once``,
``--no-path`` and ``--upto`` are those children's flags.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from bench.generate import _LOCALES, _SCALAR, _TZ, _profile, events, user_id
from consumer import mapping
from consumer.actions import Actions
from consumer.avro import decoder_for
from consumer.config import Settings
from consumer.decode import SizeLimit
from consumer.errors import InvalidEvent
from consumer.events import parse_event
from consumer.mapping import Mapped
from consumer.records import Record

TOPIC = "segment-events"
CORPORA = ("main", "identify", "deep")
STEPS = ("decode", "parse", "map")
NOTHING = Mapped([], [])
_EVENTS = ["Order Completed", "Product Viewed", "Signed In", "Feature Used", "Report Exported"]


def deep_events(n: int, users: int, seed: int = 11) -> Iterator[tuple[bytes, bytes]]:
    """A deep history: ``n`` events over ``users`` (``n / users`` each), ~580 B a value."""
    rng = random.Random(seed)
    profiles: dict[int, dict[str, Any]] = {}
    base_ts = 1_790_000_000
    for i in range(n):
        u = int(rng.random() * users)
        profile = profiles.get(u)
        if profile is None:
            profile = profiles[u] = _profile(random.Random(seed * 1_000_003 + u), u)
        uid = user_id(u)
        ts = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base_ts + i // 50)) + f".{i % 1000:03d}Z"
        )
        k = _LOCALES.index(profile["locale"])
        context: dict[str, Any] = {
            "library": {"name": "analytics-node", "version": "2.1.2"},
            "ip": f"10.{u % 256}.{(u >> 8) % 256}.{i % 256}",
            "locale": _LOCALES[k],
            "timezone": _TZ[k],
        }
        msg: dict[str, Any] = {
            "messageId": f"node-{seed:x}-{i:010d}",
            "userId": uid,
            "anonymousId": f"anon-{u:07d}",
            "timestamp": ts,
            "originalTimestamp": ts,
            "sentAt": ts,
            "receivedAt": ts,
            "channel": "server",
            "version": 2,
        }
        if rng.random() < 0.05:
            msg["type"] = "identify"
            msg["traits"] = {
                "email": profile["email"],
                "phone": profile["phone"],
                "plan": profile["plan"],
                "last_seen_at": ts,
            }
        else:
            keys = rng.sample(_SCALAR, 2 + int(rng.random() * 5))
            context["traits"] = {key: profile[key] for key in keys}
            msg["type"] = "track"
            msg["event"] = _EVENTS[i % len(_EVENTS)]
            msg["properties"] = {
                "revenue": round(rng.random() * 300, 2),
                "sku": f"sku-{int(rng.random() * 10_000)}",
            }
        msg["context"] = context
        yield uid.encode(), orjson.dumps(msg)


def corpus(name: str, n: int) -> list[Record]:
    """``n`` records of corpus ``name`` (see the module docstring), offsets 0..n-1."""
    if name == "main":
        pairs = list(events(n, max(1, n // 10)))
    elif name == "identify":
        pairs = []
        source = events(n * 4, max(1, n // 10))  # 40 % are identifies: 4 n is enough
        for key, value in source:
            if b'"type":"identify"' in value:
                pairs.append((key, value))
                if len(pairs) == n:
                    break
    elif name == "deep":
        pairs = list(deep_events(n, max(1, n // 100)))
    else:
        raise ValueError(f"unknown corpus {name!r}")
    return [
        Record(TOPIC, 0, i, key, value, None, 1_790_000_000_000 + i)
        for i, (key, value) in enumerate(pairs)
    ]


def path_of(
    settings: Settings, upto: str = "map"
) -> Callable[[Record], tuple[Mapped, object, str]]:
    """The intake's per-record path (:meth:`consumer.intake.Intake.map`) with ``settings``;
    ``upto="decode"`` or ``"parse"`` stops after that step (for ``--callgrind --stages``)."""
    decoder = SizeLimit(decoder_for(settings.kafka), settings.kafka.max_message_bytes)
    actions = Actions(settings)
    actions.window(backfill=True)
    decoders: dict[str, Callable[[bytes | None], object]] = {}
    map_ = actions.map

    def one(rec: Record) -> tuple[Mapped, object, str]:
        value = rec.value
        if value is None and actions.tombstones:
            return actions.tombstone(rec.key), None, "tombstone"
        decode = decoders.get(rec.topic)
        if decode is None:
            decode = decoders[rec.topic] = decoder.for_topic(rec.topic)
        message = decode(value)
        if upto == "decode":
            return NOTHING, None, ""
        event = parse_event(message)
        if upto == "parse":
            return NOTHING, None, ""
        return map_(event, message, rec), event.raw_time, event.type  # type: ignore[arg-type]

    return one


def clear_caches() -> None:
    """Empty the mapping's caches, as in a fresh process."""
    for name in dir(mapping):
        cached = getattr(mapping, name)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def run_once(one: Callable[[Record], object], records: list[Record]) -> float:
    clear_caches()
    started = time.perf_counter()
    for rec in records:
        try:
            one(rec)
        except InvalidEvent:
            pass
    return time.perf_counter() - started


def stages(settings: Settings, records: list[Record], rounds: int) -> dict[str, float]:
    """µs an event of each step on its own (best of ``rounds``): the topic's decode, then
    ``parse_event`` of the decoded values, then ``Actions.map`` of the parsed events, then
    ``normalize_phone`` alone (cold, each distinct number of the corpus once)."""
    decoder = SizeLimit(decoder_for(settings.kafka), settings.kafka.max_message_bytes)
    decode = decoder.for_topic(TOPIC)
    actions = Actions(settings)
    actions.window(backfill=True)
    values = [r.value for r in records]
    messages = [decode(v) for v in values]
    events_ = [parse_event(m) for m in messages]
    triples = list(zip(events_, messages, records, strict=True))
    map_ = actions.map
    phones = []
    for m in messages:
        traits = m["traits"] if m.get("type") == "identify" else m["context"].get("traits", {})  # type: ignore[index, union-attr]
        if "phone" in traits:
            phones.append(traits["phone"])
    distinct = list(dict.fromkeys(phones))

    def timed(body: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(rounds):
            clear_caches()
            started = time.perf_counter()
            body()
            best = min(best, time.perf_counter() - started)
        return best / len(records) * 1e6

    normalize = mapping.normalize_phone

    # Each result dropped at once, as the path drops them (kept, they would make the
    # collector walk a growing heap: a cost the path does not have).
    def decoding() -> None:
        for v in values:
            decode(v)

    def parsing() -> None:
        for m in messages:
            parse_event(m)

    def mapping_() -> None:
        for e, m, r in triples:
            map_(e, m, r)

    def phoning() -> None:
        for p in distinct:
            normalize(p, "US")

    return {
        "decode": timed(decoding),
        "parse_event": timed(parsing),
        "map": timed(mapping_),
        "of which phones (cold)": timed(phoning),
    }


def digest(one: Callable[[Record], tuple[Mapped, object, str]], records: list[Record]) -> str:
    h = hashlib.sha256()
    clear_caches()
    for rec in records:
        try:
            mapped, stamp, kind = one(rec)
            h.update(repr((mapped.ops, mapped.notes, stamp, kind)).encode())
        except InvalidEvent as exc:
            h.update(repr((exc.kind, exc.reason)).encode())
    return h.hexdigest()


def settings_for(rules: bool) -> Settings:
    """Every default (the benchmark's backfill), or with a workflow rule on one track name
    (triggers in a backfill on), so the trigger path runs too."""
    kafka = {"topics": [TOPIC]}
    if not rules:
        return Settings(kafka=kafka)
    return Settings(
        kafka=kafka,
        workflows={
            "rules": [{"event": "Order Completed", "key": "order-completed"}],
            "backfill": True,
        },
    )


_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def _instructions(args: list[str]) -> int:
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "bench.path",
        *args,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    found = _COLLECTED.findall(done.stderr)
    if not found:
        raise RuntimeError(f"no callgrind total in: {done.stderr[-2000:]}")
    return int(found[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.path", description=__doc__)
    parser.add_argument("--corpus", nargs="+", choices=CORPORA, default=list(CORPORA))
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rules", action="store_true", help="one workflow rule, triggers on")
    parser.add_argument("--profile", action="store_true", help="pyinstrument, one round each")
    parser.add_argument("--digest", action="store_true")
    parser.add_argument("--stages", action="store_true", help="each step timed on its own")
    parser.add_argument("--callgrind", action="store_true", help="instructions per event")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-path", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--upto", choices=STEPS, default="map", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = settings_for(args.rules)
    extra = ["--rules"] if args.rules else []

    if args.callgrind:
        print(f"callgrind, {args.events} events, {platform.processor() or platform.machine()}")
        for name in args.corpus:
            base = ["--once", "--corpus", name, "--events", str(args.events), *extra]
            rest = _instructions([*base, "--no-path"])
            total = _instructions(base)
            line = f"{name:9} {(total - rest) / args.events:9,.0f} instructions/event"
            if args.stages:
                before, parts = rest, []
                for step in STEPS:
                    upto = total if step == "map" else _instructions([*base, "--upto", step])
                    parts.append(f"{step} {(upto - before) / args.events:,.0f}")
                    before = upto
                line += " (" + ", ".join(parts) + ")"
            print(line, flush=True)
        return 0

    for name in args.corpus:
        records = corpus(name, args.events)
        one = path_of(settings, args.upto)
        if args.once:
            # Both children warm up first, so the difference leaves out what happens once
            # a process (phonenumbers loads a region's metadata on first use, the re module
            # compiles its patterns): the same warm-up as the timed runs'.
            run_once(path_of(settings), records[:1000])
            if not args.no_path:
                run_once(one, records)
            continue
        size = sum(len(r.value or b"") for r in records) / len(records)
        if args.digest:
            print(f"{name:9} digest {digest(one, records)}")
        if args.stages:
            parts = stages(settings, records, args.rounds)
            print(f"{name:9} " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()) + " µs/event")
            continue
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
            run_once(one, records)
            profiler.stop()
            print(profiler.output_text(unicode=True, color=False, show_all=False))
            continue
        run_once(one, records[:1000])  # warm-up
        best = min(run_once(one, records) for _ in range(args.rounds))
        print(
            f"{name:9} {len(records)} events of {size:,.0f} B: "
            f"{best / len(records) * 1e6:6.2f} µs/event (best of {args.rounds})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
