"""Detecting topics not keyed by user: one user's events arriving on more than one partition.

The sink keeps each user's updates in order only within a partition (Kafka's order). When a
producer does not key by user (Segment's Kafka destination without a message key writes round
robin), one user's events land on several partitions and their relative order is lost: a later
trait change can be applied before an earlier one, and the earlier one wins. Nothing in an
event says so, so this watch notices it: a counter, and a warning once, then at most every
:data:`WARN_EVERY` seconds, saying what it costs and what to do; and :meth:`KeyWatch.split`
tells :mod:`consumer.ordering` which users' updates to hold for event-time order.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from .records import Partition

log = logging.getLogger("knock_sink.keying")

#: Seconds between two warnings (the first one comes at once).
WARN_EVERY = 300.0
#: Users remembered (least recently seen forgotten first): bounded memory on any topic; a
#: user seen on two partitions within this many users is what the watch catches.
REMEMBERED = 100_000


class KeyWatch:
    """Remembers the partition each user was last seen on, per topic.

    :param on_split: called once per user found on a second partition (the metrics count it).
    """

    def __init__(self, *, clock: Callable[[], float], on_split: Callable[[], object] = lambda: None,
                 remembered: int = REMEMBERED) -> None:  # fmt: skip
        self._clock = clock
        self._on_split = on_split
        self._max = remembered
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._split: set[tuple[str, str]] = set()
        self._last_warning: float | None = None
        #: Users found on more than one partition so far (bounded like the memory).
        self.users_split = 0

    def seen(self, user_id: str, tp: Partition) -> None:
        topic, partition = tp
        key = (topic, user_id)
        memory = self._seen
        before = memory.get(key)
        if before == partition:  # the common case, once per op: seen there last time too
            memory.move_to_end(key)
            return
        memory[key] = partition
        if before is None:
            if len(memory) > self._max:
                old, _ = memory.popitem(last=False)
                self._split.discard(old)
            return
        memory.move_to_end(key)
        if key in self._split:
            return
        self._split.add(key)
        self.users_split += 1
        self._on_split()
        now = self._clock()
        if self._last_warning is None or now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            log.warning(
                "topic %s is not keyed by user: %d user(s) seen on more than one partition so "
                "far (e.g. on %s[%d] and %s[%d]). A live sink holds their updates up to "
                "sink.lateness seconds to apply them in event-time order, and applies one later "
                "than that as it arrives, so an older trait value can still overwrite a newer "
                "one. Key the topic by userId (Segment: set the Kafka destination's message key "
                "to userId), or re-key it with `knock-sink repartition` and point the sink at "
                "the keyed topic.",
                topic, self.users_split, topic, before, topic, partition,
            )  # fmt: skip

    def split(self, user_id: str, topic: str) -> bool:
        """Whether ``user_id`` has been seen on more than one partition of ``topic`` (among the
        users remembered)."""
        return (topic, user_id) in self._split
