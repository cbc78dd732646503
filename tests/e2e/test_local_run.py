"""End to end: `olmorun local` runs a cut-down tiny pipeline with the real trainer, torchx and torchrun.

pretrain -> anneal x2 seeds -> soup -> sft -> dpo -> rlvr, a few steps each (built from
examples/olmorun-tiny.yaml
with the budgets and evaluations cut), in a subprocess exactly as a user
runs it. A second test interrupts a run with SIGINT mid-pretrain and checks that rerunning the same
command resumes from the newest checkpoint instead of starting over.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from olmo_operator.archive import verify_checkpoint
from olmo_trainer import manifest
from olmo_trainer.storage import filesystem

ROOT = Path(__file__).parents[2]
OLMORUN = [sys.executable, "-m", "olmo_operator.cli"]
pytestmark = pytest.mark.slow


def small_spec(tmp_path: Path, *, pretrain_steps: int, phases: int = 3, interval: int = 4) -> Path:
    """The tiny example with tiny budgets: a step is 8 sequences of 128 tokens."""
    document = yaml.safe_load((ROOT / "examples" / "olmorun-tiny.yaml").read_text())
    kept = document["spec"]["phases"][:phases]
    batch = {"globalBatchSize": 8, "microBatchSize": 4}
    kept[0].update(
        maxTokens=pretrain_steps * 8 * 128, batch=batch, checkpoint={"intervalSteps": interval, "keepLast": 2}
    )
    kept[0]["schedule"]["warmupSteps"] = 2
    for phase in kept[:2]:
        for source in phase["data"]["sources"]:
            source["synthetic"]["numTokens"] = "60K"  # generated on the fly: keep it small
    if phases > 1:
        kept[1].update(maxTokens=3 * 8 * 128, batch=batch, checkpoint={"intervalSteps": 2, "keepLast": 2})
    for phase in kept[3:]:  # sft, dpo, rlvr: a few steps each
        phase.update(maxSteps=3, batch=batch, checkpoint={"intervalSteps": 2, "keepLast": 2})
        if phase["kind"] == "rlvr":
            phase["rlvr"].update(maxNewTokens=8, samplesPerPrompt=4)
    for phase in kept:
        for task in phase.get("eval", {}).get("tasks", []):  # evaluate a handful of rows, briefly
            task.update(limit=4, maxNewTokens=8)
    document["spec"]["phases"] = kept
    document["spec"]["retry"] = {"backoffLimit": 0, "backoffSeconds": 1}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def olmorun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OLMORUN, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def state(workdir: Path) -> dict[str, Any]:
    return json.loads((workdir / "state.json").read_text())


def storage(workdir: Path) -> Path:
    return workdir / "storage" / "default" / "olmo2-tiny"


@pytest.mark.timeout(1200)
def test_tiny_pipeline_runs_to_success_with_verified_archives_and_a_soup(tmp_path: Path) -> None:
    """pretrain -> anneal x2 -> soup -> sft -> dpo -> rlvr, each phase evaluated as the example configures
    it."""
    spec, workdir = small_spec(tmp_path, pretrain_steps=6, phases=6), tmp_path / "wd"
    # Seven torchrun jobs and four evaluations: minutes on 2 shared cores.
    done = olmorun("local", str(spec), "--workdir", str(workdir), "--poll", "0.5", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "run olmo2-tiny succeeded" in done.stdout
    assert "pretrain" in done.stdout and "step 6/6" in done.stdout  # live progress lines

    status = state(workdir)["status"]
    phases = status["phases"]
    assert {name: p["state"] for name, p in phases.items()} == {
        "pretrain": "Succeeded",
        "anneal": "Succeeded",
        "soup": "Succeeded",
        "sft": "Succeeded",
        "dpo": "Succeeded",
        "rlvr": "Succeeded",
    }
    for name in ("soup", "sft", "dpo", "rlvr"):  # the final evaluation reached the status
        figures = phases[name]["eval"]
        assert set(figures) >= {
            "eval/arith/accuracy",
            "eval/arith-mc/acc_per_char",
            "eval/heldout-lm/perplexity",
        }
        assert 0.0 <= figures["eval/arith/accuracy"] <= 1.0 and figures["eval/heldout-lm/perplexity"] > 1.0
    dpo_metrics = (storage(workdir) / "phases" / "dpo" / "metrics.jsonl").read_text()
    assert (
        "rewards/margin" in dpo_metrics and (storage(workdir) / "phases" / "dpo" / "reference_logps").is_dir()
    )
    rl_metrics = (storage(workdir) / "phases" / "rlvr" / "metrics.jsonl").read_text()
    assert '"rl/reward"' in rl_metrics and '"rl/zero_variance_groups"' in rl_metrics
    assert verify_checkpoint(phases["rlvr"]["archive"]).ok
    anneal_archives = [job["archive"] for job in phases["anneal"]["jobs"]]
    assert len(anneal_archives) == 2
    for uri in [phases["pretrain"]["archive"], *anneal_archives, phases["soup"]["archive"]]:
        assert verify_checkpoint(uri).ok, uri
    # The soup's committed MANIFEST names both anneal checkpoints it averaged.
    fs, soup_dir = filesystem(phases["soup"]["checkpoint"])
    soup_manifest = json.dumps(manifest.read_manifest(fs, soup_dir))
    for uri in anneal_archives:
        assert uri in soup_manifest or uri.removeprefix("file://") in soup_manifest
    # Each job ran the config written for it; the run's record exists.
    assert (storage(workdir) / "run.json").exists()
    assert (storage(workdir) / "phases" / "anneal" / "s42069" / "config.json").exists()

    shown = olmorun("status", "--workdir", str(workdir))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "STAGE",
        "ACTIVE",
        "SUCCEEDED",
        "REASON",
        "STEP",
        "TOKENS",
        "LOSS",
        "AGE",
    ]
    assert lines[1].split()[:5] == ["olmo2-tiny", "Succeeded", "-", "True", "Succeeded"]
    assert any(line.split()[:3] == ["anneal", "anneal", "Succeeded"] for line in lines)
    assert any(line.split()[:2] == ["s42069", "Succeeded"] for line in lines)
    assert any(line.split()[:2] == ["dpo", "arith/accuracy"] for line in lines)


def _wait_for_checkpoint(checkpoints: Path, proc: subprocess.Popen[str], timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "olmorun local ended before it could be interrupted"
        fs, path = filesystem(str(checkpoints))
        found = manifest.latest_committed(fs, path)
        if found is not None:
            return found[0]
        time.sleep(0.2)
    raise AssertionError("no checkpoint was committed in time")


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    spec, workdir = small_spec(tmp_path, pretrain_steps=30, phases=1, interval=3), tmp_path / "wd"
    command = [*OLMORUN, "local", str(spec), "--workdir", str(workdir), "--poll", "0.5"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        reached = _wait_for_checkpoint(storage(workdir) / "phases" / "pretrain" / "checkpoints", proc)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    job = state(workdir)["status"]["phases"]["pretrain"]["jobs"][0]
    assert job["name"] == "olmo2-tiny-pretrain-a1"
    # No training process survives the interruption.
    config = storage(workdir) / "phases" / "pretrain" / "config.json"
    assert subprocess.run(["pgrep", "-f", str(config)], capture_output=True, text=True).stdout == ""

    # Suspended meanwhile: says so and how to continue, exits 3 at once, submits nothing.
    document = yaml.safe_load(spec.read_text())
    suspended = tmp_path / "suspended.yaml"
    suspended.write_text(yaml.safe_dump({**document, "spec": {**document["spec"], "suspend": True}}))
    held = olmorun("local", str(suspended), "--workdir", str(workdir), "--poll", "0.5", timeout=60)
    assert held.returncode == 3, held.stdout + held.stderr
    assert "is SUSPENDED (spec.suspend: true)" in held.stdout and "set `suspend: false`" in held.stdout
    assert state(workdir)["status"]["phases"]["pretrain"]["jobs"][0]["attempts"] == 1

    resumed = olmorun("local", str(spec), "--workdir", str(workdir), "--poll", "0.5")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resubmitted as olmo2-tiny-pretrain-a2 (not a failure)" in resumed.stdout
    job = state(workdir)["status"]["phases"]["pretrain"]["jobs"][0]
    assert (job["name"], job["attempts"], job.get("failures", 0)) == ("olmo2-tiny-pretrain-a2", 2, 0)
    # The second attempt continued from a checkpoint: nothing restarted from step 1, and where the
    # metrics go back (steps redone since the last checkpoint) they go back no further than it.
    with (storage(workdir) / "phases" / "pretrain" / "metrics.jsonl").open() as lines:
        steps = [json.loads(line)["step"] for line in lines if line.strip()]
    assert steps.count(1) == 1 and max(steps) == 30, steps
    restarts = [steps[i] for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert all(s > reached for s in restarts), (reached, steps)


def test_a_suspended_run_says_so_and_exits_instead_of_waiting(tmp_path: Path) -> None:
    document = yaml.safe_load(small_spec(tmp_path, pretrain_steps=4, phases=1).read_text())
    document["spec"]["suspend"] = True
    spec = tmp_path / "suspended.yaml"
    spec.write_text(yaml.safe_dump(document))
    result = olmorun("local", str(spec), "--workdir", str(tmp_path / "wd"), "--poll", "0.2", timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "run olmo2-tiny is SUSPENDED (spec.suspend: true): no job runs" in result.stdout
    assert (
        "set `suspend: false`" in result.stdout
        and "run the same `olmorun local` command again" in result.stdout
    )
    assert state(tmp_path / "wd")["status"]["phases"]["pretrain"]["jobs"] == []


def test_the_issue_divergence_input_fails_the_run_and_status_shows_the_latest_loss(tmp_path: Path) -> None:
    """Issue 11 #4: `optim: {lr: 1.0e+8, maxGradNorm: null}` for 12 steps. The loss is NaN from step 2:
    the run fails (not retried, though retries are allowed) with reason Diverged, nothing is archived, and
    neither the status nor `olmorun status` shows step 1's loss as if it were current."""
    document = yaml.safe_load(small_spec(tmp_path, pretrain_steps=12, phases=1).read_text())
    document["spec"]["phases"][0]["optim"] = {"lr": 1.0e8, "maxGradNorm": None}
    document["spec"]["phases"][0]["checkpoint"] = {"intervalSteps": 1, "keepLast": 20}
    document["spec"]["retry"] = {"backoffLimit": 2, "backoffSeconds": 1}
    spec, workdir = tmp_path / "diverging.yaml", tmp_path / "wd"
    spec.write_text(yaml.safe_dump(document, sort_keys=False))
    result = olmorun("local", str(spec), "--workdir", str(workdir), "--poll", "0.5")
    assert result.returncode == 1, result.stdout + result.stderr
    status = state(workdir)["status"]
    phase = status["phases"]["pretrain"]
    job = phase["jobs"][0]
    assert (phase["state"], job["state"], job["attempts"], job["step"]) == ("Failed", "Failed", 1, 2)
    assert job["message"].startswith("Diverged: loss nan, grad_norm nan at step 2")
    assert "lastLoss" not in job and "lastLoss" not in phase and "lastLoss" not in status
    assert not (storage(workdir) / "archive").exists()
    shown = olmorun("status", "--workdir", str(workdir), timeout=60)
    assert shown.returncode == 0, shown.stderr
    first_loss = json.loads(
        (storage(workdir) / "phases" / "pretrain" / "metrics.jsonl").read_text().splitlines()[0]
    )
    assert f"{first_loss['loss']:.4f}" not in shown.stdout and "Diverged" in shown.stdout


NEEDS_QUOTING = "my run #1 100%25 ü 数据"
"""A workdir name with a space, `#`, `%` (and a `%25` that unquoting must not touch twice) and non-ASCII."""


def test_a_workdir_whose_name_needs_quoting_is_the_one_written_verified_and_exported(tmp_path: Path) -> None:
    """Issue 11 #2: `olmorun local SPEC --workdir "my run"` wrote into a sibling `my%20run`. The run's
    storage is the file:// URI of the workdir; every file lands inside the workdir, and verify,
    export-hf, status and report find it by its plain path and by its file:// URI."""
    spec, workdir = small_spec(tmp_path, pretrain_steps=3, phases=1, interval=2), tmp_path / NEEDS_QUOTING
    done = olmorun("local", str(spec), "--workdir", str(workdir), "--poll", "0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["small.yaml", NEEDS_QUOTING])
    job = storage(workdir) / "phases" / "pretrain"
    assert (job / "config.json").exists() and (job / "metrics.jsonl").exists()
    assert (job / "checkpoints" / "step3" / "MANIFEST.json").exists()
    archived = storage(workdir) / "archive" / "pretrain"
    status = state(workdir)["status"]
    assert (
        status["stage"] == "Succeeded"
        and status["phases"]["pretrain"]["archive"] == f"{archived.as_uri()}/step3"
    )
    for target in (str(archived), archived.as_uri(), status["phases"]["pretrain"]["archive"]):
        verified = olmorun("verify", target, timeout=60)
        assert verified.returncode == 0 and "OK" in verified.stdout, (
            target + verified.stdout + verified.stderr
        )
    exported = olmorun("export-hf", archived.as_uri(), (workdir / "hf out").as_uri(), timeout=120)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert (workdir / "hf out" / "config.json").exists() and (
        workdir / "hf out" / "model.safetensors"
    ).exists()
    assert olmorun("status", "--workdir", str(workdir), timeout=60).returncode == 0
    report = olmorun("report", str(workdir), "-o", str(workdir / "report.html"), timeout=120)
    assert report.returncode == 0 and (workdir / "report.html").exists(), report.stdout + report.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["small.yaml", NEEDS_QUOTING])
