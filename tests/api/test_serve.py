"""`dinoserve serve`: settings and model checked before the port is bound; a real server."""

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from dinoserve.cli import main


def test_bad_settings_or_missing_model_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DINOSERVE_SERVE__PORT", "70000")
    assert main(["serve"]) == 2
    assert "DINOSERVE_SERVE__PORT=70000 (serve.port): Input should be" in capsys.readouterr().err
    monkeypatch.delenv("DINOSERVE_SERVE__PORT")
    monkeypatch.setenv("DINOSERVE_MAX_PIXELS", "lots")
    assert main(["serve"]) == 2
    assert "DINOSERVE_MAX_PIXELS=lots (max_pixels)" in capsys.readouterr().err
    monkeypatch.delenv("DINOSERVE_MAX_PIXELS")
    assert main(["serve", "--port", "0"]) == 2
    assert "port" in capsys.readouterr().err
    monkeypatch.setenv("DINOSERVE_MODELS_DIR", str(tmp_path))
    assert main(["serve"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_flags_override_the_bind_address(micro_package, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    monkeypatch.setenv("DINOSERVE_MODEL", str(micro_package))
    monkeypatch.setenv("DINOSERVE_API_KEY", "k")  # off the loopback a key is required
    assert main(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 8123)
    assert seen["app"].title == "dinoserve"
    assert (seen["timeout_keep_alive"], seen["timeout_graceful_shutdown"]) == (5, 20)
    assert seen["access_log"] is True


def test_connection_timeouts_and_access_log_come_from_settings(micro_package, monkeypatch, capsys):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    monkeypatch.setenv("DINOSERVE_MODEL", str(micro_package))
    monkeypatch.setenv("DINOSERVE_SERVE__KEEP_ALIVE_S", "75")
    monkeypatch.setenv("DINOSERVE_SERVE__GRACEFUL_SHUTDOWN_S", "0")
    monkeypatch.setenv("DINOSERVE_SERVE__ACCESS_LOG", "false")
    assert main(["serve"]) == 0
    assert (seen["timeout_keep_alive"], seen["timeout_graceful_shutdown"]) == (75, 0)
    assert seen["access_log"] is False
    monkeypatch.setenv("DINOSERVE_SERVE__KEEP_ALIVE_S", "0")
    assert main(["serve"]) == 2
    assert "keep_alive_s" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_real_server_answers(micro_package, tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "DINOSERVE_MODEL": str(micro_package),
        "DINOSERVE_QDRANT_PATH": str(tmp_path / "q"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "dinoserve", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.3)
        assert r.status_code == 200 and r.json()["status"] == "ready"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
