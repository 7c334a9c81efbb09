"""Schemathesis against the service's own OpenAPI document: every operation, with inputs that
fit the schema and inputs that break it (bounded, deterministic), never answers 5xx, and every
error is in the one shape.

Cases are drawn from schemathesis' strategies and run by hypothesis directly (its pytest plugin
does not load under this pytest), one test per operation and generation mode.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.python import asgi

from api.main import create_app
from core.settings import Settings
from tests.security.conftest import live_settings

ADMIN = "fuzz-admin"
EXAMPLES = 25
# Every documented operation (the schema does not depend on the settings), less the admin ones
# that change the registry (tests/refresh covers them); the reading admin ones are fuzzed.
DOC = create_app(Settings()).openapi()["paths"]
OPERATIONS = sorted(
    (method.upper(), path, mode)
    for path, item in DOC.items()
    for method, op in item.items()
    if not (method == "post" and path.startswith("/admin/"))
    # negative cases need something to break: parameters or a body
    for mode in GenerationMode
    if mode == GenerationMode.POSITIVE or op.get("parameters") or op.get("requestBody")
)


@pytest.fixture(scope="module")
def api_schema(micro_package, indexed_store, tmp_path_factory) -> Iterator:
    """The schema of an app on a private store copy (its lifespan runs once, in schemathesis'
    event-loop thread, and is stopped at the end)."""
    settings_ = live_settings(
        micro_package, indexed_store, tmp_path_factory, admin_api_key=ADMIN, max_batch_images=4,
        serve={"max_wait_ms": 0.0},
    )  # fmt: skip
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings_))
    yield schema
    asgi.shutdown_lifespans()


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_no_server_errors(api_schema, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case) -> None:
        response = case.call(headers={"X-API-Key": ADMIN})
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body

    run()
