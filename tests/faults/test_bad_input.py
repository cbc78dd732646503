"""Bad input is refused at the door: a message naming the field and the fix, no job, nothing written.

Each case is the demo spec (examples/olmorun-tiny.yaml) with one thing wrong. It goes through every door
a user meets: `olmorun validate`, `olmorun local` (nothing under its workdir), the CRD schema the API
server checks (tests/crd_schema.py; where the schema cannot say it, the operator must), and the
operator's own step (reconcile.Reconciler: condition Invalid, no job submitted, no file in storage).
The scheduler behind the Reconciler is the scripted launcher of tests/operator/test_reconcile.py.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from olmo_operator import cli
from olmo_operator.plan import condition
from olmo_operator.reconcile import Reconciler
from tests.crd_schema import schema_errors
from tests.operator.test_reconcile import EXAMPLE, ScriptedLauncher

Document = dict[str, Any]


def _phase(document: Document) -> Document:
    phase: Document = document["spec"]["phases"][0]
    return phase


def _set(path: str, value: Any) -> Callable[[Document], None]:
    """Set a dotted path (`spec.phases.0.nodes`) of the document to `value`."""

    def mutate(document: Document) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _source_paths(paths: list[str]) -> Callable[[Document], None]:
    def mutate(document: Document) -> None:
        _phase(document)["data"]["sources"][0] = {"name": "web", "paths": paths, "weight": 1}

    return mutate


# id: (what is wrong, the field the message names, words of the message, refused by the CRD schema too)
CASES: dict[str, tuple[Callable[[Document], None], str, str, bool]] = {
    "wrong type: nodes is a word": (
        _set("spec.phases.0.nodes", "two"),
        "spec.phases[0].nodes",
        "expected a whole number",
        True,
    ),
    "wrong type: phases is a string": (
        _set("spec.phases", "pretrain"),
        "spec.phases",
        "expected a list",
        True,
    ),
    "wrong type: seed is a list": (_set("spec.seed", [1]), "spec.seed", "expected a whole number", True),
    # The API server prunes unknown fields rather than refusing them (kubectl warns: field validation).
    "unknown field (a typo)": (
        _set("spec.phases.0.maxToken", "1M"),
        "spec.phases[0].maxToken",
        "unknown field",
        False,
    ),
    "0 nodes": (_set("spec.phases.0.nodes", 0), "spec.phases[0].nodes", "must be > 0", True),
    "10^12 nodes": (
        _set("spec.phases.0.nodes", 10**12),
        "spec.phases[0].nodes",
        "must be <= 5000",
        True,
    ),
    "a negative learning rate": (
        _set("spec.phases.0.optim.lr", -3e-4),
        "spec.phases[0].optim.lr",
        "positive finite number",
        False,
    ),
    "a NaN learning rate": (
        _set("spec.phases.0.optim.lr", math.nan),
        "spec.phases[0].optim.lr",
        "positive finite number",
        False,
    ),
    "1e30 tokens": (
        _set("spec.phases.0.maxTokens", 1e30),
        "spec.phases[0].maxTokens",
        "beyond any corpus",
        True,
    ),
    "1e30 tokens, written '1000000000000000000T'": (
        _set("spec.phases.0.maxTokens", "1000000000000000000T"),
        "spec.phases[0].maxTokens",
        "beyond any corpus",
        False,
    ),
    "a negative token count": (
        _set("spec.phases.0.maxTokens", -5),
        "spec.phases[0].maxTokens",
        "cannot be negative",
        False,
    ),
    "a name Kubernetes refuses": (_set("metadata.name", "Olmo_Run"), "metadata.name", "DNS label", False),
    "a name longer than 63": (_set("metadata.name", "a" * 64), "metadata.name", "at most 63", False),
    "a namespace climbing out of the storage root": (
        _set("metadata.namespace", "../other"),
        "metadata.namespace",
        "DNS label",
        False,
    ),
    # Python's `$` also matches before a final newline: names are checked with fullmatch.
    "a name ending in a newline": (_set("metadata.name", "olmo\n"), "metadata.name", "DNS label", False),
    "a namespace ending in a newline": (
        _set("metadata.namespace", "lab\n"),
        "metadata.namespace",
        "DNS label",
        False,
    ),
    "a phase name ending in a newline": (
        _set("spec.phases.0.name", "pretrain\n"),
        "spec.phases[0].name",
        "DNS label",
        False,
    ),
    "a phase name climbing out": (
        _set("spec.phases.0.name", "../x"),
        "spec.phases[0].name",
        "DNS label",
        False,
    ),
    "a storage root with '..'": (
        _set("spec.storage.uri", "s3://bucket/runs/../other-team"),
        "spec.storage.uri",
        "'..' segment",
        False,
    ),
    "a storage root with '%2e%2e'": (
        _set("spec.storage.uri", "s3://bucket/runs/%2e%2e/other-team"),
        "spec.storage.uri",
        "'..' segment",
        False,
    ),
    "a storage root with '%252e%252e' (encoded twice)": (
        _set("spec.storage.uri", "s3://bucket/%252E%252e/x"),
        "spec.storage.uri",
        "'..' segment",
        False,
    ),
    "a relative storage root": (
        _set("spec.storage.uri", "runs/x"),
        "spec.storage.uri",
        "relative path",
        False,
    ),
    "a scratch root with '..'": (
        _set("spec.storage.scratchUri", "file:///scratch/../etc"),
        "spec.storage.scratchUri",
        "'..' segment",
        False,
    ),
    "a storage scheme that is not storage": (
        _set("spec.storage.uri", "http://example.com/x"),
        "spec.storage.uri",
        "not supported",
        False,
    ),
    "a data URI with '..'": (
        _source_paths(["s3://bucket/data/../../secrets/*.npy"]),
        "spec.phases[0].data.sources[0].paths[0]",
        "'..' segment",
        False,
    ),
    "an absolute data path with '..'": (
        _source_paths(["/data/../etc/passwd"]),
        "spec.phases[0].data.sources[0].paths[0]",
        "'..' segment",
        False,
    ),
    "a data URI with '%2e%2e'": (
        _source_paths(["gs://bucket/%2E%2E/x.npy"]),
        "spec.phases[0].data.sources[0].paths[0]",
        "'..' segment",
        False,
    ),
    "a Secret name Kubernetes refuses": (
        _set("spec.storage.secretRef", {"name": "S3_Credentials"}),
        "spec.storage.secretRef.name",
        "Secret name",
        True,
    ),
    "an empty Secret name": (
        _set("spec.storage.secretRef", {"name": ""}),
        "spec.storage.secretRef.name",
        "at least 1",
        True,
    ),
}


def _document(tmp_path: Path) -> Document:
    document: Document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"].update(namespace="lab", uid="uid-bad", generation=1)
    document["spec"]["storage"] = {"uri": (tmp_path / "storage").as_uri()}
    return document


def _written(tmp_path: Path, *, besides: set[str]) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.name not in besides)


@pytest.mark.parametrize("case", list(CASES))
def test_refused_at_every_door(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mutate, field, words, by_schema = CASES[case]
    document = _document(tmp_path)
    mutate(document)
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(document))

    # olmorun validate: exit 1, the field and the fix on stderr.
    assert cli.main(["validate", str(spec_file)]) == 1
    err = capsys.readouterr().err
    assert f"{field}: " in err and words in err, err

    # olmorun local: refused before anything runs; not even its workdir is made.
    workdir = tmp_path / "work"
    assert cli.main(["local", str(spec_file), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert field in err and words in err, err
    assert not workdir.exists()

    # The API server's schema: it refuses what a structural schema can say; the operator the rest.
    assert bool(schema_errors(copy.deepcopy(document))) == by_schema, schema_errors(document)

    # The operator: condition Invalid naming the field, a Warning event, no job, no file in storage.
    launcher = ScriptedLauncher()
    outcome = Reconciler(lambda _ns: launcher).step(document)
    invalid = condition(outcome.status, "Invalid")
    assert (
        invalid is not None
        and invalid.status == "True"
        and field in invalid.message
        and words in invalid.message
    )
    assert [e.reason for e in outcome.events] == ["InvalidSpec"] and outcome.finished
    assert launcher.requests == {}
    assert _written(tmp_path, besides={"run.yaml"}) == []


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (
            b"apiVersion: olmorun.dev/v1alpha1\nkind: OlmoRun\nmetadata: {name: x\nspec:\n  image: [\n",
            "not valid YAML at line 4",
        ),
        (b"\x00\xff\xfe binary", "not text (byte 1 is not UTF-8)"),
        (b"- a list\n- not a mapping\n", "(document): an OlmoRun is a mapping, got list"),
        (b"", "no document found"),
    ],
    ids=["malformed YAML", "not text", "not a mapping", "empty"],
)
def test_a_file_that_is_no_olmorun_is_refused(
    content: bytes, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file = tmp_path / "run.yaml"
    spec_file.write_bytes(content)
    assert cli.main(["validate", str(spec_file)]) == 1
    assert words in capsys.readouterr().err
    assert cli.main(["local", str(spec_file), "--workdir", str(tmp_path / "work")]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
