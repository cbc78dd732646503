"""`olmorun validate` sees the data: an input a phase names that does not exist is refused at the door,
naming its field (before, the run pretrained for days and failed at its SFT phase). Local inputs always;
remote ones with `--remote-data`, here on the repository's S3 server (SeaweedFS)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from olmo_operator.api import parse_olmorun
from olmo_operator.inputs import missing_inputs, named_inputs
from tests.s3server import S3Server

ROOT = Path(__file__).parents[2]
TINY = yaml.safe_load((ROOT / "examples" / "olmorun-tiny.yaml").read_text())


def _validate(spec: dict[str, Any], tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(spec))
    return subprocess.run(
        [sys.executable, "-m", "olmo_operator.cli", "validate", str(path), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def _phase(spec: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(p for p in spec["spec"]["phases"] if p["kind"] == kind)


def test_every_input_of_the_demo_is_named_and_found() -> None:
    run = parse_olmorun(copy.deepcopy(TINY))
    fields = dict(named_inputs(run))
    assert {p for p in fields.values()} >= {
        "examples/data/tiny-sft.jsonl",
        "examples/data/tiny-dpo.jsonl",
        "examples/data/tiny-rlvr.jsonl",
        "examples/data/tiny-heldout.jsonl",
    }
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        assert missing_inputs(run, remote=False) == []
    finally:
        os.chdir(cwd)


def test_validate_names_a_missing_sft_file_and_a_missing_eval_file(tmp_path: Path) -> None:
    spec = copy.deepcopy(TINY)
    _phase(spec, "sft")["sft"]["data"]["paths"] = ["examples/data/tiny-sft-v2.jsonl"]
    soup = _phase(spec, "soup")
    soup["eval"]["tasks"][0]["paths"] = [f"file://{tmp_path}/heldout.jsonl"]
    result = _validate(spec, tmp_path)
    assert result.returncode == 1, result.stdout
    sft = next(i for i, p in enumerate(spec["spec"]["phases"]) if p["kind"] == "sft")
    assert f"spec.phases[{sft}].sft.data.paths[0]: no file matches 'examples/data/tiny-sft-v2.jsonl'" in (
        result.stderr
    )
    assert "eval.tasks[0].paths[0]: no file matches" in result.stderr and "heldout.jsonl" in result.stderr
    (tmp_path / "heldout.jsonl").write_text((ROOT / "examples/data/tiny-heldout.jsonl").read_text())
    _phase(spec, "sft")["sft"]["data"]["paths"] = ["examples/data/tiny-sft*.jsonl"]  # a glob that matches
    assert _validate(spec, tmp_path).returncode == 0


def test_remote_inputs_are_looked_up_with_remote_data(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.make_bucket("inputs")
    fs = s3_server.filesystem()
    fs.put(str(ROOT / "examples/data/tiny-dpo.jsonl"), f"{bucket.removeprefix('s3://')}/dpo/rows.jsonl")
    spec = copy.deepcopy(TINY)
    _phase(spec, "dpo")["dpo"]["data"]["paths"] = [f"{bucket}/dpo/*.jsonl"]
    _phase(spec, "rlvr")["rlvr"]["data"]["paths"] = [f"{bucket}/rlvr/prompts.jsonl"]
    assert _validate(spec, tmp_path).returncode == 0  # remote inputs are not looked up without the flag
    result = _validate(spec, tmp_path, "--remote-data", env=s3_server.env())
    assert result.returncode == 1
    rlvr = next(i for i, p in enumerate(spec["spec"]["phases"]) if p["kind"] == "rlvr")
    assert (
        f"spec.phases[{rlvr}].rlvr.data.paths[0]: no file at '{bucket}/rlvr/prompts.jsonl'" in result.stderr
    )
    assert "dpo.data.paths" not in result.stderr  # the glob matched
