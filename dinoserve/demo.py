"""`make demo`: from a fresh clone to a running service on synthetic images, offline.

Makes the demo images if missing, takes the configured model (the shipped default) or, when
there is none, trains the tiny preset on the CPU and packages it, indexes the images with their
labels into the embedded Qdrant, and serves the API and the web page.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.package import PackageError, resolve
from core.settings import Settings

log = logging.getLogger(__name__)
DEMO_MODEL = "demo-tiny"


def ensure_images(data: Path, queries: Path) -> None:
    """Labelled demo images (indexed) and a few held-out ones (to try on the page)."""
    from training.synthetic import make_synthetic

    if not data.exists():
        print(f"making synthetic demo images in {data} …")
        make_synthetic(data, 200, 32, seed=0)
    if not queries.exists():
        make_synthetic(queries, 5, 32, seed=12345)


def ensure_model(
    settings: Settings, data: Path, config: str, run_dir: Path, overrides: list[str]
) -> Settings:
    """Settings whose model resolves: the configured one, an earlier demo model, or a new one."""
    for name in (settings.model, DEMO_MODEL):
        try:
            resolve(settings.models_dir, name)
            return settings.model_copy(update={"model": name})
        except PackageError:
            continue
    from training.config import load_config
    from training.export import export_run
    from training.train import train

    print(f"no model package {settings.model!r} yet: training the tiny preset on the CPU "
          "(about 3 minutes on 2 cores) …")  # fmt: skip
    cfg = load_config(config, [f"data.train={data}", *overrides])
    result = train(cfg, run_dir)
    print(f"k-NN top-1 on held-out demo images: {result.knn_start} → {result.knn_end}")
    export_run(run_dir, settings.models_dir, DEMO_MODEL)
    return settings.model_copy(update={"model": DEMO_MODEL})


def run_demo(
    settings: Settings,
    data: Path,
    queries: Path,
    config: str,
    run_dir: Path,
    overrides: list[str] | None = None,
    serve: bool = True,
) -> Settings:
    """Prepare everything and (unless serve=False) run the service until interrupted.

    Args:
        settings: service settings (DINOSERVE_*); the model may be missing.
        data: labelled demo images (made if missing).
        queries: held-out images to try on the page (made if missing).
        config: training preset used when no model exists.
        run_dir: where that training run goes.
        overrides: training config overrides (tests use a smaller model).
    Returns:
        The settings actually served.
    """
    from indexer.run import IndexRequest, index_source

    ensure_images(data, queries)
    settings = ensure_model(settings, data, config, run_dir, overrides or [])
    report = index_source(settings, IndexRequest(str(data), labels="dirs"))
    print(report.summary())
    if not serve:
        return settings
    import uvicorn

    from api.main import create_app

    host = settings.serve.host
    url = (
        f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{settings.serve.port}"
    )
    print(f"\n  dinoserve demo: open {url}  (API docs: {url}/docs)")
    print(f"  drop one of the held-out images from {queries}/ on the page; Ctrl-C stops.\n")
    uvicorn.run(create_app(settings), host=settings.serve.host, port=settings.serve.port,
                log_level="warning")  # fmt: skip
    return settings
