"""`olmorun validate` and `olmorun crd` through the real console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from olmo_operator import reference

ROOT = Path(__file__).parents[2]
OLMORUN = [sys.executable, "-m", "olmo_operator.cli"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OLMORUN, *args], capture_output=True, text=True, input=stdin, cwd=ROOT, timeout=60
    )


def test_validate_all_examples() -> None:
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))
    result = run("validate", *examples)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(examples)
    assert all(": OlmoRun " in line and "valid" in line for line in lines)


def test_validate_reports_every_problem_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: olmorun.dev/v1alpha1\nkind: OlmoRun\nmetadata: {name: BAD}\n"
        "spec:\n  image: x\n  model: {preset: tiny}\n  storage: {uri: 'file:///tmp/x'}\n"
        "  phases:\n    - {name: a, kind: anneal, from: zz, maxTokens: 1M}\n"
    )
    result = run("validate", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for path in ("metadata.name", "spec.phases[0].from", "spec.phases[0].data", "spec.phases[0].batch"):
        assert path in result.stderr


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("a: [\n", "not valid YAML at line"), ("", "no document"), ("- 1\n- 2\n", "is a mapping")],
)
def test_validate_never_tracebacks_on_garbage(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(content)
    result = run("validate", str(path))
    assert result.returncode != 0
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_validate_reads_stdin_and_missing_files() -> None:
    result = run("validate", "-", stdin=(ROOT / "examples/olmorun-tiny.yaml").read_text())
    assert result.returncode == 0 and "olmo2-tiny" in result.stdout
    missing = run("validate", "/nonexistent/run.yaml")
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_crd_check_detects_drift(tmp_path: Path) -> None:
    out = tmp_path / "crd.yaml"
    assert run("crd", "--out", str(out)).returncode == 0
    assert run("crd", "--out", str(out), "--check").returncode == 0
    out.write_text(out.read_text().replace("olmo", "olmx", 1))
    drift = run("crd", "--out", str(out), "--check")
    assert drift.returncode == 1 and "out of date" in drift.stderr


def test_crd_writes_and_checks_every_committed_copy(tmp_path: Path) -> None:
    """Without --out, `olmorun crd` writes manifests/crd/ and the Helm chart's crds/ together."""
    written = subprocess.run([*OLMORUN, "crd"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert written.returncode == 0, written.stderr
    from olmo_operator import crd

    assert [(tmp_path / p).read_text() for p in crd.CRD_PATHS] == [crd.render_crd()] * 2
    (tmp_path / crd.CHART_CRD_PATH).write_text("stale")
    drift = subprocess.run(
        [*OLMORUN, "crd", "--check"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert (
        drift.returncode == 1
        and str(crd.CHART_CRD_PATH) in drift.stderr
        and str(crd.CRD_PATH) not in drift.stderr
    )


def test_docs_reference_is_current() -> None:
    result = run("reference", "--file", str(reference.REFERENCE_PATH), "--check")
    assert result.returncode == 0, result.stderr


def test_reference_covers_every_spec_model() -> None:
    text = run("reference").stdout
    for heading in (
        "OlmoRunSpec",
        "PhaseSpec",
        "DataConfig",
        "OptimConfig",
        "ScheduleConfig",
        "ClusterSpec",
        "RetryPolicy",
    ):
        assert f"### {heading}" in text
    assert "| `maxTokens` | tokens (int or `50B`) |" in text


def test_reference_rows_name_quantities_show_yaml_defaults_and_describe_every_field() -> None:
    rows = [line.split(" | ") for line in reference.render_reference().splitlines() if line.startswith("| `")]
    assert rows and all(len(row) == 4 for row in rows)
    by_field = {row[0].strip("| `"): row for row in rows}
    for quantity in ("cpu", "memory", "shmSize"):
        assert by_field[quantity][1].startswith("quantity"), by_field[quantity]
    assert by_field["betas"][2] == "`[0.9, 0.95]`" and by_field["suspend"][2] == "`false`"
    assert not any(
        default.strip("`") in {"True", "False", "None"} or default.startswith("`(")
        for _, _, default, _ in rows
    ), "a default written as a Python repr"
    undescribed = [row[0] for row in rows if not row[3].strip(" |")]
    assert not undescribed, f"fields without a description: {undescribed}"
