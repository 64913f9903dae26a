"""``knock-sink``: the command line.

Exit codes: 0 done (or stopped by SIGTERM/SIGINT after draining), 2 a bad setting (one line
naming it), 3 Knock rejected the configuration at run time (API key, base URL), 1 anything
unexpected.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .errors import ConfigError, FatalKnockError

EXIT_CONFIG = 2
EXIT_FATAL = 3

#: Flag dest -> dotted setting it overrides.
FLAG_SETTINGS = {
    "bootstrap_servers": "kafka.bootstrap_servers",
    "topics": "kafka.topics",
    "group_id": "kafka.group_id",
    "dlq_topic": "kafka.dlq_topic",
    "knock_base_url": "knock.base_url",
    "bulk_size": "knock.bulk_size",
    "rate_limits": "knock.rate_limits",
    "budget_share": "knock.budget_share",
    "nested_merge": "knock.nested_merge",
    "flush_interval": "sink.flush_interval",
    "max_pending": "sink.max_pending",
    "metrics_port": "sink.metrics_port",
    "log_level": "sink.log_level",
    "log_format": "sink.log_format",
    "anonymous": "mapping.anonymous",
    "default_region": "mapping.default_region",
}


def _kafka_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _timestamp(text: str) -> int:
    """ISO-8601 (UTC when it names no zone) -> milliseconds since the epoch."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _offsets(text: str) -> dict[tuple[str, int], int]:
    out = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        # Kafka topic names cannot hold ':', so the last two fields are the numbers.
        rest = item.rsplit(":", 2)
        if len(rest) != 3 or not rest[0] or not rest[1].isdigit() or not rest[2].isdigit():
            raise argparse.ArgumentTypeError(f"expected TOPIC:PARTITION:OFFSET, got {item!r}")
        out[(rest[0], int(rest[1]))] = int(rest[2])
    if not out:
        raise argparse.ArgumentTypeError("no TOPIC:PARTITION:OFFSET given")
    return out


def _add_sink_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file (see README)")
    p.add_argument("--topic", dest="topics", action="append", metavar="TOPIC",
                   help="topic to read (repeatable; env KNOCK_SINK_TOPICS, comma-separated)")
    p.add_argument("--bootstrap-servers", help="Kafka brokers (env KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--group-id", help="consumer group (env KNOCK_SINK_GROUP_ID; default knock-sink)")
    p.add_argument("--dlq-topic", help="dead-letter topic (env KNOCK_SINK_DLQ_TOPIC; default <topic>.dlq)")
    p.add_argument("--kafka-option", action="append", type=_kafka_option, default=[],
                   metavar="KEY=VALUE", help="librdkafka setting passed through (TLS, SASL...); repeatable")
    p.add_argument("--knock-base-url", help="Knock API (env KNOCK_BASE_URL; default https://api.knock.app)")
    p.add_argument("--bulk-size", type=int, help="users per bulk identify call (default 1000)")
    p.add_argument("--rate-limits", choices=["knock", "off"], help="pace requests to Knock's tiers (default knock)")
    p.add_argument("--budget-share", type=float, metavar="SHARE",
                   help="share (0-1] of Knock's rate limits this group uses (default all of it)")
    p.add_argument("--nested-merge", choices=["either", "deep"],
                   help="fold updates carrying objects under one key: only if Knock deep-merges them "
                   "(deep), or keep them apart, exact either way (either, the default)")
    p.add_argument("--flush-interval", type=float, help="seconds before a partial batch is sent (default 0.5)")
    p.add_argument("--max-pending", type=int, help="events buffered before fetching pauses")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--anonymous", choices=["skip", "anonymous_id"], help="events without userId")
    p.add_argument("--default-region", help="region for phone numbers without a country code (default US)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", choices=["auto", "json", "text"],
                   help="log lines as JSON objects or text (default auto: text on a terminal, else JSON)")


def build_parser() -> argparse.ArgumentParser:
    from .emulator import cli as emulator_cli

    parser = argparse.ArgumentParser(
        prog="knock-sink",
        description="Keep Knock users in sync with Segment-style events on Kafka. "
        "The API key is read from KNOCK_API_KEY only (never a flag, so it stays out of "
        "process lists and shell history).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="consume continuously (stop with SIGTERM/SIGINT: drains, commits, exits 0)")
    _add_sink_arguments(run)
    back = sub.add_parser(
        "backfill", help="replay topics and exit once everything up to their end is applied",
        description="Replay topics and exit 0 once every event up to the end offsets seen at start "
        "(or up to --until-timestamp) is applied and committed. Under Knock's rate limits it reads ahead (up to --max-pending "
        "events, folding each user's updates) before it sends, so each user is sent as few times "
        "as the window allows.")
    _add_sink_arguments(back)
    back.add_argument("--from-beginning", action="store_true",
                      help="rewind every partition to its first offset (else start from the backfill "
                      "group's commit: the earliest offset for a new group)")
    back.epilog = ("A backfill runs in a consumer group of its own, <group>-backfill-<UTC time>, unless "
                   "--group-id is given, so the live group's offsets are untouched.")
    start = back.add_mutually_exclusive_group()
    start.add_argument("--from-timestamp", type=_timestamp, metavar="ISO-8601",
                       help="start each partition at its first event at or after this time")
    start.add_argument("--from-offsets", type=_offsets, metavar="TOPIC:PARTITION:OFFSET,...",
                       help="start these partitions at these offsets (the others as without it)")
    stop = back.add_mutually_exclusive_group()
    stop.add_argument("--until-end", action="store_true", default=True,
                      help="stop at the end offsets seen at start (the default)")
    stop.add_argument("--until-timestamp", type=_timestamp, metavar="ISO-8601",
                      help="stop once every partition is applied up to its first event at or after this time")
    emu = sub.add_parser("emulator", help="serve a local Knock-compatible API")
    emulator_cli.add_arguments(emu)
    demo = sub.add_parser("demo", help="local broker + local Knock API + sample events + the sink, then print the users")
    demo.add_argument("--events", type=int, default=0, help="extra generated identify events (default 0)")
    return parser


def _settings(args: argparse.Namespace) -> Any:
    from .config import load_settings

    overrides = {dotted: getattr(args, dest, None) for dest, dotted in FLAG_SETTINGS.items()}
    if args.kafka_option:
        overrides["kafka.client"] = dict(args.kafka_option)
    return load_settings(args.config, overrides=overrides)


def _run_sink(args: argparse.Namespace, *, backfill: bool) -> int:
    from .logs import setup
    from .records import Replay
    from .sink import Sink

    settings = _settings(args)
    if backfill and not args.group_id:
        # A group of its own: the live group's commits stay where they are.
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        group = f"{settings.kafka.group_id}-backfill-{stamp}"
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"group_id": group})})
    setup(settings.sink.log_level, settings.sink.log_format, secrets=settings.secrets())
    sink = Sink(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sink.stop())
    replay = None
    if backfill and (args.from_timestamp is not None or args.from_offsets or args.until_timestamp is not None):
        replay = Replay(from_offsets=args.from_offsets, from_time_ms=args.from_timestamp,
                        until_time_ms=args.until_timestamp)  # fmt: skip
    progress = _progress(sink, settings) if backfill else None
    try:
        summary = sink.run(from_beginning=backfill and args.from_beginning, until_end=backfill,
                           replay=replay)  # fmt: skip
    except FatalKnockError as exc:
        print(f"knock-sink: stopped: {exc}", file=sys.stderr)
        return EXIT_FATAL
    finally:
        done = progress.close() if progress is not None else None
    out = summary.describe()
    if done is not None:
        out.update(group_id=settings.kafka.group_id, backfill=done)
    print(json.dumps(out, sort_keys=True))
    return 0


def _progress(sink: Any, settings: Any) -> Any:
    from .limits import per_second
    from .progress import Progress

    bound = None
    if settings.knock.rate_limits == "knock":
        bound = settings.knock.bulk_size * per_second("bulk_identify") * (settings.knock.budget_share or 1.0)
    return Progress(sink.metrics, sys.stderr, bulk_per_second=bound)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "emulator":
            from .emulator import cli as emulator_cli

            return emulator_cli.main(args)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(extra_events=args.events)
        return _run_sink(args, backfill=args.command == "backfill")
    except ConfigError as exc:
        print(f"knock-sink: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
