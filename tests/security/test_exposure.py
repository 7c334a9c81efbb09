"""Secure by default off the loopback (api/access.py): without DINOSERVE_API_KEY the service
starts off the loopback only with DINOSERVE_ALLOW_ANONYMOUS (logged as a warning), writes never
go anonymous there unless it says `all`, and on the loopback nothing changed."""

from __future__ import annotations

import logging
import os

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.access import OpenToTheNetwork, anonymous_writes, check_exposure, is_loopback
from api.main import create_app
from core import store
from core.settings import Settings
from dinoserve.cli import main
from tests.api.test_collections import files, noise_png
from tests.security.test_uploads import error

ADD = "/collections/shapes/images"
OFF = {"host": "0.0.0.0", "max_wait_ms": 2.0}  # every interface, as the container binds


@pytest.fixture(autouse=True)
def _no_dinoserve_environment(monkeypatch):
    """Each test states its keys and host (a developer's DINOSERVE_API_KEY must not leak in)."""
    for var in list(os.environ):
        if var.startswith("DINOSERVE_"):
            monkeypatch.delenv(var)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "[::1]", "localhost",
             "LOCALHOST", "app.localhost", "::ffff:127.0.0.1"],
)  # fmt: skip
def test_loopback_addresses(host):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "", "10.0.0.5", "192.168.1.2", "fe80::1%eth0", "::ffff:10.0.0.1",
             "example.com", "localhost.example.com", "128.0.0.1"],
)  # fmt: skip
def test_other_addresses_are_off_the_loopback(host):
    assert not is_loopback(host)


# --- the start check ---------------------------------------------------------------------------

MESSAGE = "without DINOSERVE_API_KEY"


@pytest.mark.parametrize("argv", [["--host", "0.0.0.0"], ["--host", "::"], ["--host", "10.1.2.3"]])
def test_serve_off_the_loopback_without_a_key_is_refused_in_one_line(argv, capsys):
    assert main(["serve", *argv, "--port", "8123"]) == 2
    out, err = capsys.readouterr()
    assert "serving" not in out  # refused before the model is even looked at
    (line,) = err.strip().splitlines()
    assert line.startswith("dinoserve: error: refusing to serve on ")
    assert MESSAGE in line and "DINOSERVE_ALLOW_ANONYMOUS=read" in line and "=all" in line


def test_the_containers_host_setting_is_checked_too(monkeypatch, capsys):
    monkeypatch.setenv("DINOSERVE_SERVE__HOST", "0.0.0.0")  # the image's ENV, no --host
    assert main(["serve"]) == 2
    assert MESSAGE in capsys.readouterr().err


def test_the_app_factory_refuses_too():
    with pytest.raises(OpenToTheNetwork, match=MESSAGE):
        create_app(Settings(serve={"host": "0.0.0.0"}))
    with pytest.raises(OpenToTheNetwork):  # a write key alone does not guard reads
        create_app(Settings(serve={"host": "0.0.0.0"}, write_api_key="w"))


def test_the_demo_refuses_before_it_indexes(tmp_path):
    from dinoserve.demo import run_demo

    settings = Settings(serve={"host": "0.0.0.0"}, models_dir=tmp_path / "models")
    data = tmp_path / "data"
    with pytest.raises(OpenToTheNetwork, match=MESSAGE):
        run_demo(settings, data, None, "configs/tiny.yaml", tmp_path / "run", shipped=tmp_path)
    assert not data.exists() and not (tmp_path / "run").exists()  # nothing made or trained


def test_bad_or_contradictory_opt_outs_stop_the_start(monkeypatch, capsys):
    monkeypatch.setenv("DINOSERVE_ALLOW_ANONYMOUS", "yes")
    assert main(["serve"]) == 2
    assert "DINOSERVE_ALLOW_ANONYMOUS=yes (allow_anonymous): Input should be" in (
        capsys.readouterr().err
    )
    with pytest.raises(ValidationError, match="does nothing while DINOSERVE_API_KEY is set"):
        Settings(api_key="k", allow_anonymous="read")


def _serve_in_process(monkeypatch, micro_package, tmp_path) -> dict:
    """`dinoserve serve` with uvicorn.run replaced by a start of the app in this process (its
    lifespan, then the probe the image's health check calls): no port is bound."""
    import uvicorn

    seen: dict = {}

    def run(app, **options):
        with TestClient(app) as c:
            seen.update(options, healthz=c.get("/healthz").status_code)

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setenv("DINOSERVE_MODEL", str(micro_package))
    monkeypatch.setenv("DINOSERVE_QDRANT_PATH", str(tmp_path / "q"))
    monkeypatch.setenv("DINOSERVE_BLOB_DIR", str(tmp_path / "blobs"))
    return seen


@pytest.mark.parametrize("mode", ["read", "all"])
def test_with_the_opt_out_it_starts_and_says_so(mode, micro_package, tmp_path, monkeypatch, caplog):
    seen = _serve_in_process(monkeypatch, micro_package, tmp_path)
    monkeypatch.setenv("DINOSERVE_ALLOW_ANONYMOUS", mode)
    with caplog.at_level(logging.WARNING, logger="api.access"):
        assert main(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert (seen["host"], seen["healthz"]) == ("0.0.0.0", 200)
    (record,) = [r for r in caplog.records if r.name == "api.access"]  # once, not per check
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert f"DINOSERVE_ALLOW_ANONYMOUS={mode}" in text and "0.0.0.0:8123" in text
    assert ("delete" in text) is (mode == "all")


def test_with_a_key_it_starts_off_the_loopback_quietly(
    micro_package, tmp_path, monkeypatch, caplog
):
    seen = _serve_in_process(monkeypatch, micro_package, tmp_path)
    monkeypatch.setenv("DINOSERVE_API_KEY", "k")
    with caplog.at_level(logging.WARNING, logger="api.access"):
        assert main(["serve", "--host", "0.0.0.0"]) == 0
    assert seen["healthz"] == 200  # the probes need no key
    assert not [r for r in caplog.records if r.name == "api.access"]


def test_on_the_loopback_without_keys_nothing_changed(micro_package, tmp_path, monkeypatch, caplog):
    seen = _serve_in_process(monkeypatch, micro_package, tmp_path)
    with caplog.at_level(logging.WARNING, logger="api.access"):
        assert main(["serve"]) == 0
    assert (seen["host"], seen["healthz"]) == ("127.0.0.1", 200)
    assert not [r for r in caplog.records if r.name == "api.access"]


def test_worker_processes_learn_the_bind_address(monkeypatch):
    """With serve.workers, uvicorn's workers build the app from the environment: --host goes
    there, so their check and their write policy see the real bind address."""
    import uvicorn

    from api import engine_server

    seen = {}
    monkeypatch.setattr(engine_server, "start_engine_process", lambda s: (None, "sock"))
    monkeypatch.setattr(engine_server, "stop_engine_process", lambda proc, path: None)
    monkeypatch.setattr(
        uvicorn, "run", lambda *a, **kw: seen.update(host=os.environ["DINOSERVE_SERVE__HOST"])
    )
    settings = Settings(api_key="k")
    engine_server.serve_with_workers(settings, {"host": "0.0.0.0", "port": 8000})
    assert seen["host"] == "0.0.0.0" and "DINOSERVE_SERVE__HOST" not in os.environ


def test_the_policy_table():
    def writes(**values) -> bool:
        settings = Settings(**values)
        check_exposure(settings, warn=False)  # every case here may start
        return anonymous_writes(settings)

    assert writes()  # loopback, no key: open, as always
    assert not writes(allow_anonymous="read")  # asked for read-only: on the loopback too
    assert writes(serve=OFF, allow_anonymous="all")
    assert not writes(serve=OFF, allow_anonymous="read")
    assert not writes(serve=OFF, api_key="k")
    assert not writes(serve=OFF, allow_anonymous="all", write_api_key="w")  # a key: needed


# --- requests ----------------------------------------------------------------------------------


def _delete_url(pid: str = store.point_id("nothing")) -> str:
    return f"{ADD}/{pid}"


def test_off_the_loopback_with_keys_anonymous_writes_are_401_wrong_keys_403(make_client, tmp_path):
    c = make_client(
        serve=OFF,
        blob_dir=tmp_path / "blobs",
        api_key="read",
        write_api_key="write",
        admin_api_key="admin",
    )
    img = files(noise_png(70))
    error(c.post(ADD, files=img), 401, "unauthorized")
    error(c.delete(_delete_url()), 401, "unauthorized")
    error(c.patch(_delete_url(), json={"label": "x"}), 401, "unauthorized")
    for key in ("nope", "read"):  # a wrong key, and the read key (may not write)
        error(c.post(ADD, files=img, headers={"X-API-Key": key}), 403, "forbidden")
        error(c.delete(_delete_url(), headers={"X-API-Key": key}), 403, "forbidden")
    assert not (tmp_path / "blobs").exists() or not list((tmp_path / "blobs").glob("??/*"))
    assert c.get("/healthz").status_code == 200  # the probes stay open
    ok = c.post(ADD, files=img, headers={"Authorization": "Bearer write"})
    assert ok.status_code == 200, ok.text
    gone = c.delete(_delete_url(ok.json()["ids"][0]), headers={"X-API-Key": "admin"})
    assert gone.status_code == 200 and gone.json()["deleted"] is True


def test_read_only_opt_out_serves_reads_and_refuses_writes(make_client, tmp_path, png_bytes):
    c = make_client(serve=OFF, blob_dir=tmp_path / "blobs", allow_anonymous="read")
    r = c.post("/classify", files={"image": ("q.png", png_bytes(0))})
    assert r.status_code == 200, r.text
    assert c.get("/collections/shapes").status_code == 200
    error(c.post(ADD, files=files(noise_png(71))), 403, "writes_disabled")
    error(c.delete(_delete_url()), 403, "writes_disabled")
    error(c.post("/collections/new"), 403, "writes_disabled")
    error(c.get("/admin/refresh"), 403, "admin_disabled")  # never anonymous
    assert c.get("/collections/shapes").json()["points"] == 120
    # With a write key beside it, that key writes and callers without one still only read.
    w = make_client(
        serve=OFF, blob_dir=tmp_path / "b2", allow_anonymous="read", write_api_key="write"
    )
    error(w.post(ADD, files=files(noise_png(72))), 401, "unauthorized")
    error(w.post(ADD, files=files(noise_png(72)), headers={"X-API-Key": "no"}), 403, "forbidden")
    ok = w.post(ADD, files=files(noise_png(72)), headers={"X-API-Key": "write"})
    assert ok.status_code == 200, ok.text


def test_all_opt_out_is_the_old_open_service(make_client, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="api.access"):
        c = make_client(serve=OFF, blob_dir=tmp_path / "blobs", allow_anonymous="all")
    assert any("add, relabel and delete" in r.getMessage() for r in caplog.records)
    ok = c.post(ADD, files=files(noise_png(73)))
    assert ok.status_code == 200, ok.text
    assert c.delete(_delete_url(ok.json()["ids"][0])).status_code == 200


def test_on_the_loopback_without_keys_writes_stay_open(make_client, tmp_path):
    c = make_client(blob_dir=tmp_path / "blobs")  # serve.host: 127.0.0.1, the default
    ok = c.post(ADD, files=files(noise_png(74)))
    assert ok.status_code == 200, ok.text
    error(c.delete(_delete_url()), 404, "unknown_image")  # reached: no key asked for
    assert c.delete(_delete_url(ok.json()["ids"][0])).status_code == 200
