"""Fixtures of the operator's tests: the emulated Kubernetes API (tests/operator/kube.py)."""

from tests.operator.kube import kube_fixture, kubectl_fixture

__all__ = ["kube_fixture", "kubectl_fixture"]
