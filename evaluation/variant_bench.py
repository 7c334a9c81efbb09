"""`dinoserve models bench`: time a package's variants on this machine, guard each against
fp32, and record the fastest that passes (core/engine_choice.py) for DINOSERVE_ENGINE=auto.

Candidates are every (engine, variant) that can run here: onnxruntime on each ONNX variant, and
openvino on each variant when the extra is installed (it reads the ONNX files and its own IR).
onnxruntime fp32 is the reference: the others are guarded against its outputs on real images
(evaluation/variant_guard.py, k-NN included when they are labelled). Each candidate is timed at
batch 1 and at the batcher's batch (`serve.max_batch`) in interleaved rounds (each round runs
every candidate once, so a slow spell of the machine touches all of them alike), median per
cell. The choice is the passing candidate with the highest geometric mean over the batch sizes:
batch 1 is what an idle service runs, the batcher's batch what a loaded one runs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core import package
from core.engine_choice import BenchRecord, Candidate, load_engine
from core.engines import Engine
from core.settings import InferenceSettings, QuantizeSettings
from evaluation.variant_guard import check_variant, run_forward

log = logging.getLogger(__name__)
REFERENCE = ("onnxruntime", "fp32")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def candidates(meta: package.PackageMeta, openvino: bool) -> list[tuple[str, str]]:
    """Every (engine, variant) of the package that the installed runtimes can run."""
    out = [("onnxruntime", v) for v, f in meta.onnx.items() if f.format == "onnx"]
    if openvino:
        out += [("openvino", v) for v in meta.onnx]
    return out


def openvino_installed() -> bool:
    """Whether the openvino extra is importable here."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _rate(engine: Engine, batch: np.ndarray, seconds: float) -> float:
    """Images/s of engine.embed on `batch` over about `seconds`, after a pause and a warm-up
    (the previous runtime's spinning threads stop; a new session's first calls run slow)."""
    time.sleep(0.2)
    engine.embed(batch)
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or n < 2:
        engine.embed(batch)
        n += 1
    return n * len(batch) / elapsed


def time_engines(
    engines: dict[tuple[str, str], Engine],
    batches: dict[int, np.ndarray],
    seconds: float,
    rounds: int,
) -> dict[tuple[str, str], dict[int, float]]:
    """Median images/s per (candidate, batch size) over interleaved rounds."""
    runs: dict[tuple[str, str], dict[int, list[float]]] = {
        k: {b: [] for b in batches} for k in engines
    }
    for _ in range(rounds):
        for b, x in batches.items():
            for k, e in engines.items():
                runs[k][b].append(_rate(e, x, seconds / rounds))
    return {k: {b: float(np.median(v)) for b, v in per.items()} for k, per in runs.items()}


def bench_package(
    package_dir: Path,
    images: np.ndarray,
    labels: list[str] | None,
    batch_sizes: list[int],
    threads: int,
    seconds: float = 4.0,
    rounds: int = 3,
    quant: QuantizeSettings | None = None,
    progress: Callable[[str], None] = log.info,
) -> BenchRecord:
    """Guard and time every candidate of a package; the record names the choice.

    Args:
        package_dir: a verified package.
        images: preprocessed real images for the guard (N, 3, S, S); also the timed batches.
        labels: their classes (None: the guard's k-NN part is skipped).
        batch_sizes: e.g. [1, serve.max_batch].
        threads: intra-op threads of every engine (the service's setting).
        seconds: timed seconds per cell, all rounds together.
        rounds: interleaved rounds (median).
        quant: the guard's thresholds.
        progress: where progress lines go.
    """
    quant = quant or QuantizeSettings()
    meta = package.verify(package_dir)
    base = InferenceSettings(intra_op_threads=threads, inter_op_threads=1)
    engines: dict[tuple[str, str], Engine] = {}
    for kind, variant in candidates(meta, openvino_installed()):
        s = base.model_copy(update={"onnx_variant": variant})
        engines[(kind, variant)] = load_engine(package_dir, kind, s, check=False)

    def forward(e: Engine):
        return lambda x: (e.embed(x), e.attention(x))

    ref = run_forward(forward(engines[REFERENCE]), images)
    guards = {}
    for key, e in engines.items():
        if key == REFERENCE:
            continue
        guards[key] = check_variant(
            ref,
            forward(e),
            images,
            labels,
            quant.min_cosine,
            quant.min_attention_cosine,
            quant.max_knn_drop,
        )
        progress(f"guard {key[0]} {key[1]}: {'pass' if guards[key].passed else guards[key].reason}")
    reps = {b: np.resize(images, (b, *images.shape[1:])) for b in batch_sizes}
    speed = time_engines(engines, reps, seconds, rounds)
    rows = []
    for key, per in speed.items():
        g = guards.get(key)
        score = math.exp(sum(math.log(max(v, 1e-9)) for v in per.values()) / len(per))
        rows.append(
            Candidate(
                engine=key[0],
                variant=key[1],
                images_per_s=per,
                guard=g.to_dict() if g else {},
                passed=g.passed if g else True,
                score=score,
            )
        )
        progress(
            f"{key[0]} {key[1]}: "
            + ", ".join(f"batch {b} {v:.1f} img/s" for b, v in per.items())
            + ("" if rows[-1].passed else "  (fails the guard)")
        )
    chosen = max((r for r in rows if r.passed), key=lambda r: r.score)
    return BenchRecord(
        model=meta.name,
        version=meta.version,
        date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        cpu=cpu_model(),
        cores=os.cpu_count() or 1,
        threads=threads,
        batches=batch_sizes,
        candidates=rows,
        chosen=chosen,
    )
