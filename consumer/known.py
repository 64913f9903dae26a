"""Change detection: what Knock is known to have of each user, so that an update repeating it
is not sent again.

:class:`Known` holds, per user, a fingerprint of each property Knock *confirmed* (a bulk
operation that completed with the user in neither its errors nor its rate-limited ids, or a 200
to a single identify), never of what was only sent. Before an identify entry goes out the
applier strips what the state says Knock already has (:meth:`Known.strip`); after Knock
confirmed the rest, it records it (:meth:`Known.confirm`). Anything that may have changed a user
in Knock other than a confirmed identify (a merge, a delete, an action identifying it inline, a
rejection, a call whose fate is unknown) forgets the user (:meth:`Known.forget`).

The one rule that keeps it exact: a property is stripped only when sending it again would leave
Knock as it is. So a missing, evicted or expired entry only ever causes a send. Under
``knock.nested_merge = "deep"`` Knock deep-merges nested objects, so a nested object compares
leaf by leaf (a leaf is a value that is not an object, or an empty object): ``{"a": {"b": 1}}``
sent after ``{"a": {"b": 1, "c": 2}}`` was confirmed is a no-op, since ``a`` is known to be an
object already holding ``b = 1``. Under ``"either"`` a top-level value compares whole: sending
a value twice is a no-op whether Knock replaces or merges objects. ``channel_data`` and
``preferences`` compare whole in both modes (their merge rules are Knock's own).

Only fingerprints are kept (XXH3's 64 bits over the value's canonical JSON), not values: a
collision between two different values of one property would skip a change, with odds of
2^-64 per comparison. XXH3 rather than a cryptographic hash because the fingerprints are taken
dozens of times an update (100 ns each against BLAKE2b's 480, 2026-12-06): the only values a
crafted collision could hide are the crafter's own, since both values of a comparison are one
user's one property. Each user's entry expires ``ttl`` seconds after it was created (not after
its last update: a user the stream keeps mentioning is sent whole at least once per ``ttl``,
which is the bound on how long a change made in Knock by someone else can hide), and the
least recently used users are forgotten while the state's estimated size is past
``max_bytes``. The estimate (:func:`entry_bytes`) is counted rather than measured because
asking the allocator per entry (``sys.getsizeof`` over the dict, its keys and ints) would cost
more than the comparison it bounds; tests/test_known.py holds it to tracemalloc's count.

Each entry belongs to the partition its events came from, and is used only for events of that
partition. The partition's owner is the only member of the group that writes that user's
updates to Knock on a topic keyed by user; when the partition leaves this process (revoked,
lost), its users are forgotten (:meth:`Known.forget_partitions`), since its next owner may
change them. A user met on a second partition of a topic shows the topic is not keyed by user:
from then on nothing of that topic is stripped in this process, nor of a topic whose records
are not keyed by their user's id (:meth:`consumer.dispatch.Dispatch.check_key`, which tells
:attr:`Known.unkeyed`): another member holding other partitions of such a topic is not seen from
here (docs/change-detection.md).

One writer: only the loop's thread changes the state (the cut's :meth:`unchanged`, restores,
revokes, and :meth:`settle`, which takes in what a finished plan learnt: its confirmations and
forgets, as :class:`Confirmed` and :class:`Forgotten` in its outcome). The plans' threads only
read it (:meth:`strip`, :meth:`tombstones`): a plan's users are in no other plan in flight and
the cut compares only users in none, so nothing changes a user's entry while its plan reads
it. A lock shared by the plans' threads and the loop made each wait for the others' hashing:
half the loop's time went to waiting on it (2026-12-06).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from xxhash import xxh3_64_intdigest

from .config import NestedMerge
from .records import Partition

__all__ = ["OBJECT", "Confirmed", "Forgotten", "Known", "entry_bytes", "fingerprint"]

#: Properties compared whole whatever the nested-merge mode.
WHOLE: Final = frozenset({"channel_data", "preferences"})
#: The fingerprint of "an object is here" (an empty object sent under deep merge); never the
#: fingerprint of a value (those are unsigned).
OBJECT: Final = -1
#: Distinct property paths shared between users' entries; past it, paths are not shared (the
#: entries stay right, only larger).
PATHS_SHARED: Final = 100_000
#: Estimated bytes of one user's entry besides its id and leaves: the entry object, its
#: fingerprint dict when small, the LRU order's node (CPython 3.11, 64-bit, measured with
#: tracemalloc: 476 bytes for a 13-character id and one leaf, 2,823 with 40 leaves).
ENTRY_BYTES: Final = 360
#: Estimated bytes per leaf: the dict slot (with its share of the dict's growth) and the
#: fingerprint's int.
LEAF_BYTES: Final = 64
#: Estimated bytes of a path kept in the shared table (the tuple, its strings, the slot).
PATH_BYTES: Final = 160

#: The fingerprint scheme a changelog record was written with (a record of another is left out
#: when restored: its numbers compare with nothing).
SCHEME: Final = "xxh3"

Path = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Confirmed:
    """Knock confirmed the upsert ``sent`` of ``user``, made of events of ``tp`` (see
    :meth:`Known.confirm`)."""

    user: str
    sent: dict[str, Any]
    tp: Partition | None
    #: The handle of the offsets it stands for (:class:`~consumer.stage.Committable`): when
    #: its partition left before the loop takes the confirmation in (not ``current``), it is
    #: taken as of no partition (the user forgotten), as :meth:`Known.confirm` says.
    source: Any = None


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What is known of ``users`` no longer holds (see :meth:`Known.forget`); ``logged``: their
    tombstones are written already (:meth:`Known.tombstones`)."""

    users: tuple[str, ...]
    tp: Partition | None
    logged: bool = False


def fingerprint(value: Any) -> int | None:
    """XXH3 (64 bits) of ``value`` as canonical JSON (keys sorted), an unsigned int, stable
    across processes (a restored state compares with the same numbers); ``None`` for a value
    JSON cannot hold, which is never stripped."""
    try:
        raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return None
    return xxh3_64_intdigest(raw)


def entry_bytes(user: str, leaves: int) -> int:
    """The estimated memory of ``user``'s entry holding ``leaves`` fingerprints."""
    return ENTRY_BYTES + len(user) + LEAF_BYTES * leaves


class _Entry:
    __slots__ = ("fps", "nested", "same", "since", "tp")

    def __init__(self, tp: Partition, since: float, fps: dict[Path, int] | None = None) -> None:
        #: The partition whose events it was confirmed for.
        self.tp = tp
        #: When Knock first confirmed what this entry holds (wall time): its expiry runs from
        #: here, so a user's later updates do not keep the rest of it alive.
        self.since = since
        self.fps: dict[Path, int] = fps if fps is not None else {}
        #: Whether a path deeper than one key is held (only then are paths scanned by prefix).
        self.nested = any(len(p) > 1 for p in self.fps)
        #: The whole-update fingerprint of the last update found to carry nothing new, until
        #: the entry changes: a stream repeating a user's traits byte for byte is then
        #: compared in one hash, not one per property.
        self.same: int | None = None


class Known:
    """Per user, the fingerprints of what Knock confirmed.

    :param ttl: seconds an entry lives after its creation (> 0).
    :param max_bytes: the estimated memory the entries may take; past it the least recently
        used go first.
    :param nested: the ``knock.nested_merge`` mode, the same rule the planner folds by.
    :param clock: wall time (an entry's age survives a restart through the changelog).
    """

    def __init__(
        self,
        ttl: float,
        max_bytes: int,
        nested: NestedMerge,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= 0 or max_bytes < 1:
            raise ValueError("change detection needs ttl > 0 and max_bytes >= 1")
        if nested not in ("deep", "either"):
            raise ValueError(f"unknown nested merge mode {nested!r}")
        self._ttl = ttl
        self._max = max_bytes
        #: The estimated memory of the entries and the shared paths.
        self._bytes = 0
        self._deep = nested == "deep"
        self._clock = clock
        self._users: OrderedDict[str, _Entry] = OrderedDict()
        self._paths: dict[Path, Path] = {}
        #: Topics on which a user came from two partitions: nothing of them is stripped.
        self.unkeyed: set[str] = set()
        #: Where each record and tombstone goes (:class:`~consumer.knownlog.KnownLog`), when
        #: the state has a changelog.
        self.log: Callable[[Partition, str, bytes | None], None] | None = None
        #: Send everything (``backfill --full``): :meth:`strip` strips nothing; confirmations
        #: are still recorded, so the state is refreshed.
        self.full = False

    def __len__(self) -> int:
        return len(self._users)

    @property
    def memory_bytes(self) -> int:
        """The estimated memory the state takes now (at most ``max_bytes`` once a call
        returns, but for a single entry larger than the bound, kept until the next)."""
        return self._bytes

    # -- the comparison --------------------------------------------------------------------

    def strip(
        self,
        user: str,
        props: dict[str, Any],
        tp: Partition | None,
        earlier: Sequence[Confirmed] | None = (),
    ) -> dict[str, Any]:
        """What of ``props`` (from events of partition ``tp``; ``None``: of several, or no
        longer this process's) Knock does not have yet: ``props`` itself when nothing is known
        (or :attr:`full`), an empty dict when it has it all. ``props`` is not changed.

        Called from a plan's thread for a user of that plan: it reads only (an expired entry,
        or one of another partition, is left for the loop to drop). ``earlier``: what the plan
        confirmed of the user in its earlier levels, not taken in yet (:meth:`settle`), compared
        with too; ``None``: the plan forgot the user."""
        if self.full or tp is None or tp[0] in self.unkeyed or earlier is None:
            return props
        entry = self._users.get(user)
        if entry is not None and (entry.tp != tp or self._clock() - entry.since >= self._ttl):
            entry = None
        if earlier:
            # A scratch copy with the plan's confirmations: the state itself is the loop's.
            scratch = _Entry(tp, 0.0, dict(entry.fps) if entry is not None else None)
            for c in earlier:
                if c.tp != tp:
                    return props
                self._record(scratch, c.sent, share=False)
            entry = scratch
        if entry is None:
            return props
        return self._lacks(entry, props, first=False)

    def unchanged(self, user: str, props: dict[str, Any], tp: Partition | None) -> bool:
        """Whether Knock has all of ``props`` (``not strip(...)``), answered at the first
        property it lacks: the plan's cut asks it of every identify, and most that change
        something are told so by their first properties. The loop's thread only."""
        if self.full or tp is None or tp[0] in self.unkeyed:
            return not props
        entry = self._live(user)
        if entry is None:
            return not props
        if entry.tp != tp:
            self._moved(user, entry, tp)
            return not props
        self._users.move_to_end(user)
        return not self._lacks(entry, props, first=True)

    def _lacks(self, entry: _Entry, props: dict[str, Any], first: bool) -> dict[str, Any]:
        whole = None
        if entry.same is not None:
            whole = fingerprint(props)
            if whole == entry.same:
                return {}
        fps = entry.fps
        deep = self._deep
        out: dict[str, Any] = {}
        for k, v in props.items():
            if deep and v.__class__ is dict and k not in WHOLE:
                sub = self._strip_object((k,), v, entry)
                if sub is not None:
                    out[k] = sub
                    if first:
                        return out
            else:
                f = fps.get((k,))
                if f is None or f != fingerprint(v):
                    out[k] = v
                    if first:
                        return out
        if not out:
            entry.same = whole if whole is not None else fingerprint(props)
        return out

    def _strip_object(self, path: Path, obj: dict[str, Any], entry: _Entry) -> Any:
        """The part of the object ``obj`` at ``path`` Knock lacks, ``None`` for none of it.
        Sending a part is exact: a stripped leaf is known, so every object above it is too, and
        Knock merges the rest into it."""
        if not obj:
            return None if path in _objects(entry) else obj
        fps = entry.fps
        out: dict[str, Any] = {}
        for k, v in obj.items():
            p = (*path, k)
            if v.__class__ is dict:
                sub = self._strip_object(p, v, entry)
                if sub is not None:
                    out[k] = sub
            else:
                f = fps.get(p)
                if f is None or f != fingerprint(v):
                    out[k] = v
        return out or None

    # -- what Knock confirmed --------------------------------------------------------------

    def settle(self, changes: Iterable[Confirmed | Forgotten]) -> None:
        """Take in what a finished plan learnt, in the order it learnt it (the loop's thread).
        A confirmation followed by a forget of its user is left out: that user's tombstone may
        be written already, ahead of the call that forgot it, and a record after it would
        bring back what the call changed."""
        later: set[str] = set()
        keep: list[Confirmed | Forgotten] = []
        for c in reversed(list(changes)):
            if isinstance(c, Forgotten):
                later.update(c.users)
            elif c.user in later:
                continue
            keep.append(c)
        for c in reversed(keep):
            if isinstance(c, Confirmed):
                current = c.source is None or c.source.current
                self.confirm(c.user, c.sent, c.tp if current else None)
            else:
                self.forget(c.users, c.tp, logged=c.logged)

    def confirm(self, user: str, sent: dict[str, Any], tp: Partition | None) -> None:
        """Knock confirmed the upsert ``sent`` of ``user`` (what was sent, after :meth:`strip`),
        made of events of partition ``tp`` (``None``: of several, or of a partition no longer
        this process's, whose next owner may already have written the user: forgotten)."""
        now = self._clock()
        entry = self._live(user, now)
        if entry is not None and entry.tp != tp:
            self._moved(user, entry, tp)
            entry = None
        if tp is None:
            return
        if entry is None:
            entry = self._users[user] = _Entry(tp, now)
        else:
            self._users.move_to_end(user)
            self._bytes -= entry_bytes(user, len(entry.fps))
            entry.same = None  # what it held may have changed
        self._record(entry, sent)
        self._bytes += entry_bytes(user, len(entry.fps))
        self._evict(keep=user)
        if self.log is not None:
            self.log(tp, user, _encode(entry))

    def _record(self, entry: _Entry, sent: dict[str, Any], *, share: bool = True) -> None:
        """Hold in ``entry`` what Knock has after ``sent`` (its paths shared between entries
        unless not ``share``: a scratch entry on a plan's thread)."""
        # The objects held, found once (a scan of the entry per leaf is quadratic) and only
        # for a path not held: a path held is a leaf, not an object, and most updates change
        # the values of paths held.
        objects = None if entry.nested else _NO_OBJECTS
        fps = entry.fps
        for path, f in self._leaves(sent):
            if objects is None and path not in fps:
                objects = _objects(entry)
            self._set(entry, path, f, _NO_OBJECTS if objects is None else objects, share)

    def _leaves(self, props: dict[str, Any]) -> Iterator[tuple[Path, int | None]]:
        for k, v in props.items():
            if self._deep and v.__class__ is dict and k not in WHOLE:
                yield from _object_leaves((k,), v)
            else:
                yield (k,), fingerprint(v)

    def _set(
        self, entry: _Entry, path: Path, f: int | None, objects: frozenset[Path], share: bool
    ) -> None:
        """Hold ``f`` at ``path``; ``objects`` are the paths the entry holds objects at, as found
        before the update's first path not held (:func:`_objects`): no leaf of one update lies
        under another of its leaves, so the update's own writes never change whether ``path``
        is one."""
        fps = entry.fps
        # An object written over a value replaces it: the value's entry goes. A value written
        # over an object replaces it and all it held.
        for i in range(1, len(path)):
            fps.pop(path[:i], None)
        if f != OBJECT and path in objects:
            n = len(path)
            for p in [p for p in fps if len(p) > n and p[:n] == path]:
                del fps[p]
        if f is None:
            fps.pop(path, None)
            return
        if f == OBJECT and path in objects:
            return
        fps[self._share(path) if share else path] = f
        if len(path) > 1:
            entry.nested = True

    def _share(self, path: Path) -> Path:
        shared = self._paths.get(path)
        if shared is None:
            if len(self._paths) >= PATHS_SHARED:
                return path
            shared = self._paths[path] = path
            self._bytes += PATH_BYTES
        return shared

    def _drop(self, user: str) -> _Entry | None:
        entry = self._users.pop(user, None)
        if entry is not None:
            self._bytes -= entry_bytes(user, len(entry.fps))
        return entry

    def _evict(self, keep: str | None = None) -> None:
        """Forget the least recently used users while past the bound (but ``keep``, the
        one just written, which is the most recent)."""
        users = self._users
        while self._bytes > self._max and users:
            user = next(iter(users))
            if user == keep:
                return
            self._drop(user)

    def _moved(self, user: str, entry: _Entry, tp: Partition | None) -> None:
        self._drop(user)
        if self.log is not None:
            self.log(entry.tp, user, None)
        if tp is not None and tp[0] == entry.tp[0]:
            self.unkeyed.add(tp[0])

    def forget_partitions(self, tps: Iterable[Partition]) -> None:
        """``tps`` left this process: their next owner may change their users."""
        gone = set(tps)
        if not gone:
            return
        for u in [u for u, e in self._users.items() if e.tp in gone]:
            self._drop(u)

    def forget(
        self, users: Iterable[str], tp: Partition | None = None, *, logged: bool = False
    ) -> None:
        """What is known of ``users`` no longer holds (merged, deleted, identified by an action,
        rejected, or a call whose result is unknown), for an op of partition ``tp``. Unless
        ``logged`` (:meth:`tombstones` wrote them), the changelog gets their tombstones, on
        ``tp`` too: the user may have been evicted from memory and still be in the changelog
        there."""
        log = None if logged else self.log
        for u in users:
            entry = self._drop(u)
            if log is not None:
                _tombstones(log, u, entry, tp)

    def tombstones(self, users: Iterable[str], tp: Partition | None) -> None:
        """Write ``users``' tombstones now, ahead of a call that may change them (a merge, an
        action identifying them inline), as :meth:`forget` would: a process stopped between
        the call and the plan's end must not leave a record of what Knock had before it. From
        a plan's thread; it reads only (the plan hands the forget itself to :meth:`settle`)."""
        log = self.log
        if log is not None:
            for u in users:
                _tombstones(log, u, self._users.get(u), tp)

    def load(self, tp: Partition, batches: Iterable[Iterable[tuple[str, bytes | None]]]) -> int:
        """Take in partition ``tp``'s changelog, oldest record first, in batches as they are
        read (the state stays within its bound while it is read); returns the users known for
        ``tp`` afterwards. An unreadable or expired record is left out (only more is sent); a
        restore that fails part way must be followed by :meth:`forget_partitions`, since a later
        tombstone may not have been read."""
        torn: set[str] = set()  # known from another partition too: trusted on neither
        for batch in batches:
            now = self._clock()
            for user, value in batch:
                # The last record of each user wins, as compaction keeps it.
                have = self._drop(user)
                if have is not None and have.tp != tp:
                    torn.add(user)
                if value is None or user in torn:
                    continue
                entry = _decode(tp, value)
                if entry is None or now - entry.since >= self._ttl:
                    continue
                entry.fps = {self._share(p): f for p, f in entry.fps.items()}
                self._users[user] = entry
                self._bytes += entry_bytes(user, len(entry.fps))
                self._evict()
        return sum(1 for e in self._users.values() if e.tp == tp)

    def _live(self, user: str, now: float | None = None) -> _Entry | None:
        entry = self._users.get(user)
        if entry is None:
            return None
        if (self._clock() if now is None else now) - entry.since >= self._ttl:
            self._drop(user)
            return None
        return entry


def _tombstones(
    log: Callable[[Partition, str, bytes | None], None],
    user: str,
    entry: _Entry | None,
    tp: Partition | None,
) -> None:
    """``user``'s tombstones: where its entry was recorded, and on ``tp``."""
    if entry is not None:
        log(entry.tp, user, None)
    if tp is not None and (entry is None or entry.tp != tp):
        log(tp, user, None)


def _encode(entry: _Entry) -> bytes:
    # orjson writes the (path, fingerprint) tuples as arrays: no list built per leaf.
    return orjson.dumps({"h": SCHEME, "t": entry.since, "f": list(entry.fps.items())})


def _decode(tp: Partition, value: bytes) -> _Entry | None:
    try:
        raw = orjson.loads(value)
        if raw["h"] != SCHEME:
            return None
        fps = {tuple(str(k) for k in p): int(f) for p, f in raw["f"]}
        return _Entry(tp, float(raw["t"]), fps)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


_NO_OBJECTS: Final[frozenset[Path]] = frozenset()


def _objects(entry: _Entry) -> frozenset[Path]:
    """The paths at which ``entry`` knows Knock holds an object."""
    return frozenset(
        [p[:i] for p in entry.fps if len(p) > 1 for i in range(1, len(p))]
        + [p for p, f in entry.fps.items() if f == OBJECT]
    )


def _object_leaves(path: Path, obj: dict[str, Any]) -> Iterator[tuple[Path, int | None]]:
    if not obj:
        yield path, OBJECT
        return
    for k, v in obj.items():
        p = (*path, k)
        if v.__class__ is dict:
            yield from _object_leaves(p, v)
        else:
            yield p, fingerprint(v)
