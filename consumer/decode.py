"""Decode step: the bytes of a Kafka value into a JSON-shaped Python value.

A decoder is any object with ``decode(value: bytes | None, topic: str | None = None) -> object``
that raises :class:`~consumer.errors.InvalidEvent` for a value it cannot read (``topic`` is the
record's topic, for decoders whose format is set per topic: :func:`consumer.avro.decoder_for`),
and ``check() -> bool``, its start-up check (False: a service it needs does not answer yet).
The sink holds one decoder and never looks inside it, so Avro (or anything else) swaps in
without touching the rest.
:class:`SizeLimit` puts the rule every format shares in front of it: a value above
``kafka.max_message_bytes`` is not decoded at all.

A decoder may also offer ``for_topic(topic) -> Callable[[bytes | None], object]``: one topic's
decode, looked up once. The intake decodes through it (:meth:`SizeLimit.for_topic`), so a plain
JSON value of an ``auto`` topic costs two Python calls around ``orjson.loads`` (the size check,
the Avro-or-JSON test) rather than four layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import orjson

from .errors import InvalidEvent


class Decoder(Protocol):
    def decode(self, value: bytes | None, topic: str | None = None) -> object:
        """Return the decoded value; raise :class:`InvalidEvent` with kind ``undecodable``."""
        ...

    def check(self) -> bool:
        """Whether what the decoder needs answers (raise :class:`~consumer.errors.ConfigError`
        when it refuses the configuration)."""
        ...


def json_value(value: bytes | None) -> object:
    """A UTF-8 JSON value (:class:`JsonDecoder`'s decode, as a plain function)."""
    if value is None:
        # A tombstone carries no event; dead-lettering it keeps the rule "nothing dropped
        # silently" without guessing what a null value meant to the producer.
        raise InvalidEvent("undecodable", "empty value (tombstone)")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise invalid_json(exc) from None


def invalid_json(exc: orjson.JSONDecodeError) -> InvalidEvent:
    """The error of a value ``orjson.loads`` refused (one reason wherever JSON is decoded)."""
    return InvalidEvent("undecodable", f"invalid JSON: {exc}")


class JsonDecoder:
    """UTF-8 JSON values (Segment's own Kafka destination writes nothing else)."""

    def decode(self, value: bytes | None, topic: str | None = None) -> object:
        return json_value(value)

    def for_topic(self, topic: str | None) -> Callable[[bytes | None], object]:
        return json_value

    def check(self) -> bool:
        return True


class SizeLimit:
    """``decoder`` behind a size check: a value above ``max_bytes`` is ``oversize`` unread (a
    huge value is more likely a producer's bug than an event, and parsing it costs the loop)."""

    def __init__(self, decoder: Decoder, max_bytes: int) -> None:
        self._decoder = decoder
        self._max = max_bytes

    def decode(self, value: bytes | None, topic: str | None = None) -> object:
        if value is not None and len(value) > self._max:
            raise InvalidEvent("oversize", f"{len(value)} bytes > {self._max}")
        return self._decoder.decode(value, topic)

    def for_topic(self, topic: str | None) -> Callable[[bytes | None], object]:
        """``topic``'s decode behind the size check, in one call (see the module docstring)."""
        inner_for = getattr(self._decoder, "for_topic", None)
        if inner_for is not None:
            inner: Callable[[bytes | None], object] = inner_for(topic)
        else:
            decoder = self._decoder

            def inner(value: bytes | None) -> object:
                return decoder.decode(value, topic)

        limit = self._max

        def decode(value: bytes | None) -> object:
            if value is not None and len(value) > limit:
                raise InvalidEvent("oversize", f"{len(value)} bytes > {limit}")
            return inner(value)

        return decode

    def check(self) -> bool:
        return self._decoder.check()
