"""Hugging Face interchange: our Transformer and transformers' Olmo2ForCausalLM agree both ways."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import fsspec
import pytest
import torch
import transformers

from olmo_trainer.config import ModelConfig
from olmo_trainer.export import (
    INDEX_NAME,
    from_hf,
    hf_config_dict,
    model_config_from_hf,
    state_dict_from_hf,
    state_dict_to_hf,
    to_hf,
)
from olmo_trainer.model import Transformer

CONFIGS = {
    "mha": {"d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 192, "vocab_size": 384},
    "gqa": {
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 2,
        "mlp_hidden": 192,
        "vocab_size": 384,
    },
}


def build(kind: str, seed: int = 0) -> Transformer:
    cfg = ModelConfig.model_validate({**CONFIGS[kind], "eos_token_id": 256, "pad_token_id": 257})
    model = Transformer(cfg)
    model.init_weights(torch.Generator().manual_seed(seed))
    # Norm weights away from 1 so a mis-mapped norm cannot go unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))
    return model.eval()


def hf_logits(hf: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=ids).logits.float()


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_ours_to_transformers_logits_agree(kind: str, tmp_path: Path) -> None:
    model = build(kind)
    to_hf(model, str(tmp_path))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    assert type(hf).__name__ == "Olmo2ForCausalLM"
    assert hf.config.eos_token_id == 256 and hf.config.pad_token_id == 257 and hf.config.bos_token_id == 256
    assert hf.config.rope_parameters["rope_theta"] == 500_000.0
    ids = torch.randint(0, 384, (2, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids)
    torch.testing.assert_close(ours, hf_logits(hf, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_transformers_to_ours_logits_agree(kind: str, tmp_path: Path) -> None:
    cfg = CONFIGS[kind]
    hf_config = transformers.Olmo2Config(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["d_model"],
        intermediate_size=cfg["mlp_hidden"],
        num_hidden_layers=cfg["n_layers"],
        num_attention_heads=cfg["n_heads"],
        num_key_value_heads=cfg.get("n_kv_heads", cfg["n_heads"]),
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 500_000.0},
        eos_token_id=256,
        pad_token_id=257,
    )
    torch.manual_seed(2)
    hf = transformers.Olmo2ForCausalLM(hf_config).eval()
    with torch.no_grad():
        for p in hf.parameters():  # transformers initialises norms to 1; perturb them to test the mapping
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(str(tmp_path))
    ours = from_hf(str(tmp_path))
    assert ours.config.kv_heads == cfg.get("n_kv_heads", cfg["n_heads"])
    assert ours.config.eos_token_id == 256 and ours.config.pad_token_id == 257
    ids = torch.randint(0, 384, (3, 21), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf_logits(hf, ids), rtol=1e-5, atol=1e-5)


def test_round_trip_keeps_config_and_weights_with_sharding(tmp_path: Path) -> None:
    cfg = ModelConfig.preset("tiny", n_kv_heads=2)  # vocab 260 padded to 384: the tokenizer size survives
    model = Transformer(cfg)
    to_hf(model, str(tmp_path), max_shard_bytes=100_000)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 1
    back = from_hf(str(tmp_path))
    assert back.config == cfg
    assert all(p.requires_grad for p in back.parameters())  # ready to fine-tune
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_export_to_an_fsspec_url_with_tokenizer_files(tmp_path: Path) -> None:
    tokenizer_dir = tmp_path / "tok"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "tokenizer.json").write_text('{"version": "1.0"}')
    (tokenizer_dir / "tokenizer_config.json").write_text("{}")
    model = build("mha", seed=9)
    to_hf(model, "memory://exports/hf", tokenizer_dir=str(tokenizer_dir), dtype=torch.bfloat16)
    fs = fsspec.filesystem("memory")
    names = sorted(os.path.basename(p) for p in fs.ls("/exports/hf", detail=False))
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    back = from_hf("memory://exports/hf")
    assert back.embeddings.weight.dtype == torch.bfloat16
    torch.testing.assert_close(back.lm_head.weight, model.lm_head.weight.to(torch.bfloat16), rtol=0, atol=0)


def test_name_mappings_are_inverse_and_strip_wrapper_prefixes() -> None:
    model = build("gqa")
    sd = model.state_dict()
    wrapped = {
        name.replace("blocks.1.", "blocks.1._checkpoint_wrapped_module._orig_mod."): t
        for name, t in sd.items()
    }
    hf_sd = state_dict_to_hf(wrapped, model.config)
    assert "model.layers.1.self_attn.q_norm.weight" in hf_sd
    assert "model.layers.0.post_feedforward_layernorm.weight" in hf_sd
    assert state_dict_from_hf(hf_sd).keys() == sd.keys()
    with pytest.raises(KeyError, match="no Hugging Face counterpart"):
        state_dict_to_hf({**sd, "blocks.0.extra.weight": torch.zeros(1)}, model.config)
    with pytest.raises(ValueError, match="tensors"):
        state_dict_to_hf({k: v for k, v in sd.items() if "lm_head" not in k}, model.config)


RELEASED_7B_CONFIG = Path(__file__).parent / "data" / "olmo2-1124-7b-config.json"
"""allenai/OLMo-2-1124-7B's config.json as published on the Hugging Face Hub (revision with
`Olmo2ForCausalLM`, transformers 4.47 layout)."""

# Keys transformers 5 writes that the transformers-4 release lacks, and ours (the tokenizer's size).
_OUR_EXTRA_KEYS = {"rope_parameters", "dtype", "bos_token_id", "tokenizer_vocab_size"}


def test_exported_config_has_the_released_7b_keys_and_values() -> None:
    released = json.loads(RELEASED_7B_CONFIG.read_text())
    ours = hf_config_dict(ModelConfig.preset("olmo2-7b"), torch.float32)
    assert set(ours) == set(released) | _OUR_EXTRA_KEYS
    # The 7B preset exported is the released config, value for value (the version is the installed one).
    assert {k: v for k, v in ours.items() if k in released and k != "transformers_version"} == {
        k: v for k, v in released.items() if k != "transformers_version"
    }
    assert ours["transformers_version"] == transformers.__version__
    assert ours["rope_parameters"] == {"rope_type": "default", "rope_theta": 500_000.0}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_exported_config_reads_as_the_transformers5_layout_alone(kind: str, tmp_path: Path) -> None:
    """The transformers-4 keys change nothing for transformers 5: same config, same RoPE theta."""
    cfg = build(kind).config
    full = hf_config_dict(cfg, torch.float32)
    v5_only = {k: v for k, v in full.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    read = {}
    for name, content in (("full", full), ("v5", v5_only)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(content))
        read[name] = transformers.AutoConfig.from_pretrained(str(tmp_path / name)).to_dict()
        read[name].pop("_name_or_path")
    assert read["full"] == read["v5"]
    assert read["full"]["rope_parameters"] == {"rope_type": "default", "rope_theta": 500_000.0}


def test_model_config_from_a_released_transformers4_config() -> None:
    released = json.loads(RELEASED_7B_CONFIG.read_text())
    cfg = model_config_from_hf(released)
    preset = ModelConfig.preset("olmo2-7b")
    assert cfg.num_params() == preset.num_params()
    assert (cfg.d_model, cfg.hidden, cfg.rope_theta, cfg.norm_eps) == (4096, 11008, 500_000.0, 1e-6)
    assert (cfg.eos_token_id, cfg.pad_token_id, cfg.padded_vocab) == (100257, 100277, 100352)
    with pytest.raises(ValueError, match="OLMo 2"):
        model_config_from_hf({**released, "model_type": "llama"})
