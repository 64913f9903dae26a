"""The Knock client's verbs: one method per Knock operation the sink uses.

Each verb builds its route and body and hands them to the :class:`~.transport.Transport`
(pacing, retries, errors) or, for bulk routes, to the :class:`~.bulk.BulkRunner` (following the
operation to its end). The client owns both and their lifecycle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..config import KnockSettings
from ..errors import FatalKnockError, ItemError, KnockError
from ..limits import MAX_BULK
from ..pacing import RateLimits
from ..retry import Backoff, Sleeper, wait
from .bulk import BulkResult, BulkRunner
from .transport import JSON, HttpClient, Transport, path_id

__all__ = ["KnockClient", "MergeResult"]


@dataclass(frozen=True, slots=True)
class MergeResult:
    """Outcome of :meth:`KnockClient.merge`. ``user`` is the primary user as Knock returned it;
    ``from_missing`` means the from-user did not exist (nothing to merge: a replay counts as
    done); ``created_primary`` means the primary was identified first, empty, to merge into."""

    user: JSON | None
    from_missing: bool
    created_primary: bool


class KnockClient:
    """Blocking Knock API client, safe to share between threads.

    It keeps no per-request state. Use it as a context manager or call :meth:`close`; a closed
    client refuses requests. An injected ``http`` client (tests: ``httpx.MockTransport``) is
    used as is and not closed by :meth:`close`.

    :param limits: rate limiters, shared by every client of the process.
    :param stop: once set, retry and polling loops raise ``RetryableError("stopped")`` promptly.
    :param on_retry: called with (endpoint, error) before each retry wait, e.g. for metrics.
    :param sleep: interruptible wait between retries and bulk polls (tests record it).
    :param on_request: called with (endpoint, HTTP status or ``None``, seconds) per request.
    :param on_wait: called with (endpoint, seconds) after each wait for a rate limiter.
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
        http: HttpClient | None = None,
        concurrency: int = 8,
        bulk_size: int = MAX_BULK,
        sleep: Sleeper = wait,
        on_request: Callable[[str, int | None, float], None] | None = None,
        on_wait: Callable[[str, float], None] | None = None,
    ) -> None:
        self._transport = Transport(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            limits=limits,
            backoff=backoff or Backoff(),
            stop=stop,
            on_retry=on_retry,
            http=http,
            concurrency=concurrency,
            sleep=sleep,
            on_request=on_request,
            on_wait=on_wait,
        )
        self._bulk = BulkRunner(self._transport, bulk_size)

    @classmethod
    def from_settings(
        cls,
        settings: KnockSettings,
        *,
        stop: threading.Event | None = None,
        http: HttpClient | None = None,
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
    def base_url(self) -> str:
        return self._transport.base_url

    @property
    def bulk_size(self) -> int:
        """Ids a bulk call of this client takes at most."""
        return self._bulk.bulk_size

    @property
    def limits(self) -> RateLimits:
        """The pacing of this client's requests (the sink sets its share of Knock's budget)."""
        return self._transport.limits

    def __repr__(self) -> str:
        return f"KnockClient(base_url={self.base_url!r}, closed={self.closed})"

    def __enter__(self) -> KnockClient:
        if self.closed:
            raise RuntimeError("KnockClient is closed and cannot be reopened")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._transport.closed

    def close(self) -> None:
        """Close the connection pool (only if this client created it). Idempotent."""
        self._transport.close()

    def ready_in(self, endpoint: str) -> float:
        """Seconds until a request on ``endpoint`` would leave without waiting for its limiter."""
        return self._transport.ready_in(endpoint)

    # -- users ---------------------------------------------------------------------------------

    def identify(self, user_id: str, props: JSON) -> JSON:
        """Upsert one user (``PUT /v1/users/{id}``); returns the User Knock now holds."""
        return self._transport.json(
            self._transport.send(
                "identify", "PUT", f"/v1/users/{path_id(user_id)}", props, user=user_id
            )
        )

    def get_user(self, user_id: str) -> JSON | None:
        """The user, or ``None`` when Knock answers 404."""
        try:
            return self._transport.json(
                self._transport.send("get_user", "GET", f"/v1/users/{path_id(user_id)}")
            )
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
        path = f"/v1/users/{path_id(user_id)}/merge"
        return self._transport.json(
            self._transport.send(
                "merge", "POST", path, {"from_user_id": from_user_id}, user=user_id
            )
        )

    # -- bulk operations -----------------------------------------------------------------------

    def bulk_identify(self, users: list[JSON]) -> BulkResult:
        """Upsert up to ``bulk_size`` users (each a dict with ``id``) and wait until Knock has
        finished the bulk operation. An operation that ends ``failed`` is returned, not raised.
        """
        ids = [u.get("id") for u in users]
        if not all(isinstance(i, str) and i for i in ids):
            raise ValueError("every user needs a non-empty string 'id'")
        return self._bulk.run("bulk_identify", "/v1/users/bulk/identify", {"users": users}, ids)

    def bulk_delete_users(self, user_ids: list[str]) -> BulkResult:
        """Delete up to ``bulk_size`` users and wait for the bulk operation to finish."""
        return self._bulk.run(
            "bulk_delete_users", "/v1/users/bulk/delete", {"user_ids": user_ids}, user_ids
        )

    def bulk_set_tenants(self, tenants: list[JSON]) -> BulkResult:
        """Set up to ``bulk_size`` tenants (each a dict with ``id``), waiting for the operation."""
        ids = [t["id"] for t in tenants]
        return self._bulk.run("bulk_set_tenants", "/v1/tenants/bulk/set", {"tenants": tenants}, ids)

    def bulk_set_objects(self, collection: str, objects: list[JSON]) -> BulkResult:
        """Set up to ``bulk_size`` objects of ``collection``, waiting for the operation."""
        path = f"/v1/objects/{path_id(collection)}/bulk/set"
        return self._bulk.run(
            "bulk_set_objects", path, {"objects": objects}, [o["id"] for o in objects]
        )

    # -- actions -------------------------------------------------------------------------------

    def add_subscriptions(self, collection: str, object_id: str, recipients: list[JSON]) -> None:
        """Subscribe recipients (inline-identified users) to an object."""
        path = f"/v1/objects/{path_id(collection)}/{path_id(object_id)}/subscriptions"
        self._transport.send("add_subscriptions", "POST", path, {"recipients": recipients})

    def audience_members(self, key: str, users: list[JSON], *, add: bool) -> None:
        """Add (inline-identified) users to audience ``key``, or remove them."""
        path = f"/v1/audiences/{path_id(key)}/members"
        body = {"members": [{"user": u} for u in users]}
        if add:
            self._transport.send("add_audience_members", "POST", path, body)
        else:
            self._transport.send("remove_audience_members", "DELETE", path, body)

    def trigger(self, workflow: str, body: JSON, idempotency_key: str) -> JSON:
        """Trigger ``workflow`` with ``Idempotency-Key``: a replay within Knock's 24 h window
        answers the first run instead of running again."""
        path = f"/v1/workflows/{path_id(workflow)}/trigger"
        response = self._transport.send(
            "trigger_workflow", "POST", path, body, headers={"Idempotency-Key": idempotency_key}
        )
        return self._transport.json(response)

    # -- setup -----------------------------------------------------------------------------------

    def check(self) -> None:
        """Verify the API key and base URL with one cheap read (``GET /v1/users?page_size=1``).

        :raises FatalKnockError: the key was rejected (401/403), or the base URL does not
            answer like Knock's API.
        """
        not_knock = f"base URL {self.base_url} does not look like Knock's API"
        try:
            page = self._transport.json(
                self._transport.send("list_users", "GET", "/v1/users", params={"page_size": 1})
            )
        except ItemError as exc:
            raise FatalKnockError(
                f"{not_knock}: {exc}", status=exc.status, code=exc.code, body=exc.body
            ) from exc
        if "entries" not in page:
            raise FatalKnockError(f"{not_knock}: GET /v1/users answered without 'entries'")
