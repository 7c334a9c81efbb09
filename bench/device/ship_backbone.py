"""Back from the device: the CIFAR-10 backbone that gpu_train.sh returned → a model package to ship.

    python -m bench.device.ship_backbone FILES_AT --data ../shared/data/cifar10-train.tar.gz \
        [--models-dir shipped/models] [--name dino-cifar10] [--holdout 500] [--report DIR]

Loads the fp16 teacher backbone (cifar_backbone.json + parts), measures k-NN top-1 (k = 20,
T = 0.07) on the held-out images (the last `--holdout` of each class) with the other training
images as the labelled memory, for it and for the same architecture at random initialisation,
then exports it through training/export.py (ONNX, parity checked, model card). The package is
then compacted: weights stored in fp16 (ONNX initialisers cast back to fp32 on load, so the
network computes in fp32 exactly as the checked one; parity is checked again), a picture of its
attention on held-out CIFAR images added to the card, and CURRENT switched to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from safetensors.torch import load_file, save_file

from core import package
from core.attention import attention_mask
from core.images import preprocess
from core.vit import EmbedAttention, build_vit
from training.config import TrainConfig, load_config
from training.data import list_images, resolve_source, split_holdout
from training.export import config_meta, write_package
from training.knn import KnnEvaluator
from training.onnx_export import check_images, check_parity

ROOT = Path(__file__).resolve().parents[2]

log = logging.getLogger("ship_backbone")
STEM = "cifar_backbone"
CIFAR_PICTURE = "attention_cifar10.png"
TILE = 96


def load_snapshot(folder: Path) -> tuple[dict, TrainConfig, dict[str, torch.Tensor]]:
    """(meta, config, fp16 backbone weights) of a snapshot written by gpu_train.py."""
    meta = json.loads((folder / f"{STEM}.json").read_text())
    weights: dict[str, torch.Tensor] = {}
    for name in meta["parts"]:
        part = torch.load(folder / name, map_location="cpu", weights_only=True)
        if part["step"] != meta["step"]:
            raise ValueError(f"{name} is of step {part['step']}, the snapshot of {meta['step']}")
        weights |= part["weights"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(meta["config_yaml"])
        cfg = load_config(path)
    return meta, cfg, weights


def knn_pair(
    vit: torch.nn.Module,
    random_vit: torch.nn.Module,
    cfg: TrainConfig,
    data: str,
    holdout: int,
    cache: Path,
    workers: int,
) -> dict:
    """k-NN top-1 of the trained and the random-init backbone on the held-out images."""
    memory, queries = split_holdout(list_images(resolve_source(data, cache)), holdout)
    ev = KnnEvaluator(
        memory, queries, cfg.model.img_size, cfg.crops.mean, cfg.crops.std, cfg.eval.crop_pct
    )
    cpu = torch.device("cpu")
    k, t, bs = cfg.eval.k, cfg.eval.temperature, cfg.eval.batch_size
    t0 = time.perf_counter()
    trained = ev(vit, cpu, k, t, bs, workers)
    random_init = ev(random_vit, cpu, k, t, bs, workers)
    return {
        "knn_end": round(trained, 2),
        "knn_start": round(random_init, 2),
        "k": k,
        "temperature": t,
        "memory": len(ev.train),
        "queries": len(ev.val),
        "holdout_per_class": holdout,
        "eval_s": round(time.perf_counter() - t0, 1),
    }


def fp16_onnx(src: Path, dst: Path) -> int:
    """Store the float initialisers of an ONNX graph in fp16, each cast back to fp32 by a Cast
    node named as the original, so every operator still computes in fp32. Returns how many."""
    model = onnx.load(str(src))
    graph = model.graph
    casts, keep = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < 16:
            keep.append(init)
            continue
        half = numpy_helper.from_array(
            numpy_helper.to_array(init).astype(np.float16), f"{init.name}__fp16"
        )
        keep.append(half)
        casts.append(
            helper.make_node(
                "Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__cast"
            )
        )
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    return len(casts)


@torch.no_grad()
def cifar_attention(
    net: EmbedAttention, meta: package.PackageMeta, files: list[Path]
) -> Image.Image:
    """Rows of [image, head-mean attention, its 0.6-mass mask] for a few held-out images."""
    import matplotlib

    rows = []
    for f in files:
        with Image.open(f) as im:
            pic = im.convert("RGB")
        x = preprocess(pic, meta.img_size, meta.mean, meta.std, meta.crop_pct)
        _, attn = net(torch.from_numpy(x)[None])
        mean = attn[0].float().numpy().mean(axis=0)  # (h, w)
        span = max(float(mean.max() - mean.min()), 1e-12)  # min-max: near-flat maps show too
        heat = matplotlib.colormaps["inferno"]((mean - mean.min()) / span)[..., :3]
        mask = attention_mask(mean[None], 0.6)[0]
        tiles = [
            pic,
            Image.fromarray((heat * 255).astype(np.uint8)),
            Image.fromarray((mask * 255).astype(np.uint8)),
        ]
        rows.append([t.resize((TILE, TILE), Image.Resampling.NEAREST) for t in tiles])
    out = Image.new("RGB", (TILE * 3 * 2, TILE * ((len(rows) + 1) // 2)), "black")
    for i, tiles in enumerate(rows):
        for c, t in enumerate(tiles):
            out.paste(t, ((i % 2) * 3 * TILE + c * TILE, (i // 2) * TILE))
    return out


def compact(
    pkg: Path,
    models_dir: Path,
    vit: torch.nn.Module,
    examples: list[Path],
    picture: str = CIFAR_PICTURE,
    what: str = "CIFAR-10",
) -> Path:
    """A new version of the package with fp16 weights and a picture of its attention on a few
    held-out images of `what` (the CIFAR one by default)."""
    meta = package.verify(pkg)
    stage = package.staging_dir(models_dir, meta.name)
    try:
        for f in pkg.iterdir():
            if f.name not in (package.META, package.WEIGHTS, package.ONNX_FP32):
                shutil.copyfile(f, stage / f.name)
        weights = load_file(pkg / package.WEIGHTS)
        save_file({k: v.half().contiguous() for k, v in weights.items()}, stage / package.WEIGHTS)
        n = fp16_onnx(pkg / package.ONNX_FP32, stage / package.ONNX_FP32)
        net = EmbedAttention(vit.float().eval(), meta.views)
        batches = check_images(meta.img_size, meta.mean, meta.std, meta.crop_pct)
        parity = check_parity(net, stage / package.ONNX_FP32, batches)
        log.info("fp16 storage: %d initialisers; parity %s", n, parity)
        cifar_attention(net, meta, examples).save(stage / picture)
        card = stage / "MODEL_CARD.md"
        card.write_text(
            card.read_text()
            + f"\n![attention on {what}]({picture})\n\nHeld-out {what} images: the "
            "image, the heads' mean attention, the patches holding 60 % of it.\n\n"
            "Weights are stored in fp16 (training's fp16 snapshot); the ONNX graph casts them to "
            "fp32 on load, so it computes in fp32.\n"
        )
        provenance = meta.provenance | {"weights_dtype": "float16"}
        out = package.finalize(
            stage, meta.model_copy(update={"parity": parity, "provenance": provenance})
        )
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    package.switch_current(out.parent, out.name)
    return out


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("snapshot", help="folder with cifar_backbone.json and its parts")
    ap.add_argument("--data", required=True, help="cifar10-train.tar.gz (or its folder)")
    ap.add_argument("--models-dir", default=str(ROOT / "shipped" / "models"))
    ap.add_argument("--name", default="dino-cifar10")
    ap.add_argument("--holdout", type=int, default=500, help="held-out images per class")
    ap.add_argument("--cache", default="var/cache")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.snapshot)
    meta, cfg, weights = load_snapshot(folder)
    net_meta = config_meta(cfg)
    vit = build_vit(net_meta["arch"], net_meta["timm_kwargs"])
    vit.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    torch.manual_seed(cfg.run.seed)
    random_vit = build_vit(net_meta["arch"], net_meta["timm_kwargs"])
    evaluation = knn_pair(
        vit, random_vit, cfg, args.data, args.holdout, Path(args.cache), args.workers
    )
    log.info("k-NN top-1: %s", evaluation)
    summary = meta.get("summary", {})
    wall = summary.get("wall_s") or meta.get("saved_at_s")
    net_meta |= {
        "provenance": {
            "source": "training",
            "run_dir": f"device run ({meta.get('device')}), snapshot {folder.name}",
            "step": meta["step"],
            "config_hash": cfg.digest(),
            "data": f"CIFAR-10 train ({Path(args.data).name}), the last {args.holdout} images "
            "per class held out",
            "training": {
                "epochs": cfg.optim.epochs,
                "epochs_done": len(meta.get("epochs_done", [])),
                "batch_size": cfg.data.batch_size,
                "crops": f"2 × {cfg.crops.global_size} px + {cfg.crops.local_number} × "
                f"{cfg.crops.local_size} px",
                "wall_s": wall,
                "device": meta.get("device"),
                "torch": meta.get("torch"),
                "overrides": meta.get("overrides"),
            },
        },
        "evaluation": evaluation,
    }
    with tempfile.TemporaryDirectory() as tmp:  # the fp32 export and its checks, then compact
        fp32 = write_package(vit, net_meta, Path(tmp), args.name, activate=False)
        _, queries = split_holdout(list_images(resolve_source(args.data, args.cache)), args.holdout)
        per_class = {}
        for f, y in zip(queries.files, queries.labels, strict=True):
            per_class.setdefault(y, f)
        out = compact(fp32, Path(args.models_dir), vit, list(per_class.values())[:6])
    size = sum(f.stat().st_size for f in out.iterdir())
    print(json.dumps({"package": str(out), "bytes": size, **evaluation}))
    return out


if __name__ == "__main__":
    main()
