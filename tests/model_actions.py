"""An independent model of the Knock actions a stream of events should leave behind.

Written from Knock's documented behaviour and the README's rules, not from the sink's code:
a trigger runs once per (message, workflow) whatever the replays; a tenant or object holds the
deep merge of its group calls' traits; a subscription or audience membership is the last word
of its (object|audience, user) pair; a tombstone deletes its user, and a later identify
creates it anew. Tombstones appear here as ``{"type": "tombstone", "userId": ...}``.
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.model import deep_merge


def _key(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def expected_triggers(
    events: list[dict[str, Any]], workflows: dict[str, str], since: float | None = None
) -> list[tuple[str, str, str, Any]]:
    """(workflow, recipient, data as JSON, tenant) of each run, sorted. ``workflows`` maps a
    track event name to its workflow key; data is every property; events whose ``_t`` (epoch
    seconds, the test's own record of its timestamp) is before ``since`` do not run."""
    out = []
    for e in events:
        if e["type"] != "track" or e.get("event") not in workflows:
            continue
        if since is not None and e["_t"] < since:
            continue
        tenant = e.get("context", {}).get("groupId")
        out.append((workflows[e["event"]], e["userId"], _key(e.get("properties", {})), tenant))
    return sorted(out)


def actual_triggers(runs: list[dict[str, Any]]) -> list[tuple[str, str, str, Any]]:
    return sorted(
        (r["workflow"], r["recipients"][0]["id"], _key(r["data"]), r["tenant"]) for r in runs
    )


def expected_groups(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Group id -> the deep merge of its group calls' traits, in order."""
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["type"] == "group":
            out[e["groupId"]] = deep_merge(out.get(e["groupId"], {}), e.get("traits", {}))
    return out


def expected_subscriptions(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["groupId"], e["userId"]) for e in events if e["type"] == "group" and "userId" in e}


def expected_audiences(events: list[dict[str, Any]], trait_keys: set[str]) -> dict[str, list[str]]:
    """Audience -> sorted members, from identify traits in ``trait_keys`` and
    ``Audience Entered`` / ``Audience Exited`` tracks."""
    members: dict[str, set[str]] = {}
    for e in events:
        changes: list[tuple[str, bool]] = []
        if e["type"] == "identify":
            changes = [(k, v) for k, v in e.get("traits", {}).items() if k in trait_keys]
        elif e["type"] == "track" and e.get("event") in ("Audience Entered", "Audience Exited"):
            changes = [(e["properties"]["audience_key"], e["event"] == "Audience Entered")]
        for key, add in changes:
            s = members.setdefault(key, set())
            (s.add if add else s.discard)(e["userId"])
    return {k: sorted(v) for k, v in members.items() if v}


def expected_users(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Users after identifies and tombstones (deep merge, null overwrites; delete drops)."""
    users: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["type"] == "identify":
            users[e["userId"]] = deep_merge(users.get(e["userId"], {}), e.get("traits", {}))
        elif e["type"] == "tombstone":
            users.pop(e["userId"], None)
    return users
