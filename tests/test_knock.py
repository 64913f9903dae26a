"""The Knock client against ``httpx.MockTransport`` doubles. Waits are recorded, never slept."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from consumer.config import KnockSettings
from consumer.errors import ConfigError, FatalKnockError, ItemError, KnockError, RetryableError
from consumer.knock import BulkResult, KnockClient, MergeResult
from consumer.pacing import KNOCK_WINDOW, RateLimits
from consumer.retry import Backoff

KEY = "sk_test_0123456789abcdefSECRET"
BASE = "https://knock.test"
USER = {"__typename": "User", "id": "u1", "updated_at": "2026-11-22T10:00:00Z"}
MISSING = {
    "code": "resource_missing",
    "message": "The resource you requested does not exist",
    "status": 404,
    "type": "api_error",
}

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def json(status: int, body: Any = None, **headers: str) -> httpx.Response:
    content = b"" if body is None else orjson.dumps(body)
    return httpx.Response(status, content=content, headers=headers)


def op(status: str, **extra: Any) -> dict[str, Any]:
    return {"__typename": "BulkOperation", "id": "op-1", "status": status, **extra}


class Knock:
    """A scripted Knock: answers requests with ``replies`` in order, records every request."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply(request) if callable(reply) else reply

    @property
    def lines(self) -> list[str]:
        return [f"{r.method} {r.url.raw_path.decode()}" for r in self.requests]

    def body(self, i: int) -> Any:
        return orjson.loads(self.requests[i].content)


class Sleeps:
    """Records the client's waits; ``then`` runs inside a wait (what another thread does)."""

    def __init__(self, then: Callable[[int], object] | None = None) -> None:
        self.waits: list[float] = []
        self.then = then

    def __call__(self, seconds: float, stop: threading.Event | None = None) -> None:
        self.waits.append(seconds)
        if self.then is not None:
            self.then(len(self.waits))


def client(
    knock: Callable[[httpx.Request], httpx.Response],
    *,
    sleeps: Sleeps | None = None,
    limits: RateLimits | None = None,
    **kw: Any,
) -> KnockClient:
    return KnockClient(
        api_key=KEY,
        base_url=BASE + "/",
        limits=limits or RateLimits("off"),
        backoff=Backoff(base=0.5, cap=30, rng=lambda: 0.5),
        http=httpx.Client(transport=httpx.MockTransport(knock)),
        sleep=sleeps or Sleeps(),
        **kw,
    )


# -- wire format -----------------------------------------------------------------------------


def test_identify_sends_exact_request_and_returns_the_user() -> None:
    knock = Knock(json(200, USER))
    user = client(knock).identify("u1", {"email": "a@b.c", "name": None, "plan": {"tier": 2}})
    assert user == USER
    [req] = knock.requests
    assert (req.method, str(req.url)) == ("PUT", "https://knock.test/v1/users/u1")
    assert req.content == b'{"email":"a@b.c","name":null,"plan":{"tier":2}}'
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["accept"] == "application/json"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"].startswith("knock-sink/")


def test_path_ids_are_percent_encoded() -> None:
    knock = Knock(json(200, USER))
    client(knock).identify("a/b#c?d", {})
    assert knock.requests[0].url.raw_path == b"/v1/users/a%2Fb%23c%3Fd"


@pytest.mark.parametrize(
    "user_id",
    [
        "../bulk_operations/x",
        "x/merge",
        "a?page_size=1",
        "%2F",
        "a b",
        "é",
        "..x",
        ".x.",
        ";",
        "\\",
    ],
)
def test_no_id_reaches_another_route(user_id: str) -> None:
    knock = Knock(json(200, USER))
    client(knock).identify(user_id, {})
    req = knock.requests[0]
    assert req.url.path == f"/v1/users/{user_id}"  # decoded: the id, whole, in one segment
    assert req.url.raw_path.count(b"/") == 3 and not req.url.query


@pytest.mark.parametrize("user_id", ["", ".", ".."])
def test_ids_that_url_normalisation_would_rewrite_are_refused(user_id: str) -> None:
    knock = Knock()
    with pytest.raises(ItemError):
        client(knock).get_user(user_id)
    assert knock.requests == []


def test_merge_path_and_body() -> None:
    knock = Knock(json(200, USER))
    result = client(knock).merge("a/b", "anon#1")
    assert result == MergeResult(USER, from_missing=False, created_primary=False)
    assert knock.lines == ["POST /v1/users/a%2Fb/merge"]
    assert knock.requests[0].content == b'{"from_user_id":"anon#1"}'


# -- users -----------------------------------------------------------------------------------


def test_get_user_found_and_missing() -> None:
    knock = Knock(json(200, USER), json(404, MISSING))
    c = client(knock)
    assert c.get_user("u1") == USER
    assert c.get_user("nobody") is None
    assert knock.lines == ["GET /v1/users/u1", "GET /v1/users/nobody"]


# -- retries ---------------------------------------------------------------------------------


def test_retries_for_as_long_as_it_takes() -> None:
    knock = Knock(*[json(503, {"message": "busy"})] * 5, json(200, USER))
    sleeps, seen = Sleeps(), []
    c = client(knock, sleeps=sleeps, on_retry=lambda ep, err: seen.append((ep, err.status)))
    assert c.identify("u1", {}) == USER
    assert len(knock.requests) == 6
    assert sleeps.waits == [0.25, 0.5, 1.0, 2.0, 4.0]  # rng 0.5 x min(30, 0.5 * 2**n)
    assert seen == [("identify", 503)] * 5


def test_backoff_is_capped_over_a_long_outage() -> None:
    knock = Knock(*[json(500)] * 12, json(200, USER))
    sleeps = Sleeps()
    c = KnockClient(
        api_key=KEY,
        base_url=BASE,
        limits=RateLimits("off"),
        sleep=sleeps,
        backoff=Backoff(cap=3.0, rng=lambda: 0.999),
        http=httpx.Client(transport=httpx.MockTransport(knock)),
    )
    c.identify("u1", {})
    assert len(sleeps.waits) == 12 and max(sleeps.waits) <= 3.0
    assert sleeps.waits[-1] == pytest.approx(2.997)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "HTTP-DATE+30"}, 30.0),
    ],
)
def test_retry_after_is_honoured(headers: dict[str, str], expected: float) -> None:
    if headers.get("retry-after") == "HTTP-DATE+30":
        # Built here, not at collection time, which may be long before the test runs.
        headers = {"retry-after": formatdate(time.time() + 30, usegmt=True)}
    knock = Knock(json(429, {"message": "slow down"}, **headers), json(200, USER))
    sleeps = Sleeps()
    client(knock, sleeps=sleeps).identify("u1", {})
    assert sleeps.waits == [pytest.approx(expected, abs=2.0)]
    assert sleeps.waits[0] <= expected + 0.001


def test_429_holds_back_other_threads_on_that_endpoint() -> None:
    now = [100.0]
    stamps: dict[str, float] = {}

    def fake_sleep(seconds: float, stop: threading.Event | None = None) -> None:
        now[0] += seconds

    limits = RateLimits("knock", clock=lambda: now[0], sleep=fake_sleep)

    def answer(request: httpx.Request) -> httpx.Response:
        user = request.url.path.rsplit("/", 1)[1]
        stamps.setdefault(user, now[0])
        if user == "u1" and len([r for r in knock.requests if r.url.path.endswith("u1")]) == 1:
            return json(429, {"message": "slow down"}, **{"retry-after": "3"})
        return json(200, USER)

    knock = Knock(*[answer] * 3)
    # While the first thread waits out its 429, a second thread sends on the same endpoint.
    other = client(knock, limits=limits)
    first = client(knock, limits=limits, sleeps=Sleeps(then=lambda _: other.identify("u2", {})))
    first.identify("u1", {})
    assert stamps["u2"] >= stamps["u1"] + 3.0
    assert knock.lines == ["PUT /v1/users/u1", "PUT /v1/users/u2", "PUT /v1/users/u1"]


def test_each_endpoint_is_paced_by_its_own_limiter() -> None:
    now = [0.0]

    def fake_sleep(seconds: float, stop: threading.Event | None = None) -> None:
        now[0] += seconds

    limits = RateLimits("knock", clock=lambda: now[0], sleep=fake_sleep)
    knock = Knock(*[json(200, op("completed"))] * 3, json(200, USER))
    c = client(knock, limits=limits)
    for _ in range(3):
        c.bulk_identify([{"id": "u1"}])
    assert now[0] == pytest.approx(2 * KNOCK_WINDOW)  # tier 1: one bulk identify per window
    c.identify("u1", {})
    assert now[0] == pytest.approx(2 * KNOCK_WINDOW)  # identify has its own budget


def test_connection_errors_and_timeouts_are_retried() -> None:
    knock = Knock(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), json(200, USER))
    sleeps, seen = Sleeps(), []
    c = client(knock, sleeps=sleeps, on_retry=lambda ep, err: seen.append(err))
    assert c.identify("u1", {}) == USER
    assert len(sleeps.waits) == 2
    assert all(isinstance(e, RetryableError) and e.status is None for e in seen)
    assert "ConnectError" in str(seen[0]) and isinstance(seen[0].__cause__, httpx.ConnectError)


def test_stop_interrupts_the_retry_loop() -> None:
    stop = threading.Event()
    knock = Knock(*[json(503)] * 100)
    sleeps = Sleeps(then=lambda n: stop.set() if n == 3 else None)
    with pytest.raises(RetryableError, match="stopped"):
        client(knock, sleeps=sleeps, stop=stop).identify("u1", {})
    assert len(knock.requests) == 3


def test_stop_already_set_sends_nothing() -> None:
    stop = threading.Event()
    stop.set()
    knock = Knock()
    with pytest.raises(RetryableError, match="stopped"):
        client(knock, stop=stop).identify("u1", {})
    assert knock.requests == []


def test_stop_interrupts_a_rate_limit_wait() -> None:
    stop = threading.Event()

    def stop_instead_of_sleeping(seconds: float, ev: threading.Event | None = None) -> None:
        stop.set()

    limits = RateLimits("knock", clock=lambda: 0.0, sleep=stop_instead_of_sleeping)
    knock = Knock(json(200, op("completed")))
    c = client(knock, limits=limits, stop=stop)
    c.bulk_identify([{"id": "u1"}])
    with pytest.raises(RetryableError, match="stopped"):
        c.bulk_identify([{"id": "u2"}])
    assert len(knock.requests) == 1


def test_retry_logs_one_line_per_retry(caplog: pytest.LogCaptureFixture) -> None:
    knock = Knock(json(503), json(429), json(200, USER))
    with caplog.at_level(logging.DEBUG, logger="knock_sink.knock"):
        client(knock).identify("u1", {})
    lines = [r for r in caplog.records if r.name == "knock_sink.knock"]
    assert len(lines) == 2
    assert "PUT /v1/users/u1" in lines[0].getMessage() and "503" in lines[0].getMessage()


# -- errors ----------------------------------------------------------------------------------


def test_422_is_an_item_error_with_knocks_body() -> None:
    body = {
        "code": "invalid_params",
        "message": "Invalid params",
        "status": 422,
        "type": "invalid_request_error",
        "errors": [{"field": "email", "message": "is invalid", "type": "format"}],
    }
    knock = Knock(json(422, body))
    with pytest.raises(ItemError) as info:
        client(knock).identify("u1", {"email": "nope"})
    assert (info.value.status, info.value.code, info.value.body) == (422, "invalid_params", body)
    assert "Invalid params" in str(info.value)
    assert len(knock.requests) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_credentials_are_fatal(status: int) -> None:
    knock = Knock(json(status, {"code": "authorization", "message": "nope", "status": status}))
    with pytest.raises(FatalKnockError, match="API key") as info:
        client(knock).identify("u1", {})
    assert info.value.status == status and info.value.code == "authorization"
    assert len(knock.requests) == 1


def test_non_json_error_bodies() -> None:
    html = httpx.Response(502, text="<html>bad gateway</html>")
    knock = Knock(html, httpx.Response(400, text="<html>oops</html>"))
    with pytest.raises(ItemError, match="Bad Request") as info:
        client(knock).identify("u1", {})
    assert info.value.body is None and info.value.status == 400


def test_non_json_success_body_is_fatal() -> None:
    with pytest.raises(FatalKnockError, match=re.escape("knock.test")):
        client(Knock(httpx.Response(200, text="<html>hello</html>"))).identify("u1", {})


def test_redirect_is_fatal() -> None:
    knock = Knock(httpx.Response(301, headers={"location": "https://elsewhere/"}))
    with pytest.raises(FatalKnockError, match="base URL"):
        client(knock).identify("u1", {})


# -- merge -----------------------------------------------------------------------------------


def test_merge_creates_a_missing_primary_then_merges() -> None:
    knock = Knock(json(404, MISSING), json(404, MISSING), json(200, USER), json(200, USER))
    assert client(knock).merge("u1", "anon") == MergeResult(USER, False, created_primary=True)
    assert knock.lines == [
        "POST /v1/users/u1/merge",
        "GET /v1/users/u1",
        "PUT /v1/users/u1",
        "POST /v1/users/u1/merge",
    ]
    assert knock.body(2) == {} and knock.body(3) == {"from_user_id": "anon"}


def test_merge_with_the_from_user_gone_is_success() -> None:
    primary = {**USER, "plan": "pro"}
    knock = Knock(json(404, MISSING), json(200, primary))
    assert client(knock).merge("u1", "anon") == MergeResult(primary, True, False)
    assert knock.lines == ["POST /v1/users/u1/merge", "GET /v1/users/u1"]


def test_merge_with_both_users_missing_creates_the_primary() -> None:
    knock = Knock(json(404, MISSING), json(404, MISSING), json(200, USER), json(404, MISSING))
    assert client(knock).merge("u1", "anon") == MergeResult(USER, True, True)
    assert len(knock.requests) == 4


def test_merge_other_errors_propagate() -> None:
    with pytest.raises(ItemError) as info:
        client(Knock(json(422, {"message": "same user"}))).merge("u1", "u1")
    assert info.value.status == 422


# -- bulk ------------------------------------------------------------------------------------


def test_bulk_identify_follows_the_operation_to_the_end() -> None:
    users = [{"id": f"u{i}", "email": f"u{i}@x.io"} for i in range(1, 6)]
    knock = Knock(
        json(200, op("queued"), **{"x-ratelimited-users": "u3, u4"}),
        json(200, op("processing")),
        json(200, op("completed", error_items=[{"id": "u2", "collection": None}])),
    )
    sleeps = Sleeps()
    result = client(knock, sleeps=sleeps).bulk_identify(users)
    assert result == BulkResult(
        operation_id="op-1",
        status="completed",
        applied=["u1", "u5"],
        failed={"u2": "bulk operation error item"},
        rate_limited=["u3", "u4"],
    )
    assert knock.lines == [
        "POST /v1/users/bulk/identify",
        "GET /v1/bulk_operations/op-1",
        "GET /v1/bulk_operations/op-1",
    ]
    assert knock.requests[0].content == orjson.dumps({"users": users})
    assert sleeps.waits == [0.005, 0.01]


def test_bulk_polling_interval_grows_to_a_quarter_second() -> None:
    knock = Knock(
        json(200, op("queued")), *[json(200, op("processing"))] * 9, json(200, op("completed"))
    )
    sleeps = Sleeps()
    client(knock, sleeps=sleeps).bulk_identify([{"id": "u1"}])
    assert sleeps.waits == [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.25, 0.25, 0.25, 0.25]


def test_bulk_operation_that_failed_fails_every_id() -> None:
    knock = Knock(json(200, op("processing")), json(200, op("failed")))
    result = client(knock).bulk_identify([{"id": "a"}, {"id": "b"}])
    everything = {"a": "bulk operation failed", "b": "bulk operation failed"}
    assert result == BulkResult("op-1", "failed", applied=[], failed=everything, rate_limited=[])


def test_bulk_post_is_retried_like_any_request() -> None:
    knock = Knock(json(429, None, **{"retry-after": "1"}), json(200, op("completed")))
    assert client(knock).bulk_identify([{"id": "a"}]).applied == ["a"]


def test_stop_interrupts_bulk_polling() -> None:
    stop = threading.Event()
    knock = Knock(json(200, op("queued")), *[json(200, op("processing"))] * 10)
    sleeps = Sleeps(then=lambda n: stop.set() if n == 2 else None)
    with pytest.raises(RetryableError, match="stopped"):
        client(knock, sleeps=sleeps, stop=stop).bulk_identify([{"id": "u1"}])
    assert len(knock.requests) == 2


def test_bulk_size_and_ids_are_checked_before_sending() -> None:
    knock = Knock()
    c = client(knock, bulk_size=2)
    for bad in ([], [{"id": "a"}, {"id": "b"}, {"id": "c"}], [{"email": "x@y.z"}], [{"id": ""}]):
        with pytest.raises(ValueError):
            c.bulk_identify(bad)
    assert knock.requests == []


# -- check -----------------------------------------------------------------------------------


def test_check_reads_one_user() -> None:
    knock = Knock(json(200, {"entries": [], "page_info": {"after": None}}))
    client(knock).check()
    assert knock.lines == ["GET /v1/users?page_size=1"]


@pytest.mark.parametrize("status", [401, 403])
def test_check_reports_a_rejected_key(status: int) -> None:
    with pytest.raises(FatalKnockError, match="rejected the API key"):
        client(Knock(json(status, {"message": "bad key"}))).check()


@pytest.mark.parametrize(
    "reply",
    [
        json(404, MISSING),
        httpx.Response(404, text="Not Found"),
        httpx.Response(200, text="<html>welcome</html>"),
        json(200, {"hello": "world"}),
    ],
)
def test_check_reports_a_base_url_that_is_not_knock(reply: httpx.Response) -> None:
    with pytest.raises(FatalKnockError, match=re.escape("https://knock.test")):
        client(Knock(reply)).check()


# -- the API key stays secret ----------------------------------------------------------------


def test_the_api_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    errors: list[BaseException] = []
    scenarios: list[tuple[Reply, ...]] = [
        (json(401, {"message": "bad key"}),),
        (json(403, {"message": f"key {KEY} lacks access"}),),  # a server echoing it back
        (json(429, {"message": "slow"}, **{"retry-after": "1"}), json(422, {"message": "x"})),
        (json(500, {"message": "boom"}), json(404, MISSING)),
        (httpx.ConnectError(f"cannot reach with Authorization: Bearer {KEY}"), json(400)),
    ]
    with caplog.at_level(logging.DEBUG):
        for replies in scenarios:
            c = client(Knock(*replies), on_retry=lambda ep, err: errors.append(err))
            with pytest.raises(KnockError) as info:
                c.identify("u1", {})
            errors.append(info.value)
        c.close()
    assert len(errors) == 8
    for err in errors:
        assert KEY not in str(err) and KEY not in repr(err)
    assert KEY not in caplog.text
    assert KEY not in repr(c) and "knock.test" in repr(c)


# -- lifecycle -------------------------------------------------------------------------------


def test_closed_client_refuses_requests_and_cannot_reopen() -> None:
    with client(Knock()) as c:
        assert not c.closed
    assert c.closed
    with pytest.raises(RuntimeError):
        c.identify("u1", {})
    with pytest.raises(RuntimeError):
        c.__enter__()


def test_client_closes_only_the_pool_it_owns() -> None:
    injected = httpx.Client(transport=httpx.MockTransport(Knock()))
    client_with_injected = KnockClient(
        api_key=KEY, base_url=BASE, limits=RateLimits("off"), http=injected
    )
    client_with_injected.close()
    assert not injected.is_closed
    owned = KnockClient(api_key=KEY, base_url=BASE, limits=RateLimits("off"))
    pool = owned._transport._http
    owned.close()
    assert pool.is_closed


def test_from_settings() -> None:
    settings = KnockSettings(
        api_key=SecretStr(KEY), base_url="http://127.0.0.1:8080/", bulk_size=100, rate_limits="off"
    )
    knock = Knock(json(200, USER))
    c = KnockClient.from_settings(settings, http=httpx.Client(transport=httpx.MockTransport(knock)))
    assert (c.base_url, c.bulk_size) == ("http://127.0.0.1:8080", 100)
    c.identify("u1", {})
    assert str(knock.requests[0].url) == "http://127.0.0.1:8080/v1/users/u1"
    with pytest.raises(ConfigError, match=re.escape("knock.api_key")):
        KnockClient.from_settings(KnockSettings())


def test_concurrent_use_from_many_threads() -> None:
    lock = threading.Lock()
    calls = [0]

    def answer(request: httpx.Request) -> httpx.Response:
        with lock:
            calls[0] += 1
            flaky = calls[0] % 3 == 0
        return json(503) if flaky else json(200, {"id": request.url.path.rsplit("/", 1)[1]})

    c = client(answer)
    results: list[str] = []

    def worker(n: int) -> None:
        for i in range(20):
            user = c.identify(f"t{n}-{i}", {})
            with lock:
                results.append(user["id"])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == sorted(f"t{n}-{i}" for n in range(8) for i in range(20))


@pytest.mark.parametrize("call", ["identify", "bulk_identify"])
def test_404_on_an_upsert_route_is_fatal_not_an_item_error(call: str) -> None:
    from consumer.errors import FatalKnockError

    knock = Knock(
        json(
            404, {"code": "resource_missing", "message": "nope", "status": 404, "type": "api_error"}
        )
    )
    c = client(knock, sleeps=Sleeps())
    with pytest.raises(FatalKnockError, match="base URL"):
        if call == "identify":
            c.identify("u1", {"a": 1})
        else:
            c.bulk_identify([{"id": "u1"}])
