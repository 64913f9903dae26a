"""Decode step: the bytes of a Kafka value into a JSON-shaped Python value.

A decoder (:class:`Decoder`) has three methods:

* ``decode(value: bytes | None, topic: str | None = None) -> object``, which raises
  :class:`~consumer.errors.InvalidEvent` for a value it cannot read (``topic`` is the record's
  topic, for decoders whose format is set per topic: :func:`consumer.avro.decoder_for`);
* ``for_topic(topic) -> Callable[[bytes | None], object]``: ``topic``'s decode as one plain
  function, found once. The intake keeps it per topic and calls it once per event, so a
  decoder with layers folds them here (a plain JSON value of an ``auto`` topic costs two
  Python calls around ``orjson.loads``, the size check and the Avro-or-JSON test, rather than
  four layers); one with nothing to fold returns its ``decode``, bound with the topic when it
  reads it;
* ``check() -> bool``, its start-up check (False: a service it needs does not answer yet).

The sink holds one decoder and never looks inside it, so Avro (or anything else) swaps in
without touching the rest.
:class:`SizeLimit` puts the rule every format shares in front of it: a value above
``kafka.max_message_bytes`` is not decoded at all.

JSON is ``orjson.loads`` of the whole value, though the sink reads a few fields of it. Typed
decoding with msgspec (a ``Struct`` of the fields :func:`~consumer.events.parse_event` reads,
``context`` and ``properties`` left as ``msgspec.Raw``) took 1.87 µs an event against
``orjson.loads``' 2.78 on the benchmark's events (0.71 against 1.57 on ~580 B tracks;
``bench/path.py`` corpora, 2026-12-04, msgspec 0.23), but it does not give the same results, so
it is not used: what it skips it does not check as orjson does (a skipped field holding
``1e400``, or a string of invalid UTF-8, is refused by orjson, which dead-letters the event,
and accepted by msgspec), an integer beyond 64 bits is a float from orjson and an int from
msgspec, and the rules' dot paths (:mod:`consumer.actions`) may read any field of the message.
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

    def for_topic(self, topic: str | None) -> Callable[[bytes | None], object]:
        """``topic``'s :meth:`decode` as one function of the value (see the module docstring)."""
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
        inner = self._decoder.for_topic(topic)
        limit = self._max

        def decode(value: bytes | None) -> object:
            if value is not None and len(value) > limit:
                raise InvalidEvent("oversize", f"{len(value)} bytes > {limit}")
            return inner(value)

        return decode

    def check(self) -> bool:
        return self._decoder.check()
