"""What a training job and the operator that watches it agree on: pure, torch-free, no I/O.

This is the ONE home of these rules; the trainer (train.py, checkpoint/, soup.py, tracking.py), the
checkpoint MANIFEST (manifest.py: the I/O on top of these names) and the operator (layout.py of
olmo_operator builds the run-level paths on top of these; archive.py, reconcile.py, local.py, the CLI)
all call it, so none of them spells a path, a step regex, an exit code or a step count of its own.

Where a job writes (its `save_dir`, a local path or an fsspec URI; DESIGN.md "Object storage layout"):

    <save_dir>/checkpoints/step<N>/        one checkpoint: DCP shards, trainer.pt, config.json, MANIFEST.json
                                           (MANIFEST.damaged.json instead: un-committed, found damaged on
                                           resume)
    <save_dir>/metrics.jsonl               one JSON object per optimizer step, on a local disk
    (metrics_log.py)
    <save_dir>/metrics.jsonl.d/<seq>.jsonl the same stream in segments on an object store, read back as one
    file
    <save_dir>/failure.json, notice.json   why the job failed for good / what it wants shown (failure.py)
    <save_dir>/lease.json                  which attempt of the job may commit and prune here (lease.py)

How a job ends (its process exit code, read by the operator's launcher and planner):

    0 done   1 failed (torchrun's code for any worker failure)   2 bad command line or config
    5 failed for good, recorded in failure.json (not retried)
    143 stopped by SIGTERM after saving a checkpoint (preempted: resubmit)

How many optimizer steps it runs: `total_steps` (the operator's progress and ETA), `plan_steps`
(the trainer's whole per-world-size arithmetic) and `final_step` (where its last checkpoint lands,
which `olmorun render` shows) share one formula.

    step_uri("s3://b/run/phases/pretrain/checkpoints", 100)   #
    's3://b/run/phases/pretrain/checkpoints/step100'
    step_of("s3://b/run/archive/pretrain/step100/")           # 100
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from olmo_trainer.config import TrainConfig, batch_split_problem
from olmo_trainer.errors import ConfigurationError

# ---------------------------------------------------------------------------------------------
# Paths of a job directory
# ---------------------------------------------------------------------------------------------

CHECKPOINTS_NAME = "checkpoints"
"""The folder of a save_dir that holds the `step<N>/` checkpoint directories."""
METRICS_NAME = "metrics.jsonl"
METRICS_SEGMENTS_NAME = "metrics.jsonl.d"
"""Beside metrics.jsonl: on object stores (which cannot append) the stream is written as numbered
segments `<seq>.jsonl` here, in order after metrics.jsonl; readers concatenate them (metrics_log.py)."""
_METRICS_SEGMENT = re.compile(r"^(\d+)\.jsonl$")
MANIFEST_NAME = "MANIFEST.json"
"""Written last into a step directory: a directory without a valid one is no checkpoint (manifest.py)."""
DAMAGED_MANIFEST_NAME = "MANIFEST.damaged.json"
"""What a MANIFEST is renamed to when its checkpoint is found damaged on resume (kept for inspection)."""
FAILURE_NAME = "failure.json"
"""Beside the checkpoints: why the job failed when retrying cannot help (failure.py)."""
NOTICE_NAME = "notice.json"
"""Beside the checkpoints: a warning the running job wants on the run, the latest one (failure.py)."""
LEASE_NAME = "lease.json"
"""Beside the checkpoints: the attempt that owns the save_dir, the only one allowed to commit or prune
(lease.py)."""
WANDB_NAME = "wandb"
"""Beside the checkpoints: W&B's offline runs of the job (`wandb sync <save_dir>/wandb/offline-run-*`)."""
CONFIG_NAME = "config.json"
"""A TrainConfig as JSON: a phase's config (the operator writes it) and its copy in every checkpoint."""
TRAINER_NAME = "trainer.pt"
"""In a checkpoint: every rank's trainer state (step, tokens, data position, RNG), checkpoint/io.py."""
ENV_NAME = "env.json"
"""Beside the checkpoints: the environment the job ran in (environment.py)."""
STEP_PREFIX = "step"
_STEP_NAME = re.compile(rf"^{STEP_PREFIX}(\d+)$")


def join(root: str, *parts: str) -> str:
    """`root/part/...` with exactly one slash between parts (root may end in one, or be a URI)."""
    return "/".join([root.rstrip("/"), *parts])


def step_name(step: int) -> str:
    """`step<N>`: the name of the checkpoint directory of optimizer step N (no zero padding)."""
    return f"{STEP_PREFIX}{step}"


def checkpoints_dir(save_dir: str) -> str:
    """`<save_dir>/checkpoints`: where a job's step directories live."""
    return join(save_dir, CHECKPOINTS_NAME)


def step_uri(directory: str, step: int) -> str:
    """`<directory>/step<N>`: the checkpoint of step N inside a checkpoints (or archive) directory."""
    return join(directory, step_name(step))


def metrics_uri(save_dir: str) -> str:
    """`<save_dir>/metrics.jsonl`."""
    return join(save_dir, METRICS_NAME)


def metrics_segments_dir(save_dir: str) -> str:
    """`<save_dir>/metrics.jsonl.d`: the folder of the metrics segments."""
    return join(save_dir, METRICS_SEGMENTS_NAME)


def metrics_segment_uri(save_dir: str, seq: int) -> str:
    """`<save_dir>/metrics.jsonl.d/<seq>.jsonl`, seq zero-padded to 8 digits so names sort like numbers."""
    return join(metrics_segments_dir(save_dir), f"{seq:08d}.jsonl")


def parse_metrics_segment_name(name: str) -> int | None:
    """seq of a segment file name `<seq>.jsonl`; None for any other name."""
    match = _METRICS_SEGMENT.fullmatch(name)
    return int(match.group(1)) if match else None


def manifest_path(checkpoint: str) -> str:
    """`<checkpoint>/MANIFEST.json`."""
    return join(checkpoint, MANIFEST_NAME)


def damaged_manifest_path(checkpoint: str) -> str:
    """`<checkpoint>/MANIFEST.damaged.json`."""
    return join(checkpoint, DAMAGED_MANIFEST_NAME)


def failure_uri(save_dir: str) -> str:
    """`<save_dir>/failure.json`."""
    return join(save_dir, FAILURE_NAME)


def notice_uri(save_dir: str) -> str:
    """`<save_dir>/notice.json`."""
    return join(save_dir, NOTICE_NAME)


def lease_uri(save_dir: str) -> str:
    """`<save_dir>/lease.json`."""
    return join(save_dir, LEASE_NAME)


def wandb_uri(save_dir: str) -> str:
    """`<save_dir>/wandb`: W&B writes `offline-run-*` folders there (a local save dir) or they are
    uploaded there when the job ends (object storage)."""
    return join(save_dir, WANDB_NAME)


def parse_step_name(name: str) -> int | None:
    """N for a directory name `step<N>`; None for any other name."""
    match = _STEP_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def step_of(checkpoint_uri: str) -> int | None:
    """N of a URI or path whose last component is `step<N>` (a trailing slash is allowed), else None."""
    return parse_step_name(checkpoint_uri.rstrip("/").rsplit("/", 1)[-1])


# ---------------------------------------------------------------------------------------------
# Exit codes of `python -m olmo_trainer`
# ---------------------------------------------------------------------------------------------

EXIT_OK = 0
EXIT_FAILED = 1
"""A failed attempt that may succeed when retried: a crash, or a storage fault (errors.StorageError).
torchrun reports any worker's failure with this code too."""
EXIT_USAGE = 2
"""A bad command line, an unreadable or invalid config, or an impossible budget: retrying cannot help."""
EXIT_PERMANENT = 5
"""The job failed in a way retrying cannot help (diverged, no intact checkpoint) and recorded why in
failure.json, which the operator reads."""
EXIT_PREEMPTED = 143
"""128 + SIGTERM (15), what a shell reports for a process stopped by SIGTERM. The trainer exits with it
after honouring a SIGTERM (checkpoint saved), and the job's shell wrapper turns torchrun's own SIGTERM
into it: the job was stopped from outside (eviction, preemption, drain), not broken, and the operator
resubmits it without counting a failure."""


# ---------------------------------------------------------------------------------------------
# Step arithmetic
# ---------------------------------------------------------------------------------------------


def total_steps(*, max_steps: int | None, max_tokens: int | None, tokens_per_step: int) -> int:
    """Optimizer steps of a budget: `max_steps` when set, else ceil(max_tokens / tokens_per_step), at least 1.

    Raises ValueError when neither budget is set or tokens_per_step is not positive.
    """
    if max_steps is not None:
        return max_steps
    if max_tokens is None:
        raise ConfigurationError("set a budget: maxSteps or maxTokens")
    if tokens_per_step <= 0:
        raise ConfigurationError(f"tokens per step must be positive, got {tokens_per_step}")
    return max(1, math.ceil(max_tokens / tokens_per_step))


@dataclass(frozen=True)
class StepPlan:
    """How a phase's budget turns into optimizer steps on a given world size."""

    global_batch_size: int
    micro_batch_size: int
    accumulation: int
    """Micro-batches per optimizer step on each rank."""
    sequence_length: int
    tokens_per_step: int
    total_steps: int
    flops_per_token: int
    """Training FLOPs per token (6N + attention), from ModelConfig.flops_per_token."""

    @property
    def total_tokens(self) -> int:
        return self.total_steps * self.tokens_per_step


def plan_steps(cfg: TrainConfig, world_size: int) -> StepPlan:
    """Global batch = micro x world x accumulation; steps from maxSteps, else ceil(maxTokens / step).

    Raises ValueError when the job has no `batch` or `data`, when the global batch is not a multiple of
    micro batch x world size, or when it has no budget.
    """
    if cfg.batch is None or cfg.data is None:
        raise ConfigurationError(f"a {cfg.kind} job needs `batch` and `data`")
    micro, global_batch = cfg.batch.micro_batch_size, cfg.batch.global_batch_size
    if (problem := batch_split_problem(global_batch, micro, world_size)) is not None:
        raise ConfigurationError(problem)
    seq = cfg.data.sequence_length
    tokens_per_step = global_batch * seq
    return StepPlan(
        global_batch_size=global_batch,
        micro_batch_size=micro,
        accumulation=global_batch // (micro * world_size),
        sequence_length=seq,
        tokens_per_step=tokens_per_step,
        total_steps=total_steps(
            max_steps=cfg.max_steps, max_tokens=cfg.max_tokens, tokens_per_step=tokens_per_step
        ),
        flops_per_token=cfg.model.flops_per_token(seq),
    )


def final_step(cfg: TrainConfig) -> int | None:
    """The step of the job's final checkpoint, known from its config alone; None when it is not.

    A job with a step budget (batch, data, maxSteps or maxTokens) commits its last checkpoint at
    `total_steps` (train.py saves at step == total_steps, marked final). A soup commits at the largest
    step among its ingredients (soup.py), read here from their `step<N>` names. Any other job (an
    epoch budget, ingredients not named by step) has a final step known only when it finishes.
    """
    if cfg.kind == "soup":
        steps = [step_of(uri) for uri in cfg.soup_from]
        known = [s for s in steps if s is not None]
        return max(known) if known and len(known) == len(steps) else None
    if cfg.batch is None or cfg.data is None:
        return None
    return budget_steps(
        max_steps=cfg.max_steps,
        max_tokens=cfg.max_tokens,
        global_batch_size=cfg.batch.global_batch_size,
        sequence_length=cfg.data.sequence_length,
    )


def budget_steps(
    *,
    max_steps: int | None,
    max_tokens: int | None,
    global_batch_size: int | None,
    sequence_length: int | None,
) -> int | None:
    """The optimizer steps of a step or token budget (`total_steps`), None when the budget does not fix
    them (no maxSteps, and no maxTokens with a batch and a sequence length). `final_step` (a job's
    config) and the operator's progress (a phase's spec) both count steps with it."""
    if max_steps is None and (max_tokens is None or global_batch_size is None or sequence_length is None):
        return None
    per_step = global_batch_size * sequence_length if global_batch_size and sequence_length else 0
    return total_steps(max_steps=max_steps, max_tokens=max_tokens, tokens_per_step=per_step)
