"""The Helm chart (manifests/chart/olmorun) rendered with the real Helm SDK, and the plain manifests made
from it.

    objects = render({"watchNamespaces": ["research"]})       # every object the release would create
    python -m tests.deploy.chart           # rewrite manifests/operator/ and manifests/training/ (`make
    manifests`)

helm-python-sdk wraps Helm v4's Go SDK (no helm binary); rendering is offline, like `helm template`.
The plain manifests under manifests/operator/ are the chart's default rendering for the release `olmorun` in
`olmorun-system`, without the two Helm-only labels (manifests/training/ likewise holds the training pods'
objects): one source for both install paths, and a test keeps the committed files equal to a fresh rendering.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).parents[2]
CHART = ROOT / "manifests" / "chart" / "olmorun"
MANIFESTS = ROOT / "manifests"
RELEASE, NAMESPACE = "olmorun", "olmorun-system"
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
HEADER = (
    "# Generated from manifests/chart/olmorun (default values) by `make manifests`. Do not edit by hand.\n"
)


def load() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def render(
    values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """Every object of an install of the chart with `values` (Helm validates them against values.schema.json).

    Raises helm_python.HelmValuesError for values the schema refuses.
    """
    chart = load()
    rendered = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if path.endswith(".yaml"):
            objects += [d for d in yaml.safe_load_all(rendered[path]) if d]
    return objects


def find(
    objects: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str | None = None
) -> dict[str, Any]:
    """The one object of `kind` (and name/namespace when given); AssertionError if there is not exactly
    one."""
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name!r} in {[o['kind'] for o in objects]}"
    return found[0]


def plain(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects without the labels that only Helm sets (the plain manifests are not a Helm release)."""
    out = []
    for obj in objects:
        labels = obj.get("metadata", {}).get("labels", {})
        obj = {
            **obj,
            "metadata": {
                **obj["metadata"],
                "labels": {k: v for k, v in labels.items() if k not in HELM_ONLY_LABELS},
            },
        }
        out.append(obj)
    return out


PLAIN_VALUES = {"webhook": {"enabled": False}}
"""The rendering manifests/operator/ comes from: the defaults without the admission webhook, whose
certificate Helm (or cert-manager) makes at install; a committed one would be the same key everywhere.
Without it the operator still refuses an invalid spec, before any job (stage Invalid)."""
TRAINING_VALUES = {"trainer": {"networkPolicy": {"enabled": True}}}
"""The rendering manifests/training/ comes from: the training pods' ServiceAccount and the NetworkPolicy
example."""


def _component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))


def plain_files() -> dict[str, str]:
    """path under manifests/ -> its YAML, one file per object kind:

    operator/: the default rendering without the webhook (PLAIN_VALUES) and the training pods' objects;
    training/: those objects (ServiceAccount, NetworkPolicy) with no namespace, for `kubectl apply -n NS -f`.
    """
    files: dict[str, list[dict[str, Any]]] = {}
    for obj in plain(render(PLAIN_VALUES)):
        if _component(obj) != "trainer":
            files.setdefault(f"operator/{obj['kind'].lower()}.yaml", []).append(obj)
    for obj in plain(render(TRAINING_VALUES)):
        if _component(obj) == "trainer":
            obj["metadata"].pop("namespace", None)
            files.setdefault(f"training/{obj['kind'].lower()}.yaml", []).append(obj)
    return {
        name: HEADER + yaml.safe_dump_all(objs, sort_keys=False, width=120)
        for name, objs in sorted(files.items())
    }


def write_plain() -> list[Path]:
    """Rewrite manifests/operator/ and manifests/training/ from the chart."""
    files = plain_files()
    for folder in {name.split("/")[0] for name in files}:
        (MANIFESTS / folder).mkdir(parents=True, exist_ok=True)
        for stale in (MANIFESTS / folder).glob("*.yaml"):
            stale.unlink()
    for name, text in files.items():
        (MANIFESTS / name).write_text(text)
    return [MANIFESTS / name for name in files]


if __name__ == "__main__":
    for path in write_plain():
        print(f"wrote {path.relative_to(ROOT)}")
    sys.exit(0)
