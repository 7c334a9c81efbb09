"""`make demo`: from a fresh clone to a running service, offline.

When the repo ships a default backbone and a sample of real photos (`shipped/models/` and
`shipped/cifar10-sample/`, see bench/device/ship_backbone.py and cifar_sample.py), indexes the
sample with the configured model, or else the shipped one, and serves at once. Otherwise makes
synthetic images, takes the configured model or trains the tiny preset on the CPU and packages
it, and indexes those. Either way the images go with their labels into the embedded Qdrant, and
the API and the web page are served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from core.images import IMAGE_EXTENSIONS
from core.package import PackageError, resolve
from core.settings import Settings

log = logging.getLogger(__name__)
DEMO_MODEL = "demo-tiny"
SHIPPED = Path(__file__).resolve().parents[1] / "shipped"
SHIPPED_MODEL = "dino-cifar10"
SYNTHETIC_DATA = Path("var/data/synthetic")
SYNTHETIC_QUERIES = Path("var/data/synthetic-queries")


@dataclass(frozen=True)
class Shipped:
    package: Path  # the shipped default backbone (its CURRENT version)
    sample: Path  # labelled photos to index (class folders)
    queries: Path  # held-out photos to try on the page


def shipped_assets(root: Path = SHIPPED) -> Shipped | None:
    """The shipped backbone and photo sample under `root`, or None unless both are there."""
    try:
        pkg = resolve(root / "models", SHIPPED_MODEL)
    except PackageError:
        return None
    sample, queries = root / "cifar10-sample", root / "cifar10-queries"
    if not sample.is_dir() or not any(
        p.suffix.lower() in IMAGE_EXTENSIONS for p in sample.rglob("*")
    ):
        return None
    return Shipped(pkg, sample, queries)


def shipped_model(settings: Settings, assets: Shipped) -> Settings:
    """The configured model when it resolves, else the shipped package (by path: no copy)."""
    try:
        resolve(settings.models_dir, settings.model)
        return settings
    except PackageError:
        return settings.model_copy(update={"model": str(assets.package)})


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

    print(
        f"no model package {settings.model!r} yet: training the tiny preset on the CPU "
        "(about 3 minutes on 2 cores) …"
    )
    cfg = load_config(config, [f"data.train={data}", *overrides])
    result = train(cfg, run_dir)
    print(f"k-NN top-1 on held-out demo images: {result.knn_start} → {result.knn_end}")
    export_run(run_dir, settings.models_dir, DEMO_MODEL)
    return settings.model_copy(update={"model": DEMO_MODEL})


def run_demo(
    settings: Settings,
    data: Path | None,
    queries: Path | None,
    config: str,
    run_dir: Path,
    overrides: list[str] | None = None,
    serve: bool = True,
    shipped: Path = SHIPPED,
) -> Settings:
    """Prepare everything and (unless serve=False) run the service until interrupted.

    Args:
        settings: service settings (DINOSERVE_*); the model may be missing.
        data: labelled images to index; None: the shipped sample, else synthetic images (made
            if missing).
        queries: held-out images to try on the page; None: as data.
        config: training preset used when no model exists (and nothing is shipped).
        run_dir: where that training run goes.
        overrides: training config overrides (tests use a smaller model).
        shipped: where the shipped backbone and sample are looked for.
    Returns:
        The settings actually served.
    """
    from indexer.run import IndexRequest, index_source

    if serve:  # off the loopback without a key: refuse now, not after indexing (api.access)
        from api.access import check_exposure

        check_exposure(settings, warn=False)
    assets = shipped_assets(shipped)
    if assets is not None:
        data, queries = data or assets.sample, queries or assets.queries
        settings = shipped_model(settings, assets)
        print(f"serving model {settings.model} over {data} (no training needed)")
    else:
        data, queries = data or SYNTHETIC_DATA, queries or SYNTHETIC_QUERIES
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
    uvicorn.run(
        create_app(settings),
        host=settings.serve.host,
        port=settings.serve.port,
        log_level="warning",
    )
    return settings
