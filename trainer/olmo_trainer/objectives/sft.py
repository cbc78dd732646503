"""Supervised fine-tuning (Tülu 3 / OLMo 2-Instruct): cross-entropy on assistant tokens only.

Reduction (`sft.reduction`; open-instruct `finetune.py` `reduce_loss`):
- `sum` (default, the paper's): the step's loss is the CE SUMMED over every trained token of the global
  batch, divided by the number of sequences in it (a constant: the global batch size). That equals
  open-instruct's Dec 2024 `--reduce_loss sum` at its published setting of one sequence per device and
  micro-batch (summed CE per micro-batch, averaged over micro-batches by accumulation and DDP), which
  the published LRs (7B 1e-5, 13B 6e-6) assume — and, unlike it, does not change with the micro-batch
  size or the world size.
- `mean`: CE averaged over the trained tokens of the whole global batch (every token weighs the same,
  wherever it sits), not a mean of per-micro-batch means.
Both follow from the loop's contract (objectives/__init__.py): each micro-batch returns its CE sum, the
loop divides by the global denominator (sequences, or trained tokens).

Logged: `loss` (CE per trained token, comparable across reductions), `objective` (what is minimised),
`trained_tokens` (per step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from olmo_trainer.config import ChatDataConfig, TrainConfig, batch_split_problem
from olmo_trainer.data import DistributedBatches
from olmo_trainer.data.chat import (
    IGNORE,
    ChatBatch,
    ChatTokenizer,
    SFTDataset,
    check_vocabulary,
    load_chat_tokenizer,
)
from olmo_trainer.distributed import DistInfo
from olmo_trainer.errors import ConfigurationError
from olmo_trainer.layout import StepPlan
from olmo_trainer.objectives.base import BaseObjective, LossOutput
from olmo_trainer.storage import work_dir


def token_logps(
    logits: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and whether it is trained.

    logits (B, L, V), input_ids and labels (B, L) -> logp (B, L-1) float32, mask (B, L-1) bool; position t
    scores token t+1 and is trained iff labels[t+1] != IGNORE. Untrained positions hold 0.
    """
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    mask = labels[:, 1:] != IGNORE
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return logp * mask, mask


def sft_loss_sum(logits: torch.Tensor, batch: ChatBatch) -> tuple[torch.Tensor, int]:
    """(sum of CE over the trained tokens of the batch, number of trained tokens)."""
    logp, mask = token_logps(logits, batch.input_ids, batch.labels)
    return -logp.sum(), int(mask.sum())


def chat_plan(cfg: TrainConfig, num_rows: int, *, epochs: int, max_length: int, world_size: int) -> StepPlan:
    """Steps of a post-training phase: `maxSteps`, else epochs x (rows // global batch).

    tokens_per_step is nominal (global batch x maxLength): the LR schedule is defined in tokens, and a
    nominal count makes a warmup fraction a fraction of the steps, as in open-instruct.
    """
    if cfg.batch is None:
        raise ConfigurationError(f"a {cfg.kind} job needs `batch`")
    micro, global_batch = cfg.batch.micro_batch_size, cfg.batch.global_batch_size
    if (problem := batch_split_problem(global_batch, micro, world_size)) is not None:
        raise ConfigurationError(problem)
    if num_rows < global_batch:
        raise ConfigurationError(
            f"the {cfg.kind} data has {num_rows} usable rows, fewer than globalBatchSize {global_batch}"
        )
    total = cfg.max_steps if cfg.max_steps is not None else epochs * (num_rows // global_batch)
    return StepPlan(
        global_batch_size=global_batch,
        micro_batch_size=micro,
        accumulation=global_batch // (micro * world_size),
        sequence_length=max_length,
        tokens_per_step=global_batch * max_length,
        total_steps=max(1, total),
        flops_per_token=cfg.model.flops_per_token(max_length),
    )


def chat_batches(cfg: TrainConfig, dataset: Any, plan: StepPlan, info: DistInfo) -> Any:
    """This rank's steps over a chat dataset: the seeded global order of data/order.py, resumable."""
    return DistributedBatches(
        dataset,
        global_batch_size=plan.global_batch_size,
        micro_batch_size=plan.micro_batch_size,
        rank=info.rank,
        world_size=info.world_size,
        seed=cfg.seed,
        work_dir=work_dir(cfg),
    )


def check_vocab(cfg: TrainConfig, data: ChatDataConfig, tokenizer: ChatTokenizer) -> None:
    """A tokenizer whose ids do not fit the model is a config error, found before any forward pass."""
    check_vocabulary(tokenizer, cfg.model.vocab_size, source=data.tokenizer)
    pad_id = tokenizer.pad_token_id
    if pad_id >= cfg.model.padded_vocab:
        which = data.tokenizer or "the byte-level tokenizer"
        raise ConfigurationError(
            f"{which}: PAD id {pad_id} is outside the model's {cfg.model.padded_vocab} embedding rows"
        )


class SFTObjective(BaseObjective):
    """SFT on conversations; batches are `ChatBatch` (right-padded, IGNORE outside assistant content)."""

    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.sft is None:
            raise ConfigurationError("an sft job needs its `sft` settings")
        self.cfg, self.sft = cfg, cfg.sft
        self.device = torch.device("cpu")

    def build(self, cfg: TrainConfig, info: DistInfo) -> tuple[StepPlan, Any]:
        self.device = info.device
        data = self.sft.data
        tokenizer = load_chat_tokenizer(data.tokenizer)
        check_vocab(cfg, data, tokenizer)
        dataset = SFTDataset(data.paths, tokenizer, max_length=data.max_length)
        if info.rank == 0:
            print(f"sft data: {len(dataset)} conversations, {dataset.dropped} dropped (no trained token)")
        plan = chat_plan(
            cfg, len(dataset), epochs=self.sft.epochs, max_length=data.max_length, world_size=info.world_size
        )
        return plan, chat_batches(cfg, dataset, plan, info)

    def denominator(self, micro_batches: list[ChatBatch]) -> float:
        if self.sft.reduction == "sum":
            return float(sum(b.input_ids.shape[0] for b in micro_batches))
        return float(sum(int((b.labels[:, 1:] != IGNORE).sum()) for b in micro_batches))

    def loss(self, model: nn.Module, micro_batch: ChatBatch) -> LossOutput:
        batch = micro_batch.to(self.device)
        ce, trained = sft_loss_sum(model(batch.input_ids), batch)
        sums: dict[str, torch.Tensor | float] = {
            "ce": ce.detach(),
            "trained_tokens": float(trained),
            "tokens": float(batch.lengths.sum()),
        }
        return LossOutput(ce, sums)

    def metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        trained = sums["trained_tokens"]
        return {
            "loss": sums["ce"] / trained if trained else math.nan,
            "objective": sums["ce"] / denominator if denominator else math.nan,
            "trained_tokens": trained,
        }
