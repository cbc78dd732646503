"""The deterministic global order and this rank's batches: `DistributedBatches`.

Order. Epoch e visits the dataset in the order `PCG64(seed + e).permutation(len(dataset))`, the
global-indices array, computed once and saved in `work_dir/global_indices/` (then memory-mapped by
every rank and every restart). Epochs follow each other without end; the loop decides when to stop.

Steps. A global batch is the next `global_batch_size` instances of the order that pass the repeated
n-gram filter (a dropped instance is skipped, the next one takes its place). If an epoch runs out
before a global batch is full, that partial batch is dropped and the next epoch begins. Rank r takes
the global batch's instances r, r + W, r + 2W, ... (strided by data-parallel rank, W = world size) and
cuts them into consecutive micro-batches.

Any dataset with `__len__`, `fingerprint` and `ngram_filter` works: `read_many(ids)` gives fixed-length
token rows (yielded as LongTensor micro-batches), or `micro_batches(ids, micro_batch_size)` cuts this
rank's rows itself (chat data: padded, variable-length rows).

Position. The state is (step, epoch, cursor in that epoch's order): `state_dict()` after k steps,
loaded into a fresh instance, continues with exactly step k's batches, on any world size. `start_step`
re-derives the position from the beginning instead (cheap without the filter; with it, the skipped
instances up to that step have to be found again).

    batches = DistributedBatches(dataset, global_batch_size=8, micro_batch_size=2, rank=0, world_size=2,
                                 seed=6198, work_dir="/tmp/work")
    for micro_batches in batches:      # each: list of LongTensor (micro_batch_size, sequence_length)
        ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from olmo_trainer.config import batch_split_problem
from olmo_trainer.data.mixture import TokenDataset
from olmo_trainer.errors import ConfigurationError, DataError
from olmo_trainer.storage import replacing


def global_indices(num_instances: int, *, seed: int, epoch: int, path: str) -> np.ndarray:
    """The epoch's permutation of 0..num_instances-1, loaded from `path` or computed and saved there."""
    if os.path.exists(path):
        order = np.load(path, mmap_mode="r")
        if order.shape == (num_instances,):
            return order
    dtype = np.uint32 if num_instances < 2**32 else np.uint64
    order = np.random.Generator(np.random.PCG64(seed + epoch)).permutation(num_instances).astype(dtype)
    # Written beside its final name and renamed: ranks sharing a work dir never read half a file.
    with replacing(path) as partial, open(partial, "wb") as f:
        np.save(f, order)
    return order


class TokenIdOutOfRange(DataError):
    """A token id is not below the model's vocabulary size."""


class DistributedBatches:
    """Iterates optimizer steps; each yields this rank's list of micro-batches (LongTensor (mb, T))."""

    def __init__(
        self,
        dataset: TokenDataset | Any,
        *,
        global_batch_size: int,
        micro_batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        start_step: int = 0,
        work_dir: str,
        vocab_size: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        if (problem := batch_split_problem(global_batch_size, micro_batch_size, world_size)) is not None:
            raise ConfigurationError(problem)
        if global_batch_size > len(dataset):
            raise DataError(
                f"global batch {global_batch_size} exceeds the dataset's {len(dataset)} instances"
            )
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.work_dir = work_dir
        self.vocab_size = vocab_size
        """Ids must be below it (the model's vocabulary); None: unchecked."""
        self.step = self.epoch = self.cursor = 0
        self._order: tuple[int, np.ndarray] | None = None
        self.seek(start_step)

    @property
    def steps_per_epoch(self) -> int:
        """Global batches in one epoch (an upper bound when the n-gram filter drops instances)."""
        return len(self.dataset) // self.global_batch_size

    def order(self, epoch: int) -> np.ndarray:
        """The global-indices array of an epoch (kept in memory for the current epoch)."""
        if self._order is None or self._order[0] != epoch:
            name = f"{self.dataset.fingerprint}-seed{self.seed}-epoch{epoch}.npy"
            path = os.path.join(self.work_dir, "global_indices", name)
            self._order = (epoch, global_indices(len(self.dataset), seed=self.seed, epoch=epoch, path=path))
        return self._order[1]

    # Position --------------------------------------------------------------------------------------
    def _next_global_batch(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Advance one step: (dataset indices of the global batch, their tokens when the filter read them)."""
        if self.dataset.ngram_filter is None:
            if self.cursor + self.global_batch_size > len(self.dataset):
                self.epoch, self.cursor = self.epoch + 1, 0
            ids = np.asarray(self.order(self.epoch)[self.cursor : self.cursor + self.global_batch_size])
            self.cursor += self.global_batch_size
            self.step += 1
            return ids.astype(np.int64), None
        kept_ids: list[np.ndarray] = []
        kept_tokens: list[np.ndarray] = []
        need = self.global_batch_size
        while need:
            order = self.order(self.epoch)
            chunk = np.asarray(order[self.cursor : self.cursor + need]).astype(np.int64)
            if len(chunk) < need:  # the epoch cannot fill this batch: drop the partial batch
                self.epoch, self.cursor, need = self.epoch + 1, 0, self.global_batch_size
                kept_ids, kept_tokens = [], []
                continue
            tokens = self.dataset.read_many(chunk)
            keep = ~self.dataset.drop_mask(tokens)
            kept_ids.append(chunk[keep])
            kept_tokens.append(tokens[keep])
            self.cursor += len(chunk)
            need -= int(keep.sum())
        self.step += 1
        return np.concatenate(kept_ids), np.concatenate(kept_tokens)

    def seek(self, step: int) -> None:
        """Move to the start of `step` (counted from the first step of epoch 0)."""
        if step < 0:
            raise ValueError(f"step {step} is negative")
        self.step = self.epoch = self.cursor = 0
        if self.dataset.ngram_filter is None:
            self.epoch, within = divmod(step, self.steps_per_epoch)
            self.step, self.cursor = step, within * self.global_batch_size
            return
        while self.step < step:
            self._next_global_batch()

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "seed": self.seed,
            "dataset": self.dataset.fingerprint,
            "num_instances": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (world size and batch size may differ from the saver's)."""
        if state.get("seed") != self.seed or state.get("dataset") != self.dataset.fingerprint:
            raise DataError(
                "the saved data position belongs to another dataset or seed "
                f"(saved {state.get('dataset')}/seed {state.get('seed')}, now "
                f"{self.dataset.fingerprint}/seed {self.seed})"
            )
        self.step, self.epoch, self.cursor = int(state["step"]), int(state["epoch"]), int(state["cursor"])

    # Iteration -------------------------------------------------------------------------------------
    def rank_indices(self, global_ids: np.ndarray) -> np.ndarray:
        """This rank's share of a global batch: every world_size-th instance from position rank."""
        return global_ids[self.rank :: self.world_size]

    def _check_ids(self, tokens: np.ndarray, instances: np.ndarray) -> None:
        """Refuse ids the model has no embedding for: a clear error instead of an IndexError in it."""
        if self.vocab_size is None or tokens.size == 0:
            return
        row_max = tokens.max(axis=1)  # one pass over (B, T) on the host, before any device work
        if int(row_max.max()) < self.vocab_size:
            return
        row = int(np.argmax(row_max >= self.vocab_size))
        top, instance = int(row_max[row]), int(instances[row])
        raise TokenIdOutOfRange(
            f"token id {top} in instance {instance} (source {self.dataset.source_of(instance)!r}) is "
            f"outside the model's vocabulary of {self.vocab_size} ids: the data was tokenized with "
            "another vocabulary. Prepare it with the model's tokenizer, or set the model's vocabSize "
            f"(and embeddingSize) above {top}."
        )

    def __iter__(self) -> Iterator[list[Any]]:
        # A dataset of variable-length rows (data/chat.py) cuts its own micro-batches (padding them).
        collate = getattr(self.dataset, "micro_batches", None)
        while True:
            global_ids, tokens = self._next_global_batch()
            if collate is not None:
                yield collate(self.rank_indices(global_ids), self.micro_batch_size)
                continue
            mine = tokens[self.rank :: self.world_size] if tokens is not None else None
            if mine is None:
                mine = self.dataset.read_many(self.rank_indices(global_ids))
            self._check_ids(mine, self.rank_indices(global_ids))
            batch = torch.from_numpy(mine.astype(np.int64))  # (global / world, T)
            yield list(batch.split(self.micro_batch_size))
