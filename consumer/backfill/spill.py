"""A backfill's spill file: held users' states on disk, past the memory budget.

An SQLite file in a work directory (the standard library's, so nothing to install). Each spilled
state is a row of its own, appended: a spill reads nothing and rewrites nothing (folding a state
into the user's row at each spill, a read, a load, the fold, a dump and a rewrite, was most of a
spilling backfill's cost). Each row holds its state's earliest offset in one partition (a state
of several partitions has a row without properties for each other), indexed by (partition,
offset), so the commit floor is a query. How rows fold back into users is
:class:`~consumer.backfill.backlog.Backlog`'s; this module only stores and finds them.

A cache, not a record: a crash resumes from Kafka's commit and the file is thrown away. Not
thread-safe: the loop's thread owns it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from typing import Any, Final

import orjson

from ..records import Partition
from .held import Held

#: States a spill writes at a time: its lists of rows stay small (and so do the interpreter's
#: free lists of tuples they leave behind, up to 2,000 of each size).
CHUNK: Final = 256

#: A list of values as one parameter (a JSON array), not a "?" each: a statement of each
#: length would be prepared again and cached (the sqlite3 module keeps 128), up to megabytes
#: each for a plan's users.
_EACH: Final = "(SELECT value FROM json_each(?))"

#: The planner's fold rules (:func:`consumer.plan.folding`).
CanFold = Callable[[dict[str, Any], dict[str, Any]], bool]
Fold = Callable[[dict[str, Any], dict[str, Any]], None]
#: ``(id, uid, events, part, offset, props)``: props ``None`` for another partition's offset of
#: the state on the row before.
Row = tuple[int, str, int, int, int, bytes | None]


class Spill:
    """Spilled states, one row each, numbered in spill order.

    :param work_dir: where the file's directory goes (default: the system's temporary one).
    """

    def __init__(self, work_dir: str | None = None) -> None:
        self._work_dir = work_dir
        self._dir: str | None = None
        self._db: sqlite3.Connection | None = None
        # Partitions as small integers in the file.
        self._part: dict[Partition, int] = {}
        self._parts: list[Partition] = []
        self._next_row = 0
        # Per partition, the last (offset, row) :meth:`finished_users` saw.
        self._cursor: dict[Partition, tuple[int, int]] = {}
        #: States on disk (a user spilled twice counts twice).
        self.rows = 0

    def partition(self, part: int) -> Partition:
        return self._parts[part]

    def append(self, helds: list[Held]) -> None:
        """Write each state on a row of its own, :data:`CHUNK` at a time, plus a row without
        properties for each other partition it owes an offset in."""
        db = self._open()
        with db:
            for i in range(0, len(helds), CHUNK):
                self._append(db, helds[i : i + CHUNK])

    def _append(self, db: sqlite3.Connection, helds: list[Held]) -> None:
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
                    if h.props.__class__ is bytes  # type: ignore[comparison-overlap]  # packed: see Backlog.compact
                    else dumps(h.props),
                )
                for i, uid, events, p, offset, h in rows
            ),
        )
        self.rows += len(helds)

    def first_spilled(self, n: int) -> list[str]:
        """Up to ``n`` users, in the order of their first spill (a user's first row is numbered
        before its others)."""
        assert self._db is not None
        uids: dict[str, None] = {}
        for (uid,) in self._db.execute("SELECT uid FROM held ORDER BY id"):
            uids[uid] = None
            if len(uids) == n:
                break
        return list(uids)

    def finished_users(
        self, tp: Partition, finished: AbstractSet[Partition], n: int
    ) -> list[str] | None:
        """The next users of ``tp`` past its cursor, at most ``n`` rows' worth in offset order,
        whose rows all owe ``finished`` partitions; ``None`` when there are no more. A user
        skipped here owes an unfinished partition, and the last of its partitions to finish
        finds it."""
        db = self._db
        assert db is not None
        part = self._part.get(tp)
        if part is None:
            return None
        offset, row = self._cursor.get(tp, (-1, -1))
        seen = db.execute(
            "SELECT offset, id, uid FROM held INDEXED BY held_floor"
            " WHERE part = ? AND (offset, id) > (?, ?) ORDER BY offset, id LIMIT ?",
            (part, offset, row, n),
        ).fetchall()
        if not seen:
            return None
        self._cursor[tp] = seen[-1][0], seen[-1][1]
        done = {self._part[tp] for tp in finished if tp in self._part}
        uids = list(dict.fromkeys(uid for _, _, uid in seen))
        owes: dict[str, set[int]] = {}
        query = f"SELECT uid, part FROM held INDEXED BY held_uid WHERE uid IN {_EACH}"
        for uid, p in db.execute(query, (orjson.dumps(uids),)):
            owes.setdefault(uid, set()).add(p)
        return [uid for uid in uids if owes[uid] <= done]

    def holds(self, uid: str) -> bool:
        """Whether ``uid`` has a row on disk."""
        assert self._db is not None
        return (
            self._db.execute("SELECT 1 FROM held WHERE uid = ? LIMIT 1", (uid,)).fetchone()
            is not None
        )

    def read_back(self, uids: list[str], can_fold: CanFold, fold: Fold) -> dict[str, list[Held]]:
        """Take ``uids`` off disk: per user, its states as updates in order, each row folded
        (``can_fold``, ``fold``: the planner's rules) into the update before it where that is
        exact, oldest first."""
        updates: dict[str, list[Held]] = {}
        loads, part_of = orjson.loads, self.partition
        for _, uid, events, part, offset, raw in self._rows(uids):
            if raw is None:  # the state above's offset in another partition
                updates[uid][-1].first.setdefault(part_of(part), offset)
                continue
            props = loads(raw)
            mine = updates.get(uid)
            host = mine[-1] if mine else None
            if host is not None and can_fold(host.props, props):
                # The row is no rider: nothing else refers to it, and the host's offsets
                # (older) cover its own.
                fold(host.props, props)
                host.events += events
                host.first.setdefault(part_of(part), offset)
            else:
                first = {part_of(part): offset}
                updates.setdefault(uid, []).append(Held.restored(uid, props, first, events))
        return updates

    def _rows(self, uids: list[str]) -> Iterator[Row]:
        """Every row of ``uids`` (users by first spill, each user's rows oldest first), taken
        off disk once the caller has taken the last. One at a time, not a list of them: a
        read-back of a plan's users is several rows each, and their bytes would all be alive at
        once beside their folded states."""
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
        self.rows -= states

    def floor(self, tp: Partition) -> int | None:
        """The earliest offset of ``tp`` a row owes, or ``None``."""
        part = self._part.get(tp)
        if not self.rows or part is None:
            return None
        assert self._db is not None
        (low,) = self._db.execute("SELECT MIN(offset) FROM held WHERE part = ?", (part,)).fetchone()
        return low  # type: ignore[no-any-return]

    def close(self) -> None:
        """Drop the file and its directory."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.rows = 0

    def _part_of(self, tp: Partition) -> int:
        part = self._part.get(tp)
        if part is None:
            part = self._part[tp] = len(self._parts)
            self._parts.append(tp)
        return part

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self._dir = tempfile.mkdtemp(prefix="knock-sink-backfill-", dir=self._work_dir)
            self._db = sqlite3.connect(os.path.join(self._dir, "held.sqlite3"))
            # Durability would only cost time: the file is thrown away after a crash.
            self._db.execute("PRAGMA journal_mode = OFF")
            self._db.execute("PRAGMA synchronous = OFF")
            self._db.execute(
                "CREATE TABLE held (id INTEGER PRIMARY KEY, uid TEXT NOT NULL, events INTEGER NOT NULL,"
                " part INTEGER NOT NULL, offset INTEGER NOT NULL, props BLOB)"
            )
            self._db.execute("CREATE INDEX held_uid ON held (uid)")
            # The commit floor is the minimum per partition, and users of a partition read to
            # their end are read back in its offset order.
            self._db.execute("CREATE INDEX held_floor ON held (part, offset)")
        return self._db
