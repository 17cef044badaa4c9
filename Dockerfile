# syntax=docker/dockerfile:1
# The platform image: the `heartbeat-platform` CLI, the Dagster code location, webserver and
# daemon (docker-compose.yml runs them all from this one image).
#
# Reproducible: a base image pinned by exact tag (not by digest: the build machines have no
# Docker engine and no registry access, so a digest could not be checked), the project built
# once into a wheel, the Dagster family pinned in pyproject.toml. Slim: no compiler, no source
# tree, no pip cache. Non-root.
# No secret in any layer: every credential arrives as an environment variable at run time.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md dagster.yaml workspace.yaml requirements.lock ./
COPY sql ./sql
COPY heartbeat_platform ./heartbeat_platform
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home
RUN groupadd --system --gid 10001 heartbeat \
    && useradd --system --uid 10001 --gid heartbeat --create-home --home-dir /home/heartbeat \
        heartbeat \
    && install -d -o heartbeat -g heartbeat "$DAGSTER_HOME" "$DAGSTER_HOME/storage"
# the project's dependencies at the versions of requirements.lock (README, the lock file)
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/src/requirements.lock,target=/tmp/requirements.lock \
    pip install -c /tmp/requirements.lock /wheels/*.whl
USER heartbeat
WORKDIR /home/heartbeat
CMD ["heartbeat-platform", "--help"]
