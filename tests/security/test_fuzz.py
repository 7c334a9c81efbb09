"""Schemathesis against the service's own OpenAPI document: every operation, with inputs that
fit the schema and inputs that break it (bounded, deterministic), never answers 5xx, every error
is in the one shape, and every one of schemathesis' checks passes (documented statuses and
response schemas, schema-valid requests accepted, invalid ones refused, `Allow` on 405, …).

Cases are drawn from schemathesis' strategies and run by hypothesis directly (its pytest plugin
does not load under this pytest), one test per operation and generation mode. The hooks of
schemathesis.toml (tests/security/schemathesis_hooks.py) draw real image files for the image
fields, as they do for the same run against a live service, from the repository root:

    export DINOSERVE_ADMIN_API_KEY=…   # any running service, started with an admin key
    dinoserve serve &
    schemathesis run http://127.0.0.1:8000/openapi.json --checks all \
        --phases examples,coverage,fuzzing -H "X-API-Key: $DINOSERVE_ADMIN_API_KEY"

(schemathesis.toml names the hooks; elsewhere, SCHEMATHESIS_HOOKS=tests/security/
schemathesis_hooks.py does.) Both leave out the admin POSTs, which change the service.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core.hooks import load_from_path
from schemathesis.python import asgi

from api.body_docs import IMAGE_BASE64
from api.main import create_app
from core.images import decode_image
from core.settings import Settings
from tests.security import schemathesis_hooks
from tests.security.conftest import live_settings

# As `schemathesis run` loads them (once per file, whether here or from schemathesis.toml).
load_from_path(str(Path(schemathesis_hooks.__file__).resolve()))

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
        micro_package,
        indexed_store,
        tmp_path_factory,
        admin_api_key=ADMIN,
        max_batch_images=4,
        serve={"max_wait_ms": 0.0},
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings_))
    yield schema
    asgi.shutdown_lifespans()


ADD = ("POST", "/collections/{name}/images")
PER_IMAGE = re.compile(
    r"give either (label or labels|uri or uris)|\d+ (label|uri)s for \d+ images|"
    r"uri names one image"
)
CLUSTERS = ("POST", "/collections/{name}/clusters")
K_RANGE = re.compile(r"k_min \d+ is above k_max \d+")  # the other rule JSON Schema cannot state


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_no_server_errors(api_schema, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        response = case.call(headers={"X-API-Key": ADMIN})
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        if (
            (method, path) == ADD
            and mode == GenerationMode.POSITIVE
            and response.status_code == 422
        ):
            # The one rule JSON Schema cannot state: per-image lists (`labels`, `uris`) hold one
            # entry per image, and `uri` names one image. Only that refusal passes here.
            message = response.json()["error"]["message"]
            assert PER_IMAGE.search(message), (case.as_curl_command(), message)
            return
        positive = mode == GenerationMode.POSITIVE
        if (method, path) == CLUSTERS and positive and response.status_code == 422:
            message = response.json()["error"]["message"]
            assert K_RANGE.search(message), (case.as_curl_command(), message)
            return
        case.validate_response(response)  # every check of `schemathesis run --checks all`
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body

    run()


def test_the_hooks_draw_images_the_service_reads() -> None:
    """The hooks' image strategies give files that decode, of varied sizes, in both spellings,
    under the format name the schema uses."""
    assert schemathesis_hooks.IMAGE_BASE64 == IMAGE_BASE64
    sizes = set()

    @given(
        data=schemathesis_hooks.image_files(), text=schemathesis_hooks.image_files(as_base64=True)
    )
    @settings(max_examples=30, deadline=None, derandomize=True, database=None)
    def run(data: bytes, text: str) -> None:
        img = decode_image(data, max_pixels=10_000)
        sizes.add(img.size)
        decoded = base64.b64decode(text.partition(",")[2] if text.startswith("data:") else text)
        assert decode_image(decoded, max_pixels=10_000).mode == "RGB"

    run()
    assert len(sizes) > 5
