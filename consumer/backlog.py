"""What a backfill holds: each user's folded state, and per partition the offsets it still owes.

Under Knock's limits a backfill is bounded by the users it sends, not by reading, so it reads
ahead and sends each user once (see :class:`consumer.flow.ReadAhead`). Held per event, that
costs a ``Pending``, a tracker ``Handle`` and the event's own dict (about 1.1 KB an event).
:class:`Backlog` holds per *user* instead: one dict of properties, folded as each identify is
read (the planner's fold rules, under the configured nested-merge mode, so the result is the
same as sending every event alone and in order), and the earliest offset of the user in each
partition where it holds events. Memory grows with the users held, not with the events read.
Users whose events all came from partitions read to their end wait to be sent *packed*, as
their JSON (:meth:`Backlog.compact`: a quarter of their size as Python objects), and leave
unpacked (:func:`unpacked`).

Commit rule: a partition's commit position is the smallest offset among its not-yet-applied
events: the earliest held offset of its held users, in memory, in flight or on disk
(:meth:`Backlog.floor`), the tracker's first unresolved offset (events on the per-event path:
dead letters, barred users), or one past the last offset read. A crash resumes from there and
re-sends only the users not yet applied (identify is idempotent).

Bounded memory: past ``memory_bytes`` of estimated held state, users in memory spill to an
SQLite file in a work directory (the standard library's, so nothing to install), until what
is left is estimated at :data:`LOW_WATER` of the budget: first the users whose events all came
from partitions read to their end (they will not change, so each goes to disk once), then the
others, oldest first. Each spilled state is a row of its own, appended: a spill reads nothing
and rewrites nothing (folding a state into the user's row at each spill, a read, a load, the
fold, a dump and a rewrite, was most of a spilling backfill's cost, since with a budget holding
a fraction of a partition's users most events read after the first spill start a state that
is spilled). Nothing of a spilled user stays in memory: each row holds its state's earliest
offset in a partition (a state of several partitions has a row without properties for each
other), indexed by (partition, offset), and the commit floor takes their minimum by query.
Spilled users are read back in the order they were first spilled (or, while reading ahead,
those of the partitions read to their end, in offset order), each with all its rows, before
its state in memory: a user's rows are older than its state in memory, so they
fold, oldest first, into one update where that is exact (else they go as updates in order,
which the planner keeps apart; under ``deep`` an object after a non-object at one path). A
user read back is an in-memory :class:`Held` again until it is applied: only what is in flight.

What does not fold keeps its order: an event with a merge (alias), or an identify that cannot
fold exactly into its user's held state, *bars* every user it touches. A barred user's held
state (its rows on disk first, then its state in memory) is handed to the planner first
(:meth:`Backlog.fold`'s ``eject``), and the event and all later events of that user go the
existing per-event path, where the planner orders them per user. So a user's history splits
at most once, at its first barrier.

No I/O but the spill file, no clock, not thread-safe: the loop's thread owns it.
"""

from __future__ import annotations

import heapq
import os
import shutil
import sqlite3
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from itertools import islice
from typing import Any, Final

import orjson

from .ops import Identify, Op, entities
from .plan import NestedMerge, folding
from .records import Partition, Record

#: Dead-letter header of a rejected held user: how many events its folded update stands for.
H_FOLDED = "knock-sink.folded.events"
#: Estimated bytes of a held user in memory: its properties as Python objects cost about
#: 4.5 times their JSON (measured on the benchmark's users: 4.1 KB held for 0.92 KB of JSON),
#: plus the rest (tracemalloc, a user of one partition: the ``Held``, its offsets dict, its
#: entry in the users dict and in its partition's offsets deque: 424 bytes). A spilled user
#: takes nothing in memory (about 450 bytes a spilled state before: a shell per row).
PY_PER_JSON_BYTE: Final = 4.5
PER_USER: Final = 400
#: Bytes of a packed user (see :meth:`Backlog.compact`) beyond its JSON: the ``bytes`` header.
PER_BYTES: Final = 33
#: Users sampled to estimate the average size of a held user.
SAMPLE: Final = 64
#: Budget checks between two samples of that average (see :meth:`Backlog.over_budget`).
RESAMPLE_EVERY: Final = 16
#: States a spill writes at a time: its lists of rows stay small (and so do the interpreter's
#: free lists of tuples they leave behind, up to 2,000 of each size).
CHUNK: Final = 256
#: Where a spill stops: the share of the budget the users left in memory are estimated at.
#: The users kept fold their next events instead of starting states to spill again (on the
#: backlog alone, a bench-like backfill over 4 partitions: 130k states spilled when a spill
#: took everyone, 111k down to 0.5, 102k down to 0.75, 96k down to 0.9, which cost as much:
#: more spills, each walking every user in memory).
LOW_WATER: Final = 0.75


class Held:
    """One user's folded identify and where its events came from.

    :ivar props: its folded properties; their JSON while packed (:meth:`Backlog.compact`).
    :ivar first: ``{partition: earliest offset}`` of the events folded in.
    :ivar events: how many events were folded in (for the applied count).
    """

    __slots__ = ("done", "events", "first", "owned", "props", "riders", "user_id")

    def __init__(self, user_id: str, props: dict[str, Any], tp: Partition, offset: int) -> None:
        self.user_id = user_id
        self.props = props
        self.first: dict[Partition, int] = {tp: offset}
        self.events = 1
        self.done = False
        #: Whether ``props`` is our own copy (the first event's dict is the mapper's until then).
        self.owned = False
        #: Later states of the user folded into this one when read back: applied with it.
        self.riders: list[Held] | None = None

    @classmethod
    def restored(
        cls, user_id: str, props: dict[str, Any], first: dict[Partition, int], events: int
    ) -> Held:
        """A user's row read back from the spill file (its props are our own copy)."""
        held = cls.__new__(cls)
        held.user_id, held.props, held.first, held.events = user_id, props, first, events
        held.done, held.owned, held.riders = False, True, None
        return held

    def absorb(self, later: Held, fold: Callable[[dict[str, Any], dict[str, Any]], None]) -> None:
        """Fold ``later`` (a newer state of the same user) into this one: one update for both."""
        if not self.owned:
            self.props = dict(self.props)
            self.owned = True
        fold(self.props, later.props)
        self.events += later.events
        for tp, offset in later.first.items():
            self.first.setdefault(tp, offset)  # this one is older: its offsets come first
        self.riders = [*(self.riders or ()), later, *(later.riders or ())]

    def record(self) -> Record | None:
        """What to dead-letter when Knock rejects the folded update: ``None`` when it holds one
        event (the dead letters read that original back from its topic, as for any event);
        else one identify carrying the folded update (Knock's properties, as sent), at the
        user's earliest offset, with a header saying how many events it folds (the originals
        are in the source topic, before the commit)."""
        if self.events == 1:
            return None
        (topic, partition), offset = min(self.first.items(), key=lambda kv: kv[1])
        value = orjson.dumps({"type": "identify", "userId": self.user_id, "traits": self.props})
        return Record(
            topic,
            partition,
            offset,
            key=self.user_id.encode(),
            value=value,
            headers=[(H_FOLDED, str(self.events).encode())],
        )


def unpacked(held: Held) -> dict[str, Any]:
    """``held``'s properties as a dict: decoded back first if :meth:`Backlog.compact` packed
    them. Everything the backlog hands out goes through here."""
    props = held.props
    if props.__class__ is bytes:
        props = held.props = orjson.loads(props)
        held.owned = True
    return props


def _size(props: dict[str, Any] | bytes) -> float:
    """Estimated bytes of a held user in memory with these properties."""
    if props.__class__ is bytes:
        return len(props) + PER_BYTES + PER_USER
    return len(orjson.dumps(props)) * PY_PER_JSON_BYTE + PER_USER


class HeldHandle:
    """The ``source`` of a held user's update in the planner: what :class:`~consumer.tracker.Handle`
    is to one event, for all of a user's folded events. Released as often as held; the last
    release marks the user applied, so its offsets stop holding back the commit."""

    __slots__ = ("_backlog", "_dead", "_owed", "held")

    def __init__(self, backlog: Backlog, held: Held) -> None:
        self.held = held
        self._backlog = backlog
        self._owed = 1
        self._dead = False

    @property
    def partition(self) -> Partition:
        return min(self.held.first.items(), key=lambda kv: kv[1])[0]

    @property
    def offset(self) -> int:
        return min(self.held.first.values())

    @property
    def current(self) -> bool:
        return not self._backlog.frozen

    def hold(self) -> None:
        self._owed += 1

    def release(self) -> bool:
        if self._owed <= 0:
            raise ValueError(f"{self!r} released more often than held")
        self._owed -= 1
        if self._owed == 0:
            # Applied: only the offsets are still needed, and ``_owed`` keeps an applied user
            # until every earlier one of its partition is applied too (while the rest of the
            # backlog is sent, that held every sent user's properties: 80 MB at 1M events).
            for held in (self.held, *(self.held.riders or ())):
                held.done = True
                held.props = None  # type: ignore[assignment]
            self.held.riders = None
            return True
        return False

    def claim_dead_letter(self) -> bool:
        if self._dead or self._backlog.frozen:
            return False
        self._dead = True
        return True

    def __repr__(self) -> str:
        return f"HeldHandle({self.held.user_id}, events={self.held.events}, owed={self._owed})"


#: Called with a held user that leaves the backlog for the planner (fed, or ejected at a barrier).
Eject = Callable[[Held], None]


#: A list of values as one parameter (a JSON array), not a "?" each: a statement of each
#: length would be prepared again and cached (the sqlite3 module keeps 128), up to megabytes
#: each for a plan's users (measured on the backlog alone: SQLite held 11.4 MB at the end of a
#: spilling run, 2.1 MB with one statement of each).
_EACH: Final = "(SELECT value FROM json_each(?))"


class Backlog:
    """Per-user folded state plus per-partition offsets owed, for one backfill.

    :param nested: the planner's nested-merge mode (``knock.nested_merge``); folding here
        follows the same rule, so it is exact exactly when the planner's is.
    """

    def __init__(
        self,
        *,
        nested: NestedMerge = "deep",
        memory_bytes: int | None = None,
        work_dir: str | None = None,
    ) -> None:
        self._can_fold, self._fold = folding(nested)
        self._users: dict[str, Held] = {}
        self._barred: set[str] = set()
        # Per partition, users held in memory or handed out, in the order they were first seen
        # there (so in offset order); the head is dropped lazily once applied.
        self._owed: dict[Partition, deque[tuple[int, Held]]] = {}
        # Per partition, users read back from disk and not yet applied, a heap by offset (their
        # offsets are older than those of ``_owed``, in no order): bounded by what is in flight.
        self._back: dict[Partition, list[tuple[int, int, Held]]] = {}
        self._pushed = 0
        self._read: dict[Partition, int] = {}
        # Per partition, how far :meth:`take_finished` has looked into ``_owed``, and on disk
        # (the last (offset, row) it saw).
        self._cursor: dict[Partition, int] = {}
        self._disk_cursor: dict[Partition, tuple[int, int]] = {}
        self._committed: dict[Partition, int] = {}
        self._compacted: set[Partition] = set()
        #: Set when a partition was revoked, lost or rewound: nothing held is trusted any more.
        self.frozen = False
        #: Estimated bytes the users in memory may take (``None``: no bound); the holding lowers
        #: it as the process grows (see :class:`consumer.holding.HeldShare`).
        self.memory_bytes = memory_bytes
        self._work_dir = work_dir
        self._dir: str | None = None
        self._db: sqlite3.Connection | None = None
        # Partitions as small integers in the spill file.
        self._part: dict[Partition, int] = {}
        self._parts: list[Partition] = []
        self._rows = 0
        self._next_row = 0
        #: User states spilled so far (a user spilled twice counts twice, on two rows).
        self.spilled = 0
        # The last sampled average size of a user in memory, and checks left before the next.
        self._average = 0.0
        self._checks = 0

    def __len__(self) -> int:
        """States held (not yet handed to the planner): users in memory, plus rows on disk (a
        user with several counts several times)."""
        return len(self._users) + self._rows

    @property
    def in_memory(self) -> int:
        """Users held in memory (not yet handed out)."""
        return len(self._users)

    @property
    def rows(self) -> int:
        """Rows in the spill file: one per spilled state."""
        return self._rows

    # -- reading ---------------------------------------------------------------------------

    def read(self, tp: Partition, offset: int) -> bool:
        """Note that ``offset`` of ``tp`` was read; False when the consumer went back (a
        rewind): the caller must :meth:`freeze`."""
        last = self._read.get(tp)
        if last is not None and offset < last:
            return False
        self._read[tp] = offset + 1
        return True

    def fold(self, tp: Partition, offset: int, ops: Iterable[Op], eject: Eject) -> list[Op]:
        """Fold the ops of the event at ``offset`` into their users' held state, when every
        one of them is an identify that folds exactly; returns ``[]`` then. Otherwise every
        user the event touches is barred (its held state ejected first, see the module
        docstring) and the ops are returned, for the per-event path."""
        ops = list(ops)
        users = self._users
        foldable = True
        for op in ops:
            if op.__class__ is not Identify or op.user_id in self._barred:  # type: ignore[union-attr]
                foldable = False
                break
            held = users.get(op.user_id)
            if held is not None and not self._can_fold(unpacked(held), op.props):  # type: ignore[union-attr]
                foldable = False
                break
        if not foldable:
            for op in ops:
                for uid in entities(op):
                    if self._rows and uid not in self._barred:
                        back: list[Held] = []
                        self._gather([uid], back, lambda held: False)
                        for held in back:
                            eject(held)
                    held = users.pop(uid, None)
                    if held is not None:
                        unpacked(held)
                        eject(held)
                    self._barred.add(uid)
            return ops
        for op in ops:
            uid, props = op.user_id, op.props  # type: ignore[union-attr]
            held = users.get(uid)
            if held is None:
                held = users[uid] = Held(uid, props, tp, offset)
                self._owed.setdefault(tp, deque()).append((offset, held))
                continue
            if not held.owned:
                held.props = dict(held.props)
                held.owned = True
            self._fold(held.props, props)
            held.events += 1
            if tp not in held.first:
                held.first[tp] = offset
                self._owed.setdefault(tp, deque()).append((offset, held))
        return []

    # -- sending ---------------------------------------------------------------------------

    def take(self, n: int) -> list[Held]:
        """Hand out up to ``n`` held users, spilled ones first (in the order they were first
        spilled), then oldest first; each stays owed (its offsets hold the commit back) until
        its handle's last release."""
        out: list[Held] = []
        users = self._users
        if self._rows:
            assert self._db is not None
            # A user's first row is numbered before its others: scanned by number, users come
            # in the order of their first spill.
            uids: dict[str, None] = {}
            for (uid,) in self._db.execute("SELECT uid FROM held ORDER BY id"):
                uids[uid] = None
                if len(uids) == n:
                    break
            self._gather(list(uids), out, lambda held: True)
        for _ in range(min(n - len(out), len(users))):
            out.append(users.pop(next(iter(users))))
        for held in out:
            unpacked(held)
        return out

    def take_finished(self, finished: set[Partition], n: int) -> list[Held]:
        """Hand out up to ``n`` users whose events all came from ``finished`` partitions (read
        to their end), those on disk first (per partition in offset order, so its commit
        moves), then those in memory with no older state on disk: sent before the rest of the
        backlog is read, each still once when the topic is keyed by user."""
        out: list[Held] = []
        users = self._users
        if self._rows:
            self._take_finished_on_disk(finished, n, out)
        for tp in finished:
            owed = self._owed.get(tp)
            if not owed:
                continue
            cursor = self._cursor.get(tp, 0)
            while len(out) < n and cursor < len(owed):
                held = owed[cursor][1]
                cursor += 1
                if users.get(held.user_id) is not held or not finished.issuperset(held.first):
                    continue
                if self._rows and self._on_disk(held.user_id):
                    continue
                unpacked(users.pop(held.user_id))
                out.append(held)
            self._cursor[tp] = cursor
        return out

    def waiting(self, finished: AbstractSet[Partition]) -> int:
        """About how many users in memory whose first events came from ``finished`` partitions
        are still to be handed out: what a backfill reading ahead has ready to send. Those
        on disk are left out, and since the last spill those handed out and not yet applied
        count too."""
        cursor = self._cursor
        return sum(
            len(owed) - cursor.get(tp, 0) for tp, owed in self._owed.items() if tp in finished
        )

    def _take_finished_on_disk(self, finished: set[Partition], n: int, out: list[Held]) -> None:
        db = self._db
        assert db is not None
        done = {self._part[tp] for tp in finished if tp in self._part}
        for tp in sorted(finished):
            part = self._part.get(tp)
            while part is not None and len(out) < n and self._rows:
                offset, row = self._disk_cursor.get(tp, (-1, -1))
                # Past the cursor: a user skipped here owes an unfinished partition, and the
                # last of its partitions to finish finds it.
                seen = db.execute(
                    "SELECT offset, id, uid FROM held INDEXED BY held_floor"
                    " WHERE part = ? AND (offset, id) > (?, ?) ORDER BY offset, id LIMIT ?",
                    (part, offset, row, n - len(out)),
                ).fetchall()
                if not seen:
                    break
                self._disk_cursor[tp] = seen[-1][0], seen[-1][1]
                uids = list(dict.fromkeys(uid for _, _, uid in seen))
                owes: dict[str, set[int]] = {}
                query = f"SELECT uid, part FROM held INDEXED BY held_uid WHERE uid IN {_EACH}"
                for uid, p in db.execute(query, (orjson.dumps(uids),)):
                    owes.setdefault(uid, set()).add(p)
                ready = [uid for uid in uids if owes[uid] <= done]
                self._gather(ready, out, lambda held: finished.issuperset(held.first))

    def _gather(self, uids: list[str], out: list[Held], newer_too: Callable[[Held], bool]) -> None:
        """Read back every row of ``uids`` into ``out``: a user's rows folded, oldest first,
        into one update where that is exact (else kept as updates in order), then its state in
        memory too when ``newer_too`` allows it."""
        # Per user, its updates: each row folded into the last where that is exact.
        updates: dict[str, list[Held]] = {}
        can_fold, fold, loads, parts = self._can_fold, self._fold, orjson.loads, self._parts
        for _, uid, events, part, offset, raw in self._read_back(uids):
            if raw is None:  # the state above's offset in another partition
                updates[uid][-1].first.setdefault(parts[part], offset)
                continue
            props = loads(raw)
            mine = updates.get(uid)
            host = mine[-1] if mine else None
            if host is not None and can_fold(host.props, props):
                # The row is no rider: nothing else refers to it, and the host's offsets
                # (older) cover its own.
                fold(host.props, props)
                host.events += events
                first = host.first
                first.setdefault(parts[part], offset)
            else:
                first = {parts[part]: offset}
                updates.setdefault(uid, []).append(Held.restored(uid, props, first, events))
        users = self._users
        for uid, mine in updates.items():
            later = users.get(uid)
            # The state in memory is newer than those on disk, all read back now.
            if later is not None and newer_too(later) and can_fold(mine[-1].props, unpacked(later)):
                mine[-1].absorb(users.pop(uid), fold)
        got = [held for mine in updates.values() for held in mine]
        back = self._back
        for held in got:
            # Owed from memory until applied.
            for tp, offset in held.first.items():
                self._pushed += 1
                heapq.heappush(back.setdefault(tp, []), (offset, self._pushed, held))
        out.extend(got)

    def _on_disk(self, uid: str) -> bool:
        assert self._db is not None
        return (
            self._db.execute("SELECT 1 FROM held WHERE uid = ? LIMIT 1", (uid,)).fetchone()
            is not None
        )

    # -- spilling --------------------------------------------------------------------------

    def over_budget(self) -> bool:
        """Whether the users held in memory are estimated past the memory budget (spilled ones
        take none). Their size is sampled evenly across all of them (measuring every dict
        would cost more than folding; the stride walk alone is cheap): the oldest or the newest
        alone are no sample, a backfill's first batch holds users of partitions it reads last,
        one event each (an estimate from them was 40 % low). The walk is still one of all the
        users in memory, asked after every batch: 3 % of the loop's thread while sending the
        1M-event backfill (py-spy). So the average is sampled every :data:`RESAMPLE_EVERY`
        checks, and after a spill or a packing; in between, the count times that average."""
        users = self._users
        if self.memory_bytes is None or not users:
            return False
        self._checks -= 1
        if self._checks < 0:
            self._checks = RESAMPLE_EVERY - 1
            self._average = self._estimate()[0] / len(users)
        return len(users) * self._average > self.memory_bytes

    def _estimate(self) -> tuple[float, float]:
        """Estimated bytes of the users in memory, and of one of them not packed, from an even
        sample of them (see :meth:`over_budget`)."""
        users = self._users
        sample = list(islice(users.values(), 0, None, max(1, len(users) // SAMPLE)))
        sizes = [_size(h.props) for h in sample]
        unpacked = [n for n, h in zip(sizes, sample, strict=True) if h.props.__class__ is not bytes]
        average = sum(sizes) / len(sizes)
        return len(users) * average, sum(unpacked) / len(unpacked) if unpacked else average

    def spill(self, finished: AbstractSet[Partition] = frozenset()) -> None:
        """Move users in memory to disk, each state on a row of its own: without a budget all
        of them; else down to :data:`LOW_WATER` of it, first those whose events all came
        from ``finished`` partitions (read to their end: they will not change, so each goes
        to disk once), oldest first."""
        users = self._users
        if not users:
            return
        moving = list(users.values())
        if self.memory_bytes is not None:
            held, per_unpacked = self._estimate()
            excess = held - self.memory_bytes * LOW_WATER
            if excess <= 0:
                return
            if finished:
                # Stable: users of finished partitions first, each group oldest first.
                moving.sort(key=lambda h: not h.first.keys() <= finished)
            # By bytes, not by count: the packed users of finished partitions, which go first,
            # are a quarter of the size of the others (a count from the average moved too few).
            freed, n = 0.0, 0
            while n < len(moving) and freed < excess:
                props = moving[n].props
                freed += (
                    len(props) + PER_BYTES + PER_USER if props.__class__ is bytes else per_unpacked
                )
                n += 1
            moving = moving[:n]
        db = self._open()
        with db:
            for i in range(0, len(moving), CHUNK):
                self._append(db, moving[i : i + CHUNK])
        self.spilled += len(moving)
        for held in moving:
            # Its offsets are on disk now: as good as applied for the partitions' deques.
            held.done = True
            held.props = None  # type: ignore[assignment]
        # A new dict, not deletions: a dict keeps the table of its largest size.
        self._users = (
            {uid: held for uid, held in users.items() if not held.done}
            if len(moving) < len(users)
            else {}
        )
        for tp, owed in self._owed.items():
            self._owed[tp] = deque(e for e in owed if not e[1].done)
        self._cursor.clear()
        self._checks = 0  # sample again at the next check

    def _append(self, db: sqlite3.Connection, helds: list[Held]) -> None:
        """Each state on a row of its own: no row is read or rewritten (folding a state into
        the user's row cost a read, a load, the fold, a dump and a rewrite at each spill;
        rows of a user are folded when read back instead). A state with events in several
        partitions (a topic not keyed by user) has a row without properties after it for each
        other partition: every row owes one offset, indexed, which the commit floor and
        :meth:`take_finished` read."""
        part, part_of = self._part, self._part_of
        rows: list[tuple[int, str, int, int, int, Held | None]] = []
        i = self._next_row
        for held in helds:
            state: Held | None = held  # on the first row only
            for tp, offset in held.first.items():
                i += 1
                rows.append(
                    (
                        i,
                        held.user_id,
                        held.events,
                        part[tp] if tp in part else part_of(tp),
                        offset,
                        state,
                    )
                )
                state = None
        self._next_row = i
        # Serialised as written, not before: a list of orjson outputs takes 16 KB each.
        dumps = orjson.dumps
        db.executemany(
            "INSERT INTO held (id, uid, events, part, offset, props) VALUES (?, ?, ?, ?, ?, ?)",
            (
                (
                    i,
                    uid,
                    events,
                    p,
                    offset,
                    None
                    if h is None
                    else h.props
                    if h.props.__class__ is bytes
                    else dumps(h.props),
                )
                for i, uid, events, p, offset, h in rows
            ),
        )
        self._rows += len(helds)

    def compact(self, finished: AbstractSet[Partition]) -> None:
        """Hold the users in memory whose events all came from ``finished`` partitions (read to
        their end) as their JSON until they are handed out (:func:`unpacked`). In a topic keyed
        by user their state no longer changes, and it takes about a quarter of its size as
        Python objects (0.92 KB of JSON against 4.1 KB for the benchmark's users). While a
        backfill reads ahead, the users of the partition it finished last wait to be sent
        beside those of the partition it reads: its peak. A later event of one (a topic not
        keyed by user) decodes it back."""
        users = self._users
        for tp in finished - self._compacted:
            self._compacted.add(tp)
            for _, held in self._owed.get(tp, ()):
                if (
                    held.props.__class__ is dict
                    and users.get(held.user_id) is held
                    and held.first.keys() <= finished
                ):
                    # A copy: orjson 3.13 hands its output out in its ~16 KB buffer, not cut to size.
                    held.props = memoryview(orjson.dumps(held.props)).tobytes()  # type: ignore[assignment]
                    held.owned = True
                    self._checks = 0  # sample again at the next check

    def _part_of(self, tp: Partition) -> int:
        part = self._part.get(tp)
        if part is None:
            part = self._part[tp] = len(self._parts)
            self._parts.append(tp)
        return part

    def _read_back(self, uids: list[str]) -> Iterator[tuple[int, str, int, int, int, bytes | None]]:
        """Every row of ``uids`` (users by first spill, each user's rows oldest first), taken
        off disk once the caller has taken the last: ``(id, uid, events, part, offset,
        props)``, props ``None`` for another partition's offset of the state above. One at a
        time, not a list of them: a read-back of a plan's users is several rows each, and
        their bytes would all be alive at once beside their folded states."""
        db = self._db
        assert db is not None
        if not uids:
            return
        ids: list[int] = []
        states = 0
        query = f"SELECT id, uid, events, part, offset, props FROM held INDEXED BY held_uid WHERE uid IN {_EACH} ORDER BY id"
        for row in db.execute(query, (orjson.dumps(uids),)):
            ids.append(row[0])
            states += row[5] is not None
            yield row
        if not ids:
            return
        with db:
            db.execute(f"DELETE FROM held WHERE id IN {_EACH}", (orjson.dumps(ids),))
        self._rows -= states

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self._dir = tempfile.mkdtemp(prefix="knock-sink-backfill-", dir=self._work_dir)
            self._db = sqlite3.connect(os.path.join(self._dir, "held.sqlite3"))
            # A cache, not a record: a crash resumes from Kafka's commit and the file is
            # thrown away, so durability would only cost time.
            self._db.execute("PRAGMA journal_mode = OFF")
            self._db.execute("PRAGMA synchronous = OFF")
            # One row per spilled state, numbered in spill order, with its earliest offset in
            # one partition (and a row without props after it for each other partition).
            self._db.execute(
                "CREATE TABLE held (id INTEGER PRIMARY KEY, uid TEXT NOT NULL, events INTEGER NOT NULL,"
                " part INTEGER NOT NULL, offset INTEGER NOT NULL, props BLOB)"
            )
            self._db.execute("CREATE INDEX held_uid ON held (uid)")
            # The commit floor is the minimum per partition, and users of a partition read to
            # their end are read back in its offset order.
            self._db.execute("CREATE INDEX held_floor ON held (part, offset)")
        return self._db

    def close(self) -> None:
        """Drop the spill file and its directory."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._rows = 0

    def handle(self, held: Held) -> HeldHandle:
        return HeldHandle(self, held)

    # -- commits ---------------------------------------------------------------------------

    def floor(self, tp: Partition) -> int | None:
        """The earliest offset of ``tp`` a not-yet-applied held user owes, or ``None``."""
        low: int | None = None
        owed = self._owed.get(tp)
        while owed and owed[0][1].done:
            owed.popleft()
            if self._cursor.get(tp):
                self._cursor[tp] -= 1
        if owed:
            low = owed[0][0]
        back = self._back.get(tp)
        while back and back[0][2].done:
            heapq.heappop(back)
        if back and (low is None or back[0][0] < low):
            low = back[0][0]
        part = self._part.get(tp)
        if self._rows and part is not None:
            assert self._db is not None
            (spilled,) = self._db.execute(
                "SELECT MIN(offset) FROM held WHERE part = ?", (part,)
            ).fetchone()
            if spilled is not None and (low is None or spilled < low):
                low = spilled
        return low

    def committable(
        self, first_unresolved: Callable[[Partition], int | None]
    ) -> dict[Partition, int]:
        """Commit positions that moved since :meth:`mark_committed`: per partition read, the
        smallest of its held users' earliest offsets, ``first_unresolved(tp)`` (the per-event
        path's) and one past the last offset read."""
        if self.frozen:
            return {}
        out: dict[Partition, int] = {}
        for tp, end in self._read.items():
            position = end
            for bound in (self.floor(tp), first_unresolved(tp)):
                if bound is not None and bound < position:
                    position = bound
            if position != self._committed.get(tp):
                out[tp] = position
        return out

    def mark_committed(self, positions: dict[Partition, int]) -> None:
        self._committed.update(positions)

    def freeze(self) -> None:
        """A partition left (revoked, lost) or rewound: what is held can no longer be sent nor
        committed safely by this consumer. Everything is dropped, the spill file too, and no
        position is vouched for again; the next run resumes from the last commit."""
        self.frozen = True
        self._users.clear()
        self._owed.clear()
        self._back.clear()
        self.close()
