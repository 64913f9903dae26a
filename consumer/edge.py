"""The Kafka edge of one sink run: the three Kafka clients the loop uses, built from the Kafka
settings (see :class:`consumer.records.Edge`, which the tests' in-memory edge also implements).

Its own module because it ties the first step of the path (the consumer, :mod:`consumer.source`)
to the last (the dead-letter producer and the reader of rejected events,
:mod:`consumer.deadletter`): the source itself imports nothing that comes after it.
"""

from __future__ import annotations

from .config import KafkaSettings
from .deadletter import KafkaWriter, Originals
from .records import RebalanceCallback, Replay
from .source import KafkaSource


class KafkaEdge:
    """The Kafka clients of one sink run (see :class:`consumer.records.Edge`): the subscribed
    consumer, the dead-letter producer, and the consumer that reads rejected events back."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings

    def source(
        self,
        *,
        on_assign: RebalanceCallback,
        on_revoke: RebalanceCallback,
        on_lost: RebalanceCallback,
        from_beginning: bool,
        replay: Replay | None = None,
    ) -> KafkaSource:
        return KafkaSource(
            self._settings,
            on_assign=on_assign,
            on_revoke=on_revoke,
            on_lost=on_lost,
            from_beginning=from_beginning,
            replay=replay,
        )

    def writer(self) -> KafkaWriter:
        return KafkaWriter(self._settings)

    def reader(self) -> Originals:
        return Originals(self._settings)
