"""`/classify` end to end as a user meets it: CIFAR-10's training images indexed with labels into
the embedded store (Qdrant Edge), then one client classifying held-out images in a loop.

    .venv/bin/python -m bench.classify_e2e --tar ../shared/data/cifar10-train.tar.gz

The tiny preset at random init (the store's cost does not depend on the weights; accuracy is not
the point here) is packaged by the real export path; the last `--holdout` images of each class are
the queries, the other 45,000 the labelled memory. Reported: indexing rate, classifications per
second from one client (keep-alive), and where a request's time goes, each part timed alone in
this process on the same data: decoding + preprocessing, the engine at batch 1, the store's
k-NN search (k = 20 over labelled points) on Edge — and, as the baseline in the same run, the
same search on qdrant-client's local mode (the previous embedded store) holding the same points.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import numpy as np

from bench.api_load import free_port, package_model, start_server
from bench.store_scale import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def extract(tar: Path, out: Path, holdout: int) -> tuple[Path, list[tuple[Path, str]]]:
    """The archive's class folders under out/memory, minus the last `holdout` of each class,
    which are returned as (path, label) queries."""
    with tarfile.open(tar) as t:
        t.extractall(out / "raw", filter="data")
    classes = sorted(p for p in (out / "raw").rglob("*") if p.is_dir() and any(p.glob("*.jpg")))
    memory, queries = out / "memory", []
    for c in classes:
        files = sorted(c.glob("*.jpg"))
        (memory / c.name).mkdir(parents=True)
        for f in files[:-holdout]:
            f.rename(memory / c.name / f.name)
        queries += [(f, c.name) for f in files[-holdout:]]
    return memory, queries


def median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def parts(env: dict[str, str], queries: list[tuple[Path, str]], n: int) -> dict[str, float]:
    """Where a request's time goes, each part alone (the service is stopped)."""
    from qdrant_client import QdrantClient

    from core.engine_choice import load_engine
    from core.engines import preprocess_batch
    from core.images import decode_image
    from core.package import read_meta
    from core.settings import Settings
    from core.store import Layout, Match, open_store
    from core.store.server import ServerStore

    settings = Settings()
    pkg = Path(env["DINOSERVE_MODEL"])
    meta, engine = read_meta(pkg), load_engine(pkg, "onnxruntime", settings.inference)
    data = [q.read_bytes() for q, _ in queries[:n]]
    batch = preprocess_batch(meta, [decode_image(data[0], settings.max_pixels)])
    vectors = [engine.embed(preprocess_batch(meta, [decode_image(d, 10**8)]))[0] for d in data]
    i = iter(range(10**9))
    out = {
        "decode_preprocess_ms": median_ms(
            lambda: preprocess_batch(meta, [decode_image(data[next(i) % n], 10**8)]), n
        ),
        "engine_ms": median_ms(lambda: engine.embed(batch), n),
    }
    db = open_store(settings)
    physical = db.resolve(env["DINOSERVE_COLLECTION"])
    match = Match(labelled_only=True)
    out["edge_search_ms"] = median_ms(
        lambda: db.search(physical, vectors[next(i) % n], 20, match), n
    )
    # The baseline: the same points in local mode (the previous embedded store).
    local_dir = Path(env["DINOSERVE_QDRANT_PATH"] + "-local")
    local = ServerStore(QdrantClient(path=str(local_dir)), str(local_dir), Layout())
    local.create_physical(physical, db.dim(physical))
    offset = None
    while True:
        points, offset = db.scroll(physical, None, offset, 1000, vectors=True)
        local.upsert(
            physical,
            [p.id for p in points],
            np.asarray([p.vector for p in points]),
            [p.payload for p in points],
        )
        if offset is None:
            break
    db.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = min(n, 30)  # local mode's scans are slow
        out["local_mode_search_ms"] = median_ms(
            lambda: local.search(physical, vectors[next(i) % m], 20, match), m
        )
    local.close()
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tar", required=True, help="cifar10-train.tar.gz")
    p.add_argument("--holdout", type=int, default=500, help="queries per class")
    p.add_argument("--requests", type=int, default=500, help="classifications in the loop")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="classify-e2e-"))
    try:
        memory, queries = extract(Path(args.tar), work, args.holdout)
        pkg = package_model("tiny", "fp32", work / "models")
        env = os.environ | {
            "PYTHONPATH": str(ROOT),
            "DINOSERVE_MODEL": str(pkg),
            "DINOSERVE_QDRANT_PATH": str(work / "qdrant"),
            "DINOSERVE_COLLECTION": "cifar",
            "DINOSERVE_INDEX_DIR": str(work / "index"),
        }
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dinoserve",
                "index",
                str(memory),
                "--labels",
                "dirs",
                "--batch",
                "256",
            ],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        index_s = time.perf_counter() - t
        n_memory = sum(1 for _ in memory.rglob("*.jpg"))
        port = free_port()
        proc = start_server(env | {"DINOSERVE_SERVE__ACCESS_LOG": "false"}, port, work / "log")
        try:
            url = f"http://127.0.0.1:{port}/classify"
            rng = np.random.default_rng(0)
            picks = rng.choice(len(queries), args.requests, replace=False)
            bodies = [(queries[j][0].read_bytes(), queries[j][1]) for j in picks]
            lat, correct = [], 0
            with httpx.Client(timeout=30) as client:
                client.post(url, files={"image": ("w.jpg", bodies[0][0])})  # warm-up
                t0 = time.perf_counter()
                for data, label in bodies:
                    t = time.perf_counter()
                    r = client.post(url, files={"image": ("q.jpg", data)})
                    lat.append(time.perf_counter() - t)
                    r.raise_for_status()
                    correct += r.json()["label"] == label
                loop_s = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        os.environ.update({k: v for k, v in env.items() if k.startswith("DINOSERVE_")})
        result = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "cpu": cpu_model(),
            "command": shlex.join(
                [sys.executable, "-m", "bench.classify_e2e", *(argv or sys.argv[1:])]
            ),
            "indexed": n_memory,
            "index_s": index_s,
            "index_per_s": n_memory / index_s,
            "requests": args.requests,
            "classify_per_s": args.requests / loop_s,
            "p50_ms": 1e3 * float(np.percentile(lat, 50)),
            "p99_ms": 1e3 * float(np.percentile(lat, 99)),
            "accuracy_random_init": correct / args.requests,
            "parts": parts(env, [q for q in queries], 100),
        }
        print(json.dumps(result, indent=1))
        return result
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
