"""`olmorun eval CHECKPOINT --data URI` and `python -m olmo_trainer eval --config URI` on a committed
checkpoint (a tiny model's weights written here), in subprocesses exactly as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from olmo_trainer.checkpoint import save_model_weights
from olmo_trainer.config import ModelConfig, TrainConfig
from olmo_trainer.model import Transformer

ROOT = Path(__file__).parents[2]
DATA = ROOT / "examples" / "data"


def checkpoint(tmp_path: Path) -> Path:
    cfg = TrainConfig(
        run="r", phase="soup", kind="soup", seed=0, model=ModelConfig.preset("tiny"), save_dir=str(tmp_path)
    )
    torch.manual_seed(0)
    weights = Transformer(cfg.model).state_dict()
    out = tmp_path / "checkpoints" / "step1"
    save_model_weights(str(out), weights, step=1, config_json=cfg.to_json())
    return out


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)


def test_olmorun_eval_guesses_the_task_and_prints_figures(tmp_path: Path) -> None:
    ckpt = checkpoint(tmp_path)
    olmorun = [sys.executable, "-m", "olmo_operator.cli", "eval"]
    generate = run(
        *olmorun,
        str(ckpt.parent),
        "--data",
        str(DATA / "tiny-heldout.jsonl"),
        "--limit",
        "4",
        "--max-new-tokens",
        "4",
        "--json",
    )
    assert generate.returncode == 0, generate.stderr
    figures = json.loads(generate.stdout)
    assert figures["eval/tiny-heldout/count"] == 4 and 0 <= figures["eval/tiny-heldout/accuracy"] <= 1
    choice = run(*olmorun, str(ckpt), "--data", str(DATA / "tiny-mc.jsonl"), "--limit", "6", "--name", "mc")
    assert choice.returncode == 0, choice.stderr
    head, row = choice.stdout.splitlines()
    assert head.split() == ["TASK", "ACC_RAW", "ACC_PER_CHAR", "ACC_PER_TOKEN", "CE_LOSS", "BPB", "COUNT"]
    assert row.split()[0] == "mc" and row.split()[-1] == "6"
    # stderr is no terminal here: the progress comes as plain lines, not a redrawn bar.
    assert "eval mc: " in choice.stderr and "\r" not in choice.stderr
    wino = run(*olmorun, str(ckpt), "--data", "oe:winogrande:rc_0shot", "--limit", "4", "--json")
    assert wino.returncode == 0, wino.stderr
    assert json.loads(wino.stdout)["eval/winogrande-rc-0shot/count"] == 4
    missing = run(*olmorun, str(ckpt), "--data", "oe:winogrande:rc_7shot")
    assert (
        missing.returncode == 2
        and "its formats: mc_5shot" in missing.stderr
        and "Traceback" not in missing.stderr
    )
    bad = run(*olmorun, str(ckpt), "--data", str(DATA / "tiny-sft.jsonl"))
    assert bad.returncode == 2 and "give --kind" in bad.stderr and "Traceback" not in bad.stderr


def test_trainer_eval_command_writes_its_results(tmp_path: Path) -> None:
    ckpt = checkpoint(tmp_path)
    config = tmp_path / "eval.json"
    output = tmp_path / "results.json"
    task = {
        "name": "arith",
        "kind": "generate",
        "paths": [str(DATA / "tiny-heldout.jsonl")],
        "limit": 3,
        "maxNewTokens": 4,
    }
    config.write_text(json.dumps({"checkpoint": str(ckpt), "eval": {"tasks": [task]}, "output": str(output)}))
    result = run(sys.executable, "-m", "olmo_trainer", "eval", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert json.loads(output.read_text())["eval/arith/count"] == 3
    assert json.loads(result.stdout)["eval/arith/count"] == 3
