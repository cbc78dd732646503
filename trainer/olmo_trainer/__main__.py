"""`python -m olmo_trainer <kind> --config URI [--dry-run]`: the command every training job runs.

    torchrun --nproc_per_node=8 -m olmo_trainer pretrain --config s3://bucket/run/phases/pretrain/config.json

`pretrain`, `anneal`, `sft`, `dpo` and `rlvr` run the one loop of train.py with their objective
(objectives/; rlvr: GRPO or PPO, generating its rollouts inside the job), `soup` averages checkpoints
(soup.py), `eval` evaluates a checkpoint (evaluate.py). `--dry-run` prints the resolved config, parameter
count, FLOPs per token and tokens per step, and trains nothing. A bad command line or config exits 2 with a
message; a job that cannot succeed by retrying (it diverged, its config or data cannot train, no checkpoint
to resume from is intact) also writes `<save_dir>/failure.json` (failure.py) so that the operator does
not retry it, and exits 5 (2 for a config problem). Only the typed errors of errors.py decide that a
config or its data cannot train (ConfigurationError, DataError); a storage fault (StorageError) exits 1
with one line, and any other exception is a crash (exit 1, traceback): the operator retries both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TypeVar, get_args

from pydantic import ValidationError

from olmo_trainer import soup
from olmo_trainer.config import EvalJobConfig, PhaseKind, TrainConfig
from olmo_trainer.errors import ConfigurationError, DataError, StorageError
from olmo_trainer.evaluate import run_eval_job
from olmo_trainer.failure import Failure, PermanentFailure, record_failure
from olmo_trainer.layout import EXIT_FAILED, EXIT_PERMANENT, EXIT_USAGE, plan_steps
from olmo_trainer.storage import open_uri
from olmo_trainer.train import train

COMMANDS = (*get_args(PhaseKind), "eval")
"""What the command runs: a phase of any kind (config.PhaseKind), or an evaluation."""
ConfigT = TypeVar("ConfigT", TrainConfig, EvalJobConfig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m olmo_trainer", description="Run one phase of an OLMo 2 recipe."
    )
    parser.add_argument("kind", choices=COMMANDS, help="the phase kind (must match the config's), or eval")
    parser.add_argument(
        "--config",
        required=True,
        metavar="URI",
        help="TrainConfig JSON (eval: EvalJobConfig): a path or fsspec URL",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would run and exit")
    return parser


def read_config(uri: str, model: type[ConfigT], what: str = "config") -> ConfigT | int:
    """The `model` JSON at `uri` (a local path or an fsspec URL), validated; or, when it does not exist or
    is invalid, EXIT_USAGE after saying so on stderr (`what` names the config in the message)."""
    try:
        with open_uri(uri, "rb") as stream:
            return model.model_validate_json(stream.read())
    except FileNotFoundError:
        print(f"olmo_trainer: config {uri} does not exist", file=sys.stderr)
    except ValidationError as error:
        print(f"olmo_trainer: {what} {uri} is invalid:\n{error}", file=sys.stderr)
    return EXIT_USAGE


def dry_run(cfg: TrainConfig) -> dict[str, object]:
    """What a job would do, computed without torch.distributed (world size from WORLD_SIZE, default 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    summary: dict[str, object] = {
        "config": cfg.model_dump(mode="json", by_alias=True),
        "configHash": cfg.config_hash(),
        "numParams": cfg.model.num_params(),
        "numNonEmbeddingParams": cfg.model.num_non_embedding_params(),
    }
    if cfg.kind in ("pretrain", "anneal"):
        plan = plan_steps(cfg, world)
        summary.update(
            worldSize=world,
            flopsPerToken=plan.flops_per_token,
            tokensPerStep=plan.tokens_per_step,
            gradientAccumulation=plan.accumulation,
            totalSteps=plan.total_steps,
            totalTokens=plan.total_tokens,
        )
    return summary


def run_eval(uri: str) -> int:
    """`eval --config URI`: an EvalJobConfig; prints the results as JSON."""
    cfg = read_config(uri, EvalJobConfig, "eval config")
    if isinstance(cfg, int):
        return cfg
    try:
        results = run_eval_job(cfg)
    except (ConfigurationError, DataError, FileNotFoundError) as error:
        print(f"olmo_trainer eval: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(results, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.kind == "eval":
        return run_eval(args.config)
    cfg = read_config(args.config, TrainConfig)
    if isinstance(cfg, int):
        return cfg
    if cfg.kind != args.kind:
        print(
            f"olmo_trainer: the command says {args.kind} but the config is a {cfg.kind} phase",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        if args.dry_run:
            print(json.dumps(dry_run(cfg), indent=2))
            return 0
        if cfg.kind == "soup":
            return soup.main(cfg)
        return train(cfg)
    except PermanentFailure as error:  # diverged, no intact checkpoint: recorded so it is not retried
        return give_up(cfg, error.failure, error, EXIT_PERMANENT)
    except (ConfigurationError, DataError) as error:  # only these typed errors say the config cannot train
        return give_up(cfg, Failure("InvalidConfig", str(error)), error, EXIT_USAGE)
    except StorageError as error:  # transient: no record, a failed attempt that the operator retries
        print(f"olmo_trainer {cfg.kind}: {error} (a storage fault: the job is retried)", file=sys.stderr)
        return EXIT_FAILED
    # Anything else is a crash: its traceback, exit 1, and the operator retries the job (errors.py).


def give_up(cfg: TrainConfig, failure: Failure, error: Exception, code: int) -> int:
    """End a job that retrying cannot fix: `<save_dir>/failure.json` (so the operator does not retry it),
    the error on stderr, and `code` (EXIT_PERMANENT, or EXIT_USAGE for a config that cannot train)."""
    record_failure(cfg.save_dir, failure)
    print(f"olmo_trainer {cfg.kind}: {error}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
