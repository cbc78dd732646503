"""GRPO (Shao et al. 2024, DeepSeekMath section 4.1) as OLMo 2 1B-Instruct was trained: the losses.

For each prompt, `samplesPerPrompt` responses are sampled and scored; each response's advantage is
its reward normalised within its group, (r - mean) / (std + 1e-8) (DeepSeekMath, arXiv:2402.03300; std is
the unbiased sample std, as torch computes it and TRL/open-instruct use). A group whose rewards are
all equal gives every member advantage 0, so it contributes no gradient; those groups are counted.

The per-token loss is the PPO clipped surrogate with that sequence-level advantage, plus `klBeta`
times the k3 estimator of KL(pi || ref) (Schulman 2020, "Approximating KL divergence"):
k3 = r - 1 - log r with r = ref / pi, i.e. expm1(-d) + d for d = logp - ref_logp, >= 0 everywhere.
The mean is token-level over the whole accumulation group: the caller passes the number of response
tokens of the step (`num_tokens`), so micro-batches and ranks add up to one exact mean.

    adv, zero = group_advantages(rewards.view(num_prompts, samples_per_prompt))
    out = grpo_loss(logp, old_logp, ref_logp, adv.flatten(), mask, clip=0.2, kl_beta=0.01, num_tokens=n)
    out.loss.backward()
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from olmo_trainer.errors import ConfigurationError
from olmo_trainer.objectives.base import LossOutput
from olmo_trainer.objectives.rl import RLObjective
from olmo_trainer.rollouts import Packed, RLBatch

ADVANTAGE_EPS = 1e-8
"""Added to the group std (OLMO2.md: (r - mean)/(std + 1e-8))."""


def group_advantages(rewards: torch.Tensor, eps: float = ADVANTAGE_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-normalised advantages of rewards (G, K) (G prompts x K samples) -> ((G, K), (G,) bool
    zero-variance flags). Zero-variance groups get advantage exactly 0. Raises ValueError for K < 2."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ConfigurationError(
            f"group advantages need rewards (prompts, samples >= 2), got shape {tuple(rewards.shape)}"
        )
    rewards = rewards.double()
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)  # unbiased
    zero = (rewards == rewards[:, :1]).all(dim=1)
    advantages = ((rewards - mean) / (std + eps)).masked_fill(zero[:, None], 0.0)
    return advantages.float(), zero


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref): expm1(ref - logp) - (ref - logp), same shape, >= 0."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


def clipped_surrogate(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO policy loss max(-A r, -A clip(r, 1-eps, 1+eps)), r = exp(logp - old_logp), and the
    (same shape) bool of tokens where the clipped term was taken (Schulman et al. 2017, eq. 7)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    return torch.maximum(unclipped, clipped), clipped > unclipped


class GRPOLoss(NamedTuple):
    """`loss` is what backward() runs on; the others are detached sums over this micro-batch's
    response tokens (divide by the token count for means)."""

    loss: torch.Tensor
    policy_sum: torch.Tensor
    kl_sum: torch.Tensor
    clipped_sum: torch.Tensor


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float,
    kl_beta: float,
    num_tokens: float,
) -> GRPOLoss:
    """Token-level GRPO loss of one micro-batch.

    logprobs (B, T) with grad; old_logprobs, ref_logprobs (B, T) detached; advantages (B,) (one per
    sequence); mask (B, T) True on response tokens; num_tokens: response tokens in the whole
    accumulation group (all micro-batches, all ranks, divided by the world size when the gradient is
    averaged over ranks), so the summed gradients are one token-level mean.
    """
    policy, clipped = clipped_surrogate(logprobs, old_logprobs, advantages[:, None], clip)
    kl = k3_kl(logprobs, ref_logprobs)
    weight = mask.to(logprobs.dtype)
    per_token = policy + kl_beta * kl if kl_beta else policy
    loss = (per_token * weight).sum() / num_tokens
    return GRPOLoss(
        loss=loss,
        policy_sum=(policy * weight).sum().detach(),
        kl_sum=(kl * weight).sum().detach(),
        clipped_sum=(clipped & mask).sum().detach().to(logprobs.dtype),
    )


# ---------------------------------------------------------------------------------------------
# The objective plugged into train.py (the shared rollout machinery is objectives/rl.py)
# ---------------------------------------------------------------------------------------------


class GRPOObjective(RLObjective):
    """`rlvr` with `algorithm: grpo`: group-normalised sequence advantages, clipped ratio, k3 KL."""

    def make_batches(
        self,
        parts: list[Packed],
        old: list[torch.Tensor],
        ref: list[torch.Tensor] | None,
        scores: torch.Tensor,
        correct: torch.Tensor,
        stopped: torch.Tensor,
    ) -> list[RLBatch]:
        k = self.rl.samples_per_prompt
        advantages, zero = group_advantages(scores.view(-1, k))
        flat = advantages.flatten()
        first_rows = torch.arange(zero.numel(), device=zero.device) * k  # each group's first row
        batches, start = [], 0
        for index, part in enumerate(parts):
            rows = slice(start, start + len(part))
            here = (first_rows >= start) & (first_rows < start + len(part))  # groups counted once
            sums = self.sequence_sums(rows, scores, correct, stopped, part.mask.sum(dim=1))
            sums |= {"groups": float(here.sum()), "zero_variance_groups": float((here & zero).sum())}
            batches.append(
                RLBatch(
                    packed=part,
                    old_logprobs=old[index],
                    ref_logprobs=ref[index] if ref is not None else None,
                    advantages=flat[rows],
                    sums=sums,
                )
            )
            start += len(part)
        return batches

    def loss(self, model: nn.Module, micro_batch: RLBatch) -> LossOutput:
        logp = self.logprobs(model, micro_batch.packed)
        mask = micro_batch.packed.mask
        ref = micro_batch.ref_logprobs if micro_batch.ref_logprobs is not None else logp.detach()
        out = grpo_loss(
            logp,
            micro_batch.old_logprobs,
            ref,
            micro_batch.advantages,
            mask,
            clip=self.rl.clip,
            kl_beta=self.rl.kl_beta,
            num_tokens=1.0,  # a sum: the loop divides
        )
        sums: dict[str, torch.Tensor | float] = {
            "policy": out.policy_sum,
            "clipped": out.clipped_sum,
            "tokens": float(mask.sum()),
            **micro_batch.sums,
        }
        if micro_batch.ref_logprobs is not None:
            sums["kl"] = out.kl_sum
        return LossOutput(out.loss, sums)

    def metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        tokens = max(denominator, 1.0)
        kl = sums.get("kl", 0.0)
        return {
            "loss": (sums["policy"] + self.rl.kl_beta * kl) / tokens,
            "rl/policy_loss": sums["policy"] / tokens,
            "rl/zero_variance_groups": sums["zero_variance_groups"] / max(sums["groups"], 1.0),
            **self.common_metrics(sums, denominator),
        }
