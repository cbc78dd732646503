"""Metrics of a training job: its metrics record (the one the runner parses) and wandb.

Only rank 0 tracks. The record holds one JSON object per optimizer step; how it is written (a local
file appended line by line, or segments on an object store) and read back is metrics_log.py's.
After a resume, lines of steps beyond the checkpoint (work that was redone) and a torn last line are
dropped, so the record never shows a step twice.

wandb runs offline unless WANDB_API_KEY is set; WANDB_MODE, when set, wins (e.g. `disabled`). Its
directory lives inside a local save dir, else in a temporary directory, never the working tree.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

from olmo_trainer.config import TrainConfig, hash_json
from olmo_trainer.manifest import filesystem, is_local
from olmo_trainer.metrics_log import MetricsFile

# bf16 dense peak FLOP/s by device name fragment (H200 has H100's compute, more memory bandwidth).
PEAK_FLOPS = {"H100": 989.5e12, "H200": 989.5e12, "A100": 312e12}


def peak_flops(device_name: str | None) -> float | None:
    """Peak bf16 FLOP/s of an accelerator, None for a CPU or an unknown device (MFU is not reported)."""
    if not device_name:
        return None
    for fragment, flops in PEAK_FLOPS.items():
        if fragment in device_name:
            return flops
    return None


def mfu(
    tokens_per_s: float, flops_per_token: int, peak_per_device: float | None, num_devices: int
) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the devices' peak."""
    if peak_per_device is None or num_devices <= 0:
        return None
    return tokens_per_s * flops_per_token / (peak_per_device * num_devices)


def wandb_mode() -> str:
    """WANDB_MODE when set, else online with an API key and offline without."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


class Tracker:
    """metrics.jsonl + wandb for rank 0; every method is a no-op on other ranks."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        rank: int,
        resume_step: int | None,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        self.enabled = rank == 0
        self.metrics: MetricsFile | None = None
        self.wandb_run: Any = None
        if not self.enabled:
            return
        self.metrics = MetricsFile(cfg.save_dir, resume_step=resume_step, may_write=may_write)
        if wandb_mode() != "disabled":
            self.wandb_run = _start_wandb(cfg)

    def log(self, record: dict[str, Any]) -> bool:
        """Record one step's metrics. False once the metrics record refused a write (`may_write`: the
        lease is lost); nothing is logged anywhere from then on."""
        if self.metrics is not None:
            self.metrics.append(record)
            if self.metrics.fenced:
                return False
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if v is not None}, step=record["step"])
        return True

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def wandb_run_id(cfg: TrainConfig) -> str:
    """`<run name>-<16 hex>`: one wandb run per job of one OlmoRun; every attempt resumes it.

    The hash covers the job's config, its save dir, the run's namespace and uid: the same spec under the
    same name in two namespaces, or deleted and created again, never logs into another run's history
    (wandb.init(resume="allow") would merge them).
    """
    identity = [cfg.config_hash(), cfg.save_dir, cfg.tracking.namespace, cfg.tracking.run_uid]
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in cfg.run[:20].lower())
    return f"{name}-{hash_json(identity)}"


def _start_wandb(cfg: TrainConfig) -> Any:
    import wandb  # imported lazily: it is slow to import and not needed on other ranks

    fs, root = filesystem(cfg.save_dir)
    if is_local(fs):
        directory = root  # wandb writes into <dir>/wandb/
        os.makedirs(directory, exist_ok=True)
    else:
        directory = tempfile.mkdtemp(prefix="olmorun-wandb-")
    return wandb.init(
        project=cfg.tracking.project or cfg.run,
        entity=cfg.tracking.entity,
        name=f"{cfg.run}-{cfg.phase}-s{cfg.seed}",
        id=wandb_run_id(cfg),
        resume="allow",
        dir=directory,
        mode=wandb_mode(),  # type: ignore[arg-type]  # WANDB_MODE is checked by wandb itself
        config=cfg.model_dump(mode="json"),
    )
