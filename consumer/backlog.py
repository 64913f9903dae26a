"""What a backfill holds: each user's folded state, and per partition the offsets it still owes.

Under Knock's limits a backfill is bounded by the users it sends, not by reading, so it reads
ahead and sends each user once (see :class:`consumer.flow.ReadAhead`). Held per event, that
costs a ``Pending``, a tracker ``Handle`` and the event's own dict (about 1.1 KB an event).
:class:`Backlog` holds per *user* instead: one dict of properties, folded as each identify is
read (the planner's fold rules, under the configured nested-merge mode, so the result is the
same as sending every event alone and in order), and the earliest offset of the user in each
partition where it holds events. Memory grows with the users held, not with the events read.

Commit rule: a partition's commit position is the smallest offset among its not-yet-applied
events: the earliest held offset of its held users (:meth:`Backlog.floor`), the tracker's first
unresolved offset (events on the per-event path: dead letters, barred users), or one past the
last offset read. A crash resumes from there and re-sends only the users not yet applied
(identify is idempotent).

Bounded memory: past ``memory_bytes`` of estimated held state, every held user's properties
spill to an SQLite file in a work directory (the standard library's, so nothing to install; one
table, keyed by spill order) and only a small shell stays in memory (its offsets and whether
it was applied). Spilled users are read back in the order they were first spilled, each with all its
spilled states, before those still in memory: a user's spilled states are older than its state
in memory, so they fold, oldest first, into one update where that is exact (else they go as
updates in order, which the planner keeps apart).

What does not fold keeps its order: an event with a merge (alias), or an identify that cannot
fold exactly into its user's held state, *bars* every user it touches. A barred user's held
state is handed to the planner first, as one update (:meth:`Backlog.fold`'s ``eject``), and the
event and all later events of that user go the existing per-event path, where the planner
orders them per user. So a user's history splits at most once, at its first barrier.

No I/O, no clock, not thread-safe: the loop's thread owns it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
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
#: plus the shell, its dict entry and its offsets.
PY_PER_JSON_BYTE: Final = 4.5
PER_USER: Final = 400
#: What a spilled user still costs in memory: its shell, offsets and entries (tracemalloc).
PER_SHELL: Final = 450
#: Users sampled to estimate the average size of a held user.
SAMPLE: Final = 64


class Held:
    """One user's folded identify and where its events came from.

    :ivar first: ``{partition: earliest offset}`` of the events folded in.
    :ivar events: how many events were folded in (for the applied count).
    """

    __slots__ = ("user_id", "props", "first", "events", "done", "owned", "riders")

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
        return Record(topic, partition, offset, key=self.user_id.encode(), value=value,
                      headers=[(H_FOLDED, str(self.events).encode())])  # fmt: skip


class HeldHandle:
    """The ``source`` of a held user's update in the planner: what :class:`~consumer.tracker.Handle`
    is to one event, for all of a user's folded events. Released as often as held; the last
    release marks the user applied, so its offsets stop holding back the commit."""

    __slots__ = ("held", "_backlog", "_owed", "_dead")

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
        # Per partition, held users in the order they were first seen there (so in offset
        # order); the head is dropped lazily once applied.
        self._owed: dict[Partition, deque[tuple[int, Held]]] = {}
        self._read: dict[Partition, int] = {}
        # Per partition, how far :meth:`take_finished` has looked into ``_owed``.
        self._cursor: dict[Partition, int] = {}
        self._committed: dict[Partition, int] = {}
        #: Set when a partition was revoked, lost or rewound: nothing held is trusted any more.
        self.frozen = False
        self._memory_bytes = memory_bytes
        self._work_dir = work_dir
        self._dir: str | None = None
        self._db: sqlite3.Connection | None = None
        # Spill row id -> its shell (props None while on disk).
        self._shells: dict[int, Held] = {}
        self._next_row = 0
        #: Users spilled so far (a user spilled twice counts twice).
        self.spilled = 0

    def __len__(self) -> int:
        """Users held (not yet handed to the planner), in memory or spilled."""
        return len(self._users) + len(self._shells)

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
            if held is not None and not self._can_fold(held.props, op.props):  # type: ignore[union-attr]
                foldable = False
                break
        if not foldable:
            for op in ops:
                for uid in entities(op):
                    if self._shells and uid not in self._barred:
                        self._read_back(eject, [uid])
                    held = users.pop(uid, None)
                    if held is not None:
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
        """Hand out up to ``n`` held users, spilled ones first, then oldest first; each stays
        owed (its offsets hold the commit back) until its handle's last release."""
        out: list[Held] = []
        users = self._users
        if self._shells:
            # A user spilled more than once, or spilled and held again since, has several
            # states: fold them into the oldest when that is exact, so it is sent once.
            first: dict[str, Held] = {}

            def gather(held: Held) -> None:
                host = first.get(held.user_id)
                if host is not None and self._can_fold(host.props, held.props):
                    host.absorb(held, self._fold)
                    return
                first[held.user_id] = held
                out.append(held)

            assert self._db is not None
            # Users in the order they were first spilled, each with all its spilled states.
            uids = [r[0] for r in self._db.execute("SELECT uid FROM users ORDER BY first LIMIT ?", (n,))]
            self._read_back(gather, uids)
            for uid, host in first.items():
                later = users.get(uid)
                # The state in memory is newer than those on disk, all read back now.
                if later is not None and self._can_fold(host.props, later.props):
                    host.absorb(users.pop(uid), self._fold)
        for _ in range(min(n - len(out), len(users))):
            out.append(users.pop(next(iter(users))))
        return out

    def take_finished(self, finished: set[Partition], n: int) -> list[Held]:
        """Hand out up to ``n`` users held in memory whose events all came from ``finished``
        partitions (read to their end) and who have no older state on disk: sent before the
        rest of the backlog is read, each still once when the topic is keyed by user."""
        out: list[Held] = []
        users = self._users
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
                if self._shells and self._on_disk(held.user_id):
                    continue
                out.append(users.pop(held.user_id))
            self._cursor[tp] = cursor
        return out

    def _on_disk(self, uid: str) -> bool:
        assert self._db is not None
        return self._db.execute("SELECT 1 FROM held WHERE uid = ? LIMIT 1", (uid,)).fetchone() is not None

    # -- spilling --------------------------------------------------------------------------

    def over_budget(self) -> bool:
        """Whether what is held in memory (users, and the shells of spilled ones) is estimated
        past the memory budget. The users' size is sampled evenly across all of them (measuring
        every dict would cost more than folding; the stride walk alone is cheap): the oldest or
        the newest alone are no sample, a backfill's first batch holds users of partitions it
        reads last, one event each (an estimate from them was 40 % low)."""
        users = self._users
        if self._memory_bytes is None or not users:
            return False
        sample = list(islice(users.values(), 0, None, max(1, len(users) // SAMPLE)))
        average = sum(len(orjson.dumps(h.props)) for h in sample) / len(sample)
        in_memory = len(users) * (average * PY_PER_JSON_BYTE + PER_USER)
        # Spilling frees the users, not the shells: once the shells take most of the budget,
        # a spill of the few users in memory would free nothing and come again every batch
        # (each spill of a user held again adds a shell). The users keep a quarter.
        return (in_memory + len(self._shells) * PER_SHELL > self._memory_bytes
                and in_memory >= self._memory_bytes // 4)  # fmt: skip

    def spill(self) -> None:
        """Move every user in memory to disk, keeping a shell (offsets, applied flag)."""
        db = self._open()
        first = self._next_row + 1

        def rows() -> Iterator[tuple[int, str, bytes]]:
            # One at a time, not a list: orjson keeps each output in a buffer of about 16 KB
            # (3.13, measured), so a list of a spill's rows took 17 times their size.
            for held in self._users.values():
                self._next_row += 1
                yield self._next_row, held.user_id, orjson.dumps(held.props)
                self._shells[self._next_row] = held
                held.props = None  # type: ignore[assignment]
                held.owned = True  # read back as our own copy

        with db:
            db.executemany("INSERT INTO held (id, uid, props) VALUES (?, ?, ?)", rows())
            db.executemany("INSERT OR IGNORE INTO users (uid, first) VALUES (?, ?)",
                           ((self._shells[row].user_id, row) for row in range(first, self._next_row + 1)))  # fmt: skip
        self.spilled += self._next_row + 1 - first
        self._users.clear()

    def _read_back(self, into: Callable[[Held], None], uids: list[str]) -> None:
        """Every spilled state of ``uids``, in spill order (per user, oldest first), off disk."""
        assert self._db is not None
        if not uids:
            return
        marks = ",".join("?" * len(uids))
        rows = self._db.execute(f"SELECT id, props FROM held WHERE uid IN ({marks}) ORDER BY id", uids).fetchall()  # noqa: S608 - only placeholders
        for row_id, props in rows:
            held = self._shells.pop(row_id)
            held.props = orjson.loads(props)
            into(held)
        with self._db:
            self._db.executemany("DELETE FROM held WHERE id = ?", [(r[0],) for r in rows])
            self._db.executemany("DELETE FROM users WHERE uid = ?", [(u,) for u in uids])

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self._dir = tempfile.mkdtemp(prefix="knock-sink-backfill-", dir=self._work_dir)
            self._db = sqlite3.connect(os.path.join(self._dir, "held.sqlite3"))
            # A cache, not a record: a crash resumes from Kafka's commit and the file is
            # thrown away, so durability would only cost time.
            self._db.execute("PRAGMA journal_mode = OFF")
            self._db.execute("PRAGMA synchronous = OFF")
            self._db.execute("CREATE TABLE held (id INTEGER PRIMARY KEY, uid TEXT NOT NULL, props BLOB NOT NULL)")
            self._db.execute("CREATE INDEX held_uid ON held (uid)")
            # Each spilled user once, by its first spill: read back in that order, so commits
            # move forward as users are sent, with all of a user's states at once.
            self._db.execute("CREATE TABLE users (uid TEXT PRIMARY KEY, first INTEGER NOT NULL)")
            self._db.execute("CREATE INDEX users_first ON users (first)")
        return self._db

    def close(self) -> None:
        """Drop the spill file and its directory."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def handle(self, held: Held) -> HeldHandle:
        return HeldHandle(self, held)

    # -- commits ---------------------------------------------------------------------------

    def floor(self, tp: Partition) -> int | None:
        """The earliest offset of ``tp`` a not-yet-applied held user owes, or ``None``."""
        owed = self._owed.get(tp)
        while owed and owed[0][1].done:
            owed.popleft()
            if self._cursor.get(tp):
                self._cursor[tp] -= 1
        return owed[0][0] if owed else None

    def committable(self, first_unresolved: Callable[[Partition], int | None]) -> dict[Partition, int]:
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
        committed safely by this consumer. Everything is dropped, and no position is vouched
        for again; the next run resumes from the last commit."""
        self.frozen = True
        self._users.clear()
        self._owed.clear()
        self._shells.clear()
