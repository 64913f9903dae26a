"""Avro decoders: Kafka values written in Avro into the JSON value a JSON producer would have sent.

Three readers, all :class:`~consumer.decode.Decoder`\\ s:

* :class:`ConfluentAvroDecoder`: Confluent's wire format (byte ``0``, a 4-byte big-endian
  schema id, the Avro binary body). The writer schema is fetched by id from a
  Confluent-compatible Schema Registry and kept, parsed, for the decoder's life (a schema id
  never changes meaning).
* :class:`PlainAvroDecoder`: bare Avro binary, the writer schema from a file.
* :class:`TopicDecoder`, built by :func:`decoder_for`: the format per topic
  (``kafka.format`` / ``kafka.formats``); ``auto`` picks per value by its first byte, ``0``
  for Confluent Avro (no JSON text starts with it), JSON otherwise.

The output is schema-agnostic JSON, as ``orjson.loads`` of the same event would give:

* ``traits``, ``properties``, ``context``, ``context.traits`` (and ``integrations``) may be a record, a map or a
  JSON-encoded string (producers use all three, ``/work/shared/notes/producers.md`` §4); a
  string is parsed as JSON, and a ``null`` inside it is kept (it overwrites, as in JSON). An
  empty string there means absent: non-nullable string fields are how some producers say none.
* An optional record field that is ``null`` was not set by the producer: it is left out, so
  that it never overwrites a Knock property. A ``null`` map value or array item is kept: the
  producer put that key or slot there on purpose.
* Unions resolve to their value. Logical types: timestamps become ISO-8601 UTC strings as
  Segment writes them (``2024-03-01T10:00:00.000Z``, microseconds only when there are some);
  ``local-timestamp-*`` the same without ``Z`` (the sink reads offset-less times as UTC);
  ``date`` ``YYYY-MM-DD``; ``time-*`` ``HH:MM:SS.mmm``; ``uuid`` a string; ``decimal`` a
  number; ``bytes`` and ``fixed`` a base64 string (see :func:`_scalar`). Enums are strings.

Errors: a value that cannot be read, or names a schema id the registry does not know, is
:class:`~consumer.errors.InvalidEvent` ``undecodable`` with the schema id in the reason. A
registry that does not answer raises :class:`~consumer.errors.RegistryUnavailable` (retry
later; the event is fine), one that refuses our credentials
:class:`~consumer.errors.FatalRegistryError`. The registry's credentials never appear in
either.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import fastavro
import orjson

from .config import Format, KafkaSettings
from .decode import Decoder, JsonDecoder, invalid_json
from .errors import (
    ConfigError,
    FatalRegistryError,
    InvalidEvent,
    RegistryError,
    RegistryUnavailable,
)

#: Confluent framing: magic byte 0, then the schema id as a big-endian int32.
MAGIC = 0
HEADER_BYTES = 5
#: Free-form Segment fields a producer may have written as a JSON string (``integrations``
#: too: the sink ignores it, but the value should still be the event a JSON producer sent).
FREE_FORM = ("traits", "properties", "context", "integrations")
#: Seconds for one registry request; the caller retries (see ``RegistryUnavailable``).
REGISTRY_TIMEOUT = 10.0
#: 404 codes meaning "no such schema" (id, subject, version of a reference), not "wrong URL".
_NOT_FOUND_CODES = frozenset({40401, 40402, 40403})

Named = dict[str, Any]


class WriterSchema:
    """One parsed writer schema and the named types it defines, able to read a body."""

    __slots__ = ("label", "named", "parsed")

    def __init__(self, schema: Any, label: str, named: Named | None = None) -> None:
        #: How errors name the schema (``schema id 7``, a file name).
        self.label = label
        self.named: Named = {} if named is None else named
        self.parsed = fastavro.parse_schema(schema, named_schemas=self.named)

    def read(self, body: bytes) -> object:
        """The JSON-equivalent value of one Avro binary body (free-form fields unpacked)."""
        buf = io.BytesIO(body)
        try:
            # return_record_name: a record inside a union comes back as (name, value), which
            # tells a record (nulls left out) from a map (nulls kept) without guessing.
            raw = fastavro.schemaless_reader(buf, self.parsed, None, return_record_name=True)
        except Exception as exc:
            raise InvalidEvent(
                "undecodable", f"not Avro of {self.label}: {type(exc).__name__}: {exc}"[:300]
            ) from None
        left = len(body) - buf.tell()
        if left:
            # Bytes the schema does not account for: the value was written with another schema.
            raise InvalidEvent("undecodable", f"not Avro of {self.label}: {left} bytes left over")
        return self.value_of(raw)

    def value_of(self, raw: object) -> object:
        """The JSON-equivalent value of one datum fastavro read with this schema (with
        ``return_record_name=True``), e.g. from an Avro container file."""
        return unpack_free_form(self._json(raw, self.parsed))

    def _resolve(self, schema: Any) -> Any:
        while isinstance(schema, str) and schema in self.named:
            schema = self.named[schema]
        if isinstance(schema, dict) and isinstance(schema["type"], (dict, list)):
            return self._resolve(schema["type"])  # {"type": {...}}: a wrapped type
        if isinstance(schema, dict) and schema["type"] in self.named:
            return self._resolve(schema["type"])
        return schema

    def _json(self, value: Any, schema: Any) -> Any:
        if value is None:
            return None
        schema = self._resolve(schema)
        if isinstance(schema, list):
            return self._union(value, schema)
        kind = schema["type"] if isinstance(schema, dict) else schema
        if kind == "record" or kind == "error":
            out: dict[str, Any] = {}
            for field in schema["fields"]:
                item = value.get(field["name"])
                # Only a nullable field can hold None: the producer did not set it.
                if item is not None:
                    out[field["name"]] = self._json(item, field["type"])
            return out
        if kind == "map":
            values = schema["values"]
            return {k: self._json(v, values) for k, v in value.items()}
        if kind == "array":
            items = schema["items"]
            return [self._json(v, items) for v in value]
        return _scalar(value)

    def _union(self, value: Any, branches: list[Any]) -> Any:
        if type(value) is tuple:
            name, inner = value
            return self._json(inner, self.named.get(name, name))
        wanted = "map" if type(value) is dict else "array" if type(value) is list else None
        if wanted is None:
            return _scalar(value)
        for branch in branches:
            resolved = self._resolve(branch)
            if isinstance(resolved, dict) and resolved["type"] == wanted:
                return self._json(value, resolved)
        return value  # unreachable with fastavro's output; kept total


def _scalar(value: Any) -> Any:
    """A primitive or logical-type value as JSON would carry it."""
    cls = type(value)
    if cls is str or cls is int or cls is float or cls is bool:
        return value
    if cls is datetime:
        return _iso(value)
    if cls is date:
        return value.isoformat()
    if cls is time:
        return value.isoformat(
            timespec="milliseconds" if value.microsecond % 1000 == 0 else "microseconds"
        )
    if cls is Decimal:
        # JSON has one number type and a JSON producer would have sent one; Knock stores JSON.
        # An integral decimal becomes an int so that 10.00 compares equal to the JSON 10;
        # otherwise a float, exact to about 15 significant digits (beyond that, keep the
        # amount as a string or in minor units in the schema).
        return int(value) if value == value.to_integral_value() else float(value)
    if cls is UUID:
        return str(value)
    if cls is bytes:
        # Bytes have no JSON form. Base64 (RFC 4648, padded) is what Kafka Connect's
        # JsonConverter and proto3's JSON mapping write for bytes: lossless, and a string
        # Knock can store; decoding them as text would fail or mangle binary values.
        return base64.b64encode(value).decode("ascii")
    return value


def _iso(moment: datetime) -> str:
    """Segment's form: UTC with ``Z``, milliseconds; microseconds only when there are some."""
    suffix = ""
    if moment.tzinfo is not None:
        moment, suffix = moment.astimezone(UTC), "Z"
    us = moment.microsecond
    frac = f"{us // 1000:03d}" if us % 1000 == 0 else f"{us:06d}"
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{frac}{suffix}"


def unpack_free_form(obj: object) -> object:
    """Parse the :data:`FREE_FORM` fields and ``context.traits`` given as JSON strings (in
    place); other values are left as they are."""
    if type(obj) is not dict:
        return obj
    for key in FREE_FORM:
        if type(obj.get(key)) is str:
            _unpack(obj, key, key)
    context = obj.get("context")
    if type(context) is dict and type(context.get("traits")) is str:
        _unpack(context, "traits", "context.traits")
    return obj


def _unpack(obj: dict[str, Any], key: str, name: str) -> None:
    text: str = obj[key]
    if not text:
        del obj[key]
        return
    try:
        obj[key] = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("undecodable", f"{name}: a string that is not JSON: {exc}") from None


class PlainAvroDecoder:
    """Bare Avro binary values (no header), all written with one schema from a file."""

    def __init__(self, schema_file: str | Path) -> None:
        path = Path(schema_file)
        try:
            self.schema = WriterSchema(json.loads(path.read_text()), f"writer schema {path.name}")
        except (OSError, ValueError, fastavro.schema.SchemaParseException) as exc:
            raise ConfigError("kafka.avro_schema_file", f"{path}: {exc}") from None

    def decode(self, value: bytes | None, topic: str | None = None) -> object:
        if value is None:
            raise InvalidEvent("undecodable", "empty value (tombstone)")
        return self.schema.read(value)

    def for_topic(self, topic: str | None) -> Callable[[bytes | None], object]:
        return self.decode  # one schema for every topic

    def check(self) -> bool:
        return True  # the schema was read from its file at start


class ConfluentAvroDecoder:
    """Confluent-framed Avro; writer schemas by id from a Schema Registry, cached.

    ``client`` is a ``confluent_kafka.schema_registry.SchemaRegistryClient`` (or anything with
    its ``get_schema(id)`` and ``get_version(subject, version)``); ``secrets`` are strings to
    blank out of every message (see :meth:`from_settings`).
    """

    def __init__(self, client: Any, *, url: str = "", secrets: tuple[str, ...] = ()) -> None:
        self._client = client
        self._url = url
        self._secrets = tuple(s for s in secrets if s)
        self._schemas: dict[int, WriterSchema] = {}

    @classmethod
    def from_settings(cls, settings: KafkaSettings) -> ConfluentAvroDecoder:
        if not settings.schema_registry_url:
            raise ConfigError("kafka.schema_registry_url", "not set (SCHEMA_REGISTRY_URL)")
        from confluent_kafka.schema_registry import SchemaRegistryClient

        conf: dict[str, Any] = {
            "url": settings.schema_registry_url,
            "timeout": REGISTRY_TIMEOUT,
            # No retries inside the client: it would sleep inside decode(), on the sink's
            # loop. RegistryUnavailable goes up instead, and the sink backs off, paused.
            "max.retries": 0,
        }
        secrets: tuple[str, ...] = ()
        if settings.schema_registry_basic_auth is not None:
            user_info = settings.schema_registry_basic_auth.get_secret_value()
            conf["basic.auth.user.info"] = user_info
            secrets = (user_info, user_info.split(":", 1)[1])
        conf.update(
            (key, setting)
            for key, setting in (
                ("ssl.ca.location", settings.schema_registry_ca),
                ("ssl.certificate.location", settings.schema_registry_cert),
                ("ssl.key.location", settings.schema_registry_key),
            )
            if setting
        )
        try:
            client = SchemaRegistryClient(conf)
        except (ValueError, TypeError, OSError) as exc:
            # e.g. an unreadable CA file; the message names files, not secrets (redacted anyway).
            problem = _redact(str(exc), secrets)
            raise ConfigError("kafka.schema_registry_url", problem) from None
        return cls(client, url=settings.schema_registry_url, secrets=secrets)

    def decode(self, value: bytes | None, topic: str | None = None) -> object:
        if value is None:
            raise InvalidEvent("undecodable", "empty value (tombstone)")
        if len(value) < HEADER_BYTES or value[0] != MAGIC:
            raise InvalidEvent(
                "undecodable", "not Confluent Avro: expected byte 0 and a 4-byte schema id"
            )
        schema_id = int.from_bytes(value[1:HEADER_BYTES], "big")
        schema = self._schemas.get(schema_id)
        if schema is None:
            schema = self._schemas[schema_id] = self._fetch(schema_id)
        return schema.read(value[HEADER_BYTES:])

    def for_topic(self, topic: str | None) -> Callable[[bytes | None], object]:
        return self.decode  # the schema id is in each value, whatever the topic

    def _fetch(self, schema_id: int) -> WriterSchema:
        label = f"schema id {schema_id}"
        named: Named = {}
        try:
            registered = self._client.get_schema(schema_id)
            if (registered.schema_type or "AVRO") != "AVRO":
                raise InvalidEvent(
                    "undecodable", f"{label} is a {registered.schema_type} schema, not Avro"
                )
            self._load_references(registered.references or [], named, label)
            return WriterSchema(json.loads(registered.schema_str), label, named)
        except (ValueError, fastavro.schema.SchemaParseException) as exc:
            raise InvalidEvent(
                "undecodable", f"{label} is not a usable Avro schema: {exc}"
            ) from None
        except (InvalidEvent, RegistryError):
            raise
        except Exception as exc:
            raise self._translate(exc, label) from None

    def check(self) -> bool:
        """One lookup at start: ``False`` when the registry does not answer (the sink starts
        anyway and waits on the first schema it needs).

        :raises ConfigError: the registry refuses the credentials, or is not a registry
            (``kafka.schema_registry_basic_auth`` / ``kafka.schema_registry_url``).
        """
        try:
            self._client.get_subjects()
        except Exception as exc:
            err = self._translate(exc, "the subject list")
            if isinstance(err, FatalRegistryError):
                auth = err.status in (401, 403)
                setting = (
                    "kafka.schema_registry_basic_auth" if auth else "kafka.schema_registry_url"
                )
                raise ConfigError(setting, str(err)) from None
            if isinstance(err, RegistryUnavailable):
                return False
            if not isinstance(err, InvalidEvent):
                raise err from None
        return True

    def _load_references(self, refs: list[Any], named: Named, label: str) -> None:
        # Referenced schemas define named types the referring schema uses: parse them first,
        # depth first, into the same table.
        for ref in refs:
            version = self._client.get_version(ref.subject, ref.version)
            self._load_references(version.schema.references or [], named, label)
            fastavro.parse_schema(json.loads(version.schema.schema_str), named_schemas=named)

    def _translate(self, exc: Exception, label: str) -> Exception:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        where = f"schema registry {self._url}"
        if isinstance(exc, SchemaRegistryError):
            status, code = exc.http_status_code, exc.error_code
            detail = self._redact(
                f"{where} answered HTTP {status} ({code}) for {label}: {exc.error_message}"
            )
            if status == 404 and code in _NOT_FOUND_CODES:
                return InvalidEvent(
                    "undecodable", f"{label} not found in the schema registry ({code})"
                )
            if status in (408, 429) or status >= 500:
                return RegistryUnavailable(detail, status=status)
            if status in (401, 403):
                return FatalRegistryError(
                    f"the schema registry rejected the credentials: {detail}", status=status
                )
            return FatalRegistryError(
                f"unexpected answer, is the URL right? {detail}", status=status
            )
        if _no_answer(exc):
            return RegistryUnavailable(self._redact(f"{where}: {type(exc).__name__}: {exc}"))
        return exc

    def _redact(self, text: str) -> str:
        return _redact(text, self._secrets)


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    # The registry never echoes the credentials, but a proxy or a transport error might.
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def _no_answer(exc: Exception) -> bool:
    """True for the HTTP client's "no answer" errors (refused, reset, DNS, timeout, TLS).

    confluent-kafka uses httpx2 when installed, else httpx; both raise a ``TransportError``
    subclass. Matched by name so that this module imports neither.
    """
    return any(
        c.__name__ == "TransportError" and c.__module__.split(".")[0] in ("httpx", "httpx2")
        for c in type(exc).__mro__
    ) or isinstance(exc, OSError)


class AutoDecoder:
    """Per value: Confluent Avro when the first byte is 0, JSON otherwise."""

    def __init__(
        self, avro: ConfluentAvroDecoder | None, json_decoder: JsonDecoder | None = None
    ) -> None:
        self.avro = avro
        self.json = json_decoder or JsonDecoder()

    def decode(self, value: bytes | None, topic: str | None = None) -> object:
        if value and value[0] == MAGIC:
            if self.avro is None:
                schema_id = int.from_bytes(value[1:HEADER_BYTES], "big")
                raise InvalidEvent(
                    "undecodable",
                    f"Confluent Avro (schema id {schema_id}) but no schema registry is set "
                    "(kafka.schema_registry_url)",
                )
            return self.avro.decode(value)
        return self.json.decode(value)

    def for_topic(self, topic: str | None) -> Callable[[bytes | None], object]:
        """This decode as one function: JSON inline when the JSON decoder is the plain one."""
        if type(self.json) is not JsonDecoder:
            return self.decode
        avro = self.avro

        loads, refused = orjson.loads, orjson.JSONDecodeError

        def decode(value: bytes | None) -> object:
            if value:
                if value[0] != MAGIC:
                    try:
                        return loads(value)
                    except refused as exc:
                        raise invalid_json(exc) from None
                if avro is not None:
                    return avro.decode(value)
            return self.decode(value)  # a tombstone, an empty value, Avro without a registry

        return decode

    def check(self) -> bool:
        """The registry's check (see :meth:`ConfluentAvroDecoder.check`); ``True`` without one."""
        return self.avro.check() if self.avro is not None else True


class TopicDecoder:
    """The decoder of each topic's format. ``decode(value)`` alone uses ``kafka.format``."""

    def __init__(
        self,
        settings: KafkaSettings,
        by_format: dict[Format, Decoder],
        confluent: ConfluentAvroDecoder | None = None,
    ) -> None:
        self._settings = settings
        self._by_format = by_format
        self.confluent = confluent
        # Each topic's decoder, looked up once: decode runs once per event.
        self._by_topic: dict[str | None, Callable[[bytes | None], object]] = {}

    def decode(self, value: bytes | None, topic: str | None = None) -> object:
        decode = self._by_topic.get(topic)
        if decode is None:
            decode = self._by_topic[topic] = self.for_topic(topic)
        return decode(value)

    def for_topic(self, topic: str | None) -> Callable[[bytes | None], object]:
        """The decode of ``topic``'s format (the intake keeps it per topic)."""
        return self._by_format[self._settings.format_for(topic)].for_topic(topic)

    def check(self) -> bool:
        """The registry's start-up check (see :meth:`ConfluentAvroDecoder.check`); ``True``
        when no registry is set."""
        return self.confluent.check() if self.confluent is not None else True


def decoder_for(settings: KafkaSettings) -> TopicDecoder:
    """The decoder for ``settings``: one registry client and cache shared by every topic.

    :raises ConfigError: a format's requirement is missing, the schema file does not parse.
    """
    confluent = (
        ConfluentAvroDecoder.from_settings(settings) if settings.schema_registry_url else None
    )
    plain = PlainAvroDecoder(settings.avro_schema_file) if settings.avro_schema_file else None
    auto = AutoDecoder(confluent)
    by_format: dict[Format, Decoder] = {"auto": auto, "json": auto.json}
    if confluent is not None:
        by_format["avro"] = confluent
    if plain is not None:
        by_format["avro-plain"] = plain
    return TopicDecoder(settings, by_format, confluent)
