"""What a run will submit, as the planner decides it: the jobs `olmorun render` prints. Pure.

    preview = preview_run(run)
    for submit in preview.submissions: ...        # every SubmitJob, in the order the planner makes them
    preview.not_submitted                         # {phase: the planner's reason} for phases it never starts

The planner (plan.py) is driven to the end in memory, against an observation in which every job
succeeds: each submitted job commits its final checkpoint at `olmo_trainer.layout.final_step` of its
own config (step 0 stands for a step known only when the job finishes) and every archive is verified.
Nothing here decides anything: the `initFrom` and `soupFrom` of each config are the planner's, so a
parent with `archiveFinal: false` hands on its scratch checkpoint exactly as the operator will. The
property test in tests/operator/test_preview.py checks that render and a simulated run agree.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from olmo_operator import layout
from olmo_operator.actions import ArchiveCheckpoint, ArchiveResult, JobObservation, Observation, SubmitJob
from olmo_operator.api import OlmoRun, OlmoRunStatus
from olmo_operator.plan import plan
from olmo_trainer.layout import final_step

PREVIEW_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
"""A fixed clock: a preview of the same spec is the same document every time."""
UNKNOWN_STEP = 0
"""Stands for the step of a final checkpoint that the job's config alone does not fix (layout.final_step)."""


@dataclass
class Preview:
    """The planner's submissions for a run in which everything succeeds, and where it stops."""

    submissions: list[SubmitJob] = field(default_factory=list)
    status: OlmoRunStatus = field(default_factory=OlmoRunStatus)
    """The status the planner reaches: Succeeded, or Suspended before a phase starts."""
    unknown_steps: list[str] = field(default_factory=list)
    """Job names whose final step is a placeholder (UNKNOWN_STEP)."""

    @property
    def not_submitted(self) -> dict[str, str]:
        """Phase name -> the planner's message, for every phase without a submitted job."""
        started = {s.phase for s in self.submissions}
        return {name: ps.message for name, ps in self.status.phases.items() if name not in started}


def final_checkpoint(submit: SubmitJob) -> tuple[int, str]:
    """(step, uri) of the checkpoint a job leaves when it succeeds, under its own save_dir."""
    step = final_step(submit.train_config)
    step = UNKNOWN_STEP if step is None else step
    return step, layout.step_uri(layout.checkpoints_dir(submit.train_config.save_dir), step)


def succeeding_world(submitted: list[SubmitJob], archived: list[ArchiveCheckpoint]) -> Observation:
    """The observation of a world where every submitted job succeeded and every archive verified."""
    jobs = {
        s.job_name: JobObservation(s.job_name, "Succeeded", exit_code=0, checkpoint=final_checkpoint(s))
        for s in submitted
    }
    archives = {a.key: ArchiveResult(a.key, a.src, a.dst, ok=True, message="verified") for a in archived}
    return Observation(jobs=jobs, archives=archives)


def preview_run(run: OlmoRun) -> Preview:
    """Plan `run` from an empty status until nothing more happens, every job succeeding (pure)."""
    current = run.model_copy(update={"status": OlmoRunStatus()})
    submitted: list[SubmitJob] = []
    archived: list[ArchiveCheckpoint] = []
    # Each pass either submits, archives, or ends: three passes per phase bound every DAG.
    for _ in range(3 * len(run.spec.phases) + 3):
        result = plan(current, succeeding_world(submitted, archived), PREVIEW_TIME)
        current = current.model_copy(update={"status": result.status})
        new_submits = [a for a in result.actions if isinstance(a, SubmitJob)]
        new_archives = [a for a in result.actions if isinstance(a, ArchiveCheckpoint)]
        submitted += new_submits
        archived += new_archives
        if not new_submits and not new_archives:
            break
    unknown = [s.job_name for s in submitted if final_step(s.train_config) is None]
    return Preview(submissions=submitted, status=current.status, unknown_steps=unknown)
