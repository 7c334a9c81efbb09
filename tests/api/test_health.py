import json
import re
import uuid

from fastapi.testclient import TestClient

from api.main import create_app
from core import package
from core.engine_choice import record_path
from core.package import read_meta

ORT_FP32 = {"engine": "onnxruntime", "engine_variant": "fp32", "engine_setting": "onnxruntime"}


def test_health_ready_and_model(client, micro_package):
    assert client.get("/healthz").json() == {"status": "ok", **ORT_FP32}
    ready = client.get("/readyz")
    meta = read_meta(micro_package)
    assert ready.json() == {"status": "ready", "model_version": meta.version, "qdrant": "ok"}
    model = client.get("/model").json()
    assert model["version"] == meta.version and model["embed_dim"] == meta.embed_dim
    assert {k: model[k] for k in ORT_FP32} == ORT_FP32


def test_auto_reports_the_engine_it_resolved_to(make_client, micro_package, tmp_path):
    pkg = package.install(micro_package, tmp_path / "models", "micro")
    chosen = {"engine": "onnxruntime", "variant": "int8", "images_per_s": {"1": 10.0}}
    record = {
        "model": "micro",
        "version": pkg.name,
        "date": "2026-12-06",
        "cpu": "x",
        "cores": 2,
        "threads": 1,
        "batches": [1],
        "candidates": [chosen],
        "chosen": chosen,
    }
    record_path(pkg).write_text(json.dumps(record))
    c = make_client(model=str(pkg), engine="auto")
    want = {"engine": "onnxruntime", "engine_variant": "int8", "engine_setting": "auto"}
    assert c.get("/healthz").json() == {"status": "ok", **want}
    model = c.get("/model").json()
    assert {k: model[k] for k in want} == want
    text = c.get("/metrics").text
    assert 'engine="onnxruntime"' in text and 'engine_setting="auto"' in text
    assert 'engine_variant="int8"' in text


def test_metrics_by_route_template(client, png_bytes):
    client.post("/embed", files=[("images", ("a.png", png_bytes(0), "image/png"))] * 3)
    client.get(f"/images/{uuid.uuid4()}")
    client.get("/no/such/route")
    text = client.get("/metrics").text
    assert 'dinoserve_requests_total{method="POST",route="/embed",status="200"}' in text
    assert 'route="/images/{image_id}",status="404"' in text
    assert 'route="unmatched",status="404"' in text
    assert 'dinoserve_request_seconds_bucket{le="0.005",method="POST",route="/embed"}' in text
    assert 'dinoserve_batch_size_count{op="embed"}' in text
    assert 'dinoserve_queue_depth{op="embed"} 0.0' in text
    assert "dinoserve_model_info{" in text


def test_each_app_has_its_own_registry(make_settings):
    with TestClient(create_app(make_settings())) as a:
        a.get("/healthz")
        a.get("/healthz")
        with TestClient(create_app(make_settings())) as b:
            b.get("/healthz")
            text = b.get("/metrics").text
    assert 'route="/healthz",status="200"} 1.0' in text


def test_not_ready_without_qdrant(make_client):
    # Nothing listens on port 9 (discard) of this machine: connections are refused.
    c = make_client(qdrant_url="http://127.0.0.1:9", serve={"store_attempts": 1})
    r = c.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"]["code"] == "not_ready"
    assert c.get("/healthz").status_code == 200  # alive, just not ready


def test_docs_openapi_and_page(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    # Every asset of the docs page comes from the service itself: it works offline.
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and all(a.startswith("/docs-assets/") for a in assets), assets
    for asset in assets:
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 1000, asset
    assert "https://" not in docs.text
    spec = client.get("/openapi.json").json()
    assert {"/embed", "/classify", "/search", "/attention", "/images/{image_id}"} <= set(
        spec["paths"]
    )
    embed_body = spec["paths"]["/embed"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(embed_body)
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
