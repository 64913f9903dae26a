"""What a backfill holds: each user's folded state, and per partition the offsets it still owes.

Under Knock's limits a backfill is bounded by the users it sends, not by reading, so it reads
ahead and sends each user once (see :class:`consumer.flow.ReadAhead`). :class:`Backlog` holds
per *user* (:class:`~consumer.backfill.held.Held`): one dict of properties, folded as each
identify is read (the planner's fold rules, under the configured nested-merge mode, so the
result is the same as sending every event alone and in order), and the earliest offset of the
user in each partition where it holds events. Memory grows with the users held, not with the
events read. Users whose events all came from partitions read to their end wait to be sent
*packed*, as their JSON (:meth:`Backlog.compact`: a quarter of their size as Python objects),
and leave unpacked (:func:`~consumer.backfill.held.unpacked`).

Commit rule: a partition's commit position is the smallest offset among its not-yet-applied
events: the earliest held offset of its held users, in memory, in flight or on disk
(:meth:`Backlog.floor`), the tracker's first unresolved offset (events on the per-event path:
dead letters, barred users), or one past the last offset read. A crash resumes from there and
re-sends only the users not yet applied (identify is idempotent).

Bounded memory: past its memory budget of estimated held state, users in memory spill to disk
(:class:`~consumer.backfill.spill.Spill`), until what is left is estimated at
:data:`LOW_WATER` of the budget: first the users whose events all came from partitions read to
their end (they will not change, so each goes to disk once), then the others, oldest first.
Nothing of a spilled user stays in memory. Spilled users are read back in the order they were
first spilled (or, while reading ahead, those of the partitions read to their end, in offset
order), each with all its rows, before its state in memory: a user's rows are older than its
state in memory, so they fold, oldest first, into one update where that is exact (else they go
as updates in order, which the planner keeps apart; under ``deep`` an object after a non-object
at one path). A user read back is an in-memory :class:`Held` again until it is applied.

What does not fold keeps its order: an event with a merge (alias), or an identify that cannot
fold exactly into its user's held state, *bars* every user it touches. A barred user's held
state (its rows on disk first, then its state in memory) is handed to the planner first
(:meth:`Backlog.fold`'s ``eject``), and the event and all later events of that user go the
per-event path, where the planner orders them per user. So a user's history splits at most
once, at its first barrier.

No I/O but the spill file, no clock, not thread-safe: the loop's thread owns it.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Final

import orjson

from ..config import NestedMerge
from ..ops import Identify, Op, entities
from ..plan import folding
from ..records import Partition
from .held import (
    H_FOLDED,
    PER_BYTES,
    PER_USER,
    PY_PER_JSON_BYTE,
    Held,
    HeldHandle,
    unpacked,
)
from .memory import RESAMPLE_EVERY, Sizes
from .spill import Spill

__all__ = [
    "H_FOLDED",
    "LOW_WATER",
    "PER_USER",
    "PY_PER_JSON_BYTE",
    "RESAMPLE_EVERY",
    "Backlog",
    "Eject",
    "Held",
    "HeldHandle",
]

#: Where a spill stops: the share of the budget the users left in memory are estimated at.
#: The users kept fold their next events instead of starting states to spill again; a spill of
#: everyone spills more states in all, a stop nearer the budget spills more often, each spill
#: walking every user in memory.
LOW_WATER: Final = 0.75

#: Called with a held user that leaves the backlog for the planner (fed, or ejected at a barrier).
Eject = Callable[[Held], None]


class Backlog:
    """Per-user folded state plus per-partition offsets owed, for one backfill.

    :param nested: the planner's nested-merge mode (``knock.nested_merge``); folding here
        follows the same rule, so it is exact exactly when the planner's is.
    :param memory_bytes: estimated bytes the users in memory may take (``None``: no bound).
    :param budget: asked for ``memory_bytes`` at each :meth:`over_budget` check instead, when
        the budget moves (a backfill's :class:`~consumer.backfill.memory.HeldShare`).
    :param work_dir: where the spill file goes.
    """

    def __init__(
        self,
        *,
        nested: NestedMerge = "deep",
        memory_bytes: int | None = None,
        budget: Callable[[], int] | None = None,
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
        # Per partition, how far :meth:`take_finished` has looked into ``_owed``.
        self._cursor: dict[Partition, int] = {}
        self._committed: dict[Partition, int] = {}
        self._compacted: set[Partition] = set()
        #: Set when a partition was revoked, lost or rewound: nothing held is trusted any more.
        self.frozen = False
        self._budget = budget
        #: Estimated bytes the users in memory may take (``None``: no bound), as last asked.
        self.memory_bytes = budget() if budget is not None else memory_bytes
        self._spill = Spill(work_dir)
        #: User states spilled so far (a user spilled twice counts twice, on two rows).
        self.spilled = 0
        self._sizes = Sizes()

    def __len__(self) -> int:
        """States held (not yet handed to the planner): users in memory, plus rows on disk (a
        user with several counts several times)."""
        return len(self._users) + self._spill.rows

    @property
    def in_memory(self) -> int:
        """Users held in memory (not yet handed out)."""
        return len(self._users)

    @property
    def rows(self) -> int:
        """Rows in the spill file: one per spilled state."""
        return self._spill.rows

    # -- reading ---------------------------------------------------------------------------

    def read(self, tp: Partition, offset: int) -> bool:
        """Note that ``offset`` of ``tp`` was read; False when the consumer went back (a
        rewind): the caller must :meth:`freeze`."""
        last = self._read.get(tp)
        if last is not None and offset < last:
            return False
        self._read[tp] = offset + 1
        return True

    def read_to(self, tp: Partition, position: int) -> None:
        """Everything of ``tp`` below ``position`` (the consumer's) is read, records or not:
        offsets no record was delivered for (transaction markers, aborted records) owe
        nothing, so the commit floor may pass them. The caller vouches that every record
        delivered below it was :meth:`read`."""
        if not self.frozen and position > self._read.get(tp, -1):
            self._read[tp] = position

    def fold(
        self,
        tp: Partition,
        offset: int,
        ops: Iterable[Op],
        eject: Eject,
        stamps: tuple[float, int | None, object] | None = None,
    ) -> list[Op]:
        """Fold the ops of the event at ``offset`` into their users' held state, when every
        one of them is an identify that folds exactly; returns ``[]`` then. Otherwise every
        user the event touches is barred (its held state ejected first, see the module
        docstring) and the ops are returned, for the per-event path."""
        ops = list(ops)
        users = self._users
        foldable = True
        for op in ops:
            if op.__class__ is not Identify or op.user_id in self._barred:
                foldable = False
                break
            held = users.get(op.user_id)
            if held is not None and not self._can_fold(unpacked(held), op.props):
                foldable = False
                break
        if not foldable:
            for op in ops:
                for uid in entities(op):
                    if self._spill.rows and uid not in self._barred:
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
                held = users[uid] = (
                    Held(uid, props, tp, offset)
                    if stamps is None
                    else Held(uid, props, tp, offset, *stamps)
                )
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
        if self._spill.rows:
            self._gather(self._spill.first_spilled(n), out, lambda held: True)
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
        spill = self._spill
        if spill.rows:
            for tp in sorted(finished):
                while len(out) < n and spill.rows:
                    ready = spill.finished_users(tp, finished, n - len(out))
                    if ready is None:
                        break
                    self._gather(ready, out, lambda held: finished.issuperset(held.first))
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
                if spill.rows and spill.holds(held.user_id):
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

    def _gather(self, uids: list[str], out: list[Held], newer_too: Callable[[Held], bool]) -> None:
        """Read back every row of ``uids`` into ``out``: a user's rows folded, oldest first,
        into one update where that is exact (else kept as updates in order), then its state in
        memory too when ``newer_too`` allows it."""
        can_fold, fold = self._can_fold, self._fold
        updates = self._spill.read_back(uids, can_fold, fold)
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

    # -- spilling --------------------------------------------------------------------------

    def over_budget(self) -> bool:
        """Whether the users held in memory are estimated past the memory budget (spilled ones
        take none; see :class:`~consumer.backfill.memory.Sizes`)."""
        if self._budget is not None:
            self.memory_bytes = self._budget()
        if self.memory_bytes is None or not self._users:
            return False
        return self._sizes.over(self._users, self.memory_bytes)

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
            estimated, per_unpacked = self._sizes.estimate(self._users)
            excess = estimated - self.memory_bytes * LOW_WATER
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
                    len(props) + PER_BYTES + PER_USER if props.__class__ is bytes else per_unpacked  # type: ignore[comparison-overlap]  # packed: see Backlog.compact
                )
                n += 1
            moving = moving[:n]
        self._spill.append(moving)
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
        self._sizes.stale()

    def compact(self, finished: AbstractSet[Partition]) -> None:
        """Hold the users in memory whose events all came from ``finished`` partitions (read to
        their end) as their JSON until they are handed out (:func:`unpacked`). In a topic keyed
        by user their state no longer changes, and it takes about a quarter of its size as
        Python objects. While a
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
                    self._sizes.stale()

    def close(self) -> None:
        """Drop the spill file and its directory."""
        self._spill.close()

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
        spilled = self._spill.floor(tp)
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
