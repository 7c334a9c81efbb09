"""The one settings class of the service and the CLI: environment variables `DINOSERVE_*`, nested
groups with `__` (e.g. `DINOSERVE_INFERENCE__INTRA_OP_THREADS=4`). Read once at start-up and
handed on; a bad value fails here, at construction, not on the first request."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ORT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class InferenceSettings(BaseModel):
    """How the engine runs (`DINOSERVE_INFERENCE__*`)."""

    # 0 = the runtime's default (all cores for intra-op work).
    intra_op_threads: int = Field(0, ge=0)
    inter_op_threads: int = Field(0, ge=0)
    # ONNX Runtime providers in order of preference; those not available are skipped.
    providers: list[str] = Field(default_factory=lambda: list(ORT_PROVIDERS))
    # Which ONNX file: fp32, or int8 (the quantised CPU variant, when the package has one).
    onnx_variant: Literal["fp32", "int8"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # torch engine
    torch_compile: bool = False  # torch engine on CUDA

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if not p.endswith("ExecutionProvider")]
        if unknown or not value:
            raise ValueError(f"providers must be ONNX Runtime provider names, got {value}")
        return value


class QdrantSettings(BaseModel):
    """Collection layout and search (`DINOSERVE_QDRANT__*`). The cluster layout applies when a
    physical collection is created on a server (the embedded store has one shard)."""

    shard_number: int = Field(1, ge=1)
    replication_factor: int = Field(1, ge=1)
    write_consistency_factor: int = Field(1, ge=1)
    timeout_s: float = Field(30.0, gt=0)
    # From this many points on (checked when an indexing run or a refresh ends), a collection's
    # vectors move to disk and an int8 copy stays in RAM (scalar quantisation; results rescored
    # with the full vectors): 1M × 384-d then needs ~0.4 GiB of RAM instead of 1.5 GiB
    # (bench/RESULTS.md, "store scale").
    quantize_above: int = Field(200_000, ge=0)
    hnsw_ef: int = Field(128, ge=1, le=4096)  # search breadth: recall vs latency
    oversampling: float = Field(2.0, ge=1.0, le=16.0)  # int8 candidates per result, rescored
    # The embedded store refuses writes (a clear error, 507 from the API) while less than this
    # is free on its disk: Qdrant Edge writes through memory maps, and a write into a map on a
    # full disk kills the process (SIGBUS) instead of failing.
    min_free_mb: int = Field(256, ge=0)


class IndexerSettings(BaseModel):
    """Defaults of `dinoserve index` (`DINOSERVE_INDEXER__*`); its flags override them."""

    batch: int = Field(32, ge=1, le=4096)
    workers: int = Field(4, ge=1, le=256)
    max_image_bytes: int = Field(64 * 1024 * 1024, gt=0)  # larger files are skipped, reported


class ServeSettings(BaseModel):
    """The HTTP service (`DINOSERVE_SERVE__*`); `dinoserve serve --host/--port` override the
    bind address."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Micro-batching: concurrent requests share engine batches of up to max_batch images, the
    # first waiting at most max_wait_ms for company. batching=false serves each request alone.
    batching: bool = True
    max_batch: int = Field(32, ge=1, le=1024)
    # 0 = greedy: take whatever is queued and run at once. While the engine is busy the queue
    # fills, so batches grow under load without costing an idle service any latency (measured on
    # the CPU: a 5 ms wait cut 1-client throughput of the tiny model from 247 to 118 req/s).
    # A few ms can still help on a GPU, where batch 32 costs little more than batch 1.
    max_wait_ms: float = Field(0.0, ge=0, le=1000)
    thumbnail_px: int = Field(256, ge=16, le=2048)  # GET /images/{id}: longer side
    retry_after_s: int = Field(5, ge=1, le=3600)  # sent with 503s
    store_attempts: int = Field(2, ge=1, le=10)  # tries per Qdrant call before a 503
    # Idle keep-alive of client connections. Behind a load balancer, set it above the balancer's
    # own idle timeout (e.g. 75 behind a 60 s one): else the balancer may send a request on a
    # connection the service is closing at that moment, and its client gets a 502.
    keep_alive_s: int = Field(5, ge=1, le=3600)
    # On SIGTERM: stop accepting, let requests in flight finish for at most this long, then
    # close. Keep it under the orchestrator's kill deadline (deploy/k8s/api.yaml: 30 s grace,
    # 5 s of it in preStop).
    graceful_shutdown_s: int = Field(20, ge=0, le=3600)
    access_log: bool = True  # one log line per request (uvicorn's access log)


class CorsSettings(BaseModel):
    """Cross-origin access for browser pages served elsewhere (`DINOSERVE_CORS__*`, JSON lists,
    e.g. `DINOSERVE_CORS__ALLOW_ORIGINS='["https://app.example"]'`); off while no origin is
    listed."""

    allow_origins: list[str] = Field(default_factory=list)  # ["*"] for any origin
    # PATCH and DELETE: a labelling tool elsewhere relabels and removes images in collections.
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "PATCH", "DELETE"])
    allow_headers: list[str] = Field(
        default_factory=lambda: ["Authorization", "X-API-Key", "Content-Type"]
    )
    allow_credentials: bool = False
    max_age_s: int = Field(600, ge=0, le=86400)  # how long browsers cache a preflight


class RefreshSettings(BaseModel):
    """Backbone refresh and rollback (`DINOSERVE_REFRESH__*`): see docs/architecture.md."""

    keep_versions: int = Field(2, ge=2, le=1000)  # `models gc`: at least served + previous
    batch: int = Field(32, ge=1, le=4096)  # images per engine call while re-embedding
    workers: int = Field(2, ge=1, le=64)  # read + decode threads while re-embedding
    # Seconds between checks of the registry's CURRENT by a running service (0 = no watch): when
    # it names another version, the service refreshes to it.
    watch_interval_s: float = Field(0.0, ge=0)
    drain_timeout_s: float = Field(60.0, gt=0)  # longest wait for in-flight requests of a swap
    # A refresh fails (nothing served changes) when more of a collection's images than this
    # cannot be read again: flipping would silently shrink the collection.
    max_failed_fraction: float = Field(0.1, ge=0, le=1)
    # Writes to collections go on while a collection is re-embedded; then up to this many
    # catch-up passes bring the new collection in line (without blocking writes), and a last
    # one runs with writes refused (409 + Retry-After) until the aliases have flipped.
    catch_up_passes: int = Field(3, ge=0, le=100)


class Settings(BaseSettings):
    """Service settings; the variable names (DESIGN.md's table) are part of the contract."""

    model_config = SettingsConfigDict(
        env_prefix="DINOSERVE_", env_nested_delimiter="__", extra="forbid"
    )

    qdrant_path: Path = Path("var/qdrant")
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    models_dir: Path = Path("var/models")
    model: str = "dino-vits16"  # a name under models_dir, or a package path
    collection: str = "images"
    engine: Literal["onnxruntime", "torch"] = "onnxruntime"
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_pixels: int = Field(40_000_000, gt=0)
    max_batch_images: int = Field(64, gt=0)
    # Keys: every route but the probes and the page needs DINOSERVE_API_KEY (or the admin key)
    # when it is set; /admin/* always needs DINOSERVE_ADMIN_API_KEY. See api/auth.py.
    api_key: str | None = None
    admin_api_key: str | None = None
    # Writes to collections over HTTP (POST/PATCH/DELETE /collections/…) need this key or the
    # admin key whenever any key is set; it grants reads too.
    write_api_key: str | None = None
    # Images uploaded to collections, content-addressed (shared by replicas: a volume in deploy/).
    blob_dir: Path = Path("var/blobs")
    # fsync each uploaded image before its point is written: an add survives a power cut with
    # its bytes. Costs a disk flush per add (p50 7.6 ms on the shared disk of bench/RESULTS.md,
    # 4× the tiny model's engine time); false leaves it to the OS's write-back (an Edge upsert,
    # 0.7 ms there, does not flush per write either), and a crash may lose the last seconds of
    # uploads' bytes.
    blob_fsync: bool = True
    index_dir: Path = Path("var/index")  # failure reports of indexing runs
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    indexer: IndexerSettings = Field(default_factory=IndexerSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    refresh: RefreshSettings = Field(default_factory=RefreshSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)

    @field_validator("api_key", "admin_api_key", "write_api_key")
    @classmethod
    def _empty_key_is_unset(cls, value: str | None) -> str | None:
        # `DINOSERVE_API_KEY=` (e.g. passed through empty by compose) means no key, never the
        # empty key (which every request would "present").
        return value or None
