"""``knock-sink``: the command line.

Exit codes: 0 done (or stopped by SIGTERM/SIGINT after draining), 2 a bad setting (one line
naming it), 3 Knock (API key, base URL) or the schema registry (credentials) rejected the
configuration at run time, 4 a backfill that stopped on its own before its end (a partition
moved to another consumer, or the consumer went back): what it committed stands, run it again
to resume, 1 anything unexpected. ``validate`` and ``backfill --dry-run``: 0
every message maps, 1 some would be dead-lettered, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, FatalKnockError, FatalRegistryError
from .records import Worker

EXIT_CONFIG = 2
EXIT_FATAL = 3
EXIT_INCOMPLETE = 4

if TYPE_CHECKING:
    #: The parser's subcommands (argparse has no public name for their type).
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

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
    "catch_up_lag": "sink.catch_up_lag",
    "lateness": "sink.lateness",
    "metrics_port": "sink.metrics_port",
    "backfill_memory_mb": "sink.backfill_memory_mb",
    "work_dir": "sink.work_dir",
    "log_level": "sink.log_level",
    "log_format": "sink.log_format",
    "anonymous": "mapping.anonymous",
    "default_region": "mapping.default_region",
    "trigger_workflows": "workflows.backfill",
    "trigger_since": "workflows.since",
    "schema_registry_url": "kafka.schema_registry_url",
    "format": "kafka.format",
    "avro_schema_file": "kafka.avro_schema_file",
    "schema_registry_ca": "kafka.schema_registry_ca",
    "schema_registry_cert": "kafka.schema_registry_cert",
    "schema_registry_key": "kafka.schema_registry_key",
}
#: Repeatable ``KEY=VALUE`` flag dest -> the dotted table setting its pairs fill.
PAIR_FLAG_SETTINGS = {"kafka_option": "kafka.client", "topic_format": "kafka.formats"}
#: The value formats of ``--format`` and ``--topic-format`` (``consumer.config.Format``).
FORMATS = ["auto", "json", "avro", "avro-plain"]


def _kafka_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _topic_format(text: str) -> tuple[str, str]:
    topic, value = _kafka_option(text)
    if value not in FORMATS:
        raise argparse.ArgumentTypeError(
            f"format must be one of {', '.join(FORMATS)}, got {value!r}"
        )
    return topic, value


def _add_format_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--schema-registry-url",
        help="Confluent-compatible Schema Registry (env "
        "SCHEMA_REGISTRY_URL; its user:password only in env SCHEMA_REGISTRY_BASIC_AUTH)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="how values are read (default auto: "
        "Confluent Avro when the first byte is 0, JSON otherwise)",
    )
    p.add_argument(
        "--topic-format",
        action="append",
        type=_topic_format,
        default=[],
        metavar="TOPIC=FORMAT",
        help="the format of one topic (repeatable)",
    )
    p.add_argument(
        "--avro-schema-file", metavar="FILE", help="writer schema (.avsc) of avro-plain values"
    )
    p.add_argument(
        "--schema-registry-ca", metavar="FILE", help="CA bundle (PEM) for the registry's TLS"
    )
    p.add_argument(
        "--schema-registry-cert", metavar="FILE", help="client certificate (PEM) for the registry"
    )
    p.add_argument(
        "--schema-registry-key", metavar="FILE", help="the client certificate's key (PEM)"
    )


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


def _worker(text: str) -> Worker:
    """``I/N`` -> worker I of N (``--worker``)."""
    index, sep, count = text.partition("/")
    try:
        if not sep or not index.isdigit() or not count.isdigit():
            raise ValueError
        return Worker(int(index), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}") from None


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _add_sink_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="FILE", help="TOML settings file (see docs/configuration.md)"
    )
    p.add_argument(
        "--topic",
        dest="topics",
        action="append",
        metavar="TOPIC",
        help="topic to read (repeatable; env KNOCK_SINK_TOPICS, comma-separated)",
    )
    p.add_argument("--bootstrap-servers", help="Kafka brokers (env KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument(
        "--group-id", help="consumer group (env KNOCK_SINK_GROUP_ID; default knock-sink)"
    )
    p.add_argument(
        "--dlq-topic", help="dead-letter topic (env KNOCK_SINK_DLQ_TOPIC; default <topic>.dlq)"
    )
    p.add_argument(
        "--kafka-option",
        action="append",
        type=_kafka_option,
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting passed through (TLS, SASL...); repeatable",
    )
    p.add_argument(
        "--knock-base-url", help="Knock API (env KNOCK_BASE_URL; default https://api.knock.app)"
    )
    p.add_argument("--bulk-size", type=int, help="users per bulk identify call (default 1000)")
    p.add_argument(
        "--rate-limits",
        choices=["knock", "off"],
        help="pace requests to Knock's tiers (default knock)",
    )
    p.add_argument(
        "--budget-share",
        type=float,
        metavar="SHARE",
        help="share (0-1] of Knock's rate limits this group uses (default all of it)",
    )
    p.add_argument(
        "--nested-merge",
        choices=["either", "deep"],
        help="fold updates carrying objects under one key, as Knock deep-merges them "
        "(deep, the default), or keep them apart, exact either way (either)",
    )
    p.add_argument(
        "--flush-interval",
        type=float,
        help="least seconds between two batches sent; longer: fewer, fuller Knock "
        "calls, staler data in Knock (default 0.5)",
    )
    p.add_argument("--max-pending", type=int, help="events buffered before fetching pauses")
    p.add_argument(
        "--catch-up-lag",
        type=int,
        metavar="EVENTS",
        help="run: a partition this far behind folds its users until it is read to where it "
        "ended, then sends each once (default 1000; 0: off)",
    )
    p.add_argument(
        "--lateness",
        type=float,
        metavar="SECONDS",
        help="run: seconds of event time the updates of a user seen on several partitions "
        "wait, to be applied in event-time order (default 5; 0: arrival order, and a "
        "backfill does not order either)",
    )
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument(
        "--backfill-memory-mb",
        type=int,
        help="MiB the backfill process may take before its held users spill to disk (default 256)",
    )
    p.add_argument(
        "--work-dir", help="where a backfill spills held users (default: the system temp dir)"
    )
    p.add_argument("--anonymous", choices=["skip", "anonymous_id"], help="events without userId")
    p.add_argument(
        "--default-region", help="region for phone numbers without a country code (default US)"
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    _add_format_arguments(p)
    p.add_argument(
        "--log-format",
        choices=["auto", "json", "text"],
        help="log lines as JSON objects or text (default auto: text on a terminal, else JSON)",
    )


def build_parser() -> argparse.ArgumentParser:
    from .emulator import cli as emulator_cli

    parser = argparse.ArgumentParser(
        prog="knock-sink",
        description="Keep Knock users in sync with Segment-style events on Kafka. "
        "The API key is read from KNOCK_API_KEY only (never a flag, so it stays out of "
        "process lists and shell history).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="consume continuously (stop with SIGTERM/SIGINT: drains, commits, exits 0)"
    )
    _add_sink_arguments(run)
    _add_backfill(sub)
    _add_validate(sub)
    _add_repartition(sub)
    emu = sub.add_parser("emulator", help="serve a local Knock-compatible API")
    emulator_cli.add_arguments(emu)
    _add_demo(sub)
    return parser


def _add_backfill(sub: Commands) -> None:
    """``knock-sink backfill``: the sink's settings, where to start and stop, workflows, ``--full``, ``--dry-run``."""
    back = sub.add_parser(
        "backfill",
        help="replay topics and exit once everything up to their end is applied",
        description="Replay topics and exit 0 once every event up to the end offsets seen at start "
        "(or up to --until-timestamp) is applied and committed. It reads ahead before it sends, "
        "holding each user's updates folded into one (spilled to disk past --backfill-memory-mb), "
        "so each user is sent once; killed, it resumes from its commit. A user's events from several "
        "partitions are applied in event-time order (--lateness 0: in the order read). It exits 4 if it stops on its own before its end (a "
        "partition moved to another consumer of its group): run it again with the --group-id it "
        "names to resume.",
    )
    _add_sink_arguments(back)
    back.add_argument(
        "--from-beginning",
        action="store_true",
        help="rewind every partition to its first offset (else start from the backfill "
        "group's commit: the earliest offset for a new group)",
    )
    back.epilog = (
        "A backfill runs in a consumer group of its own, <group>-backfill-<UTC time>, unless "
        "--group-id is given, so the live group's offsets are untouched. With --group-id it "
        "keeps what Knock confirmed in that group's changelog, and a rerun sends only what "
        "changed (change detection); without, it keeps no record."
    )
    start = back.add_mutually_exclusive_group()
    start.add_argument(
        "--from-timestamp",
        type=_timestamp,
        metavar="ISO-8601",
        help="start each partition at its first event at or after this time",
    )
    start.add_argument(
        "--from-offsets",
        type=_offsets,
        metavar="TOPIC:PARTITION:OFFSET,...",
        help="start these partitions at these offsets (the others as without it)",
    )
    stop = back.add_mutually_exclusive_group()
    stop.add_argument(
        "--until-end",
        action="store_true",
        default=True,
        help="stop at the end offsets seen at start (the default)",
    )
    stop.add_argument(
        "--until-timestamp",
        type=_timestamp,
        metavar="ISO-8601",
        help="stop once every partition is applied up to its first event at or after this time",
    )
    back.add_argument(
        "--trigger-workflows",
        action="store_true",
        default=None,
        help="trigger the mapped workflows too (default: a backfill triggers none)",
    )
    back.add_argument(
        "--trigger-since",
        metavar="ISO-TIME",
        help="with --trigger-workflows, only events newer than this (default and "
        "earliest: 24 h before the backfill starts)",
    )
    back.add_argument(
        "--full",
        action="store_true",
        help="send every user whole, ignoring what change detection knows Knock has (and "
        "record what Knock confirms)",
    )
    spread = back.add_mutually_exclusive_group()
    spread.add_argument(
        "--workers",
        type=_count,
        metavar="N",
        help="run the backfill in N processes on this machine, each reading a fixed share of "
        "the partitions (worker I/N of --worker); together they spend one Knock budget. Topics "
        "keyed by user only",
    )
    spread.add_argument(
        "--worker",
        type=_worker,
        metavar="I/N",
        help="run only worker I (0 to N-1) of N, on any machine: it reads every N-th partition "
        "from the I-th, commits under --group-id (required, the same for every worker) and, "
        "killed, resumes alone when run again (the chart's backfill.workers: an Indexed Job, "
        "I each pod's index)",
    )
    back.add_argument(
        "--dry-run",
        action="store_true",
        help="read, decode and map up to the end, print the Knock calls each event "
        "would make (or why it would be dead-lettered); call nothing in Knock, commit "
        "nothing, join no group. Exit 0 when every event maps, 1 otherwise",
    )


def _add_validate(sub: Commands) -> None:
    """``knock-sink validate FILE``."""
    val = sub.add_parser(
        "validate",
        help="print the Knock calls each message of a file would make, calling nothing",
        description="Print, for each message of FILE, the Knock calls the sink would make (method, "
        "route, JSON body) or why it would dead-letter it, then a summary. No call to Knock (the "
        "schema registry may be asked for schemas). Exit 0 when every message maps, 1 when some "
        "would be dead-lettered (or could not be checked), 2 on bad usage.",
    )
    val.add_argument("file", metavar="FILE", help="the messages (see --input)")
    val.add_argument(
        "--input",
        choices=["auto", "ndjson", "avro-container", "base64"],
        default="auto",
        help="ndjson: one JSON event per line; avro-container: an Avro object container "
        "file; base64: one Kafka value per line, base64 (Confluent-framed Avro with "
        "--schema-registry-url). auto (default): a container file by its magic bytes, "
        "else ndjson",
    )
    val.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file (its [mapping] and [kafka] formats apply)",
    )
    val.add_argument("--anonymous", choices=["skip", "anonymous_id"], help="events without userId")
    val.add_argument(
        "--default-region", help="region for phone numbers without a country code (default US)"
    )
    _add_format_arguments(val)


def _add_repartition(sub: Commands) -> None:
    """``knock-sink repartition --from RAW --to KEYED``."""
    rep = sub.add_parser(
        "repartition",
        help="copy a topic into one keyed by user id, exactly once (transactions)",
        description="Copy --from into --to keyed by user id (userId, else anonymousId), merging the "
        "source partitions by event time, in Kafka transactions (a crash neither loses nor "
        "duplicates; rerun to resume). --to is created with the source's partition count. Then "
        "point the sink at --to. Stops at the end of --from unless --follow.",
    )
    rep.add_argument(
        "--from", dest="source", required=True, metavar="RAW", help="the unkeyed topic"
    )
    rep.add_argument("--to", dest="target", required=True, metavar="KEYED", help="the keyed topic")
    rep.add_argument(
        "--follow", action="store_true", help="keep copying new events (stop with SIGTERM/SIGINT)"
    )
    rep.add_argument(
        "--batch", type=int, default=1000, help="records per transaction at most (default 1000)"
    )
    rep.add_argument(
        "--lateness",
        # Not sink.lateness (run's and backfill's --lateness, 5 s of event time): the merge's
        # own wait, in seconds of wall time, set by nothing else.
        dest="merge_lateness",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --follow: how long a record waits for a source partition that is at its "
        "end with nothing new (default 1; see docs/repartition.md)",
    )
    rep.add_argument(
        "--config", metavar="FILE", help="TOML settings file (its [kafka] section applies)"
    )
    rep.add_argument("--bootstrap-servers", help="Kafka brokers (env KAFKA_BOOTSTRAP_SERVERS)")
    rep.add_argument(
        "--kafka-option",
        action="append",
        type=_kafka_option,
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting passed through (TLS, SASL...); repeatable",
    )
    _add_format_arguments(rep)


def _add_demo(sub: Commands) -> None:
    """``knock-sink demo``."""
    demo = sub.add_parser(
        "demo",
        help="local broker + local Knock API + sample events + the sink, then print the users",
    )
    demo.add_argument(
        "--events", type=int, default=0, help="extra generated identify events (default 0)"
    )
    demo.add_argument(
        "--avro",
        action="store_true",
        help="also write Avro events through a Schema Registry "
        "(SCHEMA_REGISTRY_URL, else the local Apicurio of deploy/local/registry)",
    )


def _settings(args: argparse.Namespace) -> Any:
    from .config import load_settings

    overrides = {dotted: getattr(args, dest, None) for dest, dotted in FLAG_SETTINGS.items()}
    for dest, dotted in PAIR_FLAG_SETTINGS.items():
        if getattr(args, dest, None):
            overrides[dotted] = dict(getattr(args, dest))
    return load_settings(args.config, overrides=overrides)


def _validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import validate

    settings = _settings(args)
    checker = validate.Checker(settings)
    try:
        return validate.run(validate.read_file(Path(args.file), args.input), checker, sys.stdout)
    except (OSError, ValueError) as exc:
        print(f"knock-sink: {args.file}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except FatalRegistryError as exc:
        print(f"knock-sink: stopped: {exc}", file=sys.stderr)
        return EXIT_FATAL


def _dry_run(args: argparse.Namespace) -> int:
    from . import validate
    from .source import read_to_end

    settings = _settings(args)
    if not settings.kafka.topics:
        raise ConfigError("kafka.topics", "no topic to read (KNOCK_SINK_TOPICS or --topic)")
    records = read_to_end(settings.kafka, from_beginning=args.from_beginning)
    try:
        return validate.run(validate.from_records(records), validate.Checker(settings), sys.stdout)
    except FatalRegistryError as exc:
        print(f"knock-sink: stopped: {exc}", file=sys.stderr)
        return EXIT_FATAL


def _repartition(args: argparse.Namespace) -> int:
    import threading

    from .repartition import Repartitioner

    settings = _settings(args)
    from .logs import setup

    setup(settings.sink.log_level, settings.sink.log_format, secrets=settings.secrets())
    if args.batch < 1:
        raise ConfigError("--batch", "must be at least 1")
    if args.merge_lateness is not None and args.merge_lateness < 0:
        raise ConfigError("--lateness", "must be at least 0")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        counts = Repartitioner(
            settings.kafka,
            args.source,
            args.target,
            batch=args.batch,
            **({} if args.merge_lateness is None else {"lateness": args.merge_lateness}),
        ).run(until_end=not args.follow, stop=stop)
    except FatalRegistryError as exc:
        print(f"knock-sink: stopped: {exc}", file=sys.stderr)
        return EXIT_FATAL
    print(json.dumps(counts.describe(), sort_keys=True))
    return 0


def _own_group(settings: Any) -> str:
    """A backfill's group when no ``--group-id`` is given: the live group's commits stay where
    they are."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{settings.kafka.group_id}-backfill-{stamp}"


def _run_sink(
    args: argparse.Namespace,
    *,
    backfill: bool,
    worker: Worker | None = None,
    group: str | None = None,
    emit: Callable[[dict[str, Any]], object] | None = None,
) -> int:
    """``run`` or ``backfill`` in this process; prints the summary (or hands it to ``emit``).
    ``worker``: this process is that backfill worker; ``group``: the backfill's own group,
    chosen by the process that started the workers (``--workers``)."""
    from .apply import SWITCH_INTERVAL
    from .logs import setup
    from .records import Replay
    from .sink import Sink

    worker = worker or (args.worker if backfill else None)
    if backfill and args.dry_run:
        if worker is not None or args.workers:
            raise ConfigError("--dry-run", "reads in one process: drop --workers/--worker")
        return _dry_run(args)
    settings = _settings(args)
    if worker is not None and not (args.group_id or group):
        raise ConfigError(
            "--group-id",
            "every worker of one backfill commits under one group: give --worker the same "
            "--group-id on each (the backfill's own, not the live sink's)",
        )
    if backfill and not args.group_id:
        group = group or _own_group(settings)
        settings = settings.model_copy(
            update={
                "kafka": settings.kafka.model_copy(update={"group_id": group}),
                # A new group has no record of what Knock confirmed to restore, and keeping
                # one would leave a changelog topic behind for every backfill run.
                "sink": settings.sink.model_copy(update={"known_ttl": 0.0}),
            }
        )
    setup(
        settings.sink.log_level,
        settings.sink.log_format,
        secrets=settings.secrets(),
        worker=None if worker is None else str(worker),
    )
    sys.setswitchinterval(SWITCH_INTERVAL)  # the workers' requests wait less for the lock
    sink = Sink(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sink.stop())
    replay = None
    if backfill and (
        args.from_timestamp is not None
        or args.from_offsets
        or args.until_timestamp is not None
        or worker is not None
    ):
        replay = Replay(
            from_offsets=args.from_offsets,
            from_time_ms=args.from_timestamp,
            until_time_ms=args.until_timestamp,
            worker=worker,
        )
    progress = _progress(sink, settings, worker) if backfill else None
    try:
        summary = sink.run(
            from_beginning=backfill and args.from_beginning,
            until_end=backfill,
            replay=replay,
            full=backfill and args.full,
        )
    except (FatalKnockError, FatalRegistryError) as exc:
        if progress is not None:
            progress.close()
        print(f"knock-sink: stopped: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except BaseException:
        if progress is not None:
            progress.close(report=False)
        raise
    done = progress.close() if progress is not None else None
    out = summary.describe()
    if done is not None:
        out.update(group_id=settings.kafka.group_id, backfill=done)
    if worker is not None:
        out.update(worker=str(worker))
    if emit is None:
        print(json.dumps(out, sort_keys=True))
    else:
        emit(out)
    if summary.reached is False and not summary.stopped:
        again = "" if worker is None else f" --worker {worker}"
        print(
            "knock-sink: the backfill stopped before its end (see the log); what it committed "
            f"stands: run it again with --group-id {settings.kafka.group_id}{again} to resume",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return 0


def _progress(sink: Any, settings: Any, worker: Worker | None = None) -> Any:
    from .limits import per_second
    from .progress import Progress

    bound = None
    if settings.knock.paced:
        bound = (
            settings.knock.bulk_size
            * per_second("bulk_identify")
            * (settings.knock.budget_share or 1.0)
            # A worker's share of the turns is about its share of the partitions.
            / (1 if worker is None else worker.count)
        )
    # Workers share one stderr: a live table each would overwrite the others'.
    return Progress(
        sink.metrics,
        sys.stderr,
        bulk_per_second=bound,
        **({} if worker is None else {"terminal": False}),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "emulator":
            from .emulator import cli as emulator_cli

            return emulator_cli.main(args)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(extra_events=args.events, avro=args.avro)
        if args.command == "validate":
            return _validate(args)
        if args.command == "repartition":
            return _repartition(args)
        if args.command == "backfill" and (args.workers or 1) > 1 and not args.dry_run:
            from .workers import run_workers

            # The settings are checked once, here, before any worker starts.
            return run_workers(args, _run_sink, _own_group, _settings(args))
        return _run_sink(args, backfill=args.command == "backfill")
    except ConfigError as exc:
        print(f"knock-sink: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
