"""Every answer of every emulated route conforms to Knock's schema, on requests generated from
that schema by schemathesis (a fixed, small number of examples, derandomized, so a run takes
seconds and repeats itself).

An answer is checked against the schema its operation declares for that status (an
undeclared status, such as a 404 for a generated id nobody set or a 422, is not checked:
the spec declares almost none). What a write stores is then read back and checked too: the
finding that started this test was a tenant ``PUT`` whose answer and later ``GET`` echoed
``settings`` that Knock's ``Tenant`` schema forbids.
"""

from __future__ import annotations

from typing import Any

import pytest

from consumer.emulator import EmulatorServer
from consumer.emulator.app import V1_ROUTES

from .helpers import wait_until

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

#: Examples per operation: more where a body is generated, since that is where answers vary.
EXAMPLES = {"with_body": 25, "without": 8}
SEED = 0


@pytest.fixture(scope="module")
def knock_schema(spec: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_dict(spec)


def _read_backs(method: str, path: str, case: Any, answer: Any) -> list[tuple[str, dict[str, str]]]:
    """``(GET path, path parameters)`` that show what a successful write stored."""
    params = dict(case.path_parameters or {})
    body = case.body if isinstance(case.body, dict) else {}
    if method == "PUT" or path == "/v1/users/{user_id}/merge":
        return [(path.removesuffix("/merge"), params)]
    if path.endswith(("/members", "/subscriptions")):
        return [(path, params)]
    bulk = {
        "/v1/users/bulk/identify": ("users", "/v1/users/{user_id}", "user_id"),
        "/v1/tenants/bulk/set": ("tenants", "/v1/tenants/{id}", "id"),
        "/v1/objects/{collection}/bulk/set": ("objects", "/v1/objects/{collection}/{id}", "id"),
    }
    reads = []
    if isinstance(answer, dict) and answer.get("__typename") == "BulkOperation":
        reads.append(("/v1/bulk_operations/{id}", {"id": answer["id"]}))
    if path in bulk:
        key, read, name = bulk[path]
        for item in body.get(key, []):
            item_id = item if isinstance(item, str) else item["id"]
            reads.append((read, {**params, name: item_id}))
    return reads


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _, _ in V1_ROUTES])
def test_every_answer_conforms_to_knocks_schema(
    spec: dict[str, Any], knock_schema: Any, emulator: EmulatorServer, method: str, path: str
) -> None:
    from schemathesis.specs.openapi.checks import response_schema_conformance

    checks = [response_schema_conformance]
    auth = {"authorization": f"Bearer {emulator.api_key}"}
    operation = knock_schema[path][method]
    has_body = "requestBody" in spec["paths"][path][method.lower()]
    examples = EXAMPLES["with_body" if has_body else "without"]
    answered: list[int] = []

    def call_and_check(case: Any) -> Any:
        response = case.call(base_url=emulator.url, headers=auth)
        case.validate_response(response, checks=checks)
        return response

    @hypothesis.settings(
        max_examples=examples,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        # No shrinking: a failure is reported as found, so a failing run stays short too.
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.seed(SEED)
    @hypothesis.given(case=operation.as_strategy())
    def run(case: Any) -> None:
        response = call_and_check(case)
        answered.append(response.status_code)
        if not 200 <= response.status_code < 300 or response.status_code == 204:
            return
        answer = response.json() if response.content else None
        for read, params in _read_backs(method, path, case, answer):
            get = knock_schema[read]["GET"]
            if read == "/v1/bulk_operations/{id}":
                # Applied between requests; what it stored is read only once it is done.
                status = get.Case(path_parameters=params)
                wait_until(
                    lambda status=status: (
                        status.call(base_url=emulator.url, headers=auth).json()["status"]
                        in ("completed", "failed")
                    )
                )
            call_and_check(get.Case(path_parameters=params))

    run()
    assert len(answered) == examples
