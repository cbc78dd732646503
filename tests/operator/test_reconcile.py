"""reconcile(): observe -> plan -> apply against real storage (local files and a real S3 server).

The scheduler boundary is a small scripted launcher: it records what reconcile submits (the real
JobRequests) and lets a test say what each job did, writing the checkpoints and metrics a trainer writes
(committed with the real MANIFEST code). Archiving and verification run the real archive.py.
The real torchx local scheduler with the real trainer is exercised by tests/e2e/test_local_run.py.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import fsspec
import pytest
import yaml

from olmo_operator import layout
from olmo_operator.actions import JobObservation, ObservedState
from olmo_operator.api import OlmoRun, parse_olmorun
from olmo_operator.effects import StorageInUseError
from olmo_operator.observe import last_metrics
from olmo_operator.reconcile import reconcile_plan
from olmo_operator.request import JobRequest
from olmo_trainer import manifest
from olmo_trainer.config import TrainConfig
from olmo_trainer.storage import filesystem
from tests.dcp_files import dcp_metadata
from tests.s3server import S3Server

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
EXAMPLE = Path(__file__).parents[2] / "examples" / "olmorun-tiny.yaml"


class ScriptedLauncher:
    """Records submissions; job states are set by the test (as a scheduler would report them)."""

    def __init__(self) -> None:
        self.requests: dict[str, JobRequest] = {}
        self.states: dict[str, JobObservation] = {}
        self.cancelled: list[str] = []

    def submit(self, request: JobRequest) -> str:
        self.requests[request.name] = request
        self.states.setdefault(request.name, JobObservation(request.name, "Pending"))
        return request.name

    def describe(self, job_name: str) -> JobObservation:
        return self.states.get(job_name, JobObservation(job_name, "Missing"))

    def cancel(self, job_name: str) -> None:
        self.cancelled.append(job_name)
        self.states.pop(job_name, None)

    def set(self, job_name: str, state: ObservedState, exit_code: int | None = None) -> None:
        self.states[job_name] = JobObservation(job_name, state, exit_code=exit_code)


def train(save_dir: str, step: int, loss: float = 3.0) -> str:
    """What a trainer leaves in its save_dir: a committed stepN/ and a metrics line."""
    fs, root = filesystem(save_dir)
    directory = f"{root}/checkpoints/step{step}"
    fs.makedirs(directory, exist_ok=True)
    fs.pipe_file(f"{directory}/model.distcp", f"weights at {step}".encode() * 100)
    fs.pipe_file(f"{directory}/.metadata", dcp_metadata(["model.distcp"]))
    manifest.commit(fs, directory, manifest.build_manifest(fs, directory, step=step))
    line = json.dumps({"step": step, "tokens": step * 1024, "loss": loss, "tokens_per_s": 5000.0})
    with fs.open(f"{root}/metrics.jsonl", "a") as stream:
        stream.write(line + "\n")
    return f"{save_dir}/checkpoints/step{step}"


def make_run(storage: str) -> OlmoRun:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"].update(namespace="lab", uid="uid-7", generation=1)
    document["spec"]["storage"] = {"uri": storage}
    document["spec"]["phases"] = document["spec"]["phases"][:3]
    return parse_olmorun(document)


def step(run: OlmoRun, launcher: ScriptedLauncher, now: dt.datetime = T0) -> OlmoRun:
    status = reconcile_plan(run, launcher=launcher, now=now).status
    return run.model_copy(update={"status": status})


def read_json(uri: str) -> Any:
    with fsspec.open(uri, "rb") as stream:
        return json.loads(stream.read())


def test_pipeline_writes_configs_archives_and_starts_children_in_the_same_step(tmp_path: Path) -> None:
    run = make_run(tmp_path.as_uri())
    launcher = ScriptedLauncher()
    run = step(run, launcher)
    root = layout.run_root(run)
    record = read_json(f"{root}/run.json")
    assert record["spec"]["image"] == run.spec.image and record["seeds"]["anneal"] == [42, 42069]
    assert "olmorun" in record["versions"]
    config = TrainConfig.model_validate(read_json(f"{root}/phases/pretrain/config.json"))
    assert config.save_dir == f"{root}/phases/pretrain" and config.kind == "pretrain"
    [name] = launcher.requests
    assert name == "olmo2-tiny-pretrain-a1"
    assert launcher.requests[name].command[-2:] == ["--config", f"{root}/phases/pretrain/config.json"]

    save = layout.save_dir(run, run.phase("pretrain"), 6198)
    train(save, 4, loss=4.5)
    launcher.set(name, "Running")
    run = step(run, launcher)
    job = run.status.phases["pretrain"].jobs[0]
    assert (job.state, job.step, job.tokens, job.last_loss) == ("Running", 4, 4096, 4.5)
    assert job.checkpoint == f"{save}/checkpoints/step4"

    final = train(save, 8, loss=4.0)
    launcher.set(name, "Succeeded", 0)
    result = reconcile_plan(run, launcher=launcher, now=T0)
    run = run.model_copy(update={"status": result.status})
    pretrain = run.status.phases["pretrain"]
    assert pretrain.state == "Succeeded" and pretrain.checkpoint == final
    assert pretrain.archive == f"{root}/archive/pretrain/step8"
    fs, path = filesystem(pretrain.archive)
    assert manifest.verify(fs, path).ok
    # The same step started the anneal seeds, from the verified archive.
    assert sorted(launcher.requests) == ["olmo2-tiny-anneal-s42-a1", "olmo2-tiny-anneal-s42069-a1", name]
    for seed in (42, 42069):
        child = TrainConfig.model_validate(read_json(f"{root}/phases/anneal/s{seed}/config.json"))
        assert child.data is not None
        assert child.init_from == pretrain.archive and child.data.seed == seed
    assert [e.reason for e in result.events] == ["JobSucceeded", "Archived", "PhaseSucceeded", "PhaseStarted"]


def test_retry_keeps_the_config_the_phase_started_with_and_run_json_is_written_once(tmp_path: Path) -> None:
    run = make_run(tmp_path.as_uri())
    launcher = ScriptedLauncher()
    run = step(run, launcher)
    root = layout.run_root(run)
    config_uri = f"{root}/phases/pretrain/config.json"
    first_record = read_json(f"{root}/run.json")
    fs, path = filesystem(config_uri)
    original = fs.cat_file(path)
    # An edit of the started phase (refused) must not leak into the retry's config.
    edited = yaml.safe_load(EXAMPLE.read_text())
    edited["metadata"].update(namespace="lab", uid="uid-7", generation=2)
    edited["spec"]["storage"] = {"uri": tmp_path.as_uri()}
    edited["spec"]["phases"] = edited["spec"]["phases"][:3]
    edited["spec"]["phases"][0]["maxTokens"] = "1M"
    run = parse_olmorun(edited).model_copy(update={"status": run.status})
    launcher.set("olmo2-tiny-pretrain-a1", "Failed", 143)  # preempted: resubmitted at once
    run = step(run, launcher)
    assert "olmo2-tiny-pretrain-a2" in launcher.requests
    assert fs.cat_file(path) == original
    assert read_json(f"{root}/run.json") == first_record
    assert run.status.conditions[2].reason == "SpecChangeRefused"


def test_a_recreated_run_never_resumes_the_previous_runs_checkpoints(tmp_path: Path) -> None:
    """Same name and storage, new uid: the earlier run's files must not be picked up silently."""
    step(make_run(tmp_path.as_uri()), ScriptedLauncher())
    recreated = make_run(tmp_path.as_uri())
    recreated.metadata.uid = "uid-8"
    launcher = ScriptedLauncher()
    with pytest.raises(StorageInUseError, match="uid uid-7"):
        reconcile_plan(recreated, launcher=launcher, now=T0)
    assert launcher.requests == {}
    step(make_run(tmp_path.as_uri()), ScriptedLauncher())  # the original run itself carries on


def test_corrupt_checkpoint_fails_the_phase_instead_of_archiving_it(tmp_path: Path) -> None:
    run = make_run(tmp_path.as_uri())
    launcher = ScriptedLauncher()
    run = step(run, launcher)
    final = train(layout.save_dir(run, run.phase("pretrain"), 6198), 8)
    fs, path = filesystem(final)
    fs.pipe_file(f"{path}/model.distcp", b"bit rot")
    launcher.set("olmo2-tiny-pretrain-a1", "Succeeded", 0)
    run = step(run, launcher)
    pretrain = run.status.phases["pretrain"]
    assert pretrain.state == "Failed" and "archive" in pretrain.message
    assert run.status.stage == "Failed"
    assert not any(n.startswith("olmo2-tiny-anneal") for n in launcher.requests)


def test_an_archive_made_before_a_lost_status_write_is_verified_not_copied_again(tmp_path: Path) -> None:
    run = make_run(tmp_path.as_uri())
    launcher = ScriptedLauncher()
    run = step(run, launcher)
    train(layout.save_dir(run, run.phase("pretrain"), 6198), 8)
    launcher.set("olmo2-tiny-pretrain-a1", "Succeeded", 0)
    before = run
    after = step(run, launcher)
    archive = after.status.phases["pretrain"].archive
    assert archive is not None
    # Replay from the status before the archive was recorded, with the job's success already known.
    status = before.status.model_copy(deep=True)
    job = status.phases["pretrain"].jobs[0]
    job.state, job.checkpoint = (
        "Succeeded",
        f"{layout.save_dir(run, run.phase('pretrain'), 6198)}/checkpoints/step8",
    )
    replay = reconcile_plan(before.model_copy(update={"status": status}), launcher=launcher, now=T0)
    assert replay.status.phases["pretrain"].archive == archive
    assert not [a for a in replay.actions if type(a).__name__ == "ArchiveCheckpoint"]


def test_archive_to_a_real_s3_bucket_with_credentials_from_the_environment(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.make_bucket("reconcile").removeprefix("s3://")
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"].update(namespace="lab", uid="uid-7")
    document["spec"]["storage"] = {"uri": f"s3://{bucket}/runs", "scratchUri": tmp_path.as_uri()}
    document["spec"]["phases"] = document["spec"]["phases"][:1]
    run = parse_olmorun(document)
    launcher = ScriptedLauncher()
    run = step(run, launcher)
    fs = s3_server.filesystem()
    assert fs.exists(f"{bucket}/runs/lab/olmo2-tiny/phases/pretrain/config.json")
    train(layout.save_dir(run, run.phase("pretrain"), 6198), 6)
    launcher.set("olmo2-tiny-pretrain-a1", "Succeeded", 0)
    run = step(run, launcher)
    assert (
        run.status.phases["pretrain"].archive == f"s3://{bucket}/runs/lab/olmo2-tiny/archive/pretrain/step6"
    )
    assert fs.exists(f"{bucket}/runs/lab/olmo2-tiny/archive/pretrain/step6/MANIFEST.json")
    assert run.status.stage == "Succeeded"


def test_last_metrics_reads_the_last_complete_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    assert last_metrics(tmp_path.as_uri()) is None
    path.write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "tokens": 64, "loss": 8.5}\n{"step": 3, "lo')
    metrics = last_metrics(tmp_path.as_uri())
    assert metrics is not None and (metrics.step, metrics.tokens, metrics.loss) == (2, 64, 8.5)


def test_last_metrics_gives_the_latest_steps_loss_even_when_it_was_not_finite(tmp_path: Path) -> None:
    """metrics.jsonl holds `"loss": null` for a non-finite loss (the step the job diverged at): the status
    must show no loss for it, not step 1's, which would hide the divergence. A final evaluation line
    (no `loss` key) does not hide the last training step's loss either."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "tokens": 32, "loss": 9.0}\n{"step": 2, "tokens": 64, "loss": null}\n')
    metrics = last_metrics(tmp_path.as_uri())
    assert metrics is not None and (metrics.step, metrics.tokens, metrics.loss) == (2, 64, None)
    path.write_text(
        '{"step": 1, "tokens": 32, "loss": 9.0}\n{"step": 2, "tokens": 64, "loss": 8.5}\n'
        '{"step": 2, "eval/arith/accuracy": 0.25}\n'
    )
    metrics = last_metrics(tmp_path.as_uri())
    assert metrics is not None and (metrics.step, metrics.tokens, metrics.loss) == (2, 64, 8.5)
    assert metrics.eval == {"eval/arith/accuracy": 0.25}


# ---------------------------------------------------------------------------------------------
# The local runner's pieces (its whole loop runs in tests/e2e/test_local_run.py)
# ---------------------------------------------------------------------------------------------


def test_local_storage_goes_under_the_workdir_unless_told_otherwise(tmp_path: Path) -> None:
    from olmo_operator.local_state import localize

    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"]["storage"] = {"uri": "s3://bucket/x", "scratchUri": "file:///scratch"}
    run = parse_olmorun(document)
    local = localize(run, tmp_path / "wd")
    assert local.spec.storage.uri == (tmp_path / "wd" / "storage").as_uri()
    assert local.spec.storage.scratch_uri is None
    assert localize(run, tmp_path, "spec").spec.storage == run.spec.storage
    assert localize(run, tmp_path, "file:///elsewhere").spec.storage.uri == "file:///elsewhere"


def test_local_state_resumes_and_counts_spec_edits_as_generations(tmp_path: Path) -> None:
    from olmo_operator.local_state import read_state, start_state, write_state

    run = make_run(tmp_path.as_uri())
    state = start_state(run, {"metadata": {"name": run.name}}, tmp_path, T0)
    assert state.generation == 1 and read_state(tmp_path) is None
    state.status = step(run, ScriptedLauncher()).status
    write_state(tmp_path, state)
    again = start_state(run, {"metadata": {"name": run.name}}, tmp_path, T0 + dt.timedelta(hours=1))
    assert (
        again.generation == 1 and again.status == state.status and again.created_at == "2026-03-01T00:00:00Z"
    )
    edited = run.model_copy(update={"spec": run.spec.model_copy(update={"seed": 1})})
    assert start_state(edited, {"metadata": {"name": run.name}}, tmp_path, T0).generation == 2
    another = run.model_copy(update={"metadata": run.metadata.model_copy(update={"name": "another"})})
    other = start_state(another, {"metadata": {"name": "another"}}, tmp_path, T0)
    assert other.status.phases == {}  # another run's state is not inherited (the names differ)


def test_local_exit_codes_and_status_table(tmp_path: Path) -> None:
    from olmo_operator.cli_run import format_status
    from olmo_operator.progress import EXIT_FAILED, EXIT_SUCCEEDED, exit_code

    run = make_run(tmp_path.as_uri())
    launcher = ScriptedLauncher()
    run = step(run, launcher)
    assert exit_code(run.status) == EXIT_FAILED  # not finished: never "success"
    text = format_status(
        run.name, run.status, "2026-03-01T00:00:00Z", T0 + dt.timedelta(minutes=5), {"pretrain": "pretrain"}
    )
    head, phases = text.split("\n\n")[:2]
    assert head.splitlines()[1].split() == [
        "olmo2-tiny",
        "Running",
        "pretrain",
        "Unknown",
        "Running",
        "-",
        "-",
        "-",
        "5m",
    ]
    assert phases.splitlines()[1].split()[:4] == ["pretrain", "pretrain", "Pending", "1"]
    launcher.set("olmo2-tiny-pretrain-a1", "Failed", 1)
    run = step(run, launcher)
    run = step(run, launcher, T0 + dt.timedelta(minutes=1))
    launcher.set("olmo2-tiny-pretrain-a2", "Failed", 1)
    run = step(run, launcher, T0 + dt.timedelta(minutes=1))
    launcher.set("olmo2-tiny-pretrain-a3", "Failed", 1)
    run = step(run, launcher, T0 + dt.timedelta(minutes=2))
    run = step(run, launcher, T0 + dt.timedelta(minutes=3))
    assert run.status.stage == "Failed" and exit_code(run.status) == EXIT_FAILED
    succeeded = run.status.model_copy(deep=True)
    succeeded.conditions[0] = succeeded.conditions[0].model_copy(
        update={"status": "True", "reason": "Succeeded"}
    )
    assert exit_code(succeeded) == EXIT_SUCCEEDED


def test_a_failure_the_job_recorded_stops_retries_and_an_older_attempts_record_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's failure.json (olmo_trainer.failure) of the failed attempt: Failed at once, with its
    reason; a record left by an earlier attempt is ignored (that failure is retried as usual)."""
    from olmo_trainer.failure import Failure, record_failure

    run = make_run(tmp_path.as_uri())
    launcher = ScriptedLauncher()
    run = step(run, launcher)
    save = layout.save_dir(run, run.phase("pretrain"), 6198)
    train(save, 1)
    old = Failure("Diverged", "loss nan at step 2", step=2)
    monkeypatch.setenv("OLMORUN_ATTEMPT", "0")  # a record from before this attempt
    record_failure(save, old)
    launcher.set("olmo2-tiny-pretrain-a1", "Failed", 1)
    run = step(run, launcher)
    assert run.status.phases["pretrain"].jobs[0].state == "Retrying"  # not this attempt's record

    run = step(run, launcher, now=T0 + dt.timedelta(hours=1))  # attempt 2 is submitted
    assert "olmo2-tiny-pretrain-a2" in launcher.requests
    monkeypatch.setenv("OLMORUN_ATTEMPT", "2")  # the job's environment, as the launcher sets it
    record_failure(save, old)
    launcher.set("olmo2-tiny-pretrain-a2", "Failed", 1)
    run = step(run, launcher, now=T0 + dt.timedelta(hours=1, seconds=5))
    job = run.status.phases["pretrain"].jobs[0]
    assert (job.state, job.message) == ("Failed", "Diverged: loss nan at step 2; not retried")
    assert run.status.stage == "Failed"
    run = step(run, launcher, now=T0 + dt.timedelta(hours=3))
    assert "olmo2-tiny-pretrain-a3" not in launcher.requests
