"""What GRPO and PPO share: prompts in, rollouts sampled inside the training job, rewards verified.

One `rlvr` job is one torchrun job: every rank generates for its own slice of the step's prompts
(`samplesPerPrompt` responses each, with the KV cache of generate.py, on the policy being trained),
scores them with the verifiers of verifiers.py, computes the log-probs the losses need (policy before
the update, frozen reference, PPO's values) and cuts the rollout into micro-batches for the loop of
train.py. No Ray, no vLLM, no second process.

Steps. `batch.globalBatchSize` counts PROMPTS per rollout (over all ranks); each rank samples
`globalBatchSize / world x samplesPerPrompt` responses and trains on them in micro-batches of
`microBatchSize` sequences. Each rollout serves `ppoEpochs` consecutive optimizer steps (one full pass
over it per step), so `maxSteps` optimizer steps use `maxSteps / ppoEpochs` rollouts.

Determinism. The prompt order is the seeded, resumable order of data/order.py; the sampling generator
of rollout k on rank r is seeded from (seed, k, r); the rollout a step reuses is part of the saved data
position. A killed CPU job therefore resumes bit-identically (tests/trainer/test_rlvr.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from olmo_trainer.build import build_model
from olmo_trainer.config import RLVRConfig, TrainConfig, rlvr_batch_problem
from olmo_trainer.data.prompts import Prompt, build_prompt_batches
from olmo_trainer.distributed import DistInfo
from olmo_trainer.errors import ConfigurationError
from olmo_trainer.generate import Sampling, generate
from olmo_trainer.layout import StepPlan
from olmo_trainer.model import Transformer
from olmo_trainer.objectives.base import BaseObjective
from olmo_trainer.rewards import reward_of
from olmo_trainer.rollouts import Packed, RLBatch, pack, response_logprobs, response_values
from olmo_trainer.verifiers import verifier

TRAINER_STATE_TYPES = (Prompt, Packed, RLBatch, (RLBatch, "olmo_trainer.objectives.rl.RLBatch"))
"""What RolloutSteps keeps in the trainer state (the rollout a step reuses), for the trainer file's
allow-list (safe_load.py). RLBatch lived here until issue 20 moved it to rollouts.py: files written
before name it here, which the (class, name) pair allows."""


def rollout_seed(seed: int, rollout: int, rank: int) -> int:
    """Seed of the sampling generator of one rollout on one rank (stable across runs and versions)."""
    digest = hashlib.sha256(f"rlvr:{seed}:{rollout}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class RolloutStep:
    """One optimizer step's input as the step source yields it: this rank's prompts, which rollout
    they belong to, and which pass over it (0 .. ppoEpochs-1)."""

    prompts: list[Prompt]
    rollout: int
    epoch: int


class RolloutSteps:
    """Step source of an RL phase: each batch of prompts from `inner` (data/order.py's seeded,
    resumable order) is yielded `epochs` times in a row; the rollout generated at its first pass is
    kept here so that the later passes (and a job resumed between them) reuse it exactly."""

    def __init__(self, inner: Any, epochs: int) -> None:
        self.inner, self.epochs = inner, epochs
        self.rollouts = 0
        """Rollouts started so far."""
        self.epoch = epochs  # passes done over the current rollout (epochs = none pending)
        self.prompts: list[Prompt] = []
        self.cached: list[RLBatch] | None = None

    @property
    def dataset(self) -> Any:
        """The prompt dataset (the run record, environment.py, fingerprints it)."""
        return self.inner.dataset

    def order(self, epoch: int) -> Any:
        """The prompt order of an epoch (data/order.py)."""
        return self.inner.order(epoch)

    def __iter__(self) -> Iterator[list[RolloutStep]]:
        inner = iter(self.inner)
        while True:
            if self.epoch >= self.epochs:
                (self.prompts,) = next(inner)
                self.rollouts, self.epoch, self.cached = self.rollouts + 1, 0, None
            step = RolloutStep(self.prompts, self.rollouts - 1, self.epoch)
            self.epoch += 1
            yield [step]

    def state_dict(self) -> dict[str, Any]:
        pending = self.epoch < self.epochs
        return {
            "inner": self.inner.state_dict(),
            "rollouts": self.rollouts,
            "epoch": self.epoch,
            "prompts": self.prompts if pending else [],
            "cached": self.cached if pending else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.rollouts, self.epoch = int(state["rollouts"]), int(state["epoch"])
        self.prompts, self.cached = list(state["prompts"]), state["cached"]


def frozen_copy(model: nn.Module, cfg: TrainConfig, info: DistInfo) -> nn.Module:
    """A frozen copy of the (wrapped) policy's current weights, sharded like it under FSDP2, a plain
    module under DDP (DDP refuses a module with nothing to train)."""
    if cfg.parallel.strategy == "fsdp":
        copy = build_model(cfg, info)
        with torch.no_grad():
            for target, source in zip(copy.parameters(), model.parameters(), strict=True):
                target.copy_(source)
    else:
        inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        copy = Transformer(cfg.model).to(info.device)
        copy.load_state_dict(inner.state_dict())
    copy.requires_grad_(False)
    return copy.eval()


@dataclass
class RLObjective(BaseObjective):
    """Base of GRPO and PPO (objectives/grpo.py, objectives/ppo.py): data, rollouts, rewards, metrics."""

    cfg: TrainConfig
    rl: RLVRConfig = field(init=False)
    info: DistInfo | None = None
    reference: nn.Module | None = None
    steps: RolloutSteps | None = None
    tokenizer: Any = None

    def __post_init__(self) -> None:
        if self.cfg.rlvr is None:
            raise ConfigurationError("an rlvr phase needs its `rlvr` section")
        self.rl = self.cfg.rlvr

    # Data and plan ------------------------------------------------------------------------------
    def build(self, cfg: TrainConfig, info: DistInfo) -> tuple[StepPlan, RolloutSteps]:
        self.info = info
        if cfg.batch is None or cfg.max_steps is None:
            raise ConfigurationError("an rlvr phase needs `batch` (prompts per rollout) and `maxSteps`")
        problem = rlvr_batch_problem(self.rl, cfg.batch, info.world_size)
        if problem is not None:
            raise ConfigurationError(f"batch.{problem[0]}: {problem[1]}")
        prompts, micro = cfg.batch.global_batch_size, cfg.batch.micro_batch_size
        sequences = prompts // info.world_size * self.rl.samples_per_prompt
        seq_len = self.rl.data.max_length + self.rl.max_new_tokens
        plan = StepPlan(
            global_batch_size=prompts,
            micro_batch_size=micro,
            accumulation=sequences // micro,
            sequence_length=seq_len,
            tokens_per_step=prompts * self.rl.samples_per_prompt * self.rl.max_new_tokens,
            total_steps=cfg.max_steps,
            flops_per_token=cfg.model.flops_per_token(seq_len),
        )
        inner, self.tokenizer = build_prompt_batches(cfg, info)
        self.steps = RolloutSteps(inner, self.rl.ppo_epochs)
        return plan, self.steps

    def prepare(self, model: nn.Module, info: DistInfo) -> None:
        """The frozen reference: the policy's starting weights (the parent phase's final model)."""
        if self.rl.kl_beta > 0:
            self.reference = frozen_copy(model, self.cfg, info)

    # Rollouts -----------------------------------------------------------------------------------
    def step_inputs(self, model: nn.Module, micro_batches: list[Any]) -> list[Any]:
        (step,) = micro_batches
        assert isinstance(step, RolloutStep) and self.steps is not None
        if step.epoch > 0 and self.steps.cached is not None:
            return self.steps.cached
        batches = self.rollout(model, step)
        self.steps.cached = batches
        return batches

    def rollout(self, model: nn.Module, step: RolloutStep) -> list[RLBatch]:
        """Sample, score and prepare this rank's sequences of one rollout (no gradients)."""
        assert self.info is not None
        cfg, rl, info = self.cfg, self.rl, self.info
        prompts = [p for p in step.prompts for _ in range(rl.samples_per_prompt)]
        generator = torch.Generator(device=info.device).manual_seed(
            rollout_seed(cfg.seed, step.rollout, info.rank)
        )
        rollout = generate(
            model,
            [p.ids for p in prompts],
            Sampling(max_new_tokens=rl.max_new_tokens, temperature=rl.temperature),
            eos_token_id=cfg.model.eos_token_id,
            pad_token_id=cfg.model.pad_token_id,
            vocab_size=cfg.model.vocab_size,
            generator=generator,
        )
        packed = pack(rollout, pad_token_id=cfg.model.pad_token_id)
        scores, correct = self.score(prompts, rollout.responses, rollout.response_mask, rollout.stopped)
        micro = cfg.batch.micro_batch_size if cfg.batch else 1
        parts = [packed.select(slice(i, i + micro)) for i in range(0, len(packed), micro)]
        with torch.no_grad():
            old = [self.logprobs(model, part) for part in parts]
            ref = (
                [self.logprobs(self.reference, part) for part in parts]
                if self.reference is not None
                else None
            )
        return self.make_batches(parts, old, ref, scores, correct, rollout.stopped)

    def logprobs(self, model: nn.Module, packed: Packed) -> torch.Tensor:
        """(B, N) response log-probs of `model` under the sampling temperature."""
        logits = model(packed.ids)
        return response_logprobs(
            logits, packed, temperature=self.rl.temperature, vocab_size=self.cfg.model.vocab_size
        )

    def values(self, value_model: nn.Module, packed: Packed) -> torch.Tensor:
        return response_values(value_model(packed.ids), packed)

    def score(
        self, prompts: list[Prompt], responses: torch.Tensor, mask: torch.Tensor, stopped: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards (S,) and verified flags (S,) of every sequence, from its decoded response text
        (the EOS excluded)."""
        rewards, correct = [], []
        eos = self.cfg.model.eos_token_id
        for row, prompt in enumerate(prompts):
            ids = [
                int(t)
                for t, keep in zip(responses[row].tolist(), mask[row].tolist(), strict=True)
                if keep and t != eos
            ]
            text = self.tokenizer.decode(ids)
            verified = verifier(prompt.dataset)(text, prompt.ground_truth)
            score = reward_of(
                verified,
                correct_reward=self.rl.correct_reward,
                stopped=bool(stopped[row]),
                non_stop_penalty=self.rl.non_stop_penalty,
            )
            rewards.append(score)
            correct.append(float(verified))
        device = responses.device
        return torch.tensor(rewards, device=device), torch.tensor(correct, device=device)

    def make_batches(
        self,
        parts: list[Packed],
        old: list[torch.Tensor],
        ref: list[torch.Tensor] | None,
        scores: torch.Tensor,
        correct: torch.Tensor,
        stopped: torch.Tensor,
    ) -> list[RLBatch]:
        raise NotImplementedError  # GRPO and PPO compute their advantages differently

    def sequence_sums(
        self,
        rows: slice,
        scores: torch.Tensor,
        correct: torch.Tensor,
        stopped: torch.Tensor,
        lengths: torch.Tensor,
    ) -> dict[str, float]:
        """Per-sequence metric sums of the rows of one micro-batch."""
        return {
            "sequences": float(scores[rows].numel()),
            "reward": float(scores[rows].sum()),
            "correct": float(correct[rows].sum()),
            "stopped": float(stopped[rows].float().sum()),
            "response_tokens": float(lengths.sum()),
        }

    # Loss bookkeeping ---------------------------------------------------------------------------
    def denominator(self, micro_batches: list[Any]) -> float:
        """Response tokens of this rank's step: the token-level mean runs over the whole step."""
        return float(sum(int(b.packed.mask.sum()) for b in micro_batches))

    def common_metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        sequences = max(sums.get("sequences", 0.0), 1.0)
        tokens = max(denominator, 1.0)
        return {
            "rl/reward": sums["reward"] / sequences,
            "rl/accuracy": sums["correct"] / sequences,
            "rl/stop_rate": sums["stopped"] / sequences,
            "rl/response_length": sums["response_tokens"] / sequences,
            "rl/clip_fraction": sums["clipped"] / tokens,
            # No reference model when klBeta is 0: no KL to report.
            **({"rl/kl": sums["kl"] / tokens} if "kl" in sums else {}),
        }
