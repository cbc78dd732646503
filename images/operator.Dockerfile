# syntax=docker/dockerfile:1
# The operator image: `python -m olmo_operator` (kopf), deployed by manifests/ or the Helm chart.
# Build from the repository root: make image-operator (images/README.md). No torch: requirements/operator.lock
# has none (a test checks), and the operator never imports it (import-linter).
ARG BASE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${BASE} AS build
ARG SOURCE_DATE_EPOCH=0
ENV SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH} PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements/operator.lock /tmp/operator.lock
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r /tmp/operator.lock
COPY pyproject.toml README.md /src/
COPY operator /src/operator
COPY trainer /src/trainer
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation --no-index /src

FROM ${BASE}
ARG SOURCE_DATE_EPOCH=0
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="olmorun-operator" \
      org.opencontainers.image.description="OlmoRun operator (kopf): python -m olmo_operator" \
      org.opencontainers.image.source="https://github.com/olmorun/olmorun" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=build /opt/venv /opt/venv
RUN groupadd --gid 1000 olmo && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp olmo
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}
USER 1000:1000
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "olmo_operator"]
