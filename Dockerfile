# syntax=docker/dockerfile:1
# CPU image of the dinoserve CLI. The CUDA variant, compose and Kubernetes files come with the
# deploy work (see deploy/README.md).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY core ./core
COPY training ./training
COPY indexer ./indexer
COPY dinoserve ./dinoserve
ARG TORCH_PKGS="torch torchvision"
RUN pip install --no-cache-dir --prefix=/install ${TORCH_PKGS} \
    && pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 dinoserve
USER dinoserve
WORKDIR /home/dinoserve
VOLUME ["/home/dinoserve/var", "/home/dinoserve/runs"]
ENTRYPOINT ["dinoserve"]
CMD ["--help"]
