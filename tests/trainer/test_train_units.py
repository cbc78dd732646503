"""Pure pieces of the loop: the LM loss with z-loss, the step plan, MFU, metrics.jsonl hygiene, and the
GPU benchmark's --smoke mode (so that the prepared GPU script cannot rot where no GPU exists)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from olmo_trainer.config import TrainConfig
from olmo_trainer.layout import plan_steps
from olmo_trainer.metrics_log import MetricsFile, clean_lines
from olmo_trainer.objectives.lm import lm_loss
from olmo_trainer.tracking import mfu, peak_flops
from tests.trainer.dist_util import REPO, tiny_config


def test_lm_loss_is_shifted_cross_entropy_plus_z_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 17, generator=generator) * 4
    tokens = torch.randint(0, 17, (3, 9), generator=generator)
    out = lm_loss(logits, tokens, z_loss=1e-2)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 17), tokens[:, 1:].reshape(-1))
    z = 1e-2 * torch.logsumexp(logits[:, :-1], dim=-1).pow(2).mean()
    torch.testing.assert_close(out.ce, ce)
    torch.testing.assert_close(out.z, z)
    torch.testing.assert_close(out.loss, ce + z)


def test_lm_loss_gradient_flows_only_through_loss() -> None:
    logits = torch.randn(2, 5, 7, requires_grad=True)
    out = lm_loss(logits, torch.randint(0, 7, (2, 5)), z_loss=1e-4)
    out.loss.backward()
    assert logits.grad is not None and logits.grad[:, -1].abs().sum() == 0  # last position has no target
    assert not out.ce.requires_grad and not out.z.requires_grad


def test_lm_loss_sum_reduction_and_low_precision_logits() -> None:
    """reduction="sum" adds every target (the loop divides by the global count); bf16 logits are
    reduced in float32, so the loss does not lose the bits that z-loss and CE differ by."""
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 6, 11, generator=generator) * 3).bfloat16()
    tokens = torch.randint(0, 11, (2, 6), generator=generator)
    mean = lm_loss(logits.float(), tokens, z_loss=0.5)
    total = lm_loss(logits, tokens, z_loss=0.5, reduction="sum")
    assert total.loss.dtype == total.ce.dtype == total.z.dtype == torch.float32
    targets = 2 * 5
    torch.testing.assert_close(total.ce, mean.ce * targets)
    torch.testing.assert_close(total.z, mean.z * targets)
    torch.testing.assert_close(total.loss, (mean.ce + mean.z) * targets)
    assert lm_loss(logits, tokens, z_loss=0.0).z == 0.0


def config(tmp_path: Path, **overrides: object) -> TrainConfig:
    return TrainConfig.model_validate_json(tiny_config(tmp_path, **overrides).read_text())


def test_plan_steps_accumulation_and_budget(tmp_path: Path) -> None:
    plan = plan_steps(config(tmp_path, maxSteps=None, maxTokens="10K"), world_size=2)
    assert (plan.accumulation, plan.tokens_per_step) == (2, 512)
    assert plan.total_steps == 20  # ceil(10000 / 512): the budget is reached, not undershot
    assert plan_steps(config(tmp_path, maxTokens="10K"), world_size=4).total_steps == 40  # maxSteps wins
    assert plan_steps(config(tmp_path), world_size=1).accumulation == 4
    with pytest.raises(ValueError, match="not divisible"):
        plan_steps(config(tmp_path), world_size=3)


def test_mfu_uses_the_device_peak() -> None:
    assert peak_flops("NVIDIA H200") == peak_flops("NVIDIA H100 80GB HBM3") == 989.5e12
    assert peak_flops(None) is None and mfu(1e4, 10**9, None, 1) is None
    assert mfu(50_000, 10**10, 989.5e12, 1) == pytest.approx(5e14 / 989.5e12)
    assert mfu(50_000, 10**10, 989.5e12, 2) == pytest.approx(5e14 / 989.5e12 / 2)


def test_metrics_file_drops_redone_steps_and_torn_lines_on_resume(tmp_path: Path) -> None:
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "lo')
    metrics = MetricsFile(str(tmp_path), resume_step=3)
    metrics.append({"step": 4, "loss": float("nan")})
    metrics.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["loss"] is None  # NaN is not JSON
    assert clean_lines("\n".join(lines), up_to_step=None) == lines
    MetricsFile(str(tmp_path), resume_step=None)  # a fresh start owns the file
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def run_gpu_bench(out: Path, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess[str], Any]:
    """bench/gpu_bench.py as a session with a GPU runs it; returns the process and its JSON record."""
    result = subprocess.run(
        [sys.executable, "bench/gpu_bench.py", *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads(out.read_text())


def test_gpu_bench_smoke_runs_on_cpu(tmp_path: Path) -> None:
    result, record = run_gpu_bench(tmp_path / "gpu_bench.json", "--smoke", timeout=120)
    assert record["preset"] == "tiny" and record["seq"] == 64 and record["tokens_per_s_per_gpu"] > 0
    assert record["mfu"] is None and record["flops_per_token"] > 0
    assert "| tokens/s/GPU | MFU |" in result.stdout and "| tiny | 64 |" in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (CPU counterpart: the smoke test)"
)
def test_gpu_bench_bf16_fsdp_compile_on_cuda(tmp_path: Path) -> None:
    args = ["--preset", "tiny", "--seq", "128", "--warmup", "1", "--steps", "2"]
    _, record = run_gpu_bench(tmp_path / "gpu_bench.json", *args, timeout=600)
    assert record["precision"] == "bf16" and record["compile"] is True and record["max_memory_gib"] > 0
    assert record["last_loss"] == pytest.approx(record["first_loss"], abs=1.0)  # finite, sane
