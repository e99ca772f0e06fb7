# syntax=docker/dockerfile:1
# hub-mirror images, built from the hash-locked dependencies in requirements/ (docs/deploy.md).
#
#   docker build -t hub-mirror:0.1.0 .                          # the mirror (the last stage, "mirror")
#   docker build --target smoke -t hub-mirror-smoke:0.1.0 .     # plus torch & co. for the GPU smoke worker
#
# Every third-party package comes from a lock with hashes (pip --require-hashes), the build backend
# included; the project itself is installed on top with --no-deps, so nothing unlocked slips in.
# Regenerate the locks after changing pyproject.toml: docs/deploy.md, "Locked dependencies".

# Pinned to a Debian release; bump it (and the label below) when a new slim image is out.
ARG PYTHON_IMAGE=python:3.11-slim-trixie

# --- Shared by every stage: the interpreter and quiet, cache-free pip. -------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# --- The project's wheel, built with the locked setuptools and no build isolation. -------------------
FROM base AS wheel
COPY requirements/build.lock /tmp/build.lock
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes -r /tmp/build.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mirror ./mirror
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# --- The mirror's virtualenv: the lock first (a layer that survives code changes), then the wheel. ----
FROM base AS mirror-venv
COPY requirements/mirror.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes -r /tmp/requirements.lock
COPY --from=wheel /wheels /wheels
RUN /opt/venv/bin/pip install --no-deps /wheels/*.whl

# --- The smoke worker's virtualenv: the mirror plus the `smoke` extra (torch from PyPI, CUDA wheels). -
FROM base AS smoke-venv
COPY requirements/smoke.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes -r /tmp/requirements.lock
COPY --from=wheel /wheels /wheels
RUN /opt/venv/bin/pip install --no-deps /wheels/*.whl

# --- What both runtime images share: no compilers, no pip cache, a fixed non-root user. --------------
FROM base AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="hub-mirror" \
      org.opencontainers.image.description="Self-hosted Hugging Face Hub mirror proxy with a verified, content-addressed cache" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# Fixed ids, so a volume or a host directory has the same owner on every host and in Kubernetes
# (runAsUser/fsGroup 10001). /cache is created owned by it: a new named volume copies that owner.
RUN groupadd --system --gid 10001 mirror \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/mirror --create-home \
       --shell /usr/sbin/nologin mirror \
    && install -d -o 10001 -g 10001 -m 0750 /cache
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/mirror
WORKDIR /home/mirror
# aiohttp's run_app turns SIGTERM into a graceful shutdown: stop accepting, let downloads finish
# within server.shutdown_grace, publish verified blobs, close storage (tests/test_signals.py).
STOPSIGNAL SIGTERM
ENTRYPOINT ["hub-mirror"]

# --- The GPU smoke worker: `hub-mirror smoke ...` (docs/smoke.md); its command comes from compose. ----
FROM runtime AS smoke
LABEL org.opencontainers.image.title="hub-mirror-smoke" \
      org.opencontainers.image.description="hub-mirror's inference smoke worker (Qwen3-VL on a GPU)"
COPY --from=smoke-venv /opt/venv /opt/venv
# Its scratch space (a fresh HF_HOME per run) and results; new named volumes copy this owner.
RUN install -d -o 10001 -g 10001 -m 0750 /scratch /results
USER 10001:10001
EXPOSE 9109
CMD ["smoke", "--help"]

# --- The mirror (the default target, so it comes last). ----------------------------------------------
FROM runtime AS mirror
COPY --from=mirror-venv /opt/venv /opt/venv
USER 10001:10001
# With the local backend this is the cache; with S3 a small local working directory.
VOLUME /cache
EXPOSE 8090
# Liveness: the process answers HTTP (/readyz, which needs storage, is for load balancers). slim has
# no curl, so the probe is Python's urllib; a failed request raises and exits non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/healthz', timeout=4)"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8090", "--cache-dir", "/cache"]
