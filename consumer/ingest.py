"""One record to its mapped ops: the step both stages share (:mod:`consumer.intake` live,
:mod:`consumer.backfill` folding), and the count of what became of each event.

:class:`Ingest` runs a :class:`~consumer.records.Record` through the decoder (with the size limit
every format shares), :func:`~consumer.events.parse_event` and the mapping rules
(:class:`~consumer.actions.Actions`). What to do with the ops is the stage's; this module calls
nothing back. The loop's thread owns it: not thread-safe.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from .actions import Actions
from .avro import decoder_for
from .config import Settings
from .decode import Decoder, SizeLimit
from .events import parse_event
from .mapping import Mapped
from .metrics import Metrics
from .records import Record


class Ingest:
    """Decode, parse and map records; count outcomes once a batch (a Prometheus counter takes a
    lock).

    :param decoder: the value decoder (default: the topics' formats, :func:`consumer.avro.decoder_for`).
    :raises ConfigError: a format or a mapping rule is misconfigured.
    """

    def __init__(
        self, settings: Settings, metrics: Metrics, decoder: Decoder | None = None
    ) -> None:
        self._decoder = SizeLimit(
            decoder or decoder_for(settings.kafka), settings.kafka.max_message_bytes
        )
        #: Each topic's decode, size check included, looked up once (see consumer.decode).
        self._decoders: dict[str, Callable[[bytes | None], object]] = {}
        self.actions = Actions(settings)
        self._map = self.actions.map
        self._metrics = metrics
        #: Events read this batch by (type, outcome), added to the metrics once a batch.
        self._outcomes: defaultdict[tuple[str, str], int] = defaultdict(int)

    def check(self) -> bool:
        """The decoder's start-up check: False when the registry does not answer yet.

        :raises ConfigError: the registry rejects the configuration."""
        return self._decoder.check()

    def map_record(self, rec: Record) -> tuple[Mapped, object, str]:
        """Decode, parse and map one record (a tombstone, with deletes on, maps to a delete);
        also the event's raw ``timestamp`` (else ``originalTimestamp``: for the freshness
        metrics and the event-time order) and its type.

        :raises InvalidEvent: the record can never be applied.
        :raises RegistryError: its writer schema cannot be had now (or ever, when fatal).
        """
        value = rec.value
        if value is None and self.actions.tombstones:
            return self.actions.tombstone(rec.key), None, "tombstone"
        decode = self._decoders.get(rec.topic)
        if decode is None:
            decode = self._decoders[rec.topic] = self._decoder.for_topic(rec.topic)
        message = decode(value)
        event = parse_event(message)
        return self._map(event, message, rec), event.raw_time, event.type  # type: ignore[arg-type]

    def count(self, kind: str, mapped: Mapped) -> None:
        """Count an event of type ``kind`` that mapped to ``mapped``, and its notes."""
        self._outcomes[(kind, "queued" if mapped.ops else "nothing_to_send")] += 1
        for note in mapped.notes:
            self._metrics.notes.labels(note).inc()

    def count_invalid(self) -> None:
        self._outcomes[("invalid", "dead_lettered")] += 1

    def counted(self, records: int) -> None:
        """A batch of ``records`` was taken in: its outcomes go to the metrics."""
        for (kind, outcome), n in self._outcomes.items():
            self._metrics.events.labels(kind, outcome).inc(n)
        self._outcomes.clear()
        if records:
            self._metrics.consumed.inc(records)
