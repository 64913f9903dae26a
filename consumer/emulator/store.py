"""The emulator's state in SQLite, and the merge rules Knock documents.

Every stored user is one row: ``data`` holds the orjson of the identify-shaped dict (reserved
and custom properties, ``preferences``, ``channel_data``), minus the server-owned keys.

Threading contract: a :class:`Store` is used from one thread at a time (the server's event
loop); it opens its connection with ``check_same_thread=False`` only so it can be built and
closed from another thread.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from .memberships import Memberships
from .models import SERVER_FIELDS, SPECIAL_FIELDS, now_iso

Row = tuple[str, dict[str, Any], str]
"""``(id, data, updated_at)``"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    data BLOB NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    data BLOB NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (collection, id)
);
-- A user recipient has rcollection '' (ids cannot be empty, so no clash with an object).
CREATE TABLE IF NOT EXISTS subscriptions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    object_id TEXT NOT NULL,
    rcollection TEXT NOT NULL,
    rid TEXT NOT NULL,
    properties BLOB NOT NULL,
    inserted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (collection, object_id, rcollection, rid)
);
-- A member without a tenant has tenant ''.
CREATE TABLE IF NOT EXISTS audience_members (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    audience TEXT NOT NULL,
    user_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    added_at TEXT NOT NULL,
    UNIQUE (audience, user_id, tenant)
);
-- Every user delete that was applied, in order (the control API's read-back).
CREATE TABLE IF NOT EXISTS deleted_users (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL
);
"""
_UPSERT_USER = (
    "INSERT INTO users (id, data, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT(id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at"
)


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Return a new dict: ``patch`` laid over ``base``, nested objects merged recursively.

    The one deep-merge of the emulator (identify, bulk identify, merge, tenants, objects).
    A ``null`` in ``patch`` overwrites; lists are replaced, never concatenated. Neither
    argument is modified.
    """
    out = dict(base)
    for key, value in patch.items():
        old = out.get(key)
        if type(value) is dict and type(old) is dict:
            out[key] = deep_merge(old, value)
        else:
            out[key] = value
    return out


def apply_identify(stored: dict[str, Any], patch: dict[str, Any], *, deep: bool) -> dict[str, Any]:
    """Apply one identify body to a stored user and return the new stored dict.

    Custom and reserved properties are deep-merged (``deep=True``) or replaced key by key
    (``deep=False``, Knock's older documented behaviour). ``channel_data`` replaces per channel
    id; ``preferences`` deep-merges per preference set unless the set says
    ``"__persistence_strategy__": "replace"``.
    """
    out = stored.copy()
    # Hot path of bulk identify: most values are scalars, so test the type first.
    for key, value in patch.items():
        if type(value) is dict:
            old = out.get(key)
            if key == "channel_data":
                out[key] = {**(old or {}), **value}
                continue
            if key == "preferences":
                out[key] = _merge_preferences(old or {}, value)
                continue
            if deep and type(old) is dict:
                out[key] = deep_merge(old, value)
                continue
        out[key] = value
    for key in SERVER_FIELDS:
        out.pop(key, None)
    return out


def _merge_preferences(stored: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    sets = dict(stored)
    for set_id, sent in patch.items():
        pref = sent
        if type(sent) is dict:
            pref = dict(sent)
            replace = pref.pop("__persistence_strategy__", "merge") == "replace"
            previous = sets.get(set_id)
            if not replace and type(previous) is dict:
                pref = deep_merge(previous, pref)
        sets[set_id] = pref
    return sets


def merge_users(primary: dict[str, Any], secondary: dict[str, Any]) -> dict[str, Any]:
    """Knock's user merge: properties deep-merged with the primary winning on conflict;
    preference sets and channel data shallow-merged (by set id / channel id), the primary's
    entries winning and the secondary's missing ones added."""
    props = deep_merge(
        {k: v for k, v in secondary.items() if k not in SPECIAL_FIELDS},
        {k: v for k, v in primary.items() if k not in SPECIAL_FIELDS},
    )
    for key in ("preferences", "channel_data"):
        merged = {**(secondary.get(key) or {}), **(primary.get(key) or {})}
        if merged:
            props[key] = merged
    return props


class Store:
    """Users, tenants and objects in SQLite (in memory when ``path`` is ``None``)."""

    def __init__(self, path: str | None = None) -> None:
        self._db = sqlite3.connect(
            path or ":memory:", isolation_level=None, check_same_thread=False
        )
        if path:
            # WAL + NORMAL: durable across a process restart, without an fsync per batch.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.memberships = Memberships(self._db)

    def close(self) -> None:
        self._db.close()

    def reset(self) -> None:
        self._db.executescript(
            "DELETE FROM users; DELETE FROM objects; DELETE FROM subscriptions; "
            "DELETE FROM audience_members; DELETE FROM deleted_users;"
        )

    # -- users -------------------------------------------------------------------------------

    def get_user(self, user_id: str) -> tuple[dict[str, Any], str] | None:
        row = self._db.execute(
            "SELECT data, updated_at FROM users WHERE id = ?", (user_id,)
        ).fetchone()
        return None if row is None else (orjson.loads(row[0]), row[1])

    def identify(
        self, user_id: str, patch: dict[str, Any], *, deep: bool
    ) -> tuple[dict[str, Any], str]:
        """Upsert one user; return its new ``(data, updated_at)``."""
        current = self.get_user(user_id)
        data = apply_identify(current[0] if current else {}, patch, deep=deep)
        updated_at = now_iso()
        self._db.execute(_UPSERT_USER, (user_id, orjson.dumps(data), updated_at))
        return data, updated_at

    def identify_many(self, items: list[tuple[str, dict[str, Any]]], *, deep: bool) -> None:
        """Upsert a batch in one transaction: one SELECT for the users that exist, one
        ``executemany``. Items for the same id are applied in order."""
        ids = list({uid: None for uid, _ in items})
        current: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(ids, 900):
            marks = ",".join("?" * len(chunk))
            for uid, blob in self._db.execute(
                f"SELECT id, data FROM users WHERE id IN ({marks})", chunk
            ):
                current[uid] = orjson.loads(blob)
        for uid, patch in items:
            current[uid] = apply_identify(current.get(uid, {}), patch, deep=deep)
        updated_at = now_iso()
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                _UPSERT_USER, [(uid, orjson.dumps(current[uid]), updated_at) for uid in ids]
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def delete_users(self, user_ids: list[str]) -> int:
        """Delete the users with their subscriptions and audience memberships (Knock's delete
        is a hard delete), log every id, and return how many existed."""
        rows = [(u,) for u in user_ids]
        self._db.execute("BEGIN")
        cur = self._db.executemany("DELETE FROM users WHERE id = ?", rows)
        existed = cur.rowcount
        self._forget_user(rows)
        self._db.executemany("INSERT INTO deleted_users (id) VALUES (?)", rows)
        self._db.execute("COMMIT")
        return existed

    def _forget_user(self, rows: list[tuple[str]]) -> None:
        self._db.executemany("DELETE FROM subscriptions WHERE rcollection = '' AND rid = ?", rows)
        self._db.executemany("DELETE FROM audience_members WHERE user_id = ?", rows)

    def deleted_users(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT id FROM deleted_users ORDER BY seq")]

    def merge(self, user_id: str, from_user_id: str) -> tuple[dict[str, Any], str] | None:
        """Merge ``from_user_id`` into ``user_id`` and delete it; ``None`` if either is missing."""
        primary, secondary = self.get_user(user_id), self.get_user(from_user_id)
        if primary is None or secondary is None:
            return None
        data = merge_users(primary[0], secondary[0])
        updated_at = now_iso()
        self._db.execute("BEGIN")
        self._db.execute(_UPSERT_USER, (user_id, orjson.dumps(data), updated_at))
        if from_user_id != user_id:
            self._db.execute("DELETE FROM users WHERE id = ?", (from_user_id,))
            self._forget_user([(from_user_id,)])
        self._db.execute("COMMIT")
        return data, updated_at

    def list_users(
        self, *, after: int | None, before: int | None, limit: int
    ) -> tuple[list[tuple[int, Row]], bool, bool]:
        """One page in creation order: ``(rows as (seq, row), more_before, more_after)``."""
        cols = "SELECT seq, id, data, updated_at FROM users"
        if before is not None and after is None:
            raw = self._db.execute(
                f"{cols} WHERE seq < ? ORDER BY seq DESC LIMIT ?", (before, limit + 1)
            ).fetchall()
            more_before, raw = len(raw) > limit, raw[:limit][::-1]
            more_after = bool(raw) and self._exists("seq > ?", raw[-1][0])
        else:
            raw = self._db.execute(
                f"{cols} WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                (after or 0, before if before is not None else 2**62, limit + 1),
            ).fetchall()
            more_after, raw = len(raw) > limit, raw[:limit]
            more_before = bool(raw) and self._exists("seq < ?", raw[0][0])
        rows = [(seq, (uid, orjson.loads(blob), ts)) for seq, uid, blob, ts in raw]
        return rows, more_before, more_after

    def all_users(self) -> list[Row]:
        return [
            (uid, orjson.loads(blob), ts)
            for uid, blob, ts in self._db.execute(
                "SELECT id, data, updated_at FROM users ORDER BY seq"
            )
        ]

    def count_users(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM users").fetchone()[0])

    def _exists(self, where: str, seq: int) -> bool:
        return (
            self._db.execute(f"SELECT 1 FROM users WHERE {where} LIMIT 1", (seq,)).fetchone()
            is not None
        )

    # -- tenants and objects -------------------------------------------------------------------

    def set_object(
        self, collection: str, object_id: str, patch: dict[str, Any], *, deep: bool
    ) -> tuple[dict[str, Any], str, str]:
        """Upsert an object (tenants live in the ``$tenants`` collection, as in Knock);
        return ``(data, created_at, updated_at)``."""
        row = self._db.execute(
            "SELECT data, created_at FROM objects WHERE collection = ? AND id = ?",
            (collection, object_id),
        ).fetchone()
        now = now_iso()
        stored, created_at = (orjson.loads(row[0]), row[1]) if row else ({}, now)
        data = apply_identify(stored, patch, deep=deep)
        self._db.execute(
            "INSERT INTO objects (collection, id, data, created_at, updated_at) VALUES (?,?,?,?,?) "
            "ON CONFLICT(collection, id) DO UPDATE SET data = excluded.data, "
            "updated_at = excluded.updated_at",
            (collection, object_id, orjson.dumps(data), created_at, now),
        )
        return data, created_at, now

    def set_objects_many(self, items: list[tuple[str, str, dict[str, Any]]], *, deep: bool) -> None:
        """Upsert ``(collection, id, patch)`` items in one transaction, in order."""
        self._db.execute("BEGIN")
        try:
            for collection, object_id, patch in items:
                self.set_object(collection, object_id, patch, deep=deep)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def get_object(self, collection: str, object_id: str) -> tuple[dict[str, Any], str, str] | None:
        """``(data, created_at, updated_at)`` of an object, ``None`` if it does not exist."""
        row = self._db.execute(
            "SELECT data, created_at, updated_at FROM objects WHERE collection = ? AND id = ?",
            (collection, object_id),
        ).fetchone()
        return None if row is None else (orjson.loads(row[0]), row[1], row[2])

    def delete_object(self, collection: str, object_id: str) -> bool:
        """Delete an object and every subscription to or by it; ``False`` if it did not exist."""
        key = (collection, object_id)
        self._db.execute("BEGIN")
        cur = self._db.execute("DELETE FROM objects WHERE collection = ? AND id = ?", key)
        existed = cur.rowcount > 0
        self._db.execute(
            "DELETE FROM subscriptions WHERE (collection = ? AND object_id = ?) "
            "OR (rcollection = ? AND rid = ?)",
            key + key,
        )
        self._db.execute("COMMIT")
        return existed

    def all_objects(self) -> list[tuple[str, str, dict[str, Any], str, str]]:
        """Every object (tenants included) as ``(collection, id, data, created, updated)``."""
        return [
            (c, i, orjson.loads(d), ca, ua)
            for c, i, d, ca, ua in self._db.execute(
                "SELECT collection, id, data, created_at, updated_at FROM objects "
                "ORDER BY collection, created_at, id"
            )
        ]

    def ensure_object(self, collection: str, object_id: str) -> None:
        """Create an empty object if it does not exist (Knock's stub tenant on trigger)."""
        now = now_iso()
        self._db.execute(
            "INSERT OR IGNORE INTO objects (collection, id, data, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (collection, object_id, b"{}", now, now),
        )


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
