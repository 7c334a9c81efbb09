"""`dinoserve index`: settings → model package → engine → Indexer over a source. The same job
runs in the CLI's process, or inside a running service that owns the embedded store (its admin
API, api/index_jobs.py), with the same request and the same report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from core import store
from core.engines import load_engine, preprocess_batch
from core.package import read_meta, resolve
from core.settings import Settings
from indexer.pipeline import Embedder, Indexer, IndexReport, Limits
from indexer.sources import Item, check_items, list_source, parse_shard


@dataclass(frozen=True)
class IndexRequest:
    """What to index where (the CLI's flags; the admin API's parameters).

    Args:
        source: directory or tar/tar.gz (ignored with a manifest).
        collection: logical name (default DINOSERVE_COLLECTION).
        labels: "dirs" (first-level sub-folder) or "none".
        manifest: CSV/JSONL with path,label,… columns.
        shard: "i/N" to index only this worker's share.
        prune: delete points whose source is gone.
        failures: JSONL file for skipped images (default var/index/<collection>.failures.jsonl).
    """

    source: str = ""
    collection: str | None = None
    labels: str = "none"
    manifest: str | None = None
    batch: int | None = None
    workers: int | None = None
    shard: str | None = None
    prune: bool = False
    failures: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def embedder_from_settings(settings: Settings) -> Embedder:
    """The served model (DINOSERVE_MODEL under DINOSERVE_MODELS_DIR) as an indexer Embedder."""
    package_dir = resolve(settings.models_dir, settings.model)
    meta = read_meta(package_dir)
    engine = load_engine(package_dir, settings.engine, settings.inference)
    if settings.indexer.device_decode != "cpu":
        from core.device_images import use_device_decode
        from indexer.device import DeviceEmbedder

        if use_device_decode(settings.indexer.device_decode, engine):
            return DeviceEmbedder(engine, meta, tensor_decode=True)
    return Embedder(
        engine.embed,
        lambda img: preprocess_batch(meta, [img])[0],
        engine.model_version,
        engine.dim,
    )


def run_index(
    settings: Settings,
    db: store.Store,
    embedder: Embedder,
    req: IndexRequest,
    progress: bool = True,
    on_batch: Callable[[IndexReport, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    items: list[Item] | None = None,
) -> IndexReport:
    """Index `req` into `db` with `embedder` (see Indexer.run for the callbacks).

    Args:
        items: the source's listing, when the caller already made it (`list_items`).
    """
    name = store.check_name(req.collection or settings.collection)
    spec = parse_shard(req.shard)
    if items is None:
        items = list_items(req)
    indexer = Indexer(
        db,
        embedder,
        name,
        batch=req.batch or settings.indexer.batch,
        workers=req.workers or settings.indexer.workers,
        limits=Limits(settings.max_pixels, settings.indexer.max_image_bytes),
        blob_dir=settings.blob_dir,
    )
    suffix = f".shard{spec[0]}of{spec[1]}" if spec[1] > 1 else ""
    fail_path = (
        Path(req.failures)
        if req.failures
        else settings.index_dir / f"{name}{suffix}.failures.jsonl"
    )
    return indexer.run(items, spec, req.prune, fail_path, progress, on_batch, should_stop)


def list_items(req: IndexRequest) -> list[Item]:
    """The images of the request's source or manifest.

    Raises:
        SourceError: no source, nothing to index, or `--labels dirs` on a flat folder.
    """
    items = list_source(req.source, req.labels, Path(req.manifest) if req.manifest else None)
    check_items(items, req.manifest or req.source, req.labels, req.prune)
    return items


def index_source(settings: Settings, req: IndexRequest, progress: bool = True) -> IndexReport:
    """Index in this process: open the store the settings name and load the served model.

    Raises:
        StoreUnusable: the embedded store is owned by another process (e.g. a running service).
    """
    parse_shard(req.shard)  # bad input fails before the model loads
    items = list_items(req)
    db = store.open_store(settings)
    try:
        embedder = embedder_from_settings(settings)
        return run_index(settings, db, embedder, req, progress, items=items)
    finally:
        db.close()
