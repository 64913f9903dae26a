"""Subscriptions (recipient → object) and audience members (user → audience) in SQLite.

Kept apart from :mod:`.store` (users and objects) but on the same connection, so a user or
object delete can drop its rows in the same transaction. Same threading contract as the
store: one thread at a time.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from .models import now_iso

#: A recipient as stored: ``("", user_id)`` for a user, ``(collection, id)`` for an object.
RecipientKey = tuple[str, str]


class Memberships:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    # -- subscriptions -------------------------------------------------------------------

    def subscribe(
        self,
        collection: str,
        object_id: str,
        recipients: list[RecipientKey],
        properties: dict[str, Any] | None,
    ) -> None:
        """Upsert one subscription per recipient; an existing one gets the new properties."""
        now = now_iso()
        blob = orjson.dumps(properties)
        self._db.executemany(
            "INSERT INTO subscriptions (collection, object_id, rcollection, rid, properties, "
            "inserted_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(collection, object_id, rcollection, rid) DO UPDATE SET "
            "properties = excluded.properties, updated_at = excluded.updated_at",
            [(collection, object_id, rc, rid, blob, now, now) for rc, rid in recipients],
        )

    def subscriptions(
        self, collection: str | None = None, object_id: str | None = None
    ) -> list[tuple[str, str, RecipientKey, dict[str, Any] | None, str, str]]:
        """``(collection, object_id, recipient, properties, inserted_at, updated_at)`` in
        subscription order, of one object or of all."""
        sql = (
            "SELECT collection, object_id, rcollection, rid, properties, inserted_at, updated_at "
            "FROM subscriptions"
        )
        args: tuple[str, ...] = ()
        if collection is not None and object_id is not None:
            sql += " WHERE collection = ? AND object_id = ?"
            args = (collection, object_id)
        return [
            (c, o, (rc, rid), orjson.loads(p), ia, ua)
            for c, o, rc, rid, p, ia, ua in self._db.execute(sql + " ORDER BY seq", args)
        ]

    def unsubscribe(self, collection: str, object_id: str, recipients: list[RecipientKey]) -> None:
        self._db.executemany(
            "DELETE FROM subscriptions WHERE collection = ? AND object_id = ? "
            "AND rcollection = ? AND rid = ?",
            [(collection, object_id, rc, rid) for rc, rid in recipients],
        )

    # -- audiences -------------------------------------------------------------------------

    def add_members(self, audience: str, members: list[tuple[str, str | None]]) -> None:
        """Add ``(user_id, tenant)`` members; one already there keeps its ``added_at``."""
        now = now_iso()
        self._db.executemany(
            "INSERT OR IGNORE INTO audience_members (audience, user_id, tenant, added_at) "
            "VALUES (?, ?, ?, ?)",
            [(audience, uid, tenant or "", now) for uid, tenant in members],
        )

    def remove_members(self, audience: str, members: list[tuple[str, str | None]]) -> None:
        self._db.executemany(
            "DELETE FROM audience_members WHERE audience = ? AND user_id = ? AND tenant = ?",
            [(audience, uid, tenant or "") for uid, tenant in members],
        )

    def members(self, audience: str | None = None) -> list[tuple[str, str, str | None, str]]:
        """``(audience, user_id, tenant, added_at)`` in the order they were added."""
        sql = "SELECT audience, user_id, tenant, added_at FROM audience_members"
        args: tuple[str, ...] = ()
        if audience is not None:
            sql += " WHERE audience = ?"
            args = (audience,)
        return [
            (a, uid, tenant or None, added)
            for a, uid, tenant, added in self._db.execute(sql + " ORDER BY seq", args)
        ]
