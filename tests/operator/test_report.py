"""`olmorun report` (report.py): a self-contained page whose every figure has data, rendered in headless
Chromium. The record is built in memory (pretrain -> anneal x2 -> soup -> dpo, the soup and the dpo
evaluated in rows of their own as the trainer logs them, the dpo restarted once), so every section of
the page appears: the phase table (right for a phase with an eval block, integers as integers), the
held-out accuracy chain, smoothed curves, restarts on the timeline. The end-to-end test in
tests/e2e/test_reproducibility.py renders a real run's record."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from olmo_operator.report import number, render, restarts, smooth
from olmo_operator.rundiff import JobRecord, RunRecord

IMAGES = re.compile(r'<img class="figure" alt="figure" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def job(phase: str, kind: str, seed: int, start: str, end: str, steps: int, **extra_keys: float) -> JobRecord:
    rows = [
        {
            "step": s,
            "tokens": 1024 * s,
            "loss": 5.0 / s + seed * 1e-4,
            "lr": 1e-3 * (1 - s / (steps + 1)),
            "grad_norm": 1.0 + 0.1 * s,
            "tokens_per_s": 4000.0 + s,
            "mfu": None,
            **{k: v * s for k, v in extra_keys.items()},
        }
        for s in range(1, steps + 1)
    ]
    content = {"sha256": f"{seed:064x}", "model": "b" * 64, "optim": "c" * 64, "numTensors": 100}
    env = {
        "writtenAt": start,
        "seeds": {"data": seed},
        "data": {
            "sources": [{"name": "general", "instances": 90}],
            "orderSha256": "d" * 64,
            "sampleSha256": "e" * 64,
        },
        "software": {"python": "3.11", "torch": "2.13.0", "packages": {"torch": "2.13.0"}},
        "hardware": {"devices": [], "cpuCount": 2},
        "code": {"gitCommit": "f" * 40},
    }
    return JobRecord(phase, seed, kind, "h", env, rows, {steps: content}, end)


def record() -> RunRecord:
    jobs = [
        job("pretrain", "pretrain", 6198, "2026-01-01T00:00:00+00:00", "2026-01-01T00:01:00+00:00", 12),
        job("anneal", "anneal", 42, "2026-01-01T00:01:10+00:00", "2026-01-01T00:01:40+00:00", 4),
        job("anneal", "anneal", 42069, "2026-01-01T00:01:10+00:00", "2026-01-01T00:01:45+00:00", 4),
        job("soup", "soup", 6198, "2026-01-01T00:01:50+00:00", "2026-01-01T00:01:52+00:00", 0),
        job(
            "dpo",
            "dpo",
            6198,
            "2026-01-01T00:02:00+00:00",
            "2026-01-01T00:02:30+00:00",
            6,
            **{"rewards/margin": 0.3, "rewards/accuracy": 0.1, "eval/arith/accuracy": 0.05},
        ),
    ]
    jobs[3].metrics = [{"soup": 2, "step": 4, "eval/arith/accuracy": 0.25, "eval/arith/count": 1000.0}]
    # The dpo phase has an eval block: its evaluation is a row of its own after the last training step.
    jobs[4].metrics = [{k: v for k, v in row.items() if not k.startswith("eval/")} for row in jobs[4].metrics]
    jobs[4].metrics.append({"step": 6, "eval/arith/accuracy": 0.375, "eval/arith/count": 1000.0})
    spec = {
        "phases": [
            {"name": "pretrain"},
            {"name": "anneal", "from": "pretrain"},
            {"name": "soup", "from": "anneal"},
            {"name": "dpo", "from": "soup"},
        ]
    }
    status = {
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded", "message": "done"}],
        "phases": {"dpo": {"state": "Succeeded", "jobs": [{"seed": 6198, "attempts": 2, "failures": 1}]}},
    }
    return RunRecord(
        "file:///runs/default/demo",
        "demo",
        "1234abcd",
        spec,
        {"image": "img@sha256:" + "0" * 64},
        jobs,
        status,
    )


def test_the_page_is_self_contained_and_every_figure_has_data() -> None:
    page = render(record(), generated_at="now")
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from the network
    figures = IMAGES.findall(page)
    # chain, timeline, pretrain, anneal, dpo curves, dpo post-training metrics
    assert len(figures) == 6 == page.count("<img")
    for data in figures:
        image = Image.open(io.BytesIO(base64.b64decode(data))).convert("L")
        low, high = image.getextrema()
        assert image.width > 300 and high - low > 100  # drawn, not blank
    for text in (
        "rewards/margin",
        "arith/accuracy",
        "0.3750",
        "Succeeded: done",
        "anneal/s42069",
        "1234abcd",
        f"{42:064x}"[:16],
        "general (90)",
    ):
        assert text in page, text


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_chromium_loads_every_figure(tmp_path: Path) -> None:
    """Headless Chromium (installed by .ci/run) loads the page and decodes every image."""
    browser = chromium()
    if browser is None:
        assert not os.environ.get("CI"), "CI must install chromium (.ci/run does)"
        pytest.skip("chromium is not installed here (apt-get install chromium)")
    page = render(record())
    probe = (
        "<script>addEventListener('load', () => { document.body.dataset.loaded = "
        "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length; });</script>"
    )
    path = tmp_path / "report.html"
    path.write_text(page.replace("</body>", probe + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-loaded="6"' in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, "--window-size=1300,2400", f"--screenshot={shot}", path.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    low, high = Image.open(shot).convert("L").getextrema()
    assert high - low > 100


def cells(page: str, first: str) -> list[str]:
    """The cells of the first table row whose first cell is `first`."""
    row = re.search(rf"<tr><td>{re.escape(first)}</td>(.*?)</tr>", page)
    assert row is not None, first
    return [first, *re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))]


def test_the_phase_table_reads_training_rows_and_shows_integers_as_integers() -> None:
    """Before, a phase with an eval block lost its loss and tokens (the eval row was taken for the last
    training row), and counts read `1000.0000`."""
    page = render(record(), generated_at="now")
    phases = page.split("<h2>Phases</h2>")[1].split("</section>")[0]
    dpo = cells(phases, "dpo")
    assert dpo[1:7] == ["dpo", "Succeeded", "1", "6", "6144", f"{5.0 / 6 + 6198e-4:.4f}"], dpo
    assert cells(phases, "pretrain")[4:6] == ["12", "12288"]
    evaluation = page.split("<h2>Evaluation")[1].split("</section>")[0]
    assert cells(evaluation, "soup/s6198")[1:] == ["0.2500", "1000"]
    assert "1000.0000" not in page


def test_the_chain_chart_shows_held_out_accuracy_after_each_stage() -> None:
    page = render(record(), generated_at="now")
    section = page.split('<section id="chain">')[1].split("</section>")[0]
    assert len(IMAGES.findall(section)) == 1
    assert cells(section, "soup") == ["soup", "0.2500"] and cells(section, "dpo") == ["dpo", "0.3750"]
    assert section.index("<td>soup</td>") < section.index("<td>dpo</td>")  # in the order of the chain


def test_restarts_are_on_the_timeline_and_curves_are_smoothed_with_the_raw_behind() -> None:
    assert restarts({"attempts": 2, "failures": 1}) == "2 attempts, 1 failed"
    assert restarts({"attempts": 1}) is None
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # debiased: no pull towards 0
    noisy = [1.0, 3.0] * 20
    smoothed = smooth(noisy)
    assert smoothed[0] == 1.0 and max(smoothed[10:]) - min(smoothed[10:]) < 0.6 * 2.0
    assert (number(1000.0), number(7), number(0.25), number(None)) == ("1000", "7", "0.2500", None)
