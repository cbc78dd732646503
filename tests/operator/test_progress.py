"""Progress people trust (issue 26 #3): a smoothed step rate and ETA for every kind with a budget (SFT
and DPO with `maxSteps` too), one number format, lr and grad norm on the line, a tqdm bar on a terminal
and plain lines elsewhere. The job's metrics are a real metrics.jsonl in local storage, read by the
operator's own reader (observe.last_metrics); the clock is the test's."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import yaml

from olmo_operator import layout
from olmo_operator.api import JobStatus, OlmoRun, PhaseStatus, parse_olmorun
from olmo_operator.progress import Display, Rate, Tracker, count, progress_lines

ROOT = Path(__file__).parents[2]


def running(tmp_path: Path, phase_name: str, *, epochs: bool = False) -> tuple[OlmoRun, Path]:
    """The tiny example with one job of `phase_name` Running; returns its metrics.jsonl path. The SFT
    phase gets a `maxSteps` budget unless `epochs` (as the example: its total comes from its data)."""
    document = yaml.safe_load((ROOT / "examples" / "olmorun-tiny.yaml").read_text())
    document["spec"]["storage"] = {"uri": tmp_path.as_uri()}
    for phase in document["spec"]["phases"]:
        if phase["kind"] == "sft" and not epochs:
            phase["maxSteps"] = 50  # the example trains for epochs; a budget in steps is known up front
    run = parse_olmorun(document)
    phase = run.phase(phase_name)
    status = run.status.phases.setdefault(phase_name, PhaseStatus())
    status.jobs = [
        JobStatus(name=f"olmo2-tiny-{phase_name}-a1", seed=run.spec.seed, state="Running", attempts=1)
    ]
    metrics = Path(tmp_path / "default" / "olmo2-tiny" / "phases" / phase_name / "metrics.jsonl")
    assert layout.save_dir(run, phase, run.spec.seed).endswith(f"phases/{phase_name}")
    metrics.parent.mkdir(parents=True)
    return run, metrics


def log(path: Path, *rows: dict[str, Any]) -> None:
    with path.open("a") as stream:
        stream.writelines(json.dumps(row) + "\n" for row in rows)


def test_the_eta_comes_from_a_smoothed_rate_not_the_last_step() -> None:
    """A step rate of 1/s, then one fast poll: the ETA moves by the smoothing, not to the new rate."""
    rate = Rate()
    for second in range(5):
        rate.observe(second, float(second))
    assert rate.per_s == 1.0
    rate.observe(14, 5.0)  # ten steps in one second, once
    assert rate.per_s is not None and 1.0 < rate.per_s < 4.0  # 0.7 * 1 + 0.3 * 10 = 3.7
    rate.observe(2, 6.0)  # a resume from an older checkpoint restarts the average
    assert rate.per_s is None and rate.step == 2


def test_sft_with_max_steps_has_a_total_and_an_eta_and_the_line_has_lr_and_grad_norm(tmp_path: Path) -> None:
    run, metrics = running(tmp_path, "sft")
    assert run.phase("sft").max_steps is not None
    clock = iter([0.0, 10.0])
    tracker = Tracker(clock=lambda: next(clock))
    log(
        metrics,
        {"step": 2, "loss": 2.5, "lr": 3e-4, "grad_norm": 1.25, "tokens": 358400, "tokens_per_s": 1000.0},
    )
    first = progress_lines(run, {}, tracker)
    log(
        metrics,
        {"step": 12, "loss": 2.0, "lr": 2e-4, "grad_norm": 0.5, "tokens": 360448, "tokens_per_s": 999.0},
    )
    [line] = progress_lines(run, {}, tracker)
    total = run.phase("sft").max_steps
    assert f"step 12/{total}" in line and "lr 2.00e-04" in line and "gnorm 0.5" in line
    assert "tokens 360k" in line and "tok/s 999" in line
    assert f"ETA {__import__('datetime').timedelta(seconds=round(total - 12))}" in line  # 1 step/s
    assert "ETA ?" in first[0]  # one observation and no tokens per step known for SFT: not yet


def test_sft_for_epochs_takes_its_total_from_the_trainers_metrics_line(tmp_path: Path) -> None:
    """An SFT phase that trains for `epochs` knows its steps only from its data: the trainer writes the
    total on every metrics line (`total_steps`), and the line shows it and an ETA."""
    run, metrics = running(tmp_path, "sft", epochs=True)
    assert run.phase("sft").max_steps is None and run.phase("sft").max_tokens is None
    clock = iter([0.0, 10.0])
    tracker = Tracker(clock=lambda: next(clock))
    log(metrics, {"step": 2, "loss": 2.5, "lr": 3e-4, "grad_norm": 1.0, "tokens": 100, "total_steps": 40})
    progress_lines(run, {}, tracker)
    log(metrics, {"step": 12, "loss": 2.0, "lr": 2e-4, "grad_norm": 0.5, "tokens": 600, "total_steps": 40})
    [line] = progress_lines(run, {}, tracker)
    assert "step 12/40" in line and "ETA 0:00:28" in line  # 28 steps left at 1 step/s
    log(metrics, {"step": 13, "loss": 2.0, "lr": 2e-4, "grad_norm": 0.5, "tokens": 650, "total_steps": "40"})
    assert "step 13/?" in progress_lines(run, {}, Tracker(clock=lambda: 0.0))[0]  # not a count: ignored


def test_one_number_format_for_counts_and_rates() -> None:
    assert [count(v) for v in (358400, 360448, 999, 5123.4, 2.5e9, None)] == [
        "358k",
        "360k",
        "999",
        "5.12k",
        "2.5G",
        "-",
    ]


def test_a_terminal_gets_a_bar_and_a_log_gets_plain_lines(tmp_path: Path) -> None:
    run, metrics = running(tmp_path, "pretrain")
    log(
        metrics,
        {"step": 5, "loss": 3.0, "lr": 1e-3, "grad_norm": 2.0, "tokens": 10240, "tokens_per_s": 2048.0},
    )
    plain = io.StringIO()
    Display(plain, terminal=False).show(run)
    assert plain.getvalue().startswith("  pretrain") and "%|" not in plain.getvalue()
    screen = io.StringIO()
    display = Display(screen, terminal=True)
    display.show(run)
    display.close()
    shown = screen.getvalue()
    # maxTokens 400K over 16 x 128 tokens per step: 196 steps; 2048 tokens/s is one step a second.
    assert "%|" in shown and "5/196" in shown and "ETA 0:03:11" in shown, shown
