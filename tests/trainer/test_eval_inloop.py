"""In-loop evaluation: a pretraining phase under torchrun (2 gloo processes, FSDP2) evaluates every
`eval.interval` steps on its sharded model, and the figures land in metrics.jsonl beside that step's
loss; they equal a single-process evaluation of the checkpoint saved at the same step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from olmo_trainer.config import EvalConfig
from olmo_trainer.evaluate import evaluate, load_for_eval
from tests.trainer.dist_util import read_metrics, tiny_config, torchrun

pytestmark = pytest.mark.slow

HELDOUT = str(Path(__file__).parents[2] / "examples" / "data" / "tiny-heldout.jsonl")
EVAL = {
    "tasks": [
        {"name": "arc", "kind": "multiple_choice", "paths": ["oe:arc_easy:rc_0shot"], "limit": 5},
        {"name": "wino", "kind": "multiple_choice", "paths": ["oe:winogrande:rc_0shot"], "limit": 5},
        {"name": "lambada", "kind": "multiple_choice", "paths": ["oe:lambada:bpb_0shot"], "limit": 3},
        {"name": "arith", "kind": "generate", "paths": [HELDOUT], "limit": 3, "maxNewTokens": 3},
        {
            "name": "lm",
            "kind": "perplexity",
            "limit": 3,
            "data": {
                "sources": [{"name": "h", "synthetic": {"numTokens": "20K", "seed": 9}}],
                "sequenceLength": 64,
            },
        },
    ],
    "interval": {"steps": 4},
}


def test_a_pretraining_phase_writes_in_loop_eval_curves_equal_to_evaluating_its_checkpoints(
    tmp_path: Path,
) -> None:
    config = tiny_config(tmp_path, maxSteps=10, checkpoint={"intervalSteps": 4, "keepLast": 5}, eval=EVAL)
    result = torchrun(["pretrain", "--config", str(config)], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = read_metrics(tmp_path / "out")
    with_eval = [line for line in lines if "eval/arc/acc_raw" in line]
    # Steps 4 and 8 in the loop, beside their loss; step 10 is the final evaluation (a line of its own).
    assert [(line["step"], "loss" in line) for line in with_eval] == [(4, True), (8, True), (10, False)]
    expected_keys = {
        "eval/wino/acc_per_char",
        "eval/lambada/bpb",
        "eval/arith/accuracy",
        "eval/lm/perplexity",
    }
    assert expected_keys <= set(with_eval[0])
    in_loop = with_eval[0]
    model = load_for_eval(str(tmp_path / "out" / "checkpoints" / "step4"))
    alone = evaluate(
        model,
        EvalConfig.model_validate(EVAL),
        device=torch.device("cpu"),
        max_length=model.config.max_sequence_length,
        work_dir=str(tmp_path / "work"),
        seed=7,
    )
    assert alone.keys() == {k for k in in_loop if k.startswith("eval/")}  # and eval_time_s
    for key, value in alone.items():
        assert in_loop[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert in_loop["eval/arc/count"] == 5 and in_loop["eval/lm/count"] == 3
    assert in_loop["eval_time_s"] > 0 and "eval at step 4 (" in result.stdout
