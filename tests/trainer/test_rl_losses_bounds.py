"""GRPO and PPO losses at the edges the by-hand tests do not reach: a non-zero old policy, the smallest
group, explicit eps, padded (masked) tokens, one-token responses, a response whose only token is the
first, clipping from below, a separate value clip, and the dtype of every logged sum.
Values in the comments are computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from olmo_trainer.objectives.grpo import clipped_surrogate, group_advantages, grpo_loss
from olmo_trainer.objectives.ppo import gae, last_token_index, ppo_loss, value_loss, whiten


def close(actual: torch.Tensor, expected: list[float] | list[list[float]] | float, tol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=tol)


def test_the_ratio_is_against_the_old_policy() -> None:
    # r = 1.5 / 1.2 = 1.25, inside clip 0.3: loss -A r = -1.25
    loss, clipped = clipped_surrogate(
        torch.log(torch.tensor([1.5])), torch.log(torch.tensor([1.2])), torch.tensor([1.0]), 0.3
    )
    close(loss, [-1.25])
    assert clipped.tolist() == [False]


def test_two_samples_are_the_smallest_group_and_eps_is_added_to_the_std() -> None:
    # rewards 0, 2: mean 1, unbiased std sqrt(2); eps 1: advantages -+1 / (sqrt(2) + 1)
    advantages, zero = group_advantages(torch.tensor([[0.0, 2.0]]), eps=1.0)
    a = 1 / (math.sqrt(2) + 1)
    close(advantages, [[-a, a]])
    assert zero.tolist() == [False]
    with pytest.raises(
        ValueError, match=r"^group advantages need rewards \(prompts, samples >= 2\), got shape \(3, 1\)$"
    ):
        group_advantages(torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"got shape \(4,\)$"):
        group_advantages(torch.zeros(4))


def test_without_kl_the_reference_is_never_read() -> None:
    # kl_beta 0 (OLMo 2's GRPO scripts): a reference with -inf would make k3 infinite, and 0 * inf is NaN.
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    out = grpo_loss(
        logprobs=logp,
        old_logprobs=logp.clone(),
        ref_logprobs=torch.tensor([[-math.inf, 0.0]]),
        advantages=torch.tensor([1.0]),
        mask=torch.tensor([[True, True]]),
        clip=0.2,
        kl_beta=0.0,
        num_tokens=2,
    )
    close(out.loss, -1.0)  # ratio 1, A 1: -1 per token, mean over 2
    assert out.clipped_sum.dtype == torch.float32


def test_ppo_with_padding_a_value_clip_and_clipping_from_below() -> None:
    def f64(rows: list[list[float]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.float64)

    out = ppo_loss(
        logprobs=f64([[0.0, 0.0]]),  # log 1: ratio 1
        old_logprobs=f64([[0.0, 0.0]]),
        advantages=f64([[1.0, 5.0]]),
        new_values=f64([[0.0, 9.0]]),  # the second token is padding
        old_values=f64([[1.0, 0.0]]),
        returns=f64([[0.0, 0.0]]),
        mask=torch.tensor([[True, False]]),
        clip=0.2,
        vf_coef=0.5,
        num_tokens=1,
        value_clip=0.5,
    )
    # token 1: policy -1; value: new 0 vs clipped 1 + clamp(-1, -0.5, 0.5) = 0.5 -> max(0, 0.25) / 2 = 0.125
    close(out.loss, -1.0 + 0.5 * 0.125)
    close(out.policy_sum, -1.0)
    close(out.value_sum, 0.125)
    close(out.value_clipped_sum, 1.0)
    close(out.clipped_sum, 0.0)
    assert out.clipped_sum.dtype == out.value_clipped_sum.dtype == torch.float64


def test_value_loss_clips_from_below_too() -> None:
    # new -1, old 0, return -2: clipped value -0.2; max(1, 3.24) / 2 = 1.62
    value, won = value_loss(torch.tensor([-1.0]), torch.tensor([0.0]), torch.tensor([-2.0]), 0.2)
    close(value, [1.62])
    assert won.tolist() == [True]


def test_last_token_index_of_a_response_whose_only_token_is_the_first() -> None:
    assert last_token_index(torch.tensor([[True, False, False], [False, True, True]])).tolist() == [0, 2]


def test_gae_on_one_token_responses() -> None:
    # T = 1: A = r - V, return = r
    advantages, returns = gae(
        torch.tensor([[3.0], [1.0]]),
        torch.tensor([[1.0], [2.0]]),
        torch.tensor([[True], [True]]),
        gamma=1.0,
        lam=0.95,
    )
    close(advantages, [[2.0], [-1.0]])
    close(returns, [[3.0], [1.0]])


def test_whiten_of_two_entries_with_an_explicit_eps() -> None:
    # 1, 3: mean 2, unbiased var 2; eps 2: (x - 2) / 2
    close(
        whiten(torch.tensor([[1.0, 3.0, 7.0]]), torch.tensor([[True, True, False]]), eps=2.0),
        [[-0.5, 0.5, 0.0]],
    )
