"""Stalled partitions: records whose decoding waits for the Schema Registry to answer.

A :class:`~consumer.errors.RegistryUnavailable` says nothing about the event: the registry
was away when its writer schema was needed. Dead-lettering it would lose a good event, and
skipping it would let the commit run past it. So the record is kept, tracked and unresolved
(the tracker commits nothing past it), together with every later record of its partition
(their order is the partition's order), and the partition is paused while the loop goes on
polling (group membership, other partitions). Decoding is retried with
:class:`~consumer.retry.Backoff` until the registry answers.

One registry serves every partition, so one backoff series is shared: a retry goes first to
the oldest stalled record of each partition, and the series restarts once one answers.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable

from .errors import FatalRegistryError, RegistryError
from .handles import EventHandle
from .records import Partition, Record
from .retry import Backoff

log = logging.getLogger("knock_sink.stalls")

#: A lookup is one small GET and the partition waits on it: retry soon, and never more than
#: 5 s after the registry is back (Knock's 30 s cap is about its rate limits, not ours).
REGISTRY_BACKOFF = Backoff(base=0.2, cap=5.0)

#: ``process(record, handle)``: decode, map and hand on one record; raises
#: :class:`RegistryError` when it must wait (the handle is then still held).
Process = Callable[[Record, EventHandle], None]


class Stalls:
    """The records each stalled partition holds back, oldest first.

    :param pause: called with partitions to stop fetching; ``resume`` with partitions to fetch
        again (both best effort: correctness rests on every later record being queued here).
    :param on_wait: called for each decode attempt that found the registry away.
    """

    def __init__(
        self,
        backoff: Backoff,
        *,
        clock: Callable[[], float],
        pause: Callable[[list[Partition]], None],
        resume: Callable[[list[Partition]], None],
        on_wait: Callable[[], object] = lambda: None,
    ) -> None:
        self._backoff = backoff
        self._clock = clock
        self._pause = pause
        self._resume = resume
        self._held: dict[Partition, deque[tuple[Record, EventHandle]]] = {}
        self._attempt = 0
        self._next_try = 0.0
        #: Called for each decode attempt that found the registry away (the metrics count it).
        self._on_wait = on_wait
        #: Set once the registry refused us (401/403, not a registry): the sink stops fetching,
        #: applies what it mapped before, and exits; the held records wait for the next run.
        self.fatal: FatalRegistryError | None = None

    def __len__(self) -> int:
        return sum(len(q) for q in self._held.values())

    def holds(self, tp: Partition) -> bool:
        """True when ``tp`` is stalled: its next records must queue behind the held one."""
        return tp in self._held

    def keep(self, record: Record, handle: EventHandle) -> None:
        """Queue a later record of a stalled partition, in order."""
        self._held[(record.topic, record.partition)].append((record, handle))

    def stall(self, record: Record, handle: EventHandle, exc: RegistryError) -> None:
        """``record`` could not be decoded for want of the registry: hold its partition."""
        tp = (record.topic, record.partition)
        if tp not in self._held:
            self._held[tp] = deque()
            self._pause([tp])
        self._held[tp].appendleft((record, handle))
        self._failed(exc)

    def retry(self, process: Process) -> None:
        """When the backoff has elapsed, process each stalled partition's records in order
        until the registry fails again; resume the partitions that emptied."""
        if not self._held or self.fatal is not None or self._clock() < self._next_try:
            return
        failed: RegistryError | None = None
        for tp in list(self._held):
            queue = self._held[tp]
            while queue and failed is None:
                record, handle = queue.popleft()
                try:
                    process(record, handle)
                except RegistryError as exc:
                    queue.appendleft((record, handle))
                    failed = exc
            if not queue:
                del self._held[tp]
                self._resume([tp])
        if failed is not None:
            self._failed(failed)
        else:
            if self._attempt:
                log.info("schema registry answers again: stalled partitions resumed")
            self._attempt = 0

    def drop(self, tps: Iterable[Partition]) -> None:
        """Forget the records of ``tps`` (revoked, lost, rewound: they will be read again)."""
        for tp in tps:
            self._held.pop(tp, None)

    def _failed(self, exc: RegistryError) -> None:
        if isinstance(exc, FatalRegistryError):
            self.fatal = self.fatal or exc
            return
        self._on_wait()
        delay = self._backoff.delay(self._attempt)
        if self._attempt == 0:
            log.warning(
                "schema registry unavailable, holding %d partition(s) and retrying: %s",
                len(self._held),
                exc,
            )
        self._attempt += 1
        self._next_try = self._clock() + delay
