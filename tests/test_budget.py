"""One Knock budget for the group: shares and slots on a fake clock (pure logic), then three
real ``knock-sink run`` processes in one group against Knock's limits, with a member joining
and one leaving: exact, and not one 429."""

from __future__ import annotations

import itertools
import math
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest

from consumer.config import KnockSettings
from consumer.emulator import EmulatorServer
from consumer.flow import Sizing
from consumer.limits import ENDPOINT_TIER, per_second
from consumer.pacing import KNOCK_WINDOW, SLOT, SLOT_USABLE, RateLimiter, RateLimits, Slots
from tests.conftest import ROOT, sink_env, wait_for
from tests.model import actual_state, expected_state
from tests.test_health import free_port
from tests.test_retry_pacing import FakeTime

CLI = [sys.executable, "-m", "consumer.cli"]


def grants(limiter: RateLimiter, t: FakeTime, n: int) -> list[float]:
    out = []
    for _ in range(n):
        assert limiter.acquire()
        out.append(t.clock())
    return out


@pytest.mark.parametrize(
    ("per_second", "share"), [(1, 1 / 3), (5, 1 / 3), (60, 0.5), (200, 0.1), (1, 1.0)]
)
def test_a_share_never_exceeds_n_times_share_per_second(per_second, share):
    t = FakeTime()
    limiter = RateLimiter(per_second, window=KNOCK_WINDOW, clock=t.clock, sleep=t.sleep)
    limiter.share(share)
    start = t.clock()
    times = grants(limiter, t, 50)
    k = max(1, math.floor(per_second * share))
    # Never a burst above k, and on average at most N x share per second.
    for earlier, later in zip(times, times[k:], strict=False):
        assert later - earlier >= limiter.window - 1e-9
    assert (len(times) - k) / (times[-1] - start) <= per_second * share + 1e-9


def test_tier_one_at_a_third_is_one_call_every_three_windows():
    t = FakeTime()
    limiter = RateLimiter(1, window=KNOCK_WINDOW, clock=t.clock, sleep=t.sleep)
    limiter.share(1 / 3)
    times = grants(limiter, t, 4)
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [
        round(3 * KNOCK_WINDOW, 3)
    ] * 3


@pytest.mark.parametrize("share", [1 / 3, 0.5, 0.1, 1.0])
def test_the_identify_budget_per_bulk_call_stays_what_sizing_assumes(share):
    """A level is one bulk call plus the single identifies beside it: the share scales both
    tiers alike, so Sizing's singles per level (identify per second / bulk per second) hold."""
    bulk, single = RateLimiter(1, window=KNOCK_WINDOW), RateLimiter(60, window=KNOCK_WINDOW)
    bulk.share(share)
    single.share(share)
    per_bulk_call = (single.per_second / single.window) / (bulk.per_second / bulk.window)
    assert per_bulk_call == pytest.approx(Sizing.of(KnockSettings(rate_limits="knock")).singles)


def test_slots_split_the_clock_by_partition_and_leave_the_next_owner_a_full_budget():
    now = [100 * 6 * SLOT]  # the start of slot 600: partition 0's of 6

    def wall():
        return now[0]

    mine, theirs, none = (
        Slots(frozenset({0, 3}), 6, wall=wall),
        Slots(frozenset({1, 2, 4, 5}), 6, wall=wall),
        Slots(frozenset(), 6, wall=wall),
    )
    assert (mine.fraction, theirs.fraction) == (1 / 3, 2 / 3)
    assert mine.wait() == 0.0 and theirs.wait() == pytest.approx(SLOT)
    assert none.wait() is None
    now[0] += SLOT_USABLE + 0.01  # the rest of slot 0 is the gap before the next owner
    assert mine.wait() == pytest.approx(3 * SLOT - SLOT_USABLE - 0.01)
    assert theirs.wait() == pytest.approx(SLOT - SLOT_USABLE - 0.01)
    # Over whole cycles, exactly one member may start a request at any instant.
    for step in range(600):
        now[0] = 100 * 6 * SLOT + step * SLOT * 6 / 600
        assert [mine.wait() == 0.0, theirs.wait() == 0.0].count(True) <= 1


def test_limiter_in_slots_sends_only_in_its_own():
    t = FakeTime(start=6 * SLOT * 1000)
    limiter = RateLimiter(1, window=KNOCK_WINDOW, clock=t.clock, sleep=t.sleep)
    limiter.share(1.0, Slots(frozenset({1}), 3, wall=t.clock))
    for at in grants(limiter, t, 6):
        n = math.floor(at / SLOT + 1e-9)
        assert n % 3 == 1 and at - n * SLOT < SLOT_USABLE


@pytest.mark.parametrize("total", [2, 6, 12, 100])
def test_only_routes_too_small_to_divide_by_rate_take_turns(total):
    """Tier 1 is one request a second: only turns split it. A route of N a second with N at
    least the partition count is split by rate: every member's part is a whole request or
    more, the parts add up to N, and the bursts to at most N, at any phase, so a plan's
    single identifies and its bulk operation's polling never wait for a turn (issue 28: they
    did, and three members took 122 s where one took 33)."""
    k = min(3, total)
    members = [frozenset(range(i, total, k)) for i in range(k)]
    limits = [RateLimits("knock") for _ in members]
    for lim, owned in zip(limits, members, strict=True):
        lim.divide(1.0, Slots(owned, total))
    for name in ENDPOINT_TIER:
        n = per_second(name)
        turns = [lim.taking_turns(name) for lim in limits]
        assert turns == [n < total] * k, name
        if n >= total:
            parts = [lim.for_endpoint(name) for lim in limits]
            rate = sum(p.per_second / p.window for p in parts)
            assert rate == pytest.approx(n / KNOCK_WINDOW)
            assert sum(p.per_second for p in parts) <= n
    idle = RateLimits("knock")
    idle.divide(1.0, Slots(frozenset(), total))
    assert all(idle.taking_turns(name) for name in ENDPOINT_TIER)
    assert idle.for_endpoint("identify").ready_in() > 0


def test_a_member_that_gains_partitions_waits_a_slot_before_its_first_request():
    """Its partitions' previous owner paced to a larger part until its revoke: the new owner
    holds back every route for one slot, those paced by rate included."""
    from prometheus_client import CollectorRegistry, Gauge

    from consumer.budget import Budget

    limits = RateLimits("knock")
    budget = Budget(limits, None, Gauge("s", "s", registry=CollectorRegistry()))
    budget.known([("t", p) for p in range(6)])
    budget.update([("t", 0), ("t", 3)])
    assert not limits.taking_turns("identify")
    assert limits.for_endpoint("identify").ready_in() == pytest.approx(SLOT, abs=0.05)
    fresh = RateLimits("knock")
    fresh.divide(1.0, Slots(frozenset({0, 3}), 6))
    assert fresh.for_endpoint("identify").ready_in() == 0.0


def test_the_idle_ratio_is_what_a_members_part_of_knocks_tiers_left_unsent():
    from prometheus_client import CollectorRegistry, Gauge

    from consumer.budget import IDLE_WINDOW, Budget

    r = CollectorRegistry()
    share, idle = Gauge("s", "s", registry=r), Gauge("i", "i", ["route"], registry=r)
    budget = Budget(RateLimits("knock"), None, share, idle, now=0.0)
    budget.known([("t", p) for p in range(6)])
    budget.update([("t", 0), ("t", 3)])  # a third of every tier
    budget.tick(IDLE_WINDOW, {"bulk_identify": 2, "identify": 100})
    value = lambda route: r.get_sample_value("i", {"route": route})  # noqa: E731
    assert value("bulk_identify") == pytest.approx(1 - 2 / (IDLE_WINDOW / 3), abs=1e-3)
    assert value("identify") == pytest.approx(1 - 100 / (60 * IDLE_WINDOW / 3), abs=1e-3)
    budget.tick(2 * IDLE_WINDOW, {"bulk_identify": 2, "identify": 100})  # nothing sent since
    assert value("bulk_identify") == value("identify") == 1.0


# -- three processes ------------------------------------------------------------------------

PARTITIONS = 6


def start(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *CLI,
            "run",
            "--log-format",
            "json",
            "--flush-interval",
            "0.2",
            "--metrics-port",
            str(port),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err[-3000:]
    return err


def statuses(api: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for by_status in api.stats()["requests"].values():
        for status, n in by_status.items():
            out[status] = out.get(status, 0) + n
    return out


def partitions(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json()["partitions"]
    except (httpx.TransportError, ValueError):
        return None


def test_three_members_share_knocks_limits_exactly_without_a_429(kafka):
    topic = kafka.topic(PARTITIONS)
    events = [
        {"type": "identify", "userId": f"u{i % 600}", "traits": {"i": i, f"k{i % 7}": i}}
        for i in range(6000)
    ]
    first, second = events[:3000], events[3000:]
    ports = [free_port() for _ in range(3)]
    with EmulatorServer(api_key="sk_test_budget", rate_limits="knock") as api:
        env = sink_env(kafka, api, topic)
        members = [start(env, ports[0]), start(env, ports[1])]
        try:
            kafka.produce(topic, first)
            wait_for(lambda: api.stats()["identify_entries"] > 0, 60, "the first users applied")
            members.append(start(env, ports[2]))  # a member joins mid-run
            wait_for(lambda: [partitions(p) for p in ports] == [2, 2, 2], 60, "two partitions each")
            kafka.produce(topic, second)
            err = stop(members.pop(0))  # a member leaves mid-run
            shares = [line for line in err.splitlines() if "Knock budget share" in line]
            # It made room for the third (it held half, or all, before).
            assert any("share 0.333" in line for line in shares), shares
            ends = kafka.end_offsets(topic)
            wait_for(
                lambda: kafka.committed(f"g-{topic}", topic) == ends, 90, "everything committed"
            )
            assert actual_state(api.users()) == expected_state(events)
            wait_for(
                lambda: sorted(partitions(p) for p in ports[1:]) == [3, 3],
                60,
                "the two left holding three partitions each",
            )
            counts = statuses(api)
            assert "429" not in counts, (counts, api.stats()["requests"])
            assert counts["200"] > 0
        finally:
            for proc in members:
                if proc.poll() is None:
                    stop(proc)
