"""The action steps of a level (:mod:`consumer.apply_actions`) against a scripted Knock
(``httpx.MockTransport``): the order of kinds, bulk routes, refusals, Knock's per-entity gap."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from consumer.apply_actions import ActionRunner
from consumer.entity_gap import EntityGap
from consumer.knock import KnockClient
from consumer.limits import ENTITY_GAP
from consumer.ops import Audience, Delete, SetObject, SetTenant, Subscribe, Trigger
from consumer.outcome import Outcome, Rejections
from consumer.pacing import RateLimits
from consumer.plan import ActionStep, Pending

UNPROCESSABLE = {"code": "invalid_params", "message": "bad", "status": 422, "type": "x"}


class ScriptedKnock:
    """Answers every route as Knock does when all goes well; ``refuse`` (ids) makes a request
    naming one of them answer 422, ``error_items`` and ``limited`` shape a bulk operation's
    answer. Records ``(method, path, ids)`` per request."""

    def __init__(
        self,
        *,
        refuse: set[str] = frozenset(),
        error_items: set[str] = frozenset(),
        limited: set[str] = frozenset(),
    ) -> None:
        self.refuse, self.error_items, self.limited = set(refuse), set(error_items), set(limited)
        self.requests: list[tuple[str, str, list[str]]] = []
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content) if request.content else {}
        path = request.url.path
        ids = self._ids(path, body)
        with self._lock:
            self.requests.append((request.method, path, ids))
        if self.refuse & set(ids):
            return httpx.Response(422, json=UNPROCESSABLE)
        if "/bulk/" in path:
            errors = [{"id": i} for i in ids if i in self.error_items]
            limited = [i for i in ids if i in self.limited]
            headers = {"x-ratelimited-entities": ",".join(limited)} if limited else {}
            op = {"id": "op", "status": "completed", "error_items": errors}
            return httpx.Response(200, json=op, headers=headers)
        return httpx.Response(200, json={"ok": True})

    @staticmethod
    def _ids(path: str, body: dict[str, Any]) -> list[str]:
        if "user_ids" in body:
            return list(body["user_ids"])
        for key in ("tenants", "objects", "recipients"):
            if key in body:
                return [e["id"] for e in body[key]]
        if "members" in body:
            return [m["user"]["id"] for m in body["members"]]
        return [path.split("/")[3]]


class Runner:
    def __init__(self, knock: ScriptedKnock, gap: EntityGap | None = None, attempts: int = 3):
        http = httpx.Client(transport=httpx.MockTransport(knock))
        client = KnockClient(
            api_key="sk_test", base_url="http://knock.test", limits=RateLimits("off"), http=http
        )
        self.pool = ThreadPoolExecutor(2)
        self.gap = gap or EntityGap(0.0)
        self.runner = ActionRunner(
            client, self.pool, bulk_size=1000, gap=self.gap, rejections=Rejections(attempts)
        )

    def run(self, *ops: Any, blocked: set[str] | None = None) -> tuple[Outcome, list[Pending]]:
        pendings = [Pending(i, op, None) for i, op in enumerate(ops)]
        out = Outcome()
        try:
            self.runner.run(
                [ActionStep(p) for p in pendings], set() if blocked is None else blocked, out
            )
        finally:
            self.pool.shutdown()
        return out, pendings


def trigger(user: str) -> Trigger:
    return Trigger("welcome", user, {}, {"n": 1}, None, None, f"key-{user}")


def test_kinds_run_in_the_order_of_knocks_sources():
    knock = ScriptedKnock()
    out, pendings = Runner(knock).run(
        trigger("u6"),
        Audience("vip", "u5", True, {}),
        Subscribe("accounts", "o1", "u4", {}),
        SetTenant("t1", {}),
        SetObject("accounts", "o1", {}),
        Delete("u1"),
    )
    assert [r[1] for r in knock.requests] == [
        "/v1/users/bulk/delete",
        "/v1/objects/accounts/bulk/set",
        "/v1/tenants/bulk/set",
        "/v1/objects/accounts/o1/subscriptions",
        "/v1/audiences/vip/members",
        "/v1/workflows/welcome/trigger",
    ]
    assert sorted(p.seq for p in out.done) == [p.seq for p in pendings]
    assert out.calls == {
        "bulk_delete_users": 1,
        "bulk_set_objects": 1,
        "bulk_set_tenants": 1,
        "add_subscriptions": 1,
        "add_audience_members": 1,
        "trigger_workflow": 1,
    }


def test_subscriptions_go_a_hundred_recipients_a_call():
    knock = ScriptedKnock()
    out, _ = Runner(knock).run(*[Subscribe("accounts", "o1", f"u{i}", {}) for i in range(150)])
    assert sorted(len(ids) for _, _, ids in knock.requests) == [50, 100]
    assert len(out.done) == 150


def test_a_bulk_call_refused_whole_is_sent_item_by_item_to_find_the_culprit():
    knock = ScriptedKnock(refuse={"bad"})
    out, (good, bad) = Runner(knock).run(SetTenant("good", {}), SetTenant("bad", {}))
    assert out.done == [good]
    assert [(p, kind) for p, kind, _ in out.dead] == [(bad, "knock_rejected")]
    assert '"code":"invalid_params"' in out.dead[0][2]  # Knock's body, as sent
    assert len(knock.requests) == 3


def test_an_error_item_is_retried_with_backoff_and_an_entity_knock_skipped_after_the_gap():
    knock = ScriptedKnock(error_items={"t1"}, limited={"t2"})
    out, (t1, t2, t3) = Runner(knock).run(*[SetTenant(f"t{i}", {}) for i in (1, 2, 3)])
    assert out.done == [t3]
    assert sorted(out.retry, key=lambda r: r[0].seq) == [(t1, 2.0), (t2, ENTITY_GAP)]


def test_a_step_of_a_blocked_entity_is_given_back_untried():
    knock = ScriptedKnock()
    blocked = {"u1"}
    out, (step,) = Runner(knock).run(trigger("u1"), blocked=blocked)
    assert out.retry == [(step, 0.0)] and knock.requests == []


def test_a_trigger_knock_refuses_is_dead_lettered_and_blocks_its_user():
    knock = ScriptedKnock(refuse={"u1"})
    blocked: set[str] = set()
    out, (step,) = Runner(knock).run(trigger("u1"), blocked=blocked)
    assert [d[0] for d in out.dead] == [step] and blocked == {"u1"}


@pytest.mark.parametrize("stamped_ago, waited", [(0.25, [0.75]), (2.0, [])])
def test_a_bulk_call_waits_out_the_gap_of_an_entity_a_bulk_call_just_updated(stamped_ago, waited):
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    gap = EntityGap(ENTITY_GAP, clock=lambda: now[0], sleep=sleep)
    gap.stamp(["tenant/t1"], now[0] - stamped_ago)
    out, _ = Runner(ScriptedKnock(), gap).run(SetTenant("t1", {}))
    assert slept == pytest.approx(waited) and len(out.done) == 1
    assert gap.recent(["tenant/t1"], now[0]) == {"tenant/t1"}  # stamped again by this call
