"""env.json (environment.py): what a job records about its code, software, hardware, determinism and data."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from olmo_trainer import environment
from tests.trainer.dist_util import reference_run


def test_image_digest_only_for_images_pinned_by_digest() -> None:
    assert environment.image_digest("ghcr.io/o/trainer@sha256:" + "a" * 64) == "sha256:" + "a" * 64
    assert environment.image_digest("ghcr.io/o/trainer:0.1.0") is None
    assert environment.image_digest(None) is None


def test_git_state_of_a_checkout_and_outside_one(tmp_path: Path) -> None:
    assert environment.git_state(tmp_path) == (None, None)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(
        ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
        check=True,
    )
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout
    assert environment.git_state(tmp_path) == (head.strip(), False)
    (tmp_path / "f").write_text("2")
    assert environment.git_state(tmp_path) == (head.strip(), True)


@pytest.mark.slow
def test_a_training_job_writes_its_environment_and_data_fingerprints() -> None:
    run = reference_run()
    env = json.loads((run.save_dir / environment.ENV_NAME).read_text())
    assert env["format"] == environment.FORMAT
    assert (env["run"], env["phase"], env["seed"]) == ("tiny", "pretrain", 7)
    assert env["configHash"] == run.config.config_hash()
    assert env["software"]["torch"] == torch.__version__
    assert {"torch", "numpy", "pydantic"} <= set(env["software"]["packages"]) and "pydantic" in env[
        "software"
    ]["packages"]
    assert env["distributed"]["worldSize"] == 2 and env["distributed"]["backend"] == "gloo"
    assert env["hardware"]["accelerator"] == "cpu" and env["hardware"]["devices"] == []
    assert env["determinism"]["deterministicAlgorithms"] is True  # CPU runs demand deterministic kernels
    assert env["seeds"] == {"job": 7, "data": 7}
    data = env["data"]
    assert [s["name"] for s in data["sources"]] == ["general"]
    assert data["numInstances"] == sum(s["instances"] for s in data["sources"])
    assert len(data["orderSha256"]) == 64 and len(data["sampleSha256"]) == 64
    assert str(run.save_dir) not in json.dumps(data)  # file names only: the record does not depend on paths
