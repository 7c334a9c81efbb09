"""What one request costs the service itself: CPU time of the server process per request.

    .venv/bin/python -m bench.server_cost [--model tiny|vits16|PACKAGE] [--clients 12] [--seconds 5]

The server runs pinned to CPU 0 and the load generator (httpx, this process) to CPU 1, so the
server's CPU time is not shared with the clients'. The engine runs on one thread. For each route
— `GET /healthz` (framework, middlewares, metrics), `GET /model`, `POST /embed` with one 64-px
JPEG — it reports req/s and the server's CPU milliseconds per request (from /proc). In the same
run, the engine alone on CPU 0 gives the engine's share of `/embed`. Linux, ≥ 2 CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench.api_load import (
    MODEL_HELP,
    closed_loops,
    drive,
    free_port,
    model_arg,
    prepare_service,
    start_server,
)
from bench.embed_throughput import median_throughput
from bench.train_knn_cpu import cpu_model
from training.synthetic import draw_shape

SERVER_CPU, CLIENT_CPU = 0, 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_alone(env: dict[str, str], seconds: float) -> dict[str, float]:
    """Images/s of the served engine on one thread on the server's CPU, at batch 1 and 12."""
    from core.engine_choice import load_engine
    from core.settings import InferenceSettings

    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {SERVER_CPU})
    try:
        variant = env["DINOSERVE_INFERENCE__ONNX_VARIANT"]
        settings = InferenceSettings(intra_op_threads=1, inter_op_threads=1, onnx_variant=variant)
        engine = load_engine(Path(env["DINOSERVE_MODEL"]), "onnxruntime", settings)
        size = engine.meta.img_size
        rng = np.random.default_rng(0)
        cases = {
            b: (engine, rng.standard_normal((b, 3, size, size)).astype(np.float32)) for b in (1, 12)
        }
        rates, _ = median_throughput(cases, seconds, 3)
        out = {f"batch_{b}_img_s": round(rate, 1) for b, rate in rates.items()}
        return out
    finally:
        os.sched_setaffinity(0, before)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=model_arg, default="tiny", help=MODEL_HELP)
    ap.add_argument("--variant", choices=("fp32", "int8"), default="fp32")
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=5.0, help="per route")
    ap.add_argument("--images", type=int, default=5, help="indexed images per class")
    ap.add_argument(
        "--engine-seconds",
        type=float,
        default=3.0,
        help="per batch size and round when the engine alone is timed (3 rounds, batch 1 and 12)",
    )
    args = ap.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2 or not {SERVER_CPU, CLIENT_CPU} <= os.sched_getaffinity(0):
        raise SystemExit("needs CPUs 0 and 1: the server and the clients each get one")
    data, env = prepare_service(args.model, args.variant, args.images, "bench", "server-cost-")
    work = data.parent
    env |= {
        "DINOSERVE_INFERENCE__INTRA_OP_THREADS": "1",
        "DINOSERVE_INFERENCE__INTER_OP_THREADS": "1",
    }
    buf = io.BytesIO()
    draw_shape(3, np.random.default_rng(99), 64).save(buf, "JPEG", quality=90)
    image = buf.getvalue()
    rows = []
    port = free_port()
    proc = start_server(env, port, work / "server.log", cpus={SERVER_CPU})
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CLIENT_CPU})
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(drive(url, "embed", image, 4, 1.0))  # warm-up
        for route in ("GET /healthz", "GET /model", "POST /embed"):
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            if route == "POST /embed":
                result = asyncio.run(drive(url, "embed", image, args.clients, args.seconds))
            else:
                path = route.split()[1]
                result = asyncio.run(
                    closed_loops(url, lambda c, p=path: c.get(p), args.clients, args.seconds)
                )
            n = len(result["latencies"])
            elapsed, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
            rows.append(
                {
                    "route": route,
                    "requests": n,
                    "req_per_s": round(n / elapsed, 1),
                    "server_cpu_ms_per_request": round(1000 * cpu / max(n, 1), 3),
                    "server_cpu_busy_pct": round(100 * cpu / elapsed),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    finally:
        os.sched_setaffinity(0, before)
        proc.terminate()
        proc.wait(timeout=30)
    engine = engine_alone(env, args.engine_seconds)
    shutil.rmtree(work, ignore_errors=True)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "command": "python -m bench.server_cost "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "variant": args.variant,
        "clients": args.clients,
        "engine_alone_one_thread": engine,
        "rows": rows,
    }
    print(json.dumps(report))
    print(f"engine alone on one thread: {engine}")
    print("| route | req/s | server CPU ms / request | server CPU busy |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['route']} | {r['req_per_s']} | {r['server_cpu_ms_per_request']} | "
            f"{r['server_cpu_busy_pct']} % |"
        )
    return report


if __name__ == "__main__":
    main()
