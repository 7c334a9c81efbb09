"""Opening the store the settings name: a server or cluster when `DINOSERVE_QDRANT_URL` is set,
else the embedded Qdrant Edge store under `DINOSERVE_QDRANT_PATH`."""

from __future__ import annotations

import dataclasses

from core.settings import Settings
from core.store.base import BATCH, REQUEST, RetryPolicy, Store
from core.store.layout import Layout


def layout_from(settings: Settings) -> Layout:
    q = settings.qdrant
    return Layout(
        shard_number=q.shard_number,
        replication_factor=q.replication_factor,
        write_consistency_factor=q.write_consistency_factor,
        quantize_above=q.quantize_above,
        hnsw_ef=q.hnsw_ef,
        filtered_hnsw_ef=q.filtered_hnsw_ef,
        oversampling=q.oversampling,
        min_free_bytes=q.min_free_mb * 1024 * 1024,
        segment_points=q.segment_points,
        build_apart_above=q.build_apart_above,
    )


def request_policy(settings: Settings) -> RetryPolicy:
    """Request handlers' retries: DINOSERVE_SERVE__STORE_ATTEMPTS quick tries, then 503."""
    return dataclasses.replace(REQUEST, attempts=settings.serve.store_attempts)


def open_store(settings: Settings, policy: RetryPolicy = BATCH) -> Store:
    """The store of these settings, with `policy` for its calls. Close it when done.

    Raises:
        StoreUnusable: the embedded store is in use by another process, or its directory is
            not a dinoserve store.
    """
    layout = layout_from(settings)
    if settings.qdrant_url:
        from core.store.server import ServerStore

        return ServerStore.connect(
            settings.qdrant_url, settings.qdrant_api_key, layout, settings.qdrant.timeout_s, policy
        )
    from core.store.edge import EdgeStore

    return EdgeStore(settings.qdrant_path, layout, policy)
