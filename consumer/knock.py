"""The Knock client: the only module that speaks HTTP.

Every request goes through :meth:`KnockClient._send`: rate-limit acquire, send, classify
(:func:`consumer.policy.classify`), then either return, raise, or wait and retry. Transient
failures (connection errors, timeouts, 408, 429, 5xx) are retried for as long as it takes,
until success or until the ``stop`` event is set; everything else becomes one error of
:mod:`consumer.errors`, parsed from Knock's body here and nowhere else.

The API key lives only in the request headers: it is never logged, never put in an exception
message, and not shown by ``repr``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final
from urllib.parse import quote

import httpx
import orjson

from .config import KnockSettings
from .errors import FatalKnockError, ItemError, KnockError, RetryableError
from .limits import MAX_BULK
from .policy import Backoff, RateLimits, Sleeper, classify, parse_retry_after, wait

log = logging.getLogger("knock_sink.knock")

try:
    _VERSION = version("knock-sink")
except PackageNotFoundError:  # running from a source tree that was never installed
    _VERSION = "0+unknown"

_POLL_FIRST: Final = 0.005  # local bulk operations finish in milliseconds; Knock's in more
#: Polls of a long bulk operation come at most this far apart: a finished operation is seen
#: within this long. Under 1 s because a plan still polling holds its users (their next events
#: wait for it) and a flight slot; 4 polls a second per operation is little of the tier-4 route
#: budget (200/s, limits.py).
_POLL_MAX: Final = 0.25
_DONE: Final = frozenset({"completed", "failed"})

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class MergeResult:
    """Outcome of :meth:`KnockClient.merge`. ``user`` is the primary user as Knock returned it;
    ``from_missing`` means the from-user did not exist (nothing to merge: a replay counts as
    done); ``created_primary`` means the primary was identified first, empty, to merge into."""

    user: JSON | None
    from_missing: bool
    created_primary: bool


@dataclass(frozen=True, slots=True)
class BulkResult:
    """Outcome of a finished bulk operation. ``applied``, ``failed`` and ``rate_limited``
    partition the distinct ids sent. ``failed`` maps id -> reason; ``rate_limited`` ids were
    skipped by Knock's one-update-per-second-per-entity rule and must be sent again after 1 s."""

    operation_id: str
    status: str
    applied: list[str]
    failed: dict[str, str]
    rate_limited: list[str]


#: Endpoints for which 404 means a wrong route, never a missing user.
_NEVER_MISSING = frozenset({"identify", "bulk_identify", "list_users"})


def _path_id(value: str) -> str:
    # quote(safe="") keeps an id inside its path segment; "." and ".." would still be removed as
    # dot-segments by URL normalization, and "" would hit the collection route.
    if value in ("", ".", ".."):
        raise ItemError(f"not a usable Knock id: {value!r}", code="invalid_id")
    return quote(value, safe="")


def _decode(content: bytes) -> Any:
    try:
        return orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return None


class KnockClient:
    """Blocking Knock API client, safe to share between threads.

    It keeps no per-request state: the pooled ``httpx.Client`` is thread-safe and the rate
    limiters are locked. Use it as a context manager or call :meth:`close`; a closed client
    refuses requests. An injected ``http`` client (tests: ``httpx.MockTransport``) is used as
    is and not closed by :meth:`close`.

    :param limits: rate limiters, shared by every client of the process.
    :param stop: once set, retry and polling loops raise ``RetryableError("stopped")`` promptly.
    :param on_retry: called with (endpoint, error) before each retry wait, e.g. for metrics.
    :param sleep: interruptible wait between retries and bulk polls (tests record it).
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeout: float = 30,
        limits: RateLimits,
        backoff: Backoff | None = None,
        stop: threading.Event | None = None,
        on_retry: Callable[[str, KnockError], None] | None = None,
        http: httpx.Client | None = None,
        concurrency: int = 8,
        bulk_size: int = MAX_BULK,
        sleep: Sleeper = wait,
        on_request: Callable[[str, int | None, float], None] | None = None,
        on_wait: Callable[[str, float], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._on_request = on_request
        self._on_wait = on_wait
        self.bulk_size = bulk_size
        self._key = api_key
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"knock-sink/{_VERSION}",
        }
        self._timeout = timeout
        self._limits = limits
        self._backoff = backoff or Backoff()
        self._stop = stop
        self._on_retry = on_retry
        self._sleep = sleep
        self._owns_http = http is None
        # One keep-alive connection per worker thread; redirects are never Knock's answer.
        self._http = http or httpx.Client(
            timeout=timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._closed = False

    @classmethod
    def from_settings(
        cls,
        settings: KnockSettings,
        *,
        stop: threading.Event | None = None,
        http: httpx.Client | None = None,
        on_request: Callable[[str, int | None, float], None] | None = None,
        on_wait: Callable[[str, float], None] | None = None,
    ) -> KnockClient:
        """Build a client, with its own :class:`RateLimits`, from the ``[knock]`` settings.

        :raises ConfigError: when the API key is not set.
        """
        return cls(
            api_key=settings.secret_key(),
            base_url=settings.base_url,
            timeout=settings.timeout,
            limits=RateLimits(settings.rate_limits),
            backoff=Backoff(cap=settings.max_backoff),
            stop=stop,
            http=http,
            concurrency=settings.concurrency,
            bulk_size=settings.bulk_size,
            on_request=on_request,
            on_wait=on_wait,
        )

    @property
    def limits(self) -> RateLimits:
        """The pacing of this client's requests (the sink sets its share of Knock's budget)."""
        return self._limits

    def __repr__(self) -> str:
        return f"KnockClient(base_url={self.base_url!r}, closed={self._closed})"

    def __enter__(self) -> KnockClient:
        if self._closed:
            raise RuntimeError("KnockClient is closed and cannot be reopened")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the connection pool (only if this client created it). Idempotent."""
        if not self._closed:
            self._closed = True
            if self._owns_http:
                self._http.close()

    def ready_in(self, endpoint: str) -> float:
        """Seconds until a request on ``endpoint`` would leave without waiting for its limiter."""
        return self._limits.for_endpoint(endpoint).ready_in()

    def identify(self, user_id: str, props: JSON) -> JSON:
        """Upsert one user (``PUT /v1/users/{id}``); returns the User Knock now holds."""
        return self._json(
            self._send("identify", "PUT", f"/v1/users/{_path_id(user_id)}", props, user=user_id)
        )

    def get_user(self, user_id: str) -> JSON | None:
        """The user, or ``None`` when Knock answers 404."""
        try:
            return self._json(self._send("get_user", "GET", f"/v1/users/{_path_id(user_id)}"))
        except ItemError as exc:
            if exc.status == 404:
                return None
            raise

    def merge(self, user_id: str, from_user_id: str) -> MergeResult:
        """Merge ``from_user_id`` into ``user_id``, creating ``user_id`` first if needed.

        Knock answers 404 when either user is missing, without saying which, so a 404 is
        resolved by looking: a missing primary is identified empty and the merge retried; a 404
        with the primary present means the from-user is gone (already merged), which is success.
        """
        try:
            return MergeResult(self._merge_once(user_id, from_user_id), False, False)
        except ItemError as exc:
            if exc.status != 404:
                raise
        primary = self.get_user(user_id)
        if primary is not None:
            return MergeResult(primary, from_missing=True, created_primary=False)
        primary = self.identify(user_id, {})
        try:
            return MergeResult(self._merge_once(user_id, from_user_id), False, True)
        except ItemError as exc:
            if exc.status != 404:
                raise
        return MergeResult(primary, from_missing=True, created_primary=True)

    def _merge_once(self, user_id: str, from_user_id: str) -> JSON:
        path = f"/v1/users/{_path_id(user_id)}/merge"
        return self._json(
            self._send("merge", "POST", path, {"from_user_id": from_user_id}, user=user_id)
        )

    def bulk_identify(self, users: list[JSON]) -> BulkResult:
        """Upsert up to ``bulk_size`` users (each a dict with ``id``) and wait until Knock has
        finished the bulk operation. An operation that ends ``failed`` is returned, not raised.
        """
        ids = [u.get("id") for u in users]
        if not all(isinstance(i, str) and i for i in ids):
            raise ValueError("every user needs a non-empty string 'id'")
        return self._bulk("bulk_identify", "/v1/users/bulk/identify", {"users": users}, ids)

    def bulk_delete_users(self, user_ids: list[str]) -> BulkResult:
        """Delete up to ``bulk_size`` users and wait for the bulk operation to finish."""
        return self._bulk(
            "bulk_delete_users", "/v1/users/bulk/delete", {"user_ids": user_ids}, user_ids
        )

    def bulk_set_tenants(self, tenants: list[JSON]) -> BulkResult:
        """Set up to ``bulk_size`` tenants (each a dict with ``id``), waiting for the operation."""
        ids = [t["id"] for t in tenants]
        return self._bulk("bulk_set_tenants", "/v1/tenants/bulk/set", {"tenants": tenants}, ids)

    def bulk_set_objects(self, collection: str, objects: list[JSON]) -> BulkResult:
        """Set up to ``bulk_size`` objects of ``collection``, waiting for the operation."""
        path = f"/v1/objects/{_path_id(collection)}/bulk/set"
        return self._bulk(
            "bulk_set_objects", path, {"objects": objects}, [o["id"] for o in objects]
        )

    def add_subscriptions(self, collection: str, object_id: str, recipients: list[JSON]) -> None:
        """Subscribe recipients (inline-identified users) to an object."""
        path = f"/v1/objects/{_path_id(collection)}/{_path_id(object_id)}/subscriptions"
        self._send("add_subscriptions", "POST", path, {"recipients": recipients})

    def audience_members(self, key: str, users: list[JSON], *, add: bool) -> None:
        """Add (inline-identified) users to audience ``key``, or remove them."""
        path = f"/v1/audiences/{_path_id(key)}/members"
        body = {"members": [{"user": u} for u in users]}
        if add:
            self._send("add_audience_members", "POST", path, body)
        else:
            self._send("remove_audience_members", "DELETE", path, body)

    def trigger(self, workflow: str, body: JSON, idempotency_key: str) -> JSON:
        """Trigger ``workflow`` with ``Idempotency-Key``: a replay within Knock's 24 h window
        answers the first run instead of running again."""
        path = f"/v1/workflows/{_path_id(workflow)}/trigger"
        response = self._send(
            "trigger_workflow", "POST", path, body, headers={"Idempotency-Key": idempotency_key}
        )
        return self._json(response)

    def _bulk(self, endpoint: str, path: str, body: JSON, ids: list[Any]) -> BulkResult:
        if not 1 <= len(ids) <= self.bulk_size:
            raise ValueError(f"a bulk call takes 1 to {self.bulk_size} ids, got {len(ids)}")
        debug = log.isEnabledFor(logging.DEBUG)
        started = time.monotonic() if debug else 0.0
        response = self._send(endpoint, "POST", path, body)
        posted = time.monotonic() if debug else 0.0
        skipped = {
            part.strip()
            for name, value in response.headers.items()
            if name.lower().startswith("x-ratelimited-")
            for part in value.split(",")
        }
        op = self._follow(self._json(response))
        if debug:
            # The freshness trace (README, Freshness): limiter wait + POST, then polling.
            log.debug(
                "%s of %d ids: limiter and POST %.3f s, polling %.3f s",
                endpoint,
                len(ids),
                posted - started,
                time.monotonic() - posted,
            )
        return _bulk_result(op, list(dict.fromkeys(ids)), skipped)

    def _follow(self, op: JSON) -> JSON:
        interval = _POLL_FIRST
        while op.get("status") not in _DONE:
            self._sleep(interval, self._stop)
            if self._stop is not None and self._stop.is_set():
                raise RetryableError("stopped")
            if not isinstance(op.get("id"), str):
                raise FatalKnockError(f"{self.base_url} answered a bulk call without an id")
            path = f"/v1/bulk_operations/{_path_id(op['id'])}"
            op = self._json(self._send("get_bulk_operation", "GET", path))
            interval = min(interval * 2, _POLL_MAX)
        return op

    def check(self) -> None:
        """Verify the API key and base URL with one cheap read (``GET /v1/users?page_size=1``).

        :raises FatalKnockError: the key was rejected (401/403), or the base URL does not
            answer like Knock's API.
        """
        not_knock = f"base URL {self.base_url} does not look like Knock's API"
        try:
            page = self._json(self._send("list_users", "GET", "/v1/users", params={"page_size": 1}))
        except ItemError as exc:
            raise FatalKnockError(
                f"{not_knock}: {exc}", status=exc.status, code=exc.code, body=exc.body
            ) from exc
        if "entries" not in page:
            raise FatalKnockError(f"{not_knock}: GET /v1/users answered without 'entries'")

    def _send(
        self,
        endpoint: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str | int] | None = None,
        headers: dict[str, str] | None = None,
        user: str | None = None,
    ) -> httpx.Response:
        if self._closed:
            raise RuntimeError("KnockClient is closed")
        limiter = self._limits.for_endpoint(endpoint)
        content = None if body is None else orjson.dumps(body)
        where = f"{method} {path}"
        attempt = 0
        while True:
            asked = time.monotonic()
            slot = (
                None if self._stop is not None and self._stop.is_set() else limiter.take(self._stop)
            )
            if slot is None:
                raise RetryableError("stopped")
            sent = time.monotonic()
            if self._on_wait is not None:
                self._on_wait(endpoint, sent - asked)
            error: RetryableError
            try:
                response = self._http.request(
                    method,
                    self.base_url + path,
                    content=content,
                    params=params,
                    headers=self._headers if headers is None else {**self._headers, **headers},
                    timeout=self._timeout,
                )
                # httpx 0.28 binds a response's stream to the response (encode/httpx#3733): a
                # cycle, freed only by the cyclic collector, with the request and its body (a
                # bulk call's is 0.5 to 1 MB) inside. The loop runs that collector seldom
                # (consumer.sink), so a backfill kept the bodies of the calls in flight at
                # each collection: tens of MB. The body is read; a plain stream of it breaks
                # the cycle, and the response goes when its last reference does.
                response.stream = httpx.ByteStream(response.content)
                if self._on_request is not None:
                    self._on_request(endpoint, response.status_code, time.monotonic() - sent)
            except httpx.TransportError as exc:
                if self._on_request is not None:
                    self._on_request(endpoint, None, time.monotonic() - sent)
                error = RetryableError(self._redact(f"{where}: {type(exc).__name__}: {exc}"))
                error.__cause__ = exc
            else:
                if classify(response.status_code) == "ok":
                    return response
                status_error = self._status_error(response, where)
                if status_error.status == 404 and endpoint in _NEVER_MISSING:
                    # An upsert cannot find its target missing: the route itself is, so every
                    # request would fail alike. Stop rather than dead-letter all traffic.
                    raise FatalKnockError(
                        f"{where} answered 404: is the base URL {self.base_url} right?",
                        status=404,
                        code=status_error.code,
                        body=status_error.body,
                    )
                if not isinstance(status_error, RetryableError):
                    raise status_error
                error = status_error
            finally:
                limiter.finish(slot)  # counted from the answer (see policy.KNOCK_WINDOW)
            delay = self._backoff.delay(attempt, error.retry_after)
            if error.status == 429:
                # Knock limits per endpoint: every thread must hold off, not only this one.
                limiter.penalize(delay)
            attempt += 1
            log.warning(
                "retry %d of %s in %.2fs: %s",
                attempt,
                where,
                delay,
                error,
                extra={"user": user} if user else None,
            )
            if self._on_retry is not None:
                self._on_retry(endpoint, error)
            if self._stop is not None and self._stop.is_set():
                raise RetryableError("stopped") from error
            self._sleep(delay, self._stop)

    def _status_error(self, response: httpx.Response, where: str) -> KnockError:
        status = response.status_code
        body = _decode(response.content)
        fields = body if isinstance(body, dict) else {}
        code = fields.get("code") if isinstance(fields.get("code"), str) else None
        detail = fields.get("message") or response.reason_phrase
        text = self._redact(f"{where} answered HTTP {status}{f' {code}' if code else ''}: {detail}")
        kw: dict[str, Any] = {"status": status, "code": code, "body": body}
        verdict = classify(status)
        if verdict == "retry":
            return RetryableError(text, retry_after=parse_retry_after(response.headers), **kw)
        if verdict == "item":
            return ItemError(text, **kw)
        if status in (401, 403):
            return FatalKnockError(f"Knock rejected the API key: {text}", **kw)
        return FatalKnockError(f"unexpected answer, is the base URL right? {text}", **kw)

    def _json(self, response: httpx.Response) -> JSON:
        data = _decode(response.content)
        if not isinstance(data, dict):
            raise FatalKnockError(
                f"{response.request.method} {response.request.url.path} answered "
                f"HTTP {response.status_code} without a JSON object: is {self.base_url} Knock?",
                status=response.status_code,
            )
        return data

    def _redact(self, text: str) -> str:
        # Knock never echoes the key, but a proxy or a transport error message might.
        return text.replace(self._key, "<redacted>") if self._key else text


def _bulk_result(op: JSON, ids: list[str], skipped: set[str]) -> BulkResult:
    status = str(op.get("status"))
    if status == "failed":
        bad = {i: "bulk operation failed" for i in ids if i not in skipped}
    else:
        items = op.get("error_items") or []
        errors = {str(item.get("id")) for item in items if isinstance(item, dict)}
        bad = {i: "bulk operation error item" for i in ids if i in errors and i not in skipped}
    return BulkResult(
        operation_id=str(op.get("id")),
        status=status,
        applied=[i for i in ids if i not in bad and i not in skipped],
        failed=bad,
        rate_limited=[i for i in ids if i in skipped],
    )
