"""Proof of RLVR on the tiny recipe: held-out accuracy base -> SFT -> DPO -> GRPO / PPO, and reward growth.

Runs examples/olmorun-tiny.yaml with `olmorun local` (pretrain -> anneal x2 -> soup -> sft -> dpo ->
rlvr with GRPO) plus one more phase, `rlvr-ppo`: the same RLVR settings from the same DPO model with
`algorithm: ppo`. Every phase from the soup on evaluates its final model on the held-out arithmetic
problems (greedy, last number = answer: eval/arith/accuracy). The table is base (soup), SFT, DPO,
GRPO and PPO; the RL rows also give the mean reward of the first and last quarter of their steps.

    .venv/bin/python bench/bench_rlvr.py                    # appends a section to bench/RESULTS.md
    .venv/bin/python bench/bench_rlvr.py --no-append --workdir /tmp/rlvr-proof
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TASK = "arith"
LABELS = {"soup": "base (soup)", "sft": "SFT", "dpo": "DPO", "rlvr": "GRPO", "rlvr-ppo": "PPO"}


def spec_with_ppo(path: Path) -> dict[str, Any]:
    """The tiny recipe plus a PPO twin of its rlvr phase (same data, budget, optimizer, evaluation)."""
    document = yaml.safe_load(path.read_text())
    phases = document["spec"]["phases"]
    grpo = next(p for p in phases if p["kind"] == "rlvr")
    ppo = copy.deepcopy(grpo)
    ppo["name"] = "rlvr-ppo"
    ppo["rlvr"]["algorithm"] = "ppo"
    phases.append(ppo)
    return document


def read_metrics(workdir: Path, phase: str) -> list[dict[str, Any]]:
    found = sorted(workdir.glob(f"storage/**/phases/{phase}/metrics.jsonl")) or sorted(
        workdir.glob(f"storage/**/phases/{phase}/s*/metrics.jsonl")
    )
    if not found:
        raise SystemExit(f"no metrics.jsonl for phase {phase!r} under {workdir}")
    return [json.loads(line) for line in found[0].read_text().splitlines() if line.strip()]


def summary(workdir: Path, phases: list[str]) -> list[tuple[str, float | None, str]]:
    rows = []
    for phase in phases:
        label = LABELS.get(phase, phase)
        metrics = read_metrics(workdir, phase)
        accuracy = next(
            (m[f"eval/{TASK}/accuracy"] for m in reversed(metrics) if f"eval/{TASK}/accuracy" in m), None
        )
        rewards = [m["rl/reward"] for m in metrics if "rl/reward" in m]
        note = ""
        if rewards:
            quarter = max(1, len(rewards) // 4)
            first, last = sum(rewards[:quarter]) / quarter, sum(rewards[-quarter:]) / quarter
            note = (
                f"mean reward {first:.2f} (first {quarter} steps) -> {last:.2f} (last {quarter}), "
                f"{len(rewards)} steps"
            )
        rows.append((label, accuracy, note))
    return rows


def chain(rows: list[tuple[str, float | None, str]]) -> str:
    """One line: the held-out accuracy stage by stage (the RL rows side by side, each compared with
    DPO) and whether it rises at every stage."""
    acc = {label: value for label, value, _ in rows}
    stages = [label for label in ("base (soup)", "SFT", "DPO") if label in acc]
    rl = [label for label in acc if label not in stages]

    def shown(label: str) -> str:
        value = acc[label]
        return f"{label} {value:.3f}" if value is not None else f"{label} n/a"

    text = " -> ".join([*map(shown, stages), *([" / ".join(map(shown, rl))] if rl else [])])
    known = {label: value for label, value in acc.items() if value is not None}
    pairs = list(itertools.pairwise(stages)) + [(stages[-1], label) for label in rl if stages]
    rises = len(known) == len(acc) and all(known[a] < known[b] for a, b in pairs)
    return (
        f"held-out accuracy: {text} ({'rises at every stage' if rises else 'does NOT rise at every stage'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "examples/olmorun-tiny.yaml"))
    parser.add_argument("--workdir", default=str(ROOT / ".olmorun-rlvr-proof"))
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="summarise an existing workdir, run nothing")
    parser.add_argument("--phases", default=",".join(LABELS), help="comma-separated phases of the table")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    start = time.monotonic()
    if not args.reuse:
        spec = workdir.with_suffix(".yaml")
        spec.write_text(yaml.safe_dump(spec_with_ppo(Path(args.spec)), sort_keys=False))
        olmorun = Path(sys.executable).with_name("olmorun")
        done = subprocess.run(
            [str(olmorun), "local", str(spec), "--workdir", str(workdir)], cwd=ROOT, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"olmorun local exited {done.returncode}")
    minutes = (time.monotonic() - start) / 60
    rows = summary(workdir, args.phases.split(","))
    stages = " -> ".join(label for label, _, _ in rows if label in ("base (soup)", "SFT", "DPO"))
    rl = [label for label, _, _ in rows if label not in ("base (soup)", "SFT", "DPO")]
    same = (
        " GRPO and PPO start from the same DPO model with the same data, steps and optimizer."
        if len(rl) > 1
        else ""
    )
    lines = [
        "## bench_rlvr: held-out accuracy of the tiny recipe, "
        f"{' -> '.join([stages, ' / '.join(rl)] if rl else [stages])} "
        f"({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"`.venv/bin/python bench/bench_rlvr.py` (2 shared CPU cores, 2 gloo processes; "
        f"{'summary of an existing run' if args.reuse else f'{minutes:.1f} min for the whole recipe'}). "
        f"Held-out set: examples/data/tiny-heldout.jsonl, greedy, eval/{TASK}/accuracy.{same}",
        "",
        "| model | held-out accuracy | RL training |",
        "|---|---|---|",
        *[f"| {label} | {'n/a' if acc is None else f'{acc:.3f}'} | {note} |" for label, acc, note in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    print(chain(rows))
    if not args.no_append:
        with RESULTS.open("a") as stream:
            stream.write("\n" + text)


if __name__ == "__main__":
    main()
