"""Retries (:mod:`consumer.retry`) and pacing to Knock's tiers (:mod:`consumer.pacing`): a fake
clock is advanced, nothing really sleeps."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from consumer.limits import ENDPOINT_TIER, TIERS
from consumer.pacing import KNOCK_WINDOW, RateLimiter, RateLimits
from consumer.retry import Backoff, classify, parse_retry_after, wait


class FakeTime:
    """A monotonic clock that only moves when someone sleeps on it. Safe across threads."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()
        self._last = threading.local()

    def clock(self) -> float:
        with self._lock:
            self._last.value = self.now
            return self.now

    def last_read(self) -> float:
        """What this thread last read: for a limiter, the time it granted at."""
        return float(self._last.value)

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


def assert_at_most_per_second(times: list[float], n: int) -> None:
    times = sorted(times)
    for earlier, later in zip(times, times[n:], strict=False):
        assert later - earlier >= 1.0, f"{n + 1} grants within {later - earlier:.4f}s"


# -- classify --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, "ok"),
        (201, "ok"),
        (204, "ok"),
        (299, "ok"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (502, "retry"),
        (503, "retry"),
        (504, "retry"),
        (599, "retry"),
        (401, "fatal"),
        (403, "fatal"),
        (400, "item"),
        (404, "item"),
        (409, "item"),
        (410, "item"),
        (422, "item"),
        (499, "item"),
        (100, "fatal"),
        (301, "fatal"),
        (302, "fatal"),
        (304, "fatal"),
        (600, "fatal"),
    ],
)
def test_classify_table(status: int, verdict: str) -> None:
    assert classify(status) == verdict


# -- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": " 1.5 "}, 1.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after-ms": "2500"}, 2.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "-4"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "whenever"}, None),
        ({"retry-after": ""}, None),
    ],
)
def test_parse_retry_after_seconds_and_ms(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    when = datetime(2026, 11, 22, 10, 0, 7, tzinfo=UTC)
    header = format_datetime(when, usegmt=True)  # "Sun, 22 Nov 2026 10:00:07 GMT"
    now = when.timestamp() - 7
    assert parse_retry_after({"retry-after": header}, now=lambda: now) == pytest.approx(7.0)


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    header = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after({"retry-after": header}) == 0.0


def test_parse_retry_after_is_case_insensitive_on_httpx_headers() -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After": "4"})) == 4.0
    assert parse_retry_after(httpx.Headers({"Retry-After-Ms": "40"})) == 0.04


# -- Backoff ---------------------------------------------------------------------------------


def test_backoff_ceiling_doubles_up_to_cap() -> None:
    top = Backoff(base=0.5, cap=30.0, rng=lambda: 1.0)
    assert [top.delay(a) for a in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_backoff_full_jitter_stays_within_bounds() -> None:
    rng = random.Random(7)
    backoff = Backoff(base=0.5, cap=10.0, rng=rng.random)
    for attempt in range(12):
        samples = [backoff.delay(attempt) for _ in range(300)]
        ceiling = min(10.0, 0.5 * 2**attempt)
        assert all(0 <= s < ceiling for s in samples)
        assert len(set(samples)) > 250  # jittered, not one fixed value
        assert max(samples) > 0.8 * ceiling  # and spread over the whole range


def test_backoff_survives_endless_attempts() -> None:
    assert Backoff(cap=5.0, rng=lambda: 0.99).delay(10_000) == pytest.approx(4.95)


def test_backoff_retry_after_is_a_floor_not_capped() -> None:
    backoff = Backoff(base=0.5, cap=2.0, rng=lambda: 0.0)
    assert backoff.delay(0, retry_after=5.0) == 5.0
    assert backoff.delay(3, retry_after=0.0) == 0.0
    high = Backoff(base=0.5, cap=30.0, rng=lambda: 1.0)
    assert high.delay(5, retry_after=1.0) == 16.0  # jitter above the hint is kept


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(base=0)
    with pytest.raises(ValueError):
        Backoff(cap=-1)


# -- RateLimiter -----------------------------------------------------------------------------


def test_tier_one_is_one_request_then_a_full_second() -> None:
    t = FakeTime()
    limiter = RateLimiter(1, clock=t.clock, sleep=t.sleep)
    assert limiter.acquire()
    assert t.sleeps == []
    assert limiter.acquire()
    assert t.sleeps == [1.0]
    assert t.now == 1001.0


@pytest.mark.parametrize("n", sorted(TIERS.values()))
def test_never_more_than_n_in_any_second(n: int) -> None:
    t = FakeTime()
    limiter = RateLimiter(n, clock=t.clock, sleep=t.sleep)
    grants = []
    count = 3 * n + 7
    for _ in range(count):
        assert limiter.acquire()
        grants.append(t.last_read())
    assert_at_most_per_second(grants, n)
    # ... and no slower than that: a new window opens every second.
    assert grants[-1] - grants[0] <= (count - 1) // n


def test_never_more_than_n_in_any_second_with_irregular_arrivals() -> None:
    t = FakeTime()
    rng = random.Random(3)
    limiter = RateLimiter(5, clock=t.clock, sleep=t.sleep)
    grants = []
    for _ in range(400):
        t.now += rng.choice([0.0, 0.0, 0.01, 0.13, 0.4, 1.7])
        assert limiter.acquire()
        grants.append(t.last_read())
    assert_at_most_per_second(grants, 5)


def test_never_more_than_n_in_any_second_across_threads() -> None:
    t = FakeTime()
    limiter = RateLimiter(5, clock=t.clock, sleep=t.sleep)
    grants: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            assert limiter.acquire()
            with lock:
                grants.append(t.last_read())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(grants) == 200
    assert_at_most_per_second(grants, 5)


def test_ready_in_says_when_the_next_grant_comes_and_reserves_nothing() -> None:
    t = FakeTime()
    limiter = RateLimiter(1, window=1.03, clock=t.clock, sleep=t.sleep)
    assert limiter.ready_in() == 0.0
    assert limiter.acquire()
    assert limiter.ready_in() == pytest.approx(1.03)
    t.now += 0.5
    assert limiter.ready_in() == pytest.approx(0.53)
    limiter.penalize(2.0)
    assert limiter.ready_in() == pytest.approx(2.0)
    t.now += 2.0
    assert limiter.ready_in() == 0.0
    assert t.sleeps == []
    assert RateLimiter(None).ready_in() == 0.0


def test_penalize_makes_the_next_caller_wait() -> None:
    t = FakeTime()
    limiter = RateLimiter(60, clock=t.clock, sleep=t.sleep)
    assert limiter.acquire()  # thread A is answered 429 Retry-After: 2
    limiter.penalize(2.0)
    assert limiter.acquire()  # thread B, the next to send, waits out the penalty
    assert t.now == pytest.approx(1002.0)
    assert sum(t.sleeps) == pytest.approx(2.0)


def test_each_429_widens_the_window_up_to_a_cap() -> None:
    t = FakeTime()
    limiter = RateLimiter(1, window=1.03, clock=t.clock, sleep=t.sleep)
    limiter.penalize(1.0)
    assert limiter.window == pytest.approx(1.04)
    assert limiter.acquire() and limiter.acquire()
    assert t.now == pytest.approx(1000.0 + 1.0 + 1.04)  # the penalty, then the wider window
    for _ in range(20):
        limiter.penalize(1.0)
    assert limiter.window == pytest.approx(1.10)


def test_penalize_only_ever_extends() -> None:
    t = FakeTime()
    limiter = RateLimiter(60, clock=t.clock, sleep=t.sleep)
    limiter.penalize(5.0)
    limiter.penalize(1.0)
    assert limiter.acquire()
    assert t.now == pytest.approx(1005.0)


def test_acquire_returns_false_when_stopped_while_waiting() -> None:
    t = FakeTime()
    stop = threading.Event()

    def sleep_then_stop(seconds: float, ev: threading.Event | None) -> None:
        assert ev is stop  # the limiter hands the event to the sleeper, so waits are cut short
        stop.set()

    limiter = RateLimiter(1, clock=t.clock, sleep=sleep_then_stop)
    assert limiter.acquire(stop)
    assert limiter.acquire(stop) is False


def test_acquire_with_stop_already_set_does_not_sleep() -> None:
    t = FakeTime()
    stop = threading.Event()
    limiter = RateLimiter(1, clock=t.clock, sleep=t.sleep)
    limiter.penalize(10)
    stop.set()
    assert limiter.acquire(stop) is False
    assert t.sleeps == []


def test_limiter_rejects_a_zero_rate() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)


# -- RateLimits ------------------------------------------------------------------------------


def test_rate_limits_follow_knocks_tiers() -> None:
    limits = RateLimits("knock")
    assert {name: limits.for_endpoint(name).per_second for name in ENDPOINT_TIER} == {
        "bulk_identify": 1,
        "merge": 5,
        "identify": 60,
        "get_user": 200,
        "list_users": 200,
        "get_bulk_operation": 200,
        "bulk_delete_users": 1,
        "bulk_set_tenants": 1,
        "bulk_set_objects": 1,
        "add_subscriptions": 60,
        "add_audience_members": 60,
        "remove_audience_members": 60,
        "trigger_workflow": 1000,
    }
    assert limits.for_endpoint("merge") is limits.for_endpoint("merge")
    assert TIERS == {1: 1, 2: 5, 3: 60, 4: 200, 5: 1000}


def test_rate_limits_off_never_waits() -> None:
    t = FakeTime()
    limits = RateLimits("off", clock=t.clock, sleep=t.sleep)
    for name in ENDPOINT_TIER:
        limiter = limits.for_endpoint(name)
        limiter.penalize(60)
        assert all(limiter.acquire() for _ in range(5000))
    assert t.sleeps == []


def test_rate_limits_reject_unknown_names() -> None:
    with pytest.raises(ValueError):
        RateLimits("fast")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        RateLimits().for_endpoint("trigger")


def test_default_wait_returns_at_once_when_stopped() -> None:
    stop = threading.Event()
    stop.set()
    wait(3600, stop)  # would hang the test run if it slept
    wait(0)
    wait(-1)


# -- pacing against Knock's counting, with delays between our send and Knock's stamp ----------


def _simulate(
    per_second: int, *, counted_from_answer: bool, requests: int, seed: int
) -> tuple[int, float]:
    """Send ``requests`` requests as fast as the limiter allows, all in flight at once if it
    lets them, through a discrete-event clock: each one is stamped by the emulator's token
    bucket (the other side of the contract) a random 0-300 ms after it left, and answered up
    to 100 ms after that. Returns (429s, seconds taken)."""
    import heapq

    from consumer.emulator.limits import RateLimiter as KnockBucket

    rng = random.Random(seed)
    now = [0.0]
    events: list[tuple[float, int, str, object]] = []
    rejected = [0]
    bucket = KnockBucket(clock=lambda: now[0])
    tier = {1: 1, 5: 2, 60: 3}[per_second]

    def advance(to: float) -> None:
        while events and events[0][0] <= to:
            at, _, kind, slot = heapq.heappop(events)
            now[0] = at
            if kind == "stamp":
                rejected[0] += bucket.acquire("route", tier) > 0
            else:
                limiter.finish(slot)  # type: ignore[arg-type]
        now[0] = max(now[0], to)

    limiter = RateLimiter(
        per_second,
        window=KNOCK_WINDOW,
        clock=lambda: now[0],
        sleep=lambda s, stop=None: advance(now[0] + s),
    )
    for i in range(requests):
        if counted_from_answer:
            slot = limiter.take()
        else:
            assert limiter.acquire()
            slot = None
        stamp = now[0] + rng.uniform(0.0, 0.3)
        heapq.heappush(events, (stamp, 2 * i, "stamp", None))
        if slot is not None:
            heapq.heappush(events, (stamp + rng.uniform(0.0, 0.1), 2 * i + 1, "answer", slot))
    advance(1e9 if not events else max(e[0] for e in events))
    return rejected[0], now[0]


@pytest.mark.parametrize("per_second", [1, 5, 60])
def test_counted_from_the_answer_no_delay_before_knocks_stamp_draws_a_429(per_second: int) -> None:
    for seed in range(5):
        rejected, took = _simulate(
            per_second, counted_from_answer=True, requests=per_second * 20, seed=seed
        )
        assert rejected == 0, seed
        # The price is the answer's delay, not more: 20 windows of at most 1.005 s + 0.4 s.
        assert took <= 20 * (KNOCK_WINDOW + 0.4) + 1, seed


def test_counted_from_the_send_the_same_delays_draw_429s() -> None:
    # What the README's run met: paced from send times, a delay before Knock's stamp that
    # varies by more than the margin brings two stamps inside one of Knock's seconds.
    assert (
        sum(_simulate(1, counted_from_answer=False, requests=40, seed=s)[0] for s in range(5)) > 0
    )


def test_a_slot_in_flight_holds_the_next_request_until_it_is_answered() -> None:
    t = FakeTime()
    slot = None

    def sleep(seconds: float, stop: threading.Event | None = None) -> None:
        t.sleep(seconds)
        if t.now >= 1005.0 and slot is not None and slot[1] is None:  # answered 5 s later
            limiter.finish(slot)

    limiter = RateLimiter(1, window=1.0, clock=t.clock, sleep=sleep)
    slot = limiter.take()
    assert slot is not None
    assert limiter.take() is not None
    assert t.now == pytest.approx(1006.0, abs=0.01)
