"""Knock's documented numbers, written once: rate-limit tiers, the tier of each route the sink
calls, bulk sizes, the per-entity gap of bulk routes, id limits.

Everything here is Knock's (``../shared/notes/knock-api.md``, and the ``x-ratelimit-tier`` of
each operation in Knock's OpenAPI description); what the sink derives from it (plan sizes,
pacing) lives with the code that uses it. The emulator keeps its own copy of the tiers on
purpose: it is the other side of the contract, and a shared table would hide a mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

#: ``knock`` paces every route to Knock's tiers; ``off`` never waits (local benchmarks).
RateLimitMode = Literal["knock", "off"]

#: Requests per second per route per environment, by tier.
TIERS: Final[Mapping[int, int]] = {1: 1, 2: 5, 3: 60, 4: 200, 5: 1000}
#: The tier of each route the client calls.
ENDPOINT_TIER: Final[Mapping[str, int]] = {
    "bulk_identify": 1,
    "merge": 2,
    "identify": 3,
    "get_user": 4,
    "list_users": 4,
    "get_bulk_operation": 4,
    "bulk_delete_users": 1,
    "bulk_set_tenants": 1,
    "bulk_set_objects": 1,
    "add_subscriptions": 3,
    "add_audience_members": 3,
    "remove_audience_members": 3,
    "trigger_workflow": 5,
}
#: Ids a bulk call takes at most (accounts on Knock's older documented limit use 100).
MAX_BULK: Final = 1000
#: Recipients one subscription call takes at most (``UpsertSubscriptionsRequest``).
MAX_SUBSCRIPTION_RECIPIENTS: Final = 100
#: A bulk call skips an entity that a bulk call updated less than this many seconds earlier.
ENTITY_GAP: Final = 1.0
#: Knock's user id limit, in characters.
MAX_USER_ID_LENGTH: Final = 256


def per_second(endpoint: str) -> int:
    """Requests per second Knock allows on ``endpoint`` (a key of :data:`ENDPOINT_TIER`)."""
    return TIERS[ENDPOINT_TIER[endpoint]]
