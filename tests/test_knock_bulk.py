"""What a finished bulk operation says of each id (pure), and the package's public names."""

from __future__ import annotations

import consumer.knock
from consumer.knock.bulk import BulkResult, bulk_result


def op(status: str, **extra: object) -> dict[str, object]:
    return {"id": "op-1", "status": status, **extra}


def test_ids_split_into_applied_failed_and_skipped_in_the_order_sent():
    errors = [{"id": "b", "collection": "users"}, {"id": "c"}, "not an item"]
    result = bulk_result(op("completed", error_items=errors), ["a", "b", "c", "d"], {"c", "d"})
    assert result == BulkResult(
        operation_id="op-1",
        status="completed",
        applied=["a"],
        failed={"b": "bulk operation error item"},
        rate_limited=["c", "d"],  # skipped wins over an error item: Knock never tried it
    )


def test_a_failed_operation_fails_every_id_knock_did_not_skip():
    result = bulk_result(op("failed"), ["a", "b"], {"b"})
    assert result.failed == {"a": "bulk operation failed"}
    assert result.applied == [] and result.rate_limited == ["b"]


def test_an_operation_without_error_items_applied_everything():
    result = bulk_result(op("completed", error_items=None), ["a"], set())
    assert (result.applied, result.failed, result.rate_limited) == (["a"], {}, [])


def test_the_package_exports_exactly_its_public_names():
    assert consumer.knock.__all__ == ["BulkResult", "KnockClient", "MergeResult"]
    for name in consumer.knock.__all__:
        assert getattr(consumer.knock, name).__module__.startswith("consumer.knock.")
