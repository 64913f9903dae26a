"""Log lines: JSON off a terminal, librdkafka's lines through Python logging, no secret in any
output of a real ``knock-sink`` process."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import uuid

from consumer.logs import JsonFormatter, Repeats, TextFormatter, setup
from tests.conftest import ROOT, sink_env, wait_for
from tests.model import actual_state, expected_state

CLI = [sys.executable, "-m", "consumer.cli"]
#: librdkafka's own stderr format (``%3|1700000000.123|FAIL|rdkafka#consumer-1| ...``).
RAW_LIBRDKAFKA = re.compile(r"%\d\|\d+\.\d+\|")


def record(msg: str, level: int = logging.WARNING, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("knock_sink.x", level, __file__, 1, msg, (), None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_fields_given_with_extra():
    line = json.loads(
        JsonFormatter(()).format(record("parked", topic="t", partition=2, offset=41, user="u7"))
    )
    assert set(line) == {
        "time",
        "level",
        "logger",
        "message",
        "topic",
        "partition",
        "offset",
        "user",
    }
    assert (line["level"], line["logger"], line["message"]) == ("WARNING", "knock_sink.x", "parked")
    assert (line["topic"], line["partition"], line["offset"], line["user"]) == ("t", 2, 41, "u7")
    assert line["time"].endswith("+00:00")
    assert set(json.loads(JsonFormatter(()).format(record("plain")))) == {
        "time",
        "level",
        "logger",
        "message",
    }


def test_secrets_are_blanked_in_both_formats():
    rec = record("GET https://u:hunter2@r/ with Bearer sk_live_abc failed")
    for fmt in (
        JsonFormatter(["sk_live_abc", "u:hunter2", "hunter2"]),
        TextFormatter(["sk_live_abc", "hunter2"]),
    ):
        out = fmt.format(rec)
        assert "sk_live_abc" not in out and "hunter2" not in out and "[redacted]" in out


def test_a_workers_lines_say_which_worker_wrote_them_in_both_formats():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = {}
    try:
        for fmt in ("json", "text"):
            stream = io.StringIO()
            setup("INFO", fmt, stream=stream, worker="1/3")  # type: ignore[arg-type]
            logging.getLogger("knock_sink.x").info("held users sent")
            out[fmt] = stream.getvalue().strip()
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert json.loads(out["json"])["worker"] == "1/3"
    assert out["text"].endswith("knock_sink.x [worker 1/3]: held users sent")


def test_auto_is_text_on_a_terminal_json_elsewhere():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        assert isinstance(setup("INFO", "auto", stream=io.StringIO()).formatter, JsonFormatter)
        assert isinstance(setup("INFO", "auto", stream=Tty()).formatter, TextFormatter)
        assert isinstance(setup("INFO", "text", stream=io.StringIO()).formatter, TextFormatter)
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])


def json_lines(err: str) -> list[dict]:
    lines = [line for line in err.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is one JSON object, or this fails


def test_librdkafka_lines_arrive_through_logging_as_json_once_per_client(api):
    """With the broker unreachable (a closed loopback port), ``knock-sink run`` printed over
    300 lines of librdkafka's in a few seconds, four identical ones a millisecond."""
    env = sink_env(type("K", (), {"bootstrap": f"127.0.0.1:{closed_port()}"})(), api, "nowhere")
    proc = subprocess.Popen(
        [*CLI, "run", "--log-format", "json"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[dict] = []
    try:
        assert proc.stderr is not None
        # Until the dead-letter check has given up (three attempts, seconds apart) and the
        # consumer has failed to connect too: from there to its exit, the process printed
        # over 300 lines before the sink held repeats back.
        for line in proc.stderr:
            seen.append(json.loads(line))
            kafka = [s["message"] for s in seen if s["logger"] == "knock_sink.librdkafka"]
            gave_up = any(s["message"].startswith("dead-letter topics not checked") for s in seen)
            if gave_up and any("rdkafka#consumer" in m for m in kafka):
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    assert not RAW_LIBRDKAFKA.search(rest), rest
    seen += json_lines(rest)
    kafka = [s["message"] for s in seen if s["logger"] == "knock_sink.librdkafka"]
    refused = [m for m in kafka if "Connection refused" in m]
    # librdkafka's "Connect ... failed" is its level 3 (LOG_ERR): ERROR here.
    assert {s["level"] for s in seen if "Connection refused" in s["message"]} == {"ERROR"}
    clients = {m.split("]")[0] for m in refused}
    assert clients == {"FAIL [rdkafka#producer-1", "FAIL [rdkafka#consumer-2"}, kafka
    assert len(refused) == 2, kafka


def test_no_secret_in_any_output_of_a_real_process(kafka, api, schema_registry):
    topic = kafka.topic(2)
    events = [{"type": "identify", "userId": f"u{i % 30}", "traits": {"i": i}} for i in range(300)]
    kafka.produce(topic, events)
    # A Confluent-framed value with a schema id the registry does not know: a registry lookup
    # with the credentials, then a dead letter with its reason.
    kafka.produce(topic, [b"\x00\x00\x0f\x42\x40\x02"], key=lambda _: b"avro")
    password = "pw-" + uuid.uuid4().hex
    env = sink_env(
        kafka,
        api,
        topic,
        SCHEMA_REGISTRY_URL=schema_registry,
        SCHEMA_REGISTRY_BASIC_AUTH=f"reader:{password}",
    )
    # Retries, logged: an outage the start-up check waits out, then random errors.
    api.set_faults(outage_seconds=1.5, error_rate=0.2, error_statuses=[500, 503, 429], seed=3)
    outputs = []
    args = [
        "--log-level",
        "DEBUG",
        "--log-format",
        "json",
        "--bulk-size",
        "10",
        "--flush-interval",
        "0.05",
        "--rate-limits",
        "off",
    ]
    proc = subprocess.Popen(
        [*CLI, "run", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic),
            90,
            "all committed",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        outputs += proc.communicate(timeout=60)
    assert proc.returncode == 0, outputs[1][-2000:]
    api.clear_faults()
    assert actual_state(api.users()) == expected_state(events)
    lines = json_lines(outputs[1])
    assert any("retry" in line["message"] for line in lines)
    (parked,) = kafka.read_all(f"{topic}.dlq", 1)
    (parked_line,) = [line for line in lines if line["message"].startswith("dead-lettering")]
    source = {k: v.decode() for k, v in parked.headers() if k.startswith("knock-sink.source.")}
    assert (parked_line["topic"], parked_line["partition"], parked_line["offset"]) == (
        source["knock-sink.source.topic"],
        int(source["knock-sink.source.partition"]),
        int(source["knock-sink.source.offset"]),
    )
    outputs += [value.decode(errors="replace") for _, value in parked.headers()]

    # The same process with a key Knock rejects: exit 2 naming the setting, not the key.
    wrong = "sk_test_wrong_" + uuid.uuid4().hex
    bad = subprocess.run(
        [*CLI, "run", "--log-format", "json"],
        env={**env, "KNOCK_API_KEY": wrong},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert bad.returncode == 2 and "knock.api_key" in bad.stderr, bad.stderr
    outputs += [bad.stdout, bad.stderr]
    everything = "\n".join(outputs)
    for secret in (api.api_key, password, wrong):
        assert secret not in everything
    assert not RAW_LIBRDKAFKA.search(everything)


def test_a_retried_single_identify_names_its_user(api, caplog):
    from consumer.knock import KnockClient
    from consumer.pacing import RateLimits

    api.set_faults(error_rate=1.0, error_statuses=[503])

    def sleep(seconds: float, stop: object = None) -> None:
        api.clear_faults()  # Knock is back after the first failure

    client = KnockClient(
        api_key=api.api_key, base_url=api.url, limits=RateLimits("off"), sleep=sleep
    )
    with client, caplog.at_level(logging.WARNING, logger="knock_sink.knock"):
        client.identify("ada", {"plan": "pro"})
    (retry,) = [
        r for r in caplog.records if r.getMessage().startswith("retry 1 of PUT /v1/users/ada")
    ]
    assert json.loads(JsonFormatter(()).format(retry))["user"] == "ada"
    assert actual_state(api.users()) == {"ada": {"plan": "pro"}}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def filtered_logger(window: float = 30.0) -> tuple[logging.Logger, Clock, Lines, list[int]]:
    """A fresh logger with a counter of every record, then :class:`Repeats`, then a handler
    that keeps what passed."""
    logger = logging.getLogger(f"test.repeats.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    offered = [0]

    def count(record: logging.LogRecord) -> bool:
        offered[0] += 1
        return True

    clock = Clock()
    logger.addFilter(count)
    logger.addFilter(Repeats(window, clock))
    lines = Lines()
    logger.addHandler(lines)
    return logger, clock, lines, offered


def test_a_repeated_line_passes_once_then_once_a_window_with_the_count_held_back():
    logger, clock, lines, _ = filtered_logger()
    fail = "FAIL [rdkafka#consumer-1] [thrd:h:1]: Connect failed (after %dms in state %s)"
    for ms in range(5):
        logger.error(fail, ms, "CONNECT")
    assert [r.getMessage() for r in lines.records] == [
        "FAIL [rdkafka#consumer-1] [thrd:h:1]: Connect failed (after 0ms in state CONNECT)"
    ]
    clock.now += 29.9
    logger.error(fail, 7, "CONNECT")
    assert len(lines.records) == 1
    clock.now += 0.1
    logger.error(fail, 8, "CONNECT")
    last = lines.records[-1]
    assert last.getMessage() == (
        "FAIL [rdkafka#consumer-1] [thrd:h:1]: Connect failed (after 8ms in state CONNECT) "
        "(5 repeats suppressed in 30 s)"
    )
    assert json.loads(JsonFormatter(()).format(last))["suppressed"] == 5
    # Another state is another line, at once; the first one's window goes on.
    logger.error(fail, 0, "APIVERSION_QUERY")
    logger.error(fail, 0, "CONNECT")
    assert len(lines.records) == 3
    assert lines.records[-1].getMessage().endswith("APIVERSION_QUERY)")


def test_lines_differ_by_message_level_and_logger_and_a_quiet_line_passes_again():
    logger, clock, lines, _ = filtered_logger()
    logger.error("a")
    logger.error("b")
    logger.warning("a")
    logger.error("a 3 identical error(s) suppressed")
    logger.error("a 9 identical error(s) suppressed")
    assert [(r.levelname, r.getMessage()) for r in lines.records] == [
        ("ERROR", "a"),
        ("ERROR", "b"),
        ("WARNING", "a"),
        ("ERROR", "a 3 identical error(s) suppressed"),
    ]
    clock.now += 60
    logger.error("b")  # nothing held back: no count
    assert lines.records[-1].getMessage() == "b"
    assert "suppressed" not in lines.records[-1].__dict__


def test_memory_stays_bounded_by_the_lines_whose_window_is_open():
    repeats = Repeats(30.0, clock := Clock())
    logger = logging.getLogger(f"test.repeats.{uuid.uuid4().hex}")
    for i in range(Repeats.MAX_KEYS):
        repeats.filter(logger.makeRecord(logger.name, logging.ERROR, "", 1, f"m{i}", (), None))
    clock.now += 30
    repeats.filter(logger.makeRecord(logger.name, logging.ERROR, "", 1, "new", (), None))
    assert len(repeats._seen) == 1


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed, so it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_broker_is_one_line_while_librdkafka_repeats_it():
    from confluent_kafka import Consumer

    logger, clock, lines, offered = filtered_logger()
    conf = {"bootstrap.servers": f"127.0.0.1:{closed_port()}", "group.id": "g"}
    consumer = Consumer(conf, logger=logger)
    try:
        consumer.subscribe(["t"])
        # A subscribed consumer tries the broker again on every poll, logging each failure:
        # the sink's, polling often, logged four a millisecond.
        wait_for(lambda: consumer.poll(0.01) is None and offered[0] >= 20, 30, "20 lines")
        failing = [r for r in lines.records if "Connection refused" in r.getMessage()]
        assert len(failing) == 1, [r.getMessage() for r in lines.records]
        held = offered[0] - len(lines.records)
        assert held >= 19
        clock.now += 30
        before = offered[0]
        wait_for(lambda: consumer.poll(0.01) is None and offered[0] > before, 30, "a line")
        again = [r for r in lines.records if "Connection refused" in r.getMessage()]
        assert len(again) == 2
        assert again[1].__dict__["suppressed"] >= held
    finally:
        consumer.close()
