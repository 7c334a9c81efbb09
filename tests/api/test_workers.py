"""`DINOSERVE_SERVE__WORKERS=2`: two HTTP processes around one engine process, on the CPU."""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from api.engine_wire import pack, portable
from core.store import StoreError, UnknownCollection
from tests.api.conftest import ONE_THREAD
from tests.api.test_serve import _free_port


def test_exceptions_cross_the_wire():
    import pickle

    for exc in (StoreError("down"), UnknownCollection("nope"), ValueError("bad")):
        back = portable(exc)
        assert type(back) is type(exc) and str(back) == str(exc)
        assert pickle.loads(pack(back)[8:]).args == exc.args

    class Odd(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}{b}")

    assert isinstance(portable(Odd(1, 2)), RuntimeError)  # cannot be rebuilt: sent as text


def _wait_ready(port: int, proc: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.3)


@contextlib.contextmanager
def _serving(micro_package, indexed_store, tmp_path, **env_extra):
    """A real `dinoserve serve` with two workers on a copy of the indexed store; yields its URL
    and log, and checks that SIGTERM stops it cleanly (exit 0, engine socket removed)."""
    shutil.copytree(indexed_store, tmp_path / "q")
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "DINOSERVE_MODEL": str(micro_package),
        "DINOSERVE_QDRANT_PATH": str(tmp_path / "q"),
        "DINOSERVE_COLLECTION": "shapes",
        "DINOSERVE_SERVE__WORKERS": "2",
        "DINOSERVE_SERVE__ACCESS_LOG": "false",
        "DINOSERVE_INFERENCE__INTRA_OP_THREADS": "1",
        **env_extra,
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dinoserve", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(port, proc, log)
        deadline = time.monotonic() + 120  # one worker answers /readyz; wait for the other too
        while log.read_text().count("Application startup complete") < 2:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()
    sockets = re.findall(r"serving \S+ on (\S+engine\.sock)", log.read_text())
    assert sockets and not os.path.exists(os.path.dirname(sockets[0]))  # cleaned up


@pytest.mark.slow
def test_engine_process_decodes_uploads(micro_package, indexed_store, png_bytes, tmp_path):
    import io

    from PIL import Image

    from core.engine_choice import load_engine
    from core.engines import preprocess_batch
    from core.images import decode_image
    from core.package import read_meta

    def jpeg(i: int) -> bytes:
        buf = io.BytesIO()
        Image.open(io.BytesIO(png_bytes(i))).convert("RGB").save(buf, "JPEG", quality=95)
        return buf.getvalue()

    images = [jpeg(i) for i in range(4)] + [png_bytes(4)]  # JPEGs (tensor decode) and a PNG
    engine = load_engine(micro_package, "torch", ONE_THREAD)
    meta = read_meta(micro_package)
    expected = engine.embed(preprocess_batch(meta, [decode_image(b, 10**8) for b in images]))
    with _serving(
        micro_package,
        indexed_store,
        tmp_path,
        DINOSERVE_ENGINE="torch",
        DINOSERVE_SERVE__DEVICE_DECODE="device",
    ) as (url, _):
        health = httpx.get(f"{url}/healthz", timeout=10).json()  # the engine process's engine
        assert (health["engine"], health["engine_variant"]) == ("torch", "fp32")

        def embed(i: int) -> np.ndarray:
            r = httpx.post(f"{url}/embed", files={"images": ("x", images[i % 5])}, timeout=60)
            assert r.status_code == 200, r.text
            return np.asarray(r.json()["embeddings"][0])

        with ThreadPoolExecutor(10) as pool:
            got = list(pool.map(embed, range(20)))
        for i, vec in enumerate(got):
            assert float(vec @ expected[i % 5]) >= 0.999  # torch's bicubic vs PIL's
        files = [("images", ("a", images[0])), ("images", ("b", b"\xff\xd8\xff junk"))]
        r = httpx.post(f"{url}/embed", files=files, timeout=60)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_image"
        assert r.json()["error"]["message"].startswith("image 1:")
        r = httpx.post(f"{url}/classify", files={"image": ("x", images[1])}, timeout=60)
        assert r.status_code == 200 and r.json()["label"], r.text


@pytest.mark.slow
def test_two_workers_one_engine(micro_package, indexed_store, png_bytes, tmp_path):
    from core.engine_choice import load_engine
    from core.engines import preprocess_batch
    from core.images import decode_image
    from core.package import read_meta

    images = [png_bytes(i) for i in range(6)]
    engine = load_engine(micro_package, "onnxruntime", ONE_THREAD)
    meta = read_meta(micro_package)
    expected = engine.embed(preprocess_batch(meta, [decode_image(b, 10**8) for b in images]))
    with _serving(micro_package, indexed_store, tmp_path) as (url, log):

        def embed(i: int) -> np.ndarray:
            r = httpx.post(f"{url}/embed", files={"images": ("x.png", images[i % 6])}, timeout=60)
            assert r.status_code == 200, r.text
            return np.asarray(r.json()["embeddings"][0])

        # Many at once, on fresh connections (the kernel spreads them over the two workers):
        # their batches meet in one engine, and every result is the single-process one.
        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(embed, range(36)))
        for i, vec in enumerate(got):
            np.testing.assert_allclose(vec, expected[i % 6], atol=1e-5)
        text = log.read_text()
        assert len(set(re.findall(r"Started server process \[(\d+)\]", text))) == 2, text

        # The embedded store lives in the engine process: classify and search go through it.
        r = httpx.post(f"{url}/classify", files={"image": ("x.png", images[0])}, timeout=60)
        assert r.status_code == 200 and r.json()["label"], r.text
        for bad in (
            httpx.post(f"{url}/embed", files={"images": ("x.png", b"not an image")}),
            httpx.post(f"{url}/classify?collection=nope", files={"image": ("x.png", images[0])}),
            httpx.post(f"{url}/admin/rollback"),
        ):
            assert 400 <= bad.status_code < 500 and set(bad.json()["error"]) == {"code", "message"}
        assert (
            httpx.post(
                f"{url}/classify?collection=nope", files={"image": ("x.png", images[0])}
            ).status_code
            == 404
        )

        # Without its engine a worker answers 503 in the error shape, never a 500.
        engine_pid = int(re.search(r"engine process (\d+) serving", text).group(1))
        os.kill(engine_pid, signal.SIGKILL)
        time.sleep(0.5)
        r = httpx.post(f"{url}/embed", files={"images": ("x.png", images[0])}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert r.headers["retry-after"]


def test_workers_setting_is_checked(monkeypatch):
    from core.settings import Settings

    assert Settings().serve.workers == 1
    monkeypatch.setenv("DINOSERVE_SERVE__WORKERS", "0")
    with pytest.raises(ValueError, match="workers"):
        Settings()
    monkeypatch.setenv("DINOSERVE_SERVE__WORKERS", "2")
    monkeypatch.setenv("DINOSERVE_REFRESH__WATCH_INTERVAL_S", "5")
    with pytest.raises(ValueError, match="workers=1"):
        Settings()


def test_rows_cross_the_wire_exactly(micro_package, png_bytes):
    from api.engine_wire import decode_rows, encode_rows
    from core.engines import preprocess_batch
    from core.images import decode_image
    from core.package import read_meta

    meta = read_meta(micro_package)
    batch = preprocess_batch(meta, [decode_image(png_bytes(i), 10**8) for i in range(3)])
    kind, rows = encode_rows(batch, meta.mean, meta.std)
    assert kind == "u8" and rows.dtype == np.uint8 and rows.nbytes * 4 == batch.nbytes
    assert np.array_equal(decode_rows((kind, rows), meta.mean, meta.std), batch)  # bit for bit
    noise = np.random.default_rng(0).standard_normal(batch.shape).astype(np.float32)
    kind, rows = encode_rows(noise, meta.mean, meta.std)  # not from pixels: sent as it is
    assert kind == "f32" and np.array_equal(decode_rows((kind, rows), meta.mean, meta.std), noise)
