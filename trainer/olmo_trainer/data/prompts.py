"""RLVR prompts: rows `{"messages", "ground_truth", "dataset"}` from jsonl(.gz) at any fsspec URL.

This is the format of `allenai/RLVR-GSM-MATH-IF-Mixed-Constraints` (and of `olmorun data synth`'s RL
prompts). Each row's conversation is rendered with the OLMo 2 chat template and ends with the
generation prompt (data/chat.py owns the template); its `dataset` picks the verifier (verifiers.py).
Every row is checked when the data is loaded: an unknown verifier or a malformed IFEval ground truth
stops the job there with the file and row named, never as a silent zero reward later. Prompts longer
than `maxLength` tokens are dropped and counted.

The order is data/order.py's: a seeded permutation per epoch, sliced by rank, resumable.

    batches, tokenizer = build_prompt_batches(cfg, info)   # each step: [list of this rank's Prompt]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from olmo_trainer.config import TrainConfig, hash_json
from olmo_trainer.data.chat import check_vocabulary, encode_prompt, load_chat_tokenizer, read_rows
from olmo_trainer.data.order import DistributedBatches
from olmo_trainer.distributed import DistInfo
from olmo_trainer.errors import DataError
from olmo_trainer.storage import work_dir
from olmo_trainer.verifiers import check_row


@dataclass
class Prompt:
    """One RLVR row, tokenised: the chat prompt ending with the generation prompt, and its answer key."""

    ids: list[int]
    ground_truth: str
    dataset: str


class PromptDataset:
    """Tokenised RLVR prompts; a dataset for data/order.py's DistributedBatches."""

    ngram_filter = None  # prompts are not filtered for repeated n-grams (that guards pretraining data)

    def __init__(self, prompts: list[Prompt], *, fingerprint: str, dropped: int = 0) -> None:
        if not prompts:
            raise DataError("no RLVR prompt fits maxLength: nothing to train on")
        self.prompts, self.fingerprint, self.dropped = prompts, fingerprint, dropped
        datasets = sorted({p.dataset for p in prompts})
        self.description = {
            "kind": "rlvr-prompts",
            "prompts": len(prompts),
            "dropped": dropped,
            "verifiers": datasets,
        }
        """What the run record (environment.py) says about this data."""

    def __len__(self) -> int:
        return len(self.prompts)

    def micro_batches(self, ids: Any, micro_batch_size: int) -> list[list[Prompt]]:
        """This rank's prompts of a step, as ONE list: the objective cuts the rollout into micro-batches."""
        return [[self.prompts[int(i)] for i in ids]]


def load_prompts(
    rows: Iterable[tuple[str, int, dict[str, Any]]],
    encode: Callable[[list[dict[str, str]]], Any],
    *,
    max_length: int,
) -> PromptDataset:
    """Check and tokenise (file, line, row) triples; `encode(messages)` gives the chat prompt's ids
    with the generation prompt. Raises DataError naming the file and line."""
    prompts, dropped = [], 0
    for path, number, row in rows:
        where = f"{path}:{number}"
        check_row(row, where)  # verifiers.RewardError, a DataError: unknown verifier, malformed ground truth
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: `messages` must be a non-empty list of {{role, content}}")
        try:
            ids = [int(i) for i in encode(messages)]
        except ValueError as error:
            raise DataError(f"{where}: {error}") from None
        if len(ids) > max_length:
            dropped += 1
            continue
        prompts.append(Prompt(ids=ids, ground_truth=row["ground_truth"], dataset=row["dataset"]))
    fingerprint = hash_json({"prompts": [(p.ids, p.ground_truth, p.dataset) for p in prompts]})
    return PromptDataset(prompts, fingerprint=f"rlvr-{fingerprint}", dropped=dropped)


def build_prompt_batches(cfg: TrainConfig, info: DistInfo) -> tuple[Any, Any]:
    """This rank's step source over the phase's RLVR prompts, and the chat tokenizer (which decodes
    the responses for the verifiers)."""
    assert cfg.rlvr is not None and cfg.batch is not None
    data = cfg.rlvr.data
    tokenizer = load_chat_tokenizer(data.tokenizer)
    check_vocabulary(tokenizer, cfg.model.vocab_size, source=data.tokenizer)
    dataset = load_prompts(
        read_rows(data.paths), lambda messages: encode_prompt(tokenizer, messages), max_length=data.max_length
    )
    if info.rank == 0 and dataset.dropped:
        print(f"rlvr: dropped {dataset.dropped} prompts longer than maxLength {data.max_length}", flush=True)
    batches = DistributedBatches(
        dataset,
        global_batch_size=cfg.batch.global_batch_size,
        micro_batch_size=cfg.batch.global_batch_size // info.world_size,
        rank=info.rank,
        world_size=info.world_size,
        seed=cfg.seed,
        work_dir=work_dir(cfg),
    )
    return batches, tokenizer
