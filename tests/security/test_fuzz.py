"""Schemathesis against the service's own OpenAPI document: every operation, with inputs that
fit the schema and inputs that break it (bounded, deterministic), never answers 5xx, every error
is in the one shape, and every one of schemathesis' checks passes (documented statuses and
response schemas, schema-valid requests accepted, invalid ones refused, `Allow` on 405, …).

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
from schemathesis.specs.openapi.checks import positive_data_acceptance

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


def image_content_only(ctx, response, case) -> bool | None:
    """schemathesis' positive_data_acceptance, less one refusal no schema can prevent: bytes
    that fit the schema (any base64, any file) but are no image are a 422 `invalid_image` (or
    `empty_image`). Any other refusal of schema-valid data fails, as in the original check."""
    if response.status_code == 422 and response.json()["error"]["code"] in (
        "invalid_image",
        "empty_image",
    ):
        return None
    return positive_data_acceptance(ctx, response, case)


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_no_server_errors(api_schema, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case) -> None:
        response = case.call(headers={"X-API-Key": ADMIN})
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        case.validate_response(  # every check of `schemathesis run --checks all`
            response,
            excluded_checks=[positive_data_acceptance],
            additional_checks=[schemathesis.check(image_content_only)],
        )
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body

    run()
