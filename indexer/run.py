"""`dinoserve index`: settings → model package → engine → Indexer over a source. The same job
runs in the CLI's process, or inside a running service that owns the embedded store (its admin
API, api/index_jobs.py), with the same request and the same report."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core import store
from core.engine_choice import load_engine
from core.engines import Engine
from core.package import resolve
from core.settings import Settings
from indexer.ingest import IngestOptions, Limits
from indexer.pipeline import Indexer, IndexReport
from indexer.sources import Item, check_items, list_source, parse_shard

if TYPE_CHECKING:  # torch is imported only where device decoding is used
    from indexer.device import DeviceDecode


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


def device_decode_for(settings: Settings, engine: Engine) -> DeviceDecode | None:
    """Decoding on the engine's device when DINOSERVE_INDEXER__DEVICE_DECODE asks for it
    (`auto`: the engine runs on CUDA); None: the decode threads do it."""
    if settings.indexer.device_decode == "cpu":
        return None
    from core.device_images import use_device_decode

    if not use_device_decode(settings.indexer.device_decode, engine):
        return None
    from indexer.device import DeviceDecode

    return DeviceDecode(engine, tensor_decode=True)


def run_index(
    settings: Settings,
    db: store.Store,
    engine: Engine,
    req: IndexRequest,
    progress: bool = True,
    on_batch: Callable[[IndexReport, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    items: list[Item] | None = None,
    device: DeviceDecode | None = None,
    executor: Executor | None = None,
) -> IndexReport:
    """Index `req` into `db` with `engine` (see Indexer.run for the callbacks).

    Args:
        items: the source's listing, when the caller already made it (`list_items`).
        device, executor: where batches are decoded and engine calls run (see Indexer).
    """
    name = store.check_name(req.collection or settings.collection)
    spec = parse_shard(req.shard)
    if items is None:
        items = list_items(req)
    options = IngestOptions(
        batch=req.batch or settings.indexer.batch,
        workers=req.workers or settings.indexer.workers,
        limits=Limits(settings.max_pixels, settings.indexer.max_image_bytes),
        blob_dir=settings.blob_dir,
        device=device,
        executor=executor,
    )
    indexer = Indexer(db, engine, name, options)
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
        package_dir = resolve(settings.models_dir, settings.model)
        engine = load_engine(package_dir, settings.engine, settings.inference)
        device = device_decode_for(settings, engine)
        return run_index(settings, db, engine, req, progress, items=items, device=device)
    finally:
        db.close()
