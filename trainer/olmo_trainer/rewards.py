"""Verifiable rewards for RLVR: the verdict of `verifiers.verify` turned into a score.

    score = reward(text, row["ground_truth"], row["dataset"], correct_reward=10.0)

Reward = `correct_reward` (10 in OLMo 2) when verified, else 0; minus `non_stop_penalty` when the
response did not end with EOS. Which answers are correct is verifiers.py's alone.
"""

from __future__ import annotations

from olmo_trainer.verifiers import verify


def reward_of(
    verified: bool, *, correct_reward: float = 10.0, stopped: bool = True, non_stop_penalty: float = 0.0
) -> float:
    """`correct_reward` when verified, else 0; minus `non_stop_penalty` when the response was cut at the
    length limit instead of ending with EOS (Tülu 3 section 6: reward 10 on a verified answer)."""
    score = correct_reward if verified else 0.0
    return score if stopped else score - non_stop_penalty


def reward(
    response: str,
    ground_truth: str,
    dataset: str,
    *,
    correct_reward: float = 10.0,
    stopped: bool = True,
    non_stop_penalty: float = 0.0,
) -> float:
    """The reward of one response: the dataset's verifier, then `reward_of`."""
    verified = verify(dataset, response, ground_truth)
    return reward_of(
        verified, correct_reward=correct_reward, stopped=stopped, non_stop_penalty=non_stop_penalty
    )
