"""GPU serving and indexing (issue 16), every figure in one run: bench/device/gpu_serve.sh.

    python -m bench.gpu_serve --out DIR [--small] [--phases engine,api,workers,index]

Phases, each writing DIR/<phase>.json as soon as it ends (a later failure keeps the earlier ones):
  engine   ViT-S/16 (random init: speed only) through the torch engine, bf16 on CUDA: img/s at
           batch 1, 32, 256, 512, eager and torch.compile'd (batches already on the device; the
           served numpy path too), with FLOPs per image and MFU against --peak-tflops.
  api      bench/api_load.py: /embed at 1, 8, 32, 128 clients, micro-batching on vs off, side by
           side (p50/p99 per cell).
  workers  single-image /embed of a 224-px JPEG at --worker-clients clients: one process vs
           DINOSERVE_SERVE__WORKERS=N, decoding in the workers vs in the engine process
           (serve.device_decode; load from --load-procs processes on the same machine).
  index    `dinoserve index` end to end on --index-images synthetic 500×375 JPEGs made here
           (decode on the device), and the decode + embed rate alone (no store) beside it.
--small shrinks every phase (tiny model, few images, short cells) so that the whole script can
be rehearsed on a CPU before the one device run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench import api_load
from bench.embed_throughput import flops_per_image, random_package
from bench.train_knn_cpu import cpu_model
from training.synthetic import draw_shape

ROOT = Path(__file__).resolve().parents[1]


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU: {cpu_model()}"


def _write(out: Path, name: str, doc: dict) -> dict:
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps({name: doc}), flush=True)
    return doc


def _rate(fn, rows: int, seconds: float, sync) -> float:
    """Rows per second of `fn()` after a warm-up, synchronising the device at both ends."""
    for _ in range(3):
        fn()
    sync()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if n % 4 == 0 or n < 4:
            sync()
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds and n >= 3:
                return n * rows / elapsed


def engine_phase(pkg: Path, batches: list[int], seconds: float, device: str, peak: float) -> dict:
    import torch

    from core.package import read_meta
    from core.settings import InferenceSettings
    from core.torch_engine import TorchEngine
    from core.vit import build_vit

    meta = read_meta(pkg)
    size = meta.img_size
    flops = flops_per_image(build_vit(meta.arch, meta.timm_kwargs), size)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    doc: dict = {
        "arch": meta.arch,
        "img_size": size,
        "gflop_per_image": round(flops / 1e9, 2),
        "peak_tflops": peak,
        "modes": {},
    }
    for mode in ("eager", "compiled"):
        settings = InferenceSettings(
            device=device, torch_compile=mode == "compiled", buckets=batches, pad_to_buckets=True
        )
        t0 = time.perf_counter()
        engine = TorchEngine(pkg, settings)
        row: dict = {
            "start_s": round(time.perf_counter() - t0, 1),
            "warmup_s": round(engine.warmup_s, 1),
            "dtype": str(engine.dtype),
        }
        for b in batches:
            x = torch.randn(b, 3, size, size, device=engine.device)
            rate = _rate(lambda x=x, e=engine: e.embed_tensor(x), b, seconds, sync)
            row[f"batch_{b}_img_s"] = round(rate, 1)
            row[f"batch_{b}_mfu"] = round(rate * flops / (peak * 1e12), 4)
        # The served path: numpy in, pinned copy to the device, numpy out.
        b = batches[-1]
        host = np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32)
        row[f"numpy_batch_{b}_img_s"] = round(
            _rate(lambda e=engine, h=host: e.embed(h), b, seconds, sync), 1
        )
        doc["modes"][mode] = row
        del engine
        if device == "cuda":
            torch.cuda.empty_cache()
    top = batches[-1]
    doc["compiled_vs_eager"] = round(
        doc["modes"]["compiled"][f"batch_{top}_img_s"]
        / doc["modes"]["eager"][f"batch_{top}_img_s"],
        2,
    )
    return doc


def _drive_proc(args: tuple) -> dict:
    url, image, clients, seconds, barrier = args
    barrier.wait(120)  # every load process starts its loops at the same moment
    return asyncio.run(api_load.drive(url, "embed", image, clients, seconds))


class LoadProcs:
    """`procs` load-generating processes, started once (one Python process cannot send
    thousands of requests a second)."""

    def __init__(self, procs: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs = procs
        self.pool = ctx.Pool(procs)
        self.manager = ctx.Manager()

    def drive(self, url: str, image: bytes, clients: int, seconds: float) -> dict:
        """`clients` closed loops over the processes, in step; one cell of api_load's shape."""
        procs = max(1, min(self.procs, clients))
        shares = [clients // procs + (i < clients % procs) for i in range(procs)]
        barrier = self.manager.Barrier(procs)
        jobs = [(url, image, n, seconds, barrier) for n in shares]
        runs = self.pool.map(_drive_proc, jobs, chunksize=1)
        merged = {
            "latencies": [t for r in runs for t in r["latencies"]],
            "errors": sum(r["errors"] for r in runs),
            "req_per_s": sum(r["req_per_s"] for r in runs),
        }
        return api_load.summarize([merged])

    def close(self) -> None:
        self.pool.terminate()
        self.manager.shutdown()


def jpeg_224() -> bytes:
    buf = io.BytesIO()
    draw_shape(4, np.random.default_rng(5), 224).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def workers_phase(
    env: dict, workers: int, clients: int, seconds: float, procs: int, work: Path
) -> dict:
    image = jpeg_224()
    doc: dict = {"clients": clients, "load_procs": procs, "image_bytes": len(image), "rows": []}
    load = LoadProcs(procs)
    try:
        # One process; N workers decoding on their CPUs; N workers sending the JPEG bytes to
        # the engine process, which decodes batches with nvJPEG (on CUDA; PIL elsewhere).
        for n, decode in ((1, "cpu"), (workers, "cpu"), (workers, "device")):
            cell = _workers_cell(
                env | {"DINOSERVE_SERVE__DEVICE_DECODE": decode},
                n,
                image,
                clients,
                seconds,
                load,
                work,
            )
            doc["rows"].append({"workers": n, "decode": decode if n > 1 else "cpu", **cell})
    finally:
        load.close()
    one = doc["rows"][0]["req_per_s"]
    doc["workers_vs_one"] = [round(r["req_per_s"] / one, 2) if one else None for r in doc["rows"]]
    return doc


def _workers_cell(
    env: dict, n: int, image: bytes, clients: int, seconds: float, load: LoadProcs, work: Path
) -> dict:
    """One service with `n` HTTP processes, warmed, then driven by every load process."""
    store = work / f"qdrant-workers-{n}-{env['DINOSERVE_SERVE__DEVICE_DECODE']}"
    shutil.copytree(env["DINOSERVE_QDRANT_PATH"], store)
    port = api_load.free_port()
    server_env = env | {
        "DINOSERVE_SERVE__WORKERS": str(n),
        "DINOSERVE_QDRANT_PATH": str(store),
        "DINOSERVE_SERVE__ACCESS_LOG": "false",
    }
    proc = api_load.start_server(server_env, port, store.with_suffix(".log"))
    try:
        url = f"http://127.0.0.1:{port}"
        load.drive(url, image, min(clients, 16), min(2.0, seconds))  # warm-up
        return load.drive(url, image, clients, seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _make_jpeg(args: tuple) -> None:
    path, seed, w, h = args
    img = draw_shape(seed % 10, np.random.default_rng(seed), h).resize((w, h))
    img.save(path, "JPEG", quality=90)


def make_jpegs(folder: Path, n: int, w: int, h: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(os.cpu_count()) as pool:
        pool.map(_make_jpeg, [(folder / f"{i:06d}.jpg", i, w, h) for i in range(n)], chunksize=64)


def decode_embed_rate(pkg: Path, files: list[Path], batch: int, device: str) -> dict:
    """Read + device decode + embed of `files` in batches, no store: the indexer's GPU side."""
    import torch

    from core.engine_choice import load_engine
    from core.settings import InferenceSettings
    from indexer.device import DeviceDecode
    from indexer.ingest import Limits

    engine = load_engine(pkg, "torch", InferenceSettings(device=device))
    emb = DeviceDecode(engine, tensor_decode=True)
    limits = Limits()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with ThreadPoolExecutor(16) as pool:
        first = list(pool.map(Path.read_bytes, files[:batch]))
        emb.embed(emb.stack([r[0] for r in emb.decode_many(first, limits)]))  # warm-up
        sync()
        t0, done = time.perf_counter(), 0
        for start in range(0, len(files), batch):
            datas = list(pool.map(Path.read_bytes, files[start : start + batch]))
            rows = [r[0] for r in emb.decode_many(datas, limits) if isinstance(r, tuple)]
            emb.embed(emb.stack(rows))
            done += len(rows)
        sync()
        elapsed = time.perf_counter() - t0
    return {
        "images": done,
        "seconds": round(elapsed, 2),
        "img_s": round(done / elapsed, 1),
        "batch": batch,
    }


def index_phase(
    pkg: Path, n: int, size: tuple[int, int], batch: int, device: str, work: Path
) -> dict:
    folder = work / "jpegs"
    t0 = time.perf_counter()
    make_jpegs(folder, n, *size)
    doc: dict = {
        "images": n,
        "size": f"{size[0]}x{size[1]}",
        "batch": batch,
        "make_s": round(time.perf_counter() - t0, 1),
    }
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "DINOSERVE_MODEL": str(pkg),
        "DINOSERVE_ENGINE": "torch",
        "DINOSERVE_INFERENCE__DEVICE": device,
        "DINOSERVE_INDEXER__DEVICE_DECODE": "device",
        "DINOSERVE_QDRANT_PATH": str(work / "qdrant-index"),
        "DINOSERVE_INDEX_DIR": str(work / "index"),
    }
    cmd = [
        sys.executable,
        "-m",
        "dinoserve",
        "index",
        str(folder),
        "--collection",
        "bench",
        "--batch",
        str(batch),
        "--workers",
        "16",
    ]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise RuntimeError(f"dinoserve index failed: {run.stderr[-3000:]}")
    summary = run.stdout.strip().splitlines()[-1]
    rate = re.search(r"\(([\d.]+) img/s\)", summary)
    doc["end_to_end"] = {
        "command": "DINOSERVE_ENGINE=torch DINOSERVE_INDEXER__DEVICE_DECODE="
        f"device dinoserve index DIR --batch {batch} --workers 16",
        "summary": summary,
        "img_s": float(rate.group(1)) if rate else None,
        "wall_s_with_start": round(wall, 1),
    }
    files = sorted(folder.glob("*.jpg"))
    doc["decode_embed_only"] = decode_embed_rate(pkg, files, batch, device)
    return doc


def run_phases(
    args: argparse.Namespace, report: dict, work: Path, device: str, model: str, cleanup: list
) -> None:
    """Every phase asked for, each into `report` and args.out/<phase>.json as it ends."""
    small, phases = args.small, args.phases.split(",")
    pkg = random_package(model, work / "models", None, "bench/gpu_serve.py (random init)")[1]
    if "engine" in phases:
        batches = [1, 4] if small else [1, 32, 256, 512]
        report["engine"] = _write(
            args.out,
            "engine",
            engine_phase(pkg, batches, 1.0 if small else 2.0, device, args.peak_tflops),
        )
    if "api" in phases or "workers" in phases:
        data, env = api_load.prepare_service(
            model, "fp32", 3 if small else 30, "bench", "gpu-serve-api-", "torch", device
        )
        cleanup.append(data.parent)
        env.setdefault("DINOSERVE_SERVE__MAX_WAIT_MS", "0" if small else "2")
    if "api" in phases:
        # The service prepared above, measured as bench/api_load.py does.
        cell = argparse.Namespace(
            model=model,
            variant="fp32",
            engine="torch",
            device=device,
            endpoints="embed",
            clients="1,4" if small else "1,8,32,128",
            seconds=2.0 if small else 6.0,
            rounds=1 if small else 2,
            max_batch=8 if small else 64,
        )
        argv_api = [f"--{k.replace('_', '-')}={v}" for k, v in vars(cell).items()]
        report["api"] = _write(args.out, "api", api_load.measure(cell, dict(env), argv_api))
    if "workers" in phases:
        env["DINOSERVE_SERVE__MAX_BATCH"] = "8" if small else "128"
        report["workers"] = _write(
            args.out,
            "workers",
            workers_phase(
                env,
                2 if small else args.workers,
                8 if small else args.worker_clients,
                3.0 if small else 10.0,
                2 if small else args.load_procs,
                work,
            ),
        )
    if "index" in phases:
        n = 200 if small else args.index_images
        size = (100, 75) if small else (500, 375)
        report["index"] = _write(
            args.out, "index", index_phase(pkg, n, size, 32 if small else 256, device, work)
        )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp")))
    ap.add_argument("--small", action="store_true", help="rehearsal sizes (CPU, tiny model)")
    ap.add_argument("--phases", default="engine,api,workers,index")
    ap.add_argument("--peak-tflops", type=float, default=794.0, help="measured bf16 ceiling")
    ap.add_argument("--workers", type=int, default=10, help="HTTP processes of the workers phase")
    ap.add_argument("--worker-clients", type=int, default=128)
    ap.add_argument("--load-procs", type=int, default=4)
    ap.add_argument("--index-images", type=int, default=20_000)
    args = ap.parse_args(argv)
    small = args.small
    import torch

    device = "cuda" if torch.cuda.is_available() and not small else "cpu"
    model = "tiny" if small else "vits16"
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-serve-"))
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": _device_name(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "small": small,
        "command": " ".join(["python -m bench.gpu_serve", *(argv or sys.argv[1:])]),
    }
    _write(args.out, "meta", report)
    cleanup = [work]  # folders to remove at the end, also after a failure
    try:
        run_phases(args, report, work, device, model, cleanup)
    finally:
        for folder in cleanup:
            shutil.rmtree(folder, ignore_errors=True)
    _write(args.out, "gpu_serve", report)
    return report


if __name__ == "__main__":
    main()
