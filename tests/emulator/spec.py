"""Knock's OpenAPI description, read at test time from ``shared/`` beside the checkout (never
copied into the project), and the checks that validate the emulator's answers against it.

With OAS 3.0 semantics (``nullable``) and format checks (``date-time``, ``uuid``, ``uri``);
``$ref``s resolve against the spec's own ``components`` by embedding them in the schema
being checked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest


def _spec_path() -> Path:
    if "KNOCK_OPENAPI" in os.environ:
        return Path(os.environ["KNOCK_OPENAPI"])
    # shared/ sits beside the checkout, whose depth differs (a clone, a worktree).
    for parent in Path(__file__).parents:
        if (candidate := parent / "shared" / "knock" / "openapi.yml").is_file():
            return candidate
    return Path(__file__).parents[3] / "shared" / "knock" / "openapi.yml"


SPEC_PATH = _spec_path()


def load_spec() -> dict[str, Any]:
    """The spec as a dict; skips the calling test when the file is absent."""
    if not SPEC_PATH.is_file():
        pytest.skip(f"Knock's OpenAPI spec not found at {SPEC_PATH}")
    yaml = pytest.importorskip("yaml")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC_PATH.open() as fh:
        loaded: dict[str, Any] = yaml.load(fh, Loader=loader)
    return loaded


def check(spec: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """Validate ``response`` against the schema ``path``/``method`` declares for its status."""
    validator_module = pytest.importorskip("openapi_schema_validator")
    declared = spec["paths"][path][method.lower()]["responses"]
    assert str(response.status_code) in declared, (
        f"{method} {path}: {response.status_code} not declared"
    )
    content = declared[str(response.status_code)].get("content")
    if content is None:
        assert response.content == b""
        return
    schema = {**content["application/json"]["schema"], "components": spec["components"]}
    validator = validator_module.OAS30Validator(
        schema, format_checker=validator_module.OAS30Validator.FORMAT_CHECKER
    )
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(response.json())
    ]
    assert not errors, f"{method} {path}: {errors}"


def check_error(spec: dict[str, Any], response: httpx.Response) -> None:
    validator_module = pytest.importorskip("openapi_schema_validator")
    schema = spec["components"]["schemas"]["AuthenticationError"]
    validator_module.validate(response.json(), schema, cls=validator_module.OAS30Validator)


def request_errors(spec: dict[str, Any], method: str, path: str, body: Any) -> list[str]:
    """What the request schema of ``method path`` finds wrong with ``body`` (empty: valid)."""
    validator_module = pytest.importorskip("openapi_schema_validator")
    declared = spec["paths"][path][method.lower()]["requestBody"]["content"]
    schema = {**declared["application/json"]["schema"], "components": spec["components"]}
    validator = validator_module.OAS30Validator(
        schema, format_checker=validator_module.OAS30Validator.FORMAT_CHECKER
    )
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
