"""Generation with a KV cache: equal to recomputing each sequence alone, left padding, stops, sampling,
and the same tokens from an FSDP2-sharded model on two gloo processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from olmo_trainer.config import BatchConfig, ModelConfig, ParallelConfig, TrainConfig
from olmo_trainer.distributed import init_distributed
from olmo_trainer.generate import (
    KVCache,
    Sampling,
    attention_bias,
    choose_tokens,
    generate,
    left_pad,
    sample_rows,
)
from olmo_trainer.model import Transformer
from tests.trainer.dist_util import free_port

# A larger init std than OLMo's 0.02 spreads the logits of a random model, so that greedy choices are
# not decided by float rounding (ties within 1e-5 would make a token comparison meaningless).
CONFIG = ModelConfig.preset("tiny", n_kv_heads=2, init_std=0.3)
PROMPTS = [[5, 17, 99], [3, 1, 4, 1, 5, 9, 2, 6, 5], [42], [7, 7, 8, 100, 255, 12]]
EOS, PAD, VOCAB = CONFIG.eos_token_id, CONFIG.pad_token_id, CONFIG.vocab_size


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(CONFIG).eval()
    model.init_weights(torch.Generator().manual_seed(seed))
    return model


@torch.no_grad()
def _greedy_alone(model: Transformer, prompt: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
    """The reference: one row, no padding, no cache: the plain forward over the whole sequence per token."""
    ids, rows = list(prompt), []
    for _ in range(steps):
        logits = model(torch.tensor([ids]))[0, -1]  # (V,)
        logits = logits.clone()
        logits[VOCAB:] = -torch.inf
        rows.append(logits)
        ids.append(int(logits.argmax()))
    return ids[len(prompt) :], torch.stack(rows)


def test_cached_greedy_equals_full_recompute_per_row_tokens_and_logits() -> None:
    model = _model()
    steps = 12
    rollout = generate(
        model,
        PROMPTS,
        Sampling(max_new_tokens=steps, temperature=0),
        eos_token_id=EOS,
        pad_token_id=PAD,
        vocab_size=VOCAB,
        return_logits=True,
    )
    assert rollout.logits is not None
    assert rollout.responses.shape == (len(PROMPTS), steps)
    for row, prompt in enumerate(PROMPTS):
        tokens, logits = _greedy_alone(model, prompt, steps)
        assert rollout.responses[row].tolist() == tokens, row
        torch.testing.assert_close(rollout.logits[row, :, :VOCAB], logits[:, :VOCAB], rtol=0, atol=1e-5)
    # The left padding is where the prompts say.
    assert rollout.prompt_mask.sum(dim=1).tolist() == [len(p) for p in PROMPTS]
    assert rollout.prompts[2].tolist() == [PAD] * 8 + [42]


def test_no_cache_path_recomputes_the_same_tokens() -> None:
    model = _model(1)
    greedy = Sampling(max_new_tokens=8, temperature=0)
    cached = generate(
        model, PROMPTS, greedy, eos_token_id=EOS, pad_token_id=PAD, vocab_size=VOCAB, return_logits=True
    )
    full = generate(
        model,
        PROMPTS,
        greedy,
        eos_token_id=EOS,
        pad_token_id=PAD,
        vocab_size=VOCAB,
        return_logits=True,
        use_cache=False,
    )
    assert torch.equal(cached.responses, full.responses)
    assert cached.logits is not None and full.logits is not None
    torch.testing.assert_close(cached.logits, full.logits, rtol=0, atol=1e-5)


def test_rows_stop_at_eos_then_pad_and_the_batch_stops_when_all_have() -> None:
    model = _model()
    free = generate(
        model,
        PROMPTS,
        Sampling(max_new_tokens=10, temperature=0),
        eos_token_id=EOS,
        pad_token_id=PAD,
        vocab_size=VOCAB,
    )
    # Declare row 1's fourth greedy token the EOS: row 1 must stop there, the others are unaffected
    # until they produce that token themselves.
    eos = int(free.responses[1, 3])
    stopped = generate(
        model,
        PROMPTS,
        Sampling(max_new_tokens=10, temperature=0),
        eos_token_id=eos,
        pad_token_id=PAD,
        vocab_size=VOCAB,
    )
    for row in range(len(PROMPTS)):
        ref = free.responses[row].tolist()
        cut = ref.index(eos) + 1 if eos in ref else len(ref)
        got = stopped.responses[row].tolist()
        assert got[:cut] == ref[:cut]
        assert got[cut:] == [PAD] * (len(got) - cut)
        assert stopped.response_mask[row].sum() == cut
        assert bool(stopped.stopped[row]) == (eos in ref)
    assert int(stopped.response_lengths()[1]) == 4
    # Every row stopping early ends the loop early.
    all_stop = generate(
        model,
        [[1, 2]] * 3,
        Sampling(max_new_tokens=10, temperature=0),
        eos_token_id=int(
            generate(
                model,
                [[1, 2]],
                Sampling(max_new_tokens=1, temperature=0),
                eos_token_id=EOS,
                pad_token_id=PAD,
                vocab_size=VOCAB,
            ).responses[0, 0]
        ),
        pad_token_id=PAD,
        vocab_size=VOCAB,
    )
    assert all_stop.responses.shape == (3, 1) and bool(all_stop.stopped.all())


def test_seeded_sampling_is_reproducible_and_never_picks_padding_ids() -> None:
    model = _model()
    sampling = Sampling(max_new_tokens=16, temperature=1.5)

    def run(seed: int) -> torch.Tensor:
        return generate(
            model,
            PROMPTS,
            sampling,
            eos_token_id=EOS,
            pad_token_id=PAD,
            vocab_size=VOCAB,
            generator=torch.Generator().manual_seed(seed),
        ).responses

    first, again, other = run(3), run(3), run(4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert int(first.max()) < VOCAB


def test_top_p_keeps_the_nucleus_only() -> None:
    # probabilities 0.5, 0.3, 0.2 (then nothing): top_p 0.6 keeps {0, 1}; 0.5 keeps {0} only.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]])).repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    picked = choose_tokens(logits, Sampling(max_new_tokens=1, top_p=0.6), vocab_size=4, generator=g)
    assert set(picked.tolist()) == {0, 1}
    picked = choose_tokens(logits, Sampling(max_new_tokens=1, top_p=0.5), vocab_size=4, generator=g)
    assert set(picked.tolist()) == {0}
    # Temperature 0 is argmax, and ids at or above vocab_size are excluded even when largest.
    biggest_outside = torch.tensor([[1.0, 3.0, 2.0, 9.0]])
    assert choose_tokens(
        biggest_outside, Sampling(max_new_tokens=1, temperature=0), vocab_size=3, generator=None
    ).tolist() == [1]


def test_inverse_cdf_sampling_follows_the_probabilities_and_skips_zero_mass_ids() -> None:
    # 20,000 draws of [0.5, 0.3, 0.2, 0]: each frequency within 0.015 (> 4 standard errors) of its
    # probability; unnormalised rows (x 3) draw the same ids from the same seed.
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).repeat(20_000, 1)
    picked = sample_rows(probs, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(picked, minlength=4).double() / picked.numel()
    assert torch.allclose(frequencies, torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64), atol=0.015)
    assert torch.equal(sample_rows(probs * 3, torch.Generator().manual_seed(0)), picked)
    # Zero-mass ids between and after the real ones are never drawn.
    holes = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]).repeat(5_000, 1)
    assert set(sample_rows(holes, torch.Generator().manual_seed(1)).tolist()) == {1, 3}


def test_cache_positions_and_mask_for_left_padding() -> None:
    ids, mask = left_pad([[1, 2, 3], [4]], pad_token_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    cache = KVCache(batch=2, n_layers=1, n_kv_heads=1, head_dim=2, capacity=5, device=torch.device("cpu"))
    cache.append(mask)
    assert cache.positions.tolist() == [[0, 1, 2], [0, 0, 0]]
    # Row 1: its pads see only themselves; its real token sees itself alone.
    assert cache.mask[1, 0].tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    assert cache.mask[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    cache.append(torch.tensor([[True], [True]]))
    assert cache.positions.tolist() == [[3], [1]]
    assert cache.mask[:, 0, 0].tolist() == [[True, True, True, True], [False, False, True, True]]
    with pytest.raises(ValueError, match="capacity"):
        cache.append(torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], pad_token_id=0)


# --- FSDP2 on CPU/gloo ------------------------------------------------------------------------


def _fsdp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    info = init_distributed()
    from olmo_trainer.build import build_model

    cfg = TrainConfig(
        run="r",
        phase="p",
        kind="pretrain",
        seed=0,
        model=CONFIG,
        save_dir=out,
        batch=BatchConfig(global_batch_size=2),
        parallel=ParallelConfig(strategy="fsdp", precision="fp32"),
    )
    model = build_model(cfg, info)
    # Each rank generates for its own slice; rank 1's prompts stop at different steps than rank 0's,
    # which must not hang (no collective per decoded token).
    mine = PROMPTS[rank::2]
    rollout = generate(
        model,
        mine,
        Sampling(max_new_tokens=6 + 4 * rank, temperature=0),
        eos_token_id=EOS,
        pad_token_id=PAD,
        vocab_size=VOCAB,
    )
    # The model is sharded again afterwards and still trains (forward + backward run).
    loss = model(torch.tensor([[1, 2, 3, 4]])).logsumexp(-1).mean()
    loss.backward()
    torch.save(
        {
            "responses": rollout.responses,
            "local_is_shard": all(
                p.to_local().numel() < p.numel() for p in model.parameters() if p.numel() > 1
            ),
        },
        Path(out) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_generation_on_an_fsdp2_model_matches_the_plain_model(tmp_path: Path) -> None:
    mp.spawn(_fsdp_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    model = _model()  # build_model's init: the same seeded generator, so the same weights
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        expected = generate(
            model,
            PROMPTS[rank::2],
            Sampling(max_new_tokens=6 + 4 * rank, temperature=0),
            eos_token_id=EOS,
            pad_token_id=PAD,
            vocab_size=VOCAB,
        )
        assert torch.equal(saved["responses"], expected.responses), rank
        assert saved["local_is_shard"], rank


def test_incremental_decode_mask_and_positions_equal_the_from_scratch_ones_on_a_ragged_batch() -> None:
    # Ragged prompts (left padding), then decode steps in which rows stop at different steps (their
    # later tokens are padding): after every append the cache's incremental mask and positions equal
    # the ones built from the whole validity table, and the boolean view agrees with the additive one.
    _, prompt_mask = left_pad([[1, 2, 3, 4], [5], [6, 7], [8, 9, 10]], pad_token_id=0)
    steps = torch.tensor(
        [[1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    ).bool()
    cache = KVCache(
        batch=4, n_layers=1, n_kv_heads=1, head_dim=2, capacity=4 + len(steps), device=torch.device("cpu")
    )
    seen = prompt_mask
    cache.append(prompt_mask)
    for live in steps:
        start = seen.shape[1]
        seen = torch.cat((seen, live[:, None]), dim=1)
        cache.append(live[:, None])
        expected_bias = attention_bias(seen, start)
        assert torch.equal(cache.bias, expected_bias)
        assert torch.equal(cache.mask, expected_bias == 0)
        assert torch.equal(cache.positions, ((seen.long().cumsum(1) - 1).clamp(min=0))[:, start:])
    # By hand, the last step (padding in every row): real tokens so far 4+3, 1+1, 2+2, 3+4, so a
    # padding token's position is that count - 1, and its query sees the real keys plus itself.
    assert cache.positions[:, 0].tolist() == [6, 1, 3, 6]
    assert cache.mask[:, 0, 0].sum(dim=1).tolist() == [8, 3, 5, 8]


def test_decode_attention_equals_sdpa_with_grouped_heads() -> None:
    # The one-query decode kernel (grouped matmuls over the cache's strided prefix) computes what SDPA
    # computes with the same mask: 4 query heads sharing 2 K/V heads, a ragged batch.
    g = torch.Generator().manual_seed(0)
    B, H, KV, D = 3, 4, 2, 8
    _, prompt_mask = left_pad([[1, 2, 3], [4], [5, 6]], pad_token_id=0)
    cache = KVCache(batch=B, n_layers=1, n_kv_heads=KV, head_dim=D, capacity=6, device=torch.device("cpu"))
    cache.append(prompt_mask)
    layer = cache.layers[0]
    layer.attend(
        torch.randn(B, H, 3, D, generator=g),
        torch.randn(B, KV, 3, D, generator=g),
        torch.randn(B, KV, 3, D, generator=g),
    )
    cache.append(torch.tensor([[True], [False], [True]]))
    q, k, v = (torch.randn(B, n, 1, D, generator=g) for n in (H, KV, KV))
    got = layer.attend(q, k, v)
    keys, values = layer.k[:, :, :4], layer.v[:, :, :4]
    expected = F.scaled_dot_product_attention(q, keys, values, attn_mask=cache.mask, enable_gqa=True)
    assert got.shape == (B, H, 1, D)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
