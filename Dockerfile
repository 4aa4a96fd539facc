# syntax=docker/dockerfile:1
#
# earlytom-vllm serving image: the official vLLM OpenAI image (a supported release, VLLM_VERSION
# below) + this package with its [server] extra, running `earlytom-serve` (OpenAI-compatible front end on :8000, which spawns
# the vLLM engine with the EarlyTom plugin on :8001) as a non-root user.
#
#   docker build -t earlytom-vllm:0.1.0 .
#   docker run --gpus all --ipc=host -p 8000:8000 -p 8001:8001 \
#       -v earlytom-hf-cache:/data/hf-cache -e HF_TOKEN \
#       -e EARLYTOM_MODEL=llava-hf/llava-onevision-qwen2-7b-ov-hf earlytom-vllm:0.1.0
#
# GPU flags: `--gpus all` (or `--gpus '"device=0,1"'`) needs the NVIDIA Container Toolkit;
# `--ipc=host` (or a large `--shm-size`, e.g. 16g) is required for tensor parallelism, since
# PyTorch shares tensors between the worker processes through /dev/shm.
#
# The vLLM release under the plugin (docs/vllm-versions.md): one of the supported releases
#   VLLM_VERSION: 0.32.0 | 0.33.0 | 0.34.0
# picked at build time, with the vLLM release in the image's tag, e.g.
#   docker build --build-arg VLLM_VERSION=0.34.0 -t earlytom-vllm:0.1.0-vllm0.34.0 .
# A base image whose vLLM the plugin does not support fails the build (runtime stage).
ARG VLLM_VERSION=0.32.0
# The base image is pinned by tag. For byte-for-byte reproducible builds pin its digest too:
#   docker buildx imagetools inspect vllm/vllm-openai:v0.32.0     # prints "Digest: sha256:..."
#   docker build --build-arg VLLM_IMAGE=vllm/vllm-openai:v0.32.0@sha256:<digest> .
# Keep the tag in the reference when adding a digest: it documents which release the digest is.
ARG VLLM_IMAGE=vllm/vllm-openai:v${VLLM_VERSION}

# ---------------------------------------------------------------------------------------------
# builder: turn the sources into a wheel. Nothing from this stage but the wheel reaches the image.
# ---------------------------------------------------------------------------------------------
FROM ${VLLM_IMAGE} AS builder
WORKDIR /src
# .dockerignore whitelists the package sources and their metadata (no tests, venvs or caches).
COPY . /src
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src \
 && ls -l /wheels

# ---------------------------------------------------------------------------------------------
# runtime
# ---------------------------------------------------------------------------------------------
FROM ${VLLM_IMAGE} AS runtime

ARG VLLM_VERSION
ARG EARLYTOM_UID=10001
ARG EARLYTOM_GID=10001

LABEL org.opencontainers.image.title="earlytom-vllm" \
      org.opencontainers.image.description="Video LLMs (LLaVA-OneVision, LLaVA-Video, Qwen2.5-VL) on vLLM ${VLLM_VERSION} with EarlyTom visual-token compression, OpenAI-compatible API" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.earlytom.vllm-version="${VLLM_VERSION}"

# Install the wheel with the [server] extra (fastapi, uvicorn, pydantic-settings, prometheus-client,
# httpx) and no dev tools. The constraints file freezes what the base image already ships (torch,
# vLLM, transformers, ...) so that pip can add the few missing packages but never swap the CUDA
# stack underneath vLLM.
COPY --from=builder /wheels /tmp/wheels
RUN set -eux; \
    python3 -m pip list --format=freeze > /tmp/base-constraints.txt; \
    wheel="$(ls /tmp/wheels/earlytom_vllm-*.whl)"; \
    python3 -m pip install --no-cache-dir -c /tmp/base-constraints.txt "${wheel}[server]"; \
    rm -rf /tmp/wheels /tmp/base-constraints.txt; \
    command -v earlytom-serve; \
    python3 -c "import earlytom_vllm, earlytom_server; print('earlytom-vllm', earlytom_vllm.__version__)"; \
    python3 -c "import importlib.metadata as md, sys; from earlytom_vllm.vllm.compat import unsupported_vllm; v = md.version('vllm'); sys.exit(unsupported_vllm(v, tuple(int(p) for p in v.split('.')[:2] if p.isdigit())))"

# Unprivileged user; /data holds the Hugging Face cache (mount a volume there) and local media.
RUN set -eux; \
    groupadd --system --gid "${EARLYTOM_GID}" earlytom; \
    useradd --system --uid "${EARLYTOM_UID}" --gid earlytom --create-home \
        --home-dir /home/earlytom --shell /usr/sbin/nologin earlytom; \
    mkdir -p /data/hf-cache /data/media /home/earlytom/.cache; \
    chown -R earlytom:earlytom /data /home/earlytom

COPY docker/healthcheck.py /opt/earlytom/healthcheck.py

# Settings: earlytom-serve reads EARLYTOM_* through pydantic-settings (server/settings.py);
# override any with -e. Compression defaults are a JSON object of EarlyTomConfig fields; extra
# vLLM flags (tensor parallelism, memory) go in EARLYTOM_BACKEND_ARGS, e.g.
#   -e EARLYTOM_BACKEND_ARGS="--tensor-parallel-size 4 --gpu-memory-utilization 0.92"
# The engine binds 0.0.0.0:8001 so that Prometheus can scrape its /metrics; its /v1 API stays
# guarded by a key only the front end knows.
ENV HOME=/home/earlytom \
    HF_HOME=/data/hf-cache \
    PYTHONUNBUFFERED=1 \
    EARLYTOM_MODEL=llava-hf/llava-onevision-qwen2-7b-ov-hf \
    EARLYTOM_HOST=0.0.0.0 \
    EARLYTOM_PORT=8000 \
    EARLYTOM_BACKEND_HOST=0.0.0.0 \
    EARLYTOM_BACKEND_PORT=8001 \
    EARLYTOM_COMPRESSION='{"retain_ratio": 0.1}' \
    EARLYTOM_NUM_FRAMES=32 \
    EARLYTOM_MEDIA_DIR=/data/media \
    EARLYTOM_ENFORCE_EAGER=false \
    EARLYTOM_STARTUP_TIMEOUT=3600

USER earlytom:earlytom
WORKDIR /home/earlytom

# 8000: earlytom-serve (OpenAI API, /health, /metrics with earlytom_* series).
# 8001: the vLLM engine earlytom-serve spawns (/metrics with vllm:* series, scraped by Prometheus).
EXPOSE 8000 8001

# Loading a 7B model takes minutes, a 72B one longer: the start period covers weight download and
# load (raise it with `docker run --health-start-period=30m` for first runs on a cold cache).
HEALTHCHECK --interval=30s --timeout=10s --start-period=15m --retries=3 \
    CMD ["python3", "/opt/earlytom/healthcheck.py"]

# The base image's entrypoint is `vllm serve`; replace it. Extra CLI flags can be passed as the
# container command, e.g. `docker run ... earlytom-vllm:0.1.0 --backend http://node2:8001`.
# SIGTERM (docker stop) drains: new requests get 503, answers in flight finish within
# EARLYTOM_DRAIN_GRACE (30 s), then vLLM is stopped. Give it the time: `docker stop -t 60`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["earlytom-serve"]
CMD []
