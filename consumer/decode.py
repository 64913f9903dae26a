"""Decode step: the bytes of a Kafka value into a JSON-shaped Python value.

A decoder is any object with ``decode(value: bytes | None) -> object`` that raises
:class:`~consumer.errors.InvalidEvent` for a value it cannot read. The sink holds one decoder and
never looks inside it, so Avro (or anything else) swaps in without touching the rest.
"""

from __future__ import annotations

from typing import Protocol

import orjson

from .errors import InvalidEvent


class Decoder(Protocol):
    def decode(self, value: bytes | None) -> object:
        """Return the decoded value; raise :class:`InvalidEvent` with kind ``undecodable``."""
        ...


class JsonDecoder:
    """UTF-8 JSON values (Segment's own Kafka destination writes nothing else)."""

    def decode(self, value: bytes | None) -> object:
        if value is None:
            # A tombstone carries no event; dead-lettering it keeps the rule "nothing dropped
            # silently" without guessing what a null value meant to the producer.
            raise InvalidEvent("undecodable", "empty value (tombstone)")
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("undecodable", f"invalid JSON: {exc}") from None
