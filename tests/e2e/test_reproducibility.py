"""CI reproducibility: the same spec run twice, in two work dirs, is reported `identical` by `olmorun diff`,
and a one-ulp change in one metric or in one weight is reported as the first divergence.

The pipeline is the tiny example cut down (pretrain 4 steps -> anneal x2 seeds, 2 steps -> soup), run with
`olmorun local` in subprocesses exactly as a user runs it. The perturbed runs are copies of the second
run with one value changed: a metrics.jsonl number nudged to the next float, and the soup's checkpoint
re-saved with one weight nudged by one ulp (its MANIFEST then records the new content identity).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from olmo_operator.rundiff import compare
from olmo_operator.runfiles import read_run
from olmo_trainer import manifest
from olmo_trainer.checkpoint import load_full_state_dict, save_model_weights
from olmo_trainer.storage import filesystem
from tests.e2e.test_local_run import olmorun, small_spec, storage
from tests.s3server import S3Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("repro")
    spec = small_spec(root, pretrain_steps=4)
    workdirs = []
    for name in ("a", "b"):
        workdir = root / name
        done = olmorun("local", str(spec), "--workdir", str(workdir), "--poll", "0.3", timeout=400)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        workdirs.append(workdir)
    return workdirs[0], workdirs[1]


def copy_run(workdir: Path, to: Path) -> Path:
    shutil.copytree(workdir, to, ignore=shutil.ignore_patterns("work", "logs", "wandb"))
    return to


def test_two_runs_of_one_spec_are_identical(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    result = olmorun("diff", str(a), str(b))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical (bit-exact)" in result.stdout
    report = json.loads(olmorun("diff", str(a), str(b), "--json").stdout)
    assert report["identical"] and report["divergences"] == []
    # Everything was compared: 4 jobs, every step, and checkpoints of every job.
    assert report["compared"]["jobs"] == 4 and report["compared"]["checkpoints"] >= 4
    assert report["compared"]["steps"] >= 4 + 2 + 2 + 1


def test_one_ulp_in_one_metric_is_the_first_divergence(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_runs
    c = copy_run(b, tmp_path / "c")
    metrics = storage(c) / "phases" / "anneal" / "s42069" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    original = rows[1]["grad_norm"]
    rows[1]["grad_norm"] = math.nextafter(original, math.inf)
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))

    result = olmorun("diff", str(a), str(c))
    assert result.returncode == 1, result.stdout + result.stderr
    first = (
        "first divergence: phase anneal seed 42069 step 2: metric grad_norm: "
        f"A={original!r} B={rows[1]['grad_norm']!r}"
    )
    assert first in result.stdout, result.stdout
    # A tolerance larger than one ulp lets it pass and reports the deviation.
    within = olmorun("diff", str(a), str(c), "--rtol", "1e-9")
    assert within.returncode == 0, within.stdout
    assert "grad_norm" in within.stdout and "largest deviation per metric" in within.stdout


def test_one_ulp_in_one_weight_is_the_first_divergence(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_runs
    c = copy_run(b, tmp_path / "c")
    soup_dir = storage(c) / "phases" / "soup" / "checkpoints"
    found = manifest.latest_committed(*filesystem(str(soup_dir)))
    assert found is not None
    step, path = found
    record = manifest.read_manifest(*filesystem(path))
    assert record is not None
    weights = load_full_state_dict(path)
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = torch.nextafter(weights[name].view(-1)[0], torch.tensor(math.inf))
    shutil.rmtree(path)
    save_model_weights(path, weights, step=step, config_hash=record["configHash"], extra=record.get("extra"))
    shutil.rmtree(storage(c) / "archive" / "soup")  # the diff reads the scratch copy first; no stale archive

    result = olmorun("diff", str(a), str(c))
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"first divergence: phase soup seed 6198 step {step}: checkpoint content (model.{name}):"
        in result.stdout
    )


def test_a_run_in_s3_is_identical_to_its_local_twin(
    two_runs: tuple[Path, Path], s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A uploaded to a real S3 server (SeaweedFS) under another storage root compares equal to run B."""
    a, b = two_runs
    bucket = s3_server.make_bucket("repro")
    s3_server.filesystem().put(str(storage(a)), "repro/olmo/default/olmo2-tiny", recursive=True)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    remote = read_run(f"{bucket}/olmo/default/olmo2-tiny")
    assert [job.label for job in remote.jobs] == [
        "pretrain/s6198",
        "anneal/s42",
        "anneal/s42069",
        "soup/s6198",
    ]
    result = compare(remote, read_run(str(b)))
    assert result.identical, [d.describe() for d in result.divergences]
    assert result.compared["checkpoints"] >= 4


def test_status_shows_final_content_hashes_and_report_renders_the_run(
    two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    a, _ = two_runs
    soup = storage(a) / "archive" / "soup"
    step_dir = next(soup.iterdir())
    sha = manifest.content_sha256(manifest.read_manifest(*filesystem(str(step_dir))))
    assert sha is not None
    shown = olmorun("status", "--workdir", str(a))
    assert shown.returncode == 0, shown.stderr
    assert any(line.split() == ["soup", step_dir.name, sha] for line in shown.stdout.splitlines()), (
        shown.stdout
    )

    out = tmp_path / "report.html"
    made = olmorun("report", str(a), "-o", str(out))
    assert made.returncode == 0 and made.stdout.strip() == str(out), made.stdout + made.stderr
    page = out.read_text()
    assert page.count('<img class="figure"') == 4  # the chain (soup's held-out accuracy), timeline, curves x2
    assert '<section id="chain">' in page
    assert sha[:16] in page and "Succeeded" in page
