"""Trainer configs: presets match OLMO2.md, token budgets parse, bad values name the field."""

from __future__ import annotations

from typing import cast

import pytest
from pydantic import ValidationError

from olmo_trainer import config as C


@pytest.mark.parametrize(
    ("preset", "d_model", "layers", "heads", "kv_heads", "hidden", "billions"),
    [
        ("olmo2-1b", 2048, 16, 16, 16, 8192, 1.48),
        ("olmo2-7b", 4096, 32, 32, 32, 11008, 7.30),
        ("olmo2-13b", 5120, 40, 40, 40, 13824, 13.72),
        ("olmo2-32b", 5120, 64, 40, 8, 27648, 32.23),
    ],
)
def test_presets_are_olmo2(
    preset: str, d_model: int, layers: int, heads: int, kv_heads: int, hidden: int, billions: float
) -> None:
    m = C.ModelConfig.preset(cast(C.PresetName, preset))
    assert (m.d_model, m.n_layers, m.n_heads, m.kv_heads, m.hidden) == (
        d_model,
        layers,
        heads,
        kv_heads,
        hidden,
    )
    assert m.dim_head == 128 and m.rope_theta == 500_000 and m.norm_eps == 1e-6 and m.init_std == 0.02
    assert (m.vocab_size, m.padded_vocab, m.eos_token_id, m.pad_token_id) == (
        100_278,
        100_352,
        100_257,
        100_277,
    )
    assert round(m.num_params() / 1e9, 2) == billions


def test_flops_per_token_formula() -> None:
    m = C.ModelConfig.preset("olmo2-7b")
    expected = 6 * (m.num_params() - m.padded_vocab * m.d_model) + 12 * 32 * 32 * 128 * 4096
    assert m.flops_per_token(4096) == expected


@pytest.mark.parametrize(
    ("text", "count"),
    [("50B", 50 * 10**9), ("3.9T", 39 * 10**11), ("64K", 64_000), ("10m", 10**7), (4096, 4096), ("123", 123)],
)
def test_token_budgets(text: str | int, count: int) -> None:
    assert C.parse_tokens(text) == count
    assert C.parse_tokens(C.format_tokens(count)) == count


@pytest.mark.parametrize("bad", ["lots", "-5B", "5X", True, -1, "1.5"])
def test_bad_token_budgets(bad: object) -> None:
    with pytest.raises(ValueError, match="token count"):
        C.parse_tokens(bad)


def test_model_overrides_and_errors() -> None:
    spec = C.ModelSpec(preset="tiny", overrides={"nLayers": 4, "d_model": 128})
    assert spec.resolve().n_layers == 4 and spec.resolve().d_model == 128
    with pytest.raises(ValidationError, match="unknown field 'nLayer'"):
        C.ModelSpec(preset="tiny", overrides={"nLayer": 4})
    with pytest.raises(ValidationError, match="not divisible by n_heads"):
        C.ModelConfig(d_model=65, n_layers=1, n_heads=4, vocab_size=300)
    with pytest.raises(ValidationError, match="n_kv_heads"):
        C.ModelConfig(
            d_model=64, n_layers=1, n_heads=4, n_kv_heads=3, vocab_size=300, eos_token_id=1, pad_token_id=2
        )


def test_data_source_needs_exactly_one_origin() -> None:
    with pytest.raises(ValidationError, match="exactly one of"):
        C.DataSource(name="x")
    with pytest.raises(ValidationError, match="exactly one of"):
        C.DataSource(name="x", paths=["a.npy"], synthetic=C.SyntheticSource())


def test_schedule_rejects_two_warmups() -> None:
    with pytest.raises(ValidationError, match="at most one"):
        C.ScheduleConfig(warmup_steps=10, warmup_tokens=100)


def test_train_config_round_trips_through_json() -> None:
    cfg = C.TrainConfig(
        run="r",
        phase="pretrain",
        kind="pretrain",
        seed=1,
        model=C.ModelConfig.preset("tiny"),
        data=C.DataConfig(
            sources=[C.DataSource(name="g", synthetic=C.SyntheticSource())], sequence_length=64
        ),
        batch=C.BatchConfig(global_batch_size=8),
        max_tokens=C.parse_tokens("1M"),
        save_dir="/tmp/x",
    )
    again = C.TrainConfig.model_validate_json(cfg.to_json())
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()
    assert cfg.model_copy(update={"save_dir": "/elsewhere"}).config_hash() == cfg.config_hash()
    assert cfg.model_copy(update={"seed": 2}).config_hash() != cfg.config_hash()
