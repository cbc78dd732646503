"""`olmorun report RUN -o report.html`: one self-contained HTML page of a run (no network, figures inline).

What it shows, from the run record (runfiles.read_run):
- a header with the run's outcome, spec hash, image and code;
- the timeline: every job as a bar from its start (env.json writtenAt) to its final commit (MANIFEST
  createdAt), phases in their DAG order with arrows from parent to child;
- restarts and failures on the timeline: a job's attempts and failures (from the run's status), and
  a job that started but never committed its final checkpoint;
- the headline result: held-out accuracy after each stage of the chain (`eval/<task>/accuracy`);
- per training phase, loss / learning rate / grad norm / throughput against the step, smoothed as W&B
  and TensorBoard draw them (a debiased exponential moving average, `smooth`) with the raw values faint
  behind, the seeds of a phase on the same axes and the soup that averages them marked on the loss;
- post-training metrics when the phase logged any (DPO `rewards/*`, RLVR reward and KL, ...);
- the evaluation table after each phase (the last `eval/<task>/<metric>` values, like the paper's tables);
- every final checkpoint with its content identity, and the run record (software, hardware,
  determinism, data fingerprints, spec).

Numbers are shown as they are: counts as integers, other values to four decimals (`number`).

Figures are drawn with matplotlib's Agg backend and embedded as base64 PNG: a page of a few hundred KB
that any browser opens offline. Interactive figures (hover, zoom) would need plotly's JavaScript inline,
about 3.5 MB for every report; not worth it for a page whose curves are a few hundred points. Pure
functions build the page from a RunRecord; `write_report` is the only I/O.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from collections.abc import Callable, Sequence
from typing import Any

from olmo_operator.rundiff import EVAL_PREFIX, JobRecord, RunRecord

CURVES = (
    ("loss", "loss"),
    ("lr", "learning rate"),
    ("grad_norm", "grad norm"),
    ("tokens_per_s", "tokens / s"),
)
"""The four curves of every training phase (metrics.jsonl keys, titles)."""
STANDARD = frozenset({"step", "tokens", "z_loss", "mfu", "total_steps", *(key for key, _ in CURVES)})
COLORS = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777")
SMOOTHING = 0.6
"""Weight of the exponential moving average drawn over noisy curves (TensorBoard's default slider)."""
SMOOTHED = frozenset({"loss", "grad_norm", "tokens_per_s"})
"""Curves drawn smoothed with their raw values faint behind (the learning rate is a schedule: as is)."""
ACCURACY = "/accuracy"
KIND_COLORS = {
    "pretrain": "#2563eb",
    "anneal": "#ea580c",
    "soup": "#16a34a",
    "sft": "#9333ea",
    "dpo": "#dc2626",
    "rlvr": "#0891b2",
}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - the report extra is part of every dev install
        raise RuntimeError("olmorun report needs matplotlib: pip install 'olmorun[report]'") from None
    matplotlib.use("Agg")  # no display: render to memory
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.25,
            "axes.titleweight": "bold",
            "axes.titlesize": 10,
            "figure.dpi": 110,
        }
    )
    return plt


def _png(fig: Any) -> str:
    """The figure as an inline <img> (base64 PNG); closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    fig.clf()
    _pyplot().close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img class="figure" alt="figure" src="data:image/png;base64,{data}">'


def _time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _series(job: JobRecord, key: str) -> tuple[list[int], list[float]]:
    points = [
        (int(r["step"]), float(r[key]))
        for r in job.metrics
        if isinstance(r.get("step"), int) and isinstance(r.get(key), int | float)
    ]
    return [p[0] for p in points], [p[1] for p in points]


def smooth(values: Sequence[float], weight: float = SMOOTHING) -> list[float]:
    """Debiased exponential moving average, as W&B's and TensorBoard's smoothing draw a curve:
    `m_i = w * m_(i-1) + (1 - w) * v_i`, shown as `m_i / (1 - w^(i+1))` so that the start is not
    pulled towards 0 (the bias correction of Adam, Kingma & Ba 2015, section 3). Same length as `values`."""
    out, moving = [], 0.0
    for i, value in enumerate(values):
        moving = weight * moving + (1 - weight) * value
        out.append(moving / (1 - weight ** (i + 1)))
    return out


def number(value: Any) -> str | None:
    """A metric as shown: integers (and integral floats: counts) as integers, others to 4 decimals."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _plot(
    ax: Any, steps: list[int], values: list[float], color: str, label: str | None, smoothed: bool
) -> None:
    if smoothed and len(values) > 2:
        ax.plot(steps, values, color=color, lw=0.8, alpha=0.25)  # raw, faint behind
        ax.plot(steps, smooth(values), color=color, lw=1.6, label=label)
    else:
        ax.plot(steps, values, color=color, lw=1.4, label=label)


def phases_in_order(record: RunRecord) -> list[tuple[str, str, list[JobRecord]]]:
    """(phase, kind, its jobs) in run order."""
    out: list[tuple[str, str, list[JobRecord]]] = []
    for job in record.jobs:
        if not out or out[-1][0] != job.phase:
            out.append((job.phase, job.kind, []))
        out[-1][2].append(job)
    return out


def parents(record: RunRecord) -> dict[str, str]:
    return {
        p["name"]: p["from"] for p in record.spec.get("phases", []) if isinstance(p, dict) and p.get("from")
    }


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def job_status(record: RunRecord) -> dict[tuple[str, int], dict[str, Any]]:
    """(phase, seed) -> the job's status (attempts, failures, state, message), when the run's status
    is known."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for phase, status in ((record.status or {}).get("phases") or {}).items():
        for job in status.get("jobs") or []:
            if isinstance(job, dict) and isinstance(job.get("seed"), int):
                found[(phase, job["seed"])] = job
    return found


def restarts(status: dict[str, Any] | None) -> str | None:
    """`3 attempts, 2 failed` for a job that was restarted or failed; None for one clean attempt."""
    attempts, failures = int((status or {}).get("attempts") or 0), int((status or {}).get("failures") or 0)
    if attempts <= 1 and not failures:
        return None
    return f"{attempts} attempts, {failures} failed" if failures else f"{attempts} attempts"


def timeline_figure(record: RunRecord) -> str | None:
    """Gantt chart of the jobs, with arrows along the phase DAG, restarts and failures marked; None when
    no job has timings. A job that started and never committed its final checkpoint is a hatched stub."""
    statuses = job_status(record)
    spans = []
    for job in record.jobs:
        start, end = _time((job.env or {}).get("writtenAt")), _time(job.finished_at)
        if start is not None:
            spans.append((job, start, max(end, start) if end is not None else None))
    if not any(end is not None for _, _, end in spans):
        return None
    plt = _pyplot()
    origin = min(s for _, s, _ in spans)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(spans) + 1.2))
    rows: dict[str, int] = {}
    ends: dict[str, tuple[float, int]] = {}
    for row, (job, start, end) in enumerate(spans):
        left = (start - origin).total_seconds()
        status = statuses.get((job.phase, job.seed))
        color = KIND_COLORS.get(job.kind, "#64748b")
        if end is None:  # started, never finished: failed, cancelled or still running
            ax.barh(row, 1.0, left=left, color="white", edgecolor="#dc2626", hatch="///", height=0.6)
            state = (status or {}).get("state") or "no final checkpoint"
            ax.text(
                left + 1.5,
                row,
                f"{state}: {restarts(status) or 'no final checkpoint'}",
                va="center",
                fontsize=8,
                color="#dc2626",
            )
            rows[job.label] = row
            continue
        width = max((end - start).total_seconds(), 1.0)
        ax.barh(row, width, left=left, color=color, height=0.6)
        note = restarts(status)
        ax.text(
            left + width + 0.5,
            row,
            f"{width:.0f}s" + (f"  ({note})" if note else ""),
            va="center",
            fontsize=8,
            color="#dc2626" if note else "#475569",
        )
        if note:
            ax.plot([left], [row], marker="x", color="#dc2626", ms=8, mew=2)  # restarted: not one clean run
        rows[job.label] = row
        if job.phase not in ends or left + width > ends[job.phase][0]:
            ends[job.phase] = (left + width, row)
    links = parents(record)
    for job, start, _ in spans:
        parent = links.get(job.phase)
        if parent in ends:
            x0, y0 = ends[parent]
            ax.annotate(
                "",
                xy=((start - origin).total_seconds(), rows[job.label]),
                xytext=(x0, y0),
                arrowprops={"arrowstyle": "->", "color": "#94a3b8", "lw": 1},
            )
    ax.set_yticks(range(len(spans)), [job.label.replace("/s", "  seed ") for job, _, _ in spans])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the run's first job started")
    ax.set_title(
        "jobs from start to final checkpoint; arrows follow the phase DAG; red: restarts and failures",
        loc="left",
    )
    kinds = list(dict.fromkeys(job.kind for job, _, _ in spans))
    handles = [_pyplot().Rectangle((0, 0), 1, 1, color=KIND_COLORS.get(k, "#64748b")) for k in kinds]
    ax.legend(handles, kinds, frameon=False, loc="upper right")
    return _png(fig)


def chain(record: RunRecord) -> list[tuple[str, dict[str, float]]]:
    """(phase, {task: accuracy}) for every phase, in run order, that logged held-out accuracy
    (`eval/<task>/accuracy`): each job's final value, averaged over the seeds of a phase."""
    out: list[tuple[str, dict[str, float]]] = []
    for phase, _, jobs in phases_in_order(record):
        found: dict[str, list[float]] = {}
        for job in jobs:
            for key, value in final_evals(job).items():
                if key.endswith(ACCURACY):
                    found.setdefault(key[: -len(ACCURACY)], []).append(float(value))
        if found:
            out.append((phase, {task: sum(v) / len(v) for task, v in sorted(found.items())}))
    return out


def chain_figure(stages: list[tuple[str, dict[str, float]]]) -> str | None:
    """The headline result: held-out accuracy of every task after each stage, one line per task."""
    if not stages:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    tasks = sorted({task for _, found in stages for task in found})
    for index, task in enumerate(tasks):
        points = [(x, found[task]) for x, (_, found) in enumerate(stages) if task in found]
        ax.plot(
            [x for x, _ in points],
            [y for _, y in points],
            marker="o",
            lw=1.8,
            label=task,
            color=COLORS[index % len(COLORS)],
        )
        for x, y in points:
            ax.annotate(
                f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8
            )
    ax.set_xticks(range(len(stages)), [name for name, _ in stages])
    ax.set_ylim(0, max(1.0, max(max(found.values()) for _, found in stages) * 1.15))
    ax.set_ylabel("accuracy")
    ax.set_title("held-out accuracy after each stage of the chain", loc="left")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    return _png(fig)


def chain_table(stages: list[tuple[str, dict[str, float]]]) -> str:
    tasks = sorted({task for _, found in stages for task in found})
    return _table(
        ["stage", *tasks], [[name, *[number(found.get(t)) for t in tasks]] for name, found in stages]
    )


def curves_figure(phase: str, jobs: Sequence[JobRecord], soup: JobRecord | None) -> str | None:
    """Loss, LR, grad norm and throughput of a phase; one line per seed; the soup marked on the loss."""
    if not any(_series(job, "loss")[0] for job in jobs):
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.1))
    for ax, (key, title) in zip(axes, CURVES, strict=True):
        for index, job in enumerate(jobs):
            steps, values = _series(job, key)
            if steps:
                label = f"seed {job.seed}" if len(jobs) > 1 else None
                _plot(ax, steps, values, COLORS[index % len(COLORS)], label, key in SMOOTHED)
        ax.set_title(f"{title} (smoothed {SMOOTHING})" if key in SMOOTHED else title)
        ax.set_xlabel("step")
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if soup is not None:
        last = max((max(_series(j, "loss")[0] or [0]) for j in jobs), default=0)
        axes[0].axvline(
            last, color=KIND_COLORS["soup"], ls="--", lw=1.2, label=f"soup '{soup.phase}' (their average)"
        )
    if len(jobs) > 1 or soup is not None:
        axes[0].legend(fontsize=7, loc="upper right", framealpha=0.85)
    fig.tight_layout()
    return _png(fig)


def extra_keys(jobs: Sequence[JobRecord]) -> list[str]:
    """Numeric metrics beyond the standard curves and evaluation (post-training: rewards, margins, KL)."""
    keys: set[str] = set()
    for job in jobs:
        for row in job.metrics:
            keys |= {k for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return sorted(k for k in keys if k not in STANDARD and not k.startswith(EVAL_PREFIX) and k != "soup")


def extra_figure(phase: str, jobs: Sequence[JobRecord]) -> str | None:
    keys = extra_keys(jobs)[:8]
    if not keys:
        return None
    plt = _pyplot()
    columns = min(4, len(keys))
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.5 * columns, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for index, job in enumerate(jobs):
            steps, values = _series(job, key)
            _plot(ax, steps, values, COLORS[index % len(COLORS)], f"seed {job.seed}", smoothed=True)
        if len(jobs) > 1:
            ax.legend(frameon=False, fontsize=8)
        ax.set_title(key)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.tight_layout()
    caption = f'<p class="caption">post-training metrics: {html.escape(", ".join(keys))}</p>'
    return caption + _png(fig)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _cell(value: Any, mono: bool) -> str:
    """A table cell; a sha256 is shown by its first 16 hex digits, the whole of it on hover."""
    if mono and isinstance(value, str) and len(value) == 64:
        return f'<td class=mono title="{_e(value)}">{_e(value[:16])}…</td>'
    return f"<td{' class=mono' if mono else ''}>{_e(value)}</td>"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, mono: Sequence[int] = ()) -> str:
    cells = "".join(f"<th>{_e(h)}</th>" for h in head) if any(head) else ""
    body = "".join("<tr>" + "".join(_cell(c, i in mono) for i, c in enumerate(row)) + "</tr>" for row in rows)
    thead = f"<thead><tr>{cells}</tr></thead>" if cells else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def final_evals(job: JobRecord) -> dict[str, float]:
    """The last value of every `eval/<task>/<metric>` a job logged."""
    found: dict[str, float] = {}
    for row in job.metrics:
        found.update(
            {
                k[len(EVAL_PREFIX) :]: v
                for k, v in row.items()
                if k.startswith(EVAL_PREFIX) and isinstance(v, int | float)
            }
        )
    return found


def eval_table(record: RunRecord) -> str | None:
    results = {job.label: final_evals(job) for job in record.jobs}
    columns = sorted({k for found in results.values() for k in found})
    if not columns:
        return None
    rows = [[label, *[number(found.get(c)) for c in columns]] for label, found in results.items() if found]
    return _table(["job", *columns], rows)


def checkpoint_table(record: RunRecord) -> str:
    rows: list[list[Any]] = []
    for job in record.jobs:
        if not job.checkpoints:
            continue  # a job that never committed a checkpoint (not run yet, or not implemented)
        step = max(job.checkpoints)
        content = job.checkpoints[step] or {}
        rows.append(
            [
                job.label,
                step,
                content.get("sha256"),
                content.get("model"),
                content.get("optim"),
                content.get("numTensors"),
            ]
        )
    return _table(
        ["job", "final step", "content sha256", "model", "optimizer", "tensors"], rows, mono=(2, 3, 4)
    )


def _training_rows(job: JobRecord) -> list[dict[str, Any]]:
    """Metrics rows of training steps (they carry `loss`), not evaluation rows."""
    return [row for row in job.metrics if isinstance(row.get("loss"), int | float)] or job.metrics


def summary_table(record: RunRecord) -> str:
    """One row per phase: jobs, steps, tokens, final loss (mean over seeds), duration, content identity."""
    rows: list[list[Any]] = []
    for phase, kind, jobs in phases_in_order(record):
        # The last training row of each job: an evaluation logs rows of its own (eval/* keys only).
        last = [rows[-1] for rows in (_training_rows(job) for job in jobs) if rows]
        losses = [row["loss"] for row in last if isinstance(row.get("loss"), int | float)]
        spans = [(_time((j.env or {}).get("writtenAt")), _time(j.finished_at)) for j in jobs]
        seconds = [(end - start).total_seconds() for start, end in spans if start and end]
        finals = [(j.checkpoints[max(j.checkpoints)] or {}).get("sha256") for j in jobs if j.checkpoints]
        state = ((record.status or {}).get("phases") or {}).get(phase, {}).get("state")
        rows.append(
            [
                phase,
                kind,
                state or ("done" if finals else "not run"),
                len(jobs),
                number(max((r.get("step", 0) for r in last), default=None)),
                number(max((r.get("tokens") or 0 for r in last), default=None) or None),
                number(sum(losses) / len(losses)) if losses else None,
                f"{max(seconds):.0f}s" if seconds else None,
                finals[0] if len(finals) == 1 else f"{len(finals)} checkpoints" if finals else None,
            ]
        )
    return _table(
        ["phase", "kind", "state", "jobs", "steps", "tokens", "final loss", "duration", "content sha256"],
        rows,
        mono=(8,),
    )


def _first_env(record: RunRecord) -> dict[str, Any]:
    return next((job.env for job in record.jobs if job.env), {}) or {}


def record_table(record: RunRecord) -> str:
    env = _first_env(record)
    code, software = env.get("code") or {}, env.get("software") or {}
    hardware, dist, det = (
        env.get("hardware") or {},
        env.get("distributed") or {},
        env.get("determinism") or {},
    )
    devices = hardware.get("devices") or []
    rows: list[list[Any]] = [
        ["spec hash (storage excluded)", record.spec_hash],
        ["image", code.get("image") or record.run_json.get("image")],
        ["image digest", code.get("imageDigest")],
        ["git commit", f"{code.get('gitCommit')}{' (dirty)' if code.get('gitDirty') else ''}"],
        ["python / torch", f"{software.get('python')} / {software.get('torch')}"],
        ["CUDA / cuDNN / NCCL", f"{software.get('cuda')} / {software.get('cudnn')} / {software.get('nccl')}"],
        [
            "devices",
            f"{len(devices)} x {devices[0]}" if devices else f"CPU ({hardware.get('cpuCount')} cores)",
        ],
        ["world size (first job)", dist.get("worldSize")],
        ["deterministic algorithms", det.get("deterministicAlgorithms")],
        ["installed packages", len(software.get("packages") or {})],
    ]
    data_rows: list[list[Any]] = []
    for job in record.jobs:
        data = (job.env or {}).get("data") or {}
        if data:
            sources = ", ".join(f"{s['name']} ({s['instances']})" for s in data.get("sources", []))
            data_rows.append(
                [
                    job.label,
                    (job.env or {}).get("seeds", {}).get("data"),
                    sources,
                    data.get("orderSha256"),
                    data.get("sampleSha256"),
                ]
            )
    out = _table(["", ""], rows, mono=())
    if data_rows:
        out += "<h3>Data</h3>" + _table(
            ["job", "data seed", "sources (instances)", "order sha256", "sample sha256"],
            data_rows,
            mono=(3, 4),
        )
    return out


def _outcome(record: RunRecord) -> tuple[str, str]:
    conditions = (record.status or {}).get("conditions") or []
    succeeded = next((c for c in conditions if c.get("type") == "Succeeded"), None)
    if succeeded is None:
        done = sum(1 for job in record.jobs if job.checkpoints)
        return "neutral", f"{done} of {len(record.jobs)} jobs have a final checkpoint"
    state = "ok" if succeeded.get("status") == "True" else "warn"
    return state, f"{succeeded.get('reason')}: {succeeded.get('message', '')}"


STYLE = """
body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f1f5f9;
  color:#0f172a}
header{background:linear-gradient(120deg,#1e3a8a,#2563eb);color:#fff;padding:28px 40px}
header h1{margin:0 0 6px;font-size:26px} header p{margin:2px 0;opacity:.9}
main{max-width:1280px;margin:0 auto;padding:24px 32px}
section{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(15,23,42,.08);padding:18px 24px;
  margin:0 0 20px}
h2{margin:0 0 12px;font-size:18px;color:#1e3a8a} h3{font-size:14px;margin:16px 0 8px;color:#334155}
.figure{max-width:100%;display:block;margin:6px 0} .caption{color:#475569;font-size:13px;margin:10px 0 0}
table{border-collapse:collapse;font-size:13px;width:100%}
th{text-align:left;background:#f8fafc;color:#475569;font-weight:600}
th,td{padding:6px 10px;border-bottom:1px solid #e2e8f0}
.mono{font-family:ui-monospace,Menlo,monospace;font-size:12px}
.badge{display:inline-block;padding:3px 10px;border-radius:12px;font-size:13px;font-weight:600;margin-top:8px}
.ok{background:#dcfce7;color:#166534} .warn{background:#fef3c7;color:#92400e}
.neutral{background:#e2e8f0;color:#334155}
details{margin-top:10px}
pre{background:#0f172a;color:#e2e8f0;padding:12px;border-radius:8px;overflow:auto;font-size:12px}
"""


def render(record: RunRecord, *, generated_at: str | None = None) -> str:
    """The report page of a run record (a complete HTML document)."""
    state, outcome = _outcome(record)
    sections = [f"<section><h2>Phases</h2>{summary_table(record)}</section>"]
    stages = chain(record)
    if stages:
        sections.append(
            f'<section id="chain"><h2>Held-out accuracy by stage</h2>{chain_figure(stages)}'
            f"{chain_table(stages)}</section>"
        )
    timeline = timeline_figure(record)
    if timeline:
        sections.append(f"<section><h2>Timeline</h2>{timeline}</section>")
    phases = phases_in_order(record)
    links = parents(record)
    for phase, kind, jobs in phases:
        soup = next((j for p, k, js in phases if k == "soup" and links.get(p) == phase for j in js[:1]), None)
        figures = [curves_figure(phase, jobs, soup), extra_figure(phase, jobs)]
        shown = "".join(f for f in figures if f)
        if shown:
            seeds = ", ".join(str(j.seed) for j in jobs)
            sections.append(
                f"<section><h2>{_e(phase)} <small>({_e(kind)}, seeds "
                f"{_e(seeds)})</small></h2>{shown}</section>"
            )
    evals = eval_table(record)
    if evals:
        sections.append(f"<section><h2>Evaluation (final values per job)</h2>{evals}</section>")
    sections.append(f"<section><h2>Checkpoints and content identity</h2>{checkpoint_table(record)}</section>")
    spec = html.escape(json.dumps(record.spec, indent=2))
    packages = html.escape(
        json.dumps((_first_env(record).get("software") or {}).get("packages") or {}, indent=1)
    )
    sections.append(
        f"<section><h2>Run record</h2>{record_table(record)}"
        f"<details><summary>spec (run.json)</summary><pre>{spec}</pre></details>"
        f"<details><summary>installed packages</summary><pre>{packages}</pre></details></section>"
    )
    stamp = generated_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>olmorun report: {_e(record.name)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{_e(record.name)}</h1><p>{_e(record.uri)}</p>"
        f"<p>{len(record.jobs)} jobs in {len(phases)} phases · spec {_e(record.spec_hash)} · generated "
        f"{_e(stamp)}</p>"
        f'<span class="badge {state}">{_e(outcome)}</span></header>'
        f"<main>{''.join(sections)}</main></body></html>"
    )


def write_report(
    target: str, out: str, *, endpoint_url: str | None = None, load_spec: Callable[[str], Any] | None = None
) -> str:
    """Read the run at `target` (runfiles.read_run) and write its report to the local file `out`."""
    from pathlib import Path

    from olmo_operator.runfiles import read_run

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(render(read_run(target, endpoint_url=endpoint_url, load_spec=load_spec)))
    return out
