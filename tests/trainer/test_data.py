"""The data pipeline: instances, mixtures, the seeded global order, ranks, resume, fsspec reading."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from olmo_trainer.config import DataConfig
from olmo_trainer.data import DistributedBatches, TokenDataset, build_dataset, mixture_counts
from olmo_trainer.data.arrays import DataNotFoundError, TokenFileCutShort, write_tokens
from olmo_trainer.errors import ConfigurationError


def data_config(
    sources: list[dict], *, seq: int = 16, ngram: bool = True, dtype: str = "uint16"
) -> DataConfig:
    return DataConfig.model_validate(
        {
            "sources": sources,
            "sequenceLength": seq,
            "dtype": dtype,
            # 16-token test instances cannot hold 32 repeats; 8 keeps the filter's logic under test.
            "ngramFilter": {"enabled": ngram, "maxRepetitions": 8},
        }
    )


def token_file(path: Path, n: int, *, start: int = 0, dtype: str = "uint16") -> str:
    # Distinct, non-repeating values so every instance is recognisable by its first token.
    write_tokens(str(path), (np.arange(n) + start) % np.iinfo(dtype).max, dtype)
    return str(path)


def batches(ds: TokenDataset, work: Path, **kw: int) -> DistributedBatches:
    args = {"global_batch_size": 8, "micro_batch_size": 2, "rank": 0, "world_size": 1, "seed": 11} | kw
    return DistributedBatches(ds, work_dir=str(work), **args)


def take(it: DistributedBatches, steps: int) -> list[list[torch.Tensor]]:
    iterator = iter(it)
    return [next(iterator) for _ in range(steps)]


def test_files_are_cut_into_windows_and_the_remainder_is_dropped(tmp_path: Path) -> None:
    a = token_file(tmp_path / "a.npy", 50)  # 3 windows of 16, 2 tokens dropped
    b = token_file(tmp_path / "b.npy", 40, start=1000, dtype="uint16")  # 2 windows, 8 dropped
    ds = build_dataset(data_config([{"name": "x", "paths": [a, b]}]), seed=0, work_dir=str(tmp_path / "w"))
    assert len(ds) == 5 and ds.num_tokens == 80
    rows = sorted(ds[i].tolist() for i in range(len(ds)))
    expected = sorted(
        [list(range(k * 16, k * 16 + 16)) for k in range(3)]
        + [list(range(1000 + k * 16, 1016 + k * 16)) for k in range(2)]
    )
    assert rows == expected
    assert ds[0].dtype == np.int64


def test_globs_and_uint32_arrays(tmp_path: Path) -> None:
    for k in range(3):
        token_file(tmp_path / f"part-{k}.npy", 32, start=100_000 * k, dtype="uint32")
    cfg = data_config([{"name": "big", "paths": [str(tmp_path / "part-*.npy")]}], dtype="uint32")
    ds = build_dataset(cfg, seed=0, work_dir=str(tmp_path / "w"))
    assert len(ds) == 6
    assert max(int(ds[i].max()) for i in range(6)) > 2**16


def test_reading_through_an_fsspec_memory_url(tmp_path: Path) -> None:
    tokens = (np.arange(64) * 7 % 251).astype(np.uint16)
    fs = fsspec.filesystem("memory")
    fs.pipe("/corpus/shard-0.npy", tokens.tobytes())
    cfg = data_config([{"name": "remote", "paths": ["memory://corpus/*.npy"]}], ngram=False)
    ds = build_dataset(cfg, seed=0, work_dir=str(tmp_path))
    assert len(ds) == 4
    got = np.stack([ds[i] for i in range(4)])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, tokens.reshape(4, 16).tolist()))
    assert len(os.listdir(tmp_path / "cache")) == 1  # downloaded once into the cache


def test_a_wrong_dtype_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "odd.npy"
    path.write_bytes(b"\x00" * 6)  # 6 bytes: uint16 yes, uint32 no
    with pytest.raises(TokenFileCutShort, match="whole number of uint32"):  # a StorageError: retried
        build_dataset(
            data_config([{"name": "o", "paths": [str(path)]}], dtype="uint32"), seed=0, work_dir=str(tmp_path)
        )
    with pytest.raises(DataNotFoundError, match="no token files"):  # a DataError: recorded InvalidConfig
        build_dataset(
            data_config([{"name": "o", "paths": [str(tmp_path / "none-*.npy")]}]),
            seed=0,
            work_dir=str(tmp_path),
        )


@pytest.mark.parametrize(
    ("natural", "weights"),
    [([100, 100], [1, 1]), ([100, 300], [3, 1]), ([10, 990], [0.5, 0.5]), ([7, 11, 13], [0.2, 0.3, 0.5])],
)
def test_mixture_counts_hit_the_weights_and_sum_to_the_total(
    natural: list[int], weights: list[float]
) -> None:
    counts = mixture_counts(natural, weights)
    total = sum(natural)
    assert sum(counts) == total
    for count, weight in zip(counts, weights, strict=True):
        assert abs(count - weight / sum(weights) * total) < 1


def test_mixture_ratios_in_the_batches_follow_the_weights(tmp_path: Path) -> None:
    a = token_file(tmp_path / "a.npy", 16 * 400)
    b = token_file(tmp_path / "b.npy", 16 * 100, start=30_000)  # upsampled: weight 0.5 of 500 > 100
    cfg = data_config([{"name": "a", "paths": [a], "weight": 1}, {"name": "b", "paths": [b], "weight": 1}])
    ds = build_dataset(cfg, seed=3, work_dir=str(tmp_path / "w"))
    assert ds.counts == [250, 250]
    it = batches(ds, tmp_path / "w", global_batch_size=20, micro_batch_size=20)
    firsts = torch.cat([mb[:, 0] for step in take(it, 15) for mb in step])  # 300 instances
    share_b = float((firsts >= 30_000).float().mean())
    assert abs(share_b - 0.5) < 0.1
    # Every one of b's 100 instances appears: 2 full passes plus a 50-instance subset.
    b_instances = {tuple(ds[i][:2].tolist()) for i in range(len(ds)) if ds.source_of(i) == "b"}
    assert len(b_instances) == 100


def test_same_seed_same_order_different_seed_different_order(tmp_path: Path) -> None:
    a = token_file(tmp_path / "a.npy", 16 * 64)
    cfg = data_config([{"name": "a", "paths": [a]}])
    ds = build_dataset(cfg, seed=1, work_dir=str(tmp_path / "w"))
    first = torch.cat([torch.cat(s) for s in take(batches(ds, tmp_path / "w1", seed=5), 4)])
    again = torch.cat([torch.cat(s) for s in take(batches(ds, tmp_path / "w2", seed=5), 4)])
    other = torch.cat([torch.cat(s) for s in take(batches(ds, tmp_path / "w3", seed=6), 4)])
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_global_indices_are_pcg64_of_seed_plus_epoch_and_saved_once(tmp_path: Path) -> None:
    ds = build_dataset(
        data_config([{"name": "a", "paths": [token_file(tmp_path / "a.npy", 16 * 40)]}]),
        seed=0,
        work_dir=str(tmp_path),
    )
    it = batches(ds, tmp_path / "w", global_batch_size=8, micro_batch_size=8, seed=100)
    steps = take(it, 6)  # 5 steps per epoch: the sixth is epoch 1's first
    saved = sorted((tmp_path / "w" / "global_indices").iterdir())
    assert [p.name.endswith(f"seed100-epoch{e}.npy") for e, p in enumerate(saved)] == [True, True]
    for epoch, path in enumerate(saved):
        expected = np.random.Generator(np.random.PCG64(100 + epoch)).permutation(40)
        np.testing.assert_array_equal(np.load(path), expected)
    first_ids = np.load(saved[0])[:8]
    np.testing.assert_array_equal(steps[0][0].numpy(), np.stack([ds[i] for i in first_ids]))
    np.testing.assert_array_equal(
        steps[5][0][:, 0].numpy(), np.stack([ds[i] for i in np.load(saved[1])[:8]])[:, 0]
    )


@pytest.mark.parametrize("ngram", [False, True])
def test_resume_at_step_k_gives_the_uninterrupted_batches(tmp_path: Path, ngram: bool) -> None:
    data = np.random.default_rng(0).integers(0, 250, 16 * 45).astype(np.uint16)
    data[16 * 3 : 16 * 5] = 9  # two repetitive instances the filter drops
    write_tokens(str(tmp_path / "a.npy"), data, "uint16")
    ds = build_dataset(
        data_config([{"name": "a", "paths": [str(tmp_path / "a.npy")]}], ngram=ngram),
        seed=0,
        work_dir=str(tmp_path),
    )
    work = tmp_path / "w"
    straight = take(batches(ds, work), 14)  # crosses epoch boundaries (5 steps per epoch)
    for k in (1, 5, 9):
        by_step = take(batches(ds, work, start_step=k), 14 - k)
        it = batches(ds, work)
        done = iter(it)
        for _ in range(k):
            next(done)
        fresh = batches(ds, work)
        fresh.load_state_dict(it.state_dict())
        by_state = take(fresh, 14 - k)
        for got in (by_step, by_state):
            for a, b in zip(straight[k:], got, strict=True):
                assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    if ngram:
        seen = torch.cat([torch.cat(s) for s in straight])
        assert not (seen == 9).all(dim=1).any()


def test_ranks_partition_each_global_batch(tmp_path: Path) -> None:
    ds = build_dataset(
        data_config([{"name": "a", "paths": [token_file(tmp_path / "a.npy", 16 * 100)]}]),
        seed=0,
        work_dir=str(tmp_path),
    )
    whole = take(batches(ds, tmp_path / "w", global_batch_size=24, micro_batch_size=24), 5)
    per_rank = [
        take(batches(ds, tmp_path / "w", global_batch_size=24, micro_batch_size=3, rank=r, world_size=4), 5)
        for r in range(4)
    ]
    for step in range(5):
        global_rows = {tuple(r) for r in whole[step][0].tolist()}
        rank_rows = []
        for rank in range(4):
            micro = per_rank[rank][step]
            assert [m.shape for m in micro] == [(3, 16), (3, 16)] and micro[0].dtype == torch.int64
            rank_rows += [tuple(r) for m in micro for r in m.tolist()]
        assert len(rank_rows) == len(set(rank_rows)) == 24
        assert set(rank_rows) == global_rows
    # Strided: rank r holds positions r, r+4, ... of the global batch.
    np.testing.assert_array_equal(torch.cat(per_rank[1][0]).numpy(), whole[0][0][1::4].numpy())


def test_batch_geometry_is_checked(tmp_path: Path) -> None:
    ds = build_dataset(
        data_config([{"name": "a", "paths": [token_file(tmp_path / "a.npy", 16 * 10)]}]),
        seed=0,
        work_dir=str(tmp_path),
    )
    with pytest.raises(ConfigurationError, match="not divisible by microBatchSize x world size"):
        batches(ds, tmp_path, global_batch_size=6, micro_batch_size=4)
    with pytest.raises(ValueError, match="exceeds"):
        batches(ds, tmp_path, global_batch_size=16, micro_batch_size=2)
    other = batches(ds, tmp_path, seed=12)
    with pytest.raises(ValueError, match="another dataset or seed"):
        batches(ds, tmp_path).load_state_dict(other.state_dict())


def test_synthetic_sources_are_materialised_in_the_work_dir(tmp_path: Path) -> None:
    cfg = data_config(
        [
            {
                "name": "general",
                "synthetic": {"kind": "general", "numTokens": "20K", "seed": 1},
                "weight": 0.8,
            },
            {"name": "math", "synthetic": {"kind": "math", "numTokens": "5K", "seed": 1}, "weight": 0.2},
        ],
        seq=64,
        dtype="uint32",  # synthetic corpora are always uint16, whatever the paths' dtype
    )
    ds = build_dataset(cfg, seed=0, work_dir=str(tmp_path))
    assert sorted(os.listdir(tmp_path / "synthetic")) == [
        "synth-general-20000-s1.npy",
        "synth-math-5000-s1.npy",
    ]
    assert ds.counts == mixture_counts([312, 78], [0.8, 0.2])
    assert max(int(ds[i].max()) for i in range(len(ds))) <= 256


def test_a_saved_position_is_valid_in_another_work_dir(tmp_path: Path) -> None:
    cfg = data_config([{"name": "g", "synthetic": {"kind": "general", "numTokens": "4K"}}], seq=32)
    first = build_dataset(cfg, seed=0, work_dir=str(tmp_path / "node-a"))
    second = build_dataset(cfg, seed=0, work_dir=str(tmp_path / "node-b"))
    assert first.fingerprint == second.fingerprint
    it = batches(first, tmp_path / "node-a")
    expected = take(it, 3)[2]
    resumed = batches(second, tmp_path / "node-b")
    saved = batches(first, tmp_path / "node-a", start_step=2).state_dict()
    resumed.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(next(iter(resumed)), expected, strict=True))
