#!/usr/bin/env bash
# Wheels for the lent GPU machine, whose Python (3.12) has torch, timm, onnx, onnxruntime, numpy,
# pillow, httpx, grpcio and protobuf but not the service's own stack. Downloads, into .whl/ (git
# ignored), the versions this checkout's .venv runs, so that a device script can start with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# and the `run` tool's call names `.whl` in `carry`. About 6 MB.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
NAMES=(fastapi starlette uvicorn pydantic pydantic-core pydantic-settings python-dotenv
       python-multipart qdrant-client annotated-types typing-inspection annotated-doc
       h2 hpack hyperframe prometheus-client)
pins=()
for name in "${NAMES[@]}"; do
    version=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [[ -n $version ]] || { echo "not installed in $PY: $name" >&2; exit 1; }
    pins+=("$name==$version")
done
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "${pins[@]}"
ls -1 .whl
