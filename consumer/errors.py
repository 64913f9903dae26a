"""The sink's errors, one tree, split by what the caller does about them::

    SinkError
    ├── ConfigError          bad setting: one line naming it, exit code 2
    ├── InvalidEvent         this one event can never be applied: dead-letter it with `reason`
    ├── KnockError           an HTTP answer from Knock, parsed from its {code, message, status, type}
    │   ├── RetryableError   connection error, timeout, 408, 429, 5xx: retry with backoff
    │   ├── ItemError        a per-item 4xx (422 on one user): dead-letter that item
    │   └── FatalKnockError  Knock says the configuration is wrong (401/403, 404 on an upsert
    │                        route): stop fetching, commit nothing past it, exit 3
    └── RegistryError        the Schema Registry could not give a writer schema
        ├── RegistryUnavailable  unreachable, timeout, 408, 429, 5xx: retry with backoff,
        │                        pause the partition meanwhile (the event is not bad)
        └── FatalRegistryError   401/403, or a 404 that is not "schema not found" (wrong
                                 URL): stop fetching, commit nothing past it, exit 3

``tests/test_errors.py`` holds this drawing against the classes.

An unknown schema id (404, code 40403) is no RegistryError: that one event can never be read,
so the Avro decoder raises :class:`InvalidEvent` (``undecodable``) for it.

Nothing in here ever carries the API key or the registry's credentials: messages are built
from status lines, Knock's and the registry's error bodies, and URLs without their userinfo.
"""

from __future__ import annotations

from typing import Any


class SinkError(Exception):
    """Base of every error the sink raises on purpose."""


class ConfigError(SinkError):
    """A setting is missing or invalid. ``str(err)`` is the one line shown to the user."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"invalid setting {setting}: {problem}")


class InvalidEvent(SinkError):
    """An event that can never be applied. ``kind`` is a short stable tag for metrics and the
    dead-letter header ``knock-sink.error.kind``; ``reason`` the human-readable detail."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"{kind}: {reason}")


class KnockError(SinkError):
    """An error answer from Knock (or no answer at all for :class:`RetryableError`)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        body: Any = None,
    ) -> None:
        self.status = status
        self.code = code
        self.body = body
        super().__init__(message)


class RetryableError(KnockError):
    """Transient: the same request may succeed later. ``retry_after`` is Knock's hint in
    seconds, when it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class ItemError(KnockError):
    """A permanent rejection of one request's content (4xx other than 401/403/408/429, and other
    than a 404 on an upsert route)."""


class FatalKnockError(KnockError):
    """Knock rejects our credentials or base URL: every further request would fail the same way."""


class RegistryError(SinkError):
    """The Schema Registry did not hand over a writer schema. ``status`` is its HTTP status
    (``None`` when it did not answer); the message never holds its credentials."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class RegistryUnavailable(RegistryError):
    """Transient: the registry is unreachable, timed out or answered 408/429/5xx. The same
    lookup may succeed later, so the event must be retried, never dead-lettered."""


class FatalRegistryError(RegistryError):
    """The registry rejects our credentials (401/403) or is not a registry at that URL: every
    further lookup would fail the same way."""
