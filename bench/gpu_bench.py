"""GPU throughput of the real training step: OLMo 2 1B, bf16, FSDP2, torch.compile, seq 4096.

Runs `olmo_trainer.train.train_step` (the loop's own step: forward, z-loss, backward, clip, AdamW)
on random tokens, so it measures the model and the parallel wrapping, not the data pipeline.
World size comes from torchrun (default: one process, world 1). Reports tokens/s per GPU and MFU
(FLOPs per token from ModelConfig.flops_per_token; peak 989.5 TFLOP/s bf16 for H100/H200), writes
JSON to $OUT/gpu_bench.json (or bench/results/gpu_bench.json) and prints a markdown row for
bench/RESULTS.md. Meant to finish well inside 8 minutes on one H200 (compile included).

    bash bench/gpu_bench.sh                          # the prepared GPU run (checks imports first)
    python bench/gpu_bench.py --smoke                # CPU: tiny preset, seq 64, 2 steps (a test runs it)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer"))  # runnable from a checkout without installing the package

import torch

from olmo_trainer.build import build_model, seed_everything
from olmo_trainer.config import BatchConfig, ModelConfig, OptimConfig, ParallelConfig, TrainConfig
from olmo_trainer.distributed import init_distributed
from olmo_trainer.objectives.lm import LMObjective
from olmo_trainer.optim import build_optimizer
from olmo_trainer.tracking import mfu, peak_flops
from olmo_trainer.train import train_step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="olmo2-1b")
    parser.add_argument("--seq", type=int, default=4096, help="sequence length")
    parser.add_argument("--micro-batch", type=int, default=4, help="instances per GPU per step")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation happens here)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--strategy", choices=["fsdp", "ddp"], default="fsdp")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--ac", action="store_true", help="activation checkpointing")
    parser.add_argument("--smoke", action="store_true", help="CPU check: tiny preset, seq 64, 1+2 steps")
    parser.add_argument("--out", help="JSON result path (default $OUT/gpu_bench.json or bench/results/)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.seq, args.micro_batch, args.warmup, args.steps = "tiny", 64, 2, 1, 2
    return args


def bench_config(args: argparse.Namespace, world: int) -> TrainConfig:
    model = ModelConfig.preset(args.preset, max_sequence_length=max(args.seq, 64))
    cuda = torch.cuda.is_available()
    return TrainConfig(
        run="gpu-bench",
        phase="bench",
        kind="pretrain",
        seed=0,
        model=model,
        optim=OptimConfig(lr=3e-4),
        batch=BatchConfig(global_batch_size=args.micro_batch * world, micro_batch_size=args.micro_batch),
        max_steps=args.warmup + args.steps,
        parallel=ParallelConfig(
            strategy=args.strategy,
            precision="bf16",
            compile=cuda and not args.no_compile,  # CPU inductor needs a compiler and minutes: GPU only
            activation_checkpointing=args.ac,
        ),
        save_dir=tempfile.gettempdir(),
    )


def output_path(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_bench.json"
    return REPO / "bench" / "results" / "gpu_bench.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = init_distributed()
    cfg = bench_config(args, info.world_size)
    seed_everything(cfg.seed, info.device)
    started = time.perf_counter()
    model = build_model(cfg, info)
    optimizer = build_optimizer(model, cfg.optim, lr=3e-4)
    objective = LMObjective(cfg)
    objective.device = info.device
    generator = torch.Generator().manual_seed(info.rank)
    vocab = cfg.model.vocab_size

    def batch() -> list[torch.Tensor]:
        return [torch.randint(0, vocab, (args.micro_batch, args.seq), generator=generator)]

    times, losses = [], []
    for index in range(args.warmup + args.steps):
        if info.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step = train_step(model, optimizer, objective, batch(), cfg=cfg, info=info, lr=3e-4)  # .item() syncs
        elapsed = time.perf_counter() - t0
        ce = step.sums["ce"] * info.world_size / step.denominator  # this rank's mean CE
        losses.append(ce)
        if index >= args.warmup:
            times.append(elapsed)
        if info.rank == 0:
            print(f"step {index + 1}: {elapsed * 1000:.0f} ms loss {ce:.3f}", flush=True)
    median = statistics.median(times)
    tokens_per_s_gpu = args.micro_batch * args.seq / median
    device_name = torch.cuda.get_device_name(info.device) if info.is_cuda else "cpu"
    flops = cfg.model.flops_per_token(args.seq)
    result = {
        "date": dt.date.today().isoformat(),
        "device": device_name,
        "world_size": info.world_size,
        "torch": torch.__version__,
        "preset": args.preset,
        "params": cfg.model.num_params(),
        "seq": args.seq,
        "micro_batch": args.micro_batch,
        "strategy": args.strategy,
        "compile": cfg.parallel.compile,
        "activation_checkpointing": args.ac,
        "precision": "bf16" if info.is_cuda else "fp32",
        "flops_per_token": flops,
        "step_ms_median": median * 1000,
        "tokens_per_s_per_gpu": tokens_per_s_gpu,
        "mfu": mfu(tokens_per_s_gpu, flops, peak_flops(device_name if info.is_cuda else None), 1),
        "max_memory_gib": torch.cuda.max_memory_allocated(info.device) / 2**30 if info.is_cuda else None,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "wall_s": time.perf_counter() - started,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    if info.rank == 0:
        path = output_path(args)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        mfu_text = f"{result['mfu'] * 100:.1f}%" if result["mfu"] is not None else "n/a"
        print(json.dumps(result, indent=2))
        print(
            "| date | device | preset | seq | micro batch | compile | AC | tokens/s/GPU | MFU | step ms | "
            "peak GiB |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        memory = f"{result['max_memory_gib']:.1f}" if result["max_memory_gib"] is not None else "n/a"
        print(
            f"| {result['date']} | {device_name} x{info.world_size} | {args.preset} | {args.seq} | "
            f"{args.micro_batch} "
            f"| {cfg.parallel.compile} | {args.ac} | {tokens_per_s_gpu:,.0f} | {mfu_text} | "
            f"{median * 1000:.0f} | {memory} |"
        )
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
