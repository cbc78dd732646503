"""`olmorun archive SRC DST` and `olmorun verify URI`: checkpoints in object storage.

Credentials come from the environment only (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_ENDPOINT_URL,
GOOGLE_APPLICATION_CREDENTIALS), as a Kubernetes Secret provides them; nothing here prints them.

Exit codes: 0 done / verified OK; 1 the data is bad (missing, corrupted or unlisted files, a MANIFEST
that lacks the DCP `.metadata` or a shard it names, a checkpoint that is not committed, a corrupt
source); 2 the request is wrong (a URI that is no checkpoint, refused credentials, a destination
that holds another checkpoint).

    olmorun archive /scratch/run/checkpoints/step100 s3://bucket/run/checkpoints/step100
    olmorun verify s3://bucket/run/checkpoints/          # the latest committed step
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from olmo_operator import archive
from olmo_operator.cli import UserError
from olmo_trainer import manifest as mf
from olmo_trainer import storage
from olmo_trainer.layout import join


def register(sub: Any) -> None:
    arc = sub.add_parser(
        "archive", help="copy a committed checkpoint to object storage, verified, MANIFEST last"
    )
    arc.add_argument("src", metavar="SRC", help="committed checkpoint directory (.../checkpoints/stepN)")
    arc.add_argument("dst", metavar="DST", help="destination directory: s3://, gs://, file:// or a path")
    arc.add_argument("--workers", type=_positive, default=8, help="files in flight (default: %(default)s)")
    arc.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL)")
    arc.add_argument("--verify-remote", action="store_true", help="read every object back and re-hash it")
    arc.set_defaults(func=cmd_archive)

    ver = sub.add_parser(
        "verify", help="re-hash a checkpoint against its MANIFEST; exit 1 if anything differs"
    )
    ver.add_argument(
        "uri", metavar="URI", help=".../stepN, or a checkpoints/ directory (its latest committed step)"
    )
    ver.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL)")
    ver.add_argument(
        "--workers", type=_positive, default=8, help="files hashed in parallel (default: %(default)s)"
    )
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    ver.set_defaults(func=cmd_verify)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def cmd_archive(args: argparse.Namespace) -> int:
    """`olmorun archive`. Raises UserError for refused credentials or a destination holding another
    checkpoint."""
    try:
        report = archive.archive_checkpoint(
            args.src,
            args.dst,
            src_options=archive.storage_options(args.src, endpoint_url=args.endpoint_url),
            dst_options=archive.storage_options(args.dst, endpoint_url=args.endpoint_url),
            workers=args.workers,
            verify_remote=args.verify_remote,
        )
    except archive.CorruptSourceError as error:
        print(f"olmorun archive: {error}; nothing committed at {args.dst}", file=sys.stderr)
        return 1
    except (archive.NotCommittedError, archive.StorageAccessError, archive.DestinationConflictError) as error:
        raise UserError(str(error)) from None
    except archive.ArchiveError as error:
        print(f"olmorun archive: {error}; rerun to resume (uploaded files are skipped)", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """`olmorun verify`. Raises UserError for a URI that is no checkpoint, or refused credentials."""
    options = archive.storage_options(args.uri, endpoint_url=args.endpoint_url)
    try:
        target, note = _checkpoint_to_verify(args.uri, options)
        report = archive.verify_checkpoint(target, options=options, workers=args.workers)
    except archive.StorageAccessError as error:
        raise UserError(str(error)) from None
    except archive.ArchiveError as error:
        print(f"olmorun verify: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(_as_json(report, args.uri, note), indent=2))
    else:
        if note:
            print(note)
        print(report.summary())
        for rel in report.missing:
            print(f"  missing    {rel}: {report.problems[rel]} ({join(report.uri, rel)})")
        for rel in report.corrupted:
            print(f"  corrupted  {rel}: {report.problems[rel]} ({join(report.uri, rel)})")
        for rel in report.unlisted:
            print(f"  unlisted   {rel}")
        for rel in report.incomplete:
            print(f"  lacking    {rel}")
    return 0 if report.ok else 1


def _checkpoint_to_verify(uri: str, options: dict[str, Any]) -> tuple[str, str | None]:
    """The step directory to verify for a URI (manifest.resolve_checkpoint, the rule export-hf and eval
    follow too), and a note when it was chosen. Raises UserError for a URI that is no checkpoint, and
    archive.StorageAccessError for refused credentials or unreachable storage."""
    try:
        fs, path = storage.filesystem(uri, **options)
    except (ImportError, ValueError) as error:  # a missing client package, an unknown protocol
        raise archive.StorageAccessError(f"{uri}: cannot open this storage: {error}") from None
    try:
        return mf.resolve_checkpoint(fs, path.rstrip("/"), uri)
    except mf.NotACheckpointError as error:
        raise UserError(str(error)) from None
    except Exception as error:
        access = archive.access_error(uri, error)
        if access is None:
            raise
        raise access from None


def _as_json(report: mf.VerifyReport, requested: str, note: str | None) -> dict[str, Any]:
    return {
        "uri": requested,
        "checkpoint": report.uri,
        "note": note,
        "committed": report.committed,
        "ok": report.ok,
        "checked": report.checked,
        "missing": report.missing,
        "corrupted": report.corrupted,
        "unlisted": report.unlisted,
        "incomplete": report.incomplete,
        "problems": {join(report.uri, rel): what for rel, what in report.problems.items()},
    }
