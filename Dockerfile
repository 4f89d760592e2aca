# syntax=docker/dockerfile:1
# Tollway gateway image: `docker build -t tollway .` then `docker run -p 8080:8080 tollway`.
# Multi-stage: the builder installs the package and its dependencies into a virtualenv; the final
# stage copies only that virtualenv onto a clean slim base and runs it as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/tollway \
    PATH=/opt/tollway/bin:$PATH

WORKDIR /src
RUN python -m venv /opt/tollway

# Dependencies from the hash-pinned runtime lock (pip-compile), never re-resolved at build time — it
# pins the build backend (setuptools) too; then the package itself with --no-deps and no build
# isolation, so nothing unpinned is fetched and nothing newer than the lock can slip in.
COPY requirements/runtime.lock ./requirements/runtime.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.lock

COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# `tollway db upgrade` looks for migrations/ next to the installed app/ package: copy it there
# unless the distribution already ships it.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
 && purelib="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && if [ ! -f "${purelib}/migrations/env.py" ]; then cp -r migrations "${purelib}/migrations"; fi


FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="tollway" \
      org.opencontainers.image.description="LLM gateway: Anthropic- and OpenAI-compatible API with team budgets, routing, prompt caching and a usage ledger" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV VIRTUAL_ENV=/opt/tollway \
    PATH=/opt/tollway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOLLWAY_HOST=0.0.0.0 \
    TOLLWAY_PORT=8080 \
    TOLLWAY_SPOOL_DIR=/var/lib/tollway/spool

RUN groupadd --system --gid 10001 tollway \
 && useradd --system --no-log-init --uid 10001 --gid tollway --home-dir /var/lib/tollway --shell /usr/sbin/nologin tollway \
 && mkdir -p /var/lib/tollway/spool \
 && chown -R tollway:tollway /var/lib/tollway

COPY --from=builder /opt/tollway /opt/tollway

WORKDIR /var/lib/tollway
USER 10001:10001
EXPOSE 8080

# No curl in the slim image: Python asks /healthz (alive), honouring TOLLWAY_PORT.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TOLLWAY_PORT', '8080'), timeout=4)"]

# SIGTERM (docker stop, Kubernetes) starts a graceful drain: give `docker stop -t` enough time.
STOPSIGNAL SIGTERM
CMD ["tollway", "serve", "--host", "0.0.0.0"]
