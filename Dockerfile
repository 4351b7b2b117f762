# syntax=docker/dockerfile:1
# otlp-gateway container image.
#
#   docker build -t otlp-gateway:0.1.0 .
#   docker run --rm -p 4317:4317 -p 4318:4318 -p 9464:9464 \
#     -e OTLP_GATEWAY_BACKEND_ENDPOINT=http://lgtm:4318 otlp-gateway:0.1.0
#
# Installs exactly what the README's install command installs (`python3 -m pip install uv`, then
# the locked dependencies from uv.lock without the development group: `uv sync --frozen --no-dev`).
# The config is /etc/otlp-gateway/gateway.yaml (mount your own over it; `${VAR}` in it are read
# from the environment); durable queues live under /var/lib/otlp-gateway (mount a volume there).
# See docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: the virtual environment, from the lock file ----------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /app
# Dependencies first (their own layer, rebuilt only when the lock changes) ...
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
# ... then the gateway itself, installed into the same environment (not editable: the runtime
# stage takes only /app/.venv).
COPY README.md ./
COPY gateway ./gateway
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable \
    && .venv/bin/otlp-gateway --help > /dev/null

# ---- runtime: the slim Python base plus the environment ---------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
RUN groupadd --system --gid ${UID} otlp \
    && useradd --system --uid ${UID} --gid ${UID} --home-dir /var/lib/otlp-gateway \
       --no-create-home --shell /usr/sbin/nologin otlp \
    && install -d -o ${UID} -g ${UID} -m 0750 /var/lib/otlp-gateway /var/lib/otlp-gateway/queue \
    && install -d -m 0755 /etc/otlp-gateway
COPY --from=build /app/.venv /app/.venv
COPY deploy/container/gateway.yaml /etc/otlp-gateway/gateway.yaml
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /var/lib/otlp-gateway
USER ${UID}:${UID}
# 4317 and 4318: OTLP, every transport on both (gRPC, OTLP/HTTP, gRPC-web, Connect).
# 9464: the admin listener (/healthz, /readyz, /metrics, status page, admin API).
EXPOSE 4317 4318 9464
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
# The command `uv run --frozen --no-dev otlp-gateway serve` runs, from the environment built above.
ENTRYPOINT ["otlp-gateway"]
CMD ["serve", "--config", "/etc/otlp-gateway/gateway.yaml"]
