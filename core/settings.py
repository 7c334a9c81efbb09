"""The one settings class of the service and the CLI: environment variables `DINOSERVE_*`, nested
groups with `__` (e.g. `DINOSERVE_INFERENCE__INTRA_OP_THREADS=4`). Read once at start-up and
handed on; a bad value fails here, at construction, not on the first request."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.package import known_models

ORT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class InferenceSettings(BaseModel):
    """How the engine runs (`DINOSERVE_INFERENCE__*`)."""

    # 0 = the runtime's default (all cores for intra-op work).
    intra_op_threads: int = Field(0, ge=0)
    inter_op_threads: int = Field(0, ge=0)
    # ONNX Runtime providers in order of preference; those not available are skipped.
    providers: list[str] = Field(default_factory=lambda: list(ORT_PROVIDERS))
    # Which model file: fp32, int8 (dynamic: weights int8, activations quantised per call) or
    # int8-static (QDQ, activation ranges calibrated at export), when the package has it. The
    # openvino engine also takes int8-nncf (NNCF's post-training int8, an OpenVINO IR file).
    # With DINOSERVE_ENGINE=auto the variant comes from `dinoserve models bench` instead.
    onnx_variant: Literal["fp32", "int8", "int8-static", "int8-nncf"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # torch engine
    # The torch engine (DINOSERVE_ENGINE=torch): CUDA in `cuda_dtype` (autocast), else CPU fp32.
    torch_compile: bool = False  # torch.compile, one graph per bucket, warmed at start-up
    cuda_graphs: bool = False  # with torch_compile on CUDA: mode "reduce-overhead" (CUDA graphs)
    cuda_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # Batch sizes a batch is padded up to (larger batches are split), so a compiled engine sees
    # only these shapes. pad_to_buckets: None = when compiled.
    buckets: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    pad_to_buckets: bool | None = None
    warmup: bool = True  # run every bucket once at start-up (compiled or CUDA) before serving

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if not p.endswith("ExecutionProvider")]
        if unknown or not value:
            raise ValueError(f"providers must be ONNX Runtime provider names, got {value}")
        return value

    @field_validator("buckets")
    @classmethod
    def _increasing_buckets(cls, value: list[int]) -> list[int]:
        if not value or any(b < 1 or b > 4096 for b in value) or value != sorted(set(value)):
            raise ValueError(f"buckets must be increasing batch sizes in 1..4096, got {value}")
        return value


class QuantizeSettings(BaseModel):
    """Quantised variants at export and their accuracy guard (`DINOSERVE_QUANTIZE__*`; see
    training/static_int8.py and evaluation/variant_guard.py). `dinoserve export|import
    --calibration DIR` overrides `calibration_dir`."""

    # Real images (a folder or tar; class folders turn on the guard's k-NN part) to calibrate
    # static int8 on and to check every quantised variant against fp32. None: a run's own
    # training data for `export`, else DINOSERVE_SAMPLES_DIR (the demo's scenes).
    calibration_dir: Path | None = None
    calibration_images: int = Field(256, ge=8, le=100_000)  # activation ranges from these
    guard_images: int = Field(512, ge=4, le=100_000)  # held out from calibration, for the guard
    min_cosine: float = Field(0.995, gt=0, le=1)  # every embedding's cosine to fp32
    min_attention_cosine: float = Field(0.99, gt=0, le=1)  # every attention map's, per head
    max_knn_drop: float = Field(0.5, ge=0, le=100)  # k-NN top-1 points below fp32's at most

    @field_validator("calibration_dir")
    @classmethod
    def _calibration_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"{value} does not exist (a folder or tar of images)")
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
    # A label filter cuts most of the graph's links, so filtered searches search wider: at 100k
    # points and a 10 % label, recall@10 0.86 with 128, 0.99 with 512 (p50 0.8 → 2.1 ms).
    filtered_hnsw_ef: int = Field(512, ge=1, le=4096)
    oversampling: float = Field(2.0, ge=1.0, le=16.0)  # int8 candidates per result, rescored
    # The embedded store refuses writes (a clear error, 507 from the API) while less than this
    # is free on its disk: Qdrant Edge writes through memory maps, and a write into a map on a
    # full disk kills the process (SIGBUS) instead of failing.
    min_free_mb: int = Field(256, ge=0)
    # The embedded store indexes every this many points written as a segment of its own, so
    # building the index needs the memory of one segment, not of the whole collection (1M
    # points built in one piece peaked at 7.5 GiB; bench/RESULTS.md, "store at a million").
    segment_points: int = Field(200_000, ge=1_000)
    # From this many points on, the embedded store builds a search index in a child process:
    # Qdrant Edge holds the GIL while it builds, which would stop the service's requests.
    build_apart_above: int = Field(20_000, ge=0)


class IndexerSettings(BaseModel):
    """Defaults of `dinoserve index` (`DINOSERVE_INDEXER__*`); its flags override them."""

    batch: int = Field(32, ge=1, le=4096)
    workers: int = Field(4, ge=1, le=256)
    max_image_bytes: int = Field(64 * 1024 * 1024, gt=0)  # larger files are skipped, reported
    # Where images are decoded and preprocessed: "device" = in batches on the engine's device
    # (nvJPEG for JPEGs on CUDA; indexer/device.py), "cpu" = decode threads with PIL, "auto" =
    # device when the torch engine runs on CUDA.
    device_decode: Literal["auto", "cpu", "device"] = "auto"


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
    # HTTP worker processes. >1: one engine process owns the model, the micro-batcher and the
    # embedded store, and the workers hand it their preprocessed batches over a Unix socket
    # (api/engine_server.py); 1 = everything in one process.
    workers: int = Field(1, ge=1, le=64)
    # With workers: where uploads are decoded. "device" = the workers send the encoded bytes and
    # the engine process decodes batches on its device (nvJPEG for JPEGs on CUDA); "cpu" = each
    # worker decodes and preprocesses; "auto" = device when the engine runs on CUDA.
    device_decode: Literal["auto", "cpu", "device"] = "auto"
    # Set by `dinoserve serve` for its workers (the engine process's socket); not for users.
    engine_socket: str | None = None


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


class DiscoverySettings(BaseModel):
    """Discovery without labels (`DINOSERVE_DISCOVERY__*`): near-duplicates
    (discovery/duplicates.py) and clusters of a collection's embeddings (discovery/clusters.py)."""

    # Least cosine similarity of two images that count as near-copies (GET /collections/{name}/
    # duplicates, `dinoserve duplicates`). Provisional: bench/copy_detection.py picks it once
    # the shipped backbone exists; the tiny CPU preset separates no copies at any threshold
    # (docs/architecture.md, "Near-duplicates"; bench/RESULTS.md).
    duplicate_threshold: float = Field(0.9, gt=0, le=1)
    # Neighbours asked per image: groups form through chains, so larger groups than this are
    # still found; more costs time (n queries of top-k).
    duplicate_k: int = Field(10, ge=1, le=100)

    # Cluster jobs' results, one folder per physical collection (so per model version); they
    # survive a restart and are reused while the collection is unchanged.
    clusters_dir: Path = Path("var/discovery/clusters")
    # Threads for k-means (BLAS/OpenMP): 1 leaves the other cores to requests while a job runs.
    cluster_threads: int = Field(1, ge=1, le=256)
    # Above this many points, `auto` clusters with MiniBatchKMeans instead of spectral clustering
    # of the neighbour graph (whose exact graph costs the square of the points), and `kmeans`
    # with MiniBatchKMeans instead of full k-means.
    minibatch_above: int = Field(20_000, ge=100)
    # Spectral clustering: each image's nearest neighbours in the graph (doubled where the graph
    # would fall apart into more pieces than clusters). 5–30 gave NMI within ±0.05 of each other
    # on the demo scenes (bench/RESULTS.md); 10 is scikit-learn's own default.
    graph_neighbors: int = Field(10, ge=2, le=200)
    # Automatic k: each candidate is fitted on a seeded sample of at most this many points and
    # scored by the silhouette on it (cost grows with the square of the sample).
    k_sample: int = Field(4000, ge=100, le=100_000)
    k_max: int = Field(50, ge=2, le=1000)  # the largest k automatic choice tries
    nearest: int = Field(12, ge=1, le=200)  # images shown per cluster, nearest its centre first


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
    # auto: the variant `dinoserve models bench` measured fastest among those that pass the
    # accuracy guard on this machine (<models_dir>/<name>/bench-<version>.json); without a
    # record, onnxruntime fp32 (logged). openvino needs the extra (pip install '.[openvino]').
    engine: Literal["onnxruntime", "torch", "openvino", "auto"] = "onnxruntime"
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
    # Off the loopback (serve.host not 127.x, ::1 or localhost) the service refuses to start
    # without DINOSERVE_API_KEY unless this says what callers without a key may do: "read"
    # (embed, classify, search, thumbnails; writes need the write or admin key), "all"
    # (writes and deletes too, as on the loopback). "none": no anonymous access off the
    # loopback; on it, as before (open while no key is set). See api/access.py.
    allow_anonymous: Literal["none", "read", "all"] = "none"
    # Images uploaded to collections, content-addressed (shared by replicas: a volume in deploy/).
    blob_dir: Path = Path("var/blobs")
    # fsync each uploaded image before its point is written: an add survives a power cut with
    # its bytes. Costs a disk flush per add (p50 7.6 ms on the shared disk of bench/RESULTS.md,
    # 4× the tiny model's engine time); false leaves it to the OS's write-back (an Edge upsert,
    # 0.7 ms there, does not flush per write either), and a crash may lose the last seconds of
    # uploads' bytes.
    blob_fsync: bool = True
    # The most bytes of uploaded images the blob store holds (a running total kept beside the
    # blobs, core/blob_usage.py): an add past it answers 507 and stores nothing, so uploads
    # cannot fill the volume. Size it below the volume (deploy/k8s: 45 GiB of a 50 GiB claim).
    blob_max_bytes: int = Field(5 * 1024**3, gt=0)
    index_dir: Path = Path("var/index")  # failure reports of indexing runs
    # Example images the web page offers for a first try (class folders; true masks, when
    # there are any, in `<folder>-masks` beside it). `make demo` sets its held-out scenes.
    samples_dir: Path | None = None
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    quantize: QuantizeSettings = Field(default_factory=QuantizeSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    indexer: IndexerSettings = Field(default_factory=IndexerSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    refresh: RefreshSettings = Field(default_factory=RefreshSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    discovery: DiscoverySettings = Field(default_factory=DiscoverySettings)

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_variables(cls, values: Any) -> Any:
        # pydantic-settings ignores DINOSERVE_* variables that name no setting (nested ones
        # silently): a misspelt DINOSERVE_API_KEYS would serve an open API. Refuse them.
        unknown_variables(os.environ)
        return values

    @model_validator(mode="after")
    def _default_model(self) -> Settings:
        # DINOSERVE_MODEL not set and its default not in the registry (e.g. after `make demo`,
        # which packages demo-tiny): serve the most recently activated model there instead.
        if "model" not in self.model_fields_set and not (self.models_dir / self.model).is_dir():
            known = known_models(self.models_dir)
            if known:
                self.model = known[0]
        return self

    @field_validator("samples_dir")
    @classmethod
    def _samples_dir_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a folder (unset it for no example images)")
        return value

    @field_validator("api_key", "admin_api_key", "write_api_key")
    @classmethod
    def _empty_key_is_unset(cls, value: str | None) -> str | None:
        # `DINOSERVE_API_KEY=` (e.g. passed through empty by compose) means no key, never the
        # empty key (which every request would "present").
        return value or None

    @model_validator(mode="after")
    def _anonymous_or_a_key(self) -> Settings:
        # With the read key set every read needs it: an opt-out beside it would be a setting
        # that silently does nothing (or an operator who thinks the key is off).
        if self.api_key and self.allow_anonymous != "none":
            raise ValueError(
                f"DINOSERVE_ALLOW_ANONYMOUS={self.allow_anonymous} does nothing while "
                "DINOSERVE_API_KEY is set (every request needs the key): unset one of them"
            )
        return self

    @model_validator(mode="after")
    def _workers_serve_one_model(self) -> Settings:
        # A refresh swaps the engine inside one process; with worker processes it is the CLI's.
        if self.serve.workers > 1 and self.refresh.watch_interval_s > 0:
            raise ValueError("refresh.watch_interval_s needs serve.workers=1")
        return self


def variable_names(model: type[BaseModel] = Settings, prefix: str = "DINOSERVE_") -> list[str]:
    """Every environment variable the settings read: `x` → DINOSERVE_X, group `g` field `f` →
    DINOSERVE_G__F."""
    names = []
    for name, info in model.model_fields.items():
        var = f"{prefix}{name}".upper()
        names.append(var)
        group = info.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names.extend(variable_names(group, var + "__"))
    return names


def unknown_variables(environ: Mapping[str, str]) -> None:
    """Raise ValueError naming each DINOSERVE_* variable that is no setting, with the nearest
    valid name."""
    valid = variable_names()
    wrong = sorted(
        k for k in environ if k.upper().startswith("DINOSERVE_") and k.upper() not in valid
    )
    if not wrong:
        return
    lines = []
    for name in wrong:
        near = difflib.get_close_matches(name.upper(), valid, n=1, cutoff=0.6)
        lines.append(f"{name} is not a setting" + (f"; did you mean {near[0]}?" if near else ""))
    raise ValueError("; ".join(lines) + " (every setting: core/settings.py)")
