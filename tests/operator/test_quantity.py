"""Kubernetes quantities (cpu, memory, shmSize): one grammar at both doors, read by the client's parser.

The table's expectations are Kubernetes' own (k8s.io/apimachinery resource.ParseQuantity): `16GB` and
`1K` are not quantities (decimal kilo is lowercase `k`), `1e3`, `.5` and `5.` are; requests are never
negative. pydantic (api.py) and the generated CRD schema must agree on every row, and what they let in
must be readable by kubernetes.utils.parse_quantity, which the launcher uses.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes.utils import parse_quantity

from olmo_operator import api
from olmo_operator.launcher import cpu_cores, memory_mb
from tests.crd_schema import schema_errors

ROOT = Path(__file__).parents[2]
TINY = yaml.safe_load((ROOT / "examples/olmorun-tiny.yaml").read_text())

# (value as written in YAML, accepted, the string the API keeps)
QUANTITIES: list[tuple[Any, bool, str | None]] = [
    ("16Gi", True, "16Gi"),
    ("1600Gi", True, "1600Gi"),
    ("512M", True, "512M"),
    ("500m", True, "500m"),
    ("1.5Gi", True, "1.5Gi"),
    ("1e3", True, "1e3"),
    ("2E6", True, "2E6"),
    (".5", True, ".5"),
    ("5.", True, "5."),
    ("1k", True, "1k"),
    ("+3", True, "+3"),
    (96, True, "96"),  # unquoted integer, as people write cpu
    (0, True, "0"),
    ("16GB", False, None),
    ("16gi", False, None),
    ("1K", False, None),
    ("1e3Mi", False, None),
    ("1e.5", False, None),  # Go's parser takes an integer exponent only
    ("1E-3", True, "1E-3"),
    ("1e100", False, None),  # bounded exponent: parse_quantity's Decimal would overflow
    ("-1", False, None),
    (-1, False, None),
    ("1 Gi", False, None),
    (" 1Gi", False, None),
    ("lots", False, None),
    ("", False, None),
    ("NaN", False, None),
    ("Infinity", False, None),
    ("1_000", False, None),
    (0.5, False, None),  # a bare YAML float: the CRD's int-or-string refuses it too
    (True, False, None),
]
FIELDS = {"cpu": "96", "memory": "1600Gi", "shmSize": "64Gi"}


def with_cluster(field: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(TINY)
    document["spec"]["cluster"][field] = value
    return document


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize(("value", "accepted", "kept"), QUANTITIES)
def test_pydantic_and_the_crd_schema_agree_with_kubernetes(
    field: str, value: Any, accepted: bool, kept: str | None
) -> None:
    document = with_cluster(field, value)
    crd_refuses = [e for e in schema_errors(document) if f"cluster.{field}" in e]
    assert (not crd_refuses) == accepted, crd_refuses
    if accepted:
        run = api.parse_olmorun(document)
        assert getattr(run.spec.cluster, {"shmSize": "shm_size"}.get(field, field)) == kept
        assert parse_quantity(kept) >= 0  # the launcher can read what was let in
        return
    with pytest.raises(api.SpecError) as caught:
        api.parse_olmorun(document)
    (problem,) = caught.value.problems
    assert problem.path == f"spec.cluster.{field}"
    assert "is not a Kubernetes quantity" in problem.message and f"e.g. {FIELDS[field]!r}" in problem.message


@settings(max_examples=300, deadline=None)
@given(st.from_regex(api.QUANTITY_PATTERN, fullmatch=True))
def test_every_string_of_the_grammar_is_read_by_the_kubernetes_parser(quantity: str) -> None:
    assert api.check_quantity(quantity, "1Gi") == quantity
    value = parse_quantity(quantity)
    assert value.is_finite() and value >= 0
    assert cpu_cores(quantity) == float(value)


@pytest.mark.parametrize(
    ("quantity", "cores", "mb"),
    [
        ("96", 96.0, 1),
        ("500m", 0.5, 1),
        ("1600Gi", 1717986918400.0, 1717987),
        ("512M", 512e6, 512),
        ("1e3", 1000.0, 1),
        ("1.5Gi", 1610612736.0, 1611),
        ("2E", 2e18, 2 * 10**12),
    ],
)
def test_launcher_reads_quantities_with_the_kubernetes_parser(quantity: str, cores: float, mb: int) -> None:
    """cpu in cores, memory in MB rounded up (torchx's units), both from parse_quantity."""
    assert cpu_cores(quantity) == cores == float(parse_quantity(quantity))
    assert memory_mb(quantity) == mb
    assert cpu_cores(None) == 0.0 and memory_mb(None) == 0


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "olmo_operator.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("command", ["validate", "local", "render"])
def test_the_issue_input_is_refused_at_the_door_by_every_command(tmp_path: Path, command: str) -> None:
    """`spec.cluster.memory: 16GB` (the input of the report): refused with the field and an example,
    never a traceback from the launcher; `olmorun local` starts nothing."""
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(with_cluster("memory", "16GB")))
    args = [command, str(spec)] + (["--workdir", str(tmp_path / "w")] if command == "local" else [])
    result = cli(*args)
    assert result.returncode in (1, 2) and result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "spec.cluster.memory: '16GB' is not a Kubernetes quantity" in result.stderr
    assert "e.g. '1600Gi'" in result.stderr
    assert not (tmp_path / "w" / "logs").exists()


def test_an_unquoted_integer_cpu_reaches_the_volcano_job_as_written() -> None:
    from olmo_operator.cli_run import render_documents

    document = with_cluster("cpu", 96)
    document["spec"]["cluster"]["memory"] = "1600Gi"
    jobs = [d for _, d in render_documents(api.parse_olmorun(document)) if d.get("kind") == "Job"]
    container = jobs[0]["spec"]["tasks"][0]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "96"
    assert container["resources"]["requests"]["memory"] == "1600Gi"
