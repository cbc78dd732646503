"""Proof of post-training: held-out accuracy of the tiny recipe after soup (base), SFT and DPO.

Runs `olmorun local examples/olmorun-tiny.yaml` (pretrain -> anneal x2 -> soup -> sft -> dpo; rlvr is
refused) unless `--workdir` already holds a finished run, then reads each phase's final evaluation from
its metrics.jsonl (`eval/<task>/<metric>`, written by the phase itself) and DPO's reward margin at its
first and last steps, and prints a Markdown table (appended to bench/RESULTS.md with --record).

    .venv/bin/python bench/bench_post.py --record
    .venv/bin/python bench/bench_post.py --workdir .olmorun-demo      # a finished `make demo`
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("soup", "sft", "dpo")


def metrics(workdir: Path, phase: str) -> list[dict[str, Any]]:
    path = workdir / "storage" / "default" / "olmo2-tiny" / "phases" / phase / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_eval(rows: list[dict[str, Any]]) -> dict[str, float]:
    found: dict[str, float] = {}
    for row in rows:
        found.update({k: v for k, v in row.items() if k.startswith("eval/")})
    return found


def table(workdir: Path) -> str:
    evals = {phase: final_eval(metrics(workdir, phase)) for phase in PHASES}
    keys = sorted({k for e in evals.values() for k in e if not k.endswith("/count")})
    lines = [
        "| metric | " + " | ".join(f"after {p}" for p in PHASES) + " |",
        "|---" * (len(PHASES) + 1) + "|",
    ]
    for key in keys:
        lines.append(
            f"| {key} | " + " | ".join(f"{evals[p].get(key, float('nan')):.4f}" for p in PHASES) + " |"
        )
    dpo = [r for r in metrics(workdir, "dpo") if "rewards/margin" in r]
    sft = [r for r in metrics(workdir, "sft") if "loss" in r]
    lines.append("")
    lines.append(
        f"SFT loss (CE per assistant token) step 1 -> {len(sft)}: {sft[0]['loss']:.4f} -> "
        f"{sft[-1]['loss']:.4f}. "
        f"DPO rewards/margin step 1 -> {len(dpo)}: {dpo[0]['rewards/margin']:.4f} -> "
        f"{sum(r['rewards/margin'] for r in dpo[-10:]) / min(10, len(dpo)):.4f} (mean of the last 10 steps); "
        f"rewards/accuracy {sum(r['rewards/accuracy'] for r in dpo[-10:]) / min(10, len(dpo)):.3f}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / ".olmorun-bench-post")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args(argv)
    elapsed = None
    if not (
        args.workdir / "storage" / "default" / "olmo2-tiny" / "phases" / "dpo" / "metrics.jsonl"
    ).exists():
        started = time.perf_counter()
        olmorun = [sys.executable, "-m", "olmo_operator.cli", "local", "examples/olmorun-tiny.yaml"]
        code = subprocess.run([*olmorun, "--workdir", str(args.workdir)], cwd=ROOT, check=False).returncode
        elapsed = time.perf_counter() - started
        if code != 0:
            return code
    text = table(args.workdir)
    print(text)
    if args.record:
        took = f"; the whole recipe took {elapsed / 60:.1f} min" if elapsed else ""
        section = (
            f"\n## bench_post: held-out accuracy of the tiny recipe ({dt.date.today().isoformat()})\n\n"
            f"`.venv/bin/python bench/bench_post.py --record` (2 CPU cores, shared{took}). Tasks: `arith` = "
            "greedy "
            "answers to 200 held-out word problems (last number must match); `arith-mc` = the same kind of "
            "question as 4-way multiple choice (acc / acc_norm); `heldout-lm` = perplexity of an unseen "
            "synthetic "
            "corpus.\n\n" + text + "\n"
        )
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
