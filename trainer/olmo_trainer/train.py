"""The ONE training loop of every training phase, run under torchrun (one process per GPU).

    torchrun --nproc_per_node=8 -m olmo_trainer pretrain --config s3://bucket/run/phases/p/config.json

One call of `train(cfg)`: join the process group, build the model on the meta device, materialise
and initialise it from a seeded generator (identical on every rank), wrap it (DDP or FSDP2, optional
activation checkpointing and compile), then resume from the newest committed checkpoint of this
phase, or else start from the parent phase's weights (`init_from`). Each optimizer step accumulates
gradients over micro-batches, clips, steps AdamW at the scheduled LR, appends a line to
metrics.jsonl and, every `checkpoint.interval_steps` and at the end, saves a checkpoint.

What is trained is an objective plugged in by kind (objectives/: lm for pretrain/anneal, sft, dpo):
its data, batch type, loss and logged metrics. The contract is in objectives/__init__.py; this file
never looks inside a batch.

Exact resume: the checkpoint holds the model, optimizer, tokens seen, the data position and the RNG
states, and CPU runs use deterministic algorithms, so a killed and restarted run ends bit-identical
to an uninterrupted one. (GPU runs are not forced deterministic: that would cost throughput.)

Every rank materialises the whole model before FSDP2 keeps its shard: simple, and identical
weights everywhere by construction; it needs one full fp32 copy per GPU at start (7B: 28 GB). On SIGTERM
(preemption, a pod being evicted) the current step finishes, a
checkpoint is saved and the process exits with EXIT_PREEMPTED; the retried job resumes there.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from olmo_trainer import storage
from olmo_trainer.build import build_model, seed_everything
from olmo_trainer.checkpoint import Checkpointer, load_model_weights, read_trainer_state, save_due
from olmo_trainer.config import TrainConfig
from olmo_trainer.distributed import (
    DistInfo,
    all_reduce_sum,
    init_distributed,
    set_gradient_sync,
)
from olmo_trainer.environment import write_env
from olmo_trainer.errors import ConfigurationError
from olmo_trainer.evaluate import InLoopEvaluator, evaluate
from olmo_trainer.export import is_hf_folder, load_hf_into
from olmo_trainer.failure import PermanentFailure, record_notice
from olmo_trainer.layout import EXIT_PREEMPTED, StepPlan, checkpoints_dir
from olmo_trainer.lease import Lease
from olmo_trainer.objectives import TRAINER_STATE_TYPES, Objective, build_objective
from olmo_trainer.optim import build_optimizer
from olmo_trainer.schedule import Schedule, build_schedule
from olmo_trainer.skip_step import SkipStepRule
from olmo_trainer.tracking import Tracker, mfu, peak_flops

StepHook = Callable[[int, int, int], dict[str, float]]
"""(step, tokens before it, tokens after it) -> figures to add to the step's metrics line."""

# ---------------------------------------------------------------------------------------------
# Pure arithmetic of a run (the step arithmetic, plan_steps/StepPlan, is in layout.py: torch-free)
# ---------------------------------------------------------------------------------------------


def peak_lr(cfg: TrainConfig) -> float:
    """The configured LR, or for `lr: inherit` the last LR of the parent phase's checkpoint."""
    if cfg.optim.lr != "inherit":
        return float(cfg.optim.lr)
    if cfg.init_from is None:
        raise ConfigurationError(
            "optim.lr is `inherit` but there is no initFrom checkpoint to inherit it from"
        )
    state = read_trainer_state(cfg.init_from, allowed=TRAINER_STATE_TYPES)  # the parent may be RL
    if "lr" not in state:
        raise ConfigurationError(f"{cfg.init_from}: its trainer state records no `lr` to inherit")
    return float(state["lr"])


# ---------------------------------------------------------------------------------------------
# Trainer state: what a checkpoint records besides model and optimizer
# ---------------------------------------------------------------------------------------------


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class TrainerState:
    """Step, tokens seen, last LR, data position and RNG states (Stateful, for app_state["trainer"]).

    The checkpointer gathers this state from every rank (RNG states differ by rank) into trainer.pt;
    `lr` is what an annealing phase with `lr: inherit` reads back from rank 0's.
    """

    device: torch.device
    data: Any = None
    """The DistributedBatches whose position is saved (Stateful)."""
    step: int = 0
    tokens: int = 0
    lr: float = 0.0
    skip: SkipStepRule | None = None
    """optim.skipStep's history and skip count (the same on every rank: it sees reduced values)."""
    preempted: bool = field(default=False, compare=False)

    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "tokens": self.tokens,
            "lr": self.lr,
            "data": self.data.state_dict() if self.data is not None else {},
            "rng": _rng_state(self.device),
        }
        if self.skip is not None:
            state["skip_step"] = self.skip.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens, self.lr = int(state["step"]), int(state["tokens"]), float(state["lr"])
        if self.data is not None and state.get("data"):
            self.data.load_state_dict(state["data"])
        if self.skip is not None and state.get("skip_step"):
            self.skip.load_state_dict(state["skip_step"])
        if "rng" in state:
            _set_rng_state(state["rng"], self.device)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def _autocast(cfg: TrainConfig, info: DistInfo) -> contextlib.AbstractContextManager[Any]:
    # FSDP2 already computes in bf16 through its MixedPrecisionPolicy; DDP needs autocast. CPU: fp32.
    if info.is_cuda and cfg.parallel.precision == "bf16" and cfg.parallel.strategy == "ddp":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync_context(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """No gradient all-reduce on non-final micro-batches: DDP's no_sync, FSDP2's requires_gradient_sync."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if sync else model.no_sync()
    set_gradient_sync(model, sync)
    return contextlib.nullcontext()


def _grad_norm(model: nn.Module, max_norm: float | None) -> float:
    """Clip to max_norm (FSDP2's DTensor grads included) and return the norm before clipping."""
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm is not None else math.inf)
    full = getattr(norm, "full_tensor", None)  # a DTensor under FSDP2
    return float(full() if full is not None else norm)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Step:
    """What one optimizer step measured: metric sums over every rank, the global denominator, the grad
    norm, whether any rank was asked to stop (SIGTERM), and whether the update was skipped."""

    sums: dict[str, float]
    denominator: float
    grad_norm: float
    stop: bool = False
    skipped: bool = False


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    micro_batches: list[Any],
    *,
    cfg: TrainConfig,
    info: DistInfo,
    lr: float,
    preempted: bool = False,
    skip: SkipStepRule | None = None,
) -> Step:
    """Forward/backward every micro-batch, clip, reduce the metrics, step AdamW at `lr`.

    Each micro-batch's loss is a sum; backward runs on `loss * world / D`, D the step's denominator
    summed over ranks, because DDP and FSDP2 average gradients over ranks: the update is the gradient of
    (global sum) / D, whatever the micro-batch size, accumulation or world size.

    The update is not applied when the loss or gradient norm is not finite (the loop then stops the
    job as Diverged), nor when `skip` (optim.skipStep) judges the step an outlier. Both are decided
    from values every rank shares, so every rank makes the same decision.
    """
    # Models the objective trains besides the policy (PPO's value model) step with it, at the same LR.
    trained = [(model, optimizer), *objective.auxiliary().values()]
    for _, optim in trained:
        for group in optim.param_groups:
            group["lr"] = lr
    micro_batches = objective.step_inputs(model, micro_batches)
    (denominator,) = all_reduce_sum([objective.denominator(micro_batches)], info)
    scale = info.world_size / denominator if denominator > 0 else 0.0
    sums: dict[str, torch.Tensor] = {}
    count = len(micro_batches)
    for index, batch in enumerate(micro_batches):
        last = index == count - 1
        with contextlib.ExitStack() as stack, _autocast(cfg, info):
            for module, _ in trained:
                stack.enter_context(_sync_context(module, last))
            out = objective.loss(model, batch)
            (out.loss * scale).backward()
        for key, value in out.sums.items():
            value = torch.as_tensor(value, dtype=torch.float64, device=info.device)
            sums[key] = sums[key] + value if key in sums else value
    grad_norm = _grad_norm(model, cfg.optim.max_grad_norm)
    # One collective per step, before the update (the skip-step rule judges the global loss): the
    # metric sums, and whether any rank got a SIGTERM by now.
    keys = sorted(sums)
    reduced = all_reduce_sum([*(float(sums[k].item()) for k in keys), float(preempted)], info)
    totals = dict(zip(keys, reduced[:-1], strict=True))
    loss = float(objective.metrics(totals, denominator).get("loss", 0.0))
    # A non-finite value (the norm is the same on every rank: gradients are reduced before it is
    # taken) means the run diverged: the weights stay as they were and the loop stops the job.
    finite = math.isfinite(grad_norm) and math.isfinite(loss)
    skipped = finite and skip is not None and skip.observe(loss, grad_norm).skip
    for module, optim in trained:
        if module is not model:
            _grad_norm(module, cfg.optim.max_grad_norm)  # each model clipped on its own norm
        if finite and not skipped:
            optim.step()
        optim.zero_grad(set_to_none=True)
    return Step(totals, denominator, grad_norm, stop=reduced[-1] > 0, skipped=skipped)


DIVERGENCE_KEYS = ("loss", "grad_norm")
"""Metrics whose non-finite value stops a job (OLMo's trainer stops on a NaN loss)."""


def check_finite(step: int, record: dict[str, Any]) -> None:
    """Raise PermanentFailure("Diverged") naming the step and each non-finite metric of DIVERGENCE_KEYS.

    The values are reduced over ranks (loss) or equal on every rank (gradient norm), so every rank
    stops at the same step, and no checkpoint of the diverged weights is saved.
    """
    bad = {
        k: record[k]
        for k in DIVERGENCE_KEYS
        if isinstance(record.get(k), float) and not math.isfinite(record[k])
    }
    if bad:
        values = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise PermanentFailure(
            "Diverged",
            f"{values} at step {step}; the last checkpoint before it is kept. Lower optim.lr, set "
            "optim.maxGradNorm, or resume from an earlier checkpoint with another data seed",
            step=step,
        )


def check_skip_limit(step: int, rule: SkipStepRule | None, record: dict[str, Any], info: DistInfo) -> None:
    """After a skipped update: a warning, and PermanentFailure("Diverged") once the job skipped more
    than optim.skipStep.maxSkipped steps (the run is not recovering)."""
    assert rule is not None
    if info.rank == 0:
        print(
            f"warning: step {step} skipped by optim.skipStep (loss {record['loss']:.4f}, grad_norm "
            f"{record['grad_norm']:.3f}): {rule.skipped} skipped of {rule.limit} allowed",
            flush=True,
        )
    if rule.exceeded:
        raise PermanentFailure(
            "Diverged",
            f"{rule.skipped} steps skipped by optim.skipStep, more than maxSkipped {rule.limit}, the last at "
            f"step {step} (loss {record['loss']}, grad_norm {record['grad_norm']}). Lower optim.lr, or raise "
            "optim.skipStep.sigma or maxSkipped",
            step=step,
        )


def _install_sigterm(state: TrainerState) -> None:
    def handler(signum: int, frame: Any) -> None:
        state.preempted = True  # acted on at the next step boundary, by every rank together

    signal.signal(signal.SIGTERM, handler)


def _log_line(step: int, total: int, record: dict[str, Any]) -> str:
    return (
        f"step {step}/{total} loss {record['loss']:.4f} lr {record['lr']:.3e} "
        f"grad_norm {record['grad_norm']:.3f} tok/s {record['tokens_per_s']:,.0f}"
    )


@dataclass
class Job:
    """Everything a running job holds; `loop()` steps it to its budget."""

    cfg: TrainConfig
    info: DistInfo
    plan: StepPlan
    schedule: Schedule
    model: nn.Module
    optimizer: torch.optim.Optimizer
    state: TrainerState
    checkpointer: Any
    objective: Objective
    tracker: Tracker | None = None
    after_step: list[StepHook] = field(default_factory=list)
    """Called on every rank after each step with (step, tokens before, tokens after); what they return
    joins that step's metrics line (in-loop evaluation: evaluate.InLoopEvaluator.after_step)."""

    @property
    def app_state(self) -> dict[str, Any]:
        # (model, optimizer) pairs of the objective (PPO's "value") are checkpointed beside the policy.
        return {
            "model": self.model,
            "optim": self.optimizer,
            "trainer": self.state,
            **self.objective.auxiliary(),
        }

    def loop(self, batches: Iterator[list[torch.Tensor]]) -> bool:
        """Steps until the budget or an agreed preemption; True when preempted before the end."""
        cfg, info, plan, state = self.cfg, self.info, self.plan, self.state
        peak = peak_flops(torch.cuda.get_device_name(info.device) if info.is_cuda else None)
        last = time.perf_counter()
        while state.step < plan.total_steps:
            # The schedule runs on nominal tokens (steps x tokens_per_step), so that a phase whose
            # steps train a varying number of tokens (post-training) still follows it exactly.
            lr = self.schedule.lr((state.step + 1) * plan.tokens_per_step)
            result = train_step(
                self.model,
                self.optimizer,
                self.objective,
                next(batches),
                cfg=cfg,
                info=info,
                lr=lr,
                preempted=state.preempted,
                skip=state.skip,
            )
            sums, stop = result.sums, result.stop
            step_tokens = int(sums.get("tokens", plan.tokens_per_step))
            tokens_before = state.tokens
            state.step, state.tokens, state.lr = state.step + 1, state.tokens + step_tokens, lr
            now = time.perf_counter()
            tokens_per_s = step_tokens / max(now - last, 1e-9)
            record = {
                "step": state.step,
                "tokens": state.tokens,
                **self.objective.metrics(sums, result.denominator),
                "grad_norm": result.grad_norm,
                "lr": lr,
                "tokens_per_s": tokens_per_s,
                "mfu": mfu(tokens_per_s, plan.flops_per_token, peak, info.world_size),
                # The job's whole budget in steps: an SFT/DPO phase that trains for `epochs` knows it
                # only from its data, and the operator's progress line and ETA read it here.
                "total_steps": plan.total_steps,
            }
            if state.skip is not None:  # OLMo-core logs it as "optim/step skipped"
                record.update(step_skipped=float(result.skipped), skipped_steps=state.skip.skipped)
            for hook in self.after_step:  # after tokens_per_s: an evaluation is not training time
                record.update(hook(state.step, tokens_before, state.tokens))
            if self.tracker is not None and not self.tracker.log(record):
                state.preempted = True  # the lease is lost (as in fence.renew below): stop, writing nothing
            if info.rank == 0:
                print(_log_line(state.step, plan.total_steps, record), flush=True)
                if not self.checkpointer.fence.renew():
                    # A newer attempt owns the directory: every rank stops at the next step, and the
                    # save that stop asks for is refused by the lease (Fenced), writing nothing.
                    state.preempted = True
            check_finite(state.step, record)
            if result.skipped:
                check_skip_limit(state.step, state.skip, record, info)
            final = state.step == plan.total_steps
            if save_due(state.step, interval_steps=cfg.checkpoint.interval_steps, final=final, stop=stop):
                self.checkpointer.save(state.step, self.app_state, final=final)
            last = time.perf_counter()  # a checkpoint save or a log write is not training time
            if stop and not final:
                if info.rank == 0:
                    print(f"preempted: saved step {state.step}, exiting {EXIT_PREEMPTED}", flush=True)
                return True
        return False


def skip_rule(cfg: TrainConfig) -> SkipStepRule | None:
    """The job's skip-step rule (optim.skipStep), or None when it never skips."""
    spec = cfg.optim.skip_step
    return (
        None if spec is None else SkipStepRule(sigma=spec.sigma, window=spec.window, limit=spec.max_skipped)
    )


def setup(cfg: TrainConfig) -> tuple[Job, Any]:
    """Join the process group, build the objective's data, the wrapped model and optimizer, then init
    from the parent, let the objective prepare, and resume. Returns (job, batches)."""
    info = init_distributed()
    seed_everything(cfg.seed, info.device)
    objective = build_objective(cfg)
    plan, batches = objective.build(cfg, info)
    schedule = build_schedule(
        cfg.schedule,
        peak_lr=peak_lr(cfg),
        tokens_per_step=plan.tokens_per_step,
        total_tokens=plan.total_tokens,
    )
    model = build_model(cfg, info)
    job = Job(
        cfg=cfg,
        info=info,
        plan=plan,
        schedule=schedule,
        model=model,
        optimizer=build_optimizer(model, cfg.optim, lr=schedule.lr(0)),
        state=TrainerState(device=info.device, data=batches, skip=skip_rule(cfg)),
        checkpointer=Checkpointer(
            checkpoints_dir(cfg.save_dir),
            cfg.checkpoint,
            config_hash=cfg.config_hash(),
            parent=cfg.init_from,
            train_config=cfg,  # each checkpoint carries the config that produced it
            lease=Lease.for_job(cfg.save_dir) if info.rank == 0 else None,  # rank 0 commits and prunes
            trainer_types=TRAINER_STATE_TYPES,
        ),
        objective=objective,
    )
    job.checkpointer.fence.acquire()  # an older attempt than the directory's owner stops here (Fenced)
    # collective: nobody lists checkpoints while rank 0 removes torn ones
    job.checkpointer.cleanup_uncommitted()
    latest = job.checkpointer.latest_intact()  # each rank re-hashes its share against the MANIFEST
    # The parent's weights first, on a resume too: the objective may need the frozen parent (DPO's
    # reference); a resumed job then overwrites them with its own checkpoint.
    if cfg.init_from is not None:
        load_initial_weights(cfg.init_from, model)
    objective.prepare(model, info)
    if latest is not None:
        job.checkpointer.load(latest[1], job.app_state)
    if info.rank == 0 and job.checkpointer.skipped:
        resumed = f"resumed from {latest[1]}" if latest else "no intact checkpoint"
        record_notice(
            cfg.save_dir,
            "CheckpointDamaged",
            f"skipped damaged checkpoint(s) {'; '.join(job.checkpointer.skipped)}; {resumed}",
        )
    if info.rank == 0:
        write_env(cfg, batches=batches)  # the job's run record: versions, devices, determinism, data hashes
        origin = (
            f"resumed from {latest[1]}"
            if latest
            else f"initialised from {cfg.init_from or f'seed {cfg.seed}'}"
        )
        print(f"{cfg.run}/{cfg.phase}: {cfg.model.num_params():,} params, {plan.total_steps} steps, {origin}")
    return job, batches


def load_initial_weights(uri: str, model: nn.Module) -> None:
    """Load `initFrom` into the (wrapped) model: a committed checkpoint, or a Hugging Face OLMo 2 folder
    (config.json + safetensors, as `olmorun export-hf` writes and the Hub's OLMo-2 repositories hold)."""
    if is_hf_folder(uri):
        load_hf_into(uri, model)
    else:
        load_model_weights(uri, model)


def in_loop_evaluator(job: Job) -> InLoopEvaluator:
    """The phase's `eval` tasks on the wrapped (sharded) model, run every rank in step."""
    cfg = job.cfg
    assert cfg.eval is not None
    return InLoopEvaluator(
        model=job.model,
        cfg=cfg.eval,
        device=job.info.device,
        max_length=cfg.model.max_sequence_length,
        vocab_size=cfg.model.vocab_size,
        work_dir=storage.work_dir(cfg),
        seed=cfg.seed,
        total_steps=job.plan.total_steps,
    )


def final_eval(job: Job) -> dict[str, float]:
    """Evaluate the trained model on the phase's `eval` tasks (collective: every rank scores its share of
    the requests on its shard of the model; nothing is gathered onto one rank)."""
    evaluator = in_loop_evaluator(job)
    return evaluate(
        job.model,
        evaluator.cfg,
        device=evaluator.device,
        max_length=evaluator.max_length,
        work_dir=evaluator.work_dir,
        vocab_size=evaluator.vocab_size,
        seed=evaluator.seed,
    )


def train(cfg: TrainConfig) -> int:
    """Run a training job (any objective) to its budget (or a SIGTERM). Returns the process exit code."""
    job, batches = setup(cfg)
    _install_sigterm(job.state)
    job.tracker = Tracker(
        cfg, rank=job.info.rank, resume_step=job.state.step, may_write=job.checkpointer.fence.holds
    )
    if cfg.eval is not None and cfg.eval.interval is not None:
        job.after_step.append(in_loop_evaluator(job).after_step)
    try:
        preempted = job.loop(iter(batches))
        if not preempted and cfg.eval is not None:
            results = final_eval(job)
            job.tracker.log({"step": job.state.step, **results})
            if job.info.rank == 0:
                print("eval: " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()), flush=True)
    except BaseException:
        job.tracker.close(exit_code=1)  # W&B marks the run failed (OLMo-core's WandBCallback.on_error)
        raise
    job.tracker.close(exit_code=EXIT_PREEMPTED if preempted else 0)
    job.checkpointer.wait()
    # The wrapped model goes before the last collective, not at interpreter exit: a DDP Reducer
    # destroyed there (holding the GIL) can deadlock with a gloo thread that needs the GIL to free
    # the final barrier's tensors (pytorch/pytorch#56297; seen once as a GRPO rank hung at exit).
    del job, batches
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    return EXIT_PREEMPTED if preempted else 0
