"""The OLMo 2 transformer: parameter arithmetic, shapes, causality, init and GQA."""

from __future__ import annotations

import pytest
import torch

from olmo_trainer.config import PRESET_NAMES, ModelConfig
from olmo_trainer.model import INIT_CUTOFF_STDS, RMSNorm, Transformer


def tiny(**overrides: int) -> ModelConfig:
    return ModelConfig.preset("tiny", **overrides)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_config_parameter_arithmetic_matches_the_built_model(name: str) -> None:
    cfg = ModelConfig.preset(name)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert model.num_params() == cfg.num_params()
    assert len(model.blocks) == cfg.n_layers
    assert all(p.is_meta for p in model.parameters())


def test_qk_norm_spans_the_whole_projection_in_the_32b_gqa_preset() -> None:
    cfg = ModelConfig.preset("olmo2-32b")
    with torch.device("meta"):
        model = Transformer(cfg)
    attention = model.blocks[0].attention
    assert attention.q_norm.weight.shape == (40 * 128,)
    assert attention.k_norm.weight.shape == (8 * 128,)
    assert attention.w_k.weight.shape == (8 * 128, 5120)
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())


def test_forward_shape_and_float32_logits() -> None:
    cfg = tiny()
    model = Transformer(cfg)
    ids = torch.randint(0, cfg.vocab_size, (3, 17))
    logits = model(ids)
    assert logits.shape == (3, 17, cfg.padded_vocab)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_bf16_model_still_returns_float32_logits() -> None:
    model = Transformer(tiny()).to(torch.bfloat16)
    logits = model(torch.randint(0, 260, (1, 8)))
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_causal_future_tokens_do_not_change_past_logits(kv_heads: int) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny(n_kv_heads=kv_heads)).eval()
    ids = torch.randint(0, 260, (2, 24))
    changed = ids.clone()
    changed[:, 12:] = torch.randint(0, 260, (2, 12))
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_gqa_equals_full_attention_with_repeated_key_value_heads() -> None:
    torch.manual_seed(1)
    grouped = Transformer(tiny(n_kv_heads=2)).eval()
    full = Transformer(tiny()).eval()
    state = grouped.state_dict()
    for name, tensor in state.items():
        if ".attention.w_k." in name or ".attention.w_v." in name or ".attention.k_norm." in name:
            # (KV*D, ...) -> (H*D, ...): each kv head serves n_heads/n_kv_heads consecutive query heads.
            heads = tensor.view(2, 16, *tensor.shape[1:])
            tensor = heads.repeat_interleave(2, dim=0).reshape(64, *tensor.shape[1:])
        state[name] = tensor
    # k_norm over the repeated projection has the same mean square, so the result is identical.
    full.load_state_dict(state)
    ids = torch.randint(0, 260, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(grouped(ids), full(ids), rtol=1e-5, atol=1e-5)


def test_init_is_truncated_normal_everywhere_and_norms_are_one() -> None:
    cfg = tiny(d_model=128, n_heads=4, mlp_hidden=512)
    model = Transformer(cfg)
    model.init_weights(torch.Generator().manual_seed(3))
    cut = INIT_CUTOFF_STDS * cfg.init_std
    for name, p in model.named_parameters():
        if p.dim() == 1:
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert p.abs().max() <= cut + 1e-7, name
            # A normal truncated at 3 std has std ~0.986 of the untruncated one.
            assert abs(p.std().item() - 0.986 * cfg.init_std) < 0.1 * cfg.init_std, name
    assert any(isinstance(m, RMSNorm) for m in model.modules())


def test_init_weights_is_deterministic_given_a_generator() -> None:
    a, b, c = Transformer(tiny()), Transformer(tiny()), Transformer(tiny())
    a.init_weights(torch.Generator().manual_seed(7))
    b.init_weights(torch.Generator().manual_seed(7))
    c.init_weights(torch.Generator().manual_seed(8))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        if pa.dim() > 1:
            assert not torch.equal(pa, pc), name


def test_meta_build_then_materialise_and_init_runs() -> None:
    with torch.device("meta"):
        model = Transformer(tiny())
    model.to_empty(device="cpu")
    model.init_weights(torch.Generator().manual_seed(0))
    logits = model(torch.randint(0, 260, (1, 9)))
    assert torch.isfinite(logits).all()


def test_backward_reaches_every_parameter() -> None:
    model = Transformer(tiny(n_kv_heads=2))
    ids = torch.randint(0, 260, (2, 10))
    loss = torch.nn.functional.cross_entropy(model(ids)[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_rmsnorm_is_computed_in_float32() -> None:
    norm = RMSNorm(8, eps=1e-6)
    x = torch.randn(4, 8) * 1e-3
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    got = norm(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=1e-2)


def _bf16_matches_fp32(device: str) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny(n_kv_heads=2)).to(device).eval()
    ids = torch.randint(0, 260, (2, 64), device=device)
    with torch.no_grad():
        reference = model(ids)
        with torch.autocast(device, dtype=torch.bfloat16):
            mixed = model(ids)
    assert mixed.dtype == torch.float32
    # bf16 keeps ~3 significant digits; the logits of a fresh model are O(0.1).
    torch.testing.assert_close(mixed, reference, rtol=0.05, atol=0.02)


def test_bf16_autocast_forward_stays_close_to_fp32_on_cpu() -> None:
    _bf16_matches_fp32("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_autocast_forward_stays_close_to_fp32_on_gpu() -> None:
    _bf16_matches_fp32("cuda")
