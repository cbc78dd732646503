"""api.py -> the OlmoRun CustomResourceDefinition (apiextensions.k8s.io/v1, structural schema).

pydantic emits JSON Schema 2020-12 with `$ref`s, `anyOf` for optionals and numeric exclusive bounds;
the API server wants an OpenAPI v3 *structural* schema. `structural()` converts one into the other
(rules: Kubernetes' CustomResourceDefinition docs, "Specifying a structural schema"). `build_crd()`
adds the status subresource, printer columns, the short name and CEL rules; `olmorun crd` writes it to
manifests/crd/ and to the Helm chart's crds/ (the same bytes in both: CRD_PATHS), and a golden test
keeps both current.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from olmo_operator import api

CRD_NAME = f"{api.PLURAL}.{api.GROUP}"
CRD_PATH = Path("manifests/crd") / f"{CRD_NAME}.yaml"
CHART_CRD_PATH = Path("manifests/chart/olmorun/crds") / f"{CRD_NAME}.yaml"
CRD_PATHS = (CRD_PATH, CHART_CRD_PATH)
"""Every committed copy of the CRD: `kubectl apply -k manifests/` reads the first, `helm install` the
second."""

# Keys that OpenAPI v3 (Kubernetes' subset) accepts on a schema node; everything else is dropped.
_KEEP = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "nullable",
    "format",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
}


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert one pydantic JSON-Schema node (and its children) into a structural OpenAPI schema."""
    defs = schema.get("$defs", {}) if defs is None else defs
    node = dict(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        node = {**target, **node}  # sibling keys (description) win over the definition's
    nullable = False
    if "anyOf" in node:
        every = node.pop("anyOf")
        branches = [b for b in every if b.get("type") != "null"]
        nullable = len(branches) < len(every)
        if len(branches) == 1:
            node = {**structural(branches[0], defs), **{k: v for k, v in node.items() if k == "description"}}
        elif all(b.get("type") in ("integer", "number") for b in branches):
            node = {"type": "number", "description": node.get("description", "")}
        elif all(
            "x-kubernetes-int-or-string" in b or b.get("type") in ("integer", "string") for b in branches
        ):
            node = {"x-kubernetes-int-or-string": True, "description": node.get("description", "")}
        else:  # e.g. number | "inherit": no structural form; the operator's pydantic parse validates it
            node = {"x-kubernetes-preserve-unknown-fields": True, "description": node.get("description", "")}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "prefixItems" in node:  # fixed-length tuple of one type
        items = node.pop("prefixItems")
        node["items"] = structural(items[0], defs)
        node["minItems"] = node["maxItems"] = len(items)
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            node[inclusive] = node[bound]
            node[bound] = True
    if "properties" in node:
        node["type"] = "object"
        node["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
        node.pop("additionalProperties", None)
    elif node.get("type") == "object" or "additionalProperties" in node:
        extra = node.get("additionalProperties", True)
        node["type"] = "object"
        if extra is True or extra == {}:
            node.pop("additionalProperties", None)
            node["x-kubernetes-preserve-unknown-fields"] = True
        elif extra is False:
            node.pop("additionalProperties")
        else:
            node["additionalProperties"] = structural(extra, defs)
    if "items" in node:
        node["items"] = structural(node["items"], defs)
        node["type"] = "array"
    if "enum" in node and "type" not in node:
        node["type"] = "string" if all(isinstance(v, str) for v in node["enum"]) else "integer"
    if "type" not in node and not node.get("x-kubernetes-int-or-string"):
        node["x-kubernetes-preserve-unknown-fields"] = True
    if nullable and "anyOf" not in node:
        node["nullable"] = True
    return {k: v for k, v in node.items() if k in _KEEP and v not in ("", None)}


class _NoAliasDumper(yaml.SafeDumper):
    """Kubernetes tooling reads anchors poorly: write repeated nodes out in full."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _immutable(message: str) -> list[dict[str, str]]:
    return [{"rule": "self == oldSelf", "message": message}]


def spec_schema() -> dict[str, Any]:
    schema = structural(api.OlmoRunSpec.model_json_schema(by_alias=True, mode="validation"))
    props = schema["properties"]
    props["seed"]["x-kubernetes-validations"] = _immutable(
        "seed is immutable: create a new OlmoRun to change it"
    )
    props["model"]["x-kubernetes-validations"] = _immutable(
        "model is immutable: create a new OlmoRun to change it"
    )
    storage = props["storage"]["properties"]
    storage["uri"]["x-kubernetes-validations"] = _immutable(
        "storage.uri is immutable: checkpoints live there"
    )
    phases = props["phases"]
    phases["x-kubernetes-list-type"] = "map"
    phases["x-kubernetes-list-map-keys"] = ["name"]
    phases["x-kubernetes-validations"] = [
        {
            "rule": "self.all(p, p.kind == 'pretrain' || has(p.from))",
            "message": "anneal, soup, sft, dpo and rlvr phases start from another phase: set `from`",
        },
        {
            "rule": "self.all(p, has(p.from) ? self.exists(q, q.name == p.from) : true)",
            "message": "`from` must name a phase of this run",
        },
    ]
    return schema


def status_schema() -> dict[str, Any]:
    return structural(api.OlmoRunStatus.model_json_schema(by_alias=True, mode="serialization"))


def printer_columns() -> list[dict[str, Any]]:
    succeeded = '.status.conditions[?(@.type=="Succeeded")]'
    return [
        {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
        {"name": "Active", "type": "string", "jsonPath": ".status.activePhases", "priority": 1},
        {"name": "Succeeded", "type": "string", "jsonPath": f"{succeeded}.status"},
        {"name": "Reason", "type": "string", "jsonPath": f"{succeeded}.reason"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.step", "priority": 1},
        {"name": "Tokens", "type": "integer", "jsonPath": ".status.tokens", "priority": 1},
        {"name": "Loss", "type": "number", "jsonPath": ".status.lastLoss", "priority": 1},
        {"name": "Model", "type": "string", "jsonPath": ".spec.model.preset", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def build_crd() -> dict[str, Any]:
    """The complete CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/name": "olmorun"}},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["all", "olmorun"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "OlmoRun reproduces the OLMo 2 recipe: phases of multi-node "
                            "PyTorch jobs.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd() -> str:
    header = "# Generated from operator/olmo_operator/api.py by `olmorun crd`. Do not edit by hand.\n"
    return header + yaml.dump(build_crd(), Dumper=_NoAliasDumper, sort_keys=False, width=120)


def write_crd(path: Path = CRD_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_crd())
    return path
