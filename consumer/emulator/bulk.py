"""Bulk operations: accepted at once (``queued``), applied later by one background worker in
submission order, each op one batch of SQLite work.

Contract: the worker runs on the server's event loop, between requests, so a request never
sees an operation half applied; an op is ``queued`` until it is applied in full, then
``completed`` (per-user failures listed in ``error_items``) or ``failed`` (nothing applied).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from .models import BulkKind, BulkOperation, now_iso
from .store import Store
from .web import gc_paused

_NAMES: dict[BulkKind, str] = {
    "identify": "users.identify",
    "delete": "users.delete",
    "tenants": "tenants.set",
    "objects": "objects.set",
}
_ENDPOINTS: dict[BulkKind, str] = {
    "identify": "POST /v1/users/bulk/identify",
    "delete": "POST /v1/users/bulk/delete",
}
#: Knock keeps tenants as objects of this system collection.
_TENANTS = "$tenants"


class BulkOperations:
    """Registry and worker. ``failing_users`` is read when an op is applied, so a fault
    switched on after submission still hits queued ops."""

    def __init__(
        self,
        store: Store,
        *,
        deep: bool,
        failing_users: Callable[[], frozenset[str]],
        refused: Callable[[str, list[str]], None] = lambda endpoint, ids: None,
        delay: Callable[[], float] = lambda: 0.0,
    ) -> None:
        """``refused(endpoint, user_ids)`` hears of the users ``failing_users`` refused."""
        self._store = store
        self._deep = deep
        self._failing_users = failing_users
        self._refused = refused
        self._delay = delay  # seconds an op stays queued (the bulk_ms fault)
        self._due: dict[str, float] = {}
        self._ops: dict[str, BulkOperation] = {}
        self._queue: asyncio.Queue[str] | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle (call on the event loop) ----------------------------------------------------

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bulk-worker")

    async def stop(self) -> None:
        """Apply what is still queued, then stop: an accepted op is not lost on shutdown."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            self._apply(self._queue.get_nowait())

    def reset(self) -> None:
        # Ids left in the queue no longer resolve, so the worker skips them.
        self._ops.clear()
        self._due.clear()

    # -- requests --------------------------------------------------------------------------

    def submit(
        self,
        kind: BulkKind,
        payload: list[Any],
        *,
        doomed: bool,
        collection: str | None = None,
    ) -> BulkOperation:
        assert self._queue is not None, "BulkOperations.start() was not called"
        now = now_iso()
        op = BulkOperation(
            id=str(uuid.uuid4()),
            name=_NAMES[kind],
            kind=kind,
            payload=payload,
            total_rows=len(payload),
            doomed=doomed,
            inserted_at=now,
            updated_at=now,
            collection=collection,
        )
        self._ops[op.id] = op
        delay = self._delay()
        if delay > 0:
            self._due[op.id] = asyncio.get_running_loop().time() + delay
        self._queue.put_nowait(op.id)
        return op

    def get(self, op_id: str) -> BulkOperation | None:
        return self._ops.get(op_id)

    def counts(self) -> dict[str, int]:
        counts = Counter(op.status for op in self._ops.values())
        return {s: counts.get(s, 0) for s in ("queued", "processing", "completed", "failed")}

    # -- worker ----------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            op_id = await self._queue.get()
            due = self._due.pop(op_id, None)
            if due is not None:
                # Ops are queued in order with one delay, so waiting for each in turn is exact.
                await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
            self._apply(op_id)
            # Let requests in between ops even when the queue is long.
            await asyncio.sleep(0)

    def _apply(self, op_id: str) -> None:
        op = self._ops.get(op_id)
        if op is None:
            return
        with gc_paused():
            try:
                self._apply_op(op)
            except sqlite3.Error:
                # Nothing was committed (the batch is one transaction): the op failed whole.
                op.status, op.failed_at = "failed", now_iso()
                op.updated_at, op.payload = op.failed_at, []

    def _apply_op(self, op: BulkOperation) -> None:
        op.started_at = now_iso()
        if op.doomed:
            op.status, op.failed_at = "failed", now_iso()
            op.updated_at = op.failed_at
            op.payload = []
            return
        if op.kind in ("tenants", "objects"):
            # The failing_users fault is about users; objects and tenants always apply.
            collection = op.collection if op.kind == "objects" else _TENANTS
            assert collection is not None
            self._store.set_objects_many(
                [(collection, o["id"], _props(o)) for o in op.payload], deep=self._deep
            )
            self._complete(op, len(op.payload), [])
            return
        failing = self._failing_users()
        if op.kind == "identify":
            ids = [user["id"] for user in op.payload]
            items = [(user["id"], user) for user in op.payload if user["id"] not in failing]
            if items:
                self._store.identify_many(items, deep=self._deep)
        else:
            ids = list(op.payload)
            keep = [uid for uid in ids if uid not in failing]
            if keep:
                self._store.delete_users(keep)
        refused = [uid for uid in ids if uid in failing]
        if refused:
            self._refused(_ENDPOINTS[op.kind], refused)
        self._complete(op, len(ids), refused)

    @staticmethod
    def _complete(op: BulkOperation, rows: int, failed: list[str]) -> None:
        op.error_items = [{"id": uid, "collection": op.collection} for uid in failed]
        op.processed_rows = rows
        op.success_count = rows - len(failed)
        op.status, op.completed_at = "completed", now_iso()
        op.updated_at = op.completed_at
        op.payload = []


def _props(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "id"}
