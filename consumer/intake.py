"""The live stage: each consumed record tracked, mapped, and its ops queued as they are read.

:class:`Intake` is the :class:`~consumer.stage.Stage` of ``run``: for each
:class:`~consumer.records.Record` it takes an :class:`~consumer.handles.EventHandle` from the
tracker, maps the record (:class:`~consumer.ingest.Ingest`, shared with a backfill) and queues
each op with :class:`~consumer.dispatch.Dispatch`, or parks the record with the dead letters. It
also keeps what belongs to that step:

* records waiting for the Schema Registry hold their partition (:class:`~consumer.stalls.Stalls`);
* users seen on more than one partition are noticed (:class:`~consumer.keying.KeyWatch`), and
  their ops handed on in event-time order, merges repeating a ``messageId`` skipped
  (:mod:`consumer.ordering`).

The loop's thread owns it: not thread-safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .config import Settings
from .deadletter import DeadLetters
from .dispatch import Dispatch
from .errors import FatalRegistryError, InvalidEvent, RegistryError
from .fetch import FetchControl
from .handles import EventHandle
from .ingest import Ingest
from .keying import KeyWatch
from .metrics import Metrics
from .ordering import PendingOrder
from .plan import Pending
from .records import Partition, Record
from .stalls import REGISTRY_BACKOFF, Stalls
from .tracker import OffsetTracker

log = logging.getLogger("knock_sink")

#: Why a stalled partition is held back (see :class:`~consumer.fetch.FetchControl`).
REGISTRY = "registry"
#: Why a partition far ahead in the event-time order is held back.
ORDER = "order"


class Intake:
    """Records in, ops queued with ``dispatch`` (or records parked with ``dlq``).

    :param ingest: the record-to-ops step (shared with a backfill).
    :param tracker: the loop's tracker: a handle per record of an owned partition.
    :param fetch: the loop's fetch control: stalled partitions and those far ahead in the
        event-time order are held back there.
    :param positions: the consumer's positions (:meth:`~consumer.records.Source.positions`),
        taken after each batch as how far the owned partitions are read (see
        :meth:`~consumer.tracker.OffsetTracker.read_to`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        ingest: Ingest,
        dispatch: Dispatch,
        tracker: OffsetTracker,
        dlq: DeadLetters,
        fetch: FetchControl,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        positions: Callable[[list[Partition]], dict[Partition, int]] | None = None,
    ) -> None:
        self._ingest = ingest
        self._positions = positions
        self._dispatch = dispatch
        self._tracker = tracker
        self._dlq = dlq
        self._fetch = fetch
        self._keys = KeyWatch(clock=clock, on_split=metrics.users_on_several_partitions.inc)
        self._stalls = Stalls(
            REGISTRY_BACKOFF,
            clock=clock,
            pause=fetch.holder(REGISTRY),
            resume=fetch.releaser(REGISTRY),
            on_wait=metrics.retries.labels("registry").inc,
        )
        #: Topics not keyed by user: ops in event-time order across partitions, repeated
        #: merges skipped.
        self._order = PendingOrder(
            settings,
            add=dispatch.add,
            next_seq=dispatch.next_seq,
            keys=self._keys,
            metrics=metrics,
            pause=fetch.holder(ORDER),
            resume=fetch.releaser(ORDER),
            may_resume=lambda tp: True,  # the fetch control keeps a stalled partition held
            clock=clock,
        )

    @property
    def fatal(self) -> FatalRegistryError | None:
        return self._stalls.fatal

    # -- the stage's verbs -------------------------------------------------------------------

    def poll(self) -> None:
        """Process the records waiting for the registry, when their backoff has elapsed."""
        self._stalls.retry(self._process)

    def submit(self, records: list[Record]) -> None:
        """Track and process ``records``, in order."""
        tracker = self._tracker
        seen = time.time()  # wall time, once a batch: the freshness metrics compare it to stamps
        stalls, process = self._stalls, self._process
        for rec in records:
            tp = (rec.topic, rec.partition)
            partition = tracker.partition(tp)
            if partition is None:
                continue  # fetched just before its partition was revoked: the new owner reads it
            offset = rec.offset
            if not partition.accepts(offset):
                # The consumer went back (a partition revoked and given back within one
                # fetch, a reset): the events from here on come again, so start the
                # partition afresh.
                log.info(
                    "%s[%d] rewound to %d: reading it again",
                    tp[0],
                    tp[1],
                    offset,
                    extra={"topic": tp[0], "partition": tp[1], "offset": offset},
                )
                self._rewound(tp)
                partition = tracker.partition(tp)
                assert partition is not None
            handle = EventHandle.track(partition, offset)
            if stalls.holds(tp):
                stalls.keep(rec, handle)  # behind a record waiting for the registry
                continue
            try:
                process(rec, handle, seen, tp)
            except RegistryError as exc:
                stalls.stall(rec, handle, exc)
        self._ingest.counted(len(records))
        if self._positions is not None:
            # Every record delivered is tracked by now, so the position vouches for the
            # transaction markers and aborted records in between, never delivered. After an
            # empty batch too: the position may pass the final marker only after the last
            # record came. Not in a rebalance callback: those run inside consume, when the
            # position is already past records of the batch not yet tracked.
            tracker.read_to(self._positions(tracker.owned()))

    def feed(self) -> None:
        """Hand on the ops whose event-time turn has come."""
        self._order.step()

    def holds_back(self, now: float) -> bool:
        return False

    def committable(self) -> dict[Partition, int]:
        return self._tracker.committable()

    def mark_committed(self, positions: dict[Partition, int]) -> None:
        self._tracker.mark_committed(positions)

    def forget(self, gone: set[Partition]) -> bool:
        """Forget the records held back for ``gone``, and their ops waiting for their
        event-time turn, and let them fetch again (a rewound partition is read afresh); the
        run goes on."""
        tps = list(gone)
        self._stalls.drop(tps)
        self._order.drop(tps)
        self._fetch.release(REGISTRY, tps)
        self._fetch.release(ORDER, tps)
        return False

    def flush(self) -> None:
        """Every op waiting for its event-time turn goes on now."""
        self._order.step(flush=True)

    def close(self) -> None:
        pass

    # -- the per-event path ------------------------------------------------------------------

    def _rewound(self, tp: Partition) -> None:
        """Start ``tp`` afresh: what was read of it comes again."""
        self.forget({tp})
        self._dispatch.drop(lambda p: p.source.partition == tp)
        self._tracker.restart(tp)

    def _process(
        self,
        rec: Record,
        handle: EventHandle,
        seen: float | None = None,
        tp: Partition | None = None,
    ) -> None:
        """Map one tracked record (read at wall time ``seen``, default now; ``tp``: its
        partition, when the caller has it); queue its ops or park it. Raises
        :class:`RegistryError` with the handle still held (the record must wait)."""
        if tp is None:
            tp = (rec.topic, rec.partition)
        ingest = self._ingest
        try:
            mapped, stamp, kind = ingest.map_record(rec)
        except InvalidEvent as exc:
            self._dlq.park(handle, exc.kind, exc.reason, rec)
            ingest.count_invalid()
            handle.release()
            return
        ops = mapped.ops
        ingest.count(kind, mapped)
        self._dispatch.check_key(tp[0], rec.key, ops)
        if not ops:
            handle.release()  # zero-op events resolve here
            return
        handle.stamp(time.time() if seen is None else seen, rec.timestamp, stamp)
        key, seen_on, add = rec.key, self._keys.seen, self._order.add
        last = len(ops) - 1
        for i, op in enumerate(ops):
            user = getattr(op, "user_id", None)
            if user is not None:
                seen_on(user, tp)
            if i < last:
                handle.hold()
            # The last op takes over the intake's own hold (no hold and release of it).
            add(Pending(0, op, handle, tp), key)  # numbered as it leaves the order
