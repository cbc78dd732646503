"""Metrics of a training job: its metrics record (the one the runner parses) and wandb.

Only rank 0 tracks. The record holds one JSON object per optimizer step; how it is written (a local
file appended line by line, or segments on an object store) and read back is metrics_log.py's.
After a resume, lines of steps beyond the checkpoint (work that was redone) and a torn last line are
dropped, so the record never shows a step twice.

W&B as OLMo-core's WandBCallback uses it (src/olmo_core/train/callbacks/wandb.py): a job starts a W&B
run only when its config names a project (the spec's `tracking.wandb`); the run is grouped by the
OlmoRun, typed by the phase and tagged; it finishes with the job's exit code (1 when the job raised). It
runs offline unless WANDB_API_KEY is set; WANDB_MODE, when set, wins (e.g. `disabled`). Its directory
is `<save dir>/wandb` on a local disk; with object storage it is a temporary directory whose offline run
is uploaded to `<save dir>/wandb/` when the job ends, so `wandb sync` works later. Never the working tree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from olmo_trainer import layout
from olmo_trainer.config import TrainConfig, hash_json
from olmo_trainer.metrics_log import MetricsFile
from olmo_trainer.storage import filesystem, is_local

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
        self._save_dir = cfg.save_dir
        self._may_write = may_write
        self._upload_from: str | None = None  # the temporary wandb directory of a job on object storage
        self._offline = wandb_mode() == "offline"
        if not self.enabled:
            return
        self.metrics = MetricsFile(cfg.save_dir, resume_step=resume_step, may_write=may_write)
        if cfg.tracking.project and wandb_mode() != "disabled":
            self.wandb_run, self._upload_from = _start_wandb(cfg)

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

    def close(self, exit_code: int = 0) -> None:
        """Flush the metrics record and finish the W&B run with `exit_code` (W&B marks a run whose exit
        code is not 0 as failed); an offline run of a job on object storage is then uploaded beside
        its records, unless this attempt lost the lease."""
        if self.metrics is not None:
            self.metrics.close()
        if self.wandb_run is not None:
            run_dir = os.path.dirname(self.wandb_run.dir)  # <dir>/wandb/offline-run-<time>-<id>
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None
            _wandb_teardown()  # finish() returns before wandb-core has flushed the run file
            if self._upload_from is not None:
                if self._offline and (self._may_write is None or self._may_write()):
                    fs, root = filesystem(layout.wandb_uri(self._save_dir))
                    fs.put(run_dir, layout.join(root, os.path.basename(run_dir)), recursive=True)
                shutil.rmtree(self._upload_from, ignore_errors=True)
                self._upload_from = None


def wandb_run_id(cfg: TrainConfig) -> str:
    """`<run name>-<16 hex>`: one wandb run per job of one OlmoRun; every attempt resumes it.

    The hash covers the job's config, its save dir, the run's namespace and uid: the same spec under the
    same name in two namespaces, or deleted and created again, never logs into another run's history
    (wandb.init(resume="allow") would merge them).
    """
    identity = [cfg.config_hash(), cfg.save_dir, cfg.tracking.namespace, cfg.tracking.run_uid]
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in cfg.run[:20].lower())
    return f"{name}-{hash_json(identity)}"


def _wandb_teardown() -> None:
    import wandb

    wandb.teardown()


def _start_wandb(cfg: TrainConfig) -> tuple[Any, str | None]:
    """The W&B run of this job and, for a save dir on object storage, the temporary directory it writes
    (to upload at the end)."""
    import wandb  # imported lazily: it is slow to import and not needed on other ranks

    fs, root = filesystem(cfg.save_dir)
    temporary: str | None = None
    if is_local(fs):
        directory = root  # wandb writes into <save dir>/wandb/ = layout.wandb_uri
        os.makedirs(directory, exist_ok=True)
    else:
        directory = temporary = tempfile.mkdtemp(prefix="olmorun-wandb-")
    tracking = cfg.tracking
    run = wandb.init(
        project=tracking.project,
        entity=tracking.entity,
        group=tracking.group,
        job_type=tracking.job_type,
        tags=tracking.tags or None,
        name=f"{cfg.run}-{cfg.phase}-s{cfg.seed}",
        id=wandb_run_id(cfg),
        resume="allow",
        dir=directory,
        mode=wandb_mode(),  # type: ignore[arg-type]  # WANDB_MODE is checked by wandb itself
        config=cfg.model_dump(mode="json"),
    )
    return run, temporary
