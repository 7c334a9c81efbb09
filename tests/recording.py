"""Record what the service and the CLI answer, to compare two versions of the code byte for byte.

`python -m tests.recording OUT [--fixtures DIR]` sends a fixed request set over every route
(valid and invalid requests, jobs followed to their end) and writes one file per request
(status, content type and body), the OpenAPI document, and the CLI's `--help` texts and
outputs. A restructure that changes no behaviour leaves `diff -r before after` empty.

The fixtures (synthetic images, a trained micro package and a store indexed with it) are built
once into DIR by the first run and reused, so both versions see the same bytes. What differs
between two runs by nature is masked in the bodies: job ids (uuid4 is seeded here), wall-clock
times and durations (`*_at`, `seconds`). Not collected by pytest (no `test_` prefix).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "admin-key"
TIMES = re.compile(r'"(\w*_at|seconds|elapsed_s|uptime_s)": ?("[^"]*"|[0-9.e+-]+)')
PROM_VALUE = re.compile(r"^([a-zA-Z_:][^ ]*(\{.*\})?) \S+$", re.M)
RATES = re.compile(r"\b\d+(\.\d+)? ?(s|img/s|images/s)\b")


def build_fixtures(fx: Path) -> None:
    """Synthetic images, a 2-step micro run exported twice (two versions, for a refresh), and
    a store with `shapes` (labelled) and `nolabels`."""
    from tests.conftest import MICRO, TINY_PRESET
    from training.config import load_config
    from training.export import export_run
    from training.synthetic import make_synthetic
    from training.train import Trainer

    images = make_synthetic(fx / "synthetic", 6, 32, seed=1)
    run = fx / "run"
    cfg = load_config(
        TINY_PRESET,
        [*MICRO, f"data.train={images}", f"data.cache_dir={fx / 'cache'}", "run.max_steps=2"],
    )
    Trainer(cfg, run).fit()
    export_run(run, fx / "models", "micro")
    export_run(run, fx / "models", "micro", activate=False)  # a newer version to refresh to
    (fx / "samples").mkdir()
    for png in sorted(images.rglob("*.png"))[::6]:
        shutil.copy(png, fx / "samples" / f"{png.parent.name}-{png.name}")
    env = {**os.environ, **fixture_env(fx, fx / "qdrant")}
    for args in (
        [str(images), "--labels", "dirs", "--collection", "shapes"],
        [str(images / "circle"), "--collection", "nolabels"],
    ):
        subprocess.run(
            [*cli(), "index", *args, "--batch", "16", "--workers", "1"],
            env=env,
            check=True,
            capture_output=True,
        )


def cli() -> list[str]:
    return [sys.executable, "-m", "dinoserve"]


def fixture_env(fx: Path, work: Path) -> dict[str, str]:
    return {
        "DINOSERVE_MODELS_DIR": str(work / "models")
        if (work / "models").exists()
        else str(fx / "models"),
        "DINOSERVE_MODEL": "micro",
        "DINOSERVE_QDRANT_PATH": str(work / "qdrant") if work.name != "qdrant" else str(work),
        "DINOSERVE_COLLECTION": "shapes",
        "DINOSERVE_INFERENCE__INTRA_OP_THREADS": "1",
        "DINOSERVE_INFERENCE__INTER_OP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),  # this checkout's code, not the installed one
    }


def fresh_work(fx: Path, work: Path) -> Path:
    """A private copy of the store and the registry (requests write to both)."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    subprocess.run(
        ["cp", "-a", "--sparse=always", str(fx / "qdrant"), str(work / "qdrant")], check=True
    )
    shutil.copytree(fx / "models", work / "models")
    return work


def seed_uuid4() -> None:
    """Job ids from uuid4 become a counter, so two runs name their jobs alike."""
    counter = iter(range(1, 1_000_000))
    uuid.uuid4 = lambda: uuid.UUID(int=next(counter))  # type: ignore[assignment]


def mask(text: str) -> str:
    """Times, durations and rates masked (they differ between any two runs)."""
    return RATES.sub("<t>", TIMES.sub(lambda m: f'"{m.group(1)}": "<t>"', text))


class Recorder:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.n = 0
        out.mkdir(parents=True, exist_ok=True)

    def save(self, name: str, text: str) -> None:
        self.n += 1
        (self.out / f"{self.n:03d}-{name}").write_text(text)

    def response(self, name: str, r) -> dict | None:
        ctype = r.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            body = mask(r.text)
        elif ctype.startswith("text/plain") and "version=" in ctype:  # Prometheus: names only
            body = PROM_VALUE.sub(r"\1", r.text)
        elif ctype.startswith("text/"):
            body = r.text
        else:
            body = f"<{len(r.content)} bytes> " + base64.b64encode(r.content[:64]).decode()
        keep = {k: v for k, v in r.headers.items() if k.lower() in ("allow", "retry-after")}
        self.save(f"{name}.txt", f"{r.status_code} {ctype} {keep}\n{body}\n")
        return r.json() if ctype.startswith("application/json") else None


def record_api(fx: Path, rec: Recorder, work: Path) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app
    from core.settings import Settings

    pngs = sorted((fx / "synthetic").rglob("*.png"))
    png = pngs[0].read_bytes()
    b64 = base64.b64encode(png).decode()
    env = fixture_env(fx, work)
    settings = Settings(
        models_dir=env["DINOSERVE_MODELS_DIR"],
        model="micro",
        qdrant_path=env["DINOSERVE_QDRANT_PATH"],
        collection="shapes",
        inference={"intra_op_threads": 1, "inter_op_threads": 1},
        serve={"max_wait_ms": 2.0},
        admin_api_key=ADMIN,
        samples_dir=fx / "samples",
        blob_dir=work / "blobs",
        discovery={"clusters_dir": work / "clusters"},
    )
    admin = {"X-API-Key": ADMIN}
    file = lambda field, data=png: {field: ("a.png", data, "image/png")}  # noqa: E731
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        rec.save("openapi.json", json.dumps(c.get("/openapi.json").json(), indent=1))
        r = rec.response
        r("healthz", c.get("/healthz"))
        r("readyz", c.get("/readyz"))
        r("model", c.get("/model"))
        r("page", c.get("/"))
        r("docs", c.get("/docs"))
        r("no-route", c.get("/nope"))
        r("wrong-method", c.put("/classify"))
        samples = r("samples", c.get("/samples"))
        first = (samples or {}).get("samples", [{}])
        if first and isinstance(first[0], dict) and "name" in first[0]:
            r("sample", c.get(f"/samples/{first[0]['name']}"))
        r("sample-unknown", c.get("/samples/../etc/passwd"))
        r("sample-missing", c.get("/samples/none.png"))
        # embed
        r(
            "embed-multipart",
            c.post(
                "/embed",
                files=[
                    ("images", ("a.png", png, "image/png")),
                    ("images", ("b.png", pngs[1].read_bytes(), "image/png")),
                ],
            ),
        )
        r("embed-json", c.post("/embed", json={"images": [b64]}))
        r("embed-none", c.post("/embed"))
        r("embed-bad", c.post("/embed", files=[("images", ("a.png", b"nope", "image/png"))]))
        r(
            "embed-badjson",
            c.post("/embed", content=b"{", headers={"content-type": "application/json"}),
        )
        r("embed-b64bad", c.post("/embed", json={"images": ["!!"]}))
        # classify
        r("classify", c.post("/classify", files=file("image")))
        r("classify-k", c.post("/classify?k=5&temperature=0.1", files=file("image")))
        r("classify-form", c.post("/classify", files=file("image"), data={"k": "3"}))
        r("classify-json", c.post("/classify", json={"image": b64, "k": 4}))
        r("classify-k0", c.post("/classify?k=0", files=file("image")))
        r("classify-unknown", c.post("/classify?collection=nope", files=file("image")))
        r("classify-badname", c.post("/classify?collection=a%20b", files=file("image")))
        r("classify-nolabels", c.post("/classify?collection=nolabels", files=file("image")))
        r("classify-empty", c.post("/classify", files=file("image", b"")))
        r(
            "classify-text",
            c.post("/classify", content=b"x", headers={"content-type": "text/plain"}),
        )
        r("classify-two", c.post("/classify", files=[("image", ("a.png", png, "image/png"))] * 2))
        # search
        found = r("search-upload", c.post("/search", files=file("image")))
        r("search-upload-label", c.post("/search?k=3&label=circle", files=file("image")))
        r("search-upload-json", c.post("/search", json={"image": b64, "k": 2}))
        hit = (found or {}).get("results", [{}])[0]
        if "id" in hit:
            r("search-id", c.get(f"/search?image={hit['id']}&k=3"))
            r("image", c.get(f"/images/{hit['id']}"))
            r("image-small", c.get(f"/images/{hit['id']}?size=16"))
        r("search-uri", c.get(f"/search?image={pngs[0]}&k=2"))
        r("search-missing", c.get("/search?image=nothing"))
        r("search-noimage", c.get("/search"))
        r("image-unknown", c.get(f"/images/{uuid.UUID(int=5)}"))
        r("image-bad", c.get("/images/xyz"))
        # attention
        r("attention-png", c.post("/attention", files=file("image")))
        r("attention-json", c.post("/attention?format=json&threshold=0.5", files=file("image")))
        r("attention-thr", c.post("/attention?threshold=2", files=file("image")))
        r("attention-fmt", c.post("/attention?format=gif", files=file("image")))
        # collections
        r("collections", c.get("/collections"))
        r("collection", c.get("/collections/shapes"))
        r("collection-unknown", c.get("/collections/nope"))
        r("collection-bad", c.get("/collections/A!"))
        r("create", c.post("/collections/fresh", headers=admin))
        r("create-again", c.post("/collections/fresh", headers=admin))
        added = r(
            "add",
            c.post(
                "/collections/fresh/images?label=red",
                headers=admin,
                files=[
                    ("images", ("a.png", png, "image/png")),
                    ("images", ("b.png", pngs[7].read_bytes(), "image/png")),
                ],
            ),
        )
        r(
            "add-labels",
            c.post(
                "/collections/fresh/images",
                headers=admin,
                data={"labels": ["x", "y"]},
                files=[("images", ("a.png", png, "image/png"))] * 2,
            ),
        )
        r(
            "add-json",
            c.post(
                "/collections/fresh/images", headers=admin, json={"images": [b64], "label": "j"}
            ),
        )
        r("add-unknown", c.post("/collections/nope/images", headers=admin, files=file("images")))
        r(
            "add-bad",
            c.post("/collections/fresh/images", headers=admin, files=file("images", b"zz")),
        )
        r("collection-fresh", c.get("/collections/fresh"))
        ids = [i.get("id") for i in (added or {}).get("results", []) if isinstance(i, dict)]
        if ids and ids[0]:
            r(
                "relabel",
                c.patch(
                    f"/collections/fresh/images/{ids[0]}", headers=admin, json={"label": "blue"}
                ),
            )
            r(
                "relabel-bad",
                c.patch(f"/collections/fresh/images/{ids[0]}", headers=admin, json={"x": 1}),
            )
            r("classify-fresh", c.post("/classify?collection=fresh", files=file("image")))
            r("delete", c.delete(f"/collections/fresh/images/{ids[0]}", headers=admin))
            r("delete-again", c.delete(f"/collections/fresh/images/{ids[0]}", headers=admin))
        r(
            "relabel-unknown",
            c.patch("/collections/fresh/images/nothing", headers=admin, json={"label": "x"}),
        )
        r("added-json", {"added": added} and c.get("/collections/fresh"))
        # discovery
        r("duplicates", c.get("/collections/shapes/duplicates"))
        r("duplicates-thr", c.get("/collections/shapes/duplicates?threshold=0.9&limit=2"))
        r("duplicates-bad", c.get("/collections/shapes/duplicates?threshold=7"))
        r("duplicates-unknown", c.get("/collections/nope/duplicates"))
        job = r(
            "clusters-start", c.post("/collections/shapes/clusters", headers=admin, json={"k": 3})
        )
        job_id = (job or {}).get("job")
        for _ in range(600):
            state = c.get(f"/collections/shapes/clusters/{job_id}").json().get("state")
            if state != "running":
                break
            import time

            time.sleep(0.05)
        r("clusters-job", c.get(f"/collections/shapes/clusters/{job_id}"))
        r("clusters-cached", c.post("/collections/shapes/clusters", headers=admin, json={"k": 3}))
        r("cluster-0", c.get(f"/collections/shapes/clusters/{job_id}/0?limit=3"))
        r("cluster-99", c.get(f"/collections/shapes/clusters/{job_id}/99"))
        r(
            "cluster-label",
            c.post(
                f"/collections/shapes/clusters/{job_id}/0/label",
                headers=admin,
                json={"label": "c0", "max_distance": 0.5},
            ),
        )
        r(
            "cluster-label-bad",
            c.post(f"/collections/shapes/clusters/{job_id}/0/label", headers=admin, json={}),
        )
        r("clusters-unknown-job", c.get("/collections/shapes/clusters/000000000000"))
        r("clusters-bad", c.post("/collections/shapes/clusters", headers=admin, json={"k": 0}))
        r("clusters-unknown", c.post("/collections/nope/clusters", headers=admin))
        # admin
        r("admin-nokey", c.get("/admin/refresh"))
        r("admin-refresh-idle", c.get("/admin/refresh", headers=admin))
        r("admin-index-idle", c.get("/admin/index", headers=admin))
        r("admin-models", c.get("/admin/models", headers=admin))
        r("admin-rollback-none", c.post("/admin/rollback", headers=admin))
        r("admin-refresh-bad", c.post("/admin/refresh?version=nope", headers=admin))
        r("admin-index-bad", c.post("/admin/index?source=/nope", headers=admin))
        square = fx / "synthetic" / "square"
        started = r(
            "admin-index", c.post(f"/admin/index?source={square}&collection=more", headers=admin)
        )
        for _ in range(600):
            st = c.get("/admin/index", headers=admin).json()
            if st.get("state") != "running":
                break
            import time

            time.sleep(0.05)
        r("admin-index-done", c.get("/admin/index", headers=admin))
        del started
        r("admin-refresh", c.post("/admin/refresh", headers=admin))
        r("admin-refresh-busy", c.post("/admin/refresh", headers=admin))
        for _ in range(1200):
            st = c.get("/admin/refresh", headers=admin).json()
            if st.get("state") not in ("running",):
                break
            import time

            time.sleep(0.05)
        r("admin-refresh-done", c.get("/admin/refresh", headers=admin))
        r("model-after", c.get("/model"))
        r("classify-after", c.post("/classify", files=file("image")))
        r("admin-models-after", c.get("/admin/models", headers=admin))
        r("admin-rollback", c.post("/admin/rollback", headers=admin))
        r("admin-gc", c.post("/admin/gc", headers=admin))
        r("metrics", c.get("/metrics"))


def record_cli(fx: Path, rec: Recorder, work: Path) -> None:
    env = {**os.environ, **fixture_env(fx, work), "COLUMNS": "100"}
    help_of: list[list[str]] = [[]]
    top = subprocess.run([*cli(), "--help"], env=env, capture_output=True, text=True).stdout
    commands = re.search(r"\{([\w,-]+)\}", top)
    for cmd in commands.group(1).split(",") if commands else []:
        help_of.append([cmd])
        sub = subprocess.run(
            [*cli(), cmd, "--help"], env=env, capture_output=True, text=True
        ).stdout
        inner = re.search(r"\{([\w,-]+)\}", sub)
        help_of += [[cmd, s] for s in (inner.group(1).split(",") if inner else [])]
    runs = [[*h, "--help"] for h in help_of] + [
        ["models", "list"],
        ["collections", "list"],
        ["duplicates", "shapes"],
        ["duplicates", "shapes", "--json"],
        ["clusters", "shapes", "--k", "3"],
        ["clusters", "shapes", "--k", "3", "--json"],
        ["clusters", "nope"],
        ["store", "info"],
        ["index", str(fx / "synthetic" / "circle"), "--collection", "cli", "--workers", "1"],
        ["index", "/nope", "--collection", "cli"],
        ["nonsense"],
        ["models", "rollback"],
        ["refresh"],
        ["models", "list"],
        ["models", "gc"],
        ["collections", "delete", "cli"],
        ["collections", "list"],
    ]
    for i, args in enumerate(runs):
        p = subprocess.run([*cli(), *args], env=env, capture_output=True, text=True, cwd=work)
        text = mask(p.stdout) + "\n--- stderr\n" + mask(p.stderr)
        text = text.replace(str(work), "<work>").replace(str(fx), "<fx>")
        text = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", text, flags=re.M)
        text = re.sub(r"\b[0-9a-f]{12}\b", "<job>", text)  # job ids (uuid4, not seeded here)
        rec.save(
            f"cli-{i:02d}-{'_'.join(a.strip('/').replace('/', '_') for a in args)[:60]}.txt",
            f"rc={p.returncode}\n{text}",
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--fixtures", type=Path, default=Path("/tmp/rec-fixtures"))
    args = ap.parse_args()
    fx: Path = args.fixtures.resolve()
    if not (fx / "qdrant").exists():
        fx.mkdir(parents=True, exist_ok=True)
        build_fixtures(fx)
    if args.out.exists():
        shutil.rmtree(args.out)
    rec = Recorder(args.out)
    seed_uuid4()
    with contextlib.redirect_stderr(io.StringIO()):
        record_api(fx, rec, fresh_work(fx, args.out.parent / f"{args.out.name}-work-api"))
    record_cli(fx, rec, fresh_work(fx, args.out.parent / f"{args.out.name}-work-cli"))
    print(f"{rec.n} recordings in {args.out}")


if __name__ == "__main__":
    main()
