# syntax=docker/dockerfile:1
# The dinoserve image: API, indexer and trainer behind one `dinoserve` entry point.
#
#   docker build -t dinoserve:0.1.0 .                              # CUDA 12 + onnxruntime-gpu
#   docker build -t dinoserve:0.1.0-cpu --build-arg VARIANT=cpu .  # CPU only, smaller
#
# The PyPI torch wheel bundles its own CUDA libraries and is the right one for the GPU image; for a
# smaller CPU image pass PyTorch's CPU wheel index with --build-arg PIP_EXTRA_INDEX_URL=...
ARG VARIANT=gpu

# Ubuntu 24.04 ships Python 3.12 (the project needs >= 3.11); the cuDNN runtime image carries the
# CUDA 12 / cuDNN 9 libraries that onnxruntime-gpu loads from the system library path.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS base-gpu
# The tag pins the release; exact apt versions would break as soon as the archive moves on.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV ORT_PACKAGE=onnxruntime-gpu

FROM python:3.12-slim-bookworm AS base-cpu
ENV ORT_PACKAGE=onnxruntime

# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
# The virtual environment lives at the same path in the build and the runtime stage, which share
# this base, so it can be copied across as is.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

FROM base AS build
# The Makefile's pins (the versions the tests run against).
ARG TORCH_PKGS="torch==2.14.1 torchvision==0.29.1"
ARG PIP_EXTRA_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so code edits do not reinstall torch. The GPU
# variant swaps onnxruntime for onnxruntime-gpu in that list (same `onnxruntime` module, CUDA and
# TensorRT providers added): installing both would let one overwrite the other's files, and
# uninstalling one afterwards would delete files the other needs. The project itself is then
# installed with --no-deps, so pip never pulls the CPU onnxruntime back in (for the same reason
# `pip check` would report dinoserve's onnxruntime requirement as missing in the GPU image).
COPY pyproject.toml README.md ./
# TORCH_PKGS carries its pins; the rest follows pyproject.toml's ranges.
# hadolint ignore=DL3013
RUN pip install ${TORCH_PKGS} \
    && python3 -c "import os, re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(re.sub(r'^onnxruntime(?![\w.-])', os.environ['ORT_PACKAGE'], d) for d in deps))" > requirements.txt \
    && cat requirements.txt \
    && pip install -r requirements.txt
COPY api ./api
COPY core ./core
COPY training ./training
COPY indexer ./indexer
COPY refresh ./refresh
COPY discovery ./discovery
COPY evaluation ./evaluation
COPY dinoserve ./dinoserve
# Fail the build if the GPU variant ended up without the CUDA provider (compiled-in providers are
# listed without a GPU present).
RUN pip install --no-deps . \
    && python3 -c "import os, onnxruntime as ort; p = ort.get_available_providers(); print(ort.__version__, p); assert os.environ['ORT_PACKAGE'] == 'onnxruntime' or 'CUDAExecutionProvider' in p"

FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
# A fixed non-root uid: Kubernetes' runAsUser and volume ownership refer to it.
RUN useradd --create-home --uid 10001 --user-group dinoserve \
    && mkdir -p /data/models /data/state /data/runs /data/blobs \
    && chown -R dinoserve:dinoserve /data
# Model registry, embedded Qdrant + index reports + cluster results, and training runs live
# outside the image: an immutable image serves whatever package the models volume holds
# (CURRENT), and the state survives container replacement. The serve host is 0.0.0.0 here
# (127.0.0.1 outside containers), so `serve` needs DINOSERVE_API_KEY (or an explicit
# DINOSERVE_ALLOW_ANONYMOUS) at run time: it refuses to start otherwise (api/access.py).
ENV DINOSERVE_MODELS_DIR=/data/models \
    DINOSERVE_QDRANT_PATH=/data/state/qdrant \
    DINOSERVE_INDEX_DIR=/data/state/index \
    DINOSERVE_DISCOVERY__CLUSTERS_DIR=/data/state/clusters \
    DINOSERVE_BLOB_DIR=/data/blobs \
    DINOSERVE_SERVE__HOST=0.0.0.0
VOLUME ["/data/models", "/data/state", "/data/runs", "/data/blobs"]
# The training presets, so `--config configs/<preset>.yaml` works as in the README.
WORKDIR /opt/dinoserve
COPY configs ./configs
USER 10001:10001
EXPOSE 8000
# Liveness only (/readyz also needs Qdrant, which is not this container's health), and open: it
# needs no key (api/auth.py), so the check works with the keys set. Slim images have no curl;
# Python's urllib raises on a refused connection or a non-2xx status. The start period covers
# loading the model: uvicorn accepts connections only once the lifespan has run.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["dinoserve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
