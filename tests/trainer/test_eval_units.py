"""Evaluation arithmetic against values computed by hand: the per-document metrics (acc_raw,
acc_per_char, acc_per_token, ce_loss, bpb), the request row a continuation is scored in, when an
in-loop evaluation is due (steps or tokens), and the generative check, which is verifiers.verify's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from olmo_trainer.config import EvalConfig, ModelConfig
from olmo_trainer.evaluate import (
    InLoopEvaluator,
    Scored,
    continuation_logprobs,
    evaluate,
    mean_metrics,
    question_metrics,
    request_row,
)
from olmo_trainer.model import Transformer
from olmo_trainer.verifiers import verify


def test_the_three_accuracies_pick_by_their_own_normalisation() -> None:
    # (nats, tokens, chars, bytes): choice 0 -4 over 2/2/2; choice 1 -6 over 1/10/10; choice 2 -5 over 5/4/4
    scored = [Scored(-4.0, 2, 2, 2), Scored(-6.0, 1, 10, 10), Scored(-5.0, 5, 4, 4)]
    # raw: -4 wins (0); per char: -2, -0.6, -1.25 -> 1; per token: -2, -6, -1 -> 2
    assert question_metrics(scored, 0, "choice")["acc_raw"] == 1.0
    assert question_metrics(scored, 1, "choice")["acc_per_char"] == 1.0
    figures = question_metrics(scored, 2, "choice")
    assert (figures["acc_raw"], figures["acc_per_char"], figures["acc_per_token"]) == (0.0, 0.0, 1.0)
    # The gold's losses: 5 nats over 4 characters and 4 bytes
    assert figures["ce_loss"] == pytest.approx(1.25)
    assert figures["bpb"] == pytest.approx(5 / 4 / math.log(2))


def test_ties_go_to_the_first_choice_as_torch_argmax() -> None:
    tied = [Scored(-3.0, 1, 3, 3), Scored(-3.0, 1, 3, 3)]
    assert question_metrics(tied, 0, "choice")["acc_raw"] == 1.0
    assert question_metrics(tied, 1, "choice")["acc_raw"] == 0.0


def test_a_likelihood_task_reports_losses_only_and_bytes_count_utf8() -> None:
    figures = question_metrics([Scored(-math.log(2) * 6, 3, 2, 6)], 0, "likelihood")  # "éé": 2 chars, 4 bytes
    assert set(figures) == {"ce_loss", "bpb"} and figures["bpb"] == pytest.approx(1.0)
    assert mean_metrics([figures, {"ce_loss": 1.0, "bpb": 3.0}]) == pytest.approx(
        {"ce_loss": (figures["ce_loss"] + 1.0) / 2, "bpb": 2.0, "count": 2.0}
    )


def test_request_row_is_context_plus_continuation_but_its_last_token_cut_from_the_left() -> None:
    assert request_row([1, 2, 3], [4, 5], max_length=8) == ([1, 2, 3, 4], 3)
    assert request_row([1, 2, 3], [4, 5], max_length=3) == ([2, 3, 4], 2)
    assert request_row([1], [9], max_length=4) == (
        [1],
        1,
    )  # one-token choice: the model reads the context only
    with pytest.raises(ValueError, match="does not fit"):
        request_row([1], [4, 5, 6], max_length=2)
    with pytest.raises(ValueError, match="non-empty"):
        request_row([], [4], max_length=4)


def test_continuation_logprob_is_the_sum_of_each_tokens_log_probability() -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny")).eval()
    context, cont = [5, 6, 7], [8, 9]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([context + cont])).float(), dim=-1)[0]
    by_hand = float(logp[2, 8] + logp[3, 9])  # position i predicts token i + 1
    (ours,) = continuation_logprobs(model, [(context, cont)], 16, torch.device("cpu"))
    assert ours == pytest.approx(by_hand, rel=1e-6)


def evaluator(interval: dict[str, object]) -> InLoopEvaluator:
    cfg = EvalConfig.model_validate(
        {"tasks": [{"name": "x", "kind": "multiple_choice", "paths": ["x.jsonl"]}], "interval": interval}
    )
    return InLoopEvaluator(
        model=torch.nn.Linear(1, 1),
        cfg=cfg,
        device=torch.device("cpu"),
        max_length=8,
        vocab_size=8,
        work_dir="/tmp",
        seed=0,
        total_steps=10,
    )


def test_in_loop_evaluation_is_due_every_n_steps_or_each_time_a_token_multiple_is_crossed() -> None:
    steps = evaluator({"steps": 3})
    assert [s for s in range(1, 11) if steps.due(s, 0, 0)] == [3, 6, 9]  # step 10 is the final evaluation's
    tokens = evaluator({"tokens": 1000})
    crossed = [s for s in range(1, 11) if tokens.due(s, (s - 1) * 300, s * 300)]
    assert crossed == [4, 7]  # 1200 and 2100 cross 1000 and 2000; 3000 is step 10, the final one
    assert steps.after_step(4, 0, 0) == {}


@pytest.mark.parametrize(
    ("response", "truth", "dataset", "ok"),
    [
        ("The answer is 7.", "7", "gsm8k", True),
        ("so 12.0", "12", "gsm8k", True),
        ("The answer is 1,000.", "1000", "gsm8k", True),
        ("The answer is 8.", "7", "gsm8k", False),
        # The evaluation once had its own checker that read ".5" as 0.5; the reward (OLMo 2's string
        # comparison of the last number, open-instruct@26b7325) reads "5": one verdict for both now.
        ("The answer is .5", "0.5", "gsm8k", False),
        ("so $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}", "math", True),
    ],
)
def test_generative_answers_are_checked_by_the_verifiers(
    response: str, truth: str, dataset: str, ok: bool
) -> None:
    assert verify(dataset, response, truth) is ok


def test_a_generation_row_no_verifier_can_check_is_refused_before_any_generation(tmp_path: Path) -> None:
    rows = tmp_path / "gen.jsonl"
    good = {"messages": [{"role": "user", "content": "1+1?"}], "ground_truth": 2}  # a number is fine
    rows.write_text(json.dumps(good) + "\n" + json.dumps({**good, "dataset": "arith"}) + "\n")
    cfg = EvalConfig.model_validate({"tasks": [{"name": "g", "kind": "generate", "paths": [str(rows)]}]})
    model = Transformer(ModelConfig.preset("tiny")).eval()
    with pytest.raises(ValueError, match=r"gen.jsonl:2: no verifier for dataset 'arith'"):
        evaluate(model, cfg, device=torch.device("cpu"), max_length=128, work_dir=str(tmp_path))
