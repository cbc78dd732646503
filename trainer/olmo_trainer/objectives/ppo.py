"""PPO as OLMo 2 7B/13B-Instruct were trained (Tülu 3 section 6; Ouyang et al. 2022): the losses.

Per-token reward: -klBeta * (logp_old - logp_ref) at every response token (the kl1 estimator of the
KL to the frozen reference), plus the verifiable score at the response's last token. Advantages by
GAE (Schulman et al. 2016, eq. 16) with gamma 1 and lambda 0.95 over the value model's estimates,
then whitened over all response tokens of the batch. The policy loss is the clipped surrogate
(shared with GRPO), the value loss the clipped squared error 0.5 * max((V - R)^2, (V_clip - R)^2),
total = policy + vfCoef * value (vf_coef 0.1, clip 0.2 for both; open-instruct's PPO defaults).

    rewards = kl_penalised_rewards(old_logp, ref_logp, scores, mask, kl_beta=0.05)
    adv, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    adv = whiten(adv, mask)
    out = ppo_loss(logp, old_logp, adv, new_values, values, returns, mask, clip=0.2, vf_coef=0.1,
    num_tokens=n)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from olmo_trainer.checkpoint import load_model_weights
from olmo_trainer.config import TrainConfig
from olmo_trainer.distributed import DistInfo, parallelize
from olmo_trainer.model import Transformer
from olmo_trainer.objectives.base import LossOutput
from olmo_trainer.objectives.grpo import clipped_surrogate
from olmo_trainer.objectives.rl import RLObjective
from olmo_trainer.optim import build_optimizer
from olmo_trainer.rollouts import Packed, RLBatch

WHITEN_EPS = 1e-8


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last True in mask (B, T); rows need at least one True."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).max(dim=1).values


def kl_penalised_rewards(
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_beta: float,
) -> torch.Tensor:
    """Per-token rewards (B, T): -kl_beta * (old - ref) on response tokens, plus scores (B,) at each
    row's last response token; 0 outside the mask."""
    rewards = -kl_beta * (old_logprobs - ref_logprobs) * mask
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (B, T) response tokens: delta_t = r_t + gamma V_{t+1} - V_t
    (V after the last token is 0), A_t = delta_t + gamma lam A_{t+1}. Returns (advantages, returns =
    advantages + values), both 0 outside the mask (a right-padded response)."""
    weight = mask.to(values.dtype)
    values = values * weight
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * weight[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * weight


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = WHITEN_EPS) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries (unbiased var), 0 outside the mask."""
    weight = mask.to(values.dtype)
    count = weight.sum()
    mean = (values * weight).sum() / count
    var = (((values - mean) * weight) ** 2).sum() / (count - 1).clamp(min=1)
    return (values - mean) * torch.rsqrt(var + eps) * weight


class PPOLoss(NamedTuple):
    """`loss` is what backward() runs on; the others are detached sums over this micro-batch's tokens."""

    loss: torch.Tensor
    policy_sum: torch.Tensor
    value_sum: torch.Tensor
    clipped_sum: torch.Tensor
    value_clipped_sum: torch.Tensor


def value_loss(
    new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2) and where the clip won."""
    clipped_values = old_values + torch.clamp(new_values - old_values, -clip, clip)
    plain, clipped = (new_values - returns) ** 2, (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(plain, clipped), clipped > plain


def ppo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float,
    vf_coef: float,
    num_tokens: float,
    value_clip: float | None = None,
) -> PPOLoss:
    """Token-level PPO loss of one micro-batch: all tensors (B, T); logprobs and new_values carry grad
    (policy and value model), the rest are rollout-time constants; num_tokens as in `grpo_loss`."""
    policy, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, clip)
    value, value_clipped = value_loss(
        new_values, old_values, returns, clip if value_clip is None else value_clip
    )
    weight = mask.to(logprobs.dtype)
    loss = ((policy + vf_coef * value) * weight).sum() / num_tokens
    return PPOLoss(
        loss=loss,
        policy_sum=(policy * weight).sum().detach(),
        value_sum=(value * weight).sum().detach(),
        clipped_sum=(clipped & mask).sum().detach().to(logprobs.dtype),
        value_clipped_sum=(value_clipped & mask).sum().detach().to(logprobs.dtype),
    )


# ---------------------------------------------------------------------------------------------
# The value model and the objective plugged into train.py (shared machinery: objectives/rl.py)
# ---------------------------------------------------------------------------------------------


def build_value_model(cfg: TrainConfig, info: DistInfo, policy: nn.Module) -> nn.Module:
    """The value model: our Transformer with a scalar head (d_model -> 1) in place of the LM head,
    wrapped like the policy. Its body starts as a copy of the policy's current weights (the parent
    phase's model), or as `rlvr.valueInitFrom`'s when given (any committed checkpoint of this
    architecture; its head is loaded too when it is a value model's). The head starts from the
    seeded truncated normal of the model's init."""
    assert cfg.rlvr is not None
    with torch.device("meta"):
        value = Transformer(cfg.model)
        value.lm_head = nn.Linear(cfg.model.d_model, 1, bias=False)
    fsdp = cfg.parallel.strategy == "fsdp"
    if fsdp:
        parallelize(value, cfg.parallel, info)
    value.to_empty(device=info.device)
    value.init_weights(torch.Generator(device=info.device).manual_seed(cfg.seed + 1))
    if cfg.rlvr.value_init_from is not None:
        load_model_weights(cfg.rlvr.value_init_from, value, skip_mismatched=True)
    else:
        inner = policy.module if isinstance(policy, nn.parallel.DistributedDataParallel) else policy
        source = dict(inner.named_parameters())
        with torch.no_grad():
            for name, param in value.named_parameters():
                if not name.startswith("lm_head."):
                    param.copy_(source[name])
    return value if fsdp else parallelize(value, cfg.parallel, info)


class PPOObjective(RLObjective):
    """`rlvr` with `algorithm: ppo`: KL-penalised token rewards, GAE, whitened advantages, clipped
    policy and value losses. The value model and its optimizer are trained with the policy
    (`auxiliary()`), checkpointed, resumed and archived with it."""

    value_model: nn.Module | None = None
    value_optimizer: torch.optim.Optimizer | None = None

    def prepare(self, model: nn.Module, info: DistInfo) -> None:
        super().prepare(model, info)
        self.value_model = build_value_model(self.cfg, info, model)
        self.value_optimizer = build_optimizer(self.value_model, self.cfg.optim, lr=0.0)

    def auxiliary(self) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
        assert self.value_model is not None and self.value_optimizer is not None
        return {"value": (self.value_model, self.value_optimizer)}

    def make_batches(
        self,
        parts: list[Packed],
        old: list[torch.Tensor],
        ref: list[torch.Tensor] | None,
        scores: torch.Tensor,
        correct: torch.Tensor,
        stopped: torch.Tensor,
    ) -> list[RLBatch]:
        assert self.value_model is not None
        gae_cfg = self.rl.gae
        with torch.no_grad():
            values = [self.values(self.value_model, part) for part in parts]
        # Rewards and GAE per micro-batch (rows are independent); whitening over the whole rollout.
        rewards, advantages, returns, start = [], [], [], 0
        for index, part in enumerate(parts):
            reference = ref[index] if ref is not None else old[index]
            rows = slice(start, start + len(part))
            token_rewards = kl_penalised_rewards(
                old[index], reference, scores[rows], part.mask, kl_beta=self.rl.kl_beta
            )
            adv, ret = gae(token_rewards, values[index], part.mask, gamma=gae_cfg.gamma, lam=gae_cfg.lam)
            rewards.append(token_rewards)
            advantages.append(adv)
            returns.append(ret)
            start += len(part)
        width = max(a.shape[1] for a in advantages)
        stacked = torch.cat([nn.functional.pad(a, (0, width - a.shape[1])) for a in advantages])
        masks = torch.cat([nn.functional.pad(p.mask, (0, width - p.mask.shape[1])) for p in parts])
        whitened = whiten(stacked, masks)
        batches, start = [], 0
        for index, part in enumerate(parts):
            rows = slice(start, start + len(part))
            sums = self.sequence_sums(rows, scores, correct, stopped, part.mask.sum(dim=1))
            kl = (old[index] - ref[index]) * part.mask if ref is not None else None
            sums |= {"kl_old": float(kl.sum()) if kl is not None else 0.0}
            batches.append(
                RLBatch(
                    packed=part,
                    old_logprobs=old[index],
                    ref_logprobs=ref[index] if ref is not None else None,
                    advantages=whitened[rows, : part.mask.shape[1]],
                    sums=sums,
                    values=values[index],
                    returns=returns[index],
                )
            )
            start += len(part)
        return batches

    def loss(self, model: nn.Module, micro_batch: RLBatch) -> LossOutput:
        assert (
            self.value_model is not None
            and micro_batch.values is not None
            and micro_batch.returns is not None
        )
        logp = self.logprobs(model, micro_batch.packed)
        new_values = self.values(self.value_model, micro_batch.packed)
        mask = micro_batch.packed.mask
        out = ppo_loss(
            logp,
            micro_batch.old_logprobs,
            micro_batch.advantages,
            new_values,
            micro_batch.values,
            micro_batch.returns,
            mask,
            clip=self.rl.clip,
            vf_coef=self.rl.vf_coef,
            num_tokens=1.0,
        )
        sums: dict[str, torch.Tensor | float] = {
            "policy": out.policy_sum,
            "value": out.value_sum,
            "clipped": out.clipped_sum,
            "value_clipped": out.value_clipped_sum,
            "tokens": float(mask.sum()),
            **micro_batch.sums,
        }
        return LossOutput(out.loss, sums)

    def metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        tokens = max(denominator, 1.0)
        metrics = {
            "loss": (sums["policy"] + self.rl.vf_coef * sums["value"]) / tokens,
            "rl/policy_loss": sums["policy"] / tokens,
            "rl/value_loss": sums["value"] / tokens,
            "rl/value_clip_fraction": sums["value_clipped"] / tokens,
            **self.common_metrics(sums, denominator),
        }
        if self.reference is not None:
            metrics["rl/kl"] = sums["kl_old"] / tokens  # kl1 of the sampling policy, as in the reward
        return metrics
