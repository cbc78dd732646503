"""The CRD generated from api.py: current, structural, valid, and faithful to the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from olmo_operator import api, crd
from tests.crd_schema import prune, root_schema, schema_errors

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_committed_crd_is_current() -> None:
    """manifests/crd/ and the chart's crds/ both hold exactly the CRD generated from api.py."""
    assert len(crd.CRD_PATHS) == 2
    for path in crd.CRD_PATHS:
        committed = (ROOT / path).read_text()
        assert committed == crd.render_crd(), f"{path} is stale: run `olmorun crd` and commit it"


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(crd.build_crd(), "1.30", strict=True)


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for key in ("properties",):
        for name, child in node.get(key, {}).items():
            found += _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_schema_is_structural() -> None:
    for path, node in _walk(root_schema()):
        text = repr(node)
        assert "$ref" not in text and "anyOf" not in text and "$defs" not in text, path
        typed = (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        )
        assert typed, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("type") == "object" and "properties" not in node:
            assert (
                "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
                or path == ".metadata"
            ), path


def test_names_columns_and_rules() -> None:
    obj = crd.build_crd()
    names = obj["spec"]["names"]
    assert (obj["metadata"]["name"], names["kind"], names["plural"], names["shortNames"]) == (
        "olmoruns.olmorun.dev",
        "OlmoRun",
        "olmoruns",
        ["olmo"],
    )
    version = obj["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert {"Stage", "Succeeded", "Reason", "Age"} <= {n for n, c in columns.items() if "priority" not in c}
    assert all(columns[n]["priority"] == 1 for n in ("Step", "Tokens", "Loss"))
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["seed"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    assert spec["phases"]["x-kubernetes-list-map-keys"] == ["name"]
    assert spec["phases"]["items"]["properties"]["maxTokens"]["x-kubernetes-int-or-string"] is True


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_the_crd_schema_and_survive_pruning(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    assert schema_errors(document) == []
    assert prune(document) == document, "the API server would drop fields of this example"


def test_crd_schema_rejects_what_pydantic_rejects() -> None:
    document = yaml.safe_load((ROOT / "examples/olmorun-tiny.yaml").read_text())
    document["spec"]["phases"][0]["kind"] = "finetune"
    document["spec"]["cluster"]["gpusPerNode"] = -1
    errors = " ".join(schema_errors(document))
    assert "finetune" in errors and "-1" in errors


def test_every_status_field_survives_the_schema() -> None:
    """A status field the schema lacks would be pruned silently by the API server."""
    status = api.OlmoRunStatus(
        observed_generation=2,
        stage="Running",
        active_phases=["pretrain"],
        step=10,
        tokens=1000,
        last_loss=2.0,
        storage="s3://b/ns/r",
        conditions=[
            api.Condition(
                type="Succeeded",
                status="Unknown",
                reason="Running",
                message="m",
                last_transition_time="2026-01-01T00:00:00Z",
                observed_generation=2,
            )
        ],
        phases={
            "pretrain": api.PhaseStatus(
                state="Running",
                attempts=1,
                checkpoint="c",
                archive="a",
                step=1,
                tokens=2,
                last_loss=3.0,
                message="m",
                spec_hash="h",
                started_at="s",
                finished_at="f",
                jobs=[
                    api.JobStatus(
                        name="j",
                        seed=1,
                        state="Running",
                        attempts=1,
                        checkpoint="c",
                        step=1,
                        tokens=2,
                        last_loss=1.0,
                        message="m",
                        retry_at="t",
                    )
                ],
            )
        },
    )
    wire = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    document = {
        "apiVersion": api.API_VERSION,
        "kind": "OlmoRun",
        "metadata": {"name": "r"},
        "spec": {},
        "status": wire,
    }
    assert prune(document)["status"] == wire
