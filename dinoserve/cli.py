"""`dinoserve` — one command line for training, data and (later) export, index and serve."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from core.package import PackageError
from core.settings import Settings
from training.config import ConfigError

DEMO_DATA = Path("var/data/synthetic")


def _cmd_train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.train import train

    run_dir = Path(args.out)
    overrides = list(args.overrides)
    if args.init:  # the architecture comes from the init model; the user's overrides follow
        from training.init import init_overrides

        overrides = init_overrides(args.init, args.init_weights, Path(args.models_dir)) + overrides
    if args.data:
        overrides.insert(0, f"data.train={args.data}")
    config, own = args.config, args.resume and (run_dir / "config.yaml").exists()
    if own:
        config = run_dir / "config.yaml"  # the run's own resolved config; overrides still apply
    cfg = load_config(config, overrides, run=own)
    if not cfg.data.train:
        raise ConfigError("no training data: pass --data or data.train=…")
    result = train(cfg, run_dir, resume=args.resume)
    _report(result)
    return 0


def _report(result) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, one summary
    print(f"run: {result.run_dir}  steps: {result.steps}  {result.images_per_s:.0f} img/s")
    if result.knn_start is not None or result.knn_end is not None:
        print(f"k-NN top-1: start {result.knn_start}  end {result.knn_end}")


def _cmd_synth(args: argparse.Namespace) -> int:
    from training.synthetic import make_synthetic

    out = make_synthetic(args.out, args.per_class, args.size, args.seed, args.format)
    print(f"wrote {args.per_class} images × 10 classes to {out}")
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from dinoserve.demo import run_demo

    data = Path(args.data) if args.data else None  # None: the shipped sample, else synthetic
    queries = Path(args.queries) if args.queries else None
    run_demo(settings, data, queries, args.config, Path(args.out))
    return 0


def _models_dir(args: argparse.Namespace, settings: Settings) -> Path:
    """`--models-dir`, else DINOSERVE_MODELS_DIR."""
    return settings.models_dir if args.models_dir is None else Path(args.models_dir)


def _quantize(args: argparse.Namespace) -> list[str]:
    """`--quantize int8,int8-static` or the flag given several times → the variants, in order."""
    return [v for arg in args.quantize or [] for v in arg.split(",") if v]


def _cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from training.export import QuantizeOptions, export_run

    out = export_run(
        Path(args.run_dir),
        _models_dir(args, settings),
        args.name or settings.model,  # default: the served model's name
        _quantize(args),
        activate=not args.no_activate,
        calibration=Path(args.calibration) if args.calibration else None,
        quant=QuantizeOptions(**settings.quantize.model_dump()),
        views=args.views,
    )
    _report_package(out)
    return 0


def _cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from training.export import QuantizeOptions, import_published

    calibration = args.calibration or settings.quantize.calibration_dir or settings.samples_dir
    out = import_published(
        args.model,
        _models_dir(args, settings),
        args.name,
        Path(args.weights) if args.weights else None,
        _quantize(args),
        img_size=args.img_size,
        activate=args.activate,
        calibration=Path(calibration) if calibration else None,
        quant=QuantizeOptions(**settings.quantize.model_dump()),
        views=args.views,
    )
    _report_package(out)
    if not args.activate:
        print(
            f"not activated: other commands still use what they used. Use it with "
            f"DINOSERVE_MODEL={args.name}, or import again with --activate"
        )
    return 0


def _cmd_index(args: argparse.Namespace, settings: Settings) -> int:
    from dinoserve.index_cli import cmd_index

    return cmd_index(args, settings)


def _cap_malloc_arenas(arenas: int = 2) -> None:
    """Few malloc arenas for the service (unless MALLOC_ARENA_MAX says otherwise).

    glibc gives threads their own arenas, up to 8 per core; the service's worker threads
    (decoding, Qdrant calls, the engine) then spread small allocations over many of them
    (bench/soak.py, 64 clients on 2 cores: RSS levels off at ~275 MiB with the default, ~235 MiB
    with 2 arenas, at the same throughput). A no-op where the C library is not glibc.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-8, arenas)  # M_ARENA_MAX


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Validate the model before binding the port, then run uvicorn (the settings are validated
    already: a bad DINOSERVE_* value failed in `main`). Off the loopback without a key it
    refuses first (api.access), since only here is --host known."""
    _cap_malloc_arenas()  # before the engine and the thread pools start their threads
    from api.access import check_exposure
    from core import package

    flags = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    serve = type(settings.serve).model_validate({**settings.serve.model_dump(), **flags})
    settings = settings.model_copy(update={"serve": serve})
    check_exposure(settings, warn=False)  # the app factory logs an opt-out once it is built
    package_dir = package.resolve(settings.models_dir, settings.model)
    meta = package.verify(package_dir)
    from core.engine_choice import resolve_engine

    # fail here, not in the lifespan after "serving on": a variant the package lacks, a bench
    # record (auto) naming what cannot run here, the openvino extra missing
    kind, inference = resolve_engine(package_dir, settings.engine, settings.inference)
    if kind != "torch":
        package.require_variant(package_dir, meta, inference.onnx_variant, kind)
    if kind == "openvino":
        from core.extras import require_openvino

        require_openvino()
    print(f"serving {meta.name} {meta.version} on http://{serve.host}:{serve.port}")

    import uvicorn

    from api.main import create_app

    options = {
        "host": serve.host,
        "port": serve.port,
        "log_level": "info",
        "timeout_keep_alive": serve.keep_alive_s,
        "timeout_graceful_shutdown": serve.graceful_shutdown_s,
        "access_log": serve.access_log,
    }
    if serve.workers > 1:
        from api.engine_server import serve_with_workers

        serve_with_workers(settings, options)
    else:
        uvicorn.run(create_app(settings), **options)
    return 0


def _report_package(out: Path) -> None:
    from core.package import read_meta
    from refresh.versions import current_or_none

    meta = read_meta(out)
    print(f"package: {out}  {meta.version}  (CURRENT → {current_or_none(out.parent)})")
    print(f"variants: {', '.join(meta.onnx)}  parity (max abs): {meta.parity}")


def _views_flags(p: argparse.ArgumentParser, default: str) -> None:
    def views(value: str):
        from pydantic import ValidationError

        from core.package import EmbedViews

        fields: dict[str, object] = {}
        for part in filter(None, (x.strip() for x in value.split(","))):
            key, sep, n = part.partition("=")
            if part == "flip":
                fields["flip"] = True
            elif key == "shift" and sep and n.isdigit():
                fields["shift"] = int(n)
            elif key == "smooth" and sep and _number(n) is not None:
                fields["smooth"] = _number(n)
            elif part != "none":
                raise argparse.ArgumentTypeError(f"{part!r} is not flip, shift=N, smooth=S or none")
        try:
            return EmbedViews(**fields)
        except ValidationError as exc:  # the bounds (0 ≤ smooth ≤ 4), in one line
            raise argparse.ArgumentTypeError(f"{value!r}: {exc.errors()[0]['msg']}") from None

    p.add_argument(
        "--views",
        type=views,
        default=None,
        metavar="flip,shift=N,smooth=S",
        help="test-time views averaged into the embedding: 'flip' adds each view's mirror, "
        "'shift=N' the image moved by ±N px along each axis, 'none' the image alone "
        "(mirror and 4 moves: 10× the compute per image); 'smooth=S' smooths the attention "
        f"map by a Gaussian of σ = S cells (0–4; the map only); {default}",
    )


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _quantize_flags(p: argparse.ArgumentParser) -> None:
    from core.package import QUANTIZED

    def variants(value: str) -> str:
        bad = [v for v in value.split(",") if v not in QUANTIZED]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad}: choose from {', '.join(QUANTIZED)}")
        return value

    p.add_argument(
        "--quantize",
        action="append",
        type=variants,
        default=None,
        help="add quantised CPU models, comma-separated or repeated: int8 (dynamic), "
        "int8-static (calibrated, QDQ), int8-nncf (OpenVINO; needs the openvino extra); each "
        "is kept only if it passes the accuracy guard",
    )
    p.add_argument(
        "--calibration",
        default=None,
        help="folder or tar of real images (class folders add the k-NN guard) for static int8 "
        "and the guard; default DINOSERVE_QUANTIZE__CALIBRATION_DIR, else the run's data "
        "(export) or DINOSERVE_SAMPLES_DIR",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dinoserve", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="pretrain a DINO ViT (torchrun for several processes)")
    t.add_argument("--config", default=None, help="YAML preset from configs/ (default: paper)")
    t.add_argument("--data", default=None, help="folder or tar/tar.gz of images")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument(
        "--init",
        default=None,
        help="start the backbones from a package (name or path) or a timm name with its tag "
        "(continued pretraining; see configs/adapt.yaml)",
    )
    t.add_argument("--init-weights", default=None, help="local weights for a timm --init name")
    t.add_argument("--models-dir", default="var/models", help="where --init names resolve")
    t.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.epochs=5")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("synth", help="write synthetic labelled images (shapes)")
    s.add_argument("out")
    s.add_argument("--per-class", type=int, default=100)
    s.add_argument("--size", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=("png", "jpg"), default="png")
    s.set_defaults(func=_cmd_synth)

    e = sub.add_parser("export", help="package a run's teacher backbone (ONNX + safetensors)")
    e.add_argument("run_dir", help="training run directory")
    e.add_argument("--name", default=None, help="model name (default: DINOSERVE_MODEL)")
    e.add_argument("--models-dir", default=None, help="default: DINOSERVE_MODELS_DIR")
    _quantize_flags(e)
    _views_flags(e, "default: the run's eval.views")
    e.add_argument(
        "--no-activate", action="store_true", help="leave CURRENT; `dinoserve refresh` moves it"
    )
    e.set_defaults(func=_cmd_export, reads_settings=True)

    i = sub.add_parser(
        "import",
        aliases=["import-timm"],
        help="package published DINO, DINOv2 or DINOv3 weights through timm",
    )
    i.add_argument(
        "model",
        help="timm name with its tag, e.g. vit_small_patch16_224.dino, "
        "vit_small_patch14_reg4_dinov2.lvd142m, vit_small_patch16_dinov3.lvd1689m",
    )
    i.add_argument("--name", required=True, help="model name under the models directory")
    i.add_argument(
        "--weights", default=None, help="local file (Meta's official layout or timm's), not the hub"
    )
    i.add_argument(
        "--img-size", type=int, default=None, help="serving size in px (default 224, the eval size)"
    )
    i.add_argument("--models-dir", default=None, help="default: DINOSERVE_MODELS_DIR")
    _quantize_flags(i)
    _views_flags(i, "default: the image alone")
    i.add_argument(
        "--activate", action="store_true", help="switch its CURRENT (default: change nothing)"
    )
    i.set_defaults(func=_cmd_import, reads_settings=True)

    x = sub.add_parser("index", help="embed a folder, tar or manifest into Qdrant")
    x.add_argument(
        "source",
        nargs="?",
        default="",
        help="folder or tar/tar.gz of images (required unless --manifest)",
    )
    x.add_argument("--collection", default=None, help="logical name (default DINOSERVE_COLLECTION)")
    x.add_argument(
        "--labels",
        choices=("dirs", "none"),
        default="none",
        help="dirs: label = first-level sub-folder",
    )
    x.add_argument("--manifest", default=None, help="CSV/JSONL with path,label,… columns")
    x.add_argument("--batch", type=int, default=None, help="default DINOSERVE_INDEXER__BATCH")
    x.add_argument("--workers", type=int, default=None, help="decode threads")
    x.add_argument("--shard", default=None, help="i/N: this worker's share of the source")
    x.add_argument("--prune", action="store_true", help="delete points whose source is gone")
    x.add_argument("--failures", default=None, help="JSONL report of skipped images")
    x.set_defaults(func=_cmd_index, reads_settings=True)

    v = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    v.add_argument("--host", default=None, help="bind address (default DINOSERVE_SERVE__HOST)")
    v.add_argument("--port", type=int, default=None, help="port (default 8000)")
    v.set_defaults(func=_cmd_serve, reads_settings=True)

    d = sub.add_parser("demo", help="the offline demo (shipped photos, else synthetic images)")
    d.add_argument("--config", default="configs/tiny.yaml")
    d.add_argument(
        "--data",
        default=None,
        help=f"labelled images to index (default: the shipped sample, else synthetic ones in "
        f"{DEMO_DATA})",
    )
    d.add_argument("--queries", default=None, help="held-out images to try on the page")
    d.add_argument("--out", default="runs/demo", help="training run, when no model exists")
    d.set_defaults(func=_cmd_demo, reads_settings=True)

    from dinoserve.models_cli import add_parsers

    add_parsers(sub)  # refresh, models list|rollback|gc
    from dinoserve import store_cli

    store_cli.add_parsers(sub)  # store info|export
    from dinoserve import collections_cli

    collections_cli.add_parsers(sub)  # collections list|delete
    from dinoserve import duplicates_cli

    duplicates_cli.add_parsers(sub)  # duplicates NAME

    from dinoserve import clusters_cli

    clusters_cli.add_parsers(sub)  # clusters NAME
    from dinoserve import eval_cli

    eval_cli.add_parsers(sub)  # eval knn|masks
    return p


def _validation_lines(exc: ValidationError) -> str:
    """`DINOSERVE_SERVE__PORT=0 (serve.port): Input should be …`, one line per error."""
    lines = []
    for e in exc.errors():
        msg = e["msg"].removeprefix("Value error, ")
        field = ".".join(str(x) for x in e["loc"])
        given = e.get("input")
        loc = field
        if exc.title == "Settings" and field:
            loc = "DINOSERVE_" + "__".join(str(x) for x in e["loc"]).upper()
        if loc and isinstance(given, str | int):
            loc = f"{loc}={given}"
        if loc != field and field:
            loc = f"{loc} ({field})"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "\n  ".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        # A command that reads DINOSERVE_* gets them read once, here, and passed down; the
        # others (train, synth) run whatever they hold.
        if not getattr(args, "reads_settings", False):
            return args.func(args)
        settings = Settings()  # a bad DINOSERVE_* value fails here (pydantic → exit 2)
        return args.func(args, settings)
    except ValidationError as exc:  # settings (DINOSERVE_*) or a config: one line per error
        print(f"dinoserve: error: {_validation_lines(exc)}", file=sys.stderr)
        return 2
    except (ConfigError, FileNotFoundError, ValueError, PackageError) as exc:
        print(f"dinoserve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
