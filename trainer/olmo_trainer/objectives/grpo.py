"""GRPO (Shao et al. 2024, DeepSeekMath section 4.1) as OLMo 2 1B-Instruct was trained: the losses.

For each prompt, `samplesPerPrompt` responses are sampled and scored; each response's advantage is
its reward normalised within its group, (r - mean) / (std + 1e-8) (../shared/OLMO2.md "RLVR"; std is
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

ADVANTAGE_EPS = 1e-8
"""Added to the group std (OLMO2.md: (r - mean)/(std + 1e-8))."""


def group_advantages(rewards: torch.Tensor, eps: float = ADVANTAGE_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-normalised advantages of rewards (G, K) (G prompts x K samples) -> ((G, K), (G,) bool
    zero-variance flags). Zero-variance groups get advantage exactly 0. Raises ValueError for K < 2."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"group advantages need rewards (prompts, samples >= 2), got shape {tuple(rewards.shape)}")
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
