"""Which product files one `POST /classify` runs code in (issue 26: at most 10).

    .venv/bin/python -m bench.request_path [--package DIR] [--requests 1] [--query Q] [--api-key K]

The app is started in this process as the service starts it (`api.main.create_app`, its
lifespan entered by FastAPI's TestClient): the tiny preset at random init, packaged by the real
export path (or `--package`), served by ONNX Runtime, on a fresh embedded store holding one
collection of labelled points. A profile hook is set in every thread before the app starts, but
records only while one request is in flight: after `--requests` untraced warm-up requests (lazy
first-use work is not the path), it notes the file of every Python function called during one
more `/classify` in any thread (the event loop, the decode and store worker threads, the engine
thread) and keeps those under the product packages. Prints them and their count.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("api", "core", "indexer", "refresh", "discovery", "evaluation", "training", "dinoserve")
COLLECTION = "images"


class CallFiles:
    """The files of the Python functions called in any thread while `recording` is set.

    `install` must come before the threads to watch are started: a profile hook reaches the
    threads started after it (`threading.setprofile`) and the calling one, not those running.
    """

    def __init__(self) -> None:
        self.recording = False
        self.files: set[str] = set()

    def _hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if self.recording and event == "call":  # a Python function (c_call: a C one)
            self.files.add(frame.f_code.co_filename)

    @contextmanager
    def install(self) -> Iterator[CallFiles]:
        threading.setprofile(self._hook)
        sys.setprofile(self._hook)
        try:
            yield self
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]

    @contextmanager
    def record(self) -> Iterator[None]:
        self.files.clear()
        self.recording = True
        try:
            yield
        finally:
            self.recording = False

    def product(self) -> list[str]:
        """The recorded files under the product packages, relative to the checkout, sorted."""
        out = set()
        for name in self.files:
            path = Path(name)
            if path.is_absolute() and path.is_relative_to(ROOT):
                rel = path.relative_to(ROOT)
                if rel.parts[0] in PRODUCT:
                    out.add(rel.as_posix())
        return sorted(out)


def tiny_package(models: Path) -> Path:
    """The tiny preset's ViT at random init (seed 0), packaged by the real export path."""
    import torch

    from core.vit import build_vit
    from training.config import load_config
    from training.export import config_meta, write_package

    meta = config_meta(load_config(ROOT / "configs" / "tiny.yaml"))
    meta["provenance"] = {"source": "random init (bench/request_path.py)"}
    torch.manual_seed(0)
    vit = build_vit(meta["arch"], meta["timm_kwargs"])
    return write_package(vit, meta, models, "tiny")


def labelled_store(settings: Any, points: int = 200, labels: int = 5) -> None:
    """Collection `images` of `points` random unit vectors with `labels` labels, for the served
    model's version, in the settings' embedded store (closed again: the app opens it)."""
    from core import package, store

    meta = package.read_meta(package.resolve(settings.models_dir, settings.model))
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(points, meta.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    uris = [f"file:///bench/{i}.png" for i in range(points)]
    payloads = [{"uri": u, "label": f"class{i % labels}"} for i, u in enumerate(uris)]
    db = store.open_store(settings)
    try:
        physical = db.ensure_collection(COLLECTION, meta.version, meta.embed_dim)
        db.point_alias(COLLECTION, physical)
        db.upsert(physical, [store.point_id(u) for u in uris], vectors, payloads)
    finally:
        db.close()


def png(seed: int = 0, size: int = 64) -> bytes:
    """A random RGB image as PNG bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def classify_files(
    package_dir: Path, workdir: Path, warmup: int = 1, query: str = "", **overrides: Any
) -> list[str]:
    """The product files one `/classify?{query}` runs code in (after `warmup` untraced
    requests), on an app serving `package_dir` over a fresh store under `workdir`, with
    settings `overrides` (e.g. api_key)."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from core.settings import InferenceSettings, Settings

    settings = Settings(
        model=str(package_dir),
        qdrant_path=workdir / "qdrant",
        collection=COLLECTION,
        inference=InferenceSettings(intra_op_threads=1, inter_op_threads=1),
        **overrides,
    )
    labelled_store(settings)
    files = {"image": ("q.png", png(), "image/png")}
    key = overrides.get("api_key")
    headers = {"X-API-Key": key} if key else {}
    url = f"/classify?{query}" if query else "/classify"
    calls = CallFiles()
    with calls.install(), TestClient(create_app(settings)) as client:
        for _ in range(warmup):
            client.post(url, files=files, headers=headers).raise_for_status()
        with calls.record():
            response = client.post(url, files=files, headers=headers)
        response.raise_for_status()
    return calls.product()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--package", type=Path, help="a model package (default: the tiny preset)")
    ap.add_argument("--requests", type=int, default=1, help="untraced warm-up requests")
    ap.add_argument("--query", default="", help="a query string, e.g. collection=images&k=5")
    ap.add_argument("--api-key", help="serve with DINOSERVE_API_KEY set (and send it)")
    args = ap.parse_args()
    overrides = {"api_key": args.api_key} if args.api_key else {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        package_dir = args.package or tiny_package(work / "models")
        files = classify_files(package_dir, work, args.requests, args.query, **overrides)
    url = f"/classify?{args.query}" if args.query else "/classify"
    print(f"POST {url} ran code in {len(files)} product files:")
    for f in files:
        print(f"  {f}")


if __name__ == "__main__":
    main()
