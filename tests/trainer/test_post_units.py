"""Post-training arithmetic against values computed by hand on tiny tensors: SFT's summed
cross-entropy and its reductions under accumulation, the DPO loss and rewards (and RPO's NLL term).
(Evaluation's arithmetic is in test_eval_units.py.) The in-process model is the tiny preset (no
process group needed)."""

from __future__ import annotations

import math

import pytest
import torch

from olmo_trainer.config import ModelConfig, TrainConfig
from olmo_trainer.data.chat import IGNORE, ChatBatch, PreferenceBatch, pad_rows
from olmo_trainer.model import Transformer
from olmo_trainer.objectives.dpo import DPOObjective, dpo_terms, rpo_losses
from olmo_trainer.objectives.sft import SFTObjective, sft_loss_sum, token_logps


def _batch(ids: list[list[int]], labels: list[list[int]]) -> ChatBatch:
    import numpy as np

    rows = [(np.asarray(i), np.asarray(lab)) for i, lab in zip(ids, labels, strict=True)]
    return pad_rows(rows, pad_id=0, index=list(range(len(rows))))


def test_summed_ce_of_uniform_logits_is_trained_tokens_times_log_v() -> None:
    batch = _batch([[1, 2, 3, 1]], [[IGNORE, IGNORE, 3, 1]])  # two trained targets
    logits = torch.zeros(1, 4, 4)  # uniform over 4 ids: every log-prob is -ln 4
    ce, trained = sft_loss_sum(logits, batch)
    assert trained == 2 and ce.item() == pytest.approx(2 * math.log(4))


def test_token_logps_by_hand() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, 5.0]]])  # (1, 3, 2)
    logp, mask = token_logps(logits, torch.tensor([[0, 1, 0]]), torch.tensor([[IGNORE, 1, 0]]))
    # position 0 predicts token 1 with p = 3/4; position 1 predicts token 0 with p = 1/2
    assert mask.tolist() == [[True, True]]
    assert logp[0].tolist() == pytest.approx([math.log(0.75), math.log(0.5)])


def _sft(reduction: str) -> SFTObjective:
    cfg = TrainConfig(
        run="r",
        phase="sft",
        kind="sft",
        seed=0,
        model=ModelConfig.preset("tiny"),
        sft={"data": {"paths": ["unused.jsonl"]}, "reduction": reduction},
        save_dir="/tmp/unused",
    )
    return SFTObjective(cfg)


def _grads(model: Transformer, objective: SFTObjective, micro_batches: list[ChatBatch]) -> torch.Tensor:
    """What train.py does for one step on one rank: backward on loss / D for every micro-batch."""
    model.zero_grad()
    denominator = objective.denominator(micro_batches)
    for batch in micro_batches:
        (objective.loss(model, batch).loss / denominator).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reduction_does_not_change_with_the_micro_batch_size(reduction: str) -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny"))
    objective = _sft(reduction)
    rows = [torch.randint(0, 256, (n,)).tolist() for n in (9, 5, 12, 7)]
    labels = [[IGNORE] * (len(r) // 2) + r[len(r) // 2 :] for r in rows]  # different trained counts
    whole = _batch(rows, labels)
    halves = [_batch(rows[:2], labels[:2]), _batch(rows[2:], labels[2:])]
    singles = [_batch([r], [lab]) for r, lab in zip(rows, labels, strict=True)]
    reference = _grads(model, objective, [whole])
    for split in (halves, singles):
        # float32 sums in another order: a padded batch and its splits run kernels of other shapes, and on
        # this machine's CPU the largest gradient (~2.0) moves by up to 1.5e-6. A wrong denominator, the
        # bug this guards, moves the gradients by 0.2-1.0.
        assert torch.allclose(_grads(model, objective, split), reference, atol=1e-5, rtol=1e-5)


def test_sum_is_summed_ce_per_sequence_and_mean_is_per_token() -> None:
    model = Transformer(ModelConfig.preset("tiny"))
    rows = [[1, 2, 3, 4, 5], [6, 7, 8]]
    labels = [[IGNORE, 2, 3, 4, 5], [IGNORE, IGNORE, 8]]  # 4 + 1 trained tokens
    batch = _batch(rows, labels)
    ce_sum = sum_objective_value = _sft("sum").loss(model, batch).loss.item()
    assert _sft("sum").denominator([batch]) == 2  # sequences
    assert _sft("mean").denominator([batch]) == 5  # trained tokens
    logits = model(batch.input_ids)
    by_hand = -(token_logps(logits, batch.input_ids, batch.labels)[0].sum()).item()
    assert sum_objective_value == pytest.approx(by_hand) and ce_sum > 0


def test_dpo_loss_and_rewards_by_hand() -> None:
    terms = dpo_terms(
        torch.tensor([-1.0, -2.0]),  # pi chosen
        torch.tensor([-2.0, -1.0]),  # pi rejected
        torch.tensor([-1.5, -1.5]),  # ref chosen
        torch.tensor([-1.5, -1.5]),  # ref rejected
        beta=5.0,
    )
    # pair 0: (0.5) - (-0.5) = 1 -> loss = log(1 + e^-5); pair 1: -1 -> log(1 + e^5)
    assert terms.losses.tolist() == pytest.approx([math.log1p(math.exp(-5)), math.log1p(math.exp(5))])
    assert terms.chosen_rewards.tolist() == pytest.approx([2.5, -2.5])
    assert terms.rejected_rewards.tolist() == pytest.approx([-2.5, 2.5])


def test_rpo_adds_the_weighted_chosen_nll_to_each_pair() -> None:
    terms = dpo_terms(
        torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta=5.0
    )
    assert rpo_losses(terms, torch.tensor([0.25]), nll_coef=2.0).tolist() == pytest.approx(
        [math.log1p(math.exp(-5)) + 0.5]
    )
    assert torch.equal(rpo_losses(terms, torch.tensor([0.25]), nll_coef=0.0), terms.losses)


@pytest.mark.parametrize("loss", ["dpo_norm", "dpo"])
def test_dpo_objective_nll_term_is_per_chosen_token_for_both_losses(loss: str) -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny"))
    chosen = _batch(
        [[1, 2, 3, 4, 5], [6, 7, 8]], [[IGNORE, IGNORE, 3, 4, 5], [IGNORE, IGNORE, 8]]
    )  # 3 and 1 trained
    rejected = _batch([[1, 2, 9, 9], [6, 7, 9]], [[IGNORE, IGNORE, 9, 9], [IGNORE, IGNORE, 9]])
    batch = PreferenceBatch(chosen, rejected)

    def objective(nll_coef: float) -> DPOObjective:
        cfg = TrainConfig(
            run="r",
            phase="dpo",
            kind="dpo",
            seed=0,
            model=ModelConfig.preset("tiny"),
            save_dir="/tmp/unused",
            dpo={"data": {"paths": ["unused.jsonl"]}, "loss": loss, "nllCoef": nll_coef},
        )
        made = DPOObjective(cfg)
        made.dataset = type("Pairs", (), {"pad_id": 0})()  # loss() reads only pad_id of the dataset
        made.reference = torch.zeros(2, 2, dtype=torch.float64)
        return made

    plain, rpo = objective(0.0).loss(model, batch), objective(3.0).loss(model, batch)
    logp, mask = token_logps(model(chosen.input_ids), chosen.input_ids, chosen.labels)
    mean_nll = -(logp.sum(-1) / mask.sum(-1))  # per chosen token, whatever the DPO loss sums or averages
    assert rpo.loss.item() == pytest.approx(plain.loss.item() + 3.0 * mean_nll.sum().item(), rel=1e-5)
    assert float(rpo.sums["nll/chosen"]) == pytest.approx(mean_nll.sum().item(), rel=1e-5)
