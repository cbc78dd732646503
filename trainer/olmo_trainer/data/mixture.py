"""Fixed-length instances from weighted token sources: `build_dataset(DataConfig) -> TokenDataset`.

Instances. Each token file is cut into contiguous windows of `sequence_length` tokens, the remainder
dropped (documents stay EOS-separated inside a window; no document masking). A source's instances are
its files' windows in file order.

Mixture. Let N_s be source s's natural instance count, M = sum N_s and p_s its normalised weight. The
mixture has M instances, of which c_s = p_s * M come from source s (floored, then the largest
remainders get the leftover units, so the counts sum to M exactly). A source with c_s <= N_s
contributes a subset of c_s of its instances drawn without replacement; one with c_s > N_s contributes
all of them floor(c_s / N_s) times plus a subset for the rest (upsampling, as the Dolmino mixes repeat
the math block). The subsets come from `PCG64([seed, s])`: the same config and seed give the same
mixture. The mixture is laid out source by source; the global shuffle happens in `order.py`.

    dataset = build_dataset(cfg.data, seed=6198, work_dir="/tmp/work")
    dataset[0]      # np.int64 (sequence_length,)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from olmo_trainer.config import DataConfig, DataSource, NgramFilter
from olmo_trainer.data.arrays import expand_paths, open_tokens
from olmo_trainer.data.ngram import repeated_ngram_mask
from olmo_trainer.data.synth import SYNTH_DTYPE, write_synthetic
from olmo_trainer.errors import DataError


@dataclass
class SourceWindows:
    """One source: its files (memmaps) and the windows of `sequence_length` they are cut into."""

    name: str
    paths: list[str]
    arrays: list[np.ndarray]
    sequence_length: int
    starts: np.ndarray = field(init=False)
    """Cumulative window counts: file k holds instances starts[k] .. starts[k+1]-1."""

    def __post_init__(self) -> None:
        windows = [a.shape[0] // self.sequence_length for a in self.arrays]
        self.starts = np.concatenate([[0], np.cumsum(windows, dtype=np.int64)])

    @property
    def num_instances(self) -> int:
        return int(self.starts[-1])

    def read(self, j: int) -> np.ndarray:
        """Instance j of this source in the file's dtype, (sequence_length,)."""
        k = int(np.searchsorted(self.starts, j, side="right")) - 1
        offset = (j - int(self.starts[k])) * self.sequence_length
        return np.asarray(self.arrays[k][offset : offset + self.sequence_length])


def mixture_counts(natural: list[int], weights: list[float]) -> list[int]:
    """Instances per source: weights normalised over the total natural size (largest remainder)."""
    total = sum(natural)
    share = np.asarray(weights, dtype=np.float64) / float(sum(weights))
    exact = share * total
    counts = np.floor(exact).astype(np.int64)
    leftover = total - int(counts.sum())
    # Ties are broken by source order, so the counts are a pure function of the inputs.
    for s in np.argsort(-(exact - counts), kind="stable")[:leftover]:
        counts[s] += 1
    return [int(c) for c in counts]


class TokenDataset:
    """A mixture of fixed-length instances; `dataset[i]` is np.int64 (sequence_length,)."""

    def __init__(
        self,
        sources: list[SourceWindows],
        weights: list[float],
        *,
        sequence_length: int,
        seed: int,
        ngram_filter: NgramFilter | None = None,
    ) -> None:
        self.sources = sources
        self.sequence_length = sequence_length
        self.seed = seed
        self.ngram_filter = ngram_filter if ngram_filter is not None and ngram_filter.enabled else None
        for source in sources:
            if source.num_instances == 0:
                raise DataError(
                    f"data source {source.name!r} has no complete instance of {sequence_length} tokens"
                )
        self.counts = mixture_counts([s.num_instances for s in sources], weights)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])
        self._passes: list[int] = []
        self._extra: list[np.ndarray] = []
        for s, (source, count) in enumerate(zip(sources, self.counts, strict=True)):
            passes, rest = divmod(count, source.num_instances)
            rng = np.random.Generator(np.random.PCG64([seed, s]))
            extra = (
                np.sort(rng.choice(source.num_instances, size=rest, replace=False)) if rest else np.zeros(0)
            )
            self._passes.append(passes)
            self._extra.append(extra.astype(np.int64))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_tokens(self) -> int:
        return len(self) * self.sequence_length

    def locate(self, i: int) -> tuple[int, int]:
        """Mixture index -> (source index, instance index within that source)."""
        if not 0 <= i < len(self):
            raise IndexError(f"instance {i} out of range for a dataset of {len(self)}")
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        local = i - int(self.offsets[s])
        natural = self.sources[s].num_instances
        full = self._passes[s] * natural
        return s, (local % natural if local < full else int(self._extra[s][local - full]))

    def read_raw(self, i: int) -> np.ndarray:
        """Instance i in its file's dtype (uint16/uint32)."""
        s, j = self.locate(i)
        return self.sources[s].read(j)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read_raw(int(i)).astype(np.int64)

    def read_many(self, indices: np.ndarray) -> np.ndarray:
        """Instances (n, sequence_length) as uint32 (every source dtype fits; half the bytes of int64)."""
        out = np.empty((len(indices), self.sequence_length), dtype=np.uint32)
        for row, i in enumerate(indices):
            out[row] = self.read_raw(int(i))
        return out

    def drop_mask(self, batch: np.ndarray) -> np.ndarray:
        """Bool (n,): rows of `batch` the repeated n-gram filter removes (none when it is disabled)."""
        if self.ngram_filter is None:
            return np.zeros(len(batch), dtype=bool)
        return repeated_ngram_mask(
            batch, max_period=self.ngram_filter.max_period, max_repetitions=self.ngram_filter.max_repetitions
        )

    @property
    def fingerprint(self) -> str:
        """Identity of the instances and their mixture: file names and sizes, counts, length, seed.

        File *names*, not full paths: the same data mounted elsewhere, or a synthetic corpus in another
        work dir, is the same dataset, so a saved data position stays valid across machines.
        """
        description = {
            "sources": [
                {
                    "name": s.name,
                    "files": [
                        [os.path.basename(p), int(a.shape[0])] for p, a in zip(s.paths, s.arrays, strict=True)
                    ],
                }
                for s in self.sources
            ],
            "counts": self.counts,
            "sequence_length": self.sequence_length,
            "seed": self.seed,
        }
        blob = json.dumps(description, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def source_of(self, i: int) -> str:
        return self.sources[self.locate(i)[0]].name


def open_source(source: DataSource, *, sequence_length: int, dtype: str, work_dir: str) -> SourceWindows:
    """Materialise (synthetic) or locate (paths) one source's files and memory-map them."""
    if source.synthetic is not None:
        syn = source.synthetic
        path = write_synthetic(os.path.join(work_dir, "synthetic"), syn.kind, syn.num_tokens, syn.seed)
        paths, dtype = [path], SYNTH_DTYPE
    else:
        paths = expand_paths(source.paths)
    cache = os.path.join(work_dir, "cache")
    arrays = [open_tokens(p, dtype, cache_dir=cache) for p in paths]
    return SourceWindows(source.name, paths, arrays, sequence_length)


def build_dataset(cfg: DataConfig, *, seed: int, work_dir: str) -> TokenDataset:
    """The mixture of `cfg.sources` cut into `cfg.sequence_length` instances (see the module docstring)."""
    os.makedirs(work_dir, exist_ok=True)
    sources = [
        open_source(s, sequence_length=cfg.sequence_length, dtype=cfg.dtype, work_dir=work_dir)
        for s in cfg.sources
    ]
    return TokenDataset(
        sources,
        [s.weight for s in cfg.sources],
        sequence_length=cfg.sequence_length,
        seed=seed,
        ngram_filter=cfg.ngram_filter,
    )
