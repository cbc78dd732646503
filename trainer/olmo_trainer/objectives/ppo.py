"""PPO as OLMo 2 7B/13B-Instruct were trained (Tülu 3 section 6; Ouyang et al. 2022): the losses.

Per-token reward: -klBeta * (logp_old - logp_ref) at every response token (the kl1 estimator of the
KL to the frozen reference), plus the verifiable score at the response's last token. Advantages by
GAE (Schulman et al. 2016, eq. 16) with gamma 1 and lambda 0.95 over the value model's estimates,
then whitened over all response tokens of the batch. The policy loss is the clipped surrogate
(shared with GRPO), the value loss the clipped squared error 0.5 * max((V - R)^2, (V_clip - R)^2),
total = policy + vfCoef * value (vf_coef 0.1, clip 0.2 for both; ../shared/OLMO2.md "RLVR").

    rewards = kl_penalised_rewards(old_logp, ref_logp, scores, mask, kl_beta=0.05)
    adv, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    adv = whiten(adv, mask)
    out = ppo_loss(logp, old_logp, adv, new_values, values, returns, mask, clip=0.2, vf_coef=0.1, num_tokens=n)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from olmo_trainer.objectives.grpo import clipped_surrogate

WHITEN_EPS = 1e-8


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last True in mask (B, T); rows need at least one True."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).max(dim=1).values


def kl_penalised_rewards(
    old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, *, kl_beta: float
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
    value, value_clipped = value_loss(new_values, old_values, returns, clip if value_clip is None else value_clip)
    weight = mask.to(logprobs.dtype)
    loss = ((policy + vf_coef * value) * weight).sum() / num_tokens
    return PPOLoss(
        loss=loss,
        policy_sum=(policy * weight).sum().detach(),
        value_sum=(value * weight).sum().detach(),
        clipped_sum=(clipped & mask).sum().detach().to(logprobs.dtype),
        value_clipped_sum=(value_clipped & mask).sum().detach().to(logprobs.dtype),
    )
