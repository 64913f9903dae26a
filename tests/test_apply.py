"""The apply step against Knock's wire protocol (httpx.MockTransport), no broker needed."""

from __future__ import annotations

import itertools
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson

import consumer.apply as apply_mod
from consumer.apply import Applier
from consumer.knock import KnockClient
from consumer.ops import Identify
from consumer.plan import Pending, Planner
from consumer.policy import RateLimits

OP = {"__typename": "BulkOperation", "id": "00000000-0000-0000-0000-000000000001", "name": "op",
      "status": "completed", "estimated_total_rows": 1, "processed_rows": 1, "success_count": 1,
      "error_count": 0, "error_items": [], "inserted_at": "2026-01-01T00:00:00Z",
      "updated_at": "2026-01-01T00:00:00Z"}  # fmt: skip


def knock_answering_completed() -> KnockClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(200, json={"__typename": "User", "id": "x", "updated_at": OP["updated_at"]})
        return httpx.Response(200, content=orjson.dumps(OP))

    http = httpx.Client(transport=httpx.MockTransport(handler))
    return KnockClient(api_key="sk_test", base_url="http://knock.test", limits=RateLimits("off"), http=http)


def plan_of(users: list[str], seq: itertools.count) -> Any:
    pl = Planner()
    for u in users:
        pl.add(Pending(next(seq), Identify(u, {"n": 1}), None))
    return pl.cut(0.0)


def test_plans_applied_side_by_side_share_the_entity_gap_memory_safely(monkeypatch):
    # Found by the 5M-event benchmark: two plans in flight pruned and filled the same map
    # ("dictionary changed size during iteration"). Frequent thread switches and a map that
    # never ages out make the race show every time without the lock.
    monkeypatch.setattr(apply_mod, "PRUNE_AT", 500)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        clock = itertools.count(0.0, 0.00001)
        applier = Applier(knock_answering_completed(), bulk_size=50, concurrency=4, item_attempts=3,
                          entity_gap=1.0, clock=lambda: float(next(clock)))  # fmt: skip
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
    assert len(out.done) == 12 and applier._last_bulk == {}
