#!/usr/bin/env bash
# Issue 16 on the lent GPU, in ONE `run` call of at most ~8 minutes: the torch engine (eager and
# compiled, ViT-S/16 at batch 1/32/256/512, MFU), the API under 1/8/32/128 clients with
# micro-batching on vs off, single-image /embed at 128 clients with DINOSERVE_SERVE__WORKERS,
# and `dinoserve index` of 20,000 synthetic 500×375 JPEGs made on the device. On this machine
# first:
#   bash bench/device/fetch_wheels.sh        # the service's packages the device image lacks
# then the `run` tool, with carry [".whl"] and timeout_s 590:
#   bash bench/device/gpu_serve.sh
# Each phase writes $OUT/<phase>.json as it ends (a late failure keeps the earlier figures); the
# log is $OUT/gpu_serve.txt. Extra arguments go to bench/gpu_serve.py (e.g. --phases engine).
# Rehearsal on a CPU, tiny sizes, start to finish (~4 min on 2 cores):
#   GPU_SERVE_SMALL=1 OUT=/tmp/gs PYTHON=.venv/bin/python bash bench/device/gpu_serve.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_serve}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The carried wheels, unless this Python has the service's stack already (a rehearsal here).
if ! "$PYTHON" -c "import fastapi, pydantic_settings, qdrant_client" 2>/dev/null \
        && compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "no GPU"; nproc; } | tee "$OUT/gpu_serve.txt"
small=()
[[ -n ${GPU_SERVE_SMALL:-} ]] && small=(--small)
"$PYTHON" -m bench.gpu_serve --out "$OUT" "${small[@]}" "$@" 2>&1 | tee -a "$OUT/gpu_serve.txt"
