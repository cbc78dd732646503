"""Next-token language-modelling loss with OLMo 2's z-loss (pretraining and annealing).

Every position predicts the next token and none is ignored: documents are EOS-separated inside a
window, and the EOS is a token worth predicting. The model sees the whole window (B, T) so its shapes
stay multiples of the sequence length; the last position has no target. The step's loss is the mean
over every target of the global batch: each micro-batch contributes its SUM, the loop divides by the
global target count (objectives/__init__.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from olmo_trainer.build import build_batches
from olmo_trainer.config import TrainConfig
from olmo_trainer.distributed import DistInfo
from olmo_trainer.layout import StepPlan, plan_steps
from olmo_trainer.objectives.base import BaseObjective, LossOutput


class LMLoss(NamedTuple):
    """`loss` is what backward() runs on; `ce` and `z` are detached, for logging."""

    loss: torch.Tensor
    ce: torch.Tensor
    z: torch.Tensor


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor, *, z_loss: float, reduction: str = "mean") -> LMLoss:
    """Cross-entropy of logits (B, T, V) against tokens shifted by one, plus z_loss * lse^2.

    reduction "mean" averages over the B*(T-1) targets; "sum" adds them up (the loop normalises).
    """
    logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    targets = tokens[:, 1:]  # (B, T-1)
    lse = torch.logsumexp(logits, dim=-1)  # (B, T-1)
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    reduce = torch.mean if reduction == "mean" else torch.sum
    ce = reduce(lse - target_logits)
    z = z_loss * reduce(lse.square())
    return LMLoss(loss=ce + z, ce=ce.detach(), z=z.detach())


class LMObjective(BaseObjective):
    """Pretraining/annealing: token windows from the data mixture; logs loss (CE) and z_loss."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.device = torch.device("cpu")

    def build(self, cfg: TrainConfig, info: DistInfo) -> tuple[StepPlan, Any]:
        self.device = info.device
        plan = plan_steps(cfg, info.world_size)
        return plan, build_batches(cfg, plan, info)

    def denominator(self, micro_batches: list[torch.Tensor]) -> float:
        return float(sum(b.shape[0] * (b.shape[1] - 1) for b in micro_batches))  # target positions

    def loss(self, model: nn.Module, micro_batch: torch.Tensor) -> LossOutput:
        tokens = micro_batch.to(self.device, non_blocking=True)
        out = lm_loss(model(tokens), tokens, z_loss=self.cfg.optim.z_loss, reduction="sum")
        return LossOutput(out.loss, {"ce": out.ce, "z": out.z, "tokens": float(tokens.numel())})

    def metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        return {"loss": sums["ce"] / denominator, "z_loss": sums["z"] / denominator}
