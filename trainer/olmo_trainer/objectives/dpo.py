"""Direct preference optimisation as OLMo 2-Instruct was trained: `dpo_norm` (length-normalised).

Per pair, with pi the policy and ref the frozen parent (the SFT model), each a per-sequence log-prob of
the trained (assistant) tokens — AVERAGED over them for `dpo_norm`, summed for plain `dpo`:

    loss = -log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l)))          (w chosen, l rejected)

averaged over the pairs of the global batch (open-instruct `dpo_utils.py`, Dec 2024; beta 5 for
OLMo 2). With `nllCoef` > 0 each pair's loss also gets `nllCoef` x the mean negative log-likelihood
of the chosen response's tokens (RPO, Pang et al. 2024, arXiv:2404.19733, eq. 1, which divides by
prompt + response length instead), which keeps DPO from lowering the chosen answers' likelihood
along with the rejected ones'. Rewards are
`beta * (pi - ref)`. Logged, means over the step's pairs: rewards/{chosen,rejected,margin,accuracy},
the policy's logps/{chosen,rejected} and nll/chosen (per token).

Reference log-probs are computed ONCE, before training, by all ranks (each scores a strided share,
then they are gathered), and stored beside the phase's checkpoints as
`<save_dir>/reference_logps/<key>.npy`, key = hash(parent checkpoint identity, data fingerprint,
maxLength, loss). A resumed or retried job finds and reuses them, so it never needs a second model.
"""

from __future__ import annotations

import io
import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from olmo_trainer.checkpoint import CheckpointError, manifest_sha256
from olmo_trainer.config import TrainConfig, hash_json
from olmo_trainer.data.chat import IGNORE, ChatBatch, PreferenceBatch, PreferenceDataset, load_chat_tokenizer
from olmo_trainer.distributed import DistInfo
from olmo_trainer.errors import ConfigurationError
from olmo_trainer.layout import StepPlan
from olmo_trainer.objectives.base import BaseObjective, LossOutput
from olmo_trainer.objectives.sft import chat_batches, chat_plan, check_vocab, token_logps
from olmo_trainer.storage import filesystem, write_atomic

REFERENCE_DIR = "reference_logps"


class DPOTerms(NamedTuple):
    """Per pair (B,): the loss and the implicit rewards beta * (pi - ref)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_terms(
    pi_chosen: torch.Tensor,
    pi_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
) -> DPOTerms:
    """-log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l))) per pair; every input (B,)."""
    chosen = pi_chosen - ref_chosen
    rejected = pi_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return DPOTerms(losses, beta * chosen.detach(), beta * rejected.detach())


def rpo_losses(terms: DPOTerms, chosen_nll: torch.Tensor, *, nll_coef: float) -> torch.Tensor:
    """Per pair (B,): the DPO loss plus nll_coef x the chosen response's mean NLL per token (B,)
    (RPO, Pang et al. 2024, arXiv:2404.19733, eq. 1). nll_coef 0 is plain DPO."""
    return terms.losses + nll_coef * chosen_nll if nll_coef else terms.losses


def _stack(chosen: ChatBatch, rejected: ChatBatch, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen then rejected rows in one (2B, L) batch, for a single forward pass."""
    length = max(chosen.input_ids.shape[1], rejected.input_ids.shape[1])

    def widen(t: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(t, (0, length - t.shape[1]), value=value)

    ids = torch.cat([widen(chosen.input_ids, pad_id), widen(rejected.input_ids, pad_id)])
    labels = torch.cat([widen(chosen.labels, IGNORE), widen(rejected.labels, IGNORE)])
    return ids, labels


def policy_logps(
    model: nn.Module, batch: PreferenceBatch, *, pad_id: int, average: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (B,), rejected (B,)) log-probs of each sequence's trained tokens, their mean (dpo_norm)
    or sum (dpo), from one forward pass over both."""
    ids, labels = _stack(batch.chosen, batch.rejected, pad_id)
    logp, mask = token_logps(model(ids), ids, labels)
    total = logp.sum(-1)
    both = total / mask.sum(-1).clamp(min=1) if average else total
    size = batch.chosen.input_ids.shape[0]
    return both[:size], both[size:]


class DPOObjective(BaseObjective):
    """DPO on preference pairs; batches are `PreferenceBatch`, references come from `prepare`."""

    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.dpo is None:
            raise ConfigurationError("a dpo job needs its `dpo` settings")
        self.cfg, self.dpo = cfg, cfg.dpo
        self.average = cfg.dpo.loss == "dpo_norm"
        self.device = torch.device("cpu")
        self.reference: torch.Tensor | None = None
        """(N, 2) float64: reference log-probs of (chosen, rejected) of every pair."""

    # -- data -----------------------------------------------------------------------------------
    def build(self, cfg: TrainConfig, info: DistInfo) -> tuple[StepPlan, Any]:
        self.device = info.device
        data = self.dpo.data
        tokenizer = load_chat_tokenizer(data.tokenizer)
        check_vocab(cfg, data, tokenizer)
        self.dataset = PreferenceDataset(data.paths, tokenizer, max_length=data.max_length)
        if info.rank == 0:
            print(f"dpo data: {len(self.dataset)} pairs, {self.dataset.dropped} dropped (no trained token)")
        plan = chat_plan(
            cfg,
            len(self.dataset),
            epochs=self.dpo.epochs,
            max_length=data.max_length,
            world_size=info.world_size,
        )
        self.micro_batch_size = plan.micro_batch_size
        return plan, chat_batches(cfg, self.dataset, plan, info)

    # -- reference log-probs --------------------------------------------------------------------
    def reference_uri(self) -> str:
        parent = self.cfg.init_from
        identity: dict[str, Any] = {"uri": parent}
        if parent is not None:
            try:
                identity = {"manifest": manifest_sha256(parent)}  # the same weights wherever they sit
            except (CheckpointError, FileNotFoundError, ValueError):
                identity = {"uri": parent}  # a Hugging Face folder: named by its location
        key = hash_json(
            {
                "parent": identity,
                "data": self.dataset.fingerprint,
                "max_length": self.dpo.data.max_length,
                "loss": self.dpo.loss,
            }
        )
        return f"{self.cfg.save_dir.rstrip('/')}/{REFERENCE_DIR}/{key}.npy"

    def prepare(self, model: nn.Module, info: DistInfo) -> None:
        """Load the cached reference log-probs, or compute them with `model` (the parent) and store them."""
        uri = self.reference_uri()
        fs, path = filesystem(uri)
        found = [fs.exists(path)] if info.rank == 0 else [None]
        dist.broadcast_object_list(found, src=0)  # one decision for all ranks
        if found[0]:
            table = np.load(io.BytesIO(fs.cat_file(path)))
            if info.rank == 0:
                print(f"dpo: reusing reference log-probs {uri}")
        else:
            table = self._compute_reference(model, info)
            if info.rank == 0:
                buffer = io.BytesIO()
                np.save(buffer, table)
                write_atomic(fs, path, buffer.getvalue())  # readers never see half a table
                print(f"dpo: reference log-probs of {len(table)} pairs written to {uri}")
            dist.barrier()
        if table.shape != (len(self.dataset), 2):
            raise ConfigurationError(
                f"{uri}: holds {table.shape}, expected ({len(self.dataset)}, 2); delete it to recompute"
            )
        self.reference = torch.from_numpy(table)

    @torch.no_grad()
    def _compute_reference(self, model: nn.Module, info: DistInfo) -> np.ndarray:
        """Every rank scores pairs rank, rank + W, ... (padded so all ranks run the same number of
        forward passes, which FSDP2 needs), then the shares are gathered on every rank."""
        n, world = len(self.dataset), info.world_size
        per_rank = math.ceil(n / world)
        mine = [min(info.rank + k * world, n - 1) for k in range(per_rank)]
        scores: list[torch.Tensor] = []
        for lo in range(0, per_rank, self.micro_batch_size):
            batch = self.dataset.pair_batch(mine[lo : lo + self.micro_batch_size])
            chosen, rejected = policy_logps(
                model, self._to(batch), pad_id=self.dataset.pad_id, average=self.average
            )
            scores.append(torch.stack([chosen, rejected], dim=-1).double())
        local = torch.cat(scores)  # (per_rank, 2)
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local)
        table = np.zeros((n, 2), dtype=np.float64)
        for rank, share in enumerate(gathered):
            for k, row in enumerate(share.cpu().numpy()):
                i = rank + k * world
                if i < n:
                    table[i] = row
        return table

    def _to(self, batch: PreferenceBatch) -> PreferenceBatch:
        return PreferenceBatch(batch.chosen.to(self.device), batch.rejected.to(self.device))

    # -- the loss -------------------------------------------------------------------------------
    def denominator(self, micro_batches: list[PreferenceBatch]) -> float:
        return float(sum(b.index.shape[0] for b in micro_batches))  # pairs

    def loss(self, model: nn.Module, micro_batch: PreferenceBatch) -> LossOutput:
        assert self.reference is not None, "prepare() computes the reference log-probs first"
        batch = self._to(micro_batch)
        pi_w, pi_l = policy_logps(model, batch, pad_id=self.dataset.pad_id, average=self.average)
        ref = self.reference[micro_batch.index].to(self.device, dtype=pi_w.dtype)  # (B, 2)
        terms = dpo_terms(pi_w, pi_l, ref[:, 0], ref[:, 1], beta=self.dpo.beta)
        chosen, rejected = terms.chosen_rewards, terms.rejected_rewards
        if self.average:
            chosen_nll = -pi_w
        else:  # pi_w is a sum: the NLL term is per token whichever DPO loss is used
            chosen_nll = -pi_w / (batch.chosen.labels[:, 1:] != IGNORE).sum(-1).clamp(min=1)
        losses = rpo_losses(terms, chosen_nll, nll_coef=self.dpo.nll_coef)
        tokens = batch.chosen.lengths.sum() + batch.rejected.lengths.sum()
        sums = {
            "loss": losses.detach().sum(),
            "nll/chosen": chosen_nll.detach().sum(),
            "rewards/chosen": chosen.sum(),
            "rewards/rejected": rejected.sum(),
            "rewards/margin": (chosen - rejected).sum(),
            "rewards/accuracy": (chosen > rejected).float().sum(),
            "logps/chosen": pi_w.detach().sum(),
            "logps/rejected": pi_l.detach().sum(),
            "tokens": tokens.float(),
        }
        return LossOutput(losses.sum(), sums)

    def metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        keys = (
            "loss",
            "nll/chosen",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margin",
            "rewards/accuracy",
        )
        out = {k: sums[k] / denominator for k in (*keys, "logps/chosen", "logps/rejected")}
        return out
