"""`dinoserve index`: settings → model package → engine → Indexer over a source."""

from __future__ import annotations

from pathlib import Path

from core import store
from core.engines import load_engine, preprocess_batch
from core.package import read_meta, resolve
from core.settings import Settings
from indexer.pipeline import Embedder, Indexer, IndexReport, Limits
from indexer.sources import list_source, parse_shard


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


def index_source(
    settings: Settings,
    source: str,
    collection: str | None = None,
    labels: str = "none",
    manifest: str | None = None,
    batch: int | None = None,
    workers: int | None = None,
    shard: str | None = None,
    prune: bool = False,
    failures: str | None = None,
    progress: bool = True,
) -> IndexReport:
    """Index a directory, tar or manifest into `collection` (default DINOSERVE_COLLECTION).

    Args:
        settings: the service settings (Qdrant location, model, limits, indexer defaults).
        source: directory or tar/tar.gz (ignored with a manifest).
        labels: "dirs" (first-level sub-folder) or "none".
        shard: "i/N" to index only this worker's share.
        prune: delete points whose source is gone.
        failures: JSONL file for skipped images (default var/index/<collection>.failures.jsonl).
    """
    name = store.check_name(collection or settings.collection)
    spec = parse_shard(shard)
    items = list_source(source, labels, Path(manifest) if manifest else None)
    embedder = embedder_from_settings(settings)
    q = settings.qdrant
    client = store.open_client(settings.qdrant_path, settings.qdrant_url, settings.qdrant_api_key,
                               q.timeout_s)  # fmt: skip
    try:
        indexer = Indexer(
            client,
            embedder,
            name,
            batch=batch or settings.indexer.batch,
            workers=workers or settings.indexer.workers,
            limits=Limits(settings.max_pixels, settings.indexer.max_image_bytes),
            cluster={
                "shard_number": q.shard_number,
                "replication_factor": q.replication_factor,
                "write_consistency_factor": q.write_consistency_factor,
            },
        )
        suffix = f".shard{spec[0]}of{spec[1]}" if spec[1] > 1 else ""
        fail_path = (
            Path(failures) if failures else settings.index_dir / f"{name}{suffix}.failures.jsonl"
        )
        return indexer.run(items, spec, prune=prune, failures_path=fail_path, progress=progress)
    finally:
        client.close()
