"""API throughput under concurrency: micro-batching on vs batch-1 serving, in one run.

    .venv/bin/python -m bench.api_load [--model vits16|tiny|PACKAGE] [--variant int8|fp32]
        [--seconds 8] [--engine onnxruntime|torch] [--device auto|cpu|cuda]

Packages a model (random init: speed only) with the real export path, indexes labelled synthetic
images into an embedded Qdrant, then starts two real `dinoserve serve` (uvicorn) on loopback,
batching on and off, and drives `POST /embed` and `POST /classify` with 1, 8 and 32 concurrent
clients (httpx, one image per request). Each cell alternates between the two services for
`--rounds` rounds and takes the median req/s. Reports req/s, p50/p99 latency and errors per
cell, and the on/off throughput ratio. Goal (issue 5): ≥ 2.5× at 32 clients.

The same run first times the engine alone, in this process, at batch 1 and at the batcher's
largest batch: a micro-batcher can add at most that gain (less HTTP, decoding and JSON), so the
ratio tells whether the goal is within reach of the engine on this machine at all.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np

from bench.embed_throughput import median_throughput, random_package
from bench.train_knn_cpu import cpu_model
from core import package
from training.synthetic import draw_shape, make_synthetic

ROOT = Path(__file__).resolve().parents[1]


RANDOM_MODELS = ("vits16", "tiny")
MODEL_HELP = "vits16 or tiny at random init, or a model package directory (served as it is)"


def model_arg(value: str) -> str:
    """argparse type of --model: a random-init preset, or a package directory."""
    if value in RANDOM_MODELS or (Path(value) / package.META).is_file():
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is neither {RANDOM_MODELS} nor a model package")


def package_model(name: str, variant: str, models: Path) -> Path:
    """The package to serve: `name` (vits16 or tiny) at random init, packaged with the int8
    variant when asked, or `name` itself where it is a package (e.g. the shipped one)."""
    if name not in RANDOM_MODELS:
        meta = package.read_meta(Path(name))
        if variant not in meta.onnx:
            raise SystemExit(f"{name} has no {variant} variant (it has {', '.join(meta.onnx)})")
        return Path(name).resolve()
    quantize = "int8" if variant == "int8" else None
    return random_package(name, models, quantize, "bench/api_load.py (random init)")[1]


def prepare_service(
    model: str,
    variant: str,
    images_per_class: int,
    collection: str,
    prefix: str,
    engine: str = "onnxruntime",
    device: str = "auto",
) -> tuple[Path, dict[str, str]]:
    """A packaged model and an indexed labelled collection in a fresh folder.

    Returns:
        The synthetic image folder, and the environment a `dinoserve serve` needs to use both.
    """
    work = Path(tempfile.mkdtemp(prefix=prefix))
    pkg = package_model(model, variant, work / "models")
    data = make_synthetic(work / "data", images_per_class, 64, seed=0)
    env = os.environ | {
        # Keep what is there: on the device the service's own packages come from carried wheels.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "DINOSERVE_MODEL": str(pkg),
        "DINOSERVE_QDRANT_PATH": str(work / "qdrant"),
        "DINOSERVE_COLLECTION": collection,
        "DINOSERVE_INDEX_DIR": str(work / "index"),
        "DINOSERVE_INFERENCE__ONNX_VARIANT": variant,
        "DINOSERVE_ENGINE": engine,
        "DINOSERVE_INFERENCE__DEVICE": device,
    }
    subprocess.run(
        [sys.executable, "-m", "dinoserve", "index", str(data), "--labels", "dirs"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return data, env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    env: dict[str, str], port: int, log: Path, cpus: set[int] | None = None
) -> subprocess.Popen:
    """`dinoserve serve` on loopback, its log in a file (a pipe nobody reads would fill up and
    block the server during a long run); returns once /readyz answers 200.

    Args:
        cpus: pin the server to these CPUs (Linux), e.g. to keep the load generator off them.
    """
    out = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dinoserve", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
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


def engine_batch_gain(env: dict[str, str], max_batch: int, seconds: float, rounds: int = 3) -> dict:
    """Images/s of the served engine alone at batch 1 and at `max_batch`, with the settings the
    server will use (same package, engine, variant, device and threads)."""
    from core.engine_choice import load_engine
    from core.settings import InferenceSettings

    inference = InferenceSettings(
        onnx_variant=env["DINOSERVE_INFERENCE__ONNX_VARIANT"],
        device=env["DINOSERVE_INFERENCE__DEVICE"],
    )  # the rest as the server has them: its defaults
    engine = load_engine(Path(env["DINOSERVE_MODEL"]), env["DINOSERVE_ENGINE"], inference)
    size = engine.meta.img_size
    rng = np.random.default_rng(0)
    cases = {
        b: (engine, rng.standard_normal((b, 3, size, size)).astype(np.float32))
        for b in (1, max_batch)
    }
    rates, _ = median_throughput(cases, seconds, rounds)
    return {
        "batch_1_img_s": round(rates[1], 1),
        f"batch_{max_batch}_img_s": round(rates[max_batch], 1),
        "gain": round(rates[max_batch] / rates[1], 2),
    }


async def closed_loops(
    url: str,
    send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]],
    clients: int,
    seconds: float,
) -> dict:
    """`clients` concurrent loops, each awaiting `send(client)` one request at a time, for
    `seconds`; the latency of every 200, the count of other answers, and the 200s per second."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def loop() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await send(client)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t_start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - t_start
    return {"latencies": latencies, "errors": errors, "req_per_s": len(latencies) / elapsed}


async def drive(url: str, endpoint: str, image: bytes, clients: int, seconds: float) -> dict:
    """`clients` closed loops posting `image` to `/endpoint` (embed or classify)."""
    field = "images" if endpoint == "embed" else "image"
    files = {field: ("q.jpg", image, "image/jpeg")}
    return await closed_loops(url, lambda c: c.post(f"/{endpoint}", files=files), clients, seconds)


def summarize(runs: list[dict]) -> dict:
    """One cell from its rounds: the median req/s, every round's, and pooled latencies."""
    lat = np.concatenate([np.asarray(r["latencies"], dtype=float) for r in runs]) * 1000
    return {
        "requests": len(lat),
        "errors": sum(r["errors"] for r in runs),
        "req_per_s": round(float(np.median([r["req_per_s"] for r in runs])), 2),
        "rounds_req_per_s": [round(r["req_per_s"], 2) for r in runs],
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=model_arg, default="vits16", help=MODEL_HELP)
    ap.add_argument("--variant", choices=("int8", "fp32"), default="int8")
    ap.add_argument("--seconds", type=float, default=12.0, help="per cell and mode, all rounds")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--endpoints", default="embed,classify")
    ap.add_argument("--images", type=int, default=30, help="indexed images per class")
    ap.add_argument("--engine", choices=("onnxruntime", "torch"), default="onnxruntime")
    ap.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="the torch engine's device (GPU: --engine torch)",
    )
    ap.add_argument("--max-batch", type=int, default=32, help="the batcher's largest batch")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell (median)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (model, store, logs)")
    args = ap.parse_args(argv)
    data, env = prepare_service(
        args.model, args.variant, args.images, "bench", "api-load-", args.engine, args.device
    )
    work = data.parent
    try:
        report = measure(args, env, argv)
    except BaseException:
        print(f"work folder kept: {work}", file=sys.stderr)
        raise
    if args.keep:
        print(f"work folder kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return report


def measure(args: argparse.Namespace, env: dict[str, str], argv: list[str] | None) -> dict:
    """The engine alone, then both services under every cell; prints and returns the report."""
    env["DINOSERVE_SERVE__MAX_BATCH"] = str(args.max_batch)
    gain = engine_batch_gain(env, args.max_batch, min(3 * args.seconds, 12.0))
    print(json.dumps({"engine_alone": gain}), flush=True)
    buf = io.BytesIO()
    draw_shape(3, np.random.default_rng(99), 64).save(buf, "JPEG", quality=90)
    image = buf.getvalue()

    # Both services run side by side and each cell alternates between them round by round, so a
    # slow spell of this shared machine touches both modes alike; a cell's req/s is the median.
    servers = {}
    try:
        for mode in ("on", "off"):
            port = free_port()
            log = Path(env["DINOSERVE_INDEX_DIR"]).parent / f"server-batching-{mode}.log"
            # The embedded store admits one process: each service gets its own copy.
            store = Path(f"{env['DINOSERVE_QDRANT_PATH']}-{mode}")
            # cp --sparse: Edge's preallocated files would be written out in full by copytree
            src = env["DINOSERVE_QDRANT_PATH"]
            subprocess.run(["cp", "-a", "--sparse=always", src, str(store)], check=True)
            mode_env = env | {
                "DINOSERVE_SERVE__BATCHING": "true" if mode == "on" else "false",
                "DINOSERVE_QDRANT_PATH": str(store),
            }
            servers[mode] = (start_server(mode_env, port, log), f"http://127.0.0.1:{port}")
        rows = []
        for endpoint in args.endpoints.split(","):
            for _, url in servers.values():
                asyncio.run(drive(url, endpoint, image, 4, min(2.0, args.seconds)))  # warm-up
            for clients in [int(c) for c in args.clients.split(",")]:
                runs: dict[str, list[dict]] = {"on": [], "off": []}
                for _ in range(args.rounds):
                    for mode, (_, url) in servers.items():
                        seconds = args.seconds / args.rounds
                        runs[mode].append(
                            asyncio.run(drive(url, endpoint, image, clients, seconds))
                        )
                for mode, cell in runs.items():
                    rows.append(
                        {
                            "endpoint": endpoint,
                            "clients": clients,
                            "batching": mode == "on",
                            **summarize(cell),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    for row in rows:
        off = next(
            r
            for r in rows
            if not r["batching"]
            and r["endpoint"] == row["endpoint"]
            and r["clients"] == row["clients"]
        )
        row["on_vs_off"] = (
            round(row["req_per_s"] / off["req_per_s"], 2) if off["req_per_s"] else None
        )
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "command": "python -m bench.api_load "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "variant": args.variant,
        "engine": args.engine,
        "device": args.device,
        "engine_alone": gain,
        "rows": rows,
    }
    print(json.dumps(report))
    print(
        f"engine alone: {gain['batch_1_img_s']} img/s at batch 1, "
        f"{gain[f'batch_{args.max_batch}_img_s']} at batch {args.max_batch}: "
        f"{gain['gain']}× is the most batching can add"
    )
    print("| endpoint | clients | batching | req/s | p50 ms | p99 ms | errors | on ÷ off |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['endpoint']} | {r['clients']} | {'on' if r['batching'] else 'off'} | "
            f"{r['req_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | "
            f"{r['on_vs_off'] if r['batching'] else ''} |"
        )
    return report


if __name__ == "__main__":
    main()
