"""Soak: a bounded mixed load on loopback — no 5xx, bounded memory, tail latency.

    .venv/bin/python -m bench.soak [--clients 64] [--seconds 60] [--warmup 15]
        [--model tiny|PACKAGE]

Packages a model (random init: the tiny preset by default, so two CPU cores keep up), indexes
labelled synthetic images into an embedded Qdrant, starts a real `dinoserve serve` (uvicorn) and
drives it with `--clients` concurrent clients (httpx, one request at a time each) that draw from
a fixed mix of every endpoint — embed (multipart and JSON), classify, search (GET and POST),
attention (JSON and PNG), thumbnails, probes, model card, metrics — and some bad requests that
must be answered 4xx (counted apart). The warm-up fills the largest batches once, then runs the
mix. The server's RSS (VmRSS of its process) is read after the warm-up and at the end, and every
5 s to tell a plateau from a slope. Reports requests, 2xx/4xx/5xx and transport errors, p50/p99
per endpoint and overall, and the RSS growth. Exits 1 on any 5xx, any unexpected status or a
growth of 10 % or more.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.api_load import MODEL_HELP, free_port, model_arg, prepare_service, start_server
from bench.train_knn_cpu import cpu_model
from training.synthetic import draw_shape


@dataclass
class Op:
    """One kind of request: its weight in the mix and the status class it must get."""

    name: str
    weight: int
    build: Callable[[], dict[str, Any]]  # httpx.request kwargs
    expect: int = 2  # status // 100


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    status: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # transport error type → count


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class RssSampler:
    """Reads a process's RSS every `every` seconds in a thread (is it a plateau or a slope?)."""

    def __init__(self, pid: int, every: float = 5.0) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []  # (seconds since start, KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((round(time.perf_counter() - self._t0, 1), rss_kib(self.pid)))
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def jpeg(i: int, size: int = 96) -> bytes:
    buf = io.BytesIO()
    draw_shape(i % 10, np.random.default_rng(1000 + i), size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def request_mix(ids: list[str], uris: list[str]) -> list[Op]:
    """The mix: mostly real work, some cheap routes, ~10 % bad requests."""
    pics = [jpeg(i) for i in range(16)]
    b64 = [base64.b64encode(p).decode() for p in pics]
    rnd = random.Random(0)

    def pic() -> bytes:
        return rnd.choice(pics)

    ops = [
        Op(
            "embed",
            10,
            lambda: {
                "method": "POST",
                "url": "/embed",
                "files": [("images", ("a.jpg", pic())), ("images", ("b.jpg", pic()))],
            },
        ),
        Op(
            "embed_json",
            5,
            lambda: {"method": "POST", "url": "/embed", "json": {"images": rnd.sample(b64, 2)}},
        ),
        Op(
            "classify",
            12,
            lambda: {
                "method": "POST",
                "url": "/classify?k=10",
                "files": {"image": ("q.jpg", pic())},
            },
        ),
        Op(
            "search_post",
            8,
            lambda: {"method": "POST", "url": "/search?k=8", "files": {"image": ("q.jpg", pic())}},
        ),
        Op(
            "search_get",
            10,
            lambda: {
                "method": "GET",
                "url": "/search",
                "params": {"image": rnd.choice(ids), "k": 8},
            },
        ),
        Op(
            "search_get_uri",
            3,
            lambda: {
                "method": "GET",
                "url": "/search",
                "params": {"image": rnd.choice(uris), "k": 4},
            },
        ),
        Op(
            "attention_json",
            5,
            lambda: {"method": "POST", "url": "/attention", "files": {"image": ("q.jpg", pic())}},
        ),
        Op(
            "attention_png",
            3,
            lambda: {
                "method": "POST",
                "url": "/attention?format=png",
                "files": {"image": ("q.jpg", pic())},
            },
        ),
        Op("images", 10, lambda: {"method": "GET", "url": f"/images/{rnd.choice(ids)}"}),
        Op("healthz", 4, lambda: {"method": "GET", "url": "/healthz"}),
        Op("readyz", 2, lambda: {"method": "GET", "url": "/readyz"}),
        Op("model", 3, lambda: {"method": "GET", "url": "/model"}),
        Op("metrics", 1, lambda: {"method": "GET", "url": "/metrics"}),
        # bad requests: each must be a 4xx
        Op(
            "bad_image",
            3,
            lambda: {
                "method": "POST",
                "url": "/embed",
                "files": {"images": ("x.png", os.urandom(512))},
            },
            4,
        ),
        Op(
            "bad_param",
            3,
            lambda: {
                "method": "POST",
                "url": "/classify?k=0",
                "files": {"image": ("q.jpg", pic())},
            },
            4,
        ),
        Op(
            "bad_json",
            2,
            lambda: {
                "method": "POST",
                "url": "/search",
                "content": b'{"image": [',
                "headers": {"content-type": "application/json"},
            },
            4,
        ),
        Op(
            "bad_type",
            1,
            lambda: {
                "method": "POST",
                "url": "/attention",
                "content": pic(),
                "headers": {"content-type": "text/plain"},
            },
            4,
        ),
        Op(
            "unknown_id",
            2,
            lambda: {
                "method": "GET",
                "url": "/search",
                "params": {"image": "http://127.0.0.1:1/nope"},
            },
            4,
        ),
        Op("traversal", 1, lambda: {"method": "GET", "url": "/images/..%2f..%2fetc%2fpasswd"}, 4),
    ]
    return ops


async def drive(
    url: str, ops: list[Op], clients: int, seconds: float, seed: int = 0
) -> dict[str, Tally]:
    """`clients` concurrent loops, each one request at a time drawn from `ops`, for `seconds`."""
    tallies = {op.name: Tally() for op in ops}
    weights = [op.weight for op in ops]
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def loop(i: int) -> None:
            rnd = random.Random(seed * 1000 + i)
            while time.perf_counter() < stop:
                op = rnd.choices(ops, weights)[0]
                t = tallies[op.name]
                t0 = time.perf_counter()
                try:
                    r = await client.request(**op.build())
                except httpx.HTTPError as exc:
                    t.transport_errors += 1
                    kind = type(exc).__name__
                    t.errors[kind] = t.errors.get(kind, 0) + 1
                    continue
                t.latencies.append(time.perf_counter() - t0)
                t.status[r.status_code] = t.status.get(r.status_code, 0) + 1

        await asyncio.gather(*(loop(i) for i in range(clients)))
    return tallies


async def peak_bursts(url: str, ops: list[Op], rounds: int = 3) -> None:
    """Requests that fill the engine's largest batches (32 images) for embed and attention, so
    the allocations that ratchet up to a peak (ONNX Runtime's arena, the batch buffers) reach
    it during the warm-up rather than in the measured period."""
    pic = jpeg(0)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for _ in range(rounds):
            files = [("images", (f"{i}.jpg", pic)) for i in range(16)]
            await asyncio.gather(*(client.post("/embed", files=files) for _ in range(8)))
            for fmt in ("json", "png"):
                await asyncio.gather(
                    *(
                        client.post(f"/attention?format={fmt}", files={"image": ("q.jpg", pic)})
                        for _ in range(64)
                    )
                )


def summarise(ops: list[Op], tallies: dict[str, Tally], elapsed: float) -> dict[str, Any]:
    rows, every = [], []
    unexpected = 0
    for op in ops:
        t = tallies[op.name]
        lat = np.asarray(t.latencies) * 1000
        every.extend(t.latencies)
        by_class = {c: sum(n for s, n in t.status.items() if s // 100 == c) for c in (2, 3, 4, 5)}
        bad = sum(n for s, n in t.status.items() if s // 100 != op.expect)
        unexpected += bad
        rows.append(
            {
                "endpoint": op.name,
                "requests": len(t.latencies),
                "2xx": by_class[2],
                "4xx": by_class[4],
                "5xx": by_class[5],
                "unexpected": bad,
                "transport_errors": t.transport_errors,
                "transport_error_types": t.errors,
                "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
                "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
                "statuses": {str(k): v for k, v in sorted(t.status.items())},
            }
        )
    lat = np.asarray(every) * 1000
    total = {
        "requests": len(every),
        "req_per_s": round(len(every) / elapsed, 1),
        "2xx": sum(r["2xx"] for r in rows),
        "4xx": sum(r["4xx"] for r in rows),
        "4xx_expected": sum(r["4xx"] for r, op in zip(rows, ops, strict=True) if op.expect == 4),
        "5xx": sum(r["5xx"] for r in rows),
        "unexpected": unexpected,
        "transport_errors": sum(r["transport_errors"] for r in rows),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
    }
    return {"total": total, "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=model_arg, default="tiny", help=MODEL_HELP)
    ap.add_argument("--variant", choices=("int8", "fp32"), default="fp32")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--images", type=int, default=30, help="indexed images per class")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (model, store, logs)")
    args = ap.parse_args(argv)
    data, env = prepare_service(args.model, args.variant, args.images, "soak", "soak-")
    work = data.parent
    try:
        report = soak(args, data, env, argv)
    except BaseException:
        print(f"work folder kept: {work}", file=sys.stderr)
        raise
    if args.keep or not report["ok"]:
        print(f"work folder kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return report


def soak(args: argparse.Namespace, data: Path, env: dict[str, str], argv: list[str] | None) -> dict:
    """Drive one service with the request mix; prints and returns the report."""
    work = data.parent
    uris = sorted(str(p) for p in data.rglob("*.png"))
    from core.store import point_id

    ids = [point_id(u) for u in uris]
    port = free_port()
    proc = start_server(env, port, work / "server.log")
    try:
        url = f"http://127.0.0.1:{port}"
        ops = request_mix(ids, uris)
        rss_start = rss_kib(proc.pid)
        with RssSampler(proc.pid) as sampler:
            asyncio.run(peak_bursts(url, ops))
            asyncio.run(drive(url, ops, args.clients, args.warmup, seed=1))
            rss_before = rss_kib(proc.pid)
            t0 = time.perf_counter()
            tallies = asyncio.run(drive(url, ops, args.clients, args.seconds, seed=2))
            elapsed = time.perf_counter() - t0
            rss_after = rss_kib(proc.pid)
        alive = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = summarise(ops, tallies, elapsed)
    growth = (rss_after - rss_before) / rss_before * 100
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "command": "python -m bench.soak " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "variant": args.variant,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "rss_idle_mib": round(rss_start / 1024, 1),  # ready, before any request
        "rss_before_mib": round(rss_before / 1024, 1),  # after the warm-up
        "rss_after_mib": round(rss_after / 1024, 1),
        "rss_growth_pct": round(growth, 2),
        "server_alive": alive,
        "rss_mib_every_5s": [round(kib / 1024, 1) for _, kib in sampler.samples],
        **result,
    }
    print(json.dumps(report))
    t = result["total"]
    print(
        f"requests {t['requests']} ({t['req_per_s']}/s), 2xx {t['2xx']}, 4xx {t['4xx']} "
        f"(expected {t['4xx_expected']}), 5xx {t['5xx']}, unexpected {t['unexpected']}, "
        f"transport errors {t['transport_errors']}; p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms; "
        f"RSS {report['rss_before_mib']} → {report['rss_after_mib']} MiB "
        f"({growth:+.1f} %)"
    )
    print("| endpoint | requests | 2xx | 4xx | 5xx | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['endpoint']} | {r['requests']} | {r['2xx']} | {r['4xx']} | {r['5xx']} | "
            f"{r['p50_ms']} | {r['p99_ms']} |"
        )
    ok = alive and t["5xx"] == 0 and t["unexpected"] == 0 and growth < 10
    report["ok"] = ok
    if not ok:
        print("SOAK FAILED", file=sys.stderr)
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
