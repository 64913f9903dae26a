"""Helpers shared by the emulator tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from knockapi import Knock

from consumer.emulator import EmulatorServer
from tests.conftest import wait_for


def make_knock(server: EmulatorServer, **options: Any) -> Knock:
    """The official SDK, strict about response shapes, no retries (tests see every answer)."""
    options.setdefault("max_retries", 0)
    return Knock(
        api_key=server.api_key, base_url=server.url, _strict_response_validation=True, **options
    )


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    return wait_for(predicate, timeout)


def wait_bulk(knock: Knock, op_id: str, status: str = "completed") -> Any:
    """Poll a bulk operation until it has left ``queued``/``processing``; assert its status."""
    op = wait_until(
        lambda: (o := knock.bulk_operations.get(op_id)).status in ("completed", "failed") and o
    )
    assert op.status == status
    return op


class FakeClock:
    """The emulator's clock, advanced by the test (read from the server thread)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
