"""``knock-sink validate`` and ``backfill --dry-run``: what the sink would do with each message,
without calling Knock.

Each message goes through the sink's own steps (size limit, decoder, :func:`parse_event`,
:class:`~consumer.mapping.Mapper`) and comes out as the Knock calls its ops take
(:mod:`consumer.calls`), or as the dead-letter kind and reason the sink would give it.

Calls are printed **per message**, not after coalescing: how the sink folds one user's
updates depends on timing (what arrived within a flush interval, where a plan was cut), so a
coalesced listing would differ from run to run, while the per-message one is exact, can be
traced back to its line or offset, and folds into what is sent (coalescing only merges these
bodies, later keys winning).

Inputs of ``validate FILE`` (``--input``, ``auto`` by default):

* ``ndjson``: one JSON value per line (blank lines skipped);
* ``avro-container``: an Avro object container file (``auto`` picks it by its magic bytes),
  read with fastavro; each record as the sink's Avro decoder would give it;
* ``base64``: one Kafka value per line, base64-encoded (Confluent-framed Avro with
  ``--schema-registry-url``, or anything the configured ``--format`` reads).
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

import fastavro

from .avro import WriterSchema, decoder_for
from .calls import Call, call_for
from .config import Settings
from .decode import Decoder, SizeLimit
from .errors import InvalidEvent, RegistryUnavailable
from .events import parse_event
from .mapping import Mapper
from .records import Record

Input = Literal["auto", "ndjson", "avro-container", "base64"]
INPUTS = ["auto", "ndjson", "avro-container", "base64"]
#: The first bytes of an Avro object container file.
CONTAINER_MAGIC = b"Obj\x01"

#: One message to check: where it is (``line 3``, ``topic[0]@12``); its value: the Kafka
#: value bytes, an already decoded value (container files), or why it could not be read; and
#: its topic (``None`` for a file: the ``kafka.format`` applies).
Message = tuple[str, "bytes | Decoded | InvalidEvent | None", "str | None"]


@dataclass(frozen=True, slots=True)
class Decoded:
    value: object


@dataclass(slots=True)
class Verdict:
    calls: list[Call] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: ``(kind, reason)`` when the sink would dead-letter the message.
    dead: tuple[str, str] | None = None
    #: Why it could not be checked (the registry did not answer): neither maps nor dead.
    unchecked: str | None = None


class Checker:
    """The sink's decode and mapping steps, with the ops rendered as calls."""

    def __init__(self, settings: Settings, decoder: Decoder | None = None) -> None:
        self._decoder = SizeLimit(
            decoder or decoder_for(settings.kafka), settings.kafka.max_message_bytes
        )
        self._mapper = Mapper(settings.mapping)

    def check(
        self, value: bytes | Decoded | InvalidEvent | None, topic: str | None = None
    ) -> Verdict:
        """:raises FatalRegistryError: the registry refuses us (every message would fail)."""
        try:
            if isinstance(value, InvalidEvent):
                raise value
            obj = value.value if isinstance(value, Decoded) else self._decoder.decode(value, topic)
            mapped = self._mapper.map(parse_event(obj))
        except InvalidEvent as exc:
            return Verdict(dead=(exc.kind, exc.reason))
        except RegistryUnavailable as exc:
            return Verdict(unchecked=str(exc))
        return Verdict([call_for(op) for op in mapped.ops], list(mapped.notes))


class Report:
    """Prints each verdict as it comes and the summary at the end."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.messages = 0
        self.calls: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()
        self.unchecked = 0

    def add(self, where: str, verdict: Verdict) -> None:
        self.messages += 1
        lines: list[str] = []
        if verdict.dead is not None:
            kind, reason = verdict.dead
            self.dead[kind] += 1
            lines.append(f"dead-letter {kind}: {reason}")
        elif verdict.unchecked is not None:
            self.unchecked += 1
            lines.append(f"not checked: {verdict.unchecked}")
        else:
            for call in verdict.calls:
                self.calls[f"{call.method} {_route_kind(call.route)}"] += 1
                lines.append(call.render())
            lines += [f"note {note}" for note in verdict.notes]
            if not lines:
                lines.append("no call")
        for line in lines:
            print(f"{where}: {line}", file=self._out)

    def summary(self) -> str:
        ok = self.messages - sum(self.dead.values()) - self.unchecked
        text = f"{self.messages} messages: {ok} map to {sum(self.calls.values())} calls"
        if self.calls:
            text += " (" + ", ".join(f"{k} {n}" for k, n in sorted(self.calls.items())) + ")"
        text += f", {sum(self.dead.values())} would be dead-lettered"
        if self.dead:
            text += " (" + ", ".join(f"{k} {n}" for k, n in sorted(self.dead.items())) + ")"
        if self.unchecked:
            text += f", {self.unchecked} not checked (schema registry unavailable)"
        return text

    @property
    def exit_code(self) -> int:
        """0 when every message maps, 1 when some would be dead-lettered or were not checked."""
        return 1 if self.dead or self.unchecked else 0


def _route_kind(route: str) -> str:
    if route.endswith("/merge"):
        return "/v1/users/{id}/merge"
    return route if route.endswith("/bulk/identify") else "/v1/users/{id}"


def run(messages: Iterable[Message], checker: Checker, out: TextIO) -> int:
    """Check and print every message, then the summary; returns the exit code."""
    report = Report(out)
    for where, value, topic in messages:
        report.add(where, checker.check(value, topic))
    print(report.summary(), file=out)
    return report.exit_code


def read_file(path: Path, kind: Input = "auto") -> Iterator[Message]:
    """The messages of ``validate FILE``.

    :raises OSError: the file cannot be read.
    """
    if kind == "auto":
        with path.open("rb") as f:
            kind = "avro-container" if f.read(4) == CONTAINER_MAGIC else "ndjson"
    if kind == "avro-container":
        yield from _container(path)
        return
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            if kind == "ndjson":
                yield f"line {n}", line, None
                continue
            try:
                yield f"line {n}", base64.b64decode(line, validate=True), None
            except (binascii.Error, ValueError) as exc:
                yield f"line {n}", InvalidEvent("undecodable", f"not base64: {exc}"), None


def _container(path: Path) -> Iterator[Message]:
    with path.open("rb") as f:
        try:
            reader = fastavro.reader(f, return_record_name=True)
        except Exception as exc:
            raise ValueError(f"{path}: not an Avro container file: {exc}") from None
        schema = WriterSchema(reader.writer_schema, f"the writer schema of {path.name}")
        n = 0
        while True:
            n += 1
            try:
                datum = next(reader)
            except StopIteration:
                return
            except Exception as exc:
                yield (
                    f"record {n}",
                    InvalidEvent("undecodable", f"not Avro of {schema.label}: {exc}"[:300]),
                    None,
                )
                return
            try:
                yield f"record {n}", Decoded(schema.value_of(datum)), None
            except InvalidEvent as exc:
                yield f"record {n}", exc, None


def from_records(records: Iterable[Record]) -> Iterator[Message]:
    """The messages of ``backfill --dry-run``: consumed records, named by position."""
    for rec in records:
        yield f"{rec.topic}[{rec.partition}]@{rec.offset}", rec.value, rec.topic
