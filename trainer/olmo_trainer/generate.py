"""Batched sampling with a KV cache for the OLMo 2 `Transformer` (RLVR rollouts, greedy evaluation).

    rollout = generate(model, [[5, 9, 2], [7, 1]], Sampling(max_new_tokens=128, temperature=1.0),
                       eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                       vocab_size=cfg.vocab_size, generator=torch.Generator().manual_seed(seed))
    rollout.responses        # (B, N) sampled ids, pad after each row's EOS
    rollout.response_mask    # (B, N) True on the real response tokens (the EOS included)

Prompts of different lengths are left-padded into one batch. The prompt is run once (prefill) and fills
the cache; each decode step then runs only the B new tokens against the cached keys/values, so a
response of N tokens costs O(N) token-forwards instead of the O(N^2) of recomputing the sequence
(`use_cache=False` does exactly that recomputation, for the benchmark and the tests). Each row's RoPE
positions count only its real tokens, so a left-padded row sees exactly what it would see alone, and
padding keys are masked out of attention.

Sampling: `temperature` 0 is greedy (argmax); otherwise softmax(logits / temperature), restricted to
the top-p nucleus, drawn by inverse CDF with one uniform per row from the caller's `generator`
(`sample_rows`), so a seeded CPU run is reproducible bit for bit. Ids at or above `vocab_size` (the
embedding's padding rows) are never sampled. A row stops at EOS; generation stops when every row
has stopped or at `max_new_tokens`.

FSDP2: `generate` gathers the full weights once, in the prefill (`full_weights`), decodes with no
collective per token (ranks may then stop after different numbers of steps), and reshards at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FSDPModule

from olmo_trainer.config import ModelConfig


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen."""

    max_new_tokens: int
    """Most response tokens per row (the EOS counts)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 = all)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Rollout:
    """A batch of prompts and their sampled responses (CPU or device tensors)."""

    prompts: torch.Tensor
    """(B, P) prompt ids, left-padded with the pad id."""
    prompt_mask: torch.Tensor
    """(B, P) bool: True on real prompt tokens."""
    responses: torch.Tensor
    """(B, N) response ids; after a row's EOS (or for a stopped row) the pad id. N <= max_new_tokens."""
    response_mask: torch.Tensor
    """(B, N) bool: True on the tokens the policy produced (a row's EOS included)."""
    stopped: torch.Tensor
    """(B,) bool: the row ended with EOS (False: cut at max_new_tokens)."""
    logits: torch.Tensor | None = None
    """(B, N, V) float32 logits each response token was drawn from (before temperature), when asked."""

    def response_lengths(self) -> torch.Tensor:
        """(B,) number of response tokens per row."""
        return self.response_mask.sum(dim=1)


# ---------------------------------------------------------------------------------------------
# The cache (implements model.DecodeCache / model.LayerCache)
# ---------------------------------------------------------------------------------------------


class _LayerKV:
    """One layer's preallocated keys and values (B, KV, capacity, D)."""

    def __init__(
        self, owner: KVCache, shape: tuple[int, int, int, int], device: torch.device, dtype: torch.dtype
    ):
        self.owner = owner
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store k, v (B, KV, T, D); return softmax(q K^T / sqrt(D) + bias) V (B, H, T, D) over the
        cached prefix (model.LayerCache)."""
        start, end = self.owner.start, self.owner.end
        if self.k.dtype != k.dtype:  # the first forward reveals the compute dtype (bf16 under FSDP2)
            self.k, self.v = self.k.to(k.dtype), self.v.to(v.dtype)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        keys, values = self.k[:, :, :end], self.v[:, :, :end]  # (B, KV, S, D)
        bias = self.owner.bias  # (B, 1, T, S) float32, additive: 0 visible, -inf hidden
        B, H, T, D = q.shape
        KV = keys.shape[1]
        if T > 1:  # prefill (or the recomputation baseline): the fused kernel
            return F.scaled_dot_product_attention(
                q, keys, values, attn_mask=bias.to(q.dtype), enable_gqa=KV != H
            )
        # A decode step: two batched matrix-vector products over the cache, each query group of H / KV
        # heads as the rows of one product against its shared K/V head (no K/V copy). On CPU this is
        # faster than SDPA's flash kernel on the cache's strided prefix (bench/RESULTS.md,
        # bench_generate: the kernel comparison); on GPU it is not measured.
        grouped = q.reshape(B, KV, H // KV, D)  # T == 1: the heads of a group are consecutive
        scores = torch.matmul(grouped, keys.transpose(-1, -2)).mul_(D**-0.5)  # (B, KV, G, S)
        scores = scores.float().add_(bias).softmax(dim=-1).to(values.dtype)  # softmax in fp32
        return torch.matmul(scores, values).view(B, H, 1, D)


def attention_bias(seen: torch.Tensor, start: int) -> torch.Tensor:
    """From scratch: the additive mask (B, 1, T, S) of queries at positions start..S-1 over keys 0..S-1,
    given which cached positions are real tokens, `seen` (B, S): 0 where the key is causal (at or before
    the query) and real, -inf elsewhere. Every query also sees itself, so a padding query never has an
    all-hidden row (NaN in the softmax)."""
    end = seen.shape[1]
    query = torch.arange(start, end, device=seen.device)[:, None]  # (T, 1)
    key = torch.arange(end, device=seen.device)[None, :]  # (1, S)
    visible = ((key <= query)[None] & seen[:, None, :]) | (key == query)[None]  # (B, T, S)
    zero = torch.zeros((), device=seen.device)
    return torch.where(visible, zero, -torch.inf)[:, None]  # (B, 1, T, S) float32


class KVCache:
    """Keys/values of every layer plus which cached positions are real tokens (not left padding).

    Before each forward, `append(valid)` declares the T new tokens; the model then reads `positions`
    (B, T) and each layer calls `layers[i].attend(q, k, v)`, which reads `bias` (B, 1, T, S), the
    additive attention mask (`attention_bias`; `mask` is its boolean form, True = visible).

    A one-token step (decoding) updates both incrementally: positions from each row's count of real
    tokens, and the mask as a view of one (B, capacity) row of key visibilities, one new column per step
    (the new key is visible to itself whatever its row's state; from the next step on it is visible
    only if it is a real token). Longer appends (the prefill) build the mask from scratch.
    """

    def __init__(
        self,
        *,
        batch: int,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch, n_kv_heads, capacity, head_dim)
        self.layers: Sequence[_LayerKV] = [_LayerKV(self, shape, device, dtype) for _ in range(n_layers)]
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)  # (B, S)
        self.capacity = capacity
        self.start = self.end = 0
        self.positions = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.bias = torch.zeros(batch, 1, 0, 0, device=device)
        self._count = torch.zeros(batch, dtype=torch.long, device=device)  # real tokens per row so far
        # Additive visibility of each cached key to a later query: 0 real token, -inf padding.
        self._key_bias = torch.full((batch, capacity), -torch.inf, device=device)

    @property
    def mask(self) -> torch.Tensor:
        """(B, 1, T, S) bool: True where a new query may see a cached key."""
        return self.bias == 0

    def append(self, valid: torch.Tensor) -> None:
        """Declare the next T tokens of each row: `valid` (B, T) is False on padding.
        Raises ValueError when the cache would overflow its capacity."""
        T = valid.shape[1]
        start, end = self.end, self.end + T
        if end > self.capacity:
            raise ValueError(f"KV cache full: {end} positions > capacity {self.capacity}")
        if start > 0:  # the previous step's key was shown to itself: from now on only if it is real
            self._key_bias[:, start - 1].masked_fill_(~self.valid[:, start - 1], -torch.inf)
        self.valid[:, start:end] = valid
        self._key_bias[:, start:end].masked_fill_(valid, 0.0)
        # A row's position = number of its real tokens before this one (left padding does not count).
        self.positions = (self._count[:, None] + valid.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        self._count += valid.sum(dim=1)
        if T == 1:  # a decode step: the new key is visible to its own query
            self._key_bias[:, start] = 0.0
            self.bias = self._key_bias[:, None, None, :end]  # (B, 1, 1, S) view
        else:
            self.bias = attention_bias(self.valid[:, :end], start)
        self.start, self.end = start, end


# ---------------------------------------------------------------------------------------------
# Choosing tokens
# ---------------------------------------------------------------------------------------------


def choose_tokens(
    logits: torch.Tensor, sampling: Sampling, *, vocab_size: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Next ids (B,) from last-position logits (B, V); ids >= vocab_size are never chosen."""
    logits = logits.float().clone()
    logits[:, vocab_size:] = -torch.inf
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / sampling.temperature, dim=-1)  # (B, V)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep a token when the mass strictly before it is below top_p: the top token always stays.
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= sampling.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return sample_rows(probs, generator)


def sample_rows(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One id per row of `probs` (B, V) (rows need not sum to 1), drawn by inverse CDF from ONE uniform
    per row: the first id whose cumulative mass exceeds u x total. Ids of probability 0 (outside the
    vocabulary, outside the nucleus) own an empty interval and are never drawn.

    Why not `torch.multinomial`: on CPU it draws an exponential variate for every entry of the (B, V)
    table (a Gumbel/exponential race), ~2 ms per decode step at B=16, V=4096 — as long as a 5M-parameter
    model's whole one-token forward (bench/RESULTS.md, bench_generate). This costs one cumsum.
    """
    cdf = probs.double().cumsum(dim=-1)  # float64: a 100k-entry vocabulary's small masses stay resolved
    total = cdf[:, -1:].contiguous()
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=torch.float64) * total
    picked = torch.searchsorted(cdf, u, right=True).squeeze(-1)  # first id with cdf > u
    # u rounds up to `total` with probability ~2^-53: fall back to the last id with any mass (the
    # first whose cumulative mass reaches the total).
    last = torch.searchsorted(cdf, total).squeeze(-1)
    return torch.minimum(picked, last)


# ---------------------------------------------------------------------------------------------
# FSDP2: gather the weights once for a whole generation
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def full_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, no FSDP2 module of `model` reshards after forward: the first forward gathers the full
    weights (a collective: every rank must run it) and later forwards run no collective at all, so
    ranks may decode different numbers of steps. On exit the shards are restored and FSDP2's own
    defaults come back (blocks reshard after forward, the root keeps its weights for backward).
    Plain modules pass through; a DDP wrapper is unwrapped (its replicas are already full)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    fsdp = [m for m in inner.modules() if isinstance(m, FSDPModule)]
    for module in fsdp:
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield inner
    finally:
        for module in fsdp:
            module.reshard()
            module.set_reshard_after_forward(module is not inner, recurse=False)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) ids left-padded with pad_token_id and the (B, P) bool mask of real tokens."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = True
    return ids, mask


def _new_cache(model: nn.Module, batch: int, capacity: int, device: torch.device) -> KVCache:
    cfg = model.config
    if not isinstance(cfg, ModelConfig):
        raise TypeError(
            f"generate needs an olmo_trainer Transformer (with a ModelConfig), got {type(model).__name__}"
        )
    return KVCache(
        batch=batch,
        n_layers=cfg.n_layers,
        n_kv_heads=cfg.kv_heads,
        head_dim=cfg.dim_head,
        capacity=capacity,
        device=device,
    )


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling,
    *,
    eos_token_id: int,
    pad_token_id: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    return_logits: bool = False,
) -> Rollout:
    """Sample a response for every prompt (a `Transformer`, or one wrapped by FSDP2 or DDP).

    Returns a `Rollout` on the model's device. `use_cache=False` recomputes the whole sequence for
    every new token (same tokens, O(N^2) work): the baseline of the throughput benchmark. Raises
    ValueError on an empty prompt. Collective under FSDP2 (see `full_weights`).
    """
    with full_weights(model) as inner:
        device = next(inner.parameters()).device
        prompt_ids, prompt_mask = left_pad(prompts, pad_token_id)
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        B, P, N = prompt_ids.shape[0], prompt_ids.shape[1], sampling.max_new_tokens
        responses = torch.full((B, N), pad_token_id, dtype=torch.long, device=device)
        response_mask = torch.zeros((B, N), dtype=torch.bool, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        chosen_logits: list[torch.Tensor] = []

        cache = _new_cache(inner, B, P + N, device)
        cache.append(prompt_mask)
        logits = inner(prompt_ids, cache=cache)[:, -1]  # (B, V) prefill
        steps = 0
        for t in range(N):
            if return_logits:
                chosen_logits.append(logits.float())
            token = choose_tokens(logits, sampling, vocab_size=vocab_size, generator=generator)
            live = ~done
            responses[:, t] = torch.where(live, token, pad_token_id)
            response_mask[:, t] = live
            done = done | (live & (token == eos_token_id))
            steps = t + 1
            if bool(done.all()) or steps == N:
                break
            if use_cache:
                cache.append(live[:, None])
                logits = inner(responses[:, t : t + 1], cache=cache)[:, -1]
            else:  # recompute everything: the prompt and every response token so far
                full = _new_cache(inner, B, P + steps, device)
                full.append(torch.cat((prompt_mask, response_mask[:, :steps]), dim=1))
                logits = inner(torch.cat((prompt_ids, responses[:, :steps]), dim=1), cache=full)[:, -1]
    return Rollout(
        prompts=prompt_ids,
        prompt_mask=prompt_mask,
        responses=responses[:, :steps],
        response_mask=response_mask[:, :steps],
        stopped=done,
        logits=torch.stack(chosen_logits, dim=1) if return_logits else None,
    )
