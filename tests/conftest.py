"""Shared pytest fixtures. Keep each small; helpers live in their own modules under tests/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.operator.kube import kube_fixture, kubectl_fixture
from tests.s3server import S3Server

# The emulated Kubernetes API (`kube`) and its client (`kubectl`): the operator's tests, its end-to-end
# tests and its fault tests all use them; they are defined next to the emulator.
__all__ = ["kube_fixture", "kubectl_fixture"]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server that checks credentials. Fails (never skips) if it cannot start."""
    server = S3Server.start(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()
