#!/usr/bin/env bash
# Issue 15 on the lent GPU in one `run` call (bench/device/README.md has the call): (1) training
# throughput of the ViT-S/16 recipe, fast vs plain, batch 64 and 128 (bench/train_throughput.py),
# then (2) the CIFAR-10 preset trained within what is left (bench/device/gpu_train.py), its fp16
# teacher backbone copied to $OUT about every minute. Every phase is time-boxed; everything it
# returns is under $OUT: gpu_train.log, throughput.json, cifar_backbone.json + parts,
# cifar_metrics.jsonl, cifar_summary.json.
#
# Rehearsal on a CPU, start to finish in a few minutes, with tiny sizes everywhere:
#   GPU_TRAIN_SMALL=1 OUT=/tmp/gt-out bash bench/device/gpu_train.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu-train-out}
WORK=${WORK:-/tmp/gpu-train}
SMALL=${GPU_TRAIN_SMALL:-0}
THROUGHPUT_S=${THROUGHPUT_S:-170}  # phase 1, hard limit
TRAIN_S=${TRAIN_S:-330}            # phase 2, hard limit (calibration, training, last snapshot)
DATA=${CIFAR_TAR:-.data/cifar10-train.tar.gz}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/gpu_train.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
t0=$SECONDS

if [[ $SMALL == 1 ]]; then
    tp_args=(--smoke)
    # A micro ViT on the CPU; the recipe's shape (fit to the budget, snapshots) is unchanged.
    train_args=(run.device=cpu run.compile=false data.num_workers=1 data.batch_size=16
                data.holdout_per_class=5 "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2}"
                model.arch=vit_tiny_patch16_224 head.out_dim=256 head.hidden_dim=64
                head.bottleneck_dim=32 crops.local_number=2 eval.batch_size=64 run.threads=2
                --cal-warmup 1 --cal-steps 4)
    if [[ ! -f $DATA ]]; then
        DATA=.data/fake-cifar10.tar.gz
        [[ -f $DATA ]] || "$PYTHON" -m bench.device.gpu_train fake-cifar "$DATA" --per-class 40
    fi
else
    tp_args=(--batches 64,128 --steps 20 --warmup 3 --workers 14)
    train_args=()
fi

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "no GPU"
"$PYTHON" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__,
"cuda", torch.cuda.is_available())'
[[ -f $DATA ]] || { echo "no CIFAR tar at $DATA: copy it there and carry its folder"; exit 2; }

echo "== phase 1: training throughput (at most ${THROUGHPUT_S}s)"
# No new configuration starts after budget − 60 s; the hard limit stops one that hangs.
timeout -k 10 "$THROUGHPUT_S" "$PYTHON" -m bench.train_throughput "${tp_args[@]}" \
    --out "$WORK/throughput" --budget-s $((THROUGHPUT_S - 60))
echo "phase 1 exit $?, $((SECONDS - t0)) s so far"
cp "$WORK/throughput/report.json" "$OUT/throughput.json" 2>/dev/null || echo "no throughput report"

echo "== phase 2: CIFAR-10 training (at most ${TRAIN_S}s)"
# SIGINT at the limit: the trainer saves last.pt, the driver copies the backbone to $OUT.
timeout -s INT -k 45 "$TRAIN_S" "$PYTHON" -m bench.device.gpu_train cifar --data "$DATA" \
    --run "$WORK/cifar" --out "$OUT" --cache "$WORK/cache" --budget-s $((TRAIN_S - 30)) \
    "${train_args[@]}"
echo "phase 2 exit $?, $((SECONDS - t0)) s in all"
ls -l "$OUT"
