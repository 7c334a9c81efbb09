"""`make demo`: from a fresh clone to a running service, offline.

When the repo ships a default backbone and a sample of real photos (`shipped/models/` and
`shipped/cifar10-sample/`, see bench/device/ship_backbone.py and cifar_sample.py), indexes the
sample with the configured model, or else the shipped one, and serves at once. Otherwise makes
labelled demo images with their true object masks: the demo scenes (training/scenes.py, shapes on
cluttered backgrounds) when a demo backbone ships (`shipped/models/demo-scenes`, trained by this
project on the CPU, installed into the registry), else the 32-px shapes, for which it trains the
tiny preset on the CPU unless a model is configured. Either way the images go with
their labels into the embedded Qdrant, and the API and the web page are served.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core.images import IMAGE_EXTENSIONS
from core.package import CURRENT, PackageError, install, resolve
from core.settings import Settings

log = logging.getLogger(__name__)
DEMO_MODEL = "demo-tiny"  # what the demo trains when nothing ships
SCENES_MODEL = "demo-scenes"  # the shipped demo backbone
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


def ensure_images(data: Path, queries: Path, scenes: bool = False) -> None:
    """Labelled demo images (indexed) and 5 held-out ones per class (to try on the page), each
    folder with its object masks beside it (`<folder>-masks`).

    Args:
        data: the labelled images' folder.
        queries: the held-out images' folder.
        scenes: the 64-px demo scenes of the shipped demo backbone (training/scenes.py; seeds
            that its training never used); else the 32-px shapes the tiny preset learns in
            minutes (training/synthetic.py).
    """
    from training.scenes import SIZE, make_scenes, masks_dir_for
    from training.synthetic import make_synthetic

    side = SIZE if scenes else 32
    for folder, n, seed in ((data, 200, 0), (queries, 5, 12345)):
        if folder.exists() and _is_default(folder) and not _made_as(folder, side):
            # An earlier demo's images (other kind, or no masks): the demo's own folder, remade.
            print(f"replacing the earlier demo images in {folder} …")
            shutil.rmtree(folder)
            shutil.rmtree(masks_dir_for(folder), ignore_errors=True)
        if not folder.exists():
            print(f"making demo images in {folder} (masks in {masks_dir_for(folder)}) …")
            if scenes:
                make_scenes(folder, n, seed=seed)
            else:
                make_synthetic(folder, n, side, seed=seed, masks=True)


def _made_as(folder: Path, side: int) -> bool:
    """The folder holds demo images of this side with their masks beside them."""
    from training.scenes import masks_dir_for

    first = next(iter(sorted(folder.rglob("*.png"))), None)
    if first is None or not masks_dir_for(folder).is_dir():
        return False
    with Image.open(first) as im:
        return im.size == (side, side)


def _is_default(folder: Path) -> bool:
    return folder.resolve() in (SYNTHETIC_DATA.resolve(), SYNTHETIC_QUERIES.resolve())


def shipped_demo_backbone(root: Path = SHIPPED) -> Path | None:
    """The shipped demo backbone's package (its CURRENT version), or None."""
    try:
        return resolve(root / "models", SCENES_MODEL)
    except PackageError:
        return None


def ensure_model(
    settings: Settings,
    data: Path,
    config: str,
    run_dir: Path,
    overrides: list[str],
    shipped: Path = SHIPPED,
) -> Settings:
    """Settings whose model resolves: the configured one (DINOSERVE_MODEL, else the registry's
    most recently activated) unless that is only the tiny model an earlier demo trained; else
    the shipped demo backbone (installed into the registry once); else an earlier demo model;
    else a new one, trained on the CPU."""
    if settings.model != DEMO_MODEL:
        try:
            resolve(settings.models_dir, settings.model)
            return settings
        except PackageError:
            pass
    package = shipped_demo_backbone(shipped)
    if package is not None:
        # A refresh (`make train`) may have moved demo-scenes past the shipped version since:
        # CURRENT is only set when the registry has no demo-scenes yet.
        fresh = not (settings.models_dir / SCENES_MODEL / CURRENT).is_file()
        install(package, settings.models_dir, SCENES_MODEL, activate=fresh)
        print(f"serving the shipped demo backbone {SCENES_MODEL} (no training needed)")
        return settings.model_copy(update={"model": SCENES_MODEL})
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
        ensure_images(data, queries, scenes=shipped_demo_backbone(shipped) is not None)
        settings = ensure_model(settings, data, config, run_dir, overrides or [], shipped)
    report = index_source(settings, IndexRequest(str(data), labels="dirs"))
    print(report.summary())
    if settings.samples_dir is None and queries.is_dir():  # the page's row of examples
        settings = settings.model_copy(update={"samples_dir": queries})
    if not serve:
        return settings
    import uvicorn

    from api.main import create_app

    host = settings.serve.host
    url = (
        f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{settings.serve.port}"
    )
    print(f"\n  dinoserve demo: open {url}  (API docs: {url}/docs)")
    print(f"  click one of the examples (held-out images from {queries}/) or drop your own")
    print("  image on the page; Ctrl-C stops.\n")
    uvicorn.run(
        create_app(settings),
        host=settings.serve.host,
        port=settings.serve.port,
        log_level="warning",
    )
    return settings
