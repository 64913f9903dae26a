"""Knock's numbers, written once (:mod:`consumer.limits`): every route the client calls has a
tier, and every tier a rate."""

from __future__ import annotations

import ast
from pathlib import Path

import consumer.knock
from consumer.limits import ENDPOINT_TIER, TIERS, per_second

KNOCK = Path(consumer.knock.__file__).parent


def endpoints_called() -> set[str]:
    """The endpoint names the client hands to its transport and bulk runner."""
    names: set[str] = set()
    for path in KNOCK.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"send", "run"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names.add(node.args[0].value)
    return names


def test_every_route_the_client_calls_has_a_tier():
    called = endpoints_called()
    assert "bulk_identify" in called and "trigger_workflow" in called  # the scan finds them
    assert called <= ENDPOINT_TIER.keys()


def test_every_tier_has_a_rate_and_per_second_reads_it():
    assert set(ENDPOINT_TIER.values()) <= TIERS.keys()
    assert per_second("bulk_identify") == 1
    assert per_second("identify") == 60
    assert per_second("trigger_workflow") == 1000
