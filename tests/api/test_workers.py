"""`DINOSERVE_SERVE__WORKERS=2`: two HTTP processes around one engine process, on the CPU."""

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


@pytest.mark.slow
def test_two_workers_one_engine(micro_package, indexed_store, png_bytes, tmp_path):
    from core.engines import load_engine, preprocess_batch
    from core.images import decode_image
    from core.package import read_meta

    shutil.copytree(indexed_store, tmp_path / "q")
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "DINOSERVE_MODEL": str(micro_package),
           "DINOSERVE_QDRANT_PATH": str(tmp_path / "q"), "DINOSERVE_COLLECTION": "shapes",
           "DINOSERVE_SERVE__WORKERS": "2", "DINOSERVE_SERVE__ACCESS_LOG": "false",
           "DINOSERVE_INFERENCE__INTRA_OP_THREADS": "1"}  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dinoserve", "serve", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_ready(port, proc, log)
        url = f"http://127.0.0.1:{port}"
        images = [png_bytes(i) for i in range(6)]
        engine = load_engine(micro_package, "onnxruntime", ONE_THREAD)
        meta = read_meta(micro_package)
        expected = engine.embed(preprocess_batch(meta, [decode_image(b, 10**8) for b in images]))

        def embed(i: int) -> np.ndarray:
            r = httpx.post(f"{url}/embed", files={"images": ("x.png", images[i % 6])}, timeout=60)
            assert r.status_code == 200, r.text
            return np.asarray(r.json()["embeddings"][0])

        # Many at once, on fresh connections: both workers answer, their batches meet in one
        # engine, and every result is the single-process one.
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
        assert httpx.post(f"{url}/classify?collection=nope",
                          files={"image": ("x.png", images[0])}).status_code == 404  # fmt: skip

        # Without its engine a worker answers 503 in the error shape, never a 500.
        engine_pid = int(re.search(r"engine process (\d+) serving", text).group(1))
        os.kill(engine_pid, signal.SIGKILL)
        time.sleep(0.5)
        r = httpx.post(f"{url}/embed", files={"images": ("x.png", images[0])}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert r.headers["retry-after"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()
    sockets = re.findall(r"serving \S+ on (\S+engine\.sock)", log.read_text())
    assert sockets and not os.path.exists(os.path.dirname(sockets[0]))  # cleaned up


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
