"""Rollout throughput on CPU: `generate` with and without the KV cache (issue 10, item 8).

The complexity argument. Response token t (t = 0 .. N-1) after a prompt of P tokens is drawn from a
forward over P + t tokens. Without the cache every one of those forwards is run in full: sum_t (P + t)
token-forwards, each ~2 x (non-embedding params) FLOPs in the linear layers plus attention over its
causal prefix, O(N^2) in all. With the cache the prompt runs once (prefill) and each later step runs
ONE token per row against the cached keys/values: P + N - 1 token-forwards, O(N). The promised factor
is the ratio of the two FLOP counts (`forward_flops`, exact for our model: linear layers, LM head and
attention); at P=16, N=128 it is ~71x from the linear layers alone.

Wall-clock follows FLOPs only where both paths compute at the same rate. They do not on a CPU: a
decode step multiplies B rows by every weight matrix (a skinny, memory-bound GEMM) where the
recomputation multiplies B x (P + t) rows, and a decode step has fixed costs (Python, op dispatch,
sampling, the cache's mask) that do not shrink with it. So the measured factor is the promised one
times (cached GFLOP/s) / (recompute GFLOP/s); the table prints both rates. The factor approaches the
promise as the batch grows (B=64 here); a 0.2M-parameter `tiny` model is overhead-bound throughout.

The machine's ceiling. The FLOP count also misses what a decode step must read: every cached key and
value, B x (P + t) x 2 x KV x D floats per layer, so the cached path still moves O(N^2) bytes in all.
The bench therefore measures a floor under the cached path's time on this machine: the prefill, plus
per decode step the model's matrix multiplies alone (every `nn.Linear` on its own weights at B rows,
back to back, with the kernel the model calls), plus the cache's bytes read at the best streaming
bandwidth this thread reaches (`read_bandwidth`). Nothing else (norms, RoPE, softmax, sampling,
dispatch) is charged, so no implementation that multiplies with these kernels and reads its cache
once can beat the floor, unless it overlaps the cache reads with the multiplies. `machine
ceiling` = measured no-cache time / floor: the most the cache can win here. Where it is below the
promise, the promise cannot be reached on this machine by any code of ours around these kernels.

    .venv/bin/python bench/bench_generate.py                      # appends a section to bench/RESULTS.md
    .venv/bin/python bench/bench_generate.py --batch 16 64 --no-append

Rows never stop early (no EOS is possible), so both runs generate batch x new-tokens tokens. Every
time is CPU time of this process (`time.process_time`, one torch thread), not wall-clock: on a shared
machine the no-cache run (minutes) and the cached run (seconds) see different neighbours, and the
wall-clock ratio of the two measured the neighbours as much as the cache.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from olmo_trainer.config import ModelConfig
from olmo_trainer.generate import Sampling, generate
from olmo_trainer.model import Transformer

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def sequence_flops(cfg: ModelConfig, length: int) -> int:
    """Forward FLOPs of one full causal pass over `length` tokens (position i attends i + 1 keys).

    Per token: a third of the training FLOPs of `ModelConfig.flops_per_token` (2 x non-embedding
    params + 4 L H D x keys attended) — forward only, at that token's own context length."""
    return sum(cfg.flops_per_token(i + 1) // 3 for i in range(length))


def forward_flops(cfg: ModelConfig, prompt: int, new: int) -> tuple[int, int]:
    """(FLOPs without the cache, FLOPs with it) to sample `new` tokens after `prompt` tokens."""
    full = sum(sequence_flops(cfg, prompt + t) for t in range(new))
    cached = sequence_flops(cfg, prompt) + sum(cfg.flops_per_token(prompt + t) // 3 for t in range(1, new))
    return full, cached


def best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    """Fastest of `repeats` timed calls of `fn()` after one warm-up call, in CPU seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def decode_matmul_seconds(model: Transformer, batch: int) -> float:
    """Seconds of one decode step's matrix multiplies alone: every `nn.Linear` of the model, in the
    model's order and on its own weight tensors, applied to `batch` rows by the kernel the model calls
    (F.linear -> MKL), back to back (best of 5 steps). The weights are exactly as cold as in a real
    step (a model larger than the last-level cache is streamed from memory every step); dispatch of
    everything else, and the cache reads that evict the weights further, are not charged."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    rows = {m.in_features: torch.randn(batch, m.in_features) for m in linears}

    def step() -> None:
        for module in linears:
            F.linear(rows[module.in_features], module.weight)

    with torch.no_grad():
        return best_of(step)


def read_bandwidth(megabytes: int = 512) -> float:
    """Best-case memory read bandwidth of this thread in bytes/s: a sum over a buffer far larger than
    the last-level cache (one sequential stream, the easiest pattern for the prefetchers)."""
    buffer = torch.ones(megabytes * 2**20 // 4)
    return buffer.numel() * 4 / best_of(buffer.sum, repeats=3)


def cache_bytes_read(cfg: ModelConfig, batch: int, prompt: int, new: int) -> int:
    """Bytes of cached keys and values a cached generation reads (fp32): decode step t attends over
    P + t keys in every layer, each key and value KV x D floats per row."""
    per_position = batch * 2 * cfg.kv_heads * cfg.dim_head * 4 * cfg.n_layers
    return sum(per_position * (prompt + t) for t in range(1, new))


def prefill_seconds(model: Transformer, prompts: list[list[int]]) -> float:
    """Seconds of the prompt's forward that both paths start with (best of 3)."""
    return best_of(lambda: timed(model, prompts, 1, True), repeats=3)


def timed(model: Transformer, prompts: list[list[int]], new: int, use_cache: bool) -> float:
    start = time.process_time()
    rollout = generate(
        model,
        prompts,
        Sampling(max_new_tokens=new, temperature=1.0),
        eos_token_id=-1,
        pad_token_id=0,
        vocab_size=model.config.vocab_size,
        generator=torch.Generator().manual_seed(0),
        use_cache=use_cache,
    )
    elapsed = time.process_time() - start
    assert rollout.responses.shape == (len(prompts), new)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64], help="rows per generate call")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--kv-heads", type=int, default=None, help="key/value heads (GQA); default: one per query head"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig.preset(
        "tiny",
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.d_model // 64,
        n_kv_heads=args.kv_heads,
        mlp_hidden=None,
        vocab_size=4096,
        embedding_size=4096,
        max_sequence_length=args.prompt + args.new_tokens,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    full_flops, cached_flops = forward_flops(cfg, args.prompt, args.new_tokens)
    promised = full_flops / cached_flops
    forwards = sum(args.prompt + t for t in range(args.new_tokens)) / (args.prompt + args.new_tokens - 1)
    bandwidth = read_bandwidth()
    rows = []
    for batch in args.batch:
        gen = torch.Generator().manual_seed(1)
        prompts = torch.randint(2, cfg.vocab_size, (batch, args.prompt), generator=gen).tolist()
        timed(model, prompts, 4, True)  # warm-up (allocator, kernels)
        cached = timed(model, prompts, args.new_tokens, True)
        full = timed(model, prompts, args.new_tokens, False)
        produced = batch * args.new_tokens
        matmuls = decode_matmul_seconds(model, batch)
        cache_read = cache_bytes_read(cfg, batch, args.prompt, args.new_tokens) / bandwidth
        floor = prefill_seconds(model, prompts) + (args.new_tokens - 1) * matmuls + cache_read
        rows.append(
            f"| {batch} | {full:.2f} | {produced / full:,.1f} | {batch * full_flops / full / 1e9:.1f} | "
            f"{cached:.2f} | {produced / cached:,.1f} | {batch * cached_flops / cached / 1e9:.1f} | "
            f"**{full / cached:.1f}x** | {full / cached / promised:.0%} | "
            f"{(args.new_tokens - 1) * matmuls:.2f} + {cache_read:.2f} | {full / floor:.1f}x | "
            f"{full / cached / (full / floor):.0%} |"
        )
        print(rows[-1], flush=True)
    command = (
        f"`.venv/bin/python bench/bench_generate.py --new-tokens {args.new_tokens} --prompt {args.prompt} "
        f"--batch {' '.join(map(str, args.batch))} --d-model {args.d_model} --layers {args.layers} "
        f"--threads {args.threads}" + (f" --kv-heads {args.kv_heads}`" if args.kv_heads else "`")
    )
    load = os.getloadavg()[0]
    lines = [
        f"## bench_generate: rollout tokens/s with and without the KV cache, CPU "
        f"({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"{command}  ",
        f"Machine: {platform.processor() or platform.machine()}, {args.threads} torch thread(s) on 2 shared "
        "cores "
        f"(load average {load:.1f} at the end), fp32, times in CPU seconds. Model: d_model {args.d_model}, "
        f"{args.layers} layers, "
        f"vocab 4096, {cfg.n_heads} query / {cfg.kv_heads} key-value heads ({cfg.num_params() / 1e6:.1f}M "
        "params). "
        f"P={args.prompt} prompt tokens, N={args.new_tokens} new tokens per row. "
        f"Measured read bandwidth: {bandwidth / 1e9:.1f} GB/s.",
        "",
        f"Promised by the complexity: {promised:.1f}x fewer forward FLOPs with the cache "
        f"({forwards:.1f}x fewer token-forwards; attention adds the rest).",
        "",
        "| batch | no cache s | tokens/s | GFLOP/s | KV cache s | tokens/s | GFLOP/s | speed-up | of "
        "promised "
        "| floor: decode matmuls + cache reads s | machine ceiling | of ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        with RESULTS.open("a") as stream:
            stream.write("\n" + text)


if __name__ == "__main__":
    main()
