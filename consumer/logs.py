"""Logging setup: JSON lines for machines, readable lines for people.

``json`` writes one object per record: ``time`` (UTC, ISO-8601), ``level``, ``logger``,
``message``, and ``topic``/``partition``/``offset``/``user`` when the call site passed them with
``extra=`` (``suppressed`` when :class:`Repeats` held lines back), ``worker`` in a backfill
worker's process (``backfill --workers``/``--worker``), plus ``exception`` for a
traceback. ``text`` is the classic one-liner. ``auto`` (the
default) picks text on a terminal and JSON otherwise (a container's stderr goes to a log
collector). librdkafka's own lines come through here too (every client's ``logger`` setting is
:data:`KAFKA_LOG`), at the level librdkafka gave them, and once per 30 s while they repeat
(:class:`Repeats`): with the broker unreachable, each client logs its failed connect several
times a millisecond.

The formatter also blanks the secrets it was given (the API key, the registry password) in
whatever it writes. The code never logs them; this is the second lock, for the day a library
echoes a header or a URL back in an error.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Final, Literal, TextIO

LogFormat = Literal["auto", "json", "text"]

#: Record attributes copied into a JSON line when a call site set them with ``extra=``
#: (``suppressed`` is set by :class:`Repeats`).
FIELDS = ("topic", "partition", "offset", "user", "suppressed", "worker")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"
MIN_SECRET = 6


#: What changes between two lines that say the same thing: librdkafka's timings ("after 0ms in
#: state CONNECT") and its own count of suppressed errors.
_VARYING = re.compile(r"\b\d+ms\b|\b\d+ identical error\(s\) suppressed")


def _same_line(message: str) -> str:
    return _VARYING.sub("#", message)


class Repeats(logging.Filter):
    """Let a line through when it is new, then at most once every ``window`` seconds while it
    keeps coming, counting the ones held back.

    Lines are the same when their logger, level and message are, up to the parts that vary
    between repeats (:func:`_same_line`). The line let through after a window carries the
    number held back since the previous one, in its message and as ``suppressed``. So a line
    that stops and comes back later than ``window`` passes at once; one that comes back
    sooner waits for the end of its window (a new state is a new line, and passes at once).
    Thread-safe: librdkafka may log from its own threads.
    """

    #: Lines remembered at most; past that, the ones whose window is over are dropped.
    MAX_KEYS: Final = 1024

    def __init__(self, window: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> [time it was last let through, occurrences held back since]
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, _same_line(record.getMessage()))
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window:
                seen[1] += 1
                return False
            held = int(seen[1]) if seen is not None else 0
            self._seen[key] = [now, 0]
            if len(self._seen) > self.MAX_KEYS:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
        if held:
            since = now - seen[0] if seen is not None else 0.0
            record.msg = f"{record.getMessage()} ({held} repeats suppressed in {since:.0f} s)"
            record.args = ()
            record.__dict__["suppressed"] = held
        return True


#: librdkafka's own lines: every Kafka client of the sink takes this as its ``logger``.
KAFKA_LOG = logging.getLogger("knock_sink.librdkafka")
KAFKA_LOG.addFilter(Repeats())


class _Redacting(logging.Formatter):
    def __init__(self, secrets: Iterable[str], fmt: str | None = None) -> None:
        super().__init__(fmt)
        # Longest first, so a secret that contains another one is blanked whole. Below
        # MIN_SECRET characters (a test key "k") blanking would shred every line instead.
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


class TextFormatter(_Redacting):
    def __init__(self, secrets: Iterable[str] = (), worker: str | None = None) -> None:
        tagged = TEXT_FORMAT.replace("%(name)s:", f"%(name)s [worker {worker}]:")
        super().__init__(secrets, TEXT_FORMAT if worker is None else tagged)

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonFormatter(_Redacting):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(line, default=str, ensure_ascii=False))


class _Tag(logging.Filter):
    """Sets ``worker`` on every record the handler writes."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self._worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self._worker
        return True


def setup(
    level: str,
    fmt: LogFormat = "auto",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    worker: str | None = None,
) -> logging.Handler:
    """Send every logger's records at ``level`` and above to ``stream`` (stderr) in ``fmt``;
    returns the handler installed on the root logger (replacing any earlier one). ``worker``
    (``"I/N"``) tags every line of a backfill worker's process, whose lines share one stderr
    with the other workers'."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets, worker)
    )
    if worker is not None:
        handler.addFilter(_Tag(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # One line per HTTP request is httpx's INFO; the sink logs its own retries and failures.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler
