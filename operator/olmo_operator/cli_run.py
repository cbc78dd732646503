"""`olmorun render | local | status`: see what a run would submit, run it here, and watch it.

olmorun render run.yaml                  # every job's resolved config + Volcano Job (YAML, nothing submitted)
olmorun local run.yaml [--workdir DIR]   # the embedded runner (local.py); exit 0 ok, 1 failed, 2 invalid, 3
suspended
olmorun status [run.yaml] [--workdir DIR]  # like `kubectl get olmo -o wide`, plus a table per phase
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from olmo_operator import api, layout
from olmo_operator.cli import UserError
from olmo_operator.plan import condition, parse_timestamp
from olmo_operator.preview import Preview, preview_run
from olmo_trainer.layout import step_name


def register(sub: Any) -> None:
    render = sub.add_parser(
        "render", help="print every job's resolved config and Volcano Job; submit nothing"
    )
    render.add_argument("file", metavar="FILE", help="OlmoRun YAML/JSON ('-' for stdin)")
    render.add_argument("-n", "--namespace", help="namespace of the jobs (default: the run's)")
    render.set_defaults(func=cmd_render)

    local = sub.add_parser("local", help="run an OlmoRun on this machine with the operator's own loop")
    local.add_argument("file", metavar="FILE", help="OlmoRun YAML/JSON")
    local.add_argument("--workdir", help="state, logs and storage (default: .olmorun/<run name>)")
    local.add_argument(
        "--storage",
        help="'spec' keeps the spec's storage URIs; any other URI replaces them (default: <workdir>/storage)",
    )
    local.add_argument(
        "--poll", type=float, default=1.5, help="seconds between reconcile steps (default 1.5)"
    )
    local.set_defaults(func=cmd_local)

    status = sub.add_parser("status", help="print a local run's status (or an OlmoRun document's)")
    status.add_argument(
        "file", nargs="?", metavar="FILE", help="the run's spec, its state.json, or `kubectl get -o yaml`"
    )
    status.add_argument("--workdir", help="the local run's workdir (default: .olmorun/<run name>)")
    status.set_defaults(func=cmd_status)


def load_run(path: str) -> tuple[api.OlmoRun, dict[str, Any]]:
    """The first document of a file, parsed and validated. Raises UserError naming every problem."""
    from olmo_operator.cli_spec import load_documents

    document = load_documents(path)[0]
    try:
        return api.parse_olmorun(document), document
    except api.SpecError as error:
        problems = "\n  ".join(str(p) for p in error.problems)
        raise UserError(f"{path} is not a valid OlmoRun:\n  {problems}") from None


# ---------------------------------------------------------------------------------------------
# render
# ---------------------------------------------------------------------------------------------


def render_documents(
    run: api.OlmoRun, namespace: str | None = None, result: Preview | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(comment, document) for every job the planner submits: its resolved config, then its Volcano Job.

    The jobs are preview.preview_run's: the planner's own submissions in a world where every job
    succeeds, so what is printed is what the operator will create.
    """
    from olmo_operator.launcher_volcano import VolcanoLauncher

    launcher = VolcanoLauncher(namespace or run.namespace)
    result = result or preview_run(run)
    out: list[tuple[str, dict[str, Any]]] = []
    for submit in result.submissions:
        phase = run.phase(submit.phase)
        key = layout.job_key(phase, submit.seed)
        comment = f"TrainConfig of {key}, written to {submit.config_uri}"
        if submit.job_name in result.unknown_steps:
            comment += "\n# its final step is known only when it finishes: children show it as step0"
        out.append((comment, json.loads(submit.train_config.to_json())))
        out.append((f"Volcano Job of {key} (attempt {submit.attempt})", launcher.render(submit.request)))
    return out


def not_submitted_lines(result: Preview) -> list[str]:
    """One comment line per phase the planner does not submit, with its reason."""
    return [f"# NOT SUBMITTED: phase {name!r}: {message}" for name, message in result.not_submitted.items()]


def cmd_render(args: argparse.Namespace) -> int:
    run, _ = load_run(args.file)
    chunks = []
    result = preview_run(run)
    for comment, document in render_documents(run, args.namespace, result):
        body = yaml.safe_dump(document, sort_keys=False)
        chunks.append(f"# {comment}\n{body}")
    tail = "".join(f"{line}\n" for line in not_submitted_lines(result))
    sys.stdout.write("---\n".join(chunks) + tail)
    return 0


# ---------------------------------------------------------------------------------------------
# local
# ---------------------------------------------------------------------------------------------


def cmd_local(args: argparse.Namespace) -> int:
    from olmo_operator import local, local_state

    run, document = load_run(args.file)
    workdir = Path(args.workdir) if args.workdir else local_state.default_workdir(run)
    return local.run_local(
        local_state.localize(run, workdir, args.storage),
        workdir=workdir,
        document=document,
        poll_seconds=args.poll,
    )


# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------


def _age(since: str | None, now: dt.datetime) -> str:
    if not since:
        return "-"
    seconds = int((now - parse_timestamp(since)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _num(value: float | int | None, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _by_seed(ps: api.PhaseStatus) -> bool:
    """Whether `olmorun status` shows a phase's jobs one by one, seed by seed: when it has several.

    A rule of the display, read from the status alone: a phase that fans out over ONE seed shows as
    the phase, though its job key (layout.job_key) still carries `-s<seed>`.
    """
    return len(ps.jobs) > 1


def format_status(
    name: str,
    status: api.OlmoRunStatus,
    created: str | None,
    now: dt.datetime,
    kinds: dict[str, str] | None = None,
) -> str:
    """`kubectl get olmo -o wide` columns, then one row per phase (and per job of a fanned-out phase)."""
    succeeded = condition(status, "Succeeded")
    head = [["NAME", "STAGE", "ACTIVE", "SUCCEEDED", "REASON", "STEP", "TOKENS", "LOSS", "AGE"]]
    head.append(
        [
            name,
            status.stage or "-",
            ",".join(status.active_phases) or "-",
            succeeded.status if succeeded else "-",
            succeeded.reason if succeeded else "-",
            _num(status.step),
            _num(status.tokens),
            _num(status.last_loss, "{:.4f}"),
            _age(created, now),
        ]
    )
    rows = [["PHASE", "KIND", "STATE", "ATTEMPTS", "STEP", "TOKENS", "LOSS", "ARCHIVE/CHECKPOINT", "MESSAGE"]]
    for phase, ps in status.phases.items():
        kind = (kinds or {}).get(phase, "")
        where = ps.archive or ps.checkpoint or "-"
        rows.append(
            [
                phase,
                kind,
                ps.state,
                str(ps.attempts),
                _num(ps.step),
                _num(ps.tokens),
                _num(ps.last_loss, "{:.4f}"),
                where,
                ps.message,
            ]
        )
        if _by_seed(ps):
            for job in ps.jobs:
                rows.append(
                    [
                        f"  s{job.seed}",
                        "",
                        job.state,
                        str(job.attempts),
                        _num(job.step),
                        _num(job.tokens),
                        _num(job.last_loss, "{:.4f}"),
                        job.archive or job.checkpoint or "-",
                        job.message,
                    ]
                )
    text = _table(head) + "\n\n" + _table(rows)
    evals = [["PHASE", "EVAL", "VALUE"]]
    for phase, ps in status.phases.items():
        figures = ps.eval or {}
        if not figures and _by_seed(ps):  # a fanned-out phase: each seed's own figures
            for job in ps.jobs:
                evals += [
                    [f"{phase}/s{job.seed}", k.removeprefix("eval/"), f"{v:.4f}"] for k, v in job.eval.items()
                ]
        evals += [[phase, k.removeprefix("eval/"), f"{v:.4f}"] for k, v in figures.items()]
    if len(evals) > 1:
        text += "\n\n" + _table(evals)
    if succeeded is not None and succeeded.message:
        text += f"\n\n{succeeded.type}={succeeded.status} ({succeeded.reason}): {succeeded.message}"
    return text + "\n"


def _status_source(
    args: argparse.Namespace,
) -> tuple[str, api.OlmoRunStatus, str | None, dict[str, Any]]:
    """(name, status, created, the run's document) from a spec, a state.json, `kubectl get -o yaml`."""
    from olmo_operator import local_state as local

    workdir = Path(args.workdir) if args.workdir else None
    if args.file and Path(args.file).name != local.STATE_FILE:
        from olmo_operator.cli_spec import load_documents

        document = load_documents(args.file)[0]
        if not isinstance(document, dict):
            raise UserError(f"{args.file}: not an OlmoRun document")
        meta = document.get("metadata") or {}
        if document.get("status") and workdir is None:  # `kubectl get olmo NAME -o yaml`
            status = api.OlmoRunStatus.model_validate(document["status"])
            return meta.get("name", "?"), status, meta.get("creationTimestamp"), document
        workdir = workdir or Path(".olmorun") / str(meta.get("name", ""))
    elif args.file:
        workdir = Path(args.file).parent
    if workdir is None:
        raise UserError("give the run's FILE or --workdir DIR")
    state = local.read_state(workdir)
    if state is None:
        raise UserError(
            f"no local run in {workdir} (no {local.STATE_FILE}); start one with `olmorun local FILE`"
        )
    name = str(state.document.get("metadata", {}).get("name", "?"))
    return name, state.status, state.created_at, state.document


def _kinds(document: dict[str, Any]) -> dict[str, str]:
    phases = (document.get("spec") or {}).get("phases") or []
    return {p["name"]: p.get("kind", "") for p in phases if isinstance(p, dict) and "name" in p}


def _options_of(document: dict[str, Any]) -> Any:
    """uri -> fsspec options, with the spec's endpoint (archive.run_storage_options) when it parses."""
    from olmo_operator.archive import run_storage_options, storage_options

    try:
        run = api.parse_olmorun({k: v for k, v in document.items() if k != "status"})
    except api.SpecError:
        return storage_options
    return lambda uri: run_storage_options(run, uri)


def final_contents(status: api.OlmoRunStatus, document: dict[str, Any] | None = None) -> list[list[str]]:
    """[job, checkpoint, content sha256] of every job's final checkpoint (archive, else scratch), read
    from its MANIFEST with the storage options of the run's spec; '-' where none is recorded or the
    storage cannot be read."""
    from olmo_trainer import manifest, storage

    options_for = _options_of(document or {})

    rows = []
    for phase, ps in status.phases.items():
        for job in ps.jobs:
            uri = job.archive or job.checkpoint
            if not uri or job.state != "Succeeded":
                continue
            try:
                fs, path = storage.filesystem(uri, **options_for(uri))
                sha = manifest.content_sha256(manifest.read_manifest(fs, path))
            except (OSError, ImportError, ValueError):
                sha = None
            key = layout.seed_key(phase, job.seed) if _by_seed(ps) else phase
            step = layout.step_of(uri)
            rows.append([key, step_name(step) if step is not None else "-", sha or "-"])
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    name, status, created, document = _status_source(args)
    sys.stdout.write(format_status(name, status, created, dt.datetime.now(dt.UTC), _kinds(document)))
    contents = final_contents(status, document)
    if contents:
        sys.stdout.write(
            "\n" + _table([["JOB", "FINAL", "CONTENT SHA256 (tensors by name)"], *contents]) + "\n"
        )
    return 0
