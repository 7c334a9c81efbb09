"""API fixtures: a Qdrant store indexed by the real micro package, and apps built on it.

The store is built once per session in a folder; apps open a copy of it (the embedded store
locks its folder, and tests that write must not disturb the others).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.engine_choice import load_engine
from core.engines import Engine
from core.settings import InferenceSettings, Settings
from indexer.ingest import IngestOptions
from indexer.pipeline import Indexer
from indexer.sources import Item, list_source
from tests.stores import copy_store_dir, edge_store

ONE_THREAD = InferenceSettings(intra_op_threads=1, inter_op_threads=1)


def engine_for(package_dir: Path, version: str | None = None) -> Engine:
    """The real ONNX Runtime engine of a package, on one thread (optionally reporting another
    version, to fake a collection built by an older model)."""
    engine = load_engine(package_dir, "onnxruntime", ONE_THREAD)
    if version is not None:
        engine.meta = engine.meta.model_copy(update={"version": version})
    return engine


def index_into(path: Path, engine: Engine, collection: str, items: list[Item]) -> None:
    client = edge_store(path)
    try:
        Indexer(client, engine, collection, IngestOptions(batch=64, workers=1)).run(
            items, progress=False
        )
    finally:
        client.close()


@pytest.fixture(scope="session")
def indexed_store(micro_package, synthetic_dir, tmp_path_factory) -> Path:
    """Collections: `shapes` (120 labelled), `nolabels` (20 without labels) and `stale`
    (built under another model version)."""
    path = tmp_path_factory.mktemp("qdrant")
    engine = engine_for(micro_package)
    items = list_source(synthetic_dir, "dirs")
    index_into(path, engine, "shapes", items)
    index_into(path, engine, "nolabels", list_source(synthetic_dir)[:20])
    index_into(path, engine_for(micro_package, "19990101-000000-old"), "stale", items[:10])
    return path


def settings_on_copy(package: Path, indexed: Path, copy: Path, **overrides) -> Settings:
    """Settings for an app on `copy`, a fresh copy of the indexed store, with overrides."""
    copy_store_dir(indexed, copy)
    values = dict(
        model=str(package),
        qdrant_path=copy,
        collection="shapes",
        inference=ONE_THREAD,
        serve={"max_wait_ms": 2.0},
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_settings(micro_package, indexed_store, tmp_path) -> Callable[..., Settings]:
    """Settings for an app on a private copy of the indexed store, with overrides."""

    def make(**overrides) -> Settings:
        copy = tmp_path / f"qdrant{len(list(tmp_path.glob('qdrant*')))}"
        return settings_on_copy(micro_package, indexed_store, copy, **overrides)

    return make


@pytest.fixture
def make_client(make_settings) -> Iterator[Callable[..., TestClient]]:
    """Started apps (lifespan entered) with settings overrides; all closed at the end."""
    opened: list[TestClient] = []

    def make(raise_server_exceptions: bool = True, **overrides) -> TestClient:
        c = TestClient(
            create_app(make_settings(**overrides)), raise_server_exceptions=raise_server_exceptions
        )
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client(micro_package, indexed_store, tmp_path_factory) -> Iterator[TestClient]:
    """One started app per test module, on its own copy of the indexed store (read-only use)."""
    copy = tmp_path_factory.mktemp("qdrant_ro") / "q"
    settings = settings_on_copy(micro_package, indexed_store, copy)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def png_bytes(synthetic_dir) -> Callable[[int], bytes]:
    """The bytes of the i-th synthetic image (sorted)."""
    files = sorted(synthetic_dir.rglob("*.png"))
    return lambda i=0: files[i].read_bytes()


def unit_norms(vectors: list[list[float]]) -> np.ndarray:
    return np.linalg.norm(np.asarray(vectors), axis=1)


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory) -> Path:
    """The tiny preset's ViT at random init (seeded), exported as a package: not trained, but
    its features already carry the synthetic classes' colours."""
    import torch

    from core.vit import build_vit
    from tests.conftest import TINY_PRESET
    from training.config import load_config
    from training.export import config_meta, write_package

    meta = config_meta(load_config(TINY_PRESET))
    meta["provenance"] = {"source": "random init (tests)"}
    torch.manual_seed(0)
    vit = build_vit(meta["arch"], meta["timm_kwargs"])
    return write_package(vit, meta, tmp_path_factory.mktemp("tiny_models"), "tiny")
