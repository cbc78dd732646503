"""Rollout throughput on CPU: `generate` with and without the KV cache (issue 10, item 8).

Without the cache every new token re-runs the prompt and the whole response so far: a response of N
tokens after a prompt of P costs sum_{t<N} (P + t) token-forwards; with the cache it costs P + N
(one prefill, then one token per step). The "promised" factor printed is that ratio, the work the
cache removes from the linear layers (attention is quadratic in both cases and small here). The
measured factor falls short of it where a one-token forward is dominated by per-call overhead rather
than arithmetic, which is why the model here is larger than `tiny`.

    .venv/bin/python bench/bench_generate.py                 # appends a section to bench/RESULTS.md
    .venv/bin/python bench/bench_generate.py --new-tokens 32 --no-append

Rows never stop early (no EOS is possible), so both runs generate batch x new-tokens tokens.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from pathlib import Path

import torch

from olmo_trainer.config import ModelConfig
from olmo_trainer.generate import Sampling, generate
from olmo_trainer.model import Transformer

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def promised_factor(prompt: int, new: int) -> float:
    """Token-forwards without the cache / with it: sum_{t<N}(P + t) / (P + N)."""
    return (new * prompt + new * (new - 1) / 2) / (prompt + new)


def timed(model: Transformer, prompts: list[list[int]], new: int, use_cache: bool) -> float:
    start = time.perf_counter()
    rollout = generate(
        model, prompts, Sampling(max_new_tokens=new, temperature=1.0),
        eos_token_id=-1, pad_token_id=0, vocab_size=model.config.vocab_size,
        generator=torch.Generator().manual_seed(0), use_cache=use_cache,
    )
    elapsed = time.perf_counter() - start
    assert rollout.responses.shape == (len(prompts), new)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=32, help="prompt length in tokens")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig.preset(
        "tiny", d_model=args.d_model, n_layers=args.layers, n_heads=args.d_model // 64,
        mlp_hidden=None, vocab_size=4096, embedding_size=4096,
        max_sequence_length=args.prompt + args.new_tokens, eos_token_id=1, pad_token_id=0,
    )
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(2, cfg.vocab_size, (args.batch, args.prompt), generator=gen).tolist()
    timed(model, prompts, 4, True)  # warm-up (allocator, kernels)
    cached = timed(model, prompts, args.new_tokens, True)
    full = timed(model, prompts, args.new_tokens, False)
    produced = args.batch * args.new_tokens
    promised = promised_factor(args.prompt, args.new_tokens)
    lines = [
        f"## bench_generate: rollout tokens/s with and without the KV cache, CPU "
        f"({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"`.venv/bin/python bench/bench_generate.py --new-tokens {args.new_tokens} --prompt {args.prompt} "
        f"--batch {args.batch} --d-model {args.d_model} --layers {args.layers} --threads {args.threads}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {args.threads} torch threads (2 shared cores), "
        f"fp32. Model: d_model {args.d_model}, {args.layers} layers, vocab 4096 "
        f"({cfg.num_params() / 1e6:.1f}M params).",
        "",
        "| path | seconds | rollout tokens/s |",
        "|---|---|---|",
        f"| no cache (recompute the sequence per token) | {full:.2f} | {produced / full:,.1f} |",
        f"| KV cache (prefill + 1 token per step) | {cached:.2f} | {produced / cached:,.1f} |",
        "",
        f"Measured speed-up {full / cached:.1f}x; promised by the token-forward count "
        f"sum(P+t)/(P+N) = {promised:.1f}x at P={args.prompt}, N={args.new_tokens}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        with RESULTS.open("a") as stream:
            stream.write("\n" + text)


if __name__ == "__main__":
    main()
