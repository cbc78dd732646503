"""`olmorun render` is the planner's output (preview.py): it cannot disagree with what the operator submits.

The property test runs the real planner against a simulated world that behaves like the trainer
(a job with a step budget commits its final checkpoint at plan_steps' total; a soup at the largest
step among its ingredients' MANIFESTs), with random first-attempt failures and the status written
through JSON between steps as kopf persists it, and checks that every job render shows starts from
exactly the checkpoints the planner submits once the parents finish.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from olmo_operator import layout
from olmo_operator.actions import ArchiveCheckpoint, ArchiveResult, JobObservation, Observation, SubmitJob
from olmo_operator.api import OlmoRun, OlmoRunStatus, parse_olmorun
from olmo_operator.cli_run import render_documents
from olmo_operator.plan import is_finished, plan
from olmo_operator.preview import preview_run
from olmo_trainer.layout import plan_steps

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
DATA = {"sequenceLength": 32, "sources": [{"name": "g", "synthetic": {"numTokens": "1M"}}]}
BATCH = {"globalBatchSize": 16, "microBatchSize": 2}
SFT = {"data": {"paths": ["x.jsonl"], "maxLength": 32}}


def make_run(phases: list[dict[str, Any]]) -> OlmoRun:
    return parse_olmorun(
        {
            "apiVersion": "olmorun.dev/v1alpha1",
            "kind": "OlmoRun",
            "metadata": {"name": "r", "namespace": "ns", "uid": "u-1"},
            "spec": {
                "image": "img:1",
                "model": {"preset": "tiny"},
                "storage": {"uri": "s3://b/root"},
                "retry": {"backoffLimit": 3, "backoffSeconds": 10},
                "phases": phases,
            },
        }
    )


def starts(submissions: list[SubmitJob]) -> dict[str, tuple[str | None, list[str]]]:
    return {s.job_name: (s.train_config.init_from, list(s.train_config.soup_from)) for s in submissions}


# ---------------------------------------------------------------------------------------------
# The case: a parent with archiveFinal: false hands on its scratch checkpoint
# ---------------------------------------------------------------------------------------------


def test_render_of_a_parent_with_archive_false_starts_the_child_from_the_scratch_checkpoint() -> None:
    run = make_run(
        [
            {
                "name": "pretrain",
                "kind": "pretrain",
                "maxSteps": 12,
                "archiveFinal": False,
                "data": DATA,
                "batch": BATCH,
            },
            {
                "name": "anneal",
                "kind": "anneal",
                "from": "pretrain",
                "maxSteps": 3,
                "data": DATA,
                "batch": BATCH,
            },
        ]
    )
    documents = [doc for _, doc in render_documents(run)]
    configs = [d for d in documents if "saveDir" in d]
    scratch = layout.step_uri(layout.checkpoints_dir(layout.save_dir(run, run.phase("pretrain"), 6198)), 12)
    assert scratch == "s3://b/root/ns/r/phases/pretrain/checkpoints/step12"
    assert [c["phase"] for c in configs] == ["pretrain", "anneal"]
    assert configs[1]["initFrom"] == scratch  # not .../archive/pretrain/step12: nothing is archived
    assert starts(simulate(run, fail_first=set())) == starts(preview_run(run).submissions)


def test_render_shows_the_archived_checkpoints_at_the_steps_the_budgets_end() -> None:
    run = make_run(
        [
            {"name": "pretrain", "kind": "pretrain", "maxTokens": "5000", "data": DATA, "batch": BATCH},
            {
                "name": "anneal",
                "kind": "anneal",
                "from": "pretrain",
                "seeds": [1, 2],
                "maxSteps": 3,
                "data": DATA,
                "batch": BATCH,
            },
            {"name": "soup", "kind": "soup", "from": "anneal"},
            {"name": "sft", "kind": "sft", "from": "soup", "batch": BATCH, "sft": SFT},
        ]
    )
    preview = preview_run(run)
    by_phase = {s.job_name: s.train_config for s in preview.submissions}
    assert (
        by_phase["r-anneal-s1-a1"].init_from == "s3://b/root/ns/r/archive/pretrain/step10"
    )  # ceil(5000 / (16 x 32))
    assert by_phase["r-soup-a1"].soup_from == [
        "s3://b/root/ns/r/archive/anneal-s1/step3",
        "s3://b/root/ns/r/archive/anneal-s2/step3",
    ]
    assert (
        by_phase["r-sft-a1"].init_from == "s3://b/root/ns/r/archive/soup/step3"
    )  # sft is implemented: it runs


# ---------------------------------------------------------------------------------------------
# Property: render == the planner in a simulated world
# ---------------------------------------------------------------------------------------------


def simulate(run: OlmoRun, fail_first: set[str]) -> list[SubmitJob]:
    """Drive the planner like the operator does, against a world that behaves like the trainer.

    Jobs whose key is in `fail_first` fail their first attempt (exit 1) and are retried by the planner.
    Returns every submission, retries included.
    """
    status = OlmoRunStatus()
    committed: dict[str, int] = {}  # checkpoint or archive URI -> the step its MANIFEST records
    outcomes: dict[str, JobObservation] = {}
    archives: dict[str, ArchiveResult] = {}
    submitted: list[SubmitJob] = []
    now = T0
    for _ in range(60):
        current = run.model_copy(update={"status": status})
        result = plan(current, Observation(jobs=dict(outcomes), archives=dict(archives)), now)
        # kopf persists the status as JSON between steps
        status = OlmoRunStatus.model_validate(
            json.loads(json.dumps(result.status.model_dump(mode="json", by_alias=True)))
        )
        for action in result.actions:
            if isinstance(action, SubmitJob):
                submitted.append(action)
                outcomes[action.job_name] = run_job(action, committed, fail_first)
            elif isinstance(action, ArchiveCheckpoint):
                committed[action.dst] = committed[action.src]
                archives[action.key] = ArchiveResult(action.key, action.src, action.dst, ok=True)
        if is_finished(status):
            break
        now += dt.timedelta(hours=1)  # past any retry backoff
    return submitted


def run_job(submit: SubmitJob, committed: dict[str, int], fail_first: set[str]) -> JobObservation:
    """What the trainer does with a submitted config: fail, or commit its final checkpoint."""
    cfg = submit.train_config
    if f"{cfg.phase}-{cfg.seed}" in fail_first and submit.attempt == 1:
        return JobObservation(submit.job_name, "Failed", exit_code=1, message="exit code 1")
    if cfg.kind == "soup":
        step = max(committed[uri] for uri in cfg.soup_from)  # soup.py: the largest ingredient step
    elif cfg.max_steps is None and cfg.max_tokens is None:
        step = 5  # an epoch budget (sft/dpo): the step is known only when the job ends
    else:
        step = plan_steps(cfg, world_size=1).total_steps  # train.py: the final save at total_steps
    uri = f"{cfg.save_dir}/checkpoints/step{step}"
    committed[uri] = step
    return JobObservation(submit.job_name, "Succeeded", exit_code=0, checkpoint=(step, uri))


@st.composite
def recipes(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A random valid DAG: one pretrain root, then anneals (maybe fanned out), soups and post phases."""

    def budget() -> dict[str, Any]:
        if draw(st.booleans()):
            return {"maxSteps": draw(st.integers(1, 40))}
        return {"maxTokens": str(draw(st.integers(1, 6000)))}

    phases: list[dict[str, Any]] = [
        {
            "name": "p0",
            "kind": "pretrain",
            "archiveFinal": draw(st.booleans()),
            "data": DATA,
            "batch": BATCH,
            **budget(),
        }
    ]
    for index in range(1, draw(st.integers(0, 5)) + 1):
        fanned = [p for p in phases if len(p.get("seeds", [])) >= 2]
        single = [p for p in phases if len(p.get("seeds", [])) < 2 and p["kind"] != "sft"]
        kind = draw(st.sampled_from(["anneal", "anneal", "soup", "sft"]))
        name = f"p{index}"
        if kind == "soup" and fanned:
            parent = draw(st.sampled_from(fanned))
            phases.append(
                {"name": name, "kind": "soup", "from": parent["name"], "archiveFinal": draw(st.booleans())}
            )
        elif kind == "sft" and single:
            parent = draw(st.sampled_from(single))
            phases.append({"name": name, "kind": "sft", "from": parent["name"], "batch": BATCH, "sft": SFT})
        elif single:
            parent = draw(st.sampled_from(single))
            seeds = draw(st.lists(st.integers(0, 99), min_size=0, max_size=3, unique=True))
            phases.append(
                {
                    "name": name,
                    "kind": "anneal",
                    "from": parent["name"],
                    "archiveFinal": draw(st.booleans()),
                    "data": DATA,
                    "batch": BATCH,
                    **({"seeds": seeds} if seeds else {}),
                    **budget(),
                }
            )
    return phases


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    recipes(),
    st.sets(st.sampled_from([f"p{i}-{s}" for i in range(6) for s in (6198, *range(100))]), max_size=6),
)
def test_render_equals_what_the_planner_submits_once_the_parents_finish(
    phases: list[dict[str, Any]], fail_first: set[str]
) -> None:
    run = make_run(phases)
    preview = preview_run(run)
    submitted = simulate(run, fail_first)
    first = [s for s in submitted if s.attempt == 1]
    assert starts(preview.submissions) == starts(first)
    # A retry starts from what its first attempt started from.
    by_key = {(s.phase, s.seed): s for s in first}
    for retry in (s for s in submitted if s.attempt > 1):
        original = by_key[(retry.phase, retry.seed)].train_config
        assert (retry.train_config.init_from, retry.train_config.soup_from) == (
            original.init_from,
            original.soup_from,
        )
    # Render prints each of these configs and its Volcano Job, nothing else.
    documents = [doc for _, doc in render_documents(run, result=preview)]
    assert [d["metadata"]["name"] for d in documents if d.get("kind") == "Job"] == [s.job_name for s in first]


def test_render_output_is_yaml_with_a_line_per_phase_not_submitted(capsys: Any) -> None:
    from olmo_operator.cli import main

    main(["render", "examples/olmorun-tiny.yaml"])
    out = capsys.readouterr().out
    # Every phase of the example is submitted (one job per seed); none is listed as not submitted.
    phases = yaml.safe_load(Path("examples/olmorun-tiny.yaml").read_text())["spec"]["phases"]
    expected = [p["name"] for p in phases for _ in p.get("seeds") or [None]]
    assert expected[:4] == ["pretrain", "anneal", "anneal", "soup"]
    assert [d["phase"] for d in yaml.safe_load_all(out) if d and "saveDir" in d] == expected
    assert not [line for line in out.splitlines() if line.startswith("# NOT SUBMITTED")]
