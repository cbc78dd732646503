"""Check objects against the generated CRD's OpenAPI schema the way the API server does.

No kube-apiserver runs here, so tests use this: `schema_errors` validates (OpenAPI `nullable`
translated to JSON Schema), `prune` drops fields the schema does not declare, exactly what the
API server would silently do to a status field the schema lacks.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

from olmo_operator import crd


def openapi_to_jsonschema(node: Any) -> Any:
    if isinstance(node, list):
        return [openapi_to_jsonschema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if out.pop("nullable", False) and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def root_schema() -> dict[str, Any]:
    return crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def schema_errors(obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(openapi_to_jsonschema(root_schema()))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def prune(obj: Any, schema: dict[str, Any] | None = None) -> Any:
    """What the API server stores: unknown fields removed (unless preserve-unknown-fields).
    The root's metadata is the server's own ObjectMeta and is never pruned by the CRD schema."""
    if schema is None:
        pruned = prune(obj, root_schema())
        if isinstance(obj, dict) and "metadata" in obj:
            pruned["metadata"] = copy.deepcopy(obj["metadata"])
        return pruned
    if schema.get("x-kubernetes-preserve-unknown-fields") or obj is None:
        return copy.deepcopy(obj)
    if isinstance(obj, dict):
        if "properties" in schema:
            return {k: prune(v, schema["properties"][k]) for k, v in obj.items() if k in schema["properties"]}
        if isinstance(schema.get("additionalProperties"), dict):
            return {k: prune(v, schema["additionalProperties"]) for k, v in obj.items()}
        return {} if schema.get("type") == "object" else copy.deepcopy(obj)
    if isinstance(obj, list) and "items" in schema:
        return [prune(v, schema["items"]) for v in obj]
    return obj
