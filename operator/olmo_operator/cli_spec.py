"""`olmorun validate FILE...` and `olmorun crd`: commands about the OlmoRun spec itself.

`validate` reads YAML or JSON (several documents per file allowed), prints a one-line summary for a
valid OlmoRun and every problem with its field path otherwise. It never prints a traceback for user
input. `crd` writes the CustomResourceDefinition generated from api.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from olmo_operator import api, crd, reference
from olmo_operator.cli import UserError
from olmo_operator.inputs import missing_inputs
from olmo_trainer.config import format_tokens
from olmo_trainer.data_record import check_data


def register(sub: Any) -> None:
    validate = sub.add_parser("validate", help="check OlmoRun files; print every problem with its field path")
    validate.add_argument("files", nargs="+", metavar="FILE", help="OlmoRun YAML/JSON files ('-' for stdin)")
    validate.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    validate.add_argument(
        "--remote-data",
        action="store_true",
        help="also read the index.json of s3:// and gs:// data (local data is always checked)",
    )
    validate.set_defaults(func=cmd_validate)

    gen = sub.add_parser("crd", help="write the OlmoRun CustomResourceDefinition generated from the API")
    gen.add_argument(
        "-o",
        "--out",
        help="one output path, '-' for stdout (default: every committed copy: "
        f"{', '.join(map(str, crd.CRD_PATHS))})",
    )
    gen.add_argument("--check", action="store_true", help="exit 1 if a file differs from the generated CRD")
    gen.set_defaults(func=cmd_crd)

    ref = sub.add_parser(
        "reference",
        help=f"print the OlmoRun reference (Markdown) or update a copy ({reference.REFERENCE_PATH})",
    )
    ref.add_argument(
        "--file",
        help=f"rewrite the generated block of this Markdown file (e.g. {reference.REFERENCE_PATH})",
    )
    ref.add_argument("--check", action="store_true", help="with --file: exit 1 if the block is stale")
    ref.set_defaults(func=cmd_reference)


def load_documents(path: str) -> list[Any]:
    """YAML/JSON documents of a file; raises UserError with the position of a syntax error."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path}: not text (byte {error.start} is not UTF-8); give a YAML or JSON file"
        ) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if not documents:
        raise UserError(f"{path}: no document found")
    return documents


def summarize(run: api.OlmoRun) -> str:
    """One line: name, model and size, the phase chain with budgets and fan-out, placement."""
    model = run.spec.model.resolve()
    phases = []
    for phase in api.topological_order(run):
        text = phase.name if phase.name == phase.kind else f"{phase.name}({phase.kind})"
        if phase.seeds:
            text += f" x{len(phase.seeds)} seeds"
        if phase.max_tokens is not None:
            text += f" {format_tokens(phase.max_tokens)} tok"
        elif phase.max_steps is not None:
            text += f" {phase.max_steps} steps"
        phases.append(text)
    cluster = run.spec.cluster
    per_node = f"{cluster.gpus_per_node} GPUs" if cluster.gpus_per_node else f"{cluster.procs} CPU procs"
    nodes = max(p.nodes for p in run.spec.phases)
    preset = run.spec.model.preset or "custom"
    return (
        f"OlmoRun {run.metadata.name}: valid; model {preset} ({model.num_params() / 1e6:,.1f}M params); "
        f"{' -> '.join(phases)}; up to {nodes} node(s) x {per_node}"
    )


def check_run_data(run: api.OlmoRun, *, remote: bool) -> tuple[list[str], list[str]]:
    """(problems, warnings) of every phase's token data against the run's model, for the data this
    process can read: index.json records (vocabulary, EOS, dtype) via data_record.check_data."""
    model = run.spec.model.resolve()
    problems: list[str] = []
    warnings: list[str] = []
    for i, phase in enumerate(run.spec.phases):
        if phase.data is None:
            continue
        try:
            check = check_data(
                phase.data,
                model,
                field=f"spec.phases[{i}].data",
                model_field="spec.model.overrides",
                remote=remote,
            )
        except ValueError as error:  # an index.json that is not JSON
            problems.append(f"spec.phases[{i}].data: {error}")
            continue
        problems += check.absent + check.problems
        warnings += check.warnings
    return problems, warnings


def cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            documents = load_documents(path)
        except UserError as error:
            print(f"{error}", file=sys.stderr)
            failed = True
            continue
        for index, document in enumerate(documents):
            label = path if len(documents) == 1 else f"{path}[{index}]"
            try:
                run = api.parse_olmorun(document)
            except api.SpecError as error:
                failed = True
                print(f"{label}: invalid OlmoRun ({len(error.problems)} problem(s)):", file=sys.stderr)
                for problem in error.problems:
                    print(f"  - {problem}", file=sys.stderr)
                continue
            mismatches, warnings = check_run_data(run, remote=args.remote_data)
            mismatches += missing_inputs(run, remote=args.remote_data)
            if mismatches:
                failed = True
                print(f"{label}: the data cannot be used ({len(mismatches)} problem(s)):", file=sys.stderr)
                for mismatch in mismatches:
                    print(f"  - {mismatch}", file=sys.stderr)
                continue
            for warning in warnings:
                print(f"{label}: warning: {warning}", file=sys.stderr)
            if not args.quiet:
                print(f"{label}: {summarize(run)}")
            for message in api.deprecations(run):
                print(f"{label}: warning: {message}", file=sys.stderr)
    return 1 if failed else 0


def cmd_crd(args: argparse.Namespace) -> int:
    rendered = crd.render_crd()
    if args.out == "-":
        sys.stdout.write(rendered)
        return 0
    paths = [Path(args.out)] if args.out else [Path(p) for p in crd.CRD_PATHS]
    if args.check:
        stale = [p for p in paths if (p.read_text() if p.exists() else "") != rendered]
        for path in stale:
            print(f"{path} is out of date with api.py; run `olmorun crd` and commit it", file=sys.stderr)
        for path in sorted(set(paths) - set(stale)):
            print(f"{path} is current")
        return 1 if stale else 0
    for path in paths:
        crd.write_crd(path)
        print(f"wrote {path}")
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    """`olmorun reference`. Raises UserError when the file cannot be read or has no markers."""
    if not args.file:
        print(reference.render_reference())
        return 0
    try:
        current = reference.update_file(Path(args.file), check=args.check)
    except (OSError, ValueError) as error:
        raise UserError(str(error)) from None
    if args.check and not current:
        print(
            f"{args.file}: the OlmoRun reference is stale; run `olmorun reference --file {args.file}`",
            file=sys.stderr,
        )
        return 1
    print(f"{args.file}: reference {'current' if current else 'updated'}")
    return 0
