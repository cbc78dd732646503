"""The OLMo 2 transformer: one readable file, architecture only.

Reads top to bottom: norm -> rotary -> attention -> MLP -> block -> model. The config is
`olmo_trainer.config.ModelConfig` (presets 1B/7B/13B/32B and `tiny`). What makes it OLMo 2
(OLMo 2 paper, arXiv:2501.00656): the *reordered* norm (each sublayer's output is normalised before the
residual
add), RMSNorm in fp32 with eps 1e-6, QK-norm over the whole q/k projection (before splitting heads and
before RoPE), SwiGLU, RoPE theta 500k, no biases, an untied LM head after a final norm, and GQA.

    model = Transformer(ModelConfig.preset("tiny"))
    logits = model(input_ids)                       # (B, T) -> (B, T, embedding_size), float32
    logits = model(new_ids, cache=kv_cache)         # generation: see olmo_trainer.generate

    with torch.device("meta"):                      # big presets: build without memory, then
        model = Transformer(ModelConfig.preset("olmo2-7b"))
    model.to_empty(device="cuda"); model.init_weights()

Parallelism (FSDP2 per block), activation checkpointing and compile live outside this file; they wrap
each element of `model.blocks`. Inference lives outside it too: the one hook is the optional `cache`
argument (the `DecodeCache` protocol), through which `olmo_trainer.generate` supplies each row's
positions and each layer's attention over its past keys/values. It cannot live entirely outside: calling the
model itself
(not its submodules) is what keeps FSDP2's per-module hooks, checkpoint wrappers and compile working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from olmo_trainer.config import ModelConfig

# Truncated-normal init is cut at +-3 std (OLMo 2: "init ... truncated at 3 std").
INIT_CUTOFF_STDS = 3.0


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learnable weight, computed in fp32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 so that bf16 activations do not lose the small variance terms.
        out = F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps)
        return out.to(x.dtype)


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE angles at integer `positions` (T,) or (B, T): each (T, D) or (B, 1, T, D),
    halves duplicated (the `rotate_half` layout); they broadcast against (B, H, T, D)."""
    # Computed per forward rather than stored as a buffer: nothing to re-create after a meta-device
    # build, and the cost (T x D/2 multiplies) is negligible next to the matmuls.
    device = positions.device
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # (..., T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., T, D)
    if angles.dim() == 3:
        angles = angles.unsqueeze(1)  # (B, 1, T, D): one table per row, shared by the heads
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) queries or keys by position; the first and second halves of D form pairs."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class LayerCache(Protocol):
    """Past keys/values of one attention layer during generation (implemented in olmo_trainer.generate)."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store the new keys/values (B, KV, T, D) and return the attention (B, H, T, D) of the queries
        q (B, H, T, D) over every key so far: causal, padding keys hidden, scale 1/sqrt(D), KV heads
        shared by groups of H / KV query heads (exactly what `F.scaled_dot_product_attention` computes
        with that mask; the cache owns the kernel because only it knows its memory layout)."""
        ...


class DecodeCache(Protocol):
    """What a generating forward passes down: positions of the new tokens and one cache per layer."""

    positions: torch.Tensor
    """(B, T) RoPE positions of the new tokens (rows of a left-padded batch start at 0)."""
    layers: Sequence[LayerCache]


class Attention(nn.Module):
    """Causal multi-head attention with QK-norm and grouped key/value heads."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.dim_head
        self.w_q = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.w_k = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.w_v = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.w_out = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        # QK-norm spans the whole projection (all heads at once), not each head separately.
        self.q_norm = RMSNorm(self.n_heads * self.head_dim, config.norm_eps)
        self.k_norm = RMSNorm(self.n_kv_heads * self.head_dim, config.norm_eps)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: LayerCache | None = None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        D, H, KV = self.head_dim, self.n_heads, self.n_kv_heads
        q = self.q_norm(self.w_q(x)).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_norm(self.w_k(x)).view(B, T, KV, D).transpose(1, 2)  # (B, KV, T, D)
        v = self.w_v(x).view(B, T, KV, D).transpose(1, 2)  # (B, KV, T, D)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        # enable_gqa: the flash kernel serves each K/V head to its query group without copying K/V.
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV != H)  # (B, H, T, D)
        else:  # generation: the cache stores k/v and attends over every cached position (padding hidden)
            y = cache.attend(q, k, v)  # (B, H, T, D)
        return self.w_out(y.transpose(1, 2).reshape(B, T, H * D))  # (B, T, d)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 is the gate, w3 the up and w2 the down projection."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.d_model, config.hidden, bias=False)
        self.w2 = nn.Linear(config.hidden, config.d_model, bias=False)
        self.w3 = nn.Linear(config.d_model, config.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (B, T, d) -> (B, T, F) -> (B, T, d)


class Block(nn.Module):
    """OLMo 2's reordered-norm block: normalise each sublayer's output, then add it to the residual."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.attention_norm = RMSNorm(config.d_model, config.norm_eps)
        self.feed_forward = FeedForward(config)
        self.feed_forward_norm = RMSNorm(config.d_model, config.norm_eps)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: LayerCache | None = None
    ) -> torch.Tensor:
        h = x + self.attention_norm(self.attention(x, rope, cache))
        return h + self.feed_forward_norm(self.feed_forward(h))


@torch.no_grad()
def init_truncated_normal(weight: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    """N(0, std) cut at +-3 std. A sharded (FSDP2 DTensor) weight draws the full tensor, one weight at a
    time, and keeps its own shard: sharded and unsharded models start from the same numbers, and no
    rank ever holds more than its shards plus one full weight."""
    cut = INIT_CUTOFF_STDS * std
    if not isinstance(weight, DTensor):
        nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-cut, b=cut, generator=generator)
        return
    full = torch.empty(weight.shape, dtype=weight.dtype, device=weight.to_local().device)
    nn.init.trunc_normal_(full, mean=0.0, std=std, a=-cut, b=cut, generator=generator)
    shard = distribute_tensor(full, weight.device_mesh, weight.placements, src_data_rank=None)
    weight.to_local().copy_(shard.to_local())


class Transformer(nn.Module):
    """Token ids (B, T) -> float32 logits (B, T, embedding_size)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.padded_vocab, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab, bias=False)  # untied
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, cache: DecodeCache | None = None) -> torch.Tensor:
        if cache is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        else:
            positions = cache.positions  # (B, T)
        rope = rotary_tables(
            positions, self.config.dim_head, self.config.rope_theta
        )  # 2 x (T, D) or (B, 1, T, D)
        x = self.embeddings(input_ids)  # (B, T, d)
        for index, block in enumerate(self.blocks):
            x = block(x, rope) if cache is None else block(x, rope, cache.layers[index])
        return self.lm_head(self.norm(x)).float()  # (B, T, V)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """OLMo 2 init: every weight (embeddings included) ~ N(0, std) truncated at +-3 std; norms 1.

        Call after `to_empty()` when the model was built on the meta device. Parameters are visited in
        module order, so the same generator seed gives the same weights on every rank.
        """
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, nn.Linear | nn.Embedding):
                init_truncated_normal(module.weight, std, generator)

    def num_params(self) -> int:
        """Number of parameters (all of them; the embedding and LM head are separate matrices)."""
        return sum(p.numel() for p in self.parameters())
