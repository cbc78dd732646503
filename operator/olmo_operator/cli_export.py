"""`olmorun export-hf CHECKPOINT OUT [--tokenizer DIR]`: a committed checkpoint as a transformers folder.

The checkpoint is verified against its MANIFEST first (every file re-hashed); its config.json (the
TrainConfig the job ran, written into every checkpoint) gives the model shape. The weights are
consolidated in this process and written by `olmo_trainer.export.to_hf` as an `Olmo2ForCausalLM`
directory that `transformers.AutoModelForCausalLM.from_pretrained(OUT)` loads. Tokenizer files come
from `--tokenizer DIR`, else from the checkpoint's own `tokenizer/` folder when it has one.

torch and the trainer are imported inside the handler only, so `olmorun` starts without them.

    olmorun export-hf s3://bucket/ns/run/archive/soup/step12000 ./olmo2-7b-hf --tokenizer ./dolma2-tokenizer
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from olmo_operator.cli import UserError
from olmo_trainer import manifest, storage
from olmo_trainer.config import TrainConfig

DTYPES = ("float32", "bfloat16", "float16")
TOKENIZER_DIR = "tokenizer"


def register(sub: Any) -> None:
    export = sub.add_parser(
        "export-hf", help="write a committed checkpoint as a Hugging Face Olmo2ForCausalLM folder"
    )
    export.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="committed stepN/ directory, or a directory of steps (its latest committed); path or fsspec URL",
    )
    export.add_argument(
        "out", metavar="OUT", help="output directory (path or fsspec URL); must not hold an export"
    )
    export.add_argument("--tokenizer", metavar="DIR", help="tokenizer files to copy beside the weights")
    export.add_argument("--dtype", choices=DTYPES, help="convert the weights (default: as stored)")
    export.add_argument(
        "--config",
        metavar="URI",
        help="TrainConfig JSON for the model shape when the checkpoint has no config.json",
    )
    export.set_defaults(func=cmd_export_hf)


def _filesystem(uri: str) -> tuple[Any, str]:
    try:
        return storage.filesystem(uri)
    except (ValueError, ImportError) as error:
        raise UserError(f"cannot open {uri}: {error}") from None


def _read_train_config(uri: str) -> TrainConfig:
    fs, path = _filesystem(uri)
    try:
        return TrainConfig.model_validate_json(fs.cat_file(path))
    except FileNotFoundError:
        raise UserError(f"{uri} does not exist") from None
    except ValidationError as error:
        raise UserError(f"{uri} is not a valid TrainConfig: {error}") from None


def checkpoint_argument(uri: str) -> str:
    """The checkpoint a command's CHECKPOINT argument means (manifest.resolve_checkpoint, the rule
    `olmorun verify` follows too). Raises UserError when it is no checkpoint at all."""
    fs, path = _filesystem(uri)
    try:
        return manifest.resolve_checkpoint(fs, path, uri).uri
    except manifest.NotACheckpointError as error:
        raise UserError(str(error)) from None


def resolve_inputs(args: argparse.Namespace) -> tuple[TrainConfig, str | None]:
    """Verify the checkpoint and find its model config and tokenizer. Raises UserError for any problem."""
    fs, path = _filesystem(args.checkpoint)
    report = manifest.verify(fs, path, uri=args.checkpoint)
    if not report.ok:
        raise UserError(report.summary())
    config_uri = args.config or f"{args.checkpoint.rstrip('/')}/config.json"
    if args.config is None and not fs.exists(f"{path.rstrip('/')}/config.json"):
        raise UserError(
            f"{args.checkpoint} has no config.json: pass --config with the TrainConfig it was trained with"
        )
    config = _read_train_config(config_uri)
    tokenizer = args.tokenizer
    if tokenizer is None and fs.isdir(f"{path.rstrip('/')}/{TOKENIZER_DIR}"):
        tokenizer = f"{args.checkpoint.rstrip('/')}/{TOKENIZER_DIR}"
    elif tokenizer is not None:
        tok_fs, tok_path = _filesystem(tokenizer)
        if not tok_fs.isdir(tok_path):
            raise UserError(f"--tokenizer {tokenizer} is not a directory")
    out_fs, out_path = _filesystem(args.out)
    if out_fs.exists(f"{out_path.rstrip('/')}/config.json"):
        raise UserError(f"{args.out} already holds an export; choose an empty directory")
    return config, tokenizer


def cmd_export_hf(args: argparse.Namespace) -> int:
    """`olmorun export-hf`. Raises UserError when the checkpoint, its config or the tokenizer is unusable."""
    args.checkpoint = checkpoint_argument(args.checkpoint)
    config, tokenizer = resolve_inputs(args)
    import torch

    from olmo_trainer.checkpoint import CheckpointError, load_model_weights
    from olmo_trainer.export import to_hf
    from olmo_trainer.model import Transformer

    with torch.device("meta"):
        model = Transformer(config.model)
    model.to_empty(device="cpu")  # every parameter is overwritten by the checkpoint: skip the init
    try:
        load_model_weights(args.checkpoint, model)
    except CheckpointError as error:
        raise UserError(f"{error} (model from {args.config or 'its config.json'})") from None
    to_hf(model, args.out, tokenizer_dir=tokenizer, dtype=getattr(torch, args.dtype) if args.dtype else None)
    print(f"exported {args.checkpoint} ({config.model.num_params():,} params) to {args.out}")
    return 0
