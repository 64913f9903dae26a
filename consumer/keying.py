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
from collections.abc import Callable, Collection

from .records import Partition

log = logging.getLogger("knock_sink.keying")

#: Seconds between two warnings (the first one comes at once).
WARN_EVERY = 300.0
#: Users remembered per topic: each of the last this many users seen on a topic is (and up to
#: as many before them): bounded memory on any topic; a user seen on two partitions within
#: this many users is what the watch catches.
REMEMBERED = 100_000


def keyed_by(key: bytes | None, users: Collection[str], prefix: str = "") -> bool:
    """Whether a record's Kafka ``key`` is the id of one of ``users`` (the record's users), or,
    with ``prefix`` (``mapping.anonymous_prefix``), that id without it: an anonymous user's id
    is the prefix and its anonymousId, which producers (RudderStack) key by when there is no
    userId. The one rule of a record keyed by user, for the backfill's order and change
    detection."""
    if key is None:
        return False
    k = key.decode("utf-8", "replace")
    return k in users or (bool(prefix) and prefix + k in users)


class KeyWatch:
    """Remembers the partition each user was last seen on, per topic.

    Two generations of plain dicts rather than one least-recently-used order: the watch runs
    once per op, and the common case (a user seen on the partition it was seen on before)
    is then one lookup, with no entry to move. A generation holds :data:`REMEMBERED` users; a
    user of the older one seen again joins the recent one; when the recent one is full, the
    older one is forgotten and the recent one takes its place.

    :param on_split: called once per user found on a second partition (the metrics count it).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        on_split: Callable[[], object] = lambda: None,
        remembered: int = REMEMBERED,
    ) -> None:
        self._clock = clock
        self._on_split = on_split
        self._max = remembered
        #: topic -> user -> the partition it was last seen on: this generation, the one before
        self._recent: dict[str, dict[str, int]] = {}
        self._older: dict[str, dict[str, int]] = {}
        #: topic -> users remembered that were seen on several of its partitions
        self._split: dict[str, set[str]] = {}
        self._last_warning: float | None = None
        #: Users found on more than one partition so far (bounded like the memory).
        self.users_split = 0

    def seen(self, user_id: str, tp: Partition) -> None:
        topic, partition = tp
        recent = self._recent.get(topic)
        if recent is None:
            recent = self._recent[topic] = {}
            self._older[topic] = {}
            self._split[topic] = set()
        before = recent.get(user_id)
        if before == partition:  # the common case, once per op: seen there last time too
            return
        if before is None:
            before = self._older[topic].pop(user_id, None)
            if len(recent) >= self._max:
                self._turn(topic)
                recent = self._recent[topic]
        recent[user_id] = partition
        if before is None or before == partition:
            return
        split = self._split[topic]
        if user_id in split:
            return
        split.add(user_id)
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
                topic,
                self.users_split,
                topic,
                before,
                topic,
                partition,
            )

    def split(self, user_id: str, topic: str) -> bool:
        """Whether ``user_id`` has been seen on more than one partition of ``topic`` (among the
        users remembered)."""
        split = self._split.get(topic)
        return split is not None and user_id in split

    def _turn(self, topic: str) -> None:
        """The older generation of ``topic`` is forgotten (and whether its users were split),
        the recent one becomes the older."""
        gone = self._older[topic]
        split = self._split[topic]
        if split and gone:
            split.difference_update(gone)
        self._older[topic] = self._recent[topic]
        self._recent[topic] = {}
