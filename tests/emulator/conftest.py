"""Fixtures for the emulator's tests: one limits-off server for the session, reset before
each test, and Knock's official SDK pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from knockapi import Knock

from consumer.emulator import EmulatorServer

from .helpers import make_knock
from .spec import load_spec


@pytest.fixture
def emulator(api: EmulatorServer) -> EmulatorServer:
    """The session's limits-off server (``tests/conftest.py``), reset for this test."""
    return api


@pytest.fixture
def knock(emulator: EmulatorServer) -> Iterator[Knock]:
    client = make_knock(emulator)
    yield client
    client.close()


@pytest.fixture
def http(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    """Raw HTTP with the right key, for what the SDK cannot send (bad ids, odd headers)."""
    with httpx.Client(
        base_url=emulator.url, headers={"authorization": f"Bearer {emulator.api_key}"}
    ) as client:
        yield client


@pytest.fixture(scope="session")
def spec() -> dict[str, Any]:
    """Knock's OpenAPI description (the tests using it skip without the file)."""
    return load_spec()
