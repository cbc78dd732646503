"""CPU fp32 forward+backward step time: our Transformer vs transformers' Olmo2ForCausalLM vs OLMo-core.

The three models are built with the SAME shapes (OLMo 2 architecture: reordered norm, QK-norm, SwiGLU,
RoPE 500k) and run the same step: logits -> next-token cross-entropy -> backward. OLMo-core
(`ai2-olmo-core==3.0.0`) downgrades packages the project pins, so it lives in its own virtualenv,
`bench/.venv-olmocore` (created and installed by this script on first use), and its half runs in a
subprocess of that interpreter (`--worker olmocore`), which prints its timings as JSON.

    .venv/bin/python bench/bench_model_cpu.py                     # tiny and ~100M, appends to RESULTS.md
    .venv/bin/python bench/bench_model_cpu.py --shapes tiny --steps 5 --no-append

Ratios are other / ours: above 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
OLMOCORE_VENV = HERE / ".venv-olmocore"
OLMOCORE_PINS = ["ai2-olmo-core==3.0.0", "torch==2.13.0", "numpy==2.4.6"]

# name -> dims, batch and sequence length. `hidden` = round_up(int(8 d / 3), 256), OLMo 2's default.
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 64, "n_layers": 2, "n_heads": 4, "hidden": 256, "vocab": 384, "batch": 8, "seq": 128},
    "100m": {
        "d_model": 768,
        "n_layers": 12,
        "n_heads": 12,
        "hidden": 2048,
        "vocab": 16384,
        "batch": 2,
        "seq": 256,
    },
}


def time_steps(
    model: torch.nn.Module, logits_of: Any, shape: dict[str, int], warmup: int, steps: int
) -> list[float]:
    """Milliseconds per forward+backward step (after `warmup` untimed steps)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab"], (shape["batch"], shape["seq"]), generator=gen)
    times = []
    for i in range(warmup + steps):
        for p in model.parameters():
            p.grad = None
        start = time.perf_counter()
        logits = logits_of(model, ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return times


# --------------------------------------------------------------------------------------------- ours


def ours_and_hf(shape: dict[str, int], warmup: int, steps: int) -> dict[str, Any]:
    import transformers

    from olmo_trainer.config import ModelConfig
    from olmo_trainer.export import to_hf
    from olmo_trainer.model import Transformer

    cfg = ModelConfig(
        d_model=shape["d_model"],
        n_layers=shape["n_layers"],
        n_heads=shape["n_heads"],
        mlp_hidden=shape["hidden"],
        vocab_size=shape["vocab"],
        max_sequence_length=shape["seq"],
        eos_token_id=0,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    ours = Transformer(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        to_hf(ours, tmp)  # identical weights: the comparison is of the code, not of the init
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            tmp, dtype=torch.float32, attn_implementation="sdpa"
        )
    hf.config.use_cache = False
    return {
        "ours": {
            "ms": time_steps(ours, lambda m, x: m(x), shape, warmup, steps),
            "params": ours.num_params(),
        },
        "transformers": {
            "ms": time_steps(hf, lambda m, x: m(input_ids=x, use_cache=False).logits, shape, warmup, steps),
            "params": sum(p.numel() for p in hf.parameters()),
        },
    }


# ----------------------------------------------------------------------------------------- OLMo-core


def olmocore_worker(shape: dict[str, int], warmup: int, steps: int) -> dict[str, Any]:
    """Runs inside bench/.venv-olmocore: OLMo-core's OLMo 2 (reordered-norm, QK-norm) transformer."""
    from olmo_core.nn.transformer import TransformerBlockType, TransformerConfig

    config = TransformerConfig.llama_like(
        d_model=shape["d_model"],
        vocab_size=shape["vocab"],
        n_layers=shape["n_layers"],
        n_heads=shape["n_heads"],
        qk_norm=True,
        block_name=TransformerBlockType.reordered_norm,
        layer_norm_eps=1e-6,
        rope_theta=500_000,
        hidden_size_multiple_of=256,
    )
    torch.manual_seed(0)
    model = config.build(init_device="cpu")
    model.init_weights(device=torch.device("cpu"))
    ms = time_steps(model, lambda m, x: m(x), shape, warmup, steps)
    return {"ms": ms, "params": sum(p.numel() for p in model.parameters())}


def ensure_olmocore_venv() -> Path | None:
    """The OLMo-core interpreter, created and installed on first use; None when it cannot be."""
    python = OLMOCORE_VENV / "bin" / "python"
    check = [str(python), "-c", "import olmo_core, torch"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"installing {' '.join(OLMOCORE_PINS)} into {OLMOCORE_VENV} ...", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(OLMOCORE_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *OLMOCORE_PINS], check=True)
    except subprocess.CalledProcessError as error:
        print(f"cannot install OLMo-core: {error}", file=sys.stderr)
        return None
    return python


def run_olmocore(name: str, warmup: int, steps: int, threads: int) -> dict[str, Any] | None:
    python = ensure_olmocore_venv()
    if python is None:
        return None
    cmd = [str(python), __file__, "--worker", "olmocore", "--shapes", name, "--warmup", str(warmup)]
    cmd += ["--steps", str(steps), "--threads", str(threads)]
    # The worker must not see this venv's packages: a clean environment apart from the thread count.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        print(f"OLMo-core worker failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -------------------------------------------------------------------------------------------- report


def summarize(name: str, results: dict[str, Any]) -> list[str]:
    """Table rows; the ratio uses the fastest step of each, the least disturbed by a busy machine."""
    base = min(results["ours"]["ms"])
    shape = SHAPES[name]
    rows = []
    for impl in ("ours", "transformers", "olmo-core"):
        if not results.get(impl):
            rows.append(f"| {name} | {impl} | - | - | - | - | not run |")
            continue
        fastest, median = min(results[impl]["ms"]), statistics.median(results[impl]["ms"])
        tokens_per_s = shape["batch"] * shape["seq"] / (fastest / 1000)
        rows.append(
            f"| {name} | {impl} | {results[impl]['params']:,} | {fastest:.1f} | {median:.1f} | "
            f"{tokens_per_s:,.0f} | {fastest / base:.2f} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,100m", help="comma-separated: " + ",".join(SHAPES))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of the three implementations"
    )
    # One thread by default: on a shared 2-core machine a descheduled OpenMP worker stalls every matmul.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--worker", choices=["olmocore"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.shapes.split(",")
    if args.worker == "olmocore":
        print(json.dumps(olmocore_worker(SHAPES[names[0]], args.warmup, args.steps)))
        return 0
    lines = [
        "| shape | implementation | params | ms/step (min) | ms/step (median) | tokens/s (min) | time vs "
        "ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        # Rounds interleave the three implementations, so a change of load on the machine hits all alike.
        results: dict[str, Any] = {"ours": None, "transformers": None, "olmo-core": None}
        for _ in range(args.rounds):
            round_results = ours_and_hf(SHAPES[name], args.warmup, args.steps)
            round_results["olmo-core"] = run_olmocore(name, args.warmup, args.steps, args.threads)
            for impl, result in round_results.items():
                if result is None:
                    continue
                merged = results[impl] or {"ms": [], "params": result["params"]}
                merged["ms"] += result["ms"]
                results[impl] = merged
        lines += summarize(name, results)
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        command = "python bench/" + Path(__file__).name + " " + " ".join(sys.argv[1:])
        shapes = "; ".join(f"{n}: {SHAPES[n]}" for n in names)
        section = (
            f"\n## bench_model_cpu — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"`{command.strip()}` on {platform.machine()}, torch {torch.__version__}, {args.threads} "
            "threads, fp32. "
            f"Shapes (batch x seq): {shapes}.\n"
            "Step = forward + next-token cross-entropy + backward; "
            f"{args.rounds} interleaved rounds x {args.steps} timed steps; "
            "'time vs ours' compares the fastest steps, > 1 means ours is faster.\n\n"
            f"{table}\n"
        )
        append_results(section)
    return 0


def append_results(section: str) -> None:
    path = HERE / "RESULTS.md"
    if not path.exists():
        path.write_text("# Benchmark results\n\nEach section: the exact command, the date, the figures.\n")
    with path.open("a") as f:
        f.write(section)


if __name__ == "__main__":
    sys.exit(main())
