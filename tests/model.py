"""An independent model of what Knock should hold after a stream of simple events.

Written from Knock's documented rules, not from the sink's code: identify deep-merges custom
properties (null overwrites); merge deep-merges the from-user into the user with the user's
values winning, then deletes the from-user. Tests feed it events whose traits need no mapping
(custom properties and ``email`` only), so the model needs no mapping table.
"""

from __future__ import annotations

import copy
from typing import Any

#: Keys the API adds or that the comparison leaves out.
SERVER_KEYS = {"__typename", "updated_at", "id"}
RESERVED = {"name", "email", "avatar", "phone_number", "locale", "timezone", "created_at"}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def expected_state(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    users: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["type"] == "identify":
            users[e["userId"]] = deep_merge(users.get(e["userId"], {}), e.get("traits", {}))
        elif e["type"] == "track" and e.get("context", {}).get("traits"):
            users[e["userId"]] = deep_merge(users.get(e["userId"], {}), e["context"]["traits"])
        elif e["type"] == "alias":
            src = users.pop(e["previousId"], {})
            users[e["userId"]] = deep_merge(src, users.get(e["userId"], {}))
    return users


def actual_state(users: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The API's users in the model's shape: server keys dropped, unset reserved fields dropped."""
    return {
        u["id"]: {
            k: v
            for k, v in u.items()
            if k not in SERVER_KEYS
            and not (k in RESERVED and v is None)
            and k not in ("preferences", "channel_data")
        }
        for u in users
    }
