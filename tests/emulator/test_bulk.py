"""Bulk identify / delete and bulk operation polling, through the SDK."""

from __future__ import annotations

import httpx
import knockapi
import pytest
from knockapi import Knock

from consumer.emulator import EmulatorServer

from .helpers import wait_bulk


def test_bulk_identify_is_queued_then_completed(knock: Knock, emulator: EmulatorServer) -> None:
    knock.users.update("u1", extra_body={"a": {"x": 1}, "keep": True})
    op = knock.users.bulk.identify(
        users=[
            {"id": "u1", "email": "u1@x.io", "a": {"y": 2}},
            {"id": "u2", "name": "Two", "nested": {"k": [1, 2]}},
            {"id": "u1", "plan": "pro"},
        ]
    )
    assert op.status == "queued"
    assert op.estimated_total_rows == 3
    done = wait_bulk(knock, op.id)
    assert (done.processed_rows, done.success_count, done.error_count, done.error_items) == (
        3,
        3,
        0,
        [],
    )
    assert done.completed_at is not None and done.failed_at is None
    u1 = knock.users.get("u1")
    assert (u1.email, u1.a, u1.keep, u1.plan) == ("u1@x.io", {"x": 1, "y": 2}, True, "pro")  # type: ignore[attr-defined]
    assert knock.users.get("u2").nested == {"k": [1, 2]}  # type: ignore[attr-defined]
    stats = emulator.stats(by_user=True)
    assert stats["identify_entries"] == 4
    assert stats["identify_entries_by_user"] == {"u1": 3, "u2": 1}
    assert stats["users"] == 2
    assert stats["bulk_operations"] == {"queued": 0, "processing": 0, "completed": 1, "failed": 0}
    assert "identify_entries_by_user" not in emulator.stats()


def test_bulk_operations_apply_in_submission_order(knock: Knock, emulator: EmulatorServer) -> None:
    ops = [knock.users.bulk.identify(users=[{"id": "u1", "n": n}]) for n in range(20)]
    for op in ops:
        wait_bulk(knock, op.id)
    assert emulator.users()[0]["n"] == 19


def test_bulk_identify_of_1001_users_is_422(knock: Knock, emulator: EmulatorServer) -> None:
    with pytest.raises(knockapi.UnprocessableEntityError) as err:
        knock.users.bulk.identify(users=[{"id": f"u{n}"} for n in range(1001)])
    assert err.value.body["errors"] == [  # type: ignore[index]
        {"field": "users", "message": "must contain at most 1000 items", "type": "length"}
    ]
    op = knock.users.bulk.identify(users=[{"id": f"u{n}"} for n in range(1000)])
    wait_bulk(knock, op.id)
    assert emulator.stats()["users"] == 1000


def test_bulk_identify_rejects_a_bad_item_whole(
    http: httpx.Client, emulator: EmulatorServer
) -> None:
    response = http.post("/v1/users/bulk/identify", json={"users": [{"id": "ok"}, {"id": "a/b"}]})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "users[1].id"
    response = http.post(
        "/v1/users/bulk/identify", json={"users": [{"id": "ok"}, {"id": "b", "email": 1}]}
    )
    assert response.json()["errors"][0]["field"] == "users[1].email"
    assert http.post("/v1/users/bulk/identify", json={"users": []}).status_code == 422
    assert emulator.stats()["bulk_operations"]["queued"] == 0


def test_bulk_delete(knock: Knock, emulator: EmulatorServer) -> None:
    wait_bulk(knock, knock.users.bulk.identify(users=[{"id": "a"}, {"id": "b"}, {"id": "c"}]).id)
    op = knock.users.bulk.delete(user_ids=["a", "c", "never-existed"])
    assert op.status == "queued"
    done = wait_bulk(knock, op.id)
    assert (done.processed_rows, done.success_count) == (3, 3)
    assert [u["id"] for u in emulator.users()] == ["b"]


def test_unknown_bulk_operation_is_404(knock: Knock) -> None:
    with pytest.raises(knockapi.NotFoundError):
        knock.bulk_operations.get("123e4567-e89b-12d3-a456-426614174000")


def test_failing_users_are_listed_and_not_applied(knock: Knock, emulator: EmulatorServer) -> None:
    emulator.set_faults(failing_users=["bad1", "bad2"])
    op = knock.users.bulk.identify(users=[{"id": "good"}, {"id": "bad1"}, {"id": "bad2"}])
    done = wait_bulk(knock, op.id)
    assert done.status == "completed"
    assert (done.processed_rows, done.success_count, done.error_count) == (3, 1, 2)
    assert [(e.id, e.collection) for e in done.error_items or []] == [
        ("bad1", None),
        ("bad2", None),
    ]
    assert [u["id"] for u in emulator.users()] == ["good"]
    delete = wait_bulk(knock, knock.users.bulk.delete(user_ids=["good", "bad1"]).id)
    assert (delete.success_count, delete.error_count) == (1, 1)


def test_fail_bulk_operations_fails_the_next_n(knock: Knock, emulator: EmulatorServer) -> None:
    emulator.set_faults(fail_bulk_operations=2)
    failed = [knock.users.bulk.identify(users=[{"id": f"u{n}"}]) for n in range(2)]
    ok = knock.users.bulk.identify(users=[{"id": "u9"}])
    for op in failed:
        done = wait_bulk(knock, op.id, "failed")
        assert done.failed_at is not None and done.completed_at is None
        assert done.success_count == 0
    wait_bulk(knock, ok.id)
    assert [u["id"] for u in emulator.users()] == ["u9"]
    assert emulator.stats()["bulk_operations"] == {
        "queued": 0,
        "processing": 0,
        "completed": 1,
        "failed": 2,
    }
    assert emulator.set_faults()["fail_bulk_operations"] == 0


def test_applied_deletes_are_logged_in_order(knock: Knock, emulator: EmulatorServer) -> None:
    emulator.set_faults(failing_users=["bad"])
    wait_bulk(knock, knock.users.bulk.identify(users=[{"id": "a"}, {"id": "b"}]).id)
    knock.users.delete("b")
    wait_bulk(knock, knock.users.bulk.delete(user_ids=["a", "bad", "never"]).id)
    assert emulator.deleted() == ["b", "a", "never"]
    assert emulator.stats()["deleted_users"] == 3


def test_bulk_ms_keeps_an_operation_queued_then_applies_it(
    knock: Knock, emulator: EmulatorServer
) -> None:
    emulator.set_faults(bulk_ms=1500)
    op = knock.users.bulk.identify(users=[{"id": "slow", "name": "Slow"}])
    # Queued until the delay has passed (1.5 s, far more than one request takes): nothing applied.
    assert knock.bulk_operations.get(op.id).status == "queued"
    assert emulator.users() == []
    done = wait_bulk(knock, op.id)
    assert done.success_count == 1
    assert [u["id"] for u in emulator.users()] == ["slow"]
    assert emulator.set_faults()["bulk_ms"] == 1500
