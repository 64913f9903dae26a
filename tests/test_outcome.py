"""What becomes of an op Knock rejected, and the wording of its dead letter."""

from __future__ import annotations

from consumer.errors import ItemError
from consumer.ops import Identify
from consumer.outcome import MAX_RETRY_DELAY, Outcome, Rejections, reason
from consumer.plan import Pending


def pending(seq: int, user: str = "u") -> Pending:
    return Pending(seq, Identify(user, {"n": seq}), None)


def test_a_rejected_item_is_retried_with_backoff_until_its_attempts_run_out():
    rejections = Rejections(item_attempts=3)
    p = pending(1)
    delays = []
    for _ in range(2):
        out, blocked = Outcome(), set()
        rejections.failed([p], "u", "bad", blocked, out)
        assert blocked == {"u"} and not out.dead
        delays.append(out.retry[0][1])
    assert delays == [2.0, 4.0]
    out = Outcome()
    rejections.failed([p], "u", "bad", set(), out)
    assert out.dead == [(p, "knock_rejected", "bad")] and not out.retry
    assert "u" in rejections


def test_once_dead_lettered_a_users_later_ops_get_one_attempt_each_until_one_applies():
    rejections = Rejections(item_attempts=2)
    first, second, third = pending(1), pending(2), pending(3)
    for _ in range(2):
        rejections.failed([first], "u", "bad", set(), Outcome())
    out = Outcome()
    rejections.failed([second], "u", "bad", set(), out)
    assert [d[0] for d in out.dead] == [second]  # one attempt, no backoff series
    rejections.applied("u")
    out = Outcome()
    rejections.failed([third], "u", "bad", set(), out)
    assert out.retry == [(third, 2.0)] and not out.dead


def test_the_retry_delay_is_capped():
    rejections = Rejections(item_attempts=100)
    p = pending(1)
    p.attempts = 10
    out = Outcome()
    rejections.failed([p], "u", "bad", set(), out)
    assert out.retry == [(p, MAX_RETRY_DELAY)]


def test_outcome_counts_calls_and_users():
    out = Outcome()
    out.count("bulk_identify", 3)
    out.count("bulk_identify", 2)
    out.count("merge")
    assert out.calls == {"bulk_identify": 2, "merge": 1} and out.users_sent == 5


def test_the_reason_carries_knocks_body_as_sent():
    bare = ItemError("PUT /v1/users/u answered HTTP 422")
    assert reason(bare) == "PUT /v1/users/u answered HTTP 422"
    with_body = ItemError("PUT /v1/users/u answered HTTP 422", status=422, body={"code": "x"})
    assert reason(with_body) == 'PUT /v1/users/u answered HTTP 422 | {"code":"x"}'
