"""Resolve one job of an OlmoRun into the exact TrainConfig it runs (pure; no I/O).

    config = resolve_config(run, run.phase("anneal"), seed=42, init_from="s3://.../archive/pretrain/step953")

The result is written to `layout.config_uri(...)` before submission and is what
`python -m olmo_trainer <kind> --config URI` reads. Defaults of the trainer's config models fill what
the phase leaves out; the data-order seed is the job's seed unless the phase pins `data.seed`.
"""

from __future__ import annotations

from collections.abc import Sequence

from olmo_operator import layout
from olmo_operator.api import OlmoRun, PhaseSpec
from olmo_trainer.config import (
    BatchConfig,
    CheckpointConfig,
    DataConfig,
    OptimConfig,
    ParallelConfig,
    ScheduleConfig,
    TrackingConfig,
    TrainConfig,
)


def _data(phase: PhaseSpec, seed: int) -> DataConfig | None:
    if phase.data is None:
        return None
    if phase.data.seed is not None:
        return phase.data
    return phase.data.model_copy(update={"seed": seed})


def _tracking(run: OlmoRun, phase: PhaseSpec) -> TrackingConfig:
    wandb = run.spec.tracking.wandb
    owner = {"namespace": run.namespace, "run_uid": run.metadata.uid}
    if wandb is None:
        return TrackingConfig(**owner)
    return TrackingConfig(
        project=wandb.project,
        entity=wandb.entity,
        group=wandb.group or run.name,
        job_type=phase.name,
        tags=[*wandb.tags, *([phase.kind] if phase.kind not in wandb.tags else [])],
        **owner,
    )


def _parallel(run: OlmoRun, phase: PhaseSpec) -> ParallelConfig:
    parallel = phase.parallel or ParallelConfig()
    # bf16 autocast needs a GPU; a CPU pool runs the same recipe in fp32 rather than failing.
    if run.spec.cluster.gpus_per_node == 0 and parallel.precision == "bf16":
        return parallel.model_copy(update={"precision": "fp32"})
    return parallel


def resolve_config(
    run: OlmoRun,
    phase: PhaseSpec,
    seed: int,
    *,
    init_from: str | None = None,
    soup_from: Sequence[str] = (),
) -> TrainConfig:
    """The TrainConfig of the job `(phase, seed)`.

    init_from: the parent's final (archived) checkpoint, for phases that continue training.
    soup_from: the parent's per-seed final checkpoints, for a soup.
    """
    batch: BatchConfig | None = phase.batch
    return TrainConfig(
        run=run.name,
        phase=phase.name,
        kind=phase.kind,
        seed=seed,
        model=run.spec.model.resolve(),
        data=_data(phase, seed),
        optim=phase.optim or OptimConfig(),
        schedule=phase.schedule or ScheduleConfig(),
        batch=batch,
        max_tokens=phase.max_tokens,
        max_steps=phase.max_steps,
        checkpoint=phase.checkpoint or CheckpointConfig(),
        parallel=_parallel(run, phase),
        tracking=_tracking(run, phase),
        save_dir=layout.save_dir(run, phase, seed),
        init_from=init_from,
        soup_from=list(soup_from),
        sft=phase.sft,
        dpo=phase.dpo,
        rlvr=phase.rlvr,
        eval=phase.eval,
    )
