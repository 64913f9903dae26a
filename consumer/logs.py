"""Logging setup: JSON lines for machines, readable lines for people.

``json`` writes one object per record: ``time`` (UTC, ISO-8601), ``level``, ``logger``,
``message``, and ``topic``/``partition``/``offset``/``user`` when the call site passed them with
``extra=``, plus ``exception`` for a traceback. ``text`` is the classic one-liner. ``auto`` (the
default) picks text on a terminal and JSON otherwise (a container's stderr goes to a log
collector). librdkafka's own lines come through here too (the clients' ``logger`` setting, see
:mod:`consumer.source`), at the level librdkafka gave them.

The formatter also blanks the secrets it was given (the API key, the registry password) in
whatever it writes. The code never logs them; this is the second lock, for the day a library
echoes a header or a URL back in an error.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal, TextIO

LogFormat = Literal["auto", "json", "text"]

#: Record attributes copied into a JSON line when a call site set them with ``extra=``.
FIELDS = ("topic", "partition", "offset", "user")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"
MIN_SECRET = 6


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
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(secrets, TEXT_FORMAT)

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


def setup(
    level: str,
    fmt: LogFormat = "auto",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every logger's records at ``level`` and above to ``stream`` (stderr) in ``fmt``;
    returns the handler installed on the root logger (replacing any earlier one)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # One line per HTTP request is httpx's INFO; the sink logs its own retries and failures.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler
