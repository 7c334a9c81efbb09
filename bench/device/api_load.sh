#!/usr/bin/env bash
# Issue 5's micro-batching measurement on the lent GPU: the torch engine on CUDA, ViT-S/16,
# batching on vs off at 1, 8 and 32 clients, in one run. On this machine first:
#   bash bench/device/fetch_wheels.sh        # the service's packages the device image lacks
# then the `run` tool, with carry [".whl"]:
#   bash bench/device/api_load.sh
# Extra arguments go to bench/api_load.py (the last of a repeated flag wins). The report (JSON
# and table) lands in $OUT/api_load.txt.
set -euo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"; } \
    | tee "$OUT/api_load.txt"
"$PYTHON" -m bench.api_load --model vits16 --variant fp32 --engine torch --device cuda "$@" 2>&1 \
    | tee -a "$OUT/api_load.txt" | tail -20
