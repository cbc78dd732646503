"""GRPO and PPO losses against values computed by hand on tiny tensors (numbers in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from olmo_trainer.objectives.grpo import clipped_surrogate, group_advantages, grpo_loss, k3_kl
from olmo_trainer.objectives.ppo import (
    gae,
    kl_penalised_rewards,
    last_token_index,
    ppo_loss,
    value_loss,
    whiten,
)


def close(actual: torch.Tensor, expected: list[float] | list[list[float]] | float, tol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=tol)


def test_group_advantages_by_hand() -> None:
    rewards = torch.tensor([[10.0, 0, 0, 10], [0, 0, 0, 0], [10, 0, 0, 0]])
    adv, zero = group_advantages(rewards)
    # group 0: mean 5, unbiased std sqrt(4 * 25 / 3) = 5.773503 -> +-0.866025
    # group 1: all equal -> 0, counted as zero-variance
    # group 2: mean 2.5, var (56.25 + 3 * 6.25) / 3 = 25, std 5 -> [1.5, -0.5, -0.5, -0.5]
    s = 5 / math.sqrt(100 / 3)
    close(adv, [[s, -s, -s, s], [0, 0, 0, 0], [1.5, -0.5, -0.5, -0.5]])
    assert zero.tolist() == [False, True, False]
    with pytest.raises(ValueError, match="samples >= 2"):
        group_advantages(torch.tensor([[1.0], [2.0]]))


def test_k3_kl_by_hand() -> None:
    # pi = 0.5, ref = 0.25: r = ref/pi = 0.5, k3 = r - 1 - log r = -0.5 + log 2 = 0.193147
    logp, ref = torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3]))
    close(k3_kl(logp, ref), [-0.5 + math.log(2), 0.0])


def test_clipped_surrogate_by_hand() -> None:
    # ratios 1.5, 0.5, 0.9; advantages 1, -1, 1; clip 0.2
    logp = torch.log(torch.tensor([1.5, 0.5, 0.9]))
    loss, clipped = clipped_surrogate(logp, torch.zeros(3), torch.tensor([1.0, -1.0, 1.0]), 0.2)
    # A=1, r=1.5: max(-1.5, -1.2) = -1.2 (clipped); A=-1, r=0.5: max(0.5, 0.8) = 0.8 (clipped);
    # A=1, r=0.9: inside the range: -0.9, not clipped.
    close(loss, [-1.2, 0.8, -0.9])
    assert clipped.tolist() == [True, True, False]


def test_grpo_loss_is_a_token_level_mean_with_k3() -> None:
    logp = torch.log(torch.tensor([[1.5, 0.9, 0.7], [1.0, 0.2, 0.2]])).requires_grad_()
    old = torch.zeros(2, 3)
    ref = torch.log(torch.tensor([[3.0, 0.9, 1.0], [0.5, 1.0, 1.0]]))
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = grpo_loss(logp, old, ref, adv, mask, clip=0.2, kl_beta=0.1, num_tokens=3)
    # token (0,0): r 1.5, A 1 -> -1.2; k3 with ref/pi = 2: 2 - 1 - log 2 = 0.306853
    # token (0,1): r 0.9, A 1 -> -0.9; ref = pi -> k3 0
    # token (1,0): r 1.0, A -2 -> 2.0; ref/pi = 0.5 -> k3 0.193147
    policy = -1.2 - 0.9 + 2.0
    kl = (1 - math.log(2)) + (-0.5 + math.log(2))
    close(out.loss, (policy + 0.1 * kl) / 3)
    close(out.policy_sum, policy)
    close(out.kl_sum, kl)
    close(out.clipped_sum, 1.0)  # only token (0,0) took the clipped branch
    out.loss.backward()
    assert logp.grad is not None
    assert logp.grad[:, 2].abs().sum() == 0 and logp.grad[1, 1] == 0  # masked tokens get no gradient
    # (0,0) is clipped: only the KL term pulls: d/dlogp beta*k3 = beta*(1 - ref/pi) = 0.1*(1-2) -> /3
    close(logp.grad[0, 0], 0.1 * (1 - 2) / 3)
    # beta 0 drops the KL term (OLMo 2's GRPO scripts also ran beta 0)
    close(grpo_loss(logp, old, ref, adv, mask, clip=0.2, kl_beta=0.0, num_tokens=3).loss, policy / 3)


def test_gae_on_a_four_token_example_by_hand() -> None:
    rewards = torch.tensor([[0.1, -0.2, 0.0, 1.0], [0.0, 2.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.6, 0.8], [1.0, 1.5, 9.0, 9.0]])  # row 1: padding values are junk
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    adv, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: delta3 = 1.0 - 0.8 = 0.2 -> A3 0.2
    #        delta2 = 0 + 0.8 - 0.6 = 0.2 -> A2 0.2 + 0.95 * 0.2 = 0.39
    #        delta1 = -0.2 + 0.6 - 0.4 = 0 -> A1 0.95 * 0.39 = 0.3705
    #        delta0 = 0.1 + 0.4 - 0.5 = 0 -> A0 0.95 * 0.3705 = 0.351975
    # row 1: delta1 = 2 + 0 - 1.5 = 0.5 -> A1 0.5; delta0 = 0 + 1.5 - 1 = 0.5 -> A0 0.5 + 0.475 = 0.975
    close(adv, [[0.351975, 0.3705, 0.39, 0.2], [0.975, 0.5, 0, 0]])
    close(returns, [[0.851975, 0.7705, 0.99, 1.0], [1.975, 2.0, 0, 0]])


def test_kl_penalised_rewards_put_the_score_on_the_last_token() -> None:
    old = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0]])
    mask = torch.tensor([[True, True, False]])
    assert last_token_index(mask).tolist() == [1]
    # -0.1 * (old - ref) = [-0.05, 0.1]; score 10 lands on token 1; token 2 is padding.
    close(kl_penalised_rewards(old, ref, torch.tensor([10.0]), mask, kl_beta=0.1), [[-0.05, 10.1, 0.0]])


def test_whiten_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    # over 1, 2, 3, 4: mean 2.5, unbiased var 5/3
    scale = 1 / math.sqrt(5 / 3 + 1e-8)
    close(whiten(x, mask), [[-1.5 * scale, -0.5 * scale, 0.5 * scale], [1.5 * scale, 0, 0]])


def test_value_loss_and_ppo_loss_by_hand() -> None:
    # new 1.0 / old 0.5 / return 2: clipped value 0.7; max(1.0, 1.69) / 2 = 0.845 (clip won)
    # new 0.6 / old 0.5 / return 0: inside the clip: 0.36 / 2 = 0.18
    value, won = value_loss(torch.tensor([1.0, 0.6]), torch.tensor([0.5, 0.5]), torch.tensor([2.0, 0.0]), 0.2)
    close(value, [0.845, 0.18])
    assert won.tolist() == [True, False]
    logp = torch.log(torch.tensor([[1.5, 0.9]]))
    out = ppo_loss(
        logp,
        torch.zeros(1, 2),
        torch.tensor([[1.0, 1.0]]),
        torch.tensor([[1.0, 0.6]]),
        torch.tensor([[0.5, 0.5]]),
        torch.tensor([[2.0, 0.0]]),
        torch.tensor([[True, True]]),
        clip=0.2,
        vf_coef=0.1,
        num_tokens=2,
    )
    # policy -1.2 + -0.9; value 0.845 + 0.18
    close(out.loss, (-2.1 + 0.1 * 1.025) / 2)
    close(out.policy_sum, -2.1)
    close(out.value_sum, 1.025)
    close(out.clipped_sum, 1.0)
    close(out.value_clipped_sum, 1.0)
