"""Refresh fixtures: a registry with two real micro versions and a store indexed by the first.

`v1` is the micro run's export (CURRENT); `v2` the same network with perturbed weights, exported
without moving CURRENT, as `make train` does. Each test gets its own copy of the registry, of
60 images and of a Qdrant folder indexed with v1: `shapes` (labelled), `more` (unlabelled) and
`stale` (built by another version, which a refresh must leave alone).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from api.main import create_app
from core.package import WEIGHTS, read_meta
from core.settings import Settings
from indexer.ingest import IngestOptions
from indexer.pipeline import Indexer
from indexer.sources import list_source
from tests.api.conftest import ONE_THREAD, engine_for
from tests.api.test_browser import _free_port
from tests.servers import start_uvicorn, stop_uvicorn
from tests.stores import edge_store

ADMIN_KEY = "refresh-admin-key"


@pytest.fixture(scope="session")
def two_versions(micro_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry folder with model `micro`: v1 (CURRENT) and v2 (newer, not activated)."""
    import torch
    from safetensors.torch import load_file

    from core.vit import build_vit
    from training.export import export_run, write_package

    models = tmp_path_factory.mktemp("registry")
    v1 = export_run(micro_run, models, "micro")
    meta = read_meta(v1)
    vit = build_vit(meta.arch, meta.timm_kwargs)
    vit.load_state_dict(load_file(v1 / WEIGHTS))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    while time.strftime("%Y%m%d-%H%M%S", time.gmtime()) <= v1.name[:15]:
        time.sleep(0.1)  # versions sort by time: v2 must be a later second
    fields = ("arch", "timm_kwargs", "mean", "std", "crop_pct")
    source = {k: getattr(meta, k) for k in fields} | {"provenance": {"source": "tests"}}
    v2 = write_package(vit, source, models, "micro", activate=False)
    assert v1.name < v2.name
    return models


@dataclass
class Env:
    models_dir: Path
    qdrant_path: Path
    images: Path  # the indexed images (a private copy: tests may delete some)
    holdout: list[Path]  # images of the same classes that are not indexed
    v1: str
    v2: str

    def settings(self, **overrides) -> Settings:
        values = dict(
            models_dir=self.models_dir,
            model="micro",
            qdrant_path=self.qdrant_path,
            collection="shapes",
            inference=ONE_THREAD,
            serve={"max_wait_ms": 2.0},
            refresh={"batch": 8, "workers": 1},
        )
        values.update(overrides)
        return Settings(**values)

    @property
    def name_dir(self) -> Path:
        return self.models_dir / "micro"


def index_v1(client, env: Env) -> None:
    """`shapes` (60 labelled), `more` (20 unlabelled) by v1; `stale` (10) by an old version."""
    v1 = engine_for(env.name_dir / env.v1)
    items = list_source(env.images, "dirs")
    Indexer(client, v1, "shapes", IngestOptions(batch=32, workers=1)).run(items, progress=False)
    Indexer(client, v1, "more", IngestOptions(batch=32, workers=1)).run(
        list_source(env.images)[:20], progress=False
    )
    old = engine_for(env.name_dir / env.v1, "19990101-000000-old")
    Indexer(client, old, "stale", IngestOptions(batch=32, workers=1)).run(
        items[:10], progress=False
    )


@pytest.fixture
def env(two_versions: Path, synthetic_dir: Path, tmp_path: Path) -> Env:
    models = tmp_path / "models"
    shutil.copytree(two_versions, models)
    v1, v2 = sorted(p.name for p in (models / "micro").iterdir() if p.is_dir())
    images, holdout = tmp_path / "images", []
    for i, src in enumerate(sorted(synthetic_dir.rglob("*.png"))):
        if i % 2:
            holdout.append(src)
            continue
        dst = images / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    e = Env(models, tmp_path / "qdrant", images, holdout, v1, v2)
    client = edge_store(e.qdrant_path)
    try:
        index_v1(client, e)
    finally:
        client.close()
    return e


@pytest.fixture
def start_server() -> Iterator[Callable[[Settings], str]]:
    """Start a real uvicorn service in a thread (its port replaces the settings'); stopped at
    the end of the test. Returns its base URL."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(settings: Settings) -> str:
        port = _free_port()
        serve = settings.serve.model_copy(update={"port": port})
        running.append(
            start_uvicorn(create_app(settings.model_copy(update={"serve": serve})), port)
        )
        return f"http://127.0.0.1:{port}"

    yield start
    stop_uvicorn(running, timeout=30)


@pytest.fixture
def cli_env(env: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    """DINOSERVE_* for the CLI; the configured port has no service behind it."""
    for key, value in {
        "MODELS_DIR": env.models_dir,
        "MODEL": "micro",
        "QDRANT_PATH": env.qdrant_path,
        "COLLECTION": "shapes",
        "SERVE__PORT": _free_port(),
        "INFERENCE__INTRA_OP_THREADS": 1,
        "REFRESH__BATCH": 16,
    }.items():
        monkeypatch.setenv(f"DINOSERVE_{key}", str(value))
    return env
