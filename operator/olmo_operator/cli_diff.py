"""`olmorun diff RUN_A RUN_B` (are two runs the same run?) and `olmorun report RUN -o report.html`.

    olmorun diff .olmorun/a .olmorun/b                          # two `olmorun local` workdirs
    olmorun diff s3://bucket/olmo/default/olmo2-7b s3://bucket/olmo/default/olmo2-7b-rerun --rtol 1e-3

Each run is read where it is given (runfiles.py): a run root (a copy or a download too), a local
workdir or the run's spec file. Compares spec and config hashes, data order, every metric of every
step of every phase and seed, evaluation results and checkpoint content identities (rundiff.py), and
prints `identical` or the first divergence (phase, seed, step, metric, both values) with a table of
what else differs, and the environments' differences. Exit codes: 0 identical (within
--rtol/--atol), 1 different, 2 a run cannot be read.

    olmorun report .olmorun/a -o report.html      # one self-contained page (report.py); prints its path
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from olmo_operator.cli import UserError

EXIT_IDENTICAL = 0
EXIT_DIFFERENT = 1
RUN_HELP = "run root (the folder holding run.json: a copy, s3:// too), `olmorun local` workdir, or spec file"


def register(sub: Any) -> None:
    diff = sub.add_parser("diff", help="compare two runs: identical, or where they first diverge (exit 1)")
    diff.add_argument("run_a", metavar="RUN_A", help=RUN_HELP)
    diff.add_argument("run_b", metavar="RUN_B", help="the run to compare with")
    diff.add_argument(
        "--rtol", type=_tolerance, default=0.0, help="relative tolerance of metrics (default 0: bit-exact)"
    )
    diff.add_argument(
        "--atol", type=_tolerance, default=0.0, help="absolute tolerance of metrics (default 0: bit-exact)"
    )
    diff.add_argument("--json", action="store_true", help="print the whole comparison as JSON")
    _endpoint_argument(diff)
    diff.set_defaults(func=cmd_diff)

    report = sub.add_parser("report", help="write a self-contained HTML report of a run (figures inline)")
    report.add_argument("run", metavar="RUN", help=RUN_HELP)
    report.add_argument(
        "-o", "--output", default="report.html", help="HTML file to write (default: %(default)s)"
    )
    _endpoint_argument(report)
    report.set_defaults(func=cmd_report)


def _endpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint-url",
        help="S3-compatible endpoint of every run given (default: the spec's storage.endpointUrl for the "
        "spec's own storage, else $AWS_ENDPOINT_URL)",
    )


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  " + "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def format_result(result: Any, a: Any, b: Any, *, rtol: float, atol: float) -> str:
    from olmo_operator.rundiff import summary_table

    counts = ", ".join(f"{n} {kind}" for kind, n in result.compared.items()) or "nothing"
    tolerance = f" within rtol={rtol:g} atol={atol:g}" if rtol or atol else " (bit-exact)"
    lines = [f"A: {a.uri}", f"B: {b.uri}", f"compared: {counts}"]
    if result.identical:
        lines.append(f"identical{tolerance}")
    else:
        assert result.first is not None
        lines.append(f"DIFFERENT{tolerance}; first divergence: {result.first.describe()}")
    if (rtol or atol) and result.deviations:
        lines.append("largest deviation per metric:")
        lines.append(
            _table(
                [["METRIC", "MAX |A-B|"]] + [[k, f"{v:.3g}"] for k, v in sorted(result.deviations.items())]
            )
        )
    table = summary_table(result)
    if table:
        lines.append("what differs:")
        lines.append(_table([["KIND", "WHERE", "COUNT"]] + [[k, w, str(n)] for k, w, n in table]))
    environment = [n for n in result.notes if n.what == "environment"]
    if environment:
        lines.append("environment differences (not results):")
        lines.extend(f"  {n.phase}/s{n.seed} {n.name}: A={n.a} B={n.b}" for n in environment[:20])
    return "\n".join(lines) + "\n"


def load_spec(path: str) -> Any:
    """A run's spec file, as `olmorun validate` reads it (its first document)."""
    from olmo_operator.cli_spec import load_documents

    return load_documents(path)[0]


def cmd_diff(args: argparse.Namespace) -> int:
    from olmo_operator.rundiff import compare
    from olmo_operator.runfiles import RunNotFoundError, read_run

    try:
        a = read_run(args.run_a, endpoint_url=args.endpoint_url, load_spec=load_spec)
        b = read_run(args.run_b, endpoint_url=args.endpoint_url, load_spec=load_spec)
    except RunNotFoundError as error:
        raise UserError(str(error)) from None
    result = compare(a, b, rtol=args.rtol, atol=args.atol)
    if args.json:
        print(
            json.dumps(
                {"identical": result.identical, "a": a.uri, "b": b.uri, **asdict(result)},
                indent=2,
                default=str,
            )
        )
    else:
        sys.stdout.write(format_result(result, a, b, rtol=args.rtol, atol=args.atol))
    return EXIT_IDENTICAL if result.identical else EXIT_DIFFERENT


def cmd_report(args: argparse.Namespace) -> int:
    from olmo_operator.report import write_report
    from olmo_operator.runfiles import RunNotFoundError

    try:
        path = write_report(args.run, args.output, endpoint_url=args.endpoint_url, load_spec=load_spec)
    except RunNotFoundError as error:
        raise UserError(str(error)) from None
    print(path)
    return 0
