"""From pending ops to ordered Knock steps: coalescing, levels around merges, retry barrier.

The sink wraps each consumed :data:`~consumer.ops.Op` in a :class:`Pending` and hands it to a
:class:`Planner`. :meth:`Planner.cut` returns a :class:`Plan`: a list of levels whose steps touch
disjoint users, so a level can run concurrently (identifies in one bulk call, merges side by side)
while levels run one after another. Applying a plan gives the same Knock state as applying every
op alone in consume order, whether Knock deep-merges nested properties or replaces them.

Division of work with the caller (the sink):

* it assigns ``seq`` (strictly increasing consume order) and keeps ``source`` opaque to us;
* it may give each pending a ``lane`` (the sink: its partition): an identify then folds, as it is
  added, into its user's last queued identify of the same lane (see :meth:`Planner.add`); every
  call to :meth:`~Planner.drop` must treat a lane's pendings alike;
* a plan still in flight names its users in the next :meth:`~Planner.cut`'s ``busy``; otherwise
  the next cut comes after every step of the previous plan succeeded or was given back with
  :meth:`~Planner.retry`, or a user's later op could overtake an earlier one about to be retried;
* when a step fails it gives back that step's pendings *and* every later step of the plan touching
  a user of a failed or skipped step (transitively, through merges), unapplied;
* it increments ``attempts`` (it knows whether a step was tried or only skipped); the planner sets
  ``not_before``.

No I/O and no clock: time is the ``now`` argument.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import pairwise
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from consumer.config import NestedMerge
from consumer.ops import Identify, Merge, Op, entities

if TYPE_CHECKING:
    from consumer.stage import Committable


@dataclass(slots=True)
class Pending:
    """One consumed op waiting to be applied. ``source`` is the caller's, opaque to the planner:
    the offsets the op stands for (:class:`~consumer.stage.Committable`)."""

    seq: int
    op: Op
    source: Committable
    #: Pendings of one lane may fold into each other on :meth:`Planner.add`; ``None`` never does.
    lane: object = None
    not_before: float = 0.0
    attempts: int = 0


_NOT_OPEN: tuple[None, bool] = (None, False)

#: The props of an identify folded into an earlier one on add (a *rider*): its data travels in
#: that earlier pending's props, and it stays in the queue only to be resolved with it.
RIDER = cast(dict[str, Any], MappingProxyType({}))


@dataclass(slots=True)
class Entry:
    """One user's coalesced identify: ``props`` is the upsert body for ``items`` (in seq order).

    Until a second op folds in, ``props`` is the first item's own dict: treat it as read-only.
    Items after the first may be riders (see :meth:`Planner.add`), whose data is already in it.
    """

    user_id: str
    props: dict[str, Any]
    items: list[Pending]


@dataclass(frozen=True, slots=True)
class MergeStep:
    """A merge to run on its own; ``pending.op`` is a :class:`~consumer.ops.Merge`."""

    pending: Pending


@dataclass(frozen=True, slots=True)
class ActionStep:
    """Any other op (:data:`~consumer.ops.Action`): like a merge, a barrier for what it touches
    (its users, tenant, object: :func:`~consumer.ops.entities`)."""

    pending: Pending


@dataclass(slots=True)
class Level:
    """Steps that touch disjoint users (at most one entry per user, no user in two steps)."""

    identifies: list[Entry] = field(default_factory=list)
    merges: list[MergeStep] = field(default_factory=list)
    actions: list[ActionStep] = field(default_factory=list)


@dataclass(slots=True)
class Plan:
    """Levels to apply in order; level k+1 starts only once level k is fully applied."""

    levels: list[Level]
    #: Identifies that change nothing Knock has (the cut's ``unchanged`` said so): resolved as
    #: applied without a call, and not counted in the cut's user budget.
    unchanged: list[Pending] = field(default_factory=list)

    def users(self) -> set[str]:
        """Every user a step of this plan touches."""
        out: set[str] = set()
        for level in self.levels:
            out.update(e.user_id for e in level.identifies)
            for m in level.merges:
                out.update(_users(m.pending.op))
            for a in level.actions:
                out.update(_users(a.pending.op))
        return out

    def __bool__(self) -> bool:
        return bool(self.levels or self.unchanged)


def _pendings(plan: Plan) -> Iterable[Pending]:
    """Every pending a plan resolves."""
    for level in plan.levels:
        for e in level.identifies:
            yield from e.items
        for m in level.merges:
            yield m.pending
        for a in level.actions:
            yield a.pending
    yield from plan.unchanged


def _users(op: Op) -> tuple[str, ...]:
    return entities(op)


def _can_fold(into: dict[str, Any], props: dict[str, Any]) -> bool:
    # A nested object sent twice in one upsert is exact only if Knock replaces it; when Knock
    # deep-merges, the first object's extra keys would survive sequentially but not folded.
    # Keeping both updates is right in either mode.
    return not any(isinstance(v, dict) and k in into for k, v in props.items())


def _can_fold_deep(into: dict[str, Any], props: dict[str, Any]) -> bool:
    # Under Knock's deep merge, folding is exact unless, at some path, the earlier update holds
    # a non-object (a scalar, null, a list) and the later one an object: sent one after the
    # other, the object replaces that value whole; folded, it would be deep-merged into what
    # Knock held before the earlier update.
    for k, v in props.items():
        if isinstance(v, dict) and k in into:
            old = into[k]
            if not isinstance(old, dict) or not _can_fold_deep(old, v):
                return False
    return True


def _fold_deep(into: dict[str, Any], props: dict[str, Any]) -> None:
    """Deep-merge ``props`` into ``into`` (which the caller owns); nested dicts of ``into``
    come from ops and are copied before they change, never mutated."""
    for k, v in props.items():
        # Most values are not objects: the earlier value is looked up only for those that are.
        if isinstance(v, dict):
            old = into.get(k)
            if isinstance(old, dict):
                merged = dict(old)
                _fold_deep(merged, v)
                into[k] = merged
                continue
        into[k] = v


def folding(
    nested: NestedMerge,
) -> tuple[
    Callable[[dict[str, Any], dict[str, Any]], bool],
    Callable[[dict[str, Any], dict[str, Any]], None],
]:
    """``(can_fold, fold)`` for a nested-merge mode: whether a later update folds exactly into
    an earlier one, and how (the planner's and a backfill's held users' one rule)."""
    if nested == "deep":
        return _can_fold_deep, _fold_deep
    if nested == "either":
        return _can_fold, dict.update
    raise ValueError(f"unknown nested merge mode {nested!r}")


class Planner:
    """Pending ops in seq order, cut into :class:`Plan` s as they become sendable.

    ``add`` is O(1); ``cut`` and ``drop`` are O(pending); ``retry`` sorts.
    """

    __slots__ = ("_can_fold", "_fold", "_lanes", "_last_seq", "_open", "_queue")

    def __init__(self, *, nested: NestedMerge = "either") -> None:
        """:param nested: what Knock does with nested objects. ``either`` (default) folds only
        what is exact whether Knock deep-merges them or replaces them (two updates that both
        carry an object under one key stay apart); ``deep`` relies on Knock's documented
        deep merge and folds such objects into one deep-merged entry.
        """
        self._queue: list[Pending] = []
        #: Ops queued per lane: what a cut holding some lanes could take (:meth:`queued_in`).
        self._lanes: dict[object, int] = {}
        self._last_seq: int | None = None
        self._can_fold, self._fold = folding(nested)
        # user -> (its last queued op, if a fresh identify with a lane; whether its props are
        # ours to change). An op that leaves the queue (cut, dropped) must leave it too.
        self._open: dict[str, tuple[Pending, bool]] = {}

    def add(self, p: Pending) -> None:
        """Queue a newly consumed op.

        An identify with a ``lane`` whose user's last queued op is a fresh identify (never cut
        or given back) of the same lane folds into it when :meth:`cut` would fold them anyway:
        that op's props take this one's and this one stays queued as a *rider* with
        :data:`RIDER` props. The two then share one entry and one fate in every plan. It is
        what lets a backfill hold a user's whole history as one set of properties instead of
        one dict per event.

        :raises ValueError: if ``p.seq`` is not greater than every seq added before.
        """
        if self._last_seq is not None and p.seq <= self._last_seq:
            raise ValueError(f"seq {p.seq} added after {self._last_seq}")
        self._queue.append(p)
        self._last_seq = p.seq
        lanes = self._lanes
        lanes[p.lane] = lanes.get(p.lane, 0) + 1
        op = p.op
        if op.__class__ is not Identify:
            for u in _users(op):
                self._open.pop(u, None)
            return
        uid = op.user_id
        if p.lane is None or p.attempts or p.not_before:
            self._open.pop(uid, None)
            return
        host = self._open.get(uid)
        if host is not None:
            h, owned = host
            into = h.op.props  # type: ignore[union-attr]
            if h.lane == p.lane and self._can_fold(into, op.props):
                if not owned:
                    into = dict(into)
                    h.op = Identify(uid, into)
                    self._open[uid] = (h, True)
                self._fold(into, op.props)
                p.op = Identify(uid, RIDER)
                return
        self._open[uid] = (p, False)

    def _reopen(self) -> None:
        """Rebuild ``_open`` from the queue: each user's last queued op, if a fresh identify
        that is not itself a rider (its host precedes it and stays the user's open op)."""
        open_: dict[str, tuple[Pending, bool]] = {}
        for p in self._queue:
            op = p.op
            if op.__class__ is Identify:
                uid = op.user_id
                if op.props is RIDER:
                    continue
                if p.lane is not None and p.attempts == 0 and p.not_before == 0.0:
                    open_[uid] = (p, False)
                    continue
                open_.pop(uid, None)
            else:
                for u in _users(op):
                    open_.pop(u, None)
        self._open = open_

    def retry(self, items: list[Pending], not_before: float) -> None:
        """Give back pendings that were cut but not applied; they rejoin at their seq position.

        Sets ``not_before`` on each; ``attempts`` is the caller's to increment.

        :raises ValueError: if a pending is already queued (same seq twice).
        """
        merged = sorted([*self._queue, *items], key=lambda p: p.seq)
        for a, b in pairwise(merged):
            if a.seq == b.seq:
                raise ValueError(f"seq {a.seq} is already pending")
        lanes = self._lanes
        for p in items:
            p.not_before = not_before
            lanes[p.lane] = lanes.get(p.lane, 0) + 1
        self._queue = merged

    def cut(
        self,
        now: float,
        max_users: int | None = None,
        *,
        busy: Iterable[str] = (),
        max_levels: int | None = None,
        unchanged: Callable[[Pending], bool] | None = None,
        lanes: AbstractSet[object] = frozenset(),
    ) -> Plan:
        """Take every op that can be sent at ``now``, as levels; the rest stays pending.

        An op is held if its ``not_before`` is after ``now``, if its lane is one of ``lanes``
        (partitions catching up, :mod:`consumer.catchup`), or if it touches a user held earlier
        in this walk; a held op holds all its users, so nothing overtakes it. An op goes one level
        above the last planned op of each of its users, except that an identify folds into its
        user's last planned entry when that is exact (see :func:`_can_fold`).

        :param max_users: stop at the first op that would bring more than this many distinct
            users into the plan; it and every later op stay pending, except riders of ops
            already planned (see :meth:`add`), which always go with them. An op is always taken when
            the plan is still empty, so a merge cannot stall with ``max_users=1``.
        :param max_levels: an op that would open a level beyond this many is held (with its
            users) for a later cut. Under Knock's limits every level costs a paced bulk call of
            its own, so a second level carrying a handful of users wastes a second of budget;
            held, those ops join a full bulk call of the next plan instead.
        :param busy: users of plans still in flight. They are held like users of a held op, so
            a plan cut while another is applied shares no user with it: the two may run side
            by side, and whatever the first gives back with :meth:`retry` still precedes every
            later op of its users.
        :param unchanged: says of a plain identify that sending it would change nothing Knock
            has (change detection). It is asked only of a user's first op in the walk, with no
            earlier op of the user planned, held or in flight, so that what Knock has is all
            there is before it; such an op (with its riders) goes to :attr:`Plan.unchanged`
            and costs nothing of ``max_users``: a plan is sized by what it sends.
        :raises ValueError: if ``max_users`` is less than 1.
        """
        if max_users is not None and max_users < 1:
            raise ValueError(f"max_users must be at least 1, got {max_users}")
        if max_levels is not None and max_levels < 1:
            raise ValueError(f"max_levels must be at least 1, got {max_levels}")
        cut = _Cut(
            self,
            now,
            busy=busy,
            max_users=max_users,
            max_levels=max_levels,
            unchanged=unchanged,
            lanes=lanes,
        )
        ops = iter(self._queue)
        for p in ops:
            if not cut.take(p):
                cut.riders_only(ops)  # the rest of the queue, in the same pass
                break
        self._queue = cut.kept
        plan = cut.plan()
        counts = self._lanes
        for p in _pendings(plan):
            counts[p.lane] -= 1
        return plan

    def drop(self, predicate: Callable[[Pending], bool]) -> list[Pending]:
        """Remove and return (in seq order) the pending ops matching ``predicate``."""
        dropped: list[Pending] = []
        kept: list[Pending] = []
        for p in self._queue:
            (dropped if predicate(p) else kept).append(p)
        self._queue = kept
        self._reopen()
        lanes = self._lanes
        for p in dropped:
            lanes[p.lane] -= 1
        return dropped

    def queued_in(self, lanes: Iterable[object]) -> int:
        """Ops queued in ``lanes``."""
        counts = self._lanes
        return sum(counts.get(lane, 0) for lane in lanes)

    def __len__(self) -> int:
        return len(self._queue)


class _Cut:
    """One walk of the queue by :meth:`Planner.cut`: the levels built so far, each user's last
    planned op, and what stays pending. A planned op leaves the planner's open ops; kept ops
    stay as they were."""

    __slots__ = (
        "_budget",
        "_can_fold",
        "_fold",
        "_lanes",
        "_now",
        "_open",
        "_top",
        "_unchanged",
        "held",
        "kept",
        "last",
        "levels",
        "same",
        "skipped",
    )

    def __init__(
        self,
        planner: Planner,
        now: float,
        *,
        busy: Iterable[str],
        max_users: int | None,
        max_levels: int | None,
        unchanged: Callable[[Pending], bool] | None = None,
        lanes: AbstractSet[object] = frozenset(),
    ) -> None:
        self._can_fold, self._fold, self._open = planner._can_fold, planner._fold, planner._open
        #: Lanes whose ops are all kept (``None`` when none: one test less per op).
        self._lanes = lanes or None
        self._unchanged = unchanged
        #: Ops that change nothing (with their riders), and the users whose last op was one.
        self.same: list[Pending] = []
        self.skipped: set[str] = set()
        self._now = now
        self._budget = max_users if max_users is not None else -1
        self._top = max_levels if max_levels is not None else 1 << 30
        self.levels: list[Level] = []
        #: user -> (level of its last planned op, that op's entry if it was an identify)
        self.last: dict[str, tuple[int, Entry | None]] = {}
        #: Users nothing more may be planned for in this cut.
        self.held: set[str] = set(busy)
        self.kept: list[Pending] = []

    def plan(self) -> Plan:
        levels = [lv for lv in self.levels if lv.identifies or lv.merges or lv.actions]
        return Plan(levels=levels, unchanged=self.same)

    def take(self, p: Pending) -> bool:
        """Plan ``p``, or keep it pending (and its users held); False once the user budget is
        reached (``p`` kept): from there on only riders of planned users go (:meth:`riders_only`)."""
        op = p.op
        if op.__class__ is Identify:
            # The common case without tuples, sets or generators.
            uid = op.user_id
            if (
                p.not_before > self._now
                or uid in self.held
                or (self._lanes is not None and p.lane in self._lanes)
            ):
                self._keep(p, uid)
                return True
            if uid not in self.last and (self.skipped or self._unchanged) and self._same(p, uid):
                return True
            if self._budget > 0 and uid not in self.last and len(self.last) >= self._budget:
                self._keep(p, uid)
                return False
            if self.identify(p, op):
                if self._open.get(uid, _NOT_OPEN)[0] is p:
                    del self._open[uid]
            else:
                self._keep(p, uid)
            return True
        users = _users(op)
        if (
            p.not_before > self._now
            or (self._lanes is not None and p.lane in self._lanes)
            or any(u in self.held for u in users)
        ):
            self._keep(p, *users)
            return True
        if self._budget > 0 and self.last:
            new = sum(1 for u in set(users) if u not in self.last)
            if new and len(self.last) + new > self._budget:
                self._keep(p, *users)
                return False
        if not self.barrier(p, op):
            self._keep(p, *users)
        return True

    def _same(self, p: Pending, uid: str) -> bool:
        """Whether ``p``, its user's first op in the walk, changes nothing (taken into
        :attr:`same`): a rider of a host that did not, or an op :attr:`_unchanged` says
        does not."""
        props = p.op.props  # type: ignore[union-attr]
        if props is RIDER:
            if uid not in self.skipped:
                return False
        elif not props or self._unchanged is None or not self._unchanged(p):
            self.skipped.discard(uid)
            return False
        else:
            self.skipped.add(uid)
        self.same.append(p)
        if self._open.get(uid, _NOT_OPEN)[0] is p:
            del self._open[uid]  # resolved: nothing may fold into it any more
        return True

    def riders_only(self, rest: Iterable[Pending]) -> None:
        """The budget was reached: of ``rest``, plan only the riders of users already planned
        (they go with their host) and keep everything else. Only users already in the plan
        matter here (a backlog read ahead makes this the long part of the walk: keep it to
        lookups)."""
        last, held, kept, skipped = self.last, self.held, self.kept, self.skipped
        for p in rest:
            op = p.op
            if isinstance(op, Identify):
                uid = op.user_id
                if op.props is RIDER and uid in skipped and uid not in last and uid not in held:
                    self.same.append(p)  # goes with its host, which changed nothing
                    continue
                if uid in last:
                    if op.props is RIDER and uid not in held:
                        self.identify(p, op)
                        continue
                    held.add(uid)
            else:
                held.update(_users(op))
            kept.append(p)

    def _keep(self, p: Pending, *users: str) -> None:
        self.held.update(users)
        self.kept.append(p)

    def identify(self, p: Pending, op: Identify) -> bool:
        """Plan ``p``, folded or one level above its user's last op; False (nothing planned)
        when that level would be the top one or beyond."""
        levels, last = self.levels, self.last
        prev = last.get(op.user_id)
        if prev is None:
            # A user's first op in the cut, by far the most frequent case: level 0.
            entry = Entry(op.user_id, op.props, [p])
            if not levels:
                levels.append(Level())
            levels[0].identifies.append(entry)
            last[op.user_id] = (0, entry)
            return True
        level, prev_entry = prev
        if op.props is RIDER:
            # Its host is this user's last planned op (nothing of the user comes between).
            assert prev_entry is not None
            prev_entry.items.append(p)
            return True
        if prev_entry is not None and self._can_fold(prev_entry.props, op.props):
            if prev_entry.props is prev_entry.items[0].op.props:  # type: ignore[union-attr]
                prev_entry.props = dict(prev_entry.props)  # first fold: stop sharing the op's dict
            self._fold(prev_entry.props, op.props)
            prev_entry.items.append(p)
            return True
        level += 1
        if level >= self._top:
            return False
        entry = Entry(user_id=op.user_id, props=op.props, items=[p])
        _level(levels, level).identifies.append(entry)
        last[op.user_id] = (level, entry)
        return True

    def barrier(self, p: Pending, op: Op) -> bool:
        """Plan a merge or an action one level above the last op of each of its users (an
        identify that is no plain ``Identify`` instance goes to :meth:`identify`); False when
        that level would be the top one or beyond."""
        if isinstance(op, Identify):
            return self.identify(p, op)
        users = _users(op)
        last = self.last
        level = 1 + max(last.get(u, (-1, None))[0] for u in users)
        if level >= self._top:
            return False
        if op.__class__ is Merge:
            _level(self.levels, level).merges.append(MergeStep(p))
        else:
            _level(self.levels, level).actions.append(ActionStep(p))
        for u in users:
            last[u] = (level, None)
        return True


def _level(levels: list[Level], index: int) -> Level:
    # Levels only grow one at a time: an op is at most one above an existing level.
    if index == len(levels):
        levels.append(Level())
    return levels[index]
