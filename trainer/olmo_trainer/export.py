"""Hugging Face interchange: our `Transformer` <-> transformers' `Olmo2ForCausalLM` checkpoint format.

`to_hf` writes `config.json` + safetensors (sharded with an index above `max_shard_bytes`) that
`transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads as `Olmo2ForCausalLM`; `from_hf`
reads such a directory back (ours, or a released OLMo 2 checkpoint) so post-training can start from it.
Both accept local paths or fsspec URLs (s3://, gs://, memory://): remote directories are staged
through a local temporary directory.

    to_hf(model, "s3://bucket/run/export/hf", tokenizer_dir="tokenizer/")
    model = from_hf("allenai-OLMo-2-1124-7B/")

The name mapping (`state_dict_to_hf` / `state_dict_from_hf`) and `model_config_from_hf` are pure.
The layouts of the tensors are identical (both use the rotate-half RoPE layout), only names differ.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from olmo_trainer.config import ModelConfig
from olmo_trainer.errors import ConfigurationError
from olmo_trainer.layout import manifest_path
from olmo_trainer.model import Transformer
from olmo_trainer.storage import filesystem, is_local

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# Written into config.json so that a round trip keeps the tokenizer's vocabulary size; Hugging Face's
# `vocab_size` is the number of embedding rows (100352 for OLMo 2, padded from 100278).
TOKENIZER_VOCAB_KEY = "tokenizer_vocab_size"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

# (our name, Hugging Face name); `{i}` is the block index.
_BLOCK_NAMES = (
    ("attention.w_q.weight", "self_attn.q_proj.weight"),
    ("attention.w_k.weight", "self_attn.k_proj.weight"),
    ("attention.w_v.weight", "self_attn.v_proj.weight"),
    ("attention.w_out.weight", "self_attn.o_proj.weight"),
    ("attention.q_norm.weight", "self_attn.q_norm.weight"),
    ("attention.k_norm.weight", "self_attn.k_norm.weight"),
    ("attention_norm.weight", "post_attention_layernorm.weight"),
    ("feed_forward.w1.weight", "mlp.gate_proj.weight"),
    ("feed_forward.w3.weight", "mlp.up_proj.weight"),
    ("feed_forward.w2.weight", "mlp.down_proj.weight"),
    ("feed_forward_norm.weight", "post_feedforward_layernorm.weight"),
)
_TOP_NAMES = (
    ("embeddings.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
)
_OURS_TO_HF = dict(_TOP_NAMES) | {f"blocks.{{i}}.{a}": f"model.layers.{{i}}.{b}" for a, b in _BLOCK_NAMES}
_HF_TO_OURS = {hf: ours for ours, hf in _OURS_TO_HF.items()}
_BLOCK_KEY = re.compile(r"^(blocks|model\.layers)\.(\d+)\.(.+)$")
# Wrappers that torch.compile / activation checkpointing / FSDP put into parameter names.
_WRAPPER_PREFIXES = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "module.")
# Non-persistent buffers some transformers versions saved; they carry no learned state.
_HF_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


def _strip_wrappers(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _rename(name: str, table: Mapping[str, str]) -> str:
    match = _BLOCK_KEY.fullmatch(name)
    template = f"{match[1]}.{{i}}.{match[3]}" if match else name
    if template not in table:
        raise KeyError(f"no Hugging Face counterpart for parameter {name!r}")
    return table[template].replace("{i}", match[2]) if match else table[template]


def state_dict_to_hf(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our parameter names -> Olmo2ForCausalLM names (tensors untouched); checks it is a whole model."""
    out = {_rename(_strip_wrappers(name), _OURS_TO_HF): tensor for name, tensor in sd.items()}
    expected = 3 + len(_BLOCK_NAMES) * cfg.n_layers
    if len(out) != expected:
        raise ConfigurationError(
            f"state dict has {len(out)} tensors; a {cfg.n_layers}-layer model has {expected}"
        )
    return out


def state_dict_from_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Olmo2ForCausalLM names -> our parameter names (tensors untouched)."""
    return {_rename(name, _HF_TO_OURS): tensor for name, tensor in sd.items() if not _HF_IGNORED.search(name)}


def model_config_from_hf(hf_config_dict: Mapping[str, Any]) -> ModelConfig:
    """A ModelConfig from an Olmo2 `config.json` (transformers 4 `rope_theta` or 5 `rope_parameters`)."""
    hf = dict(hf_config_dict)
    if hf.get("model_type", "olmo2") != "olmo2":
        raise ConfigurationError(f"not an OLMo 2 checkpoint: model_type is {hf.get('model_type')!r}")
    if hf.get("tie_word_embeddings") or hf.get("attention_bias"):
        raise ConfigurationError(
            "OLMo 2 has untied embeddings and no attention bias; this config says otherwise"
        )
    rope = hf.get("rope_parameters") or {}
    rope_theta = rope.get("rope_theta", hf.get("rope_theta", 500_000.0))
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise ConfigurationError("only plain RoPE is supported (no rope scaling)")
    embedding_rows = int(hf["vocab_size"])
    vocab = int(hf.get(TOKENIZER_VOCAB_KEY) or embedding_rows)
    eos = _first_id(hf.get("eos_token_id"))
    pad = _first_id(hf.get("pad_token_id"))
    d_model, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim")
    fields: dict[str, Any] = {
        "d_model": d_model,
        "n_layers": int(hf["num_hidden_layers"]),
        "n_heads": n_heads,
        "n_kv_heads": hf.get("num_key_value_heads") or n_heads,
        "head_dim": head_dim if head_dim and head_dim != d_model // n_heads else None,
        "mlp_hidden": int(hf["intermediate_size"]),
        "vocab_size": vocab,
        "embedding_size": embedding_rows,
        "max_sequence_length": int(hf.get("max_position_embeddings", 4096)),
        "rope_theta": float(rope_theta),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "init_std": float(hf.get("initializer_range", 0.02)),
    }
    if eos is None:
        raise ConfigurationError("config.json has no eos_token_id: documents could not be separated")
    fields["eos_token_id"] = eos
    fields["pad_token_id"] = pad if pad is not None else eos
    return ModelConfig.model_validate(fields)


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def _transformers_version() -> str | None:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def hf_config_dict(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """The Olmo2 `config.json` of a ModelConfig, read the same by transformers 4.47+ and 5.x.

    It carries every key of the released allenai/OLMo-2-1124-7B config.json (transformers 4 layout:
    top-level `rope_theta`, `rope_scaling: null`, `torch_dtype`), plus what transformers 5 writes
    (`rope_parameters`, `dtype`). Without the top-level `rope_theta`, transformers 4.x silently falls
    back to its default theta of 10,000 and computes different logits. `transformers_version` is the
    installed version, left out when transformers is not installed.
    """
    dtype_name = str(dtype).removeprefix("torch.")
    out: dict[str, Any] = {
        "architectures": ["Olmo2ForCausalLM"],
        "model_type": "olmo2",
        "vocab_size": cfg.padded_vocab,
        TOKENIZER_VOCAB_KEY: cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_sequence_length,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers 4.x
        "rope_scaling": None,  # transformers 4.x: plain RoPE
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # transformers 5.x
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        # OLMo 2's tokenizer uses its end-of-text token as BOS too.
        "bos_token_id": cfg.eos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": dtype_name,  # transformers 4.x
        "dtype": dtype_name,  # transformers 5.x
    }
    if cfg.dim_head != cfg.d_model // cfg.n_heads:
        out["head_dim"] = cfg.dim_head  # transformers' Olmo2 attention and RoPE read it when present
    version = _transformers_version()
    if version is not None:
        out["transformers_version"] = version
    return out


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A plain contiguous CPU tensor (gathers an FSDP2 DTensor shard into the full parameter)."""
    full_tensor = getattr(tensor, "full_tensor", None)
    if callable(full_tensor):
        tensor = full_tensor()
    return tensor.detach().to("cpu").contiguous()


def _shards(sd: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in sd.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


@contextmanager
def _local_dir_for_writing(out_dir: str) -> Iterator[str]:
    fs, path = filesystem(out_dir)
    if is_local(fs):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="olmorun-hf-") as staging:
        yield staging
        for name in sorted(os.listdir(staging)):
            fs.put_file(os.path.join(staging, name), f"{path.rstrip('/')}/{name}")


@contextmanager
def _local_dir_for_reading(path: str) -> Iterator[str]:
    fs, remote = filesystem(path)
    if is_local(fs):
        yield remote
        return
    with tempfile.TemporaryDirectory(prefix="olmorun-hf-") as staging:
        for entry in fs.ls(remote, detail=False):
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if name == CONFIG_NAME or name.endswith((".safetensors", INDEX_NAME)):
                fs.get_file(entry, os.path.join(staging, name))
        yield staging


def _copy_tokenizer(tokenizer_dir: str, out: str) -> None:
    fs, root = filesystem(tokenizer_dir)
    for entry in fs.ls(root, detail=True):
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] == "file" and name != CONFIG_NAME and ".safetensors" not in name:
            fs.get_file(entry["name"], os.path.join(out, name))


def to_hf(
    model: Transformer,
    out_dir: str,
    *,
    tokenizer_dir: str | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> None:
    """Write `model` as an Olmo2ForCausalLM checkpoint (config.json + safetensors [+ tokenizer files]).

    `dtype` converts the weights (default: as they are); `tokenizer_dir` files are copied beside them.
    Call on every rank of an FSDP job (gathering shards is collective); only rank 0 should pass a
    writable `out_dir` — or gather first and call it from one process.
    """
    cfg = model.config
    sd = {name: _full(t) for name, t in model.state_dict().items()}
    hf_sd = state_dict_to_hf(sd, cfg)
    if dtype is not None:
        hf_sd = {name: t.to(dtype) for name, t in hf_sd.items()}
    stored_dtype = next(iter(hf_sd.values())).dtype
    with _local_dir_for_writing(out_dir) as out:
        shards = _shards(hf_sd, max_shard_bytes)
        metadata = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], os.path.join(out, WEIGHTS_NAME), metadata=metadata)
        else:
            weight_map: dict[str, str] = {}
            for i, shard in enumerate(shards, start=1):
                filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, os.path.join(out, filename), metadata=metadata)
                weight_map.update(dict.fromkeys(shard, filename))
            total = sum(t.numel() * t.element_size() for t in hf_sd.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            with open(os.path.join(out, INDEX_NAME), "w") as f:
                json.dump(index, f, indent=2)
        if tokenizer_dir is not None:
            _copy_tokenizer(tokenizer_dir, out)
        # config.json last: a directory with a config is a complete export.
        with open(os.path.join(out, CONFIG_NAME), "w") as f:
            json.dump(hf_config_dict(cfg, stored_dtype), f, indent=2)


def load_hf_state_dict(directory: str) -> dict[str, torch.Tensor]:
    """Every tensor of a local Hugging Face safetensors checkpoint (single file or sharded)."""
    index_path = os.path.join(directory, INDEX_NAME)
    if os.path.exists(index_path):
        with open(index_path) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = [WEIGHTS_NAME]
    sd: dict[str, torch.Tensor] = {}
    for filename in files:
        sd.update(load_file(os.path.join(directory, filename)))
    return sd


def from_hf(path: str) -> Transformer:
    """Load an Olmo2ForCausalLM checkpoint directory (local or fsspec URL) as our Transformer."""
    with _local_dir_for_reading(path) as local:
        config_path = os.path.join(local, CONFIG_NAME)
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"{path} has no {CONFIG_NAME}: not a Hugging Face checkpoint")
        with open(config_path) as f:
            cfg = model_config_from_hf(json.load(f))
        sd = state_dict_from_hf(load_hf_state_dict(local))
    with torch.device("meta"):
        model = Transformer(cfg)
    # assign=True adopts the loaded tensors (and their dtype) instead of copying into meta storage.
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def is_hf_folder(uri: str) -> bool:
    """True when `uri` is a Hugging Face OLMo 2 checkpoint folder (config.json of model_type olmo2),
    as opposed to one of our committed checkpoints (MANIFEST.json + DCP shards)."""
    fs, root = filesystem(uri)
    config_path = f"{root.rstrip('/')}/{CONFIG_NAME}"
    if not fs.exists(config_path) or fs.exists(manifest_path(root)):
        return False
    try:
        return json.loads(fs.cat_file(config_path)).get("model_type") == "olmo2"
    except (ValueError, AttributeError):
        return False


def load_hf_into(uri: str, model: torch.nn.Module) -> None:
    """Copy a Hugging Face OLMo 2 folder's weights into `model` (plain, DDP or FSDP2; every rank reads
    the full tensors and keeps its shard). Raises ValueError when the shapes do not fit the model."""
    with _local_dir_for_reading(uri) as local:
        sd: dict[str, Any] = dict(state_dict_from_hf(load_hf_state_dict(local)))
    try:
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=True))
    except (RuntimeError, KeyError) as error:
        raise ConfigurationError(f"{uri}: its weights do not fit the configured model ({error})") from None
