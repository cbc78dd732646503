# syntax=docker/dockerfile:1
# The trainer image: every OlmoRun job runs `python -m olmo_trainer ...` (under torchrun) in it.
# Build (images/README.md): make image   — or docker buildx build with the build args below.
#
# Same bytes every time: the base by digest; Python by exact version, its checksum embedded in the pinned uv;
# every package from requirements/trainer.lock with --require-hashes (no resolution at build time); file
# times from SOURCE_DATE_EPOCH.

# nvidia/cuda 13.0.0 runtime on Ubuntu 22.04 (torch 2.13.0 from PyPI is built for CUDA 13.0). How the digest
# was chosen and how to re-pin it: images/README.md.
ARG CUDA_BASE=nvidia/cuda:13.0.0-runtime-ubuntu22.04@sha256:3e7f34f5e9dd5315b67ab30d71a92e578c5911236e14370647df020bdee2ca8a
# The operator image's base: only its uv binary is used here, to install Python and the lock.
ARG UV_BASE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${UV_BASE} AS uv
COPY requirements/bootstrap.lock /tmp/bootstrap.lock
RUN python -m pip install --no-cache-dir --require-hashes --no-deps -r /tmp/bootstrap.lock

FROM ${CUDA_BASE} AS build
# The torch build in the lock: cu130 is PyPI's torch 2.13.0. Another variant needs its own lock
# (make lock TORCH_VARIANT=... TORCH_INDEX=...), passed as TRAINER_LOCK; the build checks they agree.
ARG TORCH_VARIANT=cu130
ARG TRAINER_LOCK=requirements/trainer.lock
ARG PYTHON_VERSION=3.11.18
ARG SOURCE_DATE_EPOCH=0
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_NO_CACHE=1 UV_PYTHON_PREFERENCE=only-managed SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}
COPY --from=uv /usr/local/bin/uv /usr/local/bin/uv
RUN uv python install ${PYTHON_VERSION} && uv venv --python ${PYTHON_VERSION} /opt/venv
COPY ${TRAINER_LOCK} /tmp/trainer.lock
RUN uv pip install --python /opt/venv/bin/python --require-hashes --no-deps -r /tmp/trainer.lock
# The project itself, built from this source tree against the locked setuptools: nothing is re-resolved.
COPY pyproject.toml README.md /src/
COPY operator /src/operator
COPY trainer /src/trainer
RUN uv pip install --python /opt/venv/bin/python --no-deps --no-build-isolation --no-index /src \
 && /opt/venv/bin/python -c "import sys, torch; cuda = torch.version.cuda; \
got = 'cu' + cuda.replace('.', '') if cuda else 'cpu'; \
sys.exit(0 if got == sys.argv[1] else f'the lock installs torch {got}, TORCH_VARIANT is {sys.argv[1]}')" "${TORCH_VARIANT}"

FROM ${CUDA_BASE}
ARG SOURCE_DATE_EPOCH=0
ARG VERSION=0.1.0
ARG REVISION=unknown
# RFC 3339 form of SOURCE_DATE_EPOCH (a Dockerfile cannot compute it): `make image` passes both.
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="olmorun-trainer" \
      org.opencontainers.image.description="OLMo 2 recipe trainer: python -m olmo_trainer" \
      org.opencontainers.image.source="https://github.com/olmorun/olmorun" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
# uid/gid 1000: the launcher runs training pods as runAsUser 1000 (operator/olmo_operator/launcher.py).
RUN groupadd --gid 1000 olmo && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/olmo olmo
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH} \
    HOME=/home/olmo
USER 1000:1000
WORKDIR /home/olmo
ENTRYPOINT ["python", "-m", "olmo_trainer"]
