"""`olmorun` command line: a thin router over the library; every command is a small function.

Commands live in small modules that each add their subparsers (`register`) so that the CLI never
imports torch unless a trainer command runs. User errors print the problem and exit 2, never a
traceback. `olmorun` alone prints the help; `olmorun --version` the version and the git commit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from olmo_trainer.provenance import git_state

# Each module defines `register(subparsers)`; its handlers are set with `set_defaults(func=...)`.
COMMAND_MODULES = (
    "olmo_operator.cli_spec",  # validate, crd
    "olmo_operator.cli_storage",  # archive, verify
    "olmo_operator.cli_data",  # data synth, data prepare
    "olmo_operator.cli_run",  # render, local, status
    "olmo_operator.cli_export",  # export-hf
    "olmo_operator.cli_diff",  # diff, report
    "olmo_operator.cli_eval",  # eval
)


class UserError(Exception):
    """A problem with the user's input: printed without a traceback, exit code 2."""


def version() -> str:
    """`olmorun <version> (git <commit>[, dirty])`: the installed distribution and the checkout it runs from.

    The commit is the trainer's own record of it (olmo_trainer.provenance.git_state, what env.json
    records); outside a git checkout (an installed wheel, an image) it reads `git unknown`.
    """
    try:
        number = metadata.version("olmorun")
    except metadata.PackageNotFoundError:
        number = "unknown"
    commit, dirty = git_state(Path(__file__).resolve().parent)
    return f"olmorun {number} (git {commit or 'unknown'}{', dirty' if dirty else ''})"


class _Version(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="olmorun", description="Reproduce the OLMo 2 recipe: validate, render, run and verify OlmoRuns."
    )
    parser.add_argument("--version", nargs=0, action=_Version, help="print the version and the git commit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # `olmorun` alone: what it can do, not an error
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"olmorun {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m olmo_operator.cli` runs this file as __main__; the command modules raise the UserError
    # of the imported olmo_operator.cli, so dispatch through that module, not this copy.
    from olmo_operator.cli import main as _main

    sys.exit(_main())
