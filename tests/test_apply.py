"""The apply step against Knock's wire protocol (httpx.MockTransport), no broker needed."""

from __future__ import annotations

import itertools
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson

import consumer.entity_gap as entity_gap_mod
from consumer.apply import Applier
from consumer.knock import KnockClient
from consumer.ops import Identify
from consumer.pacing import RateLimits
from consumer.plan import Pending, Planner

OP = {
    "__typename": "BulkOperation",
    "id": "00000000-0000-0000-0000-000000000001",
    "name": "op",
    "status": "completed",
    "estimated_total_rows": 1,
    "processed_rows": 1,
    "success_count": 1,
    "error_count": 0,
    "error_items": [],
    "inserted_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z",
}


def knock_answering_completed() -> KnockClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(
                200, json={"__typename": "User", "id": "x", "updated_at": OP["updated_at"]}
            )
        return httpx.Response(200, content=orjson.dumps(OP))

    http = httpx.Client(transport=httpx.MockTransport(handler))
    return KnockClient(
        api_key="sk_test", base_url="http://knock.test", limits=RateLimits("off"), http=http
    )


def plan_of(users: list[str], seq: itertools.count) -> Any:
    pl = Planner()
    for u in users:
        pl.add(Pending(next(seq), Identify(u, {"n": 1}), None))
    return pl.cut(0.0)


def test_plans_applied_side_by_side_share_the_entity_gap_memory_safely(monkeypatch):
    # Two plans in flight pruning and filling the same map raised "dictionary changed size
    # during iteration". Frequent thread switches and a map that never ages out make the race
    # show every time without the lock.
    monkeypatch.setattr(entity_gap_mod, "PRUNE_AT", 500)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        clock = itertools.count(0.0, 0.00001)
        applier = Applier(
            knock_answering_completed(),
            bulk_size=50,
            concurrency=4,
            item_attempts=3,
            entity_gap=1.0,
            clock=lambda: float(next(clock)),
        )
        seq = itertools.count()
        plans = [plan_of([f"u{i}-{j}" for j in range(50)], seq) for i in range(100)]
        with ThreadPoolExecutor(2) as pool:
            outs = list(pool.map(applier.apply, plans))
        applier.close()
    finally:
        sys.setswitchinterval(interval)
    assert sum(len(o.done) for o in outs) == 100 * 50
    assert not any(o.retry or o.dead for o in outs)


def test_without_limits_nothing_is_remembered_for_the_entity_gap():
    applier = Applier(knock_answering_completed(), bulk_size=5, concurrency=2, item_attempts=3)
    out = applier.apply(plan_of([f"u{j}" for j in range(12)], itertools.count()))
    applier.close()
    assert len(out.done) == 12 and len(applier._gap) == 0


# -- the applier's rules, one scenario each, against a scripted Knock -------------------------


class ScriptedKnock:
    """Knock's wire behaviour for the applier: bulk identify answers a completed operation whose
    ``error_items`` are the ``failing`` users and whose ``x-ratelimited-users`` header names the
    ``limited`` ones; single identify and merge answer 422 for ``failing`` users. Records every
    request as ``(method, path, ids)``."""

    def __init__(
        self,
        *,
        failing: set[str] = frozenset(),
        limited: set[str] = frozenset(),
        reject_bulk: bool = False,
    ) -> None:
        self.failing, self.limited, self.reject_bulk = set(failing), set(limited), reject_bulk
        self.requests: list[tuple[str, str, list[str]]] = []
        self._ops: dict[str, list[str]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = orjson.loads(request.content) if request.content else {}
        if path == "/v1/users/bulk/identify":
            ids = [u["id"] for u in body["users"]]
            self.requests.append(("POST", path, ids))
            if self.reject_bulk:
                return httpx.Response(
                    422,
                    json={
                        "code": "invalid_params",
                        "message": "bad",
                        "status": 422,
                        "type": "invalid_request_error",
                    },
                )
            op_id = f"op-{len(self._ops)}"
            self._ops[op_id] = ids
            limited = [i for i in ids if i in self.limited]
            headers = {"x-ratelimited-users": ",".join(limited)} if limited else {}
            return httpx.Response(
                200, json={**OP, "id": op_id, "status": "queued"}, headers=headers
            )
        if path.startswith("/v1/bulk_operations/"):
            ids = self._ops[path.rsplit("/", 1)[1]]
            errors = [{"id": i, "collection": "users"} for i in ids if i in self.failing]
            return httpx.Response(200, json={**OP, "error_items": errors})
        user = path.split("/")[3]
        self.requests.append((request.method, path, [user]))
        if user in self.failing or body.get("from_user_id") in self.failing:
            return httpx.Response(
                422,
                json={
                    "code": "invalid_params",
                    "message": f"{user} refused",
                    "status": 422,
                    "type": "invalid_request_error",
                },
            )
        return httpx.Response(
            200, json={"__typename": "User", "id": user, "updated_at": OP["updated_at"]}
        )

    def calls(self, method: str) -> list[list[str]]:
        return [ids for m, p, ids in self.requests if m == method and not p.endswith("/merge")]


def applier(knock: ScriptedKnock, now: list[float] | None = None, **kw: Any) -> Applier:
    http = httpx.Client(transport=httpx.MockTransport(knock))
    client = KnockClient(
        api_key="sk_test", base_url="http://knock.test", limits=RateLimits("off"), http=http
    )
    clock = (lambda: now[0]) if now is not None else (lambda: 0.0)
    opts = {"bulk_size": 3, "concurrency": 2, "item_attempts": 3, **kw}
    return Applier(client, clock=clock, **opts)


def cut(*ops: Any, **kw: Any) -> Any:
    pl = Planner()
    for seq, op in enumerate(ops):
        pl.add(Pending(seq, op, f"h{seq}"))
    return pl.cut(0.0, **kw)


def seqs(pendings: list[Any]) -> list[int]:
    return sorted(p.seq for p in pendings)


def test_a_user_in_error_items_is_retried_with_backoff_then_dead_lettered():
    from consumer.ops import Merge

    knock = ScriptedKnock(failing={"bad"})
    a = applier(knock)
    ops = (
        Identify("ok", {"n": 1}),
        Identify("bad", {"o": {"i": 1}}),
        Identify("bad", {"o": {"i": 2}}),
        Merge("ok", "bad"),
    )
    out = a.apply(cut(*ops))
    # bad's first update failed: it is retried after 2 s; its later update and the merge are
    # handed back untouched (no attempt counted), so nothing overtakes it.
    assert seqs(out.done) == [0]
    assert sorted((p.seq, d, p.attempts) for p, d in out.retry) == [
        (1, 2.0, 1),
        (2, 0.0, 0),
        (3, 0.0, 0),
    ]
    first = [p for p, _ in out.retry if p.seq == 1]
    for _attempt in (2, 3):
        out = a.apply(cut_from(first))
        first = [p for p, _ in out.retry]
    assert [(p.seq, kind) for p, kind, _ in out.dead] == [(1, "knock_rejected")]
    assert out.dead[0][2] == "bulk operation error item"
    a.close()


def cut_from(pendings: list[Any]) -> Any:
    pl = Planner()
    pl.retry(pendings, 0.0)
    return pl.cut(0.0)


def test_a_user_already_dead_lettered_gets_one_attempt_per_later_update():
    knock = ScriptedKnock(failing={"bad"})
    a = applier(knock, item_attempts=2)
    out = a.apply(cut(Identify("bad", {"a": 1})))
    assert [p.attempts for p, _ in out.retry] == [1] and out.dead == []
    out = a.apply(cut_from([p for p, _ in out.retry]))
    assert [p.attempts for p, _, _ in out.dead] == [2]
    # A later update of the same user: one attempt, not a fresh series of two.
    out = a.apply(cut(Identify("bad", {"a": 2})))
    assert [p.attempts for p, _, _ in out.dead] == [1] and out.retry == []
    a.close()


def test_users_skipped_by_the_per_entity_rule_come_back_after_the_gap():
    knock = ScriptedKnock(limited={"busy"})
    a = applier(knock)
    out = a.apply(cut(Identify("busy", {"a": 1}), Identify("free", {"a": 1})))
    assert seqs(out.done) == [1]
    assert [(p.seq, d, p.attempts) for p, d in out.retry] == [(0, 1.0, 0)]
    a.close()


def test_a_bulk_call_knock_refuses_whole_is_split_into_single_identifies():
    knock = ScriptedKnock(failing={"bad"}, reject_bulk=True)
    a = applier(knock)
    out = a.apply(cut(Identify("a", {}), Identify("bad", {}), Identify("c", {})))
    assert seqs(out.done) == [0, 2]
    [(p, kind, reason)] = out.dead
    assert (p.seq, kind) == (1, "knock_rejected")
    assert "422" in reason and '"code":"invalid_params"' in reason
    assert knock.calls("PUT") == [["a"], ["bad"], ["c"]]
    a.close()


def test_single_identify_takes_the_overflow_of_a_bulk_call():
    knock = ScriptedKnock()
    a = applier(knock, bulk_size=3, singles=2)
    out = a.apply(cut(*(Identify(f"u{i}", {}) for i in range(6))))
    assert seqs(out.done) == list(range(6))
    assert [len(ids) for ids in knock.calls("POST")] == [3, 1]  # 3 + 2 singles + the rest
    assert len(knock.calls("PUT")) == 2
    assert out.calls == {"bulk_identify": 2, "identify": 2} and out.users_sent == 6
    a.close()


def test_a_user_in_a_bulk_call_less_than_the_gap_ago_goes_through_single_identify():
    knock = ScriptedKnock()
    now = [100.0]
    a = applier(knock, now, entity_gap=1.0, singles=5)
    a.apply(cut(Identify("u", {"a": 1}), Identify("v", {"a": 1})))
    now[0] = 100.5
    a.apply(cut(Identify("u", {"a": 2})))
    now[0] = 101.6
    a.apply(cut(Identify("v", {"a": 2})))
    assert knock.calls("POST") == [["u", "v"], ["v"]]
    assert knock.calls("PUT") == [["u"]]
    a.close()


def test_under_the_gap_recent_users_past_the_singles_budget_and_a_calls_overflow_wait():
    """Under Knock's limits a plan holds its users until its last single identify answers,
    and a second bulk call costs a second of tier 1: what fits neither waits for a later plan
    (issue 28: plans that trickled 300 recent users through single identify held the bulk
    budget idle for 5 s)."""
    knock = ScriptedKnock()
    now = [100.0]
    a = applier(knock, now, bulk_size=3, entity_gap=1.0, singles=2)
    a.apply(cut(*(Identify(f"r{i}", {"a": 1}) for i in range(3))))
    now[0] = 100.5
    out = a.apply(
        cut(
            *(Identify(f"r{i}", {"a": 2}) for i in range(3)),
            *(Identify(f"n{i}", {"a": 2}) for i in range(5)),
        )
    )
    assert knock.calls("POST") == [["r0", "r1", "r2"], ["n0", "n1", "n2"]]
    assert knock.calls("PUT") == [["r0"], ["r1"]]
    assert sorted((p.op.user_id, delay) for p, delay in out.retry) == [
        ("n3", 0.0),
        ("n4", 0.0),
        ("r2", 1.0),
    ]
    a.close()


def test_a_merge_knock_refuses_is_dead_lettered_and_a_merge_of_a_failed_user_waits():
    from consumer.ops import Merge

    knock = ScriptedKnock(failing={"bad"})
    a = applier(knock)
    out = a.apply(cut(Merge("ok", "bad"), Identify("x", {"o": {"a": 1}}), Merge("y", "x")))
    assert [p.seq for p, _, _ in out.dead] == [0]
    assert "422" in out.dead[0][2]
    assert seqs(out.done) == [1, 2]
    a.close()
