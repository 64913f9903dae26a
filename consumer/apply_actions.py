"""Apply step for the action ops of a level (:class:`~consumer.plan.ActionStep`): deletes,
objects, tenants, subscriptions, audience memberships, workflow triggers.

The steps of one level touch disjoint users and entities; they run kind after kind in the
order Knock's Sources give their actions (identify first, in :class:`~consumer.apply.Applier`,
then deletes, objects, tenants, subscriptions, audiences, the workflow trigger), each kind's
calls side by side. Wherever Knock has a bulk route it is used (bulk delete, tenants and
objects bulk set, followed to completion; subscriptions up to 100 recipients an object;
audience members up to 1,000 a call). Before a bulk call, an entity that a bulk call updated
less than :data:`~consumer.limits.ENTITY_GAP` ago is waited for, since Knock would skip it; one
Knock skips anyway (``x-ratelimited-*``) is given back for after the gap.

Answers: a transient failure was retried by the client already, and one it gives up on
(stopping) gives the steps back; a 4xx naming the request (unknown workflow, invalid data)
dead-letters it as ``knock_rejected`` with Knock's error; a request of several items refused
whole is tried item by item to find the culprit. 401/403 raise :class:`FatalKnockError`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .entity_gap import EntityGap
from .errors import ItemError, RetryableError
from .knock import BulkResult, KnockClient
from .limits import ENTITY_GAP, MAX_SUBSCRIPTION_RECIPIENTS
from .ops import Audience, Delete, SetObject, SetTenant, Subscribe, Trigger, entities
from .outcome import Outcome, Rejections, reason
from .plan import ActionStep, Pending

#: The order of kinds within a level (Knock's Sources: identify, which the applier has run
#: already, then these).
ORDER = (Delete, SetObject, SetTenant, Subscribe, Audience, Trigger)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _bulk_id(p: Pending) -> str:
    """The id a bulk answer names the entity of ``p`` by (error items, skipped ids)."""
    op = p.op
    if isinstance(op, SetTenant):
        return op.tenant_id
    if isinstance(op, SetObject):
        return op.object_id
    assert isinstance(op, Delete)
    return op.user_id


def _inline(user_id: str, props: dict[str, Any]) -> dict[str, Any]:
    return {"id": user_id, **props}


class ActionRunner:
    """Runs the action steps of one level; shares the applier's pool, its entity-gap memory and
    its handling of items Knock rejected inside a bulk operation.

    :param gap: when each entity was last in a bulk call (waited out before the next).
    :param rejections: retries an item Knock rejected with backoff and dead-letters it after
        ``item_attempts``.
    """

    def __init__(
        self,
        knock: KnockClient,
        pool: ThreadPoolExecutor,
        *,
        bulk_size: int,
        gap: EntityGap,
        rejections: Rejections,
    ) -> None:
        self._knock = knock
        self._pool = pool
        self._bulk_size = bulk_size
        self._gap = gap
        self._rejections = rejections

    def run(self, steps: list[ActionStep], blocked: set[str], out: Outcome) -> None:
        by_kind: dict[type, list[Pending]] = defaultdict(list)
        for step in steps:
            keys = entities(step.pending.op)
            if any(k in blocked for k in keys):
                # An earlier step of one of its users failed: it must not overtake the retry.
                blocked.update(keys)
                out.retry.append((step.pending, 0.0))
            else:
                by_kind[step.pending.op.__class__].append(step.pending)
        for kind in ORDER:
            items = by_kind.get(kind)
            if not items:
                continue
            tasks = [
                self._pool.submit(fn, *args, blocked, out) for fn, args in self._calls(kind, items)
            ]
            error: BaseException | None = None
            for t in tasks:
                try:
                    t.result()
                except BaseException as exc:
                    error = error or exc
            if error is not None:
                raise error

    def _calls(
        self, kind: type, items: list[Pending]
    ) -> Iterator[tuple[Callable[..., None], tuple[Any, ...]]]:
        if kind is Delete or kind is SetTenant:
            for chunk in _chunks(items, self._bulk_size):
                yield self._bulk, (kind, None, chunk)
        elif kind is SetObject:
            groups: dict[str, list[Pending]] = defaultdict(list)
            for p in items:
                groups[p.op.collection].append(p)  # type: ignore[union-attr]
            for collection, group in groups.items():
                for chunk in _chunks(group, self._bulk_size):
                    yield self._bulk, (kind, collection, chunk)
        elif kind is Subscribe:
            objects: dict[tuple[str, str], list[Pending]] = defaultdict(list)
            for p in items:
                objects[(p.op.collection, p.op.object_id)].append(p)  # type: ignore[union-attr]
            for obj, group in objects.items():
                for chunk in _chunks(group, MAX_SUBSCRIPTION_RECIPIENTS):
                    yield self._subscribe, (obj, chunk)
        elif kind is Audience:
            audiences: dict[tuple[str, bool], list[Pending]] = defaultdict(list)
            for p in items:
                audiences[(p.op.key, p.op.add)].append(p)  # type: ignore[union-attr]
            for target, group in audiences.items():
                for chunk in _chunks(group, self._bulk_size):
                    yield self._audience, (target, chunk)
        else:
            for p in items:
                yield self._trigger, (p,)

    # -- bulk routes ---------------------------------------------------------------------------

    def _send_bulk(self, kind: type, collection: str | None, chunk: list[Pending]) -> BulkResult:
        ops = [p.op for p in chunk]
        if kind is Delete:
            return self._knock.bulk_delete_users([o.user_id for o in ops if isinstance(o, Delete)])
        if kind is SetTenant:
            tenants = [_inline(o.tenant_id, o.props) for o in ops if isinstance(o, SetTenant)]
            return self._knock.bulk_set_tenants(tenants)
        assert collection is not None
        objects = [_inline(o.object_id, o.props) for o in ops if isinstance(o, SetObject)]
        return self._knock.bulk_set_objects(collection, objects)

    def _bulk(
        self,
        kind: type,
        collection: str | None,
        chunk: list[Pending],
        blocked: set[str],
        out: Outcome,
    ) -> None:
        chunk = self._one_per_entity(chunk, blocked, out)
        keys = [entities(p.op)[0] for p in chunk]
        self._gap.wait_out(keys)
        name = {Delete: "bulk_delete_users", SetTenant: "bulk_set_tenants"}.get(
            kind, "bulk_set_objects"
        )
        try:
            result = self._send_bulk(kind, collection, chunk)
        except RetryableError:
            self._give_back(chunk, blocked, out)
            return
        except ItemError as exc:
            if len(chunk) == 1:
                self._dead(chunk[0], reason(exc), blocked, out)
            else:
                self._gap.forget(keys)  # refused whole: Knock updated none of them
                for p in chunk:
                    self._bulk(kind, collection, [p], blocked, out)
            return
        out.count(name)
        # Knock's gap runs from when it took the call, after the limiter's wait.
        self._gap.stamp(keys)
        limited = set(result.rate_limited)
        for p, key in zip(chunk, keys, strict=True):
            ident = _bulk_id(p)
            if ident in result.failed:
                self._rejections.failed([p], key, result.failed[ident], blocked, out)
            elif ident in limited:
                blocked.add(key)
                out.retry.append((p, ENTITY_GAP))
            else:
                out.done.append(p)

    @staticmethod
    def _one_per_entity(chunk: list[Pending], blocked: set[str], out: Outcome) -> list[Pending]:
        # The planner puts at most one step per entity in a level; kept as a guard since a bulk
        # call with one id twice would apply only one of them.
        seen: set[str] = set()
        keep = []
        for p in chunk:
            key = entities(p.op)[0]
            if key in seen:
                blocked.add(key)
                out.retry.append((p, 0.0))
            else:
                seen.add(key)
                keep.append(p)
        return keep

    # -- per-call routes -----------------------------------------------------------------------

    def _subscribe(
        self, target: tuple[str, str], chunk: list[Pending], blocked: set[str], out: Outcome
    ) -> None:
        recipients = [_inline(p.op.user_id, p.op.props) for p in chunk]  # type: ignore[union-attr]
        self._call(
            lambda: self._knock.add_subscriptions(*target, recipients),
            "add_subscriptions",
            chunk,
            lambda p: self._subscribe(target, [p], blocked, out),
            blocked,
            out,
        )

    def _audience(
        self, target: tuple[str, bool], chunk: list[Pending], blocked: set[str], out: Outcome
    ) -> None:
        key, add = target
        users = [_inline(p.op.user_id, p.op.props) for p in chunk]  # type: ignore[union-attr]
        name = "add_audience_members" if add else "remove_audience_members"
        self._call(
            lambda: self._knock.audience_members(key, users, add=add),
            name,
            chunk,
            lambda p: self._audience(target, [p], blocked, out),
            blocked,
            out,
        )

    def _trigger(self, p: Pending, blocked: set[str], out: Outcome) -> None:
        op = p.op
        assert isinstance(op, Trigger)
        body: dict[str, Any] = {
            "recipients": [_inline(op.user_id, op.recipient_props)],
            "data": op.data,
        }
        if op.actor is not None:
            body["actor"] = op.actor
        if op.tenant is not None:
            body["tenant"] = op.tenant
        self._call(
            lambda: self._knock.trigger(op.workflow, body, op.idempotency_key),
            "trigger_workflow",
            [p],
            None,
            blocked,
            out,
        )

    def _call(
        self,
        send: Callable[[], object],
        name: str,
        chunk: list[Pending],
        alone: Callable[[Pending], None] | None,
        blocked: set[str],
        out: Outcome,
    ) -> None:
        try:
            send()
        except RetryableError:
            self._give_back(chunk, blocked, out)
            return
        except ItemError as exc:
            if len(chunk) > 1 and alone is not None:
                for p in chunk:
                    alone(p)
            else:
                for p in chunk:
                    self._dead(p, reason(exc), blocked, out)
            return
        finally:
            out.count(name)
        out.done.extend(chunk)

    @staticmethod
    def _dead(p: Pending, why: str, blocked: set[str], out: Outcome) -> None:
        blocked.update(entities(p.op))
        out.dead.append((p, "knock_rejected", why))

    @staticmethod
    def _give_back(chunk: list[Pending], blocked: set[str], out: Outcome) -> None:
        for p in chunk:
            blocked.update(entities(p.op))
            out.retry.append((p, 0.0))
