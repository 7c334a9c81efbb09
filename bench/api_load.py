"""API throughput under concurrency: micro-batching on vs batch-1 serving, in one run.

    .venv/bin/python bench/api_load.py [--model vits16|tiny] [--variant int8|fp32] [--seconds 8]

Packages a model (random init: speed only) with the real export path, indexes labelled synthetic
images into an embedded Qdrant, then for batching on and off starts a real `dinoserve serve`
(uvicorn) on loopback and drives `POST /embed` and `POST /classify` with 1, 8 and 32 concurrent
clients (httpx, one image per request) for a fixed time each. Reports req/s, p50/p99 latency
and errors per cell, and the on/off throughput ratio. Goal (issue 5): ≥ 2.5× at 32 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.train_knn_cpu import cpu_model  # noqa: E402
from training.synthetic import draw_shape, make_synthetic  # noqa: E402


def package_model(name: str, variant: str, models: Path) -> Path:
    from core.vit import build_vit
    from training.backbone import backbone_kwargs
    from training.config import load_config
    from training.export import write_package

    if name == "vits16":
        arch, kwargs = "vit_small_patch16_224", {"num_classes": 0, "global_pool": "token",
                                                 "dynamic_img_size": True}  # fmt: skip
        mean, std, crop = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875
    else:
        cfg = load_config(ROOT / "configs" / "tiny.yaml")
        arch, kwargs = cfg.model.arch, backbone_kwargs(cfg.model)
        mean, std, crop = cfg.crops.mean, cfg.crops.std, cfg.eval.crop_pct
    meta = {"arch": arch, "timm_kwargs": kwargs, "mean": mean, "std": std, "crop_pct": crop,
            "provenance": {"source": "bench/api_load.py (random init)"}}  # fmt: skip
    return write_package(build_vit(arch, kwargs), meta, models, name,
                         "int8" if variant == "int8" else None)  # fmt: skip


def prepare_service(
    model: str, variant: str, images_per_class: int, collection: str, prefix: str
) -> tuple[Path, dict[str, str]]:
    """A packaged model and an indexed labelled collection in a fresh folder.

    Returns:
        The synthetic image folder, and the environment a `dinoserve serve` needs to use both.
    """
    work = Path(tempfile.mkdtemp(prefix=prefix))
    pkg = package_model(model, variant, work / "models")
    data = make_synthetic(work / "data", images_per_class, 64, seed=0)
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "DINOSERVE_MODEL": str(pkg),
        "DINOSERVE_QDRANT_PATH": str(work / "qdrant"),
        "DINOSERVE_COLLECTION": collection,
        "DINOSERVE_INDEX_DIR": str(work / "index"),
        "DINOSERVE_INFERENCE__ONNX_VARIANT": variant,
    }
    subprocess.run([sys.executable, "-m", "dinoserve", "index", str(data), "--labels", "dirs"],
                   env=env, cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    return data, env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """`dinoserve serve` on loopback, its log in a file (a pipe nobody reads would fill up and
    block the server during a long run); returns once /readyz answers 200."""
    out = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dinoserve", "serve", "--port", str(port)],
        env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


async def drive(url: str, endpoint: str, image: bytes, clients: int, seconds: float) -> dict:
    """`clients` concurrent loops, each sending one request at a time, for `seconds`."""
    field = "images" if endpoint == "embed" else "image"
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def loop() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await client.post(f"/{endpoint}", files={field: ("q.jpg", image, "image/jpeg")})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t_start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - t_start
    lat = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "req_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("vits16", "tiny"), default="vits16")
    ap.add_argument("--variant", choices=("int8", "fp32"), default="int8")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--endpoints", default="embed,classify")
    ap.add_argument("--images", type=int, default=30, help="indexed images per class")
    args = ap.parse_args(argv)
    _, env = prepare_service(args.model, args.variant, args.images, "bench", "api-load-")
    buf = io.BytesIO()
    draw_shape(3, np.random.default_rng(99), 64).save(buf, "JPEG", quality=90)
    image = buf.getvalue()

    rows = []
    for batching in ("true", "false"):
        port = free_port()
        log = Path(env["DINOSERVE_INDEX_DIR"]).parent / f"server-batching-{batching}.log"
        proc = start_server(env | {"DINOSERVE_SERVE__BATCHING": batching}, port, log)
        try:
            url = f"http://127.0.0.1:{port}"
            for endpoint in args.endpoints.split(","):
                asyncio.run(drive(url, endpoint, image, 4, 2.0))  # warm-up
                for clients in [int(c) for c in args.clients.split(",")]:
                    r = asyncio.run(drive(url, endpoint, image, clients, args.seconds))
                    rows.append({"endpoint": endpoint, "clients": clients,
                                 "batching": batching == "true", **r})  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    for row in rows:
        off = next(r for r in rows if not r["batching"] and r["endpoint"] == row["endpoint"]
                   and r["clients"] == row["clients"])  # fmt: skip
        row["on_vs_off"] = (
            round(row["req_per_s"] / off["req_per_s"], 2) if off["req_per_s"] else None
        )
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "command": "python bench/api_load.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "variant": args.variant,
        "rows": rows,
    }
    print(json.dumps(report))
    print("| endpoint | clients | batching | req/s | p50 ms | p99 ms | errors | on ÷ off |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['endpoint']} | {r['clients']} | {'on' if r['batching'] else 'off'} | "
              f"{r['req_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | "
              f"{r['on_vs_off'] if r['batching'] else ''} |")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
