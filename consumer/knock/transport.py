"""One request to Knock, start to end: the only module of the sink that speaks HTTP.

:meth:`Transport.send` waits for the route's rate limiter, sends, classifies the answer
(:func:`consumer.retry.classify`), then returns it, raises, or waits and sends again.
Transient failures (connection errors, timeouts, 408, 429, 5xx) are retried for as long as it
takes, until success or until the ``stop`` event is set; everything else becomes one error of
:mod:`consumer.errors`, parsed from Knock's body here and nowhere else.

The API key lives only in the request headers: it is never logged, never put in an exception
message, and not shown by ``repr``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from ..errors import FatalKnockError, ItemError, KnockError, RetryableError
from ..pacing import RateLimits
from ..retry import Backoff, Sleeper, classify, parse_retry_after

__all__ = ["JSON", "HttpClient", "Transport", "path_id"]

log = logging.getLogger("knock_sink.knock")

try:
    _VERSION = version("knock-sink")
except PackageNotFoundError:  # running from a source tree that was never installed
    _VERSION = "0+unknown"

JSON = dict[str, Any]
#: The connection pool a :class:`Transport` sends through (tests: one on ``httpx.MockTransport``).
HttpClient = httpx.Client

#: Endpoints for which 404 means a wrong route, never a missing user.
_NEVER_MISSING = frozenset({"identify", "bulk_identify", "list_users"})


def path_id(value: str) -> str:
    """``value`` as one path segment of a Knock route.

    :raises ItemError: for an id no route can carry.
    """
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


class Transport:
    """Sends requests to one Knock environment, paced and retried; safe to share between
    threads (the pooled ``httpx.Client`` is thread-safe and the rate limiters are locked).

    A closed transport refuses requests. An injected ``http`` client is used as is and not
    closed by :meth:`close`. Parameters: see :class:`~consumer.knock.KnockClient`.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeout: float,
        limits: RateLimits,
        backoff: Backoff,
        stop: threading.Event | None,
        on_retry: Callable[[str, KnockError], None] | None,
        http: HttpClient | None,
        concurrency: int,
        sleep: Sleeper,
        on_request: Callable[[str, int | None, float], None] | None,
        on_wait: Callable[[str, float], None] | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.limits = limits
        self._key = api_key
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"knock-sink/{_VERSION}",
        }
        self._timeout = timeout
        self._backoff = backoff
        self._stop = stop
        self._on_retry = on_retry
        self._on_request = on_request
        self._on_wait = on_wait
        self._sleep = sleep
        self._owns_http = http is None
        # One keep-alive connection per worker thread; redirects are never Knock's answer.
        self._http = http or httpx.Client(
            timeout=timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self.closed = False

    def close(self) -> None:
        """Close the connection pool (only if this transport created it). Idempotent."""
        if not self.closed:
            self.closed = True
            if self._owns_http:
                self._http.close()

    @property
    def stopped(self) -> bool:
        """Whether the ``stop`` event is set: loops give up with ``RetryableError("stopped")``."""
        return self._stop is not None and self._stop.is_set()

    def pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less once the ``stop`` event is set."""
        self._sleep(seconds, self._stop)

    def ready_in(self, endpoint: str) -> float:
        """Seconds until a request on ``endpoint`` would leave without waiting for its limiter."""
        return self.limits.for_endpoint(endpoint).ready_in()

    def send(
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
        """Send ``method path`` with the JSON ``body`` until Knock answers 2xx; return that.

        :param endpoint: the route's name in :data:`consumer.limits.ENDPOINT_TIER` (its pacing).
        :param user: named in the log line of a retry.
        :raises RetryableError: only once the ``stop`` event is set.
        :raises ItemError: Knock rejected the request's content.
        :raises FatalKnockError: Knock rejected the key, or the base URL is not Knock's.
        """
        if self.closed:
            raise RuntimeError("KnockClient is closed")
        limiter = self.limits.for_endpoint(endpoint)
        content = None if body is None else orjson.dumps(body)
        where = f"{method} {path}"
        attempt = 0
        while True:
            asked = time.monotonic()
            slot = None if self.stopped else limiter.take(self._stop)
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
                # bulk call's is 0.5 to 1 MB) inside, and the loop runs that collector seldom
                # (consumer.sink). The body is read; a plain stream of it breaks the cycle, and
                # the response goes when its last reference does.
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
                limiter.finish(slot)  # counted from the answer (see pacing.KNOCK_WINDOW)
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
            if self.stopped:
                raise RetryableError("stopped") from error
            self.pause(delay)

    def json(self, response: httpx.Response) -> JSON:
        """The JSON object of a 2xx answer.

        :raises FatalKnockError: the answer is not a JSON object (the base URL is not Knock's).
        """
        data = _decode(response.content)
        if not isinstance(data, dict):
            raise FatalKnockError(
                f"{response.request.method} {response.request.url.path} answered "
                f"HTTP {response.status_code} without a JSON object: is {self.base_url} Knock?",
                status=response.status_code,
            )
        return data

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

    def _redact(self, text: str) -> str:
        # Knock never echoes the key, but a proxy or a transport error message might.
        return text.replace(self._key, "<redacted>") if self._key else text
