"""Training objectives plugged into the one loop of train.py: `lm`, `sft`, `dpo` (and later RL ones).

The loop (train.py) owns everything that is the same for every phase: the process group, the model and
its wrapping (DDP/FSDP2), the optimizer and LR schedule, gradient accumulation and its gradient-sync
switch, clipping, the SIGTERM -> checkpoint -> exit 143 path, checkpoints and exact resume, metrics.jsonl
and wandb. An objective owns only what differs: its data, its batch type, its loss and its metrics.

Contract (`Objective`; `build_objective(cfg)` picks one by `cfg.kind`):

1. `build(cfg, info) -> (StepPlan, batches)`: this rank's step source and the plan it implies
   (global batch, micro batch, accumulation, total steps, `tokens_per_step` for the token-defined LR
   schedule). `batches` is an iterator whose every item is one optimizer step's list of this rank's
   micro-batches (any type the objective likes), and it must be Stateful (`state_dict()` /
   `load_state_dict()`): the loop saves its position in every checkpoint, so a resumed job sees exactly
   the batches it would have seen. `data.DistributedBatches` gives both for any dataset with
   `__len__`, `fingerprint` and `read_many` or `micro_batches` (see data/order.py).
2. `prepare(model, info)`: called once after the parent's weights are loaded (`initFrom`) and BEFORE a
   resumed job loads its own checkpoint, so `model` is the frozen parent here (DPO computes or loads
   its reference log-probs). Collective: every rank calls it.
3. Per step, `step_inputs(model, micro_batches)` may turn the data into what the loss needs (an RL
   objective generates rollouts here, under no_grad; the default returns them unchanged). Then
   `denominator(micro_batches)` is this rank's share of the step's loss normaliser (target tokens,
   sequences, pairs, ...). The loop sums it over ranks BEFORE any forward pass: call it D.
4. `loss(model, micro_batch) -> LossOutput`: `loss` is a scalar SUM over the micro-batch's units, and
   the loop runs backward on `loss * world_size / D` (DDP and FSDP2 average gradients over ranks). The
   gradient is therefore that of (sum over every micro-batch of every rank) / D: exactly the same
   whatever the micro-batch size, the accumulation or the world size. `sums` are detached metric sums
   (floats or 0-d tensors); the loop adds them over micro-batches and ranks in one collective. A sum
   named `tokens` is the step's trained-token count (it advances `tokens` in metrics and checkpoints).
5. `auxiliary() -> {name: (module, optimizer)}`: models the objective trains besides the policy (PPO's
   value model), built in `prepare`. The loss's backward reaches them; the loop sets their LR, syncs,
   clips and steps them with the policy, and checkpoints them under `<name>_model`/`<name>_optim`
   (checkpoint/), so they resume and are archived with it. Default: none.
6. `metrics(sums, D) -> dict`: the logged values of a step from the global sums. Must contain `loss`
   (the number the operator shows as lastLoss). Keys are flat (`rewards/margin`), floats.

No objective has its own loop, checkpoint or resume code: a new one is a module here with these five
methods and a line in `build_objective`.
"""

from __future__ import annotations

from olmo_trainer.config import TrainConfig
from olmo_trainer.errors import ConfigurationError
from olmo_trainer.objectives.base import BaseObjective, LossOutput, Objective, StepSource
from olmo_trainer.objectives.dpo import DPOObjective
from olmo_trainer.objectives.grpo import GRPOObjective
from olmo_trainer.objectives.lm import LMObjective
from olmo_trainer.objectives.ppo import PPOObjective
from olmo_trainer.objectives.rl import TRAINER_STATE_TYPES
from olmo_trainer.objectives.sft import SFTObjective

__all__ = [
    "TRAINER_STATE_TYPES",
    "BaseObjective",
    "LossOutput",
    "Objective",
    "StepSource",
    "build_objective",
]
"""TRAINER_STATE_TYPES: every class an objective's step source keeps in the trainer state (only RL's
cached rollout), which the loop allows when it reads a trainer file (safe_load.py)."""


def build_objective(cfg: TrainConfig) -> Objective:
    """The objective of a training phase kind. Raises ConfigurationError for a kind without one."""
    if cfg.kind in ("pretrain", "anneal"):
        return LMObjective(cfg)
    if cfg.kind == "sft":
        return SFTObjective(cfg)
    if cfg.kind == "dpo":
        return DPOObjective(cfg)
    if cfg.kind == "rlvr":
        if cfg.rlvr is None:
            raise ConfigurationError("an rlvr phase needs its `rlvr` section")
        if cfg.rlvr.algorithm == "ppo":
            return PPOObjective(cfg)
        return GRPOObjective(cfg)
    raise ConfigurationError(
        f"phase kind {cfg.kind!r} has no training objective (a soup is averaged, not trained)"
    )
