"""The training loop under torchrun with 2 gloo processes on the tiny preset (seq 64, 40 steps).

One FSDP2 reference run (cached for the whole session, see dist_util.reference_run) is checked to
learn, to log every step, and to end in a final committed checkpoint; a second identical run must be
bit-identical; a DDP run without gradient accumulation must match FSDP2 with accumulation.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from olmo_trainer.checkpoint import load_full_state_dict, read_train_config
from olmo_trainer.config import TrainConfig
from olmo_trainer.layout import plan_steps
from olmo_trainer.manifest import latest_committed, read_manifest
from olmo_trainer.schedule import build_schedule
from tests.trainer.dist_util import read_metrics, reference_run, tiny_config, torchrun, trainer

pytestmark = pytest.mark.slow


def unigram_entropy(cfg: TrainConfig, steps: int) -> float:
    """Entropy (nats) of the token frequencies in exactly the batches the run trained on."""
    from olmo_trainer.data import DistributedBatches, build_dataset

    assert cfg.data is not None and cfg.batch is not None
    work = str(Path(cfg.save_dir) / "work")
    dataset = build_dataset(cfg.data, seed=cfg.seed, work_dir=work)
    batches = DistributedBatches(
        dataset,
        global_batch_size=cfg.batch.global_batch_size,
        micro_batch_size=cfg.batch.global_batch_size,
        rank=0,
        world_size=1,
        seed=cfg.seed,
        work_dir=work,
    )
    counts: Counter[int] = Counter()
    for _, micro_batches in zip(range(steps), batches, strict=False):
        for batch in micro_batches:
            counts.update(batch[:, 1:].flatten().tolist())  # the predicted tokens
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


def test_two_processes_learn_well_below_the_unigram_entropy() -> None:
    run = reference_run()
    metrics = read_metrics(run.save_dir)
    entropy = unigram_entropy(run.config, steps=len(metrics))
    first, final = metrics[0]["loss"], sum(m["loss"] for m in metrics[-3:]) / 3
    assert first > entropy  # starts near log(vocab): knows nothing
    # Half a nat below what the best context-free model could reach: it has learned to use context.
    assert final < entropy - 0.5, f"final loss {final:.3f} vs unigram entropy {entropy:.3f}"


def test_every_step_is_logged_once_with_its_schedule() -> None:
    run = reference_run()
    metrics = read_metrics(run.save_dir)
    plan = plan_steps(run.config, world_size=2)
    assert [m["step"] for m in metrics] == list(range(1, plan.total_steps + 1))
    assert [m["tokens"] for m in metrics] == [s * 8 * 64 for s in range(1, plan.total_steps + 1)]
    schedule = build_schedule(
        run.config.schedule,
        peak_lr=6e-3,
        tokens_per_step=plan.tokens_per_step,
        total_tokens=plan.total_tokens,
    )
    assert [m["lr"] for m in metrics] == [schedule.lr(m["tokens"]) for m in metrics]
    assert max(m["lr"] for m in metrics) == pytest.approx(6e-3)
    for m in metrics:
        assert m["mfu"] is None  # CPU: no peak to compare with
        assert m["tokens_per_s"] > 0 and m["grad_norm"] > 0
        assert 0 < m["z_loss"] < 1e-5 * 100  # coef 1e-5 times lse^2 of a small vocabulary


def test_checkpoints_at_interval_and_final() -> None:
    run = reference_run()
    checkpoints = run.save_dir / "checkpoints"
    found = latest_committed(*_local(checkpoints))
    assert found is not None and found[0] == 40
    manifest = read_manifest(*_local(checkpoints / "step40"))
    assert manifest is not None and manifest["extra"]["final"] is True
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step10", "step20", "step30", "step40"]
    assert read_train_config(str(checkpoints / "step40")) == run.config  # the checkpoint describes itself


def test_same_config_twice_gives_bit_identical_losses(tmp_path: Path) -> None:
    run = reference_run()
    again = torchrun(["pretrain", "--config", str(tiny_config(tmp_path))])
    assert again.returncode == 0, again.stderr[-3000:]
    ours, theirs = read_metrics(tmp_path / "out"), read_metrics(run.save_dir)
    assert [m["loss"] for m in ours] == [m["loss"] for m in theirs]
    assert [m["grad_norm"] for m in ours] == [m["grad_norm"] for m in theirs]
    # The same weights and optimizer state (content identity), the same data order, in another directory.
    final = [read_manifest(*_local(d / "checkpoints" / "step40")) for d in (tmp_path / "out", run.save_dir)]
    assert final[0] is not None and final[1] is not None
    assert final[0]["content"] == final[1]["content"]
    envs = [json.loads((d / "env.json").read_text())["data"] for d in (tmp_path / "out", run.save_dir)]
    assert envs[0] == envs[1]


def test_ddp_without_accumulation_matches_fsdp_with_accumulation(tmp_path: Path) -> None:
    # FSDP2: micro 2 x world 2 x accumulation 2. DDP: micro 4 x world 2 x accumulation 1. Same global
    # batches, so the same losses: both the sharding and the accumulation's loss scaling are checked.
    run = reference_run()
    config = tiny_config(
        tmp_path, parallel={"strategy": "ddp"}, batch={"globalBatchSize": 8, "microBatchSize": 4}
    )
    ddp = torchrun(["pretrain", "--config", str(config)])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    ours, theirs = read_metrics(tmp_path / "out"), read_metrics(run.save_dir)
    assert len(ours) == len(theirs) == 40
    for a, b in zip(ours, theirs, strict=True):
        # Summation order differs (all-reduce vs reduce-scatter, one vs two micro-batches); the ~1e-7
        # differences compound over the steps, so the late steps get a slightly looser bound.
        assert abs(a["loss"] - b["loss"]) < (1e-5 if a["step"] <= 30 else 5e-5), a["step"]
        if a["step"] <= 10:  # the gradient norm is more sensitive still
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), a["step"]


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path: Path) -> None:
    # 10 steps on the reference's schedule (t_max pinned to its 40 steps): recomputed activations must
    # give the very same losses and a checkpoint with the same names and the same bits.
    run = reference_run()
    schedule = {"warmupSteps": 2, "finalLrRatio": 0.5, "tMaxTokens": 40 * 512}
    parallel = {"strategy": "fsdp", "activationCheckpointing": True}
    config = tiny_config(tmp_path, maxSteps=10, schedule=schedule, parallel=parallel)
    result = torchrun(["pretrain", "--config", str(config)])
    assert result.returncode == 0, result.stderr[-3000:]
    ours, theirs = read_metrics(tmp_path / "out"), read_metrics(run.save_dir)[:10]
    assert [m["loss"] for m in ours] == [m["loss"] for m in theirs]
    mine = load_full_state_dict(str(tmp_path / "out" / "checkpoints" / "step10"))
    gold = load_full_state_dict(str(run.save_dir / "checkpoints" / "step10"))
    assert mine.keys() == gold.keys()
    assert all(torch.equal(mine[k], gold[k]) for k in gold)


def test_compiled_blocks_train_like_eager_ones_and_save_the_same_names(tmp_path: Path) -> None:
    """torch.compile (inductor, on CPU here) per block, under FSDP2 with 2 ranks: the reference's losses
    to float tolerance (fused kernels round differently) and checkpoints with the same parameter names."""
    run = reference_run()
    schedule = {"warmupSteps": 2, "finalLrRatio": 0.5, "tMaxTokens": 40 * 512}
    config = tiny_config(
        tmp_path, maxSteps=5, schedule=schedule, parallel={"strategy": "fsdp", "compile": True}
    )
    result = torchrun(["pretrain", "--config", str(config)], timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    ours, theirs = read_metrics(tmp_path / "out"), read_metrics(run.save_dir)[:5]
    assert [m["step"] for m in ours] == [1, 2, 3, 4, 5]
    for mine, gold in zip(ours, theirs, strict=True):
        assert abs(mine["loss"] - gold["loss"]) < 1e-4, (mine, gold)
    compiled = load_full_state_dict(str(tmp_path / "out" / "checkpoints" / "step5"))
    assert compiled.keys() == load_full_state_dict(str(run.save_dir / "checkpoints" / "step10")).keys()


def test_anneal_inherits_the_parents_lr_and_weights(tmp_path: Path) -> None:
    """One process without torchrun (accumulation 4), wandb offline, starting from the reference."""
    run = reference_run()
    parent = str(run.save_dir / "checkpoints" / "step40")
    parent_lr = read_metrics(run.save_dir)[-1]["lr"]
    config = tiny_config(
        tmp_path,
        kind="anneal",
        phase="anneal",
        initFrom=parent,
        optim={"lr": "inherit"},
        schedule={"kind": "linear"},
        maxSteps=4,
        tracking={"project": "tiny"},
    )
    result = trainer(["anneal", "--config", str(config)], env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "out")
    assert [m["lr"] for m in metrics] == pytest.approx([parent_lr * f for f in (0.75, 0.5, 0.25, 0.0)])
    assert {m["total_steps"] for m in metrics} == {4}  # the whole budget on every line (the ETA reads it)
    # Starts from the parent's weights: the loss continues where pretraining ended, not at log(V).
    assert metrics[0]["loss"] < read_metrics(run.save_dir)[-1]["loss"] + 0.3
    manifest = read_manifest(*_local(tmp_path / "out" / "checkpoints" / "step4"))
    assert manifest is not None and manifest["parent"] == parent
    assert list((tmp_path / "out" / "wandb").glob("offline-run-*"))


def test_soup_kind_dispatches_to_the_soup(tmp_path: Path) -> None:
    run = reference_run()
    ingredients = [str(run.save_dir / "checkpoints" / f"step{s}") for s in (30, 40)]
    config = tiny_config(tmp_path, kind="soup", phase="soup", soupFrom=ingredients, data=None, batch=None)
    result = trainer(["soup", "--config", str(config)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "averaged 2 checkpoints" in result.stdout
    assert read_manifest(*_local(tmp_path / "out" / "checkpoints" / "step40")) is not None


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, maxSteps=None, maxTokens="100K")
    result = trainer(["pretrain", "--config", str(config), "--dry-run"], env={"WORLD_SIZE": "2"})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    cfg = TrainConfig.model_validate_json(config.read_text())
    assert summary["numParams"] == cfg.model.num_params()
    assert summary["flopsPerToken"] == cfg.model.flops_per_token(64)
    assert summary["tokensPerStep"] == 8 * 64
    assert summary["gradientAccumulation"] == 2
    assert summary["totalSteps"] == math.ceil(100_000 / 512)
    assert summary["config"]["model"]["dModel"] == 64
    assert not (tmp_path / "out").exists()


def test_user_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    mismatch = trainer(["anneal", "--config", str(tiny_config(tmp_path))])
    assert mismatch.returncode == 2 and "config is a pretrain phase" in mismatch.stderr
    missing = trainer(["pretrain", "--config", str(tmp_path / "nope.json")])
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad = tiny_config(tmp_path, name="bad.json", maxSteps=-1)
    invalid = trainer(["pretrain", "--config", str(bad)])
    assert invalid.returncode == 2 and "maxSteps" in invalid.stderr
    for result in (mismatch, missing, invalid):
        assert "Traceback" not in result.stderr


def _local(path: Path) -> tuple[object, str]:
    from olmo_trainer.storage import filesystem

    return filesystem(str(path))
