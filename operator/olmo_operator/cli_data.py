"""`olmorun data synth|prepare`: make token arrays for training, and chat sets for post-training.

    olmorun data synth OUT_DIR --kind general|math --tokens 1M --seed 0
    olmorun data synth OUT_DIR --kind chat --seed 0        # tiny-{sft,dpo,rlvr,heldout,mc}.jsonl
    olmorun data prepare docs/*.jsonl.gz --out DIR [--tokenizer tokenizer.json] [--dtype uint16|uint32]

`synth` writes a small deterministic byte-level corpus for the `tiny` preset (the same bytes a
`synthetic` data source materialises); `prepare` tokenizes Dolma-style JSONL documents. The trainer's
data package (numpy, tokenizers) is imported inside the handlers so that the CLI starts without it.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from olmo_operator.cli import UserError
from olmo_trainer.config import format_tokens, parse_tokens


def register(sub: Any) -> None:
    data = sub.add_parser("data", help="make token arrays: synthetic corpora or tokenized JSONL")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    synth = commands.add_parser(
        "synth", help="write a deterministic synthetic byte-level corpus (tiny preset)"
    )
    synth.add_argument("out_dir", metavar="OUT_DIR", help="directory for the .npy token array and index.json")
    synth.add_argument(
        "--kind",
        choices=("general", "math", "chat"),
        default="general",
        help="prose-like or arithmetic token arrays, or chat: arithmetic word problems as SFT, preference, "
        "RL and held-out JSONL sets",
    )
    synth.add_argument(
        "--tokens", default="1M", help="how many tokens, e.g. 1M or 500K (default: %(default)s)"
    )
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
    synth.set_defaults(func=cmd_synth)

    prep = commands.add_parser("prepare", help="tokenize Dolma-style JSONL(.gz) documents into token arrays")
    prep.add_argument("inputs", nargs="+", metavar="INPUT", help="JSONL files with a `text` field per line")
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument("--tokenizer", help="a local tokenizer.json (default: bytes 0..255, EOS 256)")
    prep.add_argument(
        "--dtype", choices=("uint16", "uint32"), help="token dtype (default: smallest that fits)"
    )
    prep.add_argument("--eos-token-id", type=int, help="EOS id when the tokenizer does not name one")
    prep.set_defaults(func=cmd_prepare)


def cmd_synth(args: argparse.Namespace) -> int:
    """`olmorun data synth`. Raises UserError for a bad --tokens or an output folder it cannot write."""
    if args.kind == "chat":
        return _synth_chat(args)
    from olmo_trainer.data.prepare import INDEX_FORMAT, write_index
    from olmo_trainer.data.synth import SYNTH_DTYPE, write_synthetic
    from olmo_trainer.data_record import BYTE_EOS, BYTE_VOCAB_SIZE

    try:
        num_tokens = parse_tokens(args.tokens)
    except ValueError as error:
        raise UserError(f"--tokens: {error}") from None
    if num_tokens == 0:
        raise UserError("--tokens: ask for at least one token")
    try:
        path = write_synthetic(args.out_dir, args.kind, num_tokens, args.seed)
    except OSError as error:
        raise UserError(f"cannot write to {args.out_dir}: {error.strerror or error}") from None
    index = {
        "format": INDEX_FORMAT,
        "tokenizer": "bytes",
        "vocab_size": BYTE_VOCAB_SIZE,
        "eos_token_id": BYTE_EOS,
        "dtype": SYNTH_DTYPE,
        "tokens": num_tokens,
        "files": [
            {
                "path": os.path.basename(path),
                "source": f"synthetic:{args.kind}:seed={args.seed}",
                "tokens": num_tokens,
            }
        ],
    }
    write_index(args.out_dir, index)
    print(f"wrote {format_tokens(num_tokens)} {args.kind} tokens ({SYNTH_DTYPE}) to {path}")
    return 0


def _synth_chat(args: argparse.Namespace) -> int:
    from olmo_trainer.data.synth import write_chat_sets

    try:
        paths = write_chat_sets(args.out_dir, args.seed)
    except OSError as error:
        raise UserError(f"cannot write to {args.out_dir}: {error.strerror or error}") from None
    for name, path in paths.items():
        print(f"wrote {name} set to {path}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """`olmorun data prepare`. Raises UserError for a missing input or tokenizer, or input it cannot read."""
    from olmo_trainer.data.prepare import prepare

    missing = [p for p in args.inputs if "://" not in p and not os.path.exists(p)]
    if missing:
        raise UserError(f"no such input file: {', '.join(missing)}")
    if args.tokenizer and not os.path.exists(args.tokenizer):
        raise UserError(f"no such tokenizer file: {args.tokenizer}")
    try:
        index = prepare(
            args.inputs,
            args.out,
            tokenizer_path=args.tokenizer,
            dtype=args.dtype,
            eos_token_id=args.eos_token_id,
        )
    except (ValueError, OSError) as error:  # bad JSON lines, bad tokenizer file, unwritable output
        raise UserError(str(error)) from None
    print(
        f"tokenized {index['docs']} documents into {format_tokens(index['tokens'])} tokens "
        f"({index['dtype']}, tokenizer {index['tokenizer']}) in {args.out}"
    )
    return 0
