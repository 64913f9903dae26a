"""Apply step: carry out a :class:`~consumer.plan.Plan` against Knock and report what became of
every pending op.

:class:`Flight` runs up to :data:`PLANS_IN_FLIGHT` plans side by side on worker threads, so
fetching (and the consumer's group membership) goes on while Knock is slow, retried or
rate-limited; their users are disjoint (see ``busy`` in :meth:`consumer.plan.Planner.cut`), so
per-user order holds. Within a plan, :class:`Applier` runs the levels one after another; the
steps inside a level touch disjoint users and run concurrently (the action steps through
:class:`~consumer.apply_actions.ActionRunner`). An op counts as *done* only when Knock applied
it: for bulk identify that means the bulk operation finished and the user is in neither its
``error_items`` nor the ``x-ratelimited-*`` header. When an op of a user does not apply, every
later op of that user (and any merge involving it) in the same plan is handed back untouched,
so per-user order holds across retries. What became of each op is an
:class:`~consumer.outcome.Outcome`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait

from .apply_actions import ActionRunner
from .entity_gap import EntityGap
from .errors import ItemError, RetryableError
from .knock import KnockClient
from .known import Known
from .limits import ENTITY_GAP
from .ops import Merge, entities
from .outcome import Outcome, Rejections, reason
from .plan import Entry, Level, MergeStep, Plan
from .records import Partition

__all__ = ["PLANS_IN_FLIGHT", "SWITCH_INTERVAL", "Applier", "Flight", "Outcome"]

log = logging.getLogger("knock_sink.apply")

#: Plans applied side by side. Two hide the gap between one plan's end and the next one's
#: first request (bulk operation polling, waiting for the limiter).
PLANS_IN_FLIGHT = 2
#: The interpreter's thread switch interval while the sink runs (``sys.setswitchinterval``;
#: CPython's default is 5 ms). The loop's thread is busy reading most of the time, and every
#: request a worker makes needs the interpreter lock a few times (to send, to read the answer,
#: to take the next task): at 5 ms a wait, a plan's singles and its bulk call took longer than
#: Knock's second, and a backfill under Knock's limits made fewer bulk calls than it could.
SWITCH_INTERVAL = 0.001


def _partition(entry: Entry) -> Partition | None:
    """The one partition an entry's events came from, while it is still this process's."""
    tp = entry.items[0].source.partition
    for p in entry.items:
        if p.source.partition != tp or not p.source.current:
            return None
    return tp


def _chunks(items: list[Entry], size: int) -> Iterator[list[Entry]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Applier:
    """Runs plans. :meth:`apply` may run for two plans at once on disjoint users (see
    :class:`Flight`): what they share (the :class:`~consumer.entity_gap.EntityGap`, the
    :class:`~consumer.outcome.Rejections`) is safe to share between threads.

    :param singles: at most this many entries of a level go through single identify instead of
        bulk (Knock paces the two endpoints separately, so both budgets add up); entries
        whose user was in a bulk call less than ``entity_gap`` ago go first, and those past
        ``singles`` are given back to wait out the gap.
    :param known: what Knock confirmed of each user (change detection; ``None``: off). Every
        entry is compared with it here, just before its call, rather than when the planner cuts
        the plan: only here is the entry final (folded, given back and cut again, split between
        bulk and single), and only here is the state as fresh as it can be: a plan's users are
        in no other plan in flight, so no confirmation or invalidation of theirs can come
        between this comparison and this call, while at cut time the previous plan of a user
        may still be running. Both ``run`` and a backfill apply plans through here.
    """

    def __init__(
        self,
        knock: KnockClient,
        *,
        bulk_size: int,
        concurrency: int,
        item_attempts: int,
        singles: int = 0,
        entity_gap: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        known: Known | None = None,
    ) -> None:
        self._knock = knock
        self._known = known
        self._bulk_size = bulk_size
        self._singles = singles
        self._clock = clock
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="knock")
        self._gap = EntityGap(entity_gap, clock=clock)
        self._rejections = Rejections(item_attempts)
        self._actions = ActionRunner(
            knock, self._pool, bulk_size=bulk_size, gap=self._gap, rejections=self._rejections
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def apply(self, plan: Plan) -> Outcome:
        """Apply ``plan``. Raises :class:`~consumer.errors.FatalKnockError` when Knock rejects the
        configuration; everything else ends up in the returned :class:`Outcome`."""
        out = Outcome()
        # Knock has all of it (the cut asked change detection): applied, and costs no call.
        out.done.extend(plan.unchanged)
        out.unchanged.extend(plan.unchanged)
        blocked: set[str] = set()
        for level in plan.levels:
            self._apply_level(level, blocked, out)
        return out

    def settle(self, out: Outcome) -> None:
        """Take in what a finished plan learnt of what Knock has (the loop's thread: change
        detection's state has one writer)."""
        if self._known is not None and out.known:
            self._known.settle(out.known)

    def _apply_level(self, level: Level, blocked: set[str], out: Outcome) -> None:
        gap = self._gap
        now = self._clock()
        # The gap is Knock's, counted when the bulk call arrives: the limiter may hold this one
        # back (a plan is started while the previous call's answer is still being waited for),
        # and a user whose last bulk call will be a second old by then may go in bulk.
        leaves = now + (self._knock.ready_in("bulk_identify") if gap else 0.0)
        entries: list[Entry] = []
        known = self._known
        for entry in level.identifies:
            if entry.user_id in blocked:
                out.retry.extend((p, 0.0) for p in entry.items)
            elif known is None:
                entries.append(entry)
            else:
                body = known.strip(
                    entry.user_id,
                    entry.props,
                    _partition(entry),
                    out.touched.get(entry.user_id, ()),
                )
                if not body and entry.props:
                    # Knock has all of it: resolved as applied, and costs no call.
                    out.done.extend(entry.items)
                    out.unchanged.extend(entry.items)
                elif body is entry.props:
                    entries.append(entry)
                else:
                    entries.append(Entry(entry.user_id, body, entry.items))
        recent = gap.recent([e.user_id for e in entries], leaves)
        bulk = [e for e in entries if e.user_id not in recent]
        singles = [e for e in entries if e.user_id in recent]
        if gap and len(singles) > self._singles:
            # Single identify is 60 users a second: past this level's share of it, a recent
            # user waits out the gap for a later bulk call, rather than holding this plan (its
            # users, a flight slot) for seconds of singles while the bulk budget goes unused.
            for e in singles[self._singles :]:
                blocked.add(e.user_id)
                out.retry.extend((p, gap.gap) for p in e.items)
            del singles[self._singles :]
        room = max(0, self._singles - len(singles))
        if room and len(bulk) > self._bulk_size:
            # Past one bulk call the next waits a whole second for Knock's tier-1 budget,
            # while single identify has its own budget: spend it on the overflow.
            singles.extend(bulk[self._bulk_size : self._bulk_size + room])
            del bulk[self._bulk_size : self._bulk_size + room]
        if gap and len(bulk) > self._bulk_size:
            # Under Knock's limits a second bulk call costs a whole second of tier 1 (in a
            # group, a turn): the few users past a full call wait for the next plan's instead.
            self._give_back(bulk[self._bulk_size :], blocked, out)
            del bulk[self._bulk_size :]
        gap.stamp([e.user_id for e in bulk], now)
        tasks: list[Future[None]] = [
            self._pool.submit(self._bulk, chunk, blocked, out)
            for chunk in _chunks(bulk, self._bulk_size)
        ]
        tasks.extend(self._pool.submit(self._single, e, blocked, out) for e in singles)
        for step in level.merges:
            op = step.pending.op
            assert isinstance(op, Merge)
            if op.user_id in blocked or op.from_user_id in blocked:
                blocked.update((op.user_id, op.from_user_id))
                out.retry.append((step.pending, 0.0))
            else:
                if known is not None:
                    # Knock merges properties (the survivor's win) and deletes the other user:
                    # what was known of either no longer says what Knock has, whatever the
                    # answer (or none).
                    pair, tp = (op.user_id, op.from_user_id), step.pending.source.partition
                    known.tombstones(pair, tp)
                    out.forgot(pair, tp, logged=True)
                tasks.append(self._pool.submit(self._merge, step, blocked, out))
        error: BaseException | None = None
        for t in tasks:
            # Wait for every task even after a failure: none may still be writing to `out`.
            try:
                t.result()
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error
        if level.actions:
            if known is not None:
                # Deletes, and actions identifying their users inline (triggers, subscriptions,
                # audiences), change users outside the state's record: forget them before the
                # call, so that no answer (or its absence) can leave a stale entry.
                for a in level.actions:
                    users = [u for u in entities(a.pending.op) if "/" not in u]
                    known.tombstones(users, a.pending.source.partition)
                    out.forgot(users, a.pending.source.partition, logged=True)
            self._actions.run(level.actions, blocked, out)

    # Tasks run on the pool; list.append and set.add are atomic under the GIL, which is all
    # the sharing they do.

    def _applied(self, entry: Entry, out: Outcome) -> None:
        self._rejections.applied(entry.user_id)
        if self._known is not None:
            # Recorded only now that Knock confirmed it, and only what was sent.
            out.confirmed(entry.user_id, entry.props, _partition(entry), entry.items[0].source)
        out.done.extend(entry.items)

    def _unknown(self, entries: list[Entry], out: Outcome) -> None:
        """Knock rejected these users, or may or may not have applied what was sent."""
        if self._known is not None:
            for e in entries:
                out.forgot((e.user_id,), e.items[0].source.partition)

    def _bulk(self, chunk: list[Entry], blocked: set[str], out: Outcome) -> None:
        users = [{"id": e.user_id, **e.props} for e in chunk]
        try:
            result = self._knock.bulk_identify(users)
        except RetryableError:  # only when stopping
            self._unknown(chunk, out)
            self._give_back(chunk, blocked, out)
            return
        except ItemError:
            # Knock refused the whole request because of its content: find the culprits by
            # sending each user alone.
            for e in chunk:
                self._single(e, blocked, out)
            return
        out.count("bulk_identify", len(chunk))
        if self._gap:
            # Knock's gap runs from when it took the call, after the limiter's wait: stamp again.
            self._gap.stamp([e.user_id for e in chunk], self._clock())
        limited = set(result.rate_limited)
        for e in chunk:
            if e.user_id in result.failed:
                self._unknown([e], out)
                self._rejections.failed(e.items, e.user_id, result.failed[e.user_id], blocked, out)
            elif e.user_id in limited:
                blocked.add(e.user_id)
                out.retry.extend((p, ENTITY_GAP) for p in e.items)
            else:
                self._applied(e, out)

    def _single(self, entry: Entry, blocked: set[str], out: Outcome) -> None:
        try:
            self._knock.identify(entry.user_id, entry.props)
        except RetryableError:
            self._unknown([entry], out)
            self._give_back([entry], blocked, out)
            return
        except ItemError as exc:
            self._unknown([entry], out)
            blocked.add(entry.user_id)
            out.dead.extend((p, "knock_rejected", reason(exc)) for p in entry.items)
            return
        finally:
            out.count("identify", 1)
        self._applied(entry, out)

    def _merge(self, step: MergeStep, blocked: set[str], out: Outcome) -> None:
        op = step.pending.op
        assert isinstance(op, Merge)
        try:
            self._knock.merge(op.user_id, op.from_user_id)
        except RetryableError:
            blocked.update((op.user_id, op.from_user_id))
            out.retry.append((step.pending, 0.0))
            return
        except ItemError as exc:
            out.dead.append((step.pending, "knock_rejected", reason(exc)))
            return
        finally:
            out.count("merge")
        out.done.append(step.pending)

    @staticmethod
    def _give_back(entries: list[Entry], blocked: set[str], out: Outcome) -> None:
        for e in entries:
            blocked.add(e.user_id)
            out.retry.extend((p, 0.0) for p in e.items)


class Flight:
    """The plans being applied, each on a worker thread, with the users each touches.

    Only the loop's thread calls it; outcomes come back through :meth:`collect`, on that
    thread, which alone resolves offsets.
    """

    def __init__(self, applier: Applier, size: int = PLANS_IN_FLIGHT) -> None:
        self._applier = applier
        self._size = size
        self._pool = ThreadPoolExecutor(size, thread_name_prefix="apply")
        self._plans: dict[Future[Outcome], set[str]] = {}

    def __len__(self) -> int:
        return len(self._plans)

    @property
    def full(self) -> bool:
        return len(self._plans) >= self._size

    def busy(self) -> set[str]:
        """Users of the plans in flight: the next cut must leave them alone."""
        return set().union(*self._plans.values())

    def start(self, plan: Plan) -> None:
        self._plans[self._pool.submit(self._applier.apply, plan)] = plan.users()

    def collect(self, take: Callable[[Outcome], None], timeout: float = 0) -> bool:
        """Hand the outcome of each plan finished within ``timeout`` (waiting for all of them)
        to ``take``. Returns True when none is left in flight.

        :raises FatalKnockError: when a plan met one, after the others were taken in.
        """
        if self._plans:
            done, _ = wait(list(self._plans), timeout, return_when=ALL_COMPLETED)
            error: BaseException | None = None
            for future in [f for f in self._plans if f in done]:
                del self._plans[future]
                try:
                    out = future.result()
                except BaseException as exc:
                    error = error or exc
                else:
                    self._applier.settle(out)
                    take(out)
            if error is not None:
                raise error
        return not self._plans

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._applier.close()
