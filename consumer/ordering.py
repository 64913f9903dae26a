"""Event-time order across partitions, for topics not keyed by user; duplicate merges.

Kafka orders one partition only. When one user's events come from several partitions (a
producer that does not key by user: Segment's Kafka destination writes round robin), the
sink's per-user order, which is its consume order, is no longer the order the events
happened in. :class:`EventOrder` sits in front of the planner (and of a backfill's held users)
and hands ops on in event-time order (the event's ``timestamp``, else ``originalTimestamp``,
else the Kafka record's timestamp, else when it was read; ties: the order they were read in):

* **exact** (a backfill, ``--until-end``): every op waits until no partition of its topic can
  still bring an earlier one: each of them has a later op waiting, has already given one at or
  after its time, or is read to its end target. A k-way merge of the partitions by event time,
  stable within a partition, so it is exact when each partition is in event-time order (what a
  producer appending as it goes writes, round robin included). A partition far ahead of the
  others is paused until they catch up, so what waits here stays bounded.
  A topic keyed by user does not need it, and reading its partitions one at a time lets a
  backfill send the users of a finished partition while it reads the next (see
  :mod:`consumer.holding`): so a topic whose first :data:`KEYED_AFTER` records each carry
  their user's id as key counts as keyed, and its ops go on as read.
* **window** (``run``): only ops of users seen on more than one partition of a topic
  (:class:`~consumer.keying.KeyWatch`), or of anything an op waiting here touches, wait; every
  other op goes on at once, so a topic keyed by user pays nothing. A waiting op goes on as soon
  as the merge's condition holds among the partitions seen so far, or once the topic has read
  an event ``lateness`` seconds newer, or ``lateness`` seconds after it was read, whichever
  comes first.

An op older than one its user already had handed on (a straggler: beyond the window, or out of
order within its own partition) goes on in arrival order, and is counted (``on_late``).

Ops touching one entity are handed on in the order they leave here, and an op waits while
anything it touches has an op waiting, so a merge (alias) keeps its place among the
identifies of both its users.

**Duplicate merges.** Segment retries whole batches, so an alias can arrive twice with one
``messageId``. A merge is not idempotent (``a`` merged into ``b``, ``a`` identified again, the
repeat merges the new ``a`` away), so :class:`RecentIds` remembers the ``messageId`` of the
last merges taken in, with their position: the same id at another position is a duplicate and
is skipped; at the same position it is that event read again (a rewind, a revoke) and goes on.

No I/O and no threads: the loop's thread owns it; time comes from the ``clock`` argument.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from .config import Settings
from .events import parse_timestamp
from .keying import KeyWatch
from .metrics import Metrics
from .ops import Identify, Merge, Op, entities
from .plan import Pending
from .records import Partition

log = logging.getLogger("knock_sink.ordering")

#: Remembered per user: the event time of its last op handed on (bounded like the KeyWatch).
REMEMBERED = 100_000
#: Exact mode: records whose Kafka key is the id of the user their ops touch, in a row, after
#: which a topic counts as keyed by user (Kafka's partitioner sends one key to one partition, so
#: one user's events are in one partition, in order) and its ops go on as read. One record
#: with another key, or none (Segment's round robin), and the topic is ordered by event time.
KEYED_AFTER = 1_000


def event_time(raw: object, kafka_ms: int | None, seen: float) -> float:
    """Seconds since the epoch an event is ordered by: its raw ``timestamp`` (or
    ``originalTimestamp``, see :attr:`consumer.events.Event.raw_time`), else the Kafka
    record's timestamp, else ``seen`` (when it was read)."""
    parsed = parse_timestamp(raw) if raw is not None else None
    if parsed is not None:
        return parsed.timestamp()
    if kafka_ms:
        return kafka_ms / 1000
    return seen


def users_of(ops: Iterable[Op]) -> tuple[str, ...]:
    """Every entity the ops of one event touch."""
    return tuple(u for op in ops for u in entities(op))


class RecentIds:
    """The ``messageId`` of the last ``size`` merges taken in, with the position each came from."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[str, tuple[Partition, int]] = OrderedDict()

    def duplicate(self, message_id: str | None, tp: Partition, offset: int) -> bool:
        """Whether a merge with ``message_id`` at ``tp``/``offset`` repeats one taken in from
        elsewhere; if not, it is remembered."""
        if message_id is None or self._size <= 0:
            return False
        ids = self._ids
        where = ids.get(message_id)
        if where is not None:
            ids.move_to_end(message_id)
            return where != (tp, offset)
        ids[message_id] = (tp, offset)
        if len(ids) > self._size:
            ids.popitem(last=False)
        return False


class _Unit:
    __slots__ = ("at", "item", "n", "time", "tp", "users")

    def __init__(
        self, time: float, n: int, tp: Partition, users: tuple[str, ...], item: Any, at: float
    ) -> None:
        self.time, self.n, self.tp, self.users, self.item, self.at = time, n, tp, users, item, at


class EventOrder:
    """Holds ops until their event-time order is known; see the module docstring.

    :param release: called with each item as it leaves, in order.
    :param ends: exact mode (a backfill): each partition's end target; ``None``: window mode.
    :param lateness: window mode: seconds an op waits at most (0: nothing waits, arrival order).
    :param split: window mode: whether a user has been seen on more than one partition of a topic.
    :param positions: exact mode: the consumer's position of partitions (one past the last
        record handed over), to find those read to their end when their last events had no op.
    :param limit: exact mode: ops waiting before partitions far ahead are paused.
    :param pause, resume: pause and resume fetching partitions (the loop's).
    :param may_resume: whether a partition this paused may be resumed (not held by another stage).
    """

    def __init__(
        self,
        release: Callable[[Any], None],
        *,
        ends: dict[Partition, int] | None = None,
        lateness: float = 5.0,
        split: Callable[[str, str], bool] = lambda user, topic: False,
        positions: Callable[[list[Partition]], dict[Partition, int]] = lambda tps: {},
        limit: int = 10_000,
        pause: Callable[[list[Partition]], None] = lambda tps: None,
        resume: Callable[[list[Partition]], None] = lambda tps: None,
        may_resume: Callable[[Partition], bool] = lambda tp: True,
        on_late: Callable[[], object] = lambda: None,
        clock: Callable[[], float],
    ) -> None:
        self._release = release
        self._ends = ends
        self._lateness = lateness
        self._split = split
        self._positions = positions
        self._limit = limit
        self._pause, self._resume, self._may_resume = pause, resume, may_resume
        self._on_late = on_late
        self._clock = clock
        self._n = 0
        # topic -> partition -> ops waiting, in the order read
        self._queues: dict[str, dict[Partition, deque[_Unit]]] = {}
        self._waiting = 0
        #: entity -> ops waiting that touch it
        self._touched: Counter[str] = Counter()
        #: partition -> the latest event time of an op read there; topic -> the newest of them
        self._last: dict[Partition, float] = {}
        self._newest: dict[str, float] = {}
        #: partition -> one past the last offset read there (exact mode)
        self._read: dict[Partition, int] = {}
        self._finished: set[Partition] = set()
        self._paused: set[Partition] = set()
        #: topics where a user was seen on several partitions (window mode: times are read)
        self._unkeyed: set[str] = set()
        self._handed: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._flushed = False
        #: exact mode: topic -> keyed by user (absent: not judged yet), records judged so far
        self._keyed: dict[str, bool] = {}
        self._judged: Counter[str] = Counter()
        self._warned: set[str] = set()
        self._parts: dict[str, list[Partition]] = {}
        if ends is not None:
            for tp in ends:
                self._parts.setdefault(tp[0], []).append(tp)

    @property
    def exact(self) -> bool:
        return self._ends is not None

    def __len__(self) -> int:
        """Ops waiting."""
        return self._waiting

    # -- intake ----------------------------------------------------------------------------

    def keyed(self, topic: str) -> bool:
        """Exact mode: whether ``topic`` counts as keyed by user (see :data:`KEYED_AFTER`)."""
        return self._keyed.get(topic) is True

    def add(
        self,
        item: Any,
        tp: Partition,
        offset: int,
        users: tuple[str, ...],
        time: Callable[[], float],
    ) -> None:
        """Take in one item (an op, or an event's ops) read at ``tp``/``offset``, touching
        ``users`` (entities); ``time`` gives its event time (asked only when it matters). An
        item that goes on as read (:meth:`as_read`'s verdict) goes on at once. A caller that
        has a record's key asks :meth:`as_read` first: in exact mode only it judges whether
        the topic is keyed by user, and an item it lets through needs no handle nor time."""
        if self._goes_on(tp[0], users):
            self._release(item)
            return
        if self._ends is None:
            self._add_windowed(item, tp, users, time)
            return
        t = time()
        self._read[tp] = max(self._read.get(tp, 0), offset + 1)
        self._note(tp, t)
        if self._late(users, t, tp[0]):
            self._on_late()
        self._queue(item, tp, users, t)

    def as_read(
        self, tp: Partition, offset: int, users: tuple[str, ...], key: bytes | None
    ) -> bool:
        """Whether the ops of the record at ``tp``/``offset``, touching ``users``, with Kafka
        ``key``, go on as read, without waiting here nor their time being read (ask once per
        record, before :meth:`add`):

        * window mode: while no user of its topic has been seen on several partitions, nor any
          of ``users`` now (a topic keyed by user pays nothing), or once the sink is stopping;
        * exact mode: once its topic counts as keyed by user; this record is judged too
          (records whose ops touch no user, tenants and objects, are not).
        """
        if self._ends is not None:
            self._judge(tp, offset, users, key)
        return self._goes_on(tp[0], users)

    def _goes_on(self, topic: str, users: tuple[str, ...]) -> bool:
        """The verdict of :meth:`as_read` as it stands, without judging a record (what
        :meth:`add` consults)."""
        if self._ends is not None:
            return self._keyed.get(topic) is True
        if self._flushed:
            return True  # stopping: nothing waits any more
        if topic in self._unkeyed:
            return False
        if self._lateness > 0:
            split = self._split
            for u in users:
                if split(u, topic):
                    return False
        return True

    def _judge(self, tp: Partition, offset: int, users: tuple[str, ...], key: bytes | None) -> None:
        """Exact mode: one more record of ``tp``'s topic judged for :data:`KEYED_AFTER`; once it
        counts as keyed, what waited of it goes on, in the order so far."""
        topic = tp[0]
        verdict = self._keyed.get(topic)
        if verdict is False:
            return
        people = (
            users if len(users) == 1 and "/" not in users[0] else [u for u in users if "/" not in u]
        )
        if not people:
            return
        matches = key is not None and key.decode("utf-8", "replace") in people
        if verdict:
            if not matches and topic not in self._warned:
                self._warned.add(topic)
                log.warning(
                    "topic %s was taken as keyed by user (its first %d records carry their "
                    "user's id as key), but %s[%d]@%d does not: users whose events are on "
                    "several partitions are applied in the order read",
                    topic,
                    KEYED_AFTER,
                    tp[0],
                    tp[1],
                    offset,
                )
            return
        if not matches:
            self._keyed[topic] = False
            log.info(
                "topic %s is not keyed by user (%s[%d]@%d): a backfill applies each user's "
                "events in event-time order across partitions",
                topic,
                tp[0],
                tp[1],
                offset,
            )
            return
        self._judged[topic] += 1
        if self._judged[topic] < KEYED_AFTER:
            return
        self._keyed[topic] = True
        log.info("topic %s is keyed by user: a backfill reads its partitions one at a time", topic)
        queues = self._queues.get(topic)
        if queues:  # what waited goes on, in the order so far
            self._release_topic(topic, queues, self._clock(), flush=True)

    def _add_windowed(
        self, item: Any, tp: Partition, users: tuple[str, ...], time: Callable[[], float]
    ) -> None:
        # Only when it does not go on as read: its topic is unkeyed, or one of its users split.
        topic = tp[0]
        touched = self._touched
        split = self._lateness > 0 and any(self._split(u, topic) for u in users)
        if split:
            self._unkeyed.add(topic)
        t = time()
        self._note(tp, t)
        waits = any(touched[u] for u in users) if touched else False
        if self._late(users, t, topic):
            self._on_late()
            if not waits:
                self._hand(users, t, topic)
                self._release(item)
                return
        if split or waits:
            self._queue(item, tp, users, t)
        else:
            self._hand(users, t, topic)
            self._release(item)

    def _note(self, tp: Partition, t: float) -> None:
        if t > self._last.get(tp, float("-inf")):
            self._last[tp] = t
        if t > self._newest.get(tp[0], float("-inf")):
            self._newest[tp[0]] = t
        if self._ends is None and tp not in self._parts.setdefault(tp[0], []):
            self._parts[tp[0]].append(tp)

    def _late(self, users: tuple[str, ...], t: float, topic: str) -> bool:
        handed = self._handed
        return any(handed.get((topic, u), t) > t for u in users)

    def _queue(self, item: Any, tp: Partition, users: tuple[str, ...], t: float) -> None:
        self._n += 1
        unit = _Unit(t, self._n, tp, users, item, self._clock())
        self._queues.setdefault(tp[0], {}).setdefault(tp, deque()).append(unit)
        self._waiting += 1
        for u in users:
            self._touched[u] += 1

    # -- handing on ------------------------------------------------------------------------

    def step(self, *, flush: bool = False) -> None:
        """Hand on every op whose turn has come; in exact mode, pause partitions far ahead and
        resume them once the others caught up. ``flush`` (window mode: the sink stops): every
        op waiting goes on now, in the order so far."""
        if flush and self._ends is None:
            self._flushed = True  # stopping: nothing waits any more, what comes goes on
        if not self._waiting:
            if self._paused:
                self._resume_all()
            return
        now = self._clock()
        flush = flush and self._ends is None
        for topic, queues in self._queues.items():
            self._release_topic(topic, queues, now, flush)
        if self._ends is not None:
            self._balance()

    def _release_topic(
        self, topic: str, queues: dict[Partition, deque[_Unit]], now: float, flush: bool
    ) -> None:
        asked = False
        while True:
            best: _Unit | None = None
            for q in queues.values():
                if q:
                    head = q[0]
                    if (
                        best is None
                        or head.time < best.time
                        or (head.time == best.time and head.n < best.n)
                    ):
                        best = head
            if best is None:
                return
            if not flush and not self._turn(topic, queues, best, now):
                if asked or self._ends is None:
                    return
                # Partitions whose last records had no op: the consumer's position says
                # whether they are read to their end.
                asked = True
                self._check_finished(topic)
                if not self._turn(topic, queues, best, now):
                    return
            queues[best.tp].popleft()
            self._waiting -= 1
            for u in best.users:
                left = self._touched[u] - 1
                if left:
                    self._touched[u] = left
                else:
                    del self._touched[u]
            self._hand(best.users, best.time, topic)
            self._release(best.item)

    def _turn(
        self, topic: str, queues: dict[Partition, deque[_Unit]], best: _Unit, now: float
    ) -> bool:
        """Whether no partition of ``topic`` can still bring an op earlier than ``best``."""
        if self._ends is None:
            late = self._lateness
            if best.time + late <= self._newest.get(topic, best.time) or now - best.at >= late:
                return True
        t = best.time
        for tp in self._parts.get(topic, ()):
            if tp == best.tp or tp in self._finished:
                continue
            q = queues.get(tp)
            if q or self._last.get(tp, float("-inf")) >= t:
                continue
            if self._ends is not None and self._read.get(tp, 0) >= self._ends[tp]:
                self._finished.add(tp)
                continue
            return False
        return True

    def _check_finished(self, topic: str) -> None:
        assert self._ends is not None
        open_ = [tp for tp in self._parts.get(topic, ()) if tp not in self._finished]
        if not open_:
            return
        for tp, position in self._positions(open_).items():
            if position >= self._ends.get(tp, position + 1):
                self._finished.add(tp)

    def _hand(self, users: tuple[str, ...], t: float, topic: str) -> None:
        handed = self._handed
        for u in users:
            key = (topic, u)
            if handed.get(key, float("-inf")) < t:
                handed[key] = t
            handed.move_to_end(key)
        while len(handed) > REMEMBERED:
            handed.popitem(last=False)

    def _balance(self) -> None:
        """Pause a partition holding more than its share of the ops waiting here (it is ahead:
        the others must bring theirs first); resume it at half its share. A whole pause of the
        consumer resumes every partition, so the pause is said again while it holds."""
        for topic, queues in self._queues.items():
            share = max(1, self._limit // max(1, len(self._parts.get(topic, ()))))
            for tp, q in queues.items():
                if len(q) > share:
                    self._paused.add(tp)
                    self._pause([tp])
                elif tp in self._paused and len(q) <= share // 2:
                    self._paused.discard(tp)
                    if self._may_resume(tp):
                        self._resume([tp])

    def _resume_all(self) -> None:
        back = [tp for tp in self._paused if self._may_resume(tp)]
        self._paused.clear()
        if back:
            self._resume(back)

    def drop(self, gone: Iterable[Partition]) -> list[Any]:
        """Forget the partitions ``gone`` (revoked, lost, rewound): their waiting items are
        dropped and returned; the others' turns no longer wait for them."""
        out: list[Any] = []
        for tp in gone:
            queues = self._queues.get(tp[0], {})
            for unit in queues.pop(tp, ()):
                out.append(unit.item)
                self._waiting -= 1
                for u in unit.users:
                    self._touched[u] -= 1
                    if self._touched[u] <= 0:
                        del self._touched[u]
            self._last.pop(tp, None)
            self._read.pop(tp, None)
            self._paused.discard(tp)
            if self._ends is None and tp in self._parts.get(tp[0], ()):
                self._parts[tp[0]].remove(tp)
        return out


class PendingOrder:
    """The intake's side of :class:`EventOrder`: each consumed :class:`~consumer.plan.Pending`
    (its ``seq`` set as it leaves, so the planner's consume order is the event-time order),
    and merges repeating a ``messageId`` skipped: a live sink's window (a backfill orders in
    :mod:`consumer.holding`).

    :param add: the planner's ``add``.
    :param next_seq: the loop's sequence of pending numbers.
    :param keys: the loop's watch of users seen on several partitions.
    :param may_resume: whether a partition may be resumed (not waiting for the registry).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        add: Callable[[Pending], None],
        next_seq: Callable[[], int],
        keys: KeyWatch,
        metrics: Metrics,
        pause: Callable[[list[Partition]], None],
        resume: Callable[[list[Partition]], None],
        may_resume: Callable[[Partition], bool],
        clock: Callable[[], float],
    ) -> None:
        self._add, self._next_seq = add, next_seq
        self._keys = keys
        self._lateness = settings.sink.lateness
        self._metrics = metrics
        self.order = EventOrder(
            self._hand_on,
            lateness=self._lateness,
            split=keys.split,
            on_late=metrics.late_events.inc,
            pause=pause,
            resume=resume,
            may_resume=may_resume,
            clock=clock,
        )
        size = settings.sink.merge_ids
        self._merges = RecentIds(size) if size else None

    def _hand_on(self, p: Pending) -> None:
        p.seq = self._next_seq()
        self._add(p)

    def repeats(self, op: Op, tp: Partition, offset: int) -> bool:
        """Whether ``op``, read at ``tp``/``offset``, is a merge repeating the ``messageId`` of
        one taken in from elsewhere (counted); if not, a merge is remembered."""
        if op.__class__ is not Merge or self._merges is None:
            return False
        if not self._merges.duplicate(op.message_id, tp, offset):  # type: ignore[union-attr]
            return False
        self._metrics.duplicate_merges.inc()
        return True

    def add(self, p: Pending, key: bytes | None = None) -> None:
        """Take in a consumed op (``p.source``: its tracker handle, held for it) of a record
        with Kafka ``key``."""
        op, h = p.op, p.source
        tp = h.partition
        cls = op.__class__
        if cls is Identify:
            users: tuple[str, ...] = (op.user_id,)  # type: ignore[union-attr]
        else:
            if cls is Merge:
                if self.repeats(op, tp, h.offset):
                    h.release()
                    return
                # The intake saw its target; a merge relates both.
                self._keys.seen(op.from_user_id, tp)  # type: ignore[union-attr]
            users = entities(op)
        order = self.order
        if order.as_read(tp, h.offset, users, key):
            p.seq = self._next_seq()
            self._add(p)
            return
        order.add(p, tp, h.offset, users, lambda: event_time(h.event_ts, h.kafka_ms, h.seen))

    def step(self, *, flush: bool = False) -> None:
        self.order.step(flush=flush)

    def drop(self, gone: Iterable[Partition]) -> None:
        self.order.drop(gone)
