"""The runtime objects of one app, built in its lifespan (api/lifespan.py) and closed at
shutdown: the engine and its worker thread, the micro-batchers, the Qdrant client, the metrics
and the jobs."""

from __future__ import annotations

import dataclasses
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from api.cluster_jobs import ClusterJobs
from api.index_jobs import IndexJobs, NoIndexJobs
from api.metrics import Metrics
from api.refresh import Refresher, SingleProcessAdmin
from api.serving import Serving
from api.vectors import Vectors
from api.writes import WriteGate
from core import package, store
from core.blobs import Blobs
from core.samples import Samples
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """`serving` (model card, engine, batchers) is replaced as a whole by a refresh or rollback;
    a request reads it once (api.deps.ServingDep); `meta` is for probes that need no more."""

    settings: Settings
    serving: Serving
    vectors: Vectors
    metrics: Metrics
    executor: ThreadPoolExecutor
    admin: Refresher | SingleProcessAdmin | None = None  # set in the lifespan
    indexing: IndexJobs | NoIndexJobs | None = None
    clusters: ClusterJobs | None = None  # None: not in HTTP worker processes
    writes: WriteGate = dataclasses.field(default_factory=WriteGate)  # collection writes

    @property
    def blobs(self) -> Blobs:
        """Uploaded images (DINOSERVE_BLOB_DIR, at most DINOSERVE_BLOB_MAX_BYTES)."""
        s = self.settings
        return Blobs(s.blob_dir, s.blob_fsync, s.blob_max_bytes)

    @functools.cached_property
    def samples(self) -> Samples:
        """The page's example images (DINOSERVE_SAMPLES_DIR), listed once."""
        return Samples(self.settings.samples_dir)

    @property
    def store(self) -> store.Store:
        """The store with the batch retry policy (refresh, indexing jobs)."""
        return self.vectors.db.with_policy(store.BATCH)

    @property
    def meta(self) -> package.PackageMeta:
        return self.serving.meta

    def swap(self, new: Serving) -> Serving:
        """Serve `new` from the next request on; returns the old state (to retire)."""
        old, self.serving = self.serving, new
        self.metrics.model.info(model_info(new, self.settings.engine))
        log.info("now serving %s %s", new.meta.name, new.meta.version)
        return old


def model_info(serving: Serving, setting: str) -> dict[str, str]:
    """The labels of `dinoserve_model_info`: the package, and the engine as resolved."""
    meta = serving.meta
    return {
        "name": meta.name,
        "version": meta.version,
        **serving.engine_info(setting),
        "embed_dim": str(meta.embed_dim),
    }
