# syntax=docker/dockerfile:1
# The rvc-trainer images, one codebase, two targets (see docs/deploy.md for sizes and cold start):
#
#   docker build --target worker -t rvc-worker .     GPU image (one NVIDIA L4), weights baked in
#   docker build --target worker --build-arg BAKE_ASSETS=0 -t rvc-worker .   weights from gs:// at start
#   docker build --target api -t rvc-api .           CPU front, no torch (topology "scale-out")
#
# Both run `python -m consumer serve --role ROLE`; Terraform sets the role per service (the worker
# image defaults to "all": intake, status and slices on one GPU service).
# Worker stages: `python` (CPython 3.11 from uv), `builder` (the virtualenv; compilers stay here),
# `assets` (weights downloaded and checksum-verified), `worker` (copies their results).
# Api stages: `api-builder` (the virtualenv from requirements-api.txt), `api`.
# BuildKit builds only the stages a target needs (Cloud Build: DOCKER_BUILDKIT=1).

# CUDA 12.8 user space, matching torch 2.9.1's PyPI wheels (+cu128). Those wheels bring their own CUDA
# libraries (nvidia-*-cu12), so the small `base` flavour suffices; Cloud Run injects the driver (L4:
# a CUDA 12.x driver, which runs 12.8 code through minor-version compatibility).
ARG CUDA_BASE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
# The api image needs no CUDA: Debian's slim CPython image of the same minor version as the worker's.
ARG API_BASE=python:3.11-slim-bookworm

FROM ${UV_IMAGE} AS uv

# --- CPython 3.11: a relocatable python-build-standalone build installed by uv ----------------------
# Ubuntu 24.04 ships 3.12 only; this avoids a PPA and installs the same interpreter on any glibc.
FROM ${CUDA_BASE} AS python
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
ARG PYTHON_VERSION=3.11
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --python "${PYTHON_VERSION}" /opt/venv

# --- builder: every runtime dependency, with faiss-gpu in place of faiss-cpu ----------------------------
FROM python AS builder
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
# Bytecode compiled now: the runtime user cannot write to the venv, and compiling torch's modules
# on every cold start would cost seconds.
ENV UV_COMPILE_BYTECODE=1 \
    VIRTUAL_ENV=/opt/venv
ARG FAISS_GPU=faiss-gpu-cu12==1.14.1.post1
COPY requirements.txt /tmp/requirements.txt
RUN grep -q '^faiss-cpu==' /tmp/requirements.txt \
    && grep -v '^faiss-cpu==' /tmp/requirements.txt > /tmp/requirements-image.txt \
    && echo "${FAISS_GPU}" >> /tmp/requirements-image.txt \
    && uv pip install -r /tmp/requirements-image.txt
# pyworld (harvest pitch) has no wheel: built here against the pinned numpy, as scripts/venv.sh does.
RUN uv pip install "setuptools<81" wheel "cython<4" \
    && uv pip install --no-build-isolation pyworld==0.3.5

# --- assets: the weight files, each checked against its pinned size and SHA-256 ---------------------------
FROM builder AS assets
ARG BAKE_ASSETS=1
COPY rvc_core /src/rvc_core
WORKDIR /src
RUN if [ "${BAKE_ASSETS}" = "1" ]; then \
        /opt/venv/bin/python -m rvc_core assets download --dest /opt/rvc-assets; \
    else \
        mkdir -p /opt/rvc-assets; \
    fi

# --- api: the CPU front (role api): intake, /train, status; no torch, starts in seconds ------------------
FROM ${API_BASE} AS api-builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    VIRTUAL_ENV=/opt/venv
COPY requirements-api.txt /tmp/requirements-api.txt
# The base image's interpreter, which the api stage has at the same path.
RUN uv venv --python /usr/local/bin/python3 /opt/venv \
    && uv pip install -r /tmp/requirements-api.txt

FROM ${API_BASE} AS api
RUN groupadd --gid 10001 rvc \
    && useradd --uid 10001 --gid rvc --create-home --shell /usr/sbin/nologin rvc
COPY --from=api-builder /opt/venv /opt/venv
WORKDIR /app
COPY rvc_core ./rvc_core
COPY consumer ./consumer
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/rvc \
    DEVICE=cpu \
    PORT=8080
USER 10001:10001
EXPOSE 8080
CMD ["python", "-m", "consumer", "serve", "--role", "api"]

# --- worker: the GPU service (role all by default, worker in scale-out) --------------------------------------
# Last stage, so a plain `docker build .` still gives the GPU image.
FROM ${CUDA_BASE} AS worker
# Ubuntu's security updates replace exact versions within days, so pins would break rebuilds; the
# base image tag fixes the release (24.04) and with it the package line.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 rvc \
    && useradd --uid 10001 --gid rvc --create-home --shell /usr/sbin/nologin rvc
COPY --from=python /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
COPY --from=assets /opt/rvc-assets /opt/rvc-assets
WORKDIR /app
COPY rvc_core ./rvc_core
COPY consumer ./consumer
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/rvc \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba \
    RVC_ASSETS=/opt/rvc-assets \
    RVC_PRETRAINED=/opt/rvc-assets \
    PORT=8080
USER 10001:10001
EXPOSE 8080
# `serve` runs gunicorn: one process (one GPU), request threads, no worker timeout (Cloud Run owns
# request timeouts) and a graceful stop inside Cloud Run's 10 s after SIGTERM (consumer/__main__.py).
CMD ["python", "-m", "consumer", "serve", "--role", "all"]
